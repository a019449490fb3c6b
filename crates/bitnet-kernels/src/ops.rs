//! f32 vector ops of the forward pass, dispatched by `dispatch::vector_op!`. Each has a `*_scalar`
//! reference; the AVX2 and NEON versions agree with it to float rounding (`relu2_mul` exactly).
//!
//! All functions panic if their slice lengths disagree (a caller bug).

// Only the ISAs with f16 vector ops ask which ISA runs.
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "wasm32", target_feature = "simd128")
))]
use crate::detected_isa;
use crate::dispatch::vector_op;
use half::{f16, slice::HalfFloatSliceExt};

pub use crate::scalar::{
    axpy as axpy_scalar, dot as dot_scalar, relu2_mul as relu2_mul_scalar,
    rms_norm as rms_norm_scalar, silu_mul as silu_mul_scalar,
    softmax_inplace as softmax_inplace_scalar,
};

/// `out = weight * x / sqrt(mean(x^2) + eps)` (RMSNorm; mean of squares in f32 as torch does).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == out.len(),
        "rms_norm: length mismatch"
    );
    vector_op!(rms_norm(x, weight, eps, out))
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    vector_op!(dot(a, b))
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    vector_op!(axpy(alpha, x, y))
}

/// Whether the AVX2 + F16C vector ops run here (the f16 ops convert in registers there).
#[cfg(target_arch = "x86_64")]
fn f16c_ops() -> bool {
    detected_isa().vector_base() == crate::Isa::Avx2
}

/// `f` of `x` widened to f32 (on the stack for rows up to 256, an attention head's size).
fn widened<R>(x: &[f16], f: impl FnOnce(&[f32]) -> R) -> R {
    let mut stack = [0f32; 256];
    if x.len() <= stack.len() {
        let s = &mut stack[..x.len()];
        x.convert_to_f32_slice(s);
        f(s)
    } else {
        f(&x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>())
    }
}

/// [`dot`] against f16 values (a row of an f16 KV cache), without a widened copy; the same
/// result as `dot(a, &widened(b))`.
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f16: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if f16c_ops() {
        // SAFETY: the dispatched ISA has AVX2 + FMA + F16C.
        return unsafe { crate::x86::avx2::dot_f16(a, b) };
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if detected_isa() == crate::Isa::Simd128 {
        // SAFETY: Simd128 is only supported in builds with +simd128.
        return unsafe { crate::wasm::simd128::dot_f16(a, b) };
    }
    widened(b, |b| dot(a, b))
}

/// [`axpy`] from f16 values (a row of an f16 KV cache); the same result as
/// `axpy(alpha, &widened(x), y)`.
pub fn axpy_f16(alpha: f32, x: &[f16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy_f16: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if f16c_ops() {
        // SAFETY: as in dot_f16.
        return unsafe { crate::x86::avx2::axpy_f16(alpha, x, y) };
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if detected_isa() == crate::Isa::Simd128 {
        // SAFETY: Simd128 is only supported in builds with +simd128.
        return unsafe { crate::wasm::simd128::axpy_f16(alpha, x, y) };
    }
    widened(x, |x| axpy(alpha, x, y))
}

/// Numerically stable softmax (subtracts the max first).
pub fn softmax_inplace(x: &mut [f32]) {
    vector_op!(softmax_inplace(x))
}

/// `out = relu(gate)^2 * up` (BitNet b1.58's squared-ReLU GLU).
pub fn relu2_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "relu2_mul: length mismatch"
    );
    vector_op!(relu2_mul(gate, up, out))
}

/// `out = silu(gate) * up` (SwiGLU, for the 1bitLLM-style BitNet models).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "silu_mul: length mismatch"
    );
    vector_op!(silu_mul(gate, up, out))
}

/// Whether `n` rows of `len` values, `stride` apart, fit in `total` values.
fn rows_fit(n: usize, stride: usize, len: usize, total: usize) -> bool {
    n == 0
        || (n - 1)
            .checked_mul(stride)
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= total)
}

/// `out[p] = dot_f16(q, rows[p * stride..][..q.len()])` for every `p < out.len()` (one query's
/// attention scores against cached f16 keys, `stride` apart).
///
/// # Panics
/// If `rows` is too short for `out.len()` rows.
pub fn dots_f16(q: &[f32], rows: &[f16], stride: usize, out: &mut [f32]) {
    assert!(
        rows_fit(out.len(), stride, q.len(), rows.len()),
        "dots_f16: rows too short"
    );
    #[cfg(target_arch = "x86_64")]
    if f16c_ops() {
        // SAFETY: the dispatched ISA has AVX2 + FMA + F16C; the length was checked.
        return unsafe { crate::x86::avx2::dots_f16(q, rows, stride, out) };
    }
    for (p, o) in out.iter_mut().enumerate() {
        *o = dot_f16(q, &rows[p * stride..][..q.len()]);
    }
}

/// Whether the AVX-512 forms of the group ops run here.
#[cfg(target_arch = "x86_64")]
fn avx512_ops() -> bool {
    matches!(
        detected_isa(),
        crate::Isa::Avx512Vnni | crate::Isa::Avx512Vnni256 | crate::Isa::Amx
    )
}

