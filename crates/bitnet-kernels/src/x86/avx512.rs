//! x86-64 AVX-512 VNNI ternary kernels, and the dense 4 x 4 tile of batched LM heads
//! ([`DenseKernel::dot_quad`]). Require AVX-512 F + BW + VL + VNNI (and, for the activation
//! quantization and every non-ternary kernel, which stay on the AVX2 code, AVX2 + FMA + F16C);
//! the dispatch (`dispatch.rs`) only routes here after checking all of them at run time.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed bytes and adds each group of four products
//! into an i32 lane, so the unsigned 2-bit codes (0..=2) go in as they are and no i16
//! intermediate (with its saturation limit) is involved.
//!
//! Layout trick: a 128-weight block is 32 bytes, its element `32 * g + i` at byte `i`, bits
//! `7 - 2g ..= 6 - 2g`. The block is broadcast into both 256-bit halves of a zmm register and
//! ANDed with a per-half mask: the low half keeps group 0 (bits 7:6) and the high half group 1
//! (bits 5:4), which lines up byte for byte with the 64 contiguous activations `q[0..64]`; a
//! second mask (groups 2 and 3, bits 3:2 and 1:0) lines up with `q[64..128]`. The codes stay in
//! place, i.e. scaled by 64 / 16 / 4 / 1 per half; every `vpdpbusd` lane holds the sum of four
//! products of one group, so a lane's accumulator is exactly `2^s *` its true partial sum. Every
//! [`FLUSH_BLOCKS`] blocks each lane is shifted right by its `s` (exact: the value is a multiple
//! of `2^s`) and added to the true total, long before the scaled sums could overflow i32. No
//! shifts or shuffles on the weight path: one broadcast load and two ANDs per block.

use crate::kernel::{BlockKernel, DenseKernel, QuantizeKernel, TernaryKernel};
use crate::x86::avx2::{hsum4_i32, hsum_i32, ty_size, Avx2, TY_BF16, TY_F16, TY_F32};
use crate::x86::prefetch;
use bitnet_quantization::DenseType;
use std::arch::x86_64::*;

/// The AVX-512 VNNI kernels: 512-bit prompt tiles, and the decode kernel on 512-bit vectors
/// ([`crate::Isa::Avx512Vnni`]) or on 256-bit ones ([`crate::Isa::Avx512Vnni256`], which says
/// when and why).
pub(crate) struct Avx512Vnni<const DECODE_256: bool>;

/// Blocks accumulated at scale before the shift-down. A lane gains at most
/// `4 * (2 << 6) * 128 = 65536` in magnitude per block, so 64 blocks stay below 2^22, far inside
/// i32. Even, so only the row's last group can have an odd block count.
const FLUSH_BLOCKS: usize = 64;

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn loadu512(p: *const i8) -> __m512i {
    // SAFETY: the caller guarantees 64 readable bytes.
    unsafe { _mm512_loadu_si512(p as *const __m512i) }
}

/// The 32 bytes of block `b` in both halves of a zmm register.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_block(wp: *const u8, b: usize) -> __m512i {
    // SAFETY: the caller guarantees block b exists.
    unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(wp.add(b * 32) as *const __m256i)) }
}

