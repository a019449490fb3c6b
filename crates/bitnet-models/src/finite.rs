//! Every float a model is built from is checked once, at load and before export: a NaN or
//! infinity in a norm, an embedding, a weight or a scale would make every logit NaN, and the
//! run would print empty or garbage text and exit 0. The error names the tensor and the first
//! bad element. The scans are `bitnet_quantization::finite`'s vectorized ones.

use crate::error::{ModelError, Result};
use bitnet_quantization::finite as scan;
use bitnet_quantization::{DenseMatrix, DenseType};
use half::{bf16, f16};

fn kind(x: f32) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "+infinity"
    } else {
        "-infinity"
    }
}

fn bad(name: &str, message: String) -> ModelError {
    ModelError::BadTensor {
        name: name.to_string(),
        message,
    }
}

/// Decoded values (norm vectors, dense weights before ternarization).
pub fn check_values(name: &str, v: &[f32]) -> Result<()> {
    match scan::first_non_finite(v) {
        None => Ok(()),
        Some(i) => Err(bad(
            name,
            format!("element {i} of {} is {}", v.len(), kind(v[i])),
        )),
    }
}

/// One scale (a ternary matrix's, or a `.scale` multiplier).
pub fn check_scale(name: &str, s: f32) -> Result<()> {
    if s.is_finite() {
        Ok(())
    } else {
        Err(bad(name, format!("scale is {}", kind(s))))
    }
}

/// Stored bytes of a dense type: every float of F32/F16/BF16, the f16 block scales of
/// Q8_0/Q6_K (their integer codes are always finite).
pub fn check_stored(name: &str, ty: DenseType, bytes: &[u8]) -> Result<()> {
    check_stored_part(name, ty, bytes, 0, bytes.len() / ty.block_bytes())
}

/// [`check_stored`] on a piece of a tensor that starts at its block `first` (an element, for
/// the float types) out of `total`, so that a tensor checked piece by piece names the same
/// element as one checked whole.
pub fn check_stored_part(
    name: &str,
    ty: DenseType,
    bytes: &[u8],
    first: usize,
    total: usize,
) -> Result<()> {
    let at = |i: usize, size: usize| bytes.get(i * size..i * size + size).unwrap_or_default();
    let found = match ty {
        DenseType::F32 => scan::first_non_finite_f32(bytes).map(|i| {
            let b = at(i, 4);
            let x = b.try_into().map(f32::from_le_bytes).unwrap_or(f32::NAN);
            (i, x)
        }),
        DenseType::F16 | DenseType::BF16 => {
            let first = if ty == DenseType::F16 {
                scan::first_non_finite_f16(bytes)
            } else {
                scan::first_non_finite_bf16(bytes)
            };
            first.map(|i| {
                let b: [u8; 2] = at(i, 2).try_into().unwrap_or([0xff, 0xff]);
                let x = if ty == DenseType::F16 {
                    f16::from_le_bytes(b).to_f32()
                } else {
                    bf16::from_le_bytes(b).to_f32()
                };
                (i, x)
            })
        }
        DenseType::Q8_0 | DenseType::Q6_K => {
            let (block, d_at) = if ty == DenseType::Q8_0 {
                (bitnet_quantization::q8_0::BLOCK_BYTES, 0)
            } else {
                (bitnet_quantization::q6_k::BLOCK_BYTES, 208)
            };
            return match scan::first_non_finite_block_scale(bytes, block, d_at) {
                None => Ok(()),
                Some(b) => {
                    let d = bytes
                        .get(b * block + d_at..b * block + d_at + 2)
                        .and_then(|x| x.try_into().ok())
                        .map_or(f32::NAN, |x| f16::from_le_bytes(x).to_f32());
                    Err(bad(
                        name,
                        format!("the scale of block {} is {}", first + b, kind(d)),
                    ))
                }
            };
        }
    };
    match found {
        None => Ok(()),
        Some((i, x)) => Err(bad(
            name,
            format!("element {} of {total} is {}", first + i, kind(x)),
        )),
    }
}

/// An embedding or head matrix, wherever its bytes live.
pub fn check_dense(name: &str, m: &DenseMatrix) -> Result<()> {
    check_stored(name, m.ty(), m.data())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_tensor_the_element_and_what_it_is() {
        let e = check_values("blk.0.attn_norm.weight", &[1.0, f32::NAN]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor 'blk.0.attn_norm.weight': element 1 of 2 is NaN"
        );
        let mut h = bitnet_quantization::float::f32_to_f16_bytes(&[0.5; 8]);
        h[10..12].copy_from_slice(&f16::NEG_INFINITY.to_le_bytes());
        let e = check_stored("token_embd.weight", DenseType::F16, &h).unwrap_err();
        assert!(e.to_string().contains("element 5 of 8 is -infinity"), "{e}");
        let b = bitnet_quantization::float::f32_to_bf16_bytes(&[f32::INFINITY]);
        let e = check_stored("lm_head.weight", DenseType::BF16, &b).unwrap_err();
        assert!(e.to_string().contains("element 0 of 1 is +infinity"), "{e}");
        let mut q = bitnet_quantization::q8_0::encode(&[1.0; 64]).unwrap();
        check_stored("q", DenseType::Q8_0, &q).unwrap();
        q[34..36].copy_from_slice(&f16::NAN.to_le_bytes());
        let e = check_stored("q", DenseType::Q8_0, &q).unwrap_err();
        assert!(e.to_string().contains("scale of block 1 is NaN"), "{e}");
        assert!(check_scale("x.scale", f32::INFINITY).is_err());
        check_scale("x.scale", 0.0).unwrap();
        check_stored("f", DenseType::F32, &f32::MAX.to_le_bytes()).unwrap();
    }
}