/// [`dots_f16`] for a group of queries that read the same rows (the query heads of one KV head):
/// query `j` is `qs[j * n..][..n]`, and `out[j * out_stride + p]` gets its score against row
/// `p < rows_n` (`rows[p * stride..][..n]`). The same bits as one [`dots_f16`] call per query;
/// on AVX-512, where `n % 32 == 0`, each row is widened once for up to four queries.
///
/// # Panics
/// If `n` is 0 or does not divide `qs.len()`, if `rows` is too short for `rows_n` rows, or if
/// `out` is too short or its rows would overlap (`out_stride < rows_n` with two queries or more).
pub fn dots_f16_group(
    qs: &[f32],
    n: usize,
    rows: &[f16],
    stride: usize,
    rows_n: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(
        n > 0 && qs.len().is_multiple_of(n),
        "dots_f16_group: queries of {n} values"
    );
    let nq = qs.len() / n;
    assert!(
        rows_fit(rows_n, stride, n, rows.len()),
        "dots_f16_group: rows too short"
    );
    assert!(
        (nq < 2 || out_stride >= rows_n) && rows_fit(nq, out_stride, rows_n, out.len()),
        "dots_f16_group: out too short"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512_ops() && n.is_multiple_of(32) {
        use crate::x86::avx512_kv::{dots_f16_group as group, GROUP};
        for (c, q) in qs.chunks(GROUP * n).enumerate() {
            let o = &mut out[c * GROUP * out_stride..];
            // SAFETY: the ISA has AVX-512 F, AVX2, FMA and F16C; n % 32 == 0; the lengths were
            // checked above (chunk c's queries write rows c * GROUP.. of `out`).
            unsafe {
                match q.len() / n {
                    1 => group::<1>(q, n, rows, stride, rows_n, o, out_stride),
                    2 => group::<2>(q, n, rows, stride, rows_n, o, out_stride),
                    3 => group::<3>(q, n, rows, stride, rows_n, o, out_stride),
                    4 => group::<4>(q, n, rows, stride, rows_n, o, out_stride),
                    _ => unreachable!("chunks of at most GROUP = 4 queries"),
                }
            }
        }
        return;
    }
    for (j, q) in qs.chunks_exact(n).enumerate() {
        dots_f16(q, rows, stride, &mut out[j * out_stride..][..rows_n]);
    }
}

/// [`axpys_f16`] for a group of queries over the same rows: `ys[j * n..][..n] += alphas[j *
/// a_stride + p] * rows[p * stride..][..n]` for every row `p < rows_n` in order. The same bits
/// as one [`axpys_f16`] call per query; on AVX-512, where `n % 64 == 0`, each row is widened
/// once for up to four.
///
/// # Panics
/// If `n` is 0 or does not divide `ys.len()`, or if `rows` or `alphas` are too short.
pub fn axpys_f16_group(
    alphas: &[f32],
    a_stride: usize,
    rows_n: usize,
    rows: &[f16],
    stride: usize,
    ys: &mut [f32],
    n: usize,
) {
    assert!(
        n > 0 && ys.len().is_multiple_of(n),
        "axpys_f16_group: outputs of {n} values"
    );
    let nq = ys.len() / n;
    assert!(
        rows_fit(rows_n, stride, n, rows.len()),
        "axpys_f16_group: rows too short"
    );
    assert!(
        rows_fit(nq, a_stride, rows_n, alphas.len()),
        "axpys_f16_group: alphas too short"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512_ops() && n.is_multiple_of(64) {
        use crate::x86::avx512_kv::{axpys_f16_group as group, GROUP};
        for (c, y) in ys.chunks_mut(GROUP * n).enumerate() {
            let a = &alphas[c * GROUP * a_stride..];
            // SAFETY: the ISA has AVX-512 F and F16C; n % 64 == 0; the lengths were checked
            // above (chunk c's queries read rows c * GROUP.. of `alphas`).
            unsafe {
                match y.len() / n {
                    1 => group::<1>(a, a_stride, rows_n, rows, stride, y, n),
                    2 => group::<2>(a, a_stride, rows_n, rows, stride, y, n),
                    3 => group::<3>(a, a_stride, rows_n, rows, stride, y, n),
                    4 => group::<4>(a, a_stride, rows_n, rows, stride, y, n),
                    _ => unreachable!("chunks of at most GROUP = 4 outputs"),
                }
            }
        }
        return;
    }
    for (j, y) in ys.chunks_exact_mut(n).enumerate() {
        axpys_f16(&alphas[j * a_stride..][..rows_n], rows, stride, y);
    }
}

/// `y += alphas[p] * rows[p * stride..][..y.len()]` for every `p` in order (one query's
/// attention output from cached f16 values); the same result as one [`axpy_f16`] per row.
///
/// # Panics
/// If `rows` is too short for `alphas.len()` rows.
pub fn axpys_f16(alphas: &[f32], rows: &[f16], stride: usize, y: &mut [f32]) {
    assert!(
        rows_fit(alphas.len(), stride, y.len(), rows.len()),
        "axpys_f16: rows too short"
    );
    #[cfg(target_arch = "x86_64")]
    if f16c_ops() {
        // SAFETY: as in dots_f16.
        return unsafe { crate::x86::avx2::axpys_f16(alphas, rows, stride, y) };
    }
    for (p, &a) in alphas.iter().enumerate() {
        axpy_f16(a, &rows[p * stride..][..y.len()], y);
    }
}
