//! llama.cpp `TQ2_0` (ggml type 35): 256-element super-blocks of 2-bit codes plus an f16 scale.
//!
//! Byte-exact port of ggml-quants.c `quantize_row_tq2_0_ref` / `dequantize_row_tq2_0`. Inside
//! each 128-element half (32 bytes), byte `m` holds elements `m, m+32, m+64, m+96` in bits
//! 1:0, 3:2, 5:4, 7:6 (LSB-first, the reverse of I2_S). `d` is the block absmax.

use crate::{check_len, check_multiple, QuantError, Result};
use half::f16;

/// ggml `QK_K`: elements per super-block.
pub const QK_K: usize = 256;

/// ggml `block_tq2_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockTq2_0 {
    pub qs: [u8; QK_K / 4],
    pub d: f16,
}

/// Bytes per block (ggml: `sizeof(ggml_half) + QK_K/4`).
pub const BLOCK_BYTES: usize = 66;
const _: () = assert!(std::mem::size_of::<BlockTq2_0>() == BLOCK_BYTES);

impl BlockTq2_0 {
    /// The on-disk bytes (little-endian `d` last).
    pub fn to_bytes(&self) -> [u8; BLOCK_BYTES] {
        let mut out = [0u8; BLOCK_BYTES];
        out[..64].copy_from_slice(&self.qs);
        out[64..].copy_from_slice(&self.d.to_le_bytes());
        out
    }

    /// Parses one block from exactly 66 bytes.
    pub fn from_bytes(b: &[u8; BLOCK_BYTES]) -> Self {
        let mut qs = [0u8; 64];
        qs.copy_from_slice(&b[..64]);
        BlockTq2_0 {
            qs,
            d: f16::from_le_bytes([b[64], b[65]]),
        }
    }
}

/// Encoded size of `n` elements (`n % 256 == 0`).
pub fn nbytes(n: usize) -> usize {
    n / QK_K * BLOCK_BYTES
}

/// Port of `quantize_row_tq2_0_ref` for arbitrary f32 input: `d = absmax`, code =
/// `lroundf(x / d) + 1` (round half away from zero, like C's `lroundf`).
pub fn quantize_ref(x: &[f32]) -> Result<Vec<u8>> {
    check_multiple("tq2_0 element count", x.len(), QK_K)?;
    let mut out = Vec::with_capacity(nbytes(x.len()));
    for blk in x.chunks_exact(QK_K) {
        // C `MAX(amax, fabsf(v))`, kept verbatim so even NaN inputs behave the same.
        let amax = blk
            .iter()
            .fold(0.0f32, |m, &v| if m > v.abs() { m } else { v.abs() });
        let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
        let mut b = BlockTq2_0 {
            qs: [0; 64],
            d: f16::from_f32(amax),
        };
        for (half_i, xs) in blk.chunks_exact(128).enumerate() {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    let xi = (xs[m + n * 32] * id).round() as i32 + 1;
                    q += ((xi & 3) as u8) << (2 * n);
                }
                b.qs[half_i * 32 + m] = q;
            }
        }
        out.extend_from_slice(&b.to_bytes());
    }
    Ok(out)
}

/// Encodes ternary codes with one scale exactly as llama.cpp would encode the floats
/// `codes[i] * scale` (which is how its converter feeds BitNet weights): blocks with a nonzero
/// weight get `d = f16(|scale|)`, all-zero blocks get `d = 0`. A negative scale flips the codes,
/// again as llama.cpp would.
pub fn encode(codes: &[i8], scale: f32) -> Result<Vec<u8>> {
    quantize_ref(&crate::ternary_values(codes, scale)?)
}

/// Decodes `n` codes and the per-block scales `d` (as f32). Value = code * d[i / 256].
/// Rejects the unused 2-bit code 3.
pub fn decode(bytes: &[u8], n: usize) -> Result<(Vec<i8>, Vec<f32>)> {
    check_multiple("tq2_0 element count", n, QK_K)?;
    check_len("tq2_0 tensor bytes", nbytes(n), bytes.len())?;
    let mut codes = Vec::with_capacity(n);
    let mut ds = Vec::with_capacity(n / QK_K);
    for (bi, raw) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
        ds.push(f16::from_le_bytes([raw[64], raw[65]]).to_f32());
        // Output order of dequantize_row_tq2_0: half j, shift l, byte m.
        for j in (0..64).step_by(32) {
            for l in 0..4 {
                for m in 0..32 {
                    let code = (raw[j + m] >> (2 * l)) & 3;
                    if code == 3 {
                        return Err(QuantError::InvalidPackedCode {
                            index: bi * QK_K + j * 4 + l * 32 + m,
                        });
                    }
                    codes.push(code as i8 - 1);
                }
            }
        }
    }
    Ok((codes, ds))
}