/// A zmm register with `lo` in the low 256 bits and `hi` in the high 256 bits.
#[inline]
#[target_feature(enable = "avx512f")]
fn halves(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The horizontal sums of four vectors, written with one 16-byte store: one transposing add
/// tree (128-bit quarters of pairs, then of the pairs' sums, then the dwords within each
/// quarter).
///
/// Why: the kernels return their sums through memory, and the caller reads a row's four at
/// once; four scalar stores from four `_mm512_reduce_add_epi32` cannot be forwarded to that
/// 16-byte load, which stalled the tile's caller (`perf`: a sixth of a 16-sequence KJV step
/// on the instruction after the call). The tree alone does not pay: a first try that stored
/// the four sums one by one (or wrote all 64 bytes and read four back) was 10-20% slower.
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum4_epi32(v: [__m512i; 4]) -> [i32; 4] {
    let pair = |a: __m512i, b: __m512i| {
        // [a0 + a2, a1 + a3, b0 + b2, b1 + b3] by 128-bit quarter.
        _mm512_add_epi32(
            _mm512_shuffle_i64x2::<0b01_00_01_00>(a, b),
            _mm512_shuffle_i64x2::<0b11_10_11_10>(a, b),
        )
    };
    let (ab, cd) = (pair(v[0], v[1]), pair(v[2], v[3]));
    // Quarter i holds vector i's four partial dwords.
    let x = _mm512_add_epi32(
        _mm512_shuffle_i64x2::<0b10_00_10_00>(ab, cd),
        _mm512_shuffle_i64x2::<0b11_01_11_01>(ab, cd),
    );
    let x = _mm512_add_epi32(x, _mm512_shuffle_epi32::<0b01_00_11_10>(x));
    let x = _mm512_add_epi32(x, _mm512_shuffle_epi32::<0b10_11_00_01>(x));
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    let s = _mm512_castsi512_si128(_mm512_permutexvar_epi32(idx, x));
    let mut out = [0i32; 4];
    // SAFETY: `out` is 16 bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s) };
    out
}

/// Raw sums `sum_k code_k * q_t[k]` of one packed row against `T` tokens, two blocks per
/// iteration into separate accumulators (so consecutive blocks' `vpdpbusd` chains overlap),
/// then an odd trailing block on its own.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn ternary_dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
    let nb = w.len() / 32;
    let wp = w.as_ptr();
    let mut qp = [std::ptr::null::<i8>(); T];
    for t in 0..T {
        debug_assert!(q[t].len() >= nb * 128);
        qp[t] = q[t].as_ptr();
    }
    // Groups 0 | 1 against q[0..64], groups 2 | 3 against q[64..128], and their scales.
    let m01 = halves(_mm256_set1_epi8(0xC0u8 as i8), _mm256_set1_epi8(0x30));
    let m23 = halves(_mm256_set1_epi8(0x0C), _mm256_set1_epi8(0x03));
    let s01 = halves(_mm256_set1_epi32(6), _mm256_set1_epi32(4));
    let s23 = halves(_mm256_set1_epi32(2), _mm256_set1_epi32(0));
    let mut total = [_mm512_setzero_si512(); T];
    let mut b = 0;
    while b < nb {
        let end = (b + FLUSH_BLOCKS).min(nb);
        // [token][even block, odd block], at scale.
        let mut acc01 = [[_mm512_setzero_si512(); 2]; T];
        let mut acc23 = [[_mm512_setzero_si512(); 2]; T];
        while b + 2 <= end {
            // SAFETY: b + 1 < nb, so 64 bytes of w and 256 of each q[t] are in bounds.
            unsafe {
                let w0 = load_block(wp, b);
                let w1 = load_block(wp, b + 1);
                let (c0_01, c0_23) = (_mm512_and_si512(w0, m01), _mm512_and_si512(w0, m23));
                let (c1_01, c1_23) = (_mm512_and_si512(w1, m01), _mm512_and_si512(w1, m23));
                for t in 0..T {
                    let a = qp[t].add(b * 128);
                    acc01[t][0] = _mm512_dpbusd_epi32(acc01[t][0], c0_01, loadu512(a));
                    acc23[t][0] = _mm512_dpbusd_epi32(acc23[t][0], c0_23, loadu512(a.add(64)));
                    acc01[t][1] = _mm512_dpbusd_epi32(acc01[t][1], c1_01, loadu512(a.add(128)));
                    acc23[t][1] = _mm512_dpbusd_epi32(acc23[t][1], c1_23, loadu512(a.add(192)));
                }
            }
            b += 2;
        }
        if b < end {
            // SAFETY: b < nb, so 32 bytes of w and 128 of each q[t] are in bounds.
            unsafe {
                let w0 = load_block(wp, b);
                let (c0_01, c0_23) = (_mm512_and_si512(w0, m01), _mm512_and_si512(w0, m23));
                for t in 0..T {
                    let a = qp[t].add(b * 128);
                    acc01[t][0] = _mm512_dpbusd_epi32(acc01[t][0], c0_01, loadu512(a));
                    acc23[t][0] = _mm512_dpbusd_epi32(acc23[t][0], c0_23, loadu512(a.add(64)));
                }
            }
            b += 1;
        }
        for t in 0..T {
            let g01 = _mm512_srav_epi32(_mm512_add_epi32(acc01[t][0], acc01[t][1]), s01);
            let g23 = _mm512_srav_epi32(_mm512_add_epi32(acc23[t][0], acc23[t][1]), s23);
            total[t] = _mm512_add_epi32(total[t], _mm512_add_epi32(g01, g23));
        }
    }
    let mut out = [0i32; T];
    for t in 0..T {
        out[t] = _mm512_reduce_add_epi32(total[t]);
    }
    out
}

