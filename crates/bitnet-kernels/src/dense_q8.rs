//! ggml `Q8_0` dense matrices (an 8-bit embedding / LM head): blocks of 32 int8 weights with
//! one f16 scale `d` first (`block_q8_0`, 34 bytes), read zero-copy from GGUF tensor bytes.
//!
//! The matmul follows llama.cpp's CPU path for a Q8_0 weight: every activation row is quantized
//! once to Q8_0 blocks the way ggml's AVX2 `quantize_row_q8_0` does (per 32 values
//! `amax = max|x|`, `q = round_half_even(x * (127 / amax))`, `d = f16(amax / 127)`), and each
//! weight row is dotted as `ggml_vec_dot_q8_0_q8_0` does on AVX2: per block the exact integer
//! dot, as eight i32 lanes of four products each, converted to f32 and FMA'd with
//! `d_w * d_x` into eight f32 lane accumulators, summed at the end as `hsum_float_8` does.
//! The scalar twin performs the same operations in the same order (with `f32::mul_add`), so
//! every ISA gives bit-identical results (the NEON kernels, in neon.rs, form the same lanes).

use crate::Isa;
use half::f16;

/// Weights per block (ggml `QK8_0`).
pub(crate) const QK: usize = 32;
/// Bytes per block: f16 scale + 32 x i8.
pub(crate) const BLOCK_BYTES: usize = 34;

#[inline(always)]
fn block_d(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Activations of `tokens` rows quantized to Q8_0 blocks: `q[t * cols + k]`,
/// `d[t * cols / 32 + b]` (the f16-rounded block scale, as f32).
pub(crate) struct QuantizedQ8 {
    q: Vec<i8>,
    d: Vec<f32>,
}

/// ggml's `quantize_row_q8_0` (the AVX2 one llama.cpp runs here; `_mm256_round_ps` with
/// `_MM_ROUND_NEAREST` rounds half to even).
pub(crate) fn quantize_activations(x: &[f32], cols: usize) -> QuantizedQ8 {
    debug_assert!(cols.is_multiple_of(QK));
    let mut q = vec![0i8; x.len()];
    let mut d = Vec::with_capacity(x.len() / QK);
    for (xb, qb) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)) {
        let amax = xb.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        d.push(f16::from_f32(amax / 127.0).to_f32());
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = (v * id).round_ties_even() as i8;
        }
    }
    QuantizedQ8 { q, d }
}

/// Dequantizes one Q8_0 row: `q * d`.
pub(crate) fn row_to_f32(row: &[u8], out: &mut [f32]) {
    for (blk, ob) in row.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = block_d(blk);
        for (o, &q) in ob.iter_mut().zip(&blk[2..]) {
            *o = f32::from(q as i8) * d;
        }
    }
}

