//! Portable kernels: the fallback on CPUs without AVX2 / NEON / SIMD128 and the reference the
//! SIMD versions are tested against. Written so the compiler can auto-vectorize the simple loops,
//! but without anything clever. The Q8_0 / Q6_K twins perform the SIMD kernels' exact float
//! steps, so every ISA gives bit-identical head logits.

use crate::kernel::{BlockKernel, DenseKernel, QuantizeKernel, TernaryKernel};
use bitnet_quantization::{i2s::BLOCK, q6_k, q8_0, DenseType};
use half::f16;

/// The portable kernels; `T` tokens share one pass over a weight row.
pub(crate) struct Scalar;

impl TernaryKernel for Scalar {
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

impl DenseKernel for Scalar {
    unsafe fn dot<const T: usize>(
        row: &[u8],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [f32; T] {
        let cols = x.first().map_or(0, |x| x.len());
        buf.resize(cols, 0.0);
        ty.row_to_f32(row, buf);
        let mut out = [0.0f32; T];
        for (o, xt) in out.iter_mut().zip(x) {
            *o = dot(buf, xt);
        }
        out
    }

    unsafe fn row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]) {
        ty.row_to_f32(row, out)
    }
}

impl BlockKernel for Scalar {
    unsafe fn q8_0_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        q8_0_dot(row, q, d)
    }

    unsafe fn q6_k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        q6_k_dot(row, q, d)
    }
}

impl QuantizeKernel for Scalar {
    unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        let s = bitnet_quantization::quantize_activation_row(x, q);
        (s, q.iter().map(|&v| i32::from(v)).sum())
    }
}

/// ggml's `hsum_float_8`: `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`, the order the
/// Q8_0 / Q6_K dots of every ISA end with.
#[inline(always)]
pub(crate) fn hsum8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `ggml_vec_dot_q8_0_q8_0` as the AVX2 kernel computes it: per block the exact integer dot as
/// eight i32 lanes of four products each, converted to f32 and FMA'd with `d_w * d_x` into eight
/// lane accumulators, summed at the end by [`hsum8`].
pub(crate) fn q8_0_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    const QK: usize = q8_0::QK8_0;
    let mut acc = [[0.0f32; 8]; T];
    for (b, blk) in row.chunks_exact(q8_0::BLOCK_BYTES).enumerate() {
        let dw = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let qw = &blk[2..];
        for t in 0..T {
            let qx = &q[t][b * QK..][..QK];
            let db = dw * d[t][b];
            for (lane, a) in acc[t].iter_mut().enumerate() {
                let s: i32 = (0..4)
                    .map(|j| i32::from(qw[4 * lane + j] as i8) * i32::from(qx[4 * lane + j]))
                    .sum();
                *a = db.mul_add(s as f32, *a);
            }
        }
    }
    acc.map(hsum8)
}

/// The Q8_0 dot in whole-block order (the AMX head's, `x86::amx_q8_0`): per block the exact
/// integer dot of all 32 products, converted to f32 and FMA'd with `d_w * d_x` into one
/// accumulator, block after block. The integers are [`q8_0_dot`]'s; only the float sums differ
/// (one chain over block sums instead of eight lane chains over quarter-block sums).
#[cfg(target_arch = "x86_64")]
pub(crate) fn q8_0_dot_blockwise(row: &[u8], q: &[i8], d: &[f32]) -> f32 {
    const QK: usize = q8_0::QK8_0;
    let mut acc = 0.0f32;
    for (b, blk) in row.chunks_exact(q8_0::BLOCK_BYTES).enumerate() {
        let dw = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let s: i32 = blk[2..]
            .iter()
            .zip(&q[b * QK..][..QK])
            .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
            .sum();
        acc = (dw * d[b]).mul_add(s as f32, acc);
    }
    acc
}

/// The eight i32 lanes of one Q6_K block against one token (the definition the SIMD kernels
/// reproduce): lane `n` sums `scale[e / 16] * (code[e] - 32) * q8[e]` over the 32 elements `e`
/// with `(e % 32) / 4 == n`. `w` holds the block's signed codes `code - 32`.
#[inline(always)]
fn q6_k_lanes(w: &[i8; q6_k::QK_K], sc: &[u8], qx: &[i8]) -> [i32; 8] {
    let mut l = [0i32; 8];
    for g in 0..8 {
        for (n, ln) in l.iter_mut().enumerate() {
            let e = 32 * g + 4 * n;
            let p: i32 = (e..e + 4).map(|k| i32::from(w[k]) * i32::from(qx[k])).sum();
            *ln += i32::from(sc[2 * g + n / 4] as i8) * p;
        }
    }
    l
}

/// `ggml_vec_dot_q6_K_q8_K` as the SIMD kernels compute it: same lanes, same FMA order, same
/// final sum.
pub(crate) fn q6_k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    const QK: usize = q6_k::QK_K;
    let mut acc = [[0.0f32; 8]; T];
    let (blocks, _) = row.as_chunks::<{ q6_k::BLOCK_BYTES }>();
    let mut w = [0i8; QK];
    for (b, blk) in blocks.iter().enumerate() {
        let dw = f16::from_le_bytes([blk[q6_k::D], blk[q6_k::D + 1]]).to_f32();
        for (e, we) in w.iter_mut().enumerate() {
            *we = q6_k::code(blk, e) as i8 - 32;
        }
        let sc = &blk[q6_k::SCALES..q6_k::D];
        for t in 0..T {
            let l = q6_k_lanes(&w, sc, &q[t][b * QK..][..QK]);
            // ggml: `d = y[i].d * GGML_FP16_TO_FP32(x[i].d)`, then one FMA per lane.
            let db = d[t][b] * dw;
            for (a, &s) in acc[t].iter_mut().zip(&l) {
                *a = db.mul_add(s as f32, *a);
            }
        }
    }
    acc.map(hsum8)
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
