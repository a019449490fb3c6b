//! Q8_0 weights x Q8_0 activations for two or more tokens (the batched LM head) on AVX-512
//! VNNI, bit-identical to `ggml_vec_dot_q8_0_q8_0` on AVX2 (`scalar::q8_0_dot`, the AVX2 kernel
//! that one token still runs).
//!
//! ggml's float order fixes the work per (row, token, block): eight exact i32 lanes of four
//! products each, converted to f32 and FMA'd with `d_w * d_x` into eight lane accumulators,
//! summed at the end in `hsum_float_8`'s order. The AVX2 kernel spends six vector instructions on
//! those 32 multiply-adds (sign, `maddubs`, `madd`, convert, broadcast, FMA), which makes a
//! batched head compute-bound (~20 GMAC/s a core on the lent Xeon at 16 tokens). Here one zmm
//! register holds two tokens' eight lanes (low and high 256 bits), so the convert, the scale
//! product and the FMA each serve two tokens, and `vpdpbusd` forms the lanes in one
//! instruction. It multiplies unsigned by signed bytes, so the weight codes go in offset by 128
//! (`w ^ 0x80`, one XOR per row and block for all tokens) and every lane starts from
//! `-128 * (sum of its four activation codes)`, packed once per call ([`PairBlock`]): the lane
//! then holds exactly ggml's integer (all values stay far inside i32).
//!
//! A pass takes [`ROWS`] weight rows against [`PAIRS`] token pairs (16 accumulators), so each
//! packed activation block is loaded once for four rows and each weight block once for eight
//! tokens; the shared driver (`matmul::drive`) hands out the row chunks and token tiles.

use crate::kernel::Kernel;
use crate::matmul::Tiles;
use crate::pool::SharedOut;
use crate::x86::avx2::hsum_ps;
use crate::x86::prefetch;
use bitnet_quantization::q8_0::{BLOCK_BYTES, QK8_0};
use bitnet_quantization::DenseMatrix;
use std::arch::x86_64::*;

/// Token pairs per pass (a token tile of the driver is `2 * PAIRS` tokens).
const PAIRS: usize = 4;

/// Weight rows per pass.
const ROWS: usize = 4;

/// One block of a token pair's activations, in the kernel's operand layout.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct PairBlock {
    /// The first token's 32 codes, then the second's.
    x: [i8; 64],
    /// Each `vpdpbusd` lane's start value: `-128 *` the sum of the four codes it multiplies.
    start: [i32; 16],
    /// Each token's block scale, in its eight lanes.
    d: [f32; 16],
}

impl PairBlock {
    const ZERO: PairBlock = PairBlock {
        x: [0; 64],
        start: [0; 16],
        d: [0.0; 16],
    };
}

/// Packs `tokens` quantized activation rows (`q[t * cols + k]`, `d[t * nb + b]`, `nb` blocks a
/// row) as `[block][pair]`. An odd token count leaves the last pair's second half zero: its
/// results are computed and dropped.
pub(crate) fn pack(q: &[i8], d: &[f32], tokens: usize, nb: usize) -> Vec<PairBlock> {
    assert!(q.len() == tokens * nb * QK8_0 && d.len() == tokens * nb);
    let pairs = tokens.div_ceil(2);
    let mut out = vec![PairBlock::ZERO; nb * pairs];
    for t in 0..tokens {
        let (p, h) = (t / 2, t % 2);
        for b in 0..nb {
            let pb = &mut out[b * pairs + p];
            let codes = &q[(t * nb + b) * QK8_0..][..QK8_0];
            pb.x[h * 32..][..32].copy_from_slice(codes);
            for (lane, four) in codes.chunks_exact(4).enumerate() {
                pb.start[h * 8 + lane] = -128 * four.iter().map(|&c| i32::from(c)).sum::<i32>();
            }
            pb.d[h * 8..][..8].fill(d[t * nb + b]);
        }
    }
    out
}

