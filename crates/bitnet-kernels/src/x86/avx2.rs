//! x86-64 AVX2 + FMA + F16C kernels. Every function here requires those three features; the
//! dispatch (`dispatch.rs`) only routes here after checking them at run time. The Q8_0 / Q6_K
//! head dots are here too (the AVX-512 ISAs run them as well, as llama.cpp does).

use crate::kernel::{BlockKernel, DenseKernel, QuantizeKernel, TernaryKernel};
use crate::x86::prefetch;
use bitnet_quantization::q6_k::{BLOCK_BYTES as Q6K_BLOCK_BYTES, D, QH, QK_K as Q6K_QK, SCALES};
use bitnet_quantization::q8_0::{BLOCK_BYTES as Q8_BLOCK_BYTES, QK8_0 as Q8_QK};
use bitnet_quantization::{DenseType, SCALE_EPS};
use std::arch::x86_64::*;

pub(crate) struct Avx2;

/// The horizontal sums of four vectors in lanes 0..4 of one register (unpacks pair them up,
/// two add levels, then the halves).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum4_i32_xmm(v: [__m256i; 4]) -> __m128i {
    // [a0 + a2, b0 + b2, a1 + a3, b1 + b3] in each half, likewise c and d.
    let ab = _mm256_add_epi32(
        _mm256_unpacklo_epi32(v[0], v[1]),
        _mm256_unpackhi_epi32(v[0], v[1]),
    );
    let cd = _mm256_add_epi32(
        _mm256_unpacklo_epi32(v[2], v[3]),
        _mm256_unpackhi_epi32(v[2], v[3]),
    );
    // [a, b, c, d] partial sums in each half.
    let x = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
    _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x))
}

/// [`hsum4_i32_xmm`] written with one 16-byte store. The callers read the four sums of a row
/// tile (four rows of one token, or one row of four tokens) with one 16-byte load, which four
/// scalar stores (an [`hsum_i32`] each) cannot forward to: `perf` found the tile's caller
/// stalled on that load.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum4_i32(v: [__m256i; 4]) -> [i32; 4] {
    let s = hsum4_i32_xmm(v);
    let mut out = [0i32; 4];
    // SAFETY: `out` is 16 bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s) };
    out
}

/// Blocks of 128 weights whose `maddubs` partial sums may be added in i16 before widening.
/// Per i16 lane one block adds 4 pairs of `code (0..=2) * q (-128..=127)`, i.e. a value in
/// [-2048, 2032]; 16 blocks stay within [-32768, 32512], so no wrap and the result is exact.
const I16_BLOCKS: usize = 16;