/// `hsum_float_8`: `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
#[inline(always)]
pub(crate) fn hsum8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Scalar twin of the AVX2 kernel: same lanes, same FMA order.
fn dot_scalar<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    let mut acc = [[0.0f32; 8]; T];
    for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let dw = block_d(blk);
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK_BYTES, QK};
    use std::arch::x86_64::*;

    /// Blocks `b0..b0 + N` of the row into each token's lane accumulators, with the combined
    /// scales `dd[t][k0..k0 + N]`.
    ///
    /// # Safety
    /// AVX2 + FMA; the blocks are in the row (`rp`) and in every `q[t]`; `k0 + N <= 8`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn blocks<const T: usize, const N: usize>(
        rp: *const u8,
        q: [&[i8]; T],
        b0: usize,
        dd: &[[f32; 8]; T],
        k0: usize,
        acc: &mut [__m256; T],
    ) {
        let ones = _mm256_set1_epi16(1);
        for k in 0..N {
            let b = b0 + k;
            // SAFETY: forwarded contract.
            unsafe {
                let qw = _mm256_loadu_si256(rp.add(b * BLOCK_BYTES + 2) as *const __m256i);
                let aw = _mm256_sign_epi8(qw, qw);
                for t in 0..T {
                    let qx = _mm256_loadu_si256(q[t].as_ptr().add(b * QK) as *const __m256i);
                    let sx = _mm256_sign_epi8(qx, qw);
                    let dot16 = _mm256_maddubs_epi16(aw, sx);
                    let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot16));
                    let db = _mm256_set1_ps(*dd[t].get_unchecked(k0 + k));
                    acc[t] = _mm256_fmadd_ps(db, s, acc[t]);
                }
            }
        }
    }

    /// `ggml_vec_dot_q8_0_q8_0` (AVX2) for `T` tokens sharing each weight block load.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C; `q[t].len() >= blocks * 32`, `d[t].len() >= blocks`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<const T: usize>(
        row: &[u8],
        q: [&[i8]; T],
        d: [&[f32]; T],
    ) -> [f32; T] {
        let nb = row.len() / BLOCK_BYTES;
        for t in 0..T {
            debug_assert!(q[t].len() >= nb * QK && d[t].len() >= nb);
        }
        let mut acc = [_mm256_setzero_ps(); T];
        let rp = row.as_ptr();
        // The block scales are converted 8 at a time and multiplied by the activation scales
        // up front (the same f32 products ggml forms per block), so the inner loop only
        // broadcasts them: no scalar f16 conversion on the accumulator's dependency chain.
        let mut dd = [[0.0f32; 8]; T];
        let mut b0 = 0;
        while b0 + 8 <= nb {
            // SAFETY: b0 + 8 <= nb = row.len() / BLOCK_BYTES, so blocks b0..b0 + 8 are in the
            // row, and in every q[t] / d[t] (this function's contract); prefetches never fault.
            unsafe {
                // The head streams every row once per token: keep the lines
                // `prefetch::DENSE_BYTES` ahead in flight (8 blocks = 272 bytes per iteration,
                // 5 lines cover them).
                let ahead = rp.wrapping_add(b0 * BLOCK_BYTES + crate::prefetch::DENSE_BYTES);
                for l in 0..5 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l * 64) as *const i8);
                }
                let h: [u16; 8] = std::array::from_fn(|i| {
                    (rp.add((b0 + i) * BLOCK_BYTES) as *const u16).read_unaligned()
                });
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
                for t in 0..T {
                    let dx = _mm256_loadu_ps(d[t].as_ptr().add(b0));
                    _mm256_storeu_ps(dd[t].as_mut_ptr(), _mm256_mul_ps(dw, dx));
                }
                blocks::<T, 8>(rp, q, b0, &dd, 0, &mut acc);
            }
            b0 += 8;
        }
        if b0 < nb {
            let n = nb - b0;
            // SAFETY: blocks b0..nb are in the row and in every q[t] / d[t], as above.
            unsafe {
                let mut h = [0u16; 8];
                for (i, hi) in h.iter_mut().enumerate().take(n) {
                    *hi = (rp.add((b0 + i) * BLOCK_BYTES) as *const u16).read_unaligned();
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
                for t in 0..T {
                    let mut dx = [0.0f32; 8];
                    dx[..n].copy_from_slice(&d[t][b0..nb]);
                    let v = _mm256_mul_ps(dw, _mm256_loadu_ps(dx.as_ptr()));
                    _mm256_storeu_ps(dd[t].as_mut_ptr(), v);
                }
                for i in 0..n {
                    blocks::<T, 1>(rp, q, b0 + i, &dd, i, &mut acc);
                }
            }
        }
        let mut out = [0.0f32; T];
        for t in 0..T {
            out[t] = crate::avx2::hsum_ps(acc[t]);
        }
        out
    }
}

/// Q8_0 rows for the shared block driver (`dense_blocks`).
pub(crate) struct Q8Dot;

impl crate::dense_blocks::BlockDot for Q8Dot {
    const QK: usize = QK;
    const BLOCK_BYTES: usize = BLOCK_BYTES;

    unsafe fn dot<const T: usize>(isa: Isa, row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        match isa.vector_base() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded contract.
            Isa::Avx2 => unsafe { avx2::dot(row, q, d) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: forwarded contract (NEON + dot product).
            Isa::Neon if isa == Isa::NeonDotprod => unsafe { crate::neon::q8_sdot(row, q, d) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: forwarded contract (NEON).
            Isa::Neon => unsafe { crate::neon::q8_dot(row, q, d) },
            _ => dot_scalar(row, q, d),
        }
    }
}

/// The Q8_0 matmul: `out[t * rows + r] = dot(x[t], row r)`; shapes checked by the caller,
/// `isa` checked, `cols % 32 == 0`, `rows, tokens, cols > 0`.
pub(crate) fn matmul(
    data: &[u8],
    rows: usize,
    cols: usize,
    isa: Isa,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) {
    let xq = quantize_activations(x, cols);
    // SAFETY: the caller checked the ISA and the shapes; xq holds `tokens` quantized rows.
    unsafe {
        crate::dense_blocks::matmul::<Q8Dot>(data, rows, cols, isa, (&xq.q, &xq.d), tokens, out)
    }
}
