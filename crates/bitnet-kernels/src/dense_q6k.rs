//! ggml `Q6_K` dense matrices (a 6.5625-bit embedding / LM head): 210-byte blocks of 256
//! weights (`block_q6_K`: `ql[128]`, `qh[64]`, 16 int8 sub-block scales, f16 `d`), read
//! zero-copy from GGUF tensor bytes. The codec is `bitnet_quantization::q6_k`.
//!
//! The matmul is llama.cpp's CPU path for a Q6_K weight on x86: each activation row is
//! quantized once to Q8_K (`quantize_row_q8_K_ref` per 256 values: f32 `d`, int8 codes), and
//! each weight row is dotted as the AVX2 `ggml_vec_dot_q6_K_q8_K` does. Per block that forms
//! eight exact i32 lanes: lane `n` sums `scale[e / 16] * (code[e] - 32) * q8[e]` over the 32
//! elements `e` with `(e % 32) / 4 == n` (byte `4n..4n + 4` of each 32-element group, which
//! is where `maddubs` + `madd` leave them). The lanes are converted to f32 and fused
//! multiply-added with `d_x * d_w` into eight f32 lane accumulators, block after block; the row
//! result is `hsum_float_8` of those: `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
//!
//! The integer lanes are exact (|lane| <= 2^24 for any bytes, so even their f32 conversion is),
//! hence any grouping of the integer work gives the same lanes; only the float steps have an
//! order, and every kernel here (scalar, AVX2, NEON with and without `sdot`) performs exactly
//! the steps above. They are bit-identical to each other and to llama.cpp's AVX2 kernel
//! (tests/dense_q6k.rs checks results produced by ggml's own code).

use crate::dense_q8::hsum8;
use crate::Isa;
use bitnet_quantization::q6_k::{self, quantize_q8_k_block};
use half::f16;

/// Weights per block (ggml `QK_K`).
pub(crate) const QK: usize = q6_k::QK_K;
/// Bytes per block.
pub(crate) const BLOCK_BYTES: usize = q6_k::BLOCK_BYTES;
/// Byte offsets inside a block (`QH` only the SIMD kernels read; wasm32 has none for Q6_K).
#[cfg_attr(target_family = "wasm", allow(dead_code))]
pub(crate) const QH: usize = 128;
pub(crate) const SCALES: usize = 192;
pub(crate) const D: usize = 208;

#[inline(always)]
fn block_d(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[D], b[D + 1]]).to_f32()
}

/// Activations of `tokens` rows quantized to Q8_K blocks: `q[t * cols + k]`,
/// `d[t * cols / 256 + b]`.
pub(crate) struct QuantizedQ8K {
    q: Vec<i8>,
    d: Vec<f32>,
}

/// ggml's `quantize_row_q8_K` (on x86 the reference, `quantize_row_q8_K_ref`) per block.
pub(crate) fn quantize_activations(x: &[f32]) -> QuantizedQ8K {
    let mut q = vec![0i8; x.len()];
    let d = x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(QK))
        .map(|(xb, qb)| quantize_q8_k_block(xb, qb))
        .collect();
    QuantizedQ8K { q, d }
}

/// Dequantizes one Q6_K row (`dequantize_row_q6_K`); `out.len() == row.len() / 210 * 256`.
pub(crate) fn row_to_f32(row: &[u8], out: &mut [f32]) {
    let (blocks, _) = row.as_chunks::<BLOCK_BYTES>();
    let (outs, _) = out.as_chunks_mut::<QK>();
    for (b, o) in blocks.iter().zip(outs) {
        q6_k::decode_block(b, o);
    }
}