/// The batched head as a driver operand: rows of `m` against the packed pairs. Build it only
/// after checking that the CPU has AVX-512 F + BW + VNNI (with AVX2, FMA and F16C): its
/// [`Tiles::run`] runs those instructions whatever kernel `K` the driver names (`dense.rs`
/// builds it for `Isa::Avx512Vnni` and `Isa::Amx` only).
pub(crate) struct Q8PairTiles<'a> {
    pub(crate) m: &'a DenseMatrix,
    pub(crate) packed: &'a [PairBlock],
    pub(crate) tokens: usize,
    pub(crate) out: SharedOut<f32>,
}

impl Tiles for Q8PairTiles<'_> {
    type Scratch = ();

    fn rows(&self) -> usize {
        self.m.rows()
    }

    fn row_bytes(&self) -> usize {
        self.m.row_bytes()
    }

    fn row_align(&self) -> usize {
        ROWS
    }

    fn token_tile(&self) -> usize {
        2 * PAIRS
    }

    unsafe fn run<K: Kernel>(
        &self,
        t0: usize,
        nt: usize,
        rows: std::ops::Range<usize>,
        _: &mut (),
    ) {
        debug_assert!(t0.is_multiple_of(2) && (1..=2 * PAIRS).contains(&nt));
        macro_rules! by_pairs {
            ($R:literal, $r:expr) => {
                // SAFETY: Q8PairTiles is only built after checking AVX-512 VNNI (with AVX2, FMA
                // and F16C); rows r.. and tokens t0..t0 + nt exist and are this task's.
                unsafe {
                    match nt.div_ceil(2) {
                        4 => self.pass::<$R, 4>($r, t0, nt),
                        3 => self.pass::<$R, 3>($r, t0, nt),
                        2 => self.pass::<$R, 2>($r, t0, nt),
                        _ => self.pass::<$R, 1>($r, t0, nt),
                    }
                }
            };
        }
        let mut r = rows.start;
        while r + ROWS <= rows.end {
            by_pairs!(4, r);
            r += ROWS;
        }
        for r in r..rows.end {
            by_pairs!(1, r);
        }
    }
}