/// Raw sums of `R` rows against `T` tokens (prompt tiles): per block the `R` weight blocks are
/// masked once and each token's 128 activations loaded once for all rows. With one row, two
/// activation loads feed every two `vpdpbusd`, and the loads set the pace; here `2 * T` loads
/// feed `2 * R * T` of them, in `2 * R * T` independent accumulator chains.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn ternary_dot_tile<const R: usize, const T: usize>(
    w: [&[u8]; R],
    q: [&[i8]; T],
) -> [[i32; T]; R] {
    let nb = w[0].len() / 32;
    debug_assert!(w.iter().all(|r| r.len() == nb * 32) && q.iter().all(|q| q.len() >= nb * 128));
    let wp: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr());
    let qp: [*const i8; T] = std::array::from_fn(|t| q[t].as_ptr());
    let m01 = halves(_mm256_set1_epi8(0xC0u8 as i8), _mm256_set1_epi8(0x30));
    let m23 = halves(_mm256_set1_epi8(0x0C), _mm256_set1_epi8(0x03));
    let s01 = halves(_mm256_set1_epi32(6), _mm256_set1_epi32(4));
    let s23 = halves(_mm256_set1_epi32(2), _mm256_set1_epi32(0));
    let mut total = [[_mm512_setzero_si512(); T]; R];
    let mut b = 0;
    while b < nb {
        let end = (b + FLUSH_BLOCKS).min(nb);
        let mut acc01 = [[_mm512_setzero_si512(); T]; R];
        let mut acc23 = [[_mm512_setzero_si512(); T]; R];
        while b < end {
            // A few tokens (several sequences decoding together) leave the tile as bound by
            // memory as a decode step: request the rows of a later tile as the decode kernels do.
            prefetch::ternary_tile_block::<R>(wp[0], nb, b);
            // SAFETY: b < nb, so 32 bytes of every row and 128 of every q[t] are in bounds.
            unsafe {
                let c: [(__m512i, __m512i); R] = std::array::from_fn(|r| {
                    let wv = load_block(wp[r], b);
                    (_mm512_and_si512(wv, m01), _mm512_and_si512(wv, m23))
                });
                for t in 0..T {
                    let a = qp[t].add(b * 128);
                    let (a01, a23) = (loadu512(a), loadu512(a.add(64)));
                    for r in 0..R {
                        acc01[r][t] = _mm512_dpbusd_epi32(acc01[r][t], c[r].0, a01);
                        acc23[r][t] = _mm512_dpbusd_epi32(acc23[r][t], c[r].1, a23);
                    }
                }
            }
            b += 1;
        }
        for r in 0..R {
            for t in 0..T {
                let g01 = _mm512_srav_epi32(acc01[r][t], s01);
                let g23 = _mm512_srav_epi32(acc23[r][t], s23);
                total[r][t] = _mm512_add_epi32(total[r][t], _mm512_add_epi32(g01, g23));
            }
        }
    }
    std::array::from_fn(|r| {
        if T == 4 {
            let s = hsum4_epi32([total[r][0], total[r][1], total[r][2], total[r][3]]);
            std::array::from_fn(|t| s[t])
        } else {
            std::array::from_fn(|t| _mm512_reduce_add_epi32(total[r][t]))
        }
    })
}