/// The eight i32 lanes of one block against one token (the definition the SIMD kernels
/// reproduce). `w` holds the block's signed codes `code - 32`.
#[inline(always)]
fn lanes(w: &[i8; QK], sc: &[u8], qx: &[i8]) -> [i32; 8] {
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

/// Scalar twin of the SIMD kernels: same lanes, same FMA order, same final sum.
fn dot_scalar<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    let mut acc = [[0.0f32; 8]; T];
    let (blocks, _) = row.as_chunks::<BLOCK_BYTES>();
    let mut w = [0i8; QK];
    for (b, blk) in blocks.iter().enumerate() {
        let dw = block_d(blk);
        for (e, we) in w.iter_mut().enumerate() {
            *we = q6_k::code(blk, e) as i8 - 32;
        }
        let sc = &blk[SCALES..D];
        for t in 0..T {
            let l = lanes(&w, sc, &q[t][b * QK..][..QK]);
            // ggml: `d = y[i].d * GGML_FP16_TO_FP32(x[i].d)`, then one FMA per lane.
            let db = d[t][b] * dw;
            for (a, &s) in acc[t].iter_mut().zip(&l) {
                *a = db.mul_add(s as f32, *a);
            }
        }
    }
    acc.map(hsum8)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK_BYTES, D, QH, QK, SCALES};
    use std::arch::x86_64::*;

    /// `vpshufb` controls that spread the i16 scales of group `g` (32 elements; `g % 4` here,
    /// the half of the scales comes from the source vector): i16 scale `2g` in all eight
    /// lanes of the low 128 bits, `2g + 1` in the high ones, where `maddubs` leaves the pair
    /// sums of the group's first and last 16 elements (ggml's `get_scale_shuffle` +
    /// `cvtepi8_epi16`, with the widening done once per block).
    const SHUF: [[u8; 32]; 4] = {
        let mut s = [[0u8; 32]; 4];
        let mut g = 0;
        while g < 4 {
            let mut i = 0;
            while i < 32 {
                let half = i / 16;
                s[g][i] = (4 * g + 2 * half + i % 2) as u8;
                i += 1;
            }
            g += 1;
        }
        s
    };

    /// `ggml_vec_dot_q6_K_q8_K` (AVX2) for `T` tokens sharing each weight unpacking.
    ///
    /// The instruction sequence per 32 elements is ggml's: `maddubs(q, x) - maddubs(32, x)`
    /// gives the pair sums of `(q - 32) * x` exactly for every int8 `x` (each `maddubs` stays
    /// below 2^14 in magnitude), `madd` with the scale widens to the i32 lanes.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C; `q[t].len() >= blocks * 256`, `d[t].len() >= blocks`.
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
        let rp = row.as_ptr();
        let m4 = _mm256_set1_epi8(0xF);
        let m30 = _mm256_set1_epi8(0x30);
        let m32s = _mm256_set1_epi8(32);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            // SAFETY: block b is in the row and in every q[t] / d[t] (caller's contract); the
            // prefetch address may lie past the row, which prefetching tolerates.
            unsafe {
                let blk = rp.add(b * BLOCK_BYTES);
                // The head streams every row once per token: keep the lines ~10 blocks ahead in
                // flight (four lines cover a 210-byte block). 2 KiB rather than Q8_0's 1 KiB:
                // a Q6_K block takes longer to compute, and on a 16-core Xeon the 128256 x 2560
                // head went 37.6 -> 30.0 ms on one thread, 11.8 -> 9.0 ms on four (4 KiB: no
                // better); on the 2-vCPU EPYC it is neutral.
                let ahead = blk.wrapping_add(2048);
                for l in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l * 64) as *const i8);
                }
                let h = (blk.add(D) as *const u16).read_unaligned();
                let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))));
                // The 16 int8 scales as i16, then each 128-bit half of them in both halves
                // of a vector, so one in-lane shuffle per group picks its two scales.
                let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(SCALES) as *const __m128i));
                let s_half = [
                    _mm256_permute2x128_si256::<0x00>(s16, s16),
                    _mm256_permute2x128_si256::<0x11>(s16, s16),
                ];
                let mut sumi = [_mm256_setzero_si256(); T];
                for (j, &sh) in s_half.iter().enumerate() {
                    let ql1 = _mm256_loadu_si256(blk.add(64 * j) as *const __m256i);
                    let ql2 = _mm256_loadu_si256(blk.add(64 * j + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(blk.add(QH + 32 * j) as *const __m256i);
                    // Codes 0..64 of elements 128j + 32k + 0..32, k = 0..4: the low nibbles of
                    // ql1 / ql2, then their high nibbles, each with bits 2k, 2k + 1 of qh moved
                    // to bits 4, 5. The 16-bit shifts spill bits into the neighbouring byte; the
                    // masks drop them.
                    let w = [
                        _mm256_or_si256(
                            _mm256_and_si256(ql1, m4),
                            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(ql2, m4),
                            _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                            _mm256_and_si256(qh, m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql2), m4),
                            _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                        ),
                    ];
                    for (k, &wk) in w.iter().enumerate() {
                        let g = 4 * j + k;
                        let shuf = _mm256_loadu_si256(SHUF[k].as_ptr() as *const __m256i);
                        let sc = _mm256_shuffle_epi8(sh, shuf);
                        for t in 0..T {
                            let xp = q[t].as_ptr().add(b * QK + 32 * g);
                            let x = _mm256_loadu_si256(xp as *const __m256i);
                            let p16 = _mm256_sub_epi16(
                                _mm256_maddubs_epi16(wk, x),
                                _mm256_maddubs_epi16(m32s, x),
                            );
                            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(sc, p16));
                        }
                    }
                }
                for t in 0..T {
                    let db = _mm256_set1_ps(*d[t].get_unchecked(b) * dw);
                    acc[t] = _mm256_fmadd_ps(db, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
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

/// Q6_K rows for the shared block driver (`dense_blocks`).
pub(crate) struct Q6kDot;

impl crate::dense_blocks::BlockDot for Q6kDot {
    const QK: usize = QK;
    const BLOCK_BYTES: usize = BLOCK_BYTES;

    unsafe fn dot<const T: usize>(isa: Isa, row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        match isa.vector_base() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded contract. AVX-512 machines run the AVX2 code, as llama.cpp's
            // Q6_K dot does.
            Isa::Avx2 => unsafe { avx2::dot(row, q, d) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: forwarded contract (NEON + dot product).
            Isa::Neon if isa == Isa::NeonDotprod => unsafe { crate::neon::q6k_sdot(row, q, d) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: forwarded contract (NEON).
            Isa::Neon => unsafe { crate::neon::q6k_dot(row, q, d) },
            _ => dot_scalar(row, q, d),
        }
    }
}

/// The Q6_K matmul: `out[t * rows + r] = dot(x[t], row r)`; shapes checked by the caller,
/// `isa` checked, `cols % 256 == 0`, `rows, tokens, cols > 0`.
pub(crate) fn matmul(
    data: &[u8],
    rows: usize,
    cols: usize,
    isa: Isa,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) {
    let xq = quantize_activations(x);
    // SAFETY: the caller checked the ISA and the shapes; xq holds `tokens` quantized rows.
    unsafe {
        crate::dense_blocks::matmul::<Q6kDot>(data, rows, cols, isa, (&xq.q, &xq.d), tokens, out)
    }
}
