//! The instruction sets with kernels, what this CPU supports, and the one choice per process
//! ([`detected_isa`]). A leaf module: `dispatch` maps an [`Isa`] to its kernel type.

use std::sync::OnceLock;

/// Instruction sets with a kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust; the reference every other ISA is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell / Zen and later).
    Avx2,
    /// x86-64 AVX-512 F + BW + VL + VNNI on top of [`Isa::Avx2`] (Ice Lake / Zen 4 and later): the
    /// ternary matmul uses `vpdpbusd`; every other kernel runs the AVX2 code.
    Avx512Vnni,
    /// [`Isa::Avx512Vnni`] with the one-token (decode) ternary kernel on 256-bit vectors
    /// (AVX-512 VL): the choice on CPUs that execute 512-bit instructions as two 256-bit halves
    /// (AMD Zen 4, see [`splits_512bit_vectors`]), where it streams weights from memory 5-20%
    /// faster than the 512-bit kernel; prompt tiles keep the 512-bit kernel.
    Avx512Vnni256,
    /// [`Isa::Avx512Vnni`] plus Intel AMX-INT8 (Sapphire Rapids and later): ternary matmuls of 16
    /// or more tokens (prompts, batched decode) run on tile registers (`tdpbusd`, 16,384
    /// multiply-adds an instruction), everything else on the [`Isa::Avx512Vnni`] kernels.
    Amx,
    /// aarch64 Advanced SIMD (every aarch64 application processor).
    Neon,
    /// aarch64 NEON + the dot-product extension (`sdot`; Armv8.2-A+, e.g. Cortex-A55/A76,
    /// Neoverse, Apple M1): the ternary matmul and the Q8_0 / Q6_K dots use it; every other
    /// kernel runs the [`Isa::Neon`] code.
    NeonDotprod,
    /// WebAssembly 128-bit SIMD (wasm32 built with `-C target-feature=+simd128`; every current
    /// browser and Node >= 16): the ternary matmul, activation quantization, the F32/F16/BF16
    /// dense dots and the f32 vector ops.
    Simd128,
}

impl Isa {
    /// Every ISA, scalar first (the order of [`Self::from_name`] and of the comparison tests).
    pub const ALL: [Isa; 8] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512Vnni,
        Isa::Avx512Vnni256,
        Isa::Amx,
        Isa::Neon,
        Isa::NeonDotprod,
        Isa::Simd128,
    ];

    /// Whether this CPU can run the ISA's kernels (ignores `BITNET_FORCE_SCALAR`).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => avx2_supported(),
            Isa::Avx512Vnni | Isa::Avx512Vnni256 => avx512vnni_supported(),
            Isa::Amx => amx_supported(),
            Isa::Neon => neon_supported(),
            Isa::NeonDotprod => neon_dotprod_supported(),
            Isa::Simd128 => cfg!(all(target_arch = "wasm32", target_feature = "simd128")),
        }
    }

    /// The ISA whose code runs everything but this ISA's own kernels: the AVX-512 ISAs add
    /// ternary matmuls to the AVX2 vector ops, dense and quantization kernels, NEON + dot product
    /// adds its `sdot` kernels to the NEON ones. Dispatch that has one version per family
    /// matches on this, so a new ISA is placed in its family here, once.
    pub(crate) fn vector_base(self) -> Isa {
        match self {
            Isa::Avx512Vnni | Isa::Avx512Vnni256 | Isa::Amx => Isa::Avx2,
            Isa::NeonDotprod => Isa::Neon,
            isa => isa,
        }
    }

    /// Stable lower-case name for logs and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Avx512Vnni256 => "avx512vnni256",
            Isa::Amx => "amx",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "neondot",
            Isa::Simd128 => "simd128",
        }
    }

    /// The ISA whose [`Self::name`] is `name` (ASCII case-insensitive), if any.
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(name.trim()))
    }
}

