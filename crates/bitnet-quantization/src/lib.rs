//! Format codecs for ternary (BitNet b1.58) models.
//!
//! Everything here is pure, allocation-per-call code meant for load time, conversion and tests;
//! the hot loops live in `bitnet-kernels`. Every decoder validates its input and reports problems
//! through [`QuantError`] instead of panicking, because the bytes come from model files. The
//! packed matrix types ([`TernaryMatrix`], [`DenseMatrix`]) live here too, below the kernels, so
//! loading a model needs no kernels.
//!
//! Ternary codes are always `i8` in `{-1, 0, +1}`; the 2-bit on-disk code is `t + 1`
//! (0 = -1, 1 = 0, 2 = +1; 3 is invalid), as in bitnet.cpp, llama.cpp and transformers.

pub mod finite;
pub mod float;
pub mod hf_packed;
pub mod i2s;
pub mod matrix;
pub mod q6_k;
pub mod q8_0;
pub mod tq1_0;
pub mod tq2_0;

pub use matrix::{DenseMatrix, DenseType, MatrixError, TernaryMatrix};

/// Errors of the format codecs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("{what}: expected {expected} bytes or elements, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what}: {n} is not a multiple of {multiple}")]
    NotMultiple {
        what: &'static str,
        n: usize,
        multiple: usize,
    },
    #[error("ternary code {code} at index {index} is outside {{-1, 0, 1}}")]
    InvalidCode { index: usize, code: i8 },
    #[error("2-bit code 3 (no ternary value) at element {index}")]
    InvalidPackedCode { index: usize },
    #[error("scale {0} is not a finite number")]
    InvalidScale(f32),
    #[error("size overflow computing {0}")]
    Overflow(&'static str),
}

pub type Result<T> = std::result::Result<T, QuantError>;

/// Smallest absmean / absmax the reference implementations clamp to (transformers `clamp(min=1e-5)`).
pub const SCALE_EPS: f32 = 1e-5;

/// Absmean ternarization of one whole tensor (transformers `WeightQuant`), returning the codes and
/// the multiplicative weight scale `max(mean|W|, 1e-5)`.
///
/// The mean is accumulated in f64 and rounded once to f32, i.e. (almost always) the correctly
/// rounded mean. torch's f32 cascade sum is not reproducible bit for bit (its blocking depends on
/// the SIMD width and thread count), but it is within an ulp of the exact mean: on the shared KJV
/// model all 42 tensors get exactly transformers' -1/0/+1 counts and the scale is within 1 ulp of
/// torch's (tests/reference_model.rs). A naive f32 running sum would drift by many ulps on
/// million-element tensors. The rest is f32 like torch: `s = 1/mean`,
/// `t = clamp(round_half_even(w * s), -1, 1)`.
pub fn ternarize_absmean(w: &[f32]) -> (Vec<i8>, f32) {
    let sum: f64 = w.iter().map(|&v| f64::from(v.abs())).sum();
    let mean = if w.is_empty() {
        0.0
    } else {
        (sum / w.len() as f64) as f32
    };
    let scale = mean.max(SCALE_EPS);
    let inv = 1.0f32 / scale;
    let codes = w
        .iter()
        // `as i8` of a NaN is 0, which is the only sane ternary value for a NaN weight.
        .map(|&v| (v * inv).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (codes, scale)
}

/// Absmax int8 quantization of one activation row (one token), transformers `ActQuant` /
/// bitnet.cpp `quantize_row_i8_s`. Writes `q` and returns `s_x = 127 / max(max|x|, 1e-5)`; the
/// dequantized value is `q / s_x`.
///
/// This is the definition every SIMD version must match bit for bit, including its NaN policy:
/// NaNs are ignored by the absmax, and a NaN product maps to -128 (`max(NaN, -128) = -128`,
/// which is also what `vmaxps(v, -128)` returns).
///
/// # Panics
/// If `q.len() != x.len()` (a caller bug, not a data problem).
pub fn quantize_activation_row(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(
        x.len(),
        q.len(),
        "quantize_activation_row: x and q lengths differ"
    );
    let amax = x.iter().fold(0.0f32, |m, &v| v.abs().max(m));
    let s = 127.0f32 / amax.max(SCALE_EPS);
    for (qi, &xi) in q.iter_mut().zip(x) {
        // Not `clamp`: it keeps NaN (-> 0 after `as`), while max/min give -128 like vmaxps.
        #[allow(clippy::manual_clamp)]
        let v = (xi * s).round_ties_even().max(-128.0).min(127.0);
        *qi = v as i8;
    }
    s
}

/// Checks that every code is in {-1, 0, 1}.
pub(crate) fn check_codes(codes: &[i8]) -> Result<()> {
    match codes.iter().position(|c| !(-1..=1).contains(c)) {
        Some(index) => Err(QuantError::InvalidCode {
            index,
            code: codes[index],
        }),
        None => Ok(()),
    }
}

/// The floats `codes[i] * scale` that llama.cpp's block quantizers would be given for a
/// BitNet tensor, after checking both inputs.
pub(crate) fn ternary_values(codes: &[i8], scale: f32) -> Result<Vec<f32>> {
    check_codes(codes)?;
    if !scale.is_finite() {
        return Err(QuantError::InvalidScale(scale));
    }
    Ok(codes.iter().map(|&t| f32::from(t) * scale).collect())
}

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(QuantError::Length {
            what,
            expected,
            got,
        })
    }
}

pub(crate) fn check_multiple(what: &'static str, n: usize, multiple: usize) -> Result<()> {
    if n.is_multiple_of(multiple) {
        Ok(())
    } else {
        Err(QuantError::NotMultiple { what, n, multiple })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternarize_small() {
        // mean|w| = 0.5, so w*2 rounds half-to-even: 0.25*2=0.5 -> 0, 0.75*2=1.5 -> 2 -> clamp 1.
        let (t, s) = ternarize_absmean(&[0.25, -0.75, 0.0, 1.0]);
        assert_eq!(s, 0.5);
        assert_eq!(t, vec![0, -1, 0, 1]);
        let (t, s) = ternarize_absmean(&[0.0; 5]);
        assert_eq!(s, SCALE_EPS);
        assert_eq!(t, vec![0; 5]);
        assert_eq!(ternarize_absmean(&[]), (vec![], SCALE_EPS));
    }

    #[test]
    fn activation_row_matches_definition() {
        let x = [1.0f32, -2.0, 0.5, 0.0];
        let mut q = [0i8; 4];
        let s = quantize_activation_row(&x, &mut q);
        assert_eq!(s, 127.0 / 2.0);
        assert_eq!(q, [64, -127, 32, 0]); // 63.5 -> 64 and 31.75 -> 32
                                          // s = 1 makes every x an exact product: .5 ties go to even, and the clamp is asymmetric.
        let x = [127.0f32, 0.5, 1.5, 2.5, -0.5, -126.5];
        let mut q = [0i8; 6];
        assert_eq!(quantize_activation_row(&x, &mut q), 1.0);
        assert_eq!(q, [127, 0, 2, 2, 0, -126]);
        let mut q = [1i8; 3];
        assert_eq!(
            quantize_activation_row(&[0.0; 3], &mut q),
            127.0 / SCALE_EPS
        );
        assert_eq!(q, [0; 3]);
    }
}