impl Q8PairTiles<'_> {
    /// Rows `r..r + R` against the `P` pairs from token `t0` (`nt` of them real), stored.
    ///
    /// # Safety
    /// AVX-512 F + BW + VNNI, AVX2, FMA, F16C; the rows exist; `t0` is even and the pairs
    /// exist in `packed`; no other task writes these outputs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn pass<const R: usize, const P: usize>(&self, r: usize, t0: usize, nt: usize) {
        let m = self.m;
        let nb = m.cols() / QK8_0;
        let pairs = self.tokens.div_ceil(2);
        let rp: [*const u8; R] = std::array::from_fn(|j| m.row(r + j).as_ptr());
        let pp = self.packed.as_ptr().wrapping_add(t0 / 2);
        let flip = _mm512_set1_epi8(0x80u8 as i8);
        let mut acc = [[_mm512_setzero_ps(); R]; P];
        let mut b0 = 0;
        while b0 < nb {
            // Each row's block scales, 16 at a time (one conversion instead of one per block).
            let n = (nb - b0).min(16);
            let mut dw = [[0.0f32; 16]; R];
            for (j, dwj) in dw.iter_mut().enumerate() {
                let mut h = [0u16; 16];
                for (k, hk) in h.iter_mut().enumerate().take(n) {
                    // SAFETY: block b0 + k < nb is in row r + j.
                    *hk = unsafe {
                        (rp[j].add((b0 + k) * BLOCK_BYTES) as *const u16).read_unaligned()
                    };
                }
                // SAFETY: 32 readable bytes in `h`, 64 writable in `dwj`.
                unsafe {
                    let v = _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr() as *const __m256i));
                    _mm512_storeu_ps(dwj.as_mut_ptr(), v);
                }
            }
            for (k, b) in (b0..b0 + n).enumerate() {
                // SAFETY: block b is in every row (the 32 codes after its 2-byte scale), and
                // pairs t0 / 2 .. t0 / 2 + P of block b in `packed` ([block][pair], 64-byte
                // aligned); prefetches never fault.
                unsafe {
                    let w: [__m512i; R] = std::array::from_fn(|j| {
                        let p = rp[j].add(b * BLOCK_BYTES);
                        _mm_prefetch::<_MM_HINT_T0>(
                            p.wrapping_add(prefetch::DENSE_BYTES) as *const i8
                        );
                        let codes = _mm256_loadu_si256(p.add(2) as *const __m256i);
                        _mm512_xor_si512(_mm512_broadcast_i64x4(codes), flip)
                    });
                    for (i, acc_i) in acc.iter_mut().enumerate() {
                        let blk = pp.add(b * pairs + i);
                        let start = _mm512_load_si512((*blk).start.as_ptr() as *const __m512i);
                        let x = _mm512_load_si512((*blk).x.as_ptr() as *const __m512i);
                        let dx = _mm512_load_ps((*blk).d.as_ptr());
                        for (j, a) in acc_i.iter_mut().enumerate() {
                            let lanes = _mm512_dpbusd_epi32(start, w[j], x);
                            let db = _mm512_mul_ps(_mm512_set1_ps(dw[j][k & 15]), dx);
                            *a = _mm512_fmadd_ps(db, _mm512_cvtepi32_ps(lanes), *a);
                        }
                    }
                }
            }
            b0 += n;
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (j, &a) in acc_i.iter().enumerate() {
                for h in 0..2 {
                    let t = t0 + 2 * i + h;
                    if t >= t0 + nt {
                        break;
                    }
                    let half = if h == 0 {
                        _mm512_castps512_ps256(a)
                    } else {
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)))
                    };
                    // SAFETY: (t, r + j) is an output of this task (the caller's contract).
                    unsafe { self.out.write(t * m.rows() + r + j, hsum_ps(half)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packing's promise, without the ISA: `start + sum (w + 128) * x` over a lane's four
    /// products is the signed dot `sum w * x` for every weight byte, the extremes included.
    #[test]
    fn offset_lanes_equal_signed_dots() {
        let nb = 3;
        let tokens = 3;
        let q: Vec<i8> = (0..tokens * nb * QK8_0)
            .map(|i| ((i * 37 + 11) % 255) as i32 as i8)
            .map(|v| if v == -128 { -127 } else { v })
            .collect();
        let d: Vec<f32> = (0..tokens * nb).map(|i| i as f32 * 0.5 + 0.25).collect();
        let packed = pack(&q, &d, tokens, nb);
        let pairs = tokens.div_ceil(2);
        assert_eq!(packed.len(), nb * pairs);
        let w: Vec<i8> = (0..QK8_0).map(|i| [-128, 127, -1, 0, 5][i % 5]).collect();
        for t in 0..tokens {
            for b in 0..nb {
                let blk = &packed[b * pairs + t / 2];
                let h = t % 2;
                assert_eq!(blk.d[h * 8..][..8], [d[t * nb + b]; 8]);
                for lane in 0..8 {
                    let x = &blk.x[h * 32 + 4 * lane..][..4];
                    let offset: i32 = (0..4)
                        .map(|i| (i32::from(w[4 * lane + i] as u8 ^ 0x80)) * i32::from(x[i]))
                        .sum();
                    let signed: i32 = (0..4)
                        .map(|i| {
                            i32::from(w[4 * lane + i])
                                * i32::from(q[(t * nb + b) * 32 + 4 * lane + i])
                        })
                        .sum();
                    assert_eq!(blk.start[h * 8 + lane] + offset, signed);
                }
            }
        }
        // The odd token's partner half is zero (scale 0: its lanes add nothing anyone reads).
        let last = &packed[pairs - 1];
        assert!(last.x[32..].iter().all(|&v| v == 0) && last.d[8..] == [0.0; 8]);
    }
}