/// Raw sums of `R` rows against one token. Each block's 128 activations are loaded once for all
/// rows, and the `2 * R` accumulators are independent `vpdpbusd` chains, so their 5-cycle latency
/// overlaps instead of bounding a 640-byte row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn ternary_dot_rows<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
    let nb = w[0].len() / 32;
    debug_assert!(w.iter().all(|r| r.len() == nb * 32) && q.len() >= nb * 128);
    let wp: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr());
    let qp = q.as_ptr();
    let m01 = halves(_mm256_set1_epi8(0xC0u8 as i8), _mm256_set1_epi8(0x30));
    let m23 = halves(_mm256_set1_epi8(0x0C), _mm256_set1_epi8(0x03));
    let s01 = halves(_mm256_set1_epi32(6), _mm256_set1_epi32(4));
    let s23 = halves(_mm256_set1_epi32(2), _mm256_set1_epi32(0));
    let mut total = [_mm512_setzero_si512(); R];
    let mut b = 0;
    while b < nb {
        let end = (b + FLUSH_BLOCKS).min(nb);
        let mut acc01 = [_mm512_setzero_si512(); R];
        let mut acc23 = [_mm512_setzero_si512(); R];
        while b < end {
            // SAFETY: b < nb, so 128 bytes of q and 32 of every row are in bounds.
            unsafe {
                let a = qp.add(b * 128);
                let (a01, a23) = (loadu512(a), loadu512(a.add(64)));
                prefetch::ternary_tile_block::<R>(wp[0], nb, b);
                for r in 0..R {
                    let wv = load_block(wp[r], b);
                    acc01[r] = _mm512_dpbusd_epi32(acc01[r], _mm512_and_si512(wv, m01), a01);
                    acc23[r] = _mm512_dpbusd_epi32(acc23[r], _mm512_and_si512(wv, m23), a23);
                }
            }
            b += 1;
        }
        for r in 0..R {
            let g01 = _mm512_srav_epi32(acc01[r], s01);
            let g23 = _mm512_srav_epi32(acc23[r], s23);
            total[r] = _mm512_add_epi32(total[r], _mm512_add_epi32(g01, g23));
        }
    }
    // `hsum4_epi32` here (one store for the four rows) measured within 1% on Zen 4 (KJV tg,
    // `BITNET_ISA=avx512vnni`); this kernel is the Xeon's, where it was not measured.
    std::array::from_fn(|r| _mm512_reduce_add_epi32(total[r]))
}

/// [`ternary_dot_rows`] on 256-bit vectors (AVX-512 VL): the four 2-bit groups of a block are
/// masked in place (scaled by 64 / 16 / 4 / 1) and each fed to its own `vpdpbusd` chain
/// against its 32 activations; the scales come off with one shift per chain at each flush.
/// The same four ops per 32 weight bytes as the 512-bit form, and no broadcast.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn ternary_dot_rows_256<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
    let nb = w[0].len() / 32;
    debug_assert!(w.iter().all(|r| r.len() == nb * 32) && q.len() >= nb * 128);
    let wp: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr());
    let qp = q.as_ptr();
    let m = [
        _mm256_set1_epi8(0xC0u8 as i8),
        _mm256_set1_epi8(0x30),
        _mm256_set1_epi8(0x0C),
        _mm256_set1_epi8(0x03),
    ];
    let mut total = [_mm256_setzero_si256(); R];
    let mut b = 0;
    while b < nb {
        let end = (b + FLUSH_BLOCKS).min(nb);
        let mut acc = [[_mm256_setzero_si256(); 4]; R];
        while b < end {
            // SAFETY: b < nb, so 128 bytes of q and 32 of every row are in bounds.
            unsafe {
                let a = qp.add(b * 128);
                let av: [__m256i; 4] =
                    std::array::from_fn(|g| _mm256_loadu_si256(a.add(32 * g) as *const __m256i));
                prefetch::ternary_tile_block::<R>(wp[0], nb, b);
                for r in 0..R {
                    let wv = _mm256_loadu_si256(wp[r].add(b * 32) as *const __m256i);
                    for g in 0..4 {
                        acc[r][g] =
                            _mm256_dpbusd_epi32(acc[r][g], _mm256_and_si256(wv, m[g]), av[g]);
                    }
                }
            }
            b += 1;
        }
        for r in 0..R {
            let s = _mm256_add_epi32(
                _mm256_add_epi32(
                    _mm256_srai_epi32::<6>(acc[r][0]),
                    _mm256_srai_epi32::<4>(acc[r][1]),
                ),
                _mm256_add_epi32(_mm256_srai_epi32::<2>(acc[r][2]), acc[r][3]),
            );
            total[r] = _mm256_add_epi32(total[r], s);
        }
    }
    if R == 4 {
        let s = hsum4_i32([total[0], total[1], total[2], total[3]]);
        return std::array::from_fn(|r| s[r]);
    }
    std::array::from_fn(|r| hsum_i32(total[r]))
}

