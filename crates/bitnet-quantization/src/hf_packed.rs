//! Hugging Face transformers' packed BitNet weights (`integrations/bitnet.py` `pack_weights` /
//! `unpack_weights`), as in microsoft/bitnet-b1.58-2B-4T `model.safetensors`.
//!
//! A weight `[out, in]` is stored as uint8 `[out/4, in]`: with `R = out/4`, byte `P[r, k]` holds
//! rows `r, R+r, 2R+r, 3R+r` of column `k` in bits 1:0, 3:2, 5:4, 7:6, code = t + 1.
//! So `W[i*R + r, k] = ((P[r, k] >> 2i) & 3) - 1`. Note the interleave runs along the OUTPUT
//! dimension, unlike I2_S, so converting between the two always goes through dense codes.

use crate::{check_codes, check_len, check_multiple, QuantError, Result};

fn packed_len(out_features: usize, in_features: usize) -> Result<usize> {
    check_multiple("hf packed out_features", out_features, 4)?;
    (out_features / 4)
        .checked_mul(in_features)
        .ok_or(QuantError::Overflow("hf packed size"))
}

/// Unpacks to row-major `[out_features, in_features]` ternary codes. Rejects code 3 (transformers
/// would turn it into +2, mainline llama.cpp into 0; neither is a ternary weight).
pub fn unpack(packed: &[u8], out_features: usize, in_features: usize) -> Result<Vec<i8>> {
    let len = packed_len(out_features, in_features)?;
    check_len("hf packed weight bytes", len, packed.len())?;
    let r_rows = out_features / 4;
    let mut w = vec![0i8; len * 4];
    for (r, prow) in packed
        .chunks_exact(in_features.max(1))
        .enumerate()
        .take(r_rows)
    {
        for i in 0..4 {
            let dst = &mut w[(i * r_rows + r) * in_features..][..in_features];
            for (k, (d, &p)) in dst.iter_mut().zip(prow).enumerate() {
                let code = (p >> (2 * i)) & 3;
                if code == 3 {
                    return Err(QuantError::InvalidPackedCode {
                        index: (i * r_rows + r) * in_features + k,
                    });
                }
                *d = code as i8 - 1;
            }
        }
    }
    Ok(w)
}

/// Packs row-major `[out_features, in_features]` ternary codes (inverse of [`unpack`]).
pub fn pack(codes: &[i8], out_features: usize, in_features: usize) -> Result<Vec<u8>> {
    let len = packed_len(out_features, in_features)?;
    check_len("hf packed codes", len * 4, codes.len())?;
    check_codes(codes)?;
    let r_rows = out_features / 4;
    let mut p = vec![0u8; len];
    for i in 0..4 {
        let src = &codes[i * r_rows * in_features..][..r_rows * in_features];
        for (d, &t) in p.iter_mut().zip(src) {
            *d |= ((t + 1) as u8) << (2 * i);
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_matches_formula() {
        // out = 8 (R = 2), in = 3.
        let packed: Vec<u8> = vec![
            0b10_01_00_10,
            0x55,
            0b00_00_00_00,
            0b01_10_01_00,
            0x55,
            0x5a,
        ];
        let w = unpack(&packed, 8, 3).unwrap();
        let (rr, k) = (2, 3);
        for i in 0..4 {
            for r in 0..rr {
                for c in 0..k {
                    let expect = ((packed[r * k + c] >> (2 * i)) & 3) as i8 - 1;
                    assert_eq!(w[(i * rr + r) * k + c], expect, "i={i} r={r} c={c}");
                }
            }
        }
        assert_eq!(w[0], 1); // bits 1:0 of P[0,0] = 2 -> row 0
        assert_eq!(w[6 * 3], 1); // bits 7:6 of P[0,0] = 2 -> row 3R+0 = 6
        assert_eq!(pack(&w, 8, 3).unwrap(), packed);
    }

    #[test]
    fn rejects_bad_shapes_and_codes() {
        assert!(matches!(
            unpack(&[0; 3], 6, 1),
            Err(QuantError::NotMultiple { .. })
        ));
        assert!(matches!(
            unpack(&[0; 3], 4, 2),
            Err(QuantError::Length { .. })
        ));
        assert_eq!(
            unpack(&[0b0000_1100], 4, 1),
            Err(QuantError::InvalidPackedCode { index: 1 })
        );
        assert!(matches!(
            pack(&[2, 0, 0, 0], 4, 1),
            Err(QuantError::InvalidCode { index: 0, code: 2 })
        ));
        assert_eq!(unpack(&[], 0, 5).unwrap(), Vec::<i8>::new());
    }
}