fn avx2_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avx512vnni_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_supported()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn amx_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512vnni_supported() && crate::x86::amx::supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn neon_supported() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

fn neon_dotprod_supported() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        neon_supported() && std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// Whether this CPU runs 512-bit vector instructions as two 256-bit halves: AMD family 19h
/// (Zen 3 has no AVX-512, so with AVX-512 this is Zen 4). There the 512-bit decode kernel gains
/// no throughput and streams weights 5-20% slower than the same instructions on 256-bit vectors
/// (`examples/ab_decode`, 2 threads from DRAM, p25 of interleaved calls: 2560x2560 57.0 -> 49.6
/// us, 6912x2560 145.7 -> 136.3, 2560x6912 155.2 -> 147.6; other sittings up to 20%), while on
/// Intel (Sapphire Rapids, 1-16 threads) the 512-bit kernel is 2-4% ahead.
pub fn splits_512bit_vectors() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `__cpuid` is a safe function on newer toolchains and unsafe on the 1.89 MSRV.
        #[allow(unused_unsafe)]
        // SAFETY: leaves 0 (vendor) and 1 (family) exist on every x86-64 CPU.
        let (vendor, sig) = unsafe {
            (
                std::arch::x86_64::__cpuid(0),
                std::arch::x86_64::__cpuid(1).eax,
            )
        };
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let base = (sig >> 8) & 0xF;
        let family = if base == 0xF {
            base + ((sig >> 20) & 0xFF)
        } else {
            base
        };
        amd && family == 0x19
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The ISA every dispatched kernel uses, decided on first call and fixed for the process: the
/// best one the CPU supports (AMX, then AVX-512 VNNI, at 256 bits where
/// [`splits_512bit_vectors`], then AVX2 on x86-64; NEON + dot product, then NEON on aarch64;
/// SIMD128 on wasm32 built with it; else scalar). Two environment variables, read once at that
/// first call, override it for tests and benchmarks:
/// - `BITNET_FORCE_SCALAR=1` forces [`Isa::Scalar`] (and wins over `BITNET_ISA`);
/// - `BITNET_ISA=scalar|avx2|avx512vnni|avx512vnni256|amx|neon|neondot|simd128` picks that ISA. A
///   name that is unknown or not supported by this CPU is ignored, with a warning on stderr, and
///   the automatic choice is used.
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("BITNET_FORCE_SCALAR").is_ok_and(|v| !v.is_empty() && v != "0");
        if forced {
            return Isa::Scalar;
        }
        let avx512 = if splits_512bit_vectors() {
            Isa::Avx512Vnni256
        } else {
            Isa::Avx512Vnni
        };
        let best = [
            Isa::Amx,
            avx512,
            Isa::Avx2,
            Isa::NeonDotprod,
            Isa::Neon,
            Isa::Simd128,
        ]
        .into_iter()
        .find(|i| i.is_supported())
        .unwrap_or(Isa::Scalar);
        match std::env::var("BITNET_ISA") {
            Ok(v) if !v.trim().is_empty() => match Isa::from_name(&v) {
                Some(isa) if isa.is_supported() => isa,
                Some(isa) => {
                    eprintln!(
                        "warning: BITNET_ISA={v}: this CPU does not support {}; using {}",
                        isa.name(),
                        best.name()
                    );
                    best
                }
                None => {
                    eprintln!(
                        "warning: BITNET_ISA={v}: unknown ISA (expected scalar, avx2, \
                         avx512vnni, avx512vnni256, amx, neon, neondot or simd128); using {}",
                        best.name()
                    );
                    best
                }
            },
            _ => best,
        }
    })
}

/// Panics unless `isa` can run here: asking for AVX2 on a CPU without it is a caller bug, and
/// silently running scalar code instead would make an ISA comparison test meaningless.
pub(crate) fn check_isa(isa: Isa) {
    assert!(
        isa.is_supported(),
        "{isa:?} kernels requested but this CPU does not support them"
    );
}
