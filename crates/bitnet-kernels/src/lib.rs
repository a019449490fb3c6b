//! CPU kernels for bitnet-rs behind one runtime dispatch.
//!
//! - [`ternary_matmul`]: I2_S-layout ternary weights x per-token int8 activations, integer
//!   accumulation, `y = acc / s_x * w_scale` (transformers AutoBitLinear / bitnet.cpp semantics).
//! - [`DenseMatrix::matmul`]: F32/F16/BF16/Q8_0/Q6_K matrices (embeddings, tied LM head).
//! - [`ops`]: the f32 vector ops of the forward pass.
//!
//! Each kernel has a scalar reference (`*_scalar`, public so tests can compare) and SIMD
//! versions in their own modules: AVX2 (the ternary matmul also AVX-512 VNNI) on x86-64, NEON
//! (the ternary matmul and the Q8_0 / Q6_K dots also NEON + dot product) on aarch64, SIMD128 on
//! wasm32 builds with `+simd128` (WebAssembly has no run-time detection: a module with SIMD
//! instructions does not even load without it, so there it is a compile-time choice). Which one
//! runs is decided once per process by [`detected_isa`] (runtime CPU detection, so a generic
//! release binary still gets AVX2 / AVX-512 / `sdot`). The integer kernels (and the Q8_0 / Q6_K
//! dots) are bit-exact across ISAs and thread counts; the float ones agree to rounding.

mod dense;
mod dense_blocks;
mod dense_q6k;
mod dense_q8;
pub mod ops;
pub mod pool;
mod scalar;
mod ternary;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm_simd128;

pub use dense::{DenseMatrix, DenseType};
pub use ternary::{
    ternary_matmul, ternary_matmul_i32, ternary_matmul_i32_scalar, ternary_matmul_i32_with,
    ternary_matmul_many, ternary_matmul_many_with, ternary_matmul_scalar, ternary_matmul_with,
    QuantizedActivations, TernaryMatrix,
};

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
    pub const ALL: [Isa; 7] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512Vnni,
        Isa::Avx512Vnni256,
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
            Isa::Avx512Vnni | Isa::Avx512Vnni256 => Isa::Avx2,
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
/// best one the CPU supports (AVX-512 VNNI, at 256 bits where [`splits_512bit_vectors`], then
/// AVX2 on x86-64; NEON + dot product, then NEON on aarch64; SIMD128 on wasm32 built with it;
/// else scalar). Two environment variables, read once at that first call, override it for tests
/// and benchmarks:
/// - `BITNET_FORCE_SCALAR=1` forces [`Isa::Scalar`] (and wins over `BITNET_ISA`);
/// - `BITNET_ISA=scalar|avx2|avx512vnni|avx512vnni256|neon|neondot|simd128` picks that ISA. A
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
        let best = [avx512, Isa::Avx2, Isa::NeonDotprod, Isa::Neon, Isa::Simd128]
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
                         avx512vnni, avx512vnni256, neon, neondot or simd128); using {}",
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

/// Errors building kernel operands from model data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("size overflow computing {0}")]
    Overflow(&'static str),
    #[error(transparent)]
    Quant(#[from] bitnet_quantization::QuantError),
}

/// Rows (tokens) from which per-row work such as activation quantization or a norm is spread
/// over the pool. Measured on the 16-core host (2B4T shapes, 16 threads): 16 decoding sequences
/// gained 3-10% from it and a 128-token prompt 10-55%, but 4 sequences lost 25-40%, the pool's
/// fixed cost per loop (~12 loops per layer) outweighing four rows' work.
pub const PAR_ROWS: usize = 16;

/// A raw output pointer shared by the tasks of one parallel kernel call. Each task writes a
/// disjoint set of elements (its own rows, for every token), which is what makes the `Send` /
/// `Sync` impls sound; the outputs of a row chunk are strided by `rows` when there are several
/// tokens, so `par_chunks_mut` cannot express the split.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<T>(*mut T);
// SAFETY: a SharedOut only writes `T`s into the slice it was made from (through the unsafe
// methods, whose callers keep the tasks' elements disjoint); sending it sends those writes, which
// `T: Send` allows.
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: shared between tasks it is still only a pointer to write through; the disjointness that
// the unsafe methods demand keeps two tasks off the same element.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    pub(crate) fn new(out: &mut [T]) -> Self {
        SharedOut(out.as_mut_ptr())
    }

    /// # Safety
    /// `i` must be in bounds of the slice this was made from, and no other task may access
    /// element `i` during the call.
    #[inline(always)]
    pub(crate) unsafe fn write(self, i: usize, v: T) {
        // SAFETY: in bounds of the original slice and not accessed by another task (this
        // function's contract).
        unsafe { self.0.add(i).write(v) }
    }

    /// # Safety
    /// `start..start + len` must be in bounds of the slice this was made from, and no other
    /// task may access it while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut<'a>(&self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: in bounds of the original slice and not aliased while it lives (this
        // function's contract).
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Splits `rows` into chunks for the parallel loop: enough chunks for load balance on the installed pool,
/// and at most `max_chunk_bytes` of weights per chunk so a chunk stays in L2 while every token
/// tile streams over it.
pub(crate) fn row_chunk(rows: usize, row_bytes: usize, max_chunk_bytes: usize) -> usize {
    let threads = pool::current_num_threads().max(1);
    let balance = rows.div_ceil(threads * 4);
    let cache = (max_chunk_bytes / row_bytes.max(1)).max(1);
    balance.min(cache).max(1)
}