// Register-only helpers are safe `#[target_feature]` functions: callers with AVX2 enabled call
// them without `unsafe`, and nothing else can.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Sum of the 8 lanes in ggml's `hsum_float_8` order,
/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`, which the Q8_0 / Q6_K dots must keep
/// to stay bit-identical to their scalar twins.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Horizontal max of lanes that are known not to be NaN.
#[inline]
#[target_feature(enable = "avx2")]
fn hmax_ps(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn loadu_si(p: *const i8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; `vmovdqu` has no alignment demand.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

// ---------------------------------------------------------------------------------------------
// Ternary x int8

/// Raw sums `sum_k code_k * q_t[k]` of one packed row against `T` tokens. The 2-bit codes of a
/// 32-byte block are unpacked once (shift + mask; 16-bit shifts are fine because the mask drops
/// the bits that cross into the neighbouring byte) and reused for every token, as in
/// bitnet.cpp's `ggml_vec_dot_i2_i8_s` and llama.cpp's TQ2_0 kernel.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
    let nb = w.len() / 32;
    let wp = w.as_ptr();
    let mut qp = [std::ptr::null::<i8>(); T];
    for t in 0..T {
        debug_assert!(q[t].len() >= nb * 128);
        qp[t] = q[t].as_ptr();
    }
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); T];
    let mut b = 0;
    while b < nb {
        let end = (b + I16_BLOCKS).min(nb);
        let mut acc16 = [_mm256_setzero_si256(); T];
        while b < end {
            // SAFETY: b < nb, so 32 bytes of w and 128 of each q[t] are in bounds.
            unsafe {
                let wv = _mm256_loadu_si256(wp.add(b * 32) as *const __m256i);
                let c0 = _mm256_and_si256(_mm256_srli_epi16::<6>(wv), mask); // elements 0..32
                let c1 = _mm256_and_si256(_mm256_srli_epi16::<4>(wv), mask); // 32..64
                let c2 = _mm256_and_si256(_mm256_srli_epi16::<2>(wv), mask); // 64..96
                let c3 = _mm256_and_si256(wv, mask); // 96..128
                for t in 0..T {
                    let a = qp[t].add(b * 128);
                    let p0 = _mm256_maddubs_epi16(c0, loadu_si(a));
                    let p1 = _mm256_maddubs_epi16(c1, loadu_si(a.add(32)));
                    let p2 = _mm256_maddubs_epi16(c2, loadu_si(a.add(64)));
                    let p3 = _mm256_maddubs_epi16(c3, loadu_si(a.add(96)));
                    let s = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
                    acc16[t] = _mm256_add_epi16(acc16[t], s);
                }
            }
            b += 1;
        }
        for t in 0..T {
            acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(acc16[t], ones));
        }
    }
    if T == 4 {
        // A prompt tile's row: one store for its four tokens (`hsum4_i32`).
        let s = hsum4_i32([acc[0], acc[1], acc[2], acc[3]]);
        return std::array::from_fn(|t| s[t]);
    }
    let mut out = [0i32; T];
    for t in 0..T {
        out[t] = hsum_i32(acc[t]);
    }
    out
}

/// Sum of the four `maddubs` of block `b` (i16 lanes in [-2048, 2032]).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn block_sum(wp: *const u8, qp: *const i8, b: usize, mask: __m256i) -> __m256i {
    // SAFETY: the caller guarantees block b exists in both the weights and the activations.
    unsafe {
        let wv = _mm256_loadu_si256(wp.add(b * 32) as *const __m256i);
        let a = qp.add(b * 128);
        let p0 = _mm256_maddubs_epi16(
            _mm256_and_si256(_mm256_srli_epi16::<6>(wv), mask),
            loadu_si(a),
        );
        let p1 = _mm256_maddubs_epi16(
            _mm256_and_si256(_mm256_srli_epi16::<4>(wv), mask),
            loadu_si(a.add(32)),
        );
        let p2 = _mm256_maddubs_epi16(
            _mm256_and_si256(_mm256_srli_epi16::<2>(wv), mask),
            loadu_si(a.add(64)),
        );
        let p3 = _mm256_maddubs_epi16(_mm256_and_si256(wv, mask), loadu_si(a.add(96)));
        _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3))
    }
}

/// One token (decode): two blocks per iteration into two i16 accumulators, so the add chains
/// of consecutive blocks overlap instead of serialising on one register.
#[target_feature(enable = "avx2")]
unsafe fn ternary_dot1(w: &[u8], q: &[i8]) -> i32 {
    let nb = w.len() / 32;
    debug_assert!(q.len() >= nb * 128);
    let (wp, qp) = (w.as_ptr(), q.as_ptr());
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let mut b = 0;
    while b < nb {
        // Each accumulator takes at most I16_BLOCKS blocks before widening.
        let end = (b + 2 * I16_BLOCKS).min(nb);
        let (mut even, mut odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        while b + 2 <= end {
            // SAFETY: b + 1 < end <= nb = w.len() / 32, and q holds nb * 128 values (this
            // function's contract), so blocks b and b + 1 exist in both.
            let (e, o) = unsafe { (block_sum(wp, qp, b, mask), block_sum(wp, qp, b + 1, mask)) };
            even = _mm256_add_epi16(even, e);
            odd = _mm256_add_epi16(odd, o);
            b += 2;
        }
        if b < end {
            // SAFETY: b < end <= nb, as above.
            even = _mm256_add_epi16(even, unsafe { block_sum(wp, qp, b, mask) });
            b += 1;
        }
        acc = _mm256_add_epi32(
            acc,
            _mm256_add_epi32(_mm256_madd_epi16(even, ones), _mm256_madd_epi16(odd, ones)),
        );
    }
    hsum_i32(acc)
}

/// Raw sums of `R` rows against one token: every block's 128 activations are loaded once for
/// all rows, and the horizontal sums and the call are paid once per `R` rows.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_dot_rows<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
    let nb = w[0].len() / 32;
    debug_assert!(w.iter().all(|r| r.len() == nb * 32) && q.len() >= nb * 128);
    let wp: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr());
    let qp = q.as_ptr();
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); R];
    let mut b = 0;
    while b < nb {
        let end = (b + I16_BLOCKS).min(nb);
        let mut acc16 = [_mm256_setzero_si256(); R];
        while b < end {
            // SAFETY: b < nb, so 128 bytes of q and 32 of every row are in bounds.
            unsafe {
                let a = qp.add(b * 128);
                let (a0, a1, a2, a3) = (
                    loadu_si(a),
                    loadu_si(a.add(32)),
                    loadu_si(a.add(64)),
                    loadu_si(a.add(96)),
                );
                prefetch::ternary_tile_block::<R>(wp[0], nb, b);
                for r in 0..R {
                    let wv = _mm256_loadu_si256(wp[r].add(b * 32) as *const __m256i);
                    let p0 = _mm256_maddubs_epi16(
                        _mm256_and_si256(_mm256_srli_epi16::<6>(wv), mask),
                        a0,
                    );
                    let p1 = _mm256_maddubs_epi16(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(wv), mask),
                        a1,
                    );
                    let p2 = _mm256_maddubs_epi16(
                        _mm256_and_si256(_mm256_srli_epi16::<2>(wv), mask),
                        a2,
                    );
                    let p3 = _mm256_maddubs_epi16(_mm256_and_si256(wv, mask), a3);
                    let s = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
                    acc16[r] = _mm256_add_epi16(acc16[r], s);
                }
            }
            b += 1;
        }
        for r in 0..R {
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(acc16[r], ones));
        }
    }
    if R == 4 {
        let s = hsum4_i32([acc[0], acc[1], acc[2], acc[3]]);
        return std::array::from_fn(|r| s[r]);
    }
    std::array::from_fn(|r| hsum_i32(acc[r]))
}

impl TernaryKernel for Avx2 {
    unsafe fn dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
        if T == 1 {
            let mut out = [0i32; T];
            // SAFETY: this method's contract is the kernel's: AVX2 present (the dispatcher
            // checked it), q[0].len() >= w.len() * 4.
            out[0] = unsafe { ternary_dot1(w, q[0]) };
            out
        } else {
            // SAFETY: as above, for every q[t].
            unsafe { ternary_dot::<T>(w, q) }
        }
    }

    unsafe fn dot_rows<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
        // SAFETY: forwarded contract.
        unsafe { ternary_dot_rows::<R>(w, q) }
    }

    unsafe fn dot_run<const R: usize, const T: usize>(
        w: &[u8],
        row_bytes: usize,
        q: [&[i8]; T],
        out: &mut [[i32; T]],
    ) {
        // SAFETY: forwarded contract.
        unsafe { ternary_dot_run::<R, T>(w, row_bytes, q, out) }
    }
}

/// [`TernaryKernel::dot_run`] expanded with AVX2 enabled, so the row tiles inline into its loop.
/// With several tokens a tile's rows go one by one (AVX2 has no multi-row prompt tile: two rows
/// of four tokens spill its 16 registers).
///
/// # Safety
/// AVX2; as [`TernaryKernel::dot_run`].
#[target_feature(enable = "avx2")]
unsafe fn ternary_dot_run<const R: usize, const T: usize>(
    w: &[u8],
    row_bytes: usize,
    q: [&[i8]; T],
    out: &mut [[i32; T]],
) {
    // SAFETY: forwarded contract (AVX2 is enabled here, as the kernels need).
    unsafe {
        crate::kernel::dot_run_loop!(
            R,
            T,
            w,
            row_bytes,
            q,
            out,
            rows: ternary_dot_rows::<R>,
            tile: ternary_dot_tile::<R, T>,
            one: <Avx2 as TernaryKernel>::dot::<T>
        )
    }
}

/// A prompt tile of AVX2: its rows one by one. The trait's default does the same through a
/// closure; this one calls the kernel directly, so it inlines into [`ternary_dot_run`].
///
/// # Safety
/// AVX2; as [`ternary_dot`] for every row.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_dot_tile<const R: usize, const T: usize>(
    w: [&[u8]; R],
    q: [&[i8]; T],
) -> [[i32; T]; R] {
    let mut out = [[0i32; T]; R];
    for (o, row) in out.iter_mut().zip(w) {
        // SAFETY: forwarded contract.
        *o = unsafe { ternary_dot::<T>(row, q) };
    }
    out
}

/// `clamp(round_half_even(x * s), -128, 127)` of 8 floats at `p`, as i32.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn quantize8(p: *const f32, s: __m256, lo: __m256, hi: __m256) -> __m256i {
    // SAFETY: the caller guarantees 8 readable floats.
    let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(p) }, s);
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    // vmaxps returns its second operand for NaN: max(NaN, -128) = -128 like the scalar
    // `.max(-128.0)`.
    _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
}

/// Absmax int8 quantization of one row; bit-identical to
/// `bitnet_quantization::quantize_activation_row` (same f32 ops: `|x|` max, `127 / max`, `x * s`,
/// round-half-even, clamp with the same NaN behaviour). Returns `(s_x, sum of q)`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    debug_assert_eq!(x.len(), q.len());
    let n = x.len().min(q.len());
    let xp = x.as_ptr();
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        let v = _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(xp.add(i)) });
        // vmaxps returns its second operand when either is NaN: NaNs are skipped like f32::max.
        m = _mm256_max_ps(v, m);
        i += 8;
    }
    let mut amax = hmax_ps(m);
    for &v in &x[i..n] {
        amax = v.abs().max(amax);
    }
    let s = 127.0f32 / amax.max(SCALE_EPS);

    let sv = _mm256_set1_ps(s);
    let lo = _mm256_set1_ps(-128.0);
    let hi = _mm256_set1_ps(127.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut sumv = _mm256_setzero_si256();
    let qp = q.as_mut_ptr();
    i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n for both x and q.
        unsafe {
            let a = quantize8(xp.add(i), sv, lo, hi);
            let b = quantize8(xp.add(i + 8), sv, lo, hi);
            let c = quantize8(xp.add(i + 16), sv, lo, hi);
            let d = quantize8(xp.add(i + 24), sv, lo, hi);
            sumv = _mm256_add_epi32(
                sumv,
                _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)),
            );
            // packs work per 128-bit lane; the permute restores element order.
            let abcd = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
            _mm256_storeu_si256(
                qp.add(i) as *mut __m256i,
                _mm256_permutevar8x32_epi32(abcd, perm),
            );
        }
        i += 32;
    }
    let mut sum = hsum_i32(sumv);
    for (qi, &xi) in q[i..n].iter_mut().zip(&x[i..n]) {
        // Same expression as the scalar definition (not `clamp`, which keeps NaN).
        #[allow(clippy::manual_clamp)]
        let v = (xi * s).round_ties_even().max(-128.0).min(127.0);
        *qi = v as i8;
        sum += i32::from(*qi);
    }
    (s, sum)
}

// ---------------------------------------------------------------------------------------------
// Dense F32 / F16 / BF16 (Q8_0 / Q6_K further down)

pub(crate) const TY_F32: u8 = 0;
pub(crate) const TY_F16: u8 = 1;
pub(crate) const TY_BF16: u8 = 2;

/// 8 elements of type `TY` at `p` as f32 (unaligned).
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load8<const TY: u8>(p: *const u8) -> __m256 {
    // SAFETY: callers guarantee 8 readable elements.
    unsafe {
        match TY {
            TY_F32 => _mm256_loadu_ps(p as *const f32),
            TY_F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            // bf16 is the top half of an f32.
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p as *const __m128i),
            ))),
        }
    }
}

fn load1<const TY: u8>(b: &[u8], k: usize) -> f32 {
    match TY {
        TY_F32 => f32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]]),
        TY_F16 => half::f16::from_le_bytes([b[2 * k], b[2 * k + 1]]).to_f32(),
        _ => half::bf16::from_le_bytes([b[2 * k], b[2 * k + 1]]).to_f32(),
    }
}

pub(crate) const fn ty_size(ty: u8) -> usize {
    if ty == TY_F32 {
        4
    } else {
        2
    }
}

/// `dot(row, x[t])` for T tokens: each 16-element slice of the row is converted once and
/// FMA'd into every token's two accumulators. One token (decode: the LM head) takes the
/// four-chain path instead, because two FMA chains alone cap a core at 16 elements per FMA
/// latency, below what it must stream to keep up with memory.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_dot<const T: usize, const TY: u8>(row: &[u8], x: [&[f32]; T]) -> [f32; T] {
    if T == 1 {
        let mut out = [0.0f32; T];
        // SAFETY: forwarded contract.
        out[0] = unsafe { dense_dot1::<TY>(row, x[0]) };
        return out;
    }
    let es = ty_size(TY);
    let cols = row.len() / es;
    let rp = row.as_ptr();
    let pf = prefetch::DENSE_BYTES;
    let mut xp = [std::ptr::null::<f32>(); T];
    for t in 0..T {
        debug_assert_eq!(x[t].len(), cols);
        xp[t] = x[t].as_ptr();
    }
    let mut acc0 = [_mm256_setzero_ps(); T];
    let mut acc1 = [_mm256_setzero_ps(); T];
    let mut i = 0;
    while i + 16 <= cols {
        // SAFETY: i + 16 <= cols = row.len() / es = x[t].len() (this function's contract)
        // bounds every row and x access; a prefetch never faults, wherever it points.
        unsafe {
            // A row is read once per token (the LM head: 0.66 GB at F16 for 2B4T); fetching
            // ahead keeps the next lines in flight while this block is multiplied.
            _mm_prefetch::<_MM_HINT_T0>(rp.wrapping_add(i * es + pf) as *const i8);
            let w0 = load8::<TY>(rp.add(i * es));
            let w1 = load8::<TY>(rp.add((i + 8) * es));
            for t in 0..T {
                acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[t].add(i)), acc0[t]);
                acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp[t].add(i + 8)), acc1[t]);
            }
        }
        i += 16;
    }
    if i + 8 <= cols {
        // SAFETY: i + 8 <= cols, as above.
        unsafe {
            let w0 = load8::<TY>(rp.add(i * es));
            for t in 0..T {
                acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[t].add(i)), acc0[t]);
            }
        }
        i += 8;
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        let mut s = hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
        for (k, &xv) in x[t].iter().enumerate().skip(i) {
            s += load1::<TY>(row, k) * xv;
        }
        out[t] = s;
    }
    out
}

/// Two rows x T tokens: each 8-element slice of both rows is converted once and each token's 8
/// activations are loaded once for both rows, so a step is 2 + T loads for 2T FMAs (the
/// one-row kernel needs 2 + 2T loads per 2T FMAs and is bound by loads, not FMAs). With T = 4
/// the 8 accumulators are the 8 independent chains that hide the FMA latency, and they and
/// the operands fit the 16 ymm registers.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_dot_pair<const T: usize, const TY: u8>(
    rows: [&[u8]; 2],
    x: [&[f32]; T],
) -> [[f32; T]; 2] {
    let es = ty_size(TY);
    let cols = rows[0].len() / es;
    debug_assert_eq!(rows[1].len(), rows[0].len());
    let (r0, r1) = (rows[0].as_ptr(), rows[1].as_ptr());
    let pf = prefetch::DENSE_BYTES;
    let mut xp = [std::ptr::null::<f32>(); T];
    for t in 0..T {
        debug_assert_eq!(x[t].len(), cols);
        xp[t] = x[t].as_ptr();
    }
    let mut acc = [[_mm256_setzero_ps(); T]; 2];
    let mut i = 0;
    while i + 8 <= cols {
        // SAFETY: i + 8 <= cols = rows[r].len() / es = x[t].len() (this function's contract)
        // bounds every row and x access; prefetches may point past the rows (they never fault).
        unsafe {
            if (i * es).is_multiple_of(64) {
                _mm_prefetch::<_MM_HINT_T0>(r0.wrapping_add(i * es + pf) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(r1.wrapping_add(i * es + pf) as *const i8);
            }
            let w0 = load8::<TY>(r0.add(i * es));
            let w1 = load8::<TY>(r1.add(i * es));
            for t in 0..T {
                let xv = _mm256_loadu_ps(xp[t].add(i));
                acc[0][t] = _mm256_fmadd_ps(w0, xv, acc[0][t]);
                acc[1][t] = _mm256_fmadd_ps(w1, xv, acc[1][t]);
            }
        }
        i += 8;
    }
    let mut out = [[0.0f32; T]; 2];
    for r in 0..2 {
        for t in 0..T {
            let mut s = hsum_ps(acc[r][t]);
            for (k, &xv) in x[t].iter().enumerate().skip(i) {
                s += load1::<TY>(rows[r], k) * xv;
            }
            out[r][t] = s;
        }
    }
    out
}

/// One token: 32 elements per step into four independent FMA chains, prefetching as above.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_dot1<const TY: u8>(row: &[u8], x: &[f32]) -> f32 {
    // SAFETY: forwarded contract.
    unsafe { dense_dot1_rows::<1, TY>([row], x)[0] }
}

/// [`dense_dot1`] for R rows side by side: each row keeps its own four chains and its own
/// order (so each value is `dense_dot1`'s bits), and they share the activation loads. One row's
/// chains alone leave the FMA ports idle between dependent adds: at 512 columns a row is 16
/// steps of 4-cycle latency plus a horizontal sum, which bound a head that stays in cache.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_dot1_rows<const R: usize, const TY: u8>(rows: [&[u8]; R], x: &[f32]) -> [f32; R] {
    let es = ty_size(TY);
    let cols = x.len();
    let rp = rows.map(|row| {
        debug_assert_eq!(row.len(), cols * es);
        row.as_ptr()
    });
    let xp = x.as_ptr();
    let pf = prefetch::DENSE_BYTES;
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    let mut i = 0;
    while i + 32 <= cols {
        // SAFETY: i + 32 <= cols = row.len() / es = x.len() (this function's contract) bounds
        // every row and x access; a prefetch never faults, wherever it points.
        unsafe {
            for p in rp {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i * es + pf) as *const i8);
                if es == 4 {
                    // 128 bytes per step: two lines.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i * es + pf + 64) as *const i8);
                }
            }
            for j in 0..4 {
                let xv = _mm256_loadu_ps(xp.add(i + 8 * j));
                for (a, p) in acc.iter_mut().zip(rp) {
                    a[j] = _mm256_fmadd_ps(load8::<TY>(p.add((i + 8 * j) * es)), xv, a[j]);
                }
            }
        }
        i += 32;
    }
    while i + 8 <= cols {
        // SAFETY: i + 8 <= cols, as above.
        unsafe {
            let xv = _mm256_loadu_ps(xp.add(i));
            for (a, p) in acc.iter_mut().zip(rp) {
                a[0] = _mm256_fmadd_ps(load8::<TY>(p.add(i * es)), xv, a[0]);
            }
        }
        i += 8;
    }
    std::array::from_fn(|r| {
        let a = acc[r];
        let mut s = hsum_ps(_mm256_add_ps(
            _mm256_add_ps(a[0], a[1]),
            _mm256_add_ps(a[2], a[3]),
        ));
        for (k, &xv) in x.iter().enumerate().skip(i) {
            s += load1::<TY>(rows[r], k) * xv;
        }
        s
    })
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn row_to_f32_ty<const TY: u8>(row: &[u8], out: &mut [f32]) {
    let es = ty_size(TY);
    let cols = out.len().min(row.len() / es);
    let mut i = 0;
    while i + 8 <= cols {
        // SAFETY: i + 8 <= cols for both.
        unsafe {
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                load8::<TY>(row.as_ptr().add(i * es)),
            )
        };
        i += 8;
    }
    for (k, o) in out.iter_mut().enumerate().take(cols).skip(i) {
        *o = load1::<TY>(row, k);
    }
}

impl DenseKernel for Avx2 {
    unsafe fn dot<const T: usize>(
        row: &[u8],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [f32; T] {
        // SAFETY: forwarded contract.
        unsafe {
            match ty {
                DenseType::F32 => dense_dot::<T, TY_F32>(row, x),
                DenseType::F16 => dense_dot::<T, TY_F16>(row, x),
                DenseType::BF16 => dense_dot::<T, TY_BF16>(row, x),
                // The dense matmul routes Q8_0 / Q6_K to the BlockKernel dots (quantized
                // activations); this widening fallback only keeps the trait total.
                DenseType::Q8_0 | DenseType::Q6_K => {
                    let cols = x.first().map_or(0, |x| x.len());
                    buf.resize(cols, 0.0);
                    ty.row_to_f32(row, buf);
                    x.map(|xt| dot(buf, xt))
                }
            }
        }
    }

    unsafe fn dot_rows<const R: usize>(
        rows: [&[u8]; R],
        ty: DenseType,
        x: &[f32],
        buf: &mut Vec<f32>,
    ) -> [f32; R] {
        // SAFETY: forwarded contract.
        unsafe {
            match ty {
                DenseType::F32 => dense_dot1_rows::<R, TY_F32>(rows, x),
                DenseType::F16 => dense_dot1_rows::<R, TY_F16>(rows, x),
                DenseType::BF16 => dense_dot1_rows::<R, TY_BF16>(rows, x),
                DenseType::Q8_0 | DenseType::Q6_K => {
                    rows.map(|row| <Self as DenseKernel>::dot::<1>(row, ty, [x], buf)[0])
                }
            }
        }
    }

    unsafe fn dot_pair<const T: usize>(
        rows: [&[u8]; 2],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [[f32; T]; 2] {
        // SAFETY: forwarded contract.
        unsafe {
            match ty {
                DenseType::F32 => dense_dot_pair::<T, TY_F32>(rows, x),
                DenseType::F16 => dense_dot_pair::<T, TY_F16>(rows, x),
                DenseType::BF16 => dense_dot_pair::<T, TY_BF16>(rows, x),
                DenseType::Q8_0 | DenseType::Q6_K => [
                    <Self as DenseKernel>::dot::<T>(rows[0], ty, x, buf),
                    <Self as DenseKernel>::dot::<T>(rows[1], ty, x, buf),
                ],
            }
        }
    }

    unsafe fn row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]) {
        // SAFETY: forwarded contract.
        unsafe {
            match ty {
                DenseType::F32 => row_to_f32_ty::<TY_F32>(row, out),
                DenseType::F16 => row_to_f32_ty::<TY_F16>(row, out),
                DenseType::BF16 => row_to_f32_ty::<TY_BF16>(row, out),
                DenseType::Q8_0 | DenseType::Q6_K => ty.row_to_f32(row, out),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dense Q8_0 x Q8_0 and Q6_K x Q8_K (the scalar twins these equal bit for bit are
// `scalar::q8_0_dot` / `scalar::q6_k_dot`)

/// Blocks `b0..b0 + N` of the row into each token's lane accumulators, with the combined
/// scales `dd[t][k0..k0 + N]`.
///
/// # Safety
/// AVX2 + FMA; the blocks are in the row (`rp`) and in every `q[t]`; `k0 + N <= 8`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_0_blocks<const T: usize, const N: usize>(
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
            let qw = _mm256_loadu_si256(rp.add(b * Q8_BLOCK_BYTES + 2) as *const __m256i);
            let aw = _mm256_sign_epi8(qw, qw);
            for t in 0..T {
                let qx = _mm256_loadu_si256(q[t].as_ptr().add(b * Q8_QK) as *const __m256i);
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
unsafe fn q8_0_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    // SAFETY: forwarded contract.
    unsafe { q8_0_dot_rows::<1, T>([row], q, d)[0] }
}

/// [`q8_0_dot`] for `R` rows, interleaved a group of 8 blocks at a time: each row keeps its
/// own accumulators and order (its value is `q8_0_dot`'s bits), and the rows' FMA chains, one
/// per token, overlap instead of one row's chain setting the pace of a head held in cache.
///
/// # Safety
/// As [`q8_0_dot`], for every row (all the same length).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_dot_rows<const R: usize, const T: usize>(
    rows: [&[u8]; R],
    q: [&[i8]; T],
    d: [&[f32]; T],
) -> [[f32; T]; R] {
    let nb = rows[0].len() / Q8_BLOCK_BYTES;
    for t in 0..T {
        debug_assert!(q[t].len() >= nb * Q8_QK && d[t].len() >= nb);
    }
    debug_assert!(rows.iter().all(|r| r.len() == nb * Q8_BLOCK_BYTES));
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let rps = rows.map(|r| r.as_ptr());
    // The block scales are converted 8 at a time and multiplied by the activation scales
    // up front (the same f32 products ggml forms per block), so the inner loop only
    // broadcasts them: no scalar f16 conversion on the accumulator's dependency chain.
    let mut dd = [[[0.0f32; 8]; T]; R];
    let mut b0 = 0;
    while b0 + 8 <= nb {
        for (r, &rp) in rps.iter().enumerate() {
            // SAFETY: b0 + 8 <= nb = row.len() / Q8_BLOCK_BYTES, so blocks b0..b0 + 8 are in
            // the row, and in every q[t] / d[t] (this function's contract); prefetches never
            // fault.
            unsafe {
                // The head streams every row once per token: keep the lines
                // `prefetch::DENSE_BYTES` ahead in flight (8 blocks = 272 bytes per iteration,
                // 5 lines cover them).
                let ahead = rp.wrapping_add(b0 * Q8_BLOCK_BYTES + prefetch::DENSE_BYTES);
                for l in 0..5 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l * 64) as *const i8);
                }
                let h: [u16; 8] = std::array::from_fn(|i| {
                    (rp.add((b0 + i) * Q8_BLOCK_BYTES) as *const u16).read_unaligned()
                });
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
                for t in 0..T {
                    let dx = _mm256_loadu_ps(d[t].as_ptr().add(b0));
                    _mm256_storeu_ps(dd[r][t].as_mut_ptr(), _mm256_mul_ps(dw, dx));
                }
                q8_0_blocks::<T, 8>(rp, q, b0, &dd[r], 0, &mut acc[r]);
            }
        }
        b0 += 8;
    }
    if b0 < nb {
        let n = nb - b0;
        for (r, &rp) in rps.iter().enumerate() {
            // SAFETY: blocks b0..nb are in the row and in every q[t] / d[t], as above.
            unsafe {
                let mut h = [0u16; 8];
                for (i, hi) in h.iter_mut().enumerate().take(n) {
                    *hi = (rp.add((b0 + i) * Q8_BLOCK_BYTES) as *const u16).read_unaligned();
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
                for t in 0..T {
                    let mut dx = [0.0f32; 8];
                    dx[..n].copy_from_slice(&d[t][b0..nb]);
                    let v = _mm256_mul_ps(dw, _mm256_loadu_ps(dx.as_ptr()));
                    _mm256_storeu_ps(dd[r][t].as_mut_ptr(), v);
                }
                for i in 0..n {
                    q8_0_blocks::<T, 1>(rp, q, b0 + i, &dd[r], i, &mut acc[r]);
                }
            }
        }
    }
    acc.map(|a| a.map(|v| hsum_ps(v)))
}

/// `vpshufb` controls that spread the i16 scales of group `g` (32 elements; `g % 4` here,
/// the half of the scales comes from the source vector): i16 scale `2g` in all eight
/// lanes of the low 128 bits, `2g + 1` in the high ones, where `maddubs` leaves the pair
/// sums of the group's first and last 16 elements (ggml's `get_scale_shuffle` +
/// `cvtepi8_epi16`, with the widening done once per block).
const Q6K_SHUF: [[u8; 32]; 4] = {
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
unsafe fn q6_k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    let nb = row.len() / Q6K_BLOCK_BYTES;
    for t in 0..T {
        debug_assert!(q[t].len() >= nb * Q6K_QK && d[t].len() >= nb);
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
            let blk = rp.add(b * Q6K_BLOCK_BYTES);
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
                    let shuf = _mm256_loadu_si256(Q6K_SHUF[k].as_ptr() as *const __m256i);
                    let sc = _mm256_shuffle_epi8(sh, shuf);
                    for t in 0..T {
                        let xp = q[t].as_ptr().add(b * Q6K_QK + 32 * g);
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
        out[t] = hsum_ps(acc[t]);
    }
    out
}

impl BlockKernel for Avx2 {
    unsafe fn q8_0_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: forwarded contract (AVX2 + FMA + F16C).
        unsafe { q8_0_dot(row, q, d) }
    }

    unsafe fn q8_0_dot_rows<const R: usize>(rows: [&[u8]; R], q: &[i8], d: &[f32]) -> [f32; R] {
        // SAFETY: forwarded contract.
        unsafe { q8_0_dot_rows::<R, 1>(rows, [q], [d]).map(|v| v[0]) }
    }

    unsafe fn q6_k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: forwarded contract (AVX2 + FMA + F16C).
        unsafe { q6_k_dot(row, q, d) }
    }
}

impl QuantizeKernel for Avx2 {
    unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        // SAFETY: forwarded contract (AVX2 + FMA + F16C).
        unsafe { quantize_row(x, q) }
    }
}

// ---------------------------------------------------------------------------------------------
// f32 vector ops (lengths are checked by the public wrappers in ops.rs)

/// The 8 lanes of `sum a[k] * b(k)` over `k < n / 8 * 8`, with `b` read 8 lanes at a time by
/// `load_b(k)`: four FMA chains 32 values a step, the rest into the first, then
/// `(c0 + c1) + (c2 + c3)`. The one lane order behind [`dot_by`] and [`dots8_f16`], so a score
/// has the same bits whichever sums its lanes; `avx512_kv::dots_f16_group` restates it on
/// 512-bit registers (two chains to a register): a change here must be made there too.
///
/// # Safety
/// AVX2 + FMA are enabled in the caller; `n <= a.len()`, and `load_b(k)` is valid for every `k`
/// with `k + 8 <= n`.
#[inline(always)]
unsafe fn dot_lanes(a: &[f32], n: usize, load_b: impl Fn(usize) -> __m256) -> __m256 {
    let ap = a.as_ptr();
    // SAFETY: AVX2 + FMA are enabled in every caller (this function's contract; it has no
    // `#[target_feature]` of its own so that it inlines into callers with F16C and without).
    let mut acc = [unsafe { _mm256_setzero_ps() }; 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: i + 32 <= n <= a.len() (the contract), and AVX2 + FMA as above.
            *acc = unsafe {
                _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i + 8 * j)), load_b(i + 8 * j), *acc)
            };
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: i + 8 <= n <= a.len(), and AVX2 + FMA as above.
        acc[0] = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), load_b(i), acc[0]) };
        i += 8;
    }
    // SAFETY: AVX2 is enabled in every caller.
    unsafe { _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])) }
}

