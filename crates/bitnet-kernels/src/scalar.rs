//! Portable kernels: the fallback on CPUs without AVX2 and the reference the SIMD versions are
//! tested against. Written so the compiler can auto-vectorize the simple loops, but without
//! anything clever.

use crate::dense::DenseType;
use crate::ternary::BLOCK;

/// Ternary dot kernels used by the tiled matmul driver; `T` tokens share one pass over a
/// weight row.
pub(crate) struct Scalar;

impl crate::ternary::TernaryKernel for Scalar {
    /// Raw sums `sum_k code_k * q_t[k]` (codes 0..=2, before the `- sum(q)` correction).
    unsafe fn dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
        let mut acc = [0i32; T];
        for (bi, wb) in w.chunks_exact(32).enumerate() {
            for (t, qt) in q.iter().enumerate() {
                let qb = &qt[bi * BLOCK..][..BLOCK];
                let mut s = 0i32;
                for j in 0..32 {
                    let b = wb[j];
                    s += i32::from(b >> 6) * i32::from(qb[j])
                        + i32::from((b >> 4) & 3) * i32::from(qb[j + 32])
                        + i32::from((b >> 2) & 3) * i32::from(qb[j + 64])
                        + i32::from(b & 3) * i32::from(qb[j + 96]);
                }
                acc[t] += s;
            }
        }
        acc
    }
}

/// One dense row (F32/F16/BF16/Q8_0/Q6_K bytes) converted to f32.
pub(crate) fn row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]) {
    match ty {
        DenseType::F32 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DenseType::F16 => bitnet_quantization::float::f16_to_f32(row, out),
        DenseType::BF16 => bitnet_quantization::float::bf16_to_f32(row, out),
        DenseType::Q8_0 | DenseType::Q6_K => crate::dense::quantized_row_to_f32(row, ty, out),
    }
}

impl crate::dense::DenseKernel for Scalar {
    unsafe fn dot<const T: usize>(
        row: &[u8],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [f32; T] {
        let cols = x.first().map_or(0, |x| x.len());
        buf.resize(cols, 0.0);
        row_to_f32(row, ty, buf);
        let mut out = [0.0f32; T];
        for (o, xt) in out.iter_mut().zip(x) {
            *o = dot(buf, xt);
        }
        out
    }

    unsafe fn row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]) {
        row_to_f32(row, ty, out)
    }
}

/// Eight interleaved partial sums: lets LLVM vectorize the loop (a single running sum cannot be
/// reordered) and is slightly more accurate than a sequential sum.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    let mut acc = [0.0f32; 8];
    let (ac, at) = a.split_at(a.len() / 8 * 8);
    let (bc, bt) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == out.len(),
        "rms_norm: length mismatch"
    );
    if x.is_empty() {
        return;
    }
    let ss = x.iter().fold(0.0f32, |s, &v| s + v * v);
    let r = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    // torch: x * rsqrt(mean + eps), then weight * that.
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
        *o = wi * (xi * r);
    }
}

pub fn softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| v.max(m));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

pub fn relu2_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "relu2_mul: length mismatch"
    );
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let r = g.max(0.0);
        *o = r * r * u;
    }
}

pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "silu_mul: length mismatch"
    );
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}
