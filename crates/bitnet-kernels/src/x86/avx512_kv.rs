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

/// The most queries one call of a kernel here takes (the dispatch in `ops.rs` instantiates 1-4).
pub(crate) const GROUP: usize = 4;
const _: () = assert!(GROUP == 4);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::avx2;

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    }

    /// The kernels themselves (not through `ops`, whose dispatch may pick the call per query)
    /// against the AVX2 one-query forms, bit for bit, for every group size, on CPUs with
    /// AVX-512: head sizes 32-256, 0-19 rows (eight-row groups and a rest), strided outputs.
    #[test]
    fn group_kernels_equal_the_avx2_forms() {
        if !crate::Isa::Avx512Vnni.is_supported() {
            return;
        }
        fn check<const Q: usize>(n: usize, rows_n: usize) {
            let stride = n + 24;
            let qs = vals(Q * n, 1);
            let rows: Vec<f16> = vals(rows_n * stride + n, 2)
                .iter()
                .map(|&v| f16::from_f32(8.0 * v))
                .collect();
            let out_stride = rows_n + 3;
            let mut out = vec![f32::NAN; Q * out_stride];
            let alphas = vals(Q * out_stride, 3);
            let mut ys = vals(Q * n, 4);
            let y0 = ys.clone();
            // SAFETY: AVX-512 F (and with it AVX2, FMA, F16C) is supported; n % 64 == 0 or
            // n % 32 == 0 as each kernel asks; the lengths hold Q queries, rows and outputs.
            unsafe {
                dots_f16_group::<Q>(&qs, n, &rows, stride, rows_n, &mut out, out_stride);
                if n.is_multiple_of(64) {
                    axpys_f16_group::<Q>(&alphas, out_stride, rows_n, &rows, stride, &mut ys, n);
                }
            }
            for j in 0..Q {
                let mut want = vec![0.0f32; rows_n];
                // SAFETY: as above.
                unsafe { avx2::dots_f16(&qs[j * n..][..n], &rows, stride, &mut want) };
                let got = &out[j * out_stride..][..rows_n];
                assert!(
                    same_bits(got, &want),
                    "dots: query {j} of {Q}, n {n}, {rows_n} rows"
                );
                if n.is_multiple_of(64) {
                    let mut want = y0[j * n..][..n].to_vec();
                    // SAFETY: as above.
                    unsafe {
                        avx2::axpys_f16(
                            &alphas[j * out_stride..][..rows_n],
                            &rows,
                            stride,
                            &mut want,
                        )
                    };
                    let got = &ys[j * n..][..n];
                    assert!(
                        same_bits(got, &want),
                        "axpys: query {j} of {Q}, n {n}, {rows_n} rows"
                    );
                }
            }
        }
        for n in [32, 64, 96, 128, 256] {
            for rows_n in [0, 1, 7, 8, 9, 16, 19] {
                check::<1>(n, rows_n);
                check::<2>(n, rows_n);
                check::<3>(n, rows_n);
                check::<4>(n, rows_n);
            }
        }
    }
}
