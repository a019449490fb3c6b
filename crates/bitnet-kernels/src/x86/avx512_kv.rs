//! The attention's reads of an f16 KV cache for a group of queries that share the cached rows
//! (the query heads of one KV head under grouped-query attention: four in 2B4T and the KJV
//! model), on AVX-512. The AVX2 forms (`avx2::dots_f16`, `avx2::axpys_f16`) take one query a
//! call, so a group widens every cached row once per query, and 16 vector registers hold one
//! query's accumulators; here each row is widened once for up to [`GROUP`] queries, whose
//! accumulators fit in the 32 registers. Every result keeps the AVX2 forms' bits:
//!
//! - a score's eight lanes are `dot_lanes`' four FMA chains (values `8j..8j + 8` of every
//!   32), two chains to a 512-bit register, added in its order `(c0 + c1) + (c2 + c3)`, and
//!   summed with `hsum_ps`'s pairings (`avx2::hsum_ps8`, eight rows at once);
//! - an output element gets one `fma(alpha_p, row_p, y)` per row, in row order, as in
//!   `axpys_f16` (the vector width does not enter an element's arithmetic).

use crate::x86::avx2::hsum_ps8;
use half::f16;
use std::arch::x86_64::*;

/// The most queries one call of a kernel here takes.
pub(crate) const GROUP: usize = 4;

/// Eight f32 lanes of a 512-bit register's upper half.
#[inline]
#[target_feature(enable = "avx512f")]
fn hi256(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// `out[j * out_stride + p] = dot_f16(q_j, row p)` for the `Q` queries `q_j = qs[j * n..][..n]`
/// and the rows `p < rows_n` at `rows[p * stride..][..n]`.
///
/// # Safety
/// AVX-512 F + AVX2 + FMA + F16C; `n % 32 == 0`; `qs.len() >= Q * n`; `rows` holds
/// `(rows_n - 1) * stride + n` values when `rows_n > 0`; `out` holds `(Q - 1) * out_stride +
/// rows_n` values.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn dots_f16_group<const Q: usize>(
    qs: &[f32],
    n: usize,
    rows: &[f16],
    stride: usize,
    rows_n: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    debug_assert!(n.is_multiple_of(32) && qs.len() >= Q * n);
    let (qp, rp, op) = (qs.as_ptr(), rows.as_ptr(), out.as_mut_ptr());
    // Eight rows at a time: each query's eight lane vectors, then one tree per query.
    let mut lanes = [[_mm256_setzero_ps(); 8]; Q];
    let mut p0 = 0;
    while p0 < rows_n {
        let count = (rows_n - p0).min(8);
        for r in 0..count {
            // SAFETY: row p0 + r < rows_n is readable for n values (the contract).
            let row = unsafe { rp.add((p0 + r) * stride) };
            // Chains c0 | c1 and c2 | c3 of every query.
            let mut a = [_mm512_setzero_ps(); Q];
            let mut b = [_mm512_setzero_ps(); Q];
            let mut i = 0;
            while i < n {
                // SAFETY: i + 32 <= n: 32 f16 values of the row, 32 f32 values of each query.
                unsafe {
                    let ka = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(i) as *const __m256i));
                    let kb = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(i + 16) as *const __m256i));
                    for j in 0..Q {
                        let q = qp.add(j * n + i);
                        a[j] = _mm512_fmadd_ps(_mm512_loadu_ps(q), ka, a[j]);
                        b[j] = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(16)), kb, b[j]);
                    }
                }
                i += 32;
            }
            for ((lanes, &a), &b) in lanes.iter_mut().zip(&a).zip(&b) {
                lanes[r] = _mm256_add_ps(
                    _mm256_add_ps(_mm512_castps512_ps256(a), hi256(a)),
                    _mm256_add_ps(_mm512_castps512_ps256(b), hi256(b)),
                );
            }
        }
        for (j, lanes) in lanes.iter().enumerate() {
            let mut sums = [0.0f32; 8];
            // SAFETY: `sums` is 32 bytes; the store is unaligned.
            unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), hsum_ps8(*lanes)) };
            for (r, &s) in sums.iter().enumerate().take(count) {
                // SAFETY: j < Q and p0 + r < rows_n: inside `out` (the contract).
                unsafe { *op.add(j * out_stride + p0 + r) = s };
            }
        }
        p0 += count;
    }
}

/// `y_j += alphas_j[p] * row p` for every row `p < rows_n` in order, for the `Q` queries with
/// weights `alphas_j = alphas[j * a_stride..][..rows_n]` and outputs `y_j = ys[j * n..][..n]`.
///
/// # Safety
/// AVX-512 F + F16C; `n % 64 == 0`; `ys.len() >= Q * n`; `alphas` holds `(Q - 1) * a_stride +
/// rows_n` values; `rows` holds `(rows_n - 1) * stride + n` values when `rows_n > 0`.
#[target_feature(enable = "avx512f,f16c")]
pub(crate) unsafe fn axpys_f16_group<const Q: usize>(
    alphas: &[f32],
    a_stride: usize,
    rows_n: usize,
    rows: &[f16],
    stride: usize,
    ys: &mut [f32],
    n: usize,
) {
    debug_assert!(n.is_multiple_of(64) && ys.len() >= Q * n);
    let (ap, rp, yp) = (alphas.as_ptr(), rows.as_ptr(), ys.as_mut_ptr());
    let mut i = 0;
    while i < n {
        // Values i..i + 64 of every query's output stay in registers across all rows.
        let mut acc = [[_mm512_setzero_ps(); 4]; Q];
        for (j, acc) in acc.iter_mut().enumerate() {
            for (c, acc) in acc.iter_mut().enumerate() {
                // SAFETY: j < Q, i + 64 <= n: inside ys (the contract).
                *acc = unsafe { _mm512_loadu_ps(yp.add(j * n + i + 16 * c)) };
            }
        }
        for p in 0..rows_n {
            // SAFETY: row p's values i..i + 64 are in rows; alphas_j[p] is in alphas (contract).
            unsafe {
                let row = rp.add(p * stride + i);
                let v: [__m512; 4] = [
                    _mm512_cvtph_ps(_mm256_loadu_si256(row as *const __m256i)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(row.add(16) as *const __m256i)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(row.add(32) as *const __m256i)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(row.add(48) as *const __m256i)),
                ];
                for (j, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*ap.add(j * a_stride + p));
                    for (acc, &v) in acc.iter_mut().zip(&v) {
                        *acc = _mm512_fmadd_ps(a, v, *acc);
                    }
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            for (c, &acc) in acc.iter().enumerate() {
                // SAFETY: as for the loads above.
                unsafe { _mm512_storeu_ps(yp.add(j * n + i + 16 * c), acc) };
            }
        }
        i += 64;
    }
}