/// How far ahead the decode kernels request weights, for rows read once per token. Hardware
/// prefetchers alone leave bandwidth unused on the machines measured. The first measurements
/// (tg32, 2B4T, interleaved runs; `{ternary row tiles ahead, dense bytes ahead}`, before the
/// ternary distance became [`prefetch::ternary_ahead`]'s rule):
/// on the lent 16-core Xeon, 2 threads F16 head `{1, 1 KiB}` 15.9 t/s, `{2, 2 KiB}` 17.9,
/// `{2, 4 KiB}` 17.7, `{3, 8 KiB}` 18.6; 16 threads F16 66.8 / 74.8 / 73.3 / 72.3 and Q8_0
/// head 77.5 / 80.5 / 91.9 / 86.1; on a 2-vCPU Zen 4 VM, best of three, 25.5 / 27.8 / 28.4
/// (`{3, 4 KiB}` 23.2). Past a DRAM latency's worth of streaming (~2-4 KiB per core) the gain
/// stops and further distances only touch lines of rows another thread owns.
#[cfg(target_arch = "x86_64")]
pub(crate) mod prefetch {
    /// Bytes ahead of a ternary decode tile (`R` rows read block by block, `tile` bytes in all)
    /// at which the kernels request the rows of a later tile: whole tiles, at least 4 KiB.
    /// Measured with `examples/ab_decode` (2 threads, from DRAM, p25 of 250 calls): on the Zen 4
    /// VM the 6912-column rows (6.9 KiB tiles) take 150.7 us two tiles ahead and 127.4 us one
    /// tile ahead with the AVX2 kernel (168.4 / 150.0 with AVX-512, 133.4 / 117.1 at 256 bits),
    /// as the farther lines crowd the 32 KiB L1; the 2560-column rows (2.5 KiB tiles) want two.
    /// On the Xeon the two rules measure the same (1, 4 and 16 threads).
    #[inline(always)]
    pub(crate) fn ternary_ahead(tile: usize) -> usize {
        tile * 4096usize.div_ceil(tile.max(1))
    }

    /// The decode kernels' request at block `b` of a tile of `R` rows of `nb` blocks starting at
    /// `tile_start`: the next `R * 32` bytes of the tile [`ternary_ahead`] bytes on, so that tile
    /// is swept once, as one sequential stream, while this one is multiplied (the hardware
    /// prefetchers alone fall behind on `R` interleaved row streams: 2560x2560 from DRAM on one
    /// Xeon thread, 195 -> 151 us).
    #[inline(always)]
    pub(crate) fn ternary_tile_block<const R: usize>(tile_start: *const u8, nb: usize, b: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let ahead = tile_start.wrapping_add(ternary_ahead(R * nb * 32) + b * R * 32);
        for l in (0..R * 32).step_by(64) {
            // SAFETY: a prefetch never faults, whatever the address (SSE is baseline x86-64).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l) as *const i8) };
        }
    }

    /// Bytes ahead within a dense (LM head) row.
    pub(crate) const DENSE_BYTES: usize = 4096;
}