/// `sum a[k] * b(k)` with `b` read 8 lanes at a time by `load_b(k)` and singly by `tail_b(k)`:
/// the one loop behind [`dot`] and [`dot_f16`], so a widened f16 row gives the same sum.
///
/// # Safety
/// AVX2 + FMA are enabled in the caller; `n <= a.len()`, and `load_b(k)` / `tail_b(k)` are
/// valid for every `k` with `k + 8 <= n` / `k < n`.
#[inline(always)]
unsafe fn dot_by(
    a: &[f32],
    n: usize,
    load_b: impl Fn(usize) -> __m256,
    tail_b: impl Fn(usize) -> f32,
) -> f32 {
    // SAFETY: forwarded contract; AVX2 is enabled in every caller (hsum_ps).
    let mut s = unsafe { hsum_ps(dot_lanes(a, n, load_b)) };
    for (k, &ak) in a.iter().enumerate().take(n).skip(n / 8 * 8) {
        s += ak * tail_b(k);
    }
    s
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let bp = b.as_ptr();
    // SAFETY: every index passed to the loaders is below n (dot_by's loop bounds).
    unsafe { dot_by(a, n, |k| _mm256_loadu_ps(bp.add(k)), |k| b[k]) }
}

/// [`dot`] against f16 values (an f16 KV cache row), converted in registers: bit-identical to
/// widening `b` to f32 first, as the conversion is exact.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
    let n = a.len().min(b.len());
    let bp = b.as_ptr();
    // SAFETY: as in dot; 8 f16 values are 16 bytes.
    unsafe {
        dot_by(
            a,
            n,
            |k| _mm256_cvtph_ps(_mm_loadu_si128(bp.add(k) as *const __m128i)),
            |k| b[k].to_f32(),
        )
    }
}