impl<const DECODE_256: bool> TernaryKernel for Avx512Vnni<DECODE_256> {
    unsafe fn dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
        // SAFETY: forwarded contract (AVX-512 F/BW/VL/VNNI present, q long enough).
        unsafe { ternary_dot::<T>(w, q) }
    }

    unsafe fn dot_rows<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
        // SAFETY: forwarded contract (VL is part of the ISA's check).
        unsafe { run_rows::<DECODE_256, R>(w, q) }
    }

    unsafe fn dot_tile<const R: usize, const T: usize>(
        w: [&[u8]; R],
        q: [&[i8]; T],
    ) -> [[i32; T]; R] {
        // SAFETY: forwarded contract.
        unsafe { run_tile::<R, T>(w, q) }
    }

    unsafe fn dot_run<const R: usize, const T: usize>(
        w: &[u8],
        row_bytes: usize,
        q: [&[i8]; T],
        out: &mut [[i32; T]],
    ) {
        // SAFETY: forwarded contract.
        unsafe { ternary_dot_run::<DECODE_256, R, T>(w, row_bytes, q, out) }
    }
}

/// [`TernaryKernel::dot_run`] expanded with AVX-512 enabled, so the row tiles inline into its
/// loop (the trait's default calls a `#[target_feature]` kernel per tile, out of line).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; as [`TernaryKernel::dot_run`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn ternary_dot_run<const DECODE_256: bool, const R: usize, const T: usize>(
    w: &[u8],
    row_bytes: usize,
    q: [&[i8]; T],
    out: &mut [[i32; T]],
) {
    // SAFETY: forwarded contract (the features the kernels need are enabled here).
    unsafe {
        crate::kernel::dot_run_loop!(
            R,
            T,
            w,
            row_bytes,
            q,
            out,
            rows: run_rows::<DECODE_256, R>,
            tile: run_tile::<R, T>,
            one: ternary_dot::<T>
        )
    }
}

/// A decode tile (`dot_rows`, and [`ternary_dot_run`]'s, where it inlines): on 256-bit or
/// 512-bit vectors as the ISA says.
///
/// # Safety
/// As [`ternary_dot_rows`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_rows<const DECODE_256: bool, const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
    // SAFETY: forwarded contract.
    unsafe {
        if DECODE_256 {
            ternary_dot_rows_256::<R>(w, q)
        } else {
            ternary_dot_rows::<R>(w, q)
        }
    }
}

