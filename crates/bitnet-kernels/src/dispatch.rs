//! The one place that maps an [`Isa`](crate::Isa) to its implementation: [`with_kernel!`] names
//! the kernel type (a [`Kernel`](crate::kernel::Kernel)) that the generic drivers run with, and
//! [`vector_op!`] calls the f32 vector op of the same name in the ISA's module (as candle's
//! `quantized/{avx,neon,simd128}.rs`). Adding an ISA means an arm in each, here, and nothing in
//! the drivers.
//!
//! The arms of other architectures are compiled out, so on x86-64 a NEON ISA (which
//! `Isa::is_supported` never reports there) would take the scalar arm.

/// Evaluates `$body` with the type alias `$K` naming `$isa`'s kernel type. The body is written
/// once and instantiated per ISA; its unsafe calls are sound because the public entry points
/// checked the ISA (`check_isa`) or took it from `detected_isa`.
macro_rules! with_kernel {
    ($isa:expr, $K:ident => $body:expr) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            $crate::Isa::Avx2 => {
                type $K = $crate::x86::avx2::Avx2;
                $body
            }
            // AMX adds only the batched ternary driver (`ternary::drive`); its kernels are
            // AVX-512's.
            #[cfg(target_arch = "x86_64")]
            $crate::Isa::Avx512Vnni | $crate::Isa::Amx => {
                type $K = $crate::x86::avx512::Avx512Vnni<false>;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            $crate::Isa::Avx512Vnni256 => {
                type $K = $crate::x86::avx512::Avx512Vnni<true>;
                $body
            }
            #[cfg(target_arch = "aarch64")]
            $crate::Isa::Neon => {
                type $K = $crate::arm::neon::Neon;
                $body
            }
            #[cfg(target_arch = "aarch64")]
            $crate::Isa::NeonDotprod => {
                type $K = $crate::arm::neon::NeonDot;
                $body
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            $crate::Isa::Simd128 => {
                type $K = $crate::wasm::simd128::Simd128;
                $body
            }
            _ => {
                type $K = $crate::scalar::Scalar;
                $body
            }
        }
    };
}

/// Calls `$name($args)` of the detected ISA's family module (`x86::avx2`, `arm::neon`,
/// `wasm::simd128`; the AVX-512 ISAs and NEON + dot product run their family's vector ops), else
/// `scalar::$name`.
macro_rules! vector_op {
    ($name:ident ( $($arg:expr),* )) => {
        match $crate::detected_isa().vector_base() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detected_isa only returns an ISA of the AVX2 family when the CPU supports
            // AVX2 + FMA + F16C.
            $crate::Isa::Avx2 => unsafe { $crate::x86::avx2::$name($($arg),*) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: detected_isa only returns an ISA of the NEON family when the CPU has NEON.
            $crate::Isa::Neon => unsafe { $crate::arm::neon::$name($($arg),*) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            // SAFETY: Simd128 is only supported in builds with +simd128.
            $crate::Isa::Simd128 => unsafe { $crate::wasm::simd128::$name($($arg),*) },
            _ => $crate::scalar::$name($($arg),*),
        }
    };
}

pub(crate) use {vector_op, with_kernel};