/// `y += alpha * x(k)`, `x` read as in [`dot_by`].
///
/// # Safety
/// As [`dot_by`], with `n <= y.len()`.
#[inline(always)]
unsafe fn axpy_by(
    alpha: f32,
    y: &mut [f32],
    n: usize,
    load_x: impl Fn(usize) -> __m256,
    tail_x: impl Fn(usize) -> f32,
) {
    // SAFETY: AVX2 + FMA are enabled in every caller (this function's contract, as in dot_by).
    let av = unsafe { _mm256_set1_ps(alpha) };
    let yp = y.as_mut_ptr();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n <= y.len() (the callers' bound); AVX2 + FMA as above.
        unsafe {
            _mm256_storeu_ps(
                yp.add(i),
                _mm256_fmadd_ps(av, load_x(i), _mm256_loadu_ps(yp.add(i))),
            )
        };
        i += 8;
    }
    for (k, yk) in y.iter_mut().enumerate().take(n).skip(i) {
        *yk += alpha * tail_x(k);
    }
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let xp = x.as_ptr();
    // SAFETY: every index passed to the loaders is below n.
    unsafe { axpy_by(alpha, y, n, |k| _mm256_loadu_ps(xp.add(k)), |k| x[k]) }
}

/// [`axpy`] from f16 values (an f16 KV cache row); bit-identical to widening `x` first.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn axpy_f16(alpha: f32, x: &[half::f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let xp = x.as_ptr();
    // SAFETY: as in axpy; 8 f16 values are 16 bytes.
    unsafe {
        axpy_by(
            alpha,
            y,
            n,
            |k| _mm256_cvtph_ps(_mm_loadu_si128(xp.add(k) as *const __m128i)),
            |k| x[k].to_f32(),
        )
    }
}