/// A prompt tile (`dot_tile`, and [`ternary_dot_run`]'s, where it inlines).
///
/// # Safety
/// As [`ternary_dot_tile`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_tile<const R: usize, const T: usize>(w: [&[u8]; R], q: [&[i8]; T]) -> [[i32; T]; R] {
    // SAFETY: forwarded contract.
    unsafe {
        // A ragged last row: the one-row kernel pairs blocks for twice the chains.
        if R == 1 {
            let mut out = [[0; T]; R];
            out[0] = ternary_dot::<T>(w[0], q);
            out
        } else {
            ternary_dot_tile::<R, T>(w, q)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dense F32 / F16 / BF16: the 4-row x 4-token tile of batched LM heads

/// The dense kernels on AVX-512 (both decode widths): the AVX2 code, except for full token
/// tiles over four rows ([`DenseKernel::dot_quad`]), where 32 registers hold a 4 x 4 tile of
/// 16-lane accumulators.
/// Many sequences decoding together make the LM head (128k rows for 2B4T) the largest single
/// cost of a step; with two rows per pass the AVX2 tile re-reads every token's activations from
/// L2 for each pair of rows.
///
/// Tried and dropped: widening four F16 rows to f32 once per call and running every token
/// tile over them (so each weight is converted once, not once per tile): on the 16-core Xeon,
/// one core, F16 x 16 tokens fell from 59-60 to 36-37 GFLOP/cpu-s, as four f32 rows plus the
/// streamed activations of 16 tokens overflow L1.
impl<const DECODE_256: bool> DenseKernel for Avx512Vnni<DECODE_256> {
    unsafe fn dot<const T: usize>(
        row: &[u8],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [f32; T] {
        // SAFETY: forwarded contract (AVX-512 implies the AVX2 + FMA + F16C checked with it).
        unsafe { <Avx2 as DenseKernel>::dot::<T>(row, ty, x, buf) }
    }

    unsafe fn dot_pair<const T: usize>(
        rows: [&[u8]; 2],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [[f32; T]; 2] {
        // SAFETY: as above.
        unsafe { <Avx2 as DenseKernel>::dot_pair::<T>(rows, ty, x, buf) }
    }

    unsafe fn dot_rows<const R: usize>(
        rows: [&[u8]; R],
        ty: DenseType,
        x: &[f32],
        buf: &mut Vec<f32>,
    ) -> [f32; R] {
        // SAFETY: as above.
        unsafe { <Avx2 as DenseKernel>::dot_rows::<R>(rows, ty, x, buf) }
    }

    unsafe fn dot_quad<const T: usize>(
        rows: [&[u8]; 4],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [[f32; T]; 4] {
        // SAFETY: forwarded contract.
        unsafe {
            match ty {
                DenseType::F32 => dense_dot_quad::<T, TY_F32>(rows, x),
                DenseType::F16 => dense_dot_quad::<T, TY_F16>(rows, x),
                DenseType::BF16 => dense_dot_quad::<T, TY_BF16>(rows, x),
                DenseType::Q8_0 | DenseType::Q6_K => {
                    let [a, b] = Self::dot_pair::<T>([rows[0], rows[1]], ty, x, buf);
                    let [c, d] = Self::dot_pair::<T>([rows[2], rows[3]], ty, x, buf);
                    [a, b, c, d]
                }
            }
        }
    }

    unsafe fn row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { <Avx2 as DenseKernel>::row_to_f32(row, ty, out) }
    }
}

/// Up to 16 elements of type `TY` at `p` as f32, lanes past `mask` zero (and not read: a masked
/// load never faults on them).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load16<const TY: u8>(p: *const u8, mask: __mmask16) -> __m512 {
    // SAFETY: callers guarantee the lanes in `mask` are readable.
    unsafe {
        match TY {
            TY_F32 => _mm512_maskz_loadu_ps(mask, p as *const f32),
            TY_F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16)),
            // bf16 is the top half of an f32.
            _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_maskz_loadu_epi16(mask, p as *const i16),
            ))),
        }
    }
}

