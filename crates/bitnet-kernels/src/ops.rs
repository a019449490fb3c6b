//! f32 vector ops of the forward pass, dispatched like the matmuls. Each has a `*_scalar`
//! reference; the AVX2 and NEON versions agree with it to float rounding (`relu2_mul` exactly).
//!
//! All functions panic if their slice lengths disagree (a caller bug).

use crate::detected_isa;

pub use crate::scalar::{
    axpy as axpy_scalar, dot as dot_scalar, relu2_mul as relu2_mul_scalar,
    rms_norm as rms_norm_scalar, silu_mul as silu_mul_scalar,
    softmax_inplace as softmax_inplace_scalar,
};

/// Expands to the call of the dispatched ISA's version (AVX2 or NEON), else the scalar one.
/// `crate::Isa` is spelled out because on targets without SIMD arms the match names no variant.
macro_rules! dispatch {
    ($name:ident ( $($arg:expr),* )) => {
        match detected_isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detected_isa only returns Avx2 / Avx512Vnni when the CPU supports
            // AVX2 + FMA + F16C (the AVX-512 path uses the AVX2 vector ops).
            crate::Isa::Avx2 | crate::Isa::Avx512Vnni | crate::Isa::Avx512Vnni256 => unsafe { crate::avx2::$name($($arg),*) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: detected_isa only returns Neon / NeonDotprod when the CPU has NEON (the
            // dot-product ISA uses the NEON vector ops).
            crate::Isa::Neon | crate::Isa::NeonDotprod => unsafe { crate::neon::$name($($arg),*) },
            _ => crate::scalar::$name($($arg),*),
        }
    };
}

/// `out = weight * x / sqrt(mean(x^2) + eps)` (RMSNorm; mean of squares in f32 as torch does).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == out.len(),
        "rms_norm: length mismatch"
    );
    dispatch!(rms_norm(x, weight, eps, out))
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    dispatch!(dot(a, b))
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    dispatch!(axpy(alpha, x, y))
}

/// Numerically stable softmax (subtracts the max first).
pub fn softmax_inplace(x: &mut [f32]) {
    dispatch!(softmax_inplace(x))
}

/// `out = relu(gate)^2 * up` (BitNet b1.58's squared-ReLU GLU).
pub fn relu2_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "relu2_mul: length mismatch"
    );
    dispatch!(relu2_mul(gate, up, out))
}

/// `out = silu(gate) * up` (SwiGLU, for the 1bitLLM-style BitNet models).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "silu_mul: length mismatch"
    );
    dispatch!(silu_mul(gate, up, out))
}