/// `out[p] = dot_f16(q, rows[p * stride..][..q.len()])` for every `p`: the attention scores of
/// one query against a head's cached keys in one call (a call per key costs as much as the
/// 128-element dot itself).
///
/// # Safety
/// AVX2 + FMA + F16C; `rows` holds `(out.len() - 1) * stride + q.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dots_f16(q: &[f32], rows: &[half::f16], stride: usize, out: &mut [f32]) {
    let n = q.len();
    let mut p = 0;
    if n.is_multiple_of(8) {
        while p + 8 <= out.len() {
            // SAFETY: rows p..p + 8 are in `rows` (the contract covers out.len() rows).
            let s = unsafe { dots8_f16(q, rows.as_ptr().add(p * stride), stride) };
            out[p..p + 8].copy_from_slice(&s);
            p += 8;
        }
    }
    for (p, o) in out.iter_mut().enumerate().skip(p) {
        // SAFETY: forwarded contract.
        *o = unsafe { dot_f16(q, &rows[p * stride..][..n]) };
    }
}

/// [`dot_f16`] of `q` against eight rows `stride` apart, `q.len()` a multiple of 8: each row's
/// lanes come from [`dot_lanes`] as in [`dot_by`], then one transposing tree does the eight
/// horizontal sums with [`hsum_ps`]'s pairings (lanes `l + 4`, then `l + 2`, then `l + 1`),
/// so every score has the same bits as a call per row. Why: at a head's 64 or 128 values a
/// call per row was bound by the latency of its own horizontal sum and its call (`perf`, KJV
/// decode at 800 positions: 40% of `dot_f16`'s samples on the sum); the tree is 20 ops for
/// eight rows instead of six dependent ones per row.
///
/// # Safety
/// AVX2 + FMA + F16C; `q.len() % 8 == 0`; rows `0..8` of `q.len()` values at `rows + p *
/// stride` are readable.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots8_f16(q: &[f32], rows: *const half::f16, stride: usize) -> [f32; 8] {
    let n = q.len();
    debug_assert!(n.is_multiple_of(8));
    // A loop, not `array::from_fn`: a closure that the compiler leaves out of line is called
    // per row without this function's features (seen costing pp512 9% on KJV).
    let mut v = [_mm256_setzero_ps(); 8];
    for (r, v) in v.iter_mut().enumerate() {
        // SAFETY: row r's n values are readable (the contract).
        let bp = unsafe { rows.add(r * stride) };
        // SAFETY: dot_lanes asks for indices below n, 8 f16 values (16 bytes) at a time; AVX2 +
        // FMA + F16C are enabled here.
        *v = unsafe {
            dot_lanes(q, n, |k| {
                _mm256_cvtph_ps(_mm_loadu_si128(bp.add(k) as *const __m128i))
            })
        };
    }
    let sums = hsum_ps8(v);
    let mut out = [0.0f32; 8];
    // SAFETY: `out` is 32 bytes; the store is unaligned.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
    out
}