/// Four rows x T tokens, 16 columns per step: 4 weight and T activation loads feed 4T FMAs
/// (T = 4: 16 independent accumulator chains, enough to hide the FMA latency on two ports).
/// The ragged end is one masked step, so every column goes through the same lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dense_dot_quad<const T: usize, const TY: u8>(
    rows: [&[u8]; 4],
    x: [&[f32]; T],
) -> [[f32; T]; 4] {
    let es = ty_size(TY);
    let cols = rows[0].len() / es;
    let rp = rows.map(|r| {
        debug_assert_eq!(r.len(), cols * es);
        r.as_ptr()
    });
    let xp = x.map(|x| {
        debug_assert_eq!(x.len(), cols);
        x.as_ptr()
    });
    let pf = prefetch::DENSE_BYTES;
    let mut acc = [[_mm512_setzero_ps(); T]; 4];
    let mut i = 0;
    while i < cols {
        let mask: __mmask16 = if i + 16 <= cols {
            0xffff
        } else {
            (1u16 << (cols - i)) - 1
        };
        // SAFETY: the lanes of `mask` starting at column i are inside every row and token;
        // prefetches may point past the rows (they never fault).
        unsafe {
            if (i * es).is_multiple_of(64) {
                for p in rp {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i * es + pf) as *const i8);
                }
            }
            let w = [
                load16::<TY>(rp[0].add(i * es), mask),
                load16::<TY>(rp[1].add(i * es), mask),
                load16::<TY>(rp[2].add(i * es), mask),
                load16::<TY>(rp[3].add(i * es), mask),
            ];
            for t in 0..T {
                let xv = _mm512_maskz_loadu_ps(mask, xp[t].add(i));
                for r in 0..4 {
                    acc[r][t] = _mm512_fmadd_ps(w[r], xv, acc[r][t]);
                }
            }
        }
        i += 16;
    }
    let mut out = [[0.0f32; T]; 4];
    for r in 0..4 {
        for t in 0..T {
            out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
    out
}

/// The Q8_0 / Q6_K dots are the AVX2 ones, as in llama.cpp; batches of two or more tokens take
/// the 512-bit Q8_0 form with two tokens per register ([`crate::x86::q8_0_pairs`]) on
/// `Isa::Avx512Vnni` and `Isa::Amx`, which halves the batched head on the lent Xeon (Zen 4
/// defaults to `Isa::Avx512Vnni256`, which keeps the AVX2 dot, for the reason below).
///
/// Tried and dropped (2026-12-04, 2-vCPU Zen 4 VM): a Q8_0 row x token tile with `vpdpbusd`
/// (256-bit: weights offset by 128, `-128 * sum(x)` per lane as the start value, the same
/// lanes and FMA order, bit-identical; 4 x 4 tiles through the driver's row tiles). In cache
/// it took 0.58 ns per block and token against the AVX2 kernel's 0.78, but the 2B4T-shaped
/// Q8_0 head inside `bitnet bench --parallel 16` stayed at 4.03-4.11 ms a token (4.06-4.15
/// before) and one token got slower (a 4-row tile streams worse than one row); a 512-bit form
/// with two tokens per register measured slower still. The port counts say more on Intel
/// (the AVX2 step is five uops on ports 0/1, the VNNI one three): worth measuring there.
impl<const DECODE_256: bool> BlockKernel for Avx512Vnni<DECODE_256> {
    unsafe fn q8_0_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: forwarded contract (AVX-512 implies the AVX2 + FMA + F16C checked with it).
        unsafe { <Avx2 as BlockKernel>::q8_0_dot(row, q, d) }
    }

    unsafe fn q8_0_dot_rows<const R: usize>(rows: [&[u8]; R], q: &[i8], d: &[f32]) -> [f32; R] {
        // SAFETY: as above.
        unsafe { <Avx2 as BlockKernel>::q8_0_dot_rows::<R>(rows, q, d) }
    }

    unsafe fn q6_k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: as above.
        unsafe { <Avx2 as BlockKernel>::q6_k_dot(row, q, d) }
    }
}

impl<const DECODE_256: bool> QuantizeKernel for Avx512Vnni<DECODE_256> {
    unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        // SAFETY: as above.
        unsafe { <Avx2 as QuantizeKernel>::quantize_row(x, q) }
    }
}