/// [`hsum_ps`] of eight registers at once, sum `r` in lane `r`: one transposing tree of 20 ops
/// with hsum_ps's pairings (lanes `l + 4`, then `l + 2`, then `l + 1`), so each sum has the bits
/// of its own `hsum_ps` call.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum_ps8(v: [__m256; 8]) -> __m256 {
    // Row r and r + 4 share a register: lanes l + (l + 4) of each (hsum_ps's first add).
    let s: [__m256; 4] = std::array::from_fn(|r| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(v[r], v[r + 4]),
            _mm256_permute2f128_ps::<0x31>(v[r], v[r + 4]),
        )
    });
    // Pairs of rows: lanes l + (l + 2) (the second add).
    let pair = |a: __m256, b: __m256| {
        let (a, b) = (_mm256_castps_pd(a), _mm256_castps_pd(b));
        _mm256_add_ps(
            _mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
            _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)),
        )
    };
    let (u01, u23) = (pair(s[0], s[1]), pair(s[2], s[3]));
    // Lane 0 + lane 1 of each (the last add): rows 0..4 in the low half, 4..8 in the high.
    _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(u01, u23),
        _mm256_shuffle_ps::<0b11_01_11_01>(u01, u23),
    )
}

/// `y += alphas[p] * rows[p * stride..][..y.len()]` for every `p` in order: the attention output
/// of one query. `y` stays in registers 64 values at a time across all rows, and every element
/// sees the same operations as with one [`axpy_f16`] per row.
///
/// # Safety
/// AVX2 + FMA + F16C; `rows` holds `(alphas.len() - 1) * stride + y.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn axpys_f16(alphas: &[f32], rows: &[half::f16], stride: usize, y: &mut [f32]) {
    const W: usize = 8;
    let n = y.len();
    let (rp, yp) = (rows.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i + 8 * W <= n {
        // SAFETY: i + 64 <= n = y.len(); row p's values i..i + 64 are in rows (contract).
        unsafe {
            let mut acc: [__m256; W] = std::array::from_fn(|j| _mm256_loadu_ps(yp.add(i + 8 * j)));
            for (p, &a) in alphas.iter().enumerate() {
                let av = _mm256_set1_ps(a);
                let r = rp.add(p * stride + i);
                for (j, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(r.add(8 * j) as *const __m128i));
                    *acc = _mm256_fmadd_ps(av, x, *acc);
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(yp.add(i + 8 * j), *acc);
            }
        }
        i += 8 * W;
    }
    if i < n {
        for (p, &a) in alphas.iter().enumerate() {
            // SAFETY: forwarded contract; the rest of row p.
            unsafe { axpy_f16(a, &rows[p * stride + i..][..n - i], &mut y[i..]) };
        }
    }
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len().min(weight.len()).min(out.len());
    if n == 0 {
        return;
    }
    // SAFETY: same features.
    let ss = unsafe { dot(&x[..n], &x[..n]) };
    let r = 1.0 / (ss / n as f32 + eps).sqrt();
    let rv = _mm256_set1_ps(r);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n. Same op order as the scalar version: w * (x * r).
        unsafe {
            let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), rv);
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(_mm256_loadu_ps(weight.as_ptr().add(i)), v),
            );
        }
        i += 8;
    }
    for k in i..n {
        out[k] = weight[k] * (x[k] * r);
    }
}

/// e^x for 8 lanes, Cephes `expf` polynomial (about 1 ulp on normal results). 2^n is applied as
/// two factors so results that overflow become inf and tiny ones go through the subnormals to
/// 0, like `f32::exp`; NaN propagates.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp256(x: __m256) -> __m256 {
    // max/min return their second operand when one is NaN: putting x second keeps NaN.
    let x = _mm256_min_ps(
        _mm256_set1_ps(88.8),
        _mm256_max_ps(_mm256_set1_ps(-104.0), x),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // r = x - n*ln2 in two steps (ln2 = 0.693359375 - 2.12194440e-4, the first part exact).
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        p,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let ni = _mm256_cvtps_epi32(n); // n in [-150, 128]
    let n1 = _mm256_srai_epi32::<1>(ni);
    let n2 = _mm256_sub_epi32(ni, n1);
    let bias = _mm256_set1_epi32(127);
    let f1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
    let f2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
    _mm256_mul_ps(_mm256_mul_ps(y, f1), f2)
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn softmax_inplace(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let p = x.as_mut_ptr();
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n. NaN lanes are skipped (second operand), like f32::max.
        mv = _mm256_max_ps(unsafe { _mm256_loadu_ps(p.add(i)) }, mv);
        i += 8;
    }
    let mut max = hmax_ps(mv);
    for &v in &x[i..] {
        max = v.max(max);
    }
    let maxv = _mm256_set1_ps(max);
    let mut sv = _mm256_setzero_ps();
    i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        unsafe {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), maxv));
            _mm256_storeu_ps(p.add(i), e);
            sv = _mm256_add_ps(sv, e);
        }
        i += 8;
    }
    let mut sum = hsum_ps(sv);
    for v in &mut x[i..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    let iv = _mm256_set1_ps(inv);
    i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        unsafe { _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), iv)) };
        i += 8;
    }
    for v in &mut x[i..] {
        *v *= inv;
    }
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn relu2_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let zero = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n. max(g, 0) maps NaN to 0 like f32::max; same op order as scalar.
        unsafe {
            let r = _mm256_max_ps(_mm256_loadu_ps(gate.as_ptr().add(i)), zero);
            let v = _mm256_mul_ps(_mm256_mul_ps(r, r), _mm256_loadu_ps(up.as_ptr().add(i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
        }
        i += 8;
    }
    for k in i..n {
        let r = gate[k].max(0.0);
        out[k] = r * r * up[k];
    }
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_set1_ps(-0.0);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        unsafe {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = exp256(_mm256_xor_ps(g, sign));
            let v = _mm256_mul_ps(
                _mm256_div_ps(g, _mm256_add_ps(one, e)),
                _mm256_loadu_ps(up.as_ptr().add(i)),
            );
            _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
        }
        i += 8;
    }
    for k in i..n {
        out[k] = gate[k] / (1.0 + (-gate[k]).exp()) * up[k];
    }
}
