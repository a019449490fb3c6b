//! ggml `Q8_0` (type 8): blocks of 32 int8 values with one f16 scale, `d` FIRST.
//! Port of ggml-quants.c `quantize_row_q8_0_ref` / `dequantize_row_q8_0`; useful for an 8-bit
//! LM head and for reading files that store the embedding as Q8_0.

use crate::{check_len, check_multiple, Result};
use half::f16;

/// ggml `QK8_0`.
pub const QK8_0: usize = 32;

/// ggml `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}

/// Bytes per block.
pub const BLOCK_BYTES: usize = 34;
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == BLOCK_BYTES);

/// Encoded size of `n` elements (`n % 32 == 0`).
pub fn nbytes(n: usize) -> usize {
    n / QK8_0 * BLOCK_BYTES
}

/// `d = absmax / 127`, `q = roundf(x / d)` (half away from zero, like C `roundf`).
pub fn encode(x: &[f32]) -> Result<Vec<u8>> {
    check_multiple("q8_0 element count", x.len(), QK8_0)?;
    let mut out = Vec::with_capacity(nbytes(x.len()));
    for blk in x.chunks_exact(QK8_0) {
        let amax = blk
            .iter()
            .fold(0.0f32, |m, &v| if m > v.abs() { m } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(blk.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    Ok(out)
}

/// Dequantizes `n` values: `q * d`.
pub fn decode(bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    check_multiple("q8_0 element count", n, QK8_0)?;
    check_len("q8_0 tensor bytes", nbytes(n), bytes.len())?;
    let mut out = Vec::with_capacity(n);
    for raw in bytes.chunks_exact(BLOCK_BYTES) {
        let d = f16::from_le_bytes([raw[0], raw[1]]).to_f32();
        out.extend(raw[2..].iter().map(|&q| f32::from(q as i8) * d));
    }
    Ok(out)
}

/// Dequantizes one row of whole blocks into `out` (`out.len() == row.len() / 34 * 32`):
/// `q * d`, as [`decode`] does.
pub fn decode_row(row: &[u8], out: &mut [f32]) {
    for (blk, ob) in row
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK8_0))
    {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        for (o, &q) in ob.iter_mut().zip(&blk[2..]) {
            *o = f32::from(q as i8) * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_layout_and_round_trip() {
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = -63.5; // id = 1 exactly: -63.5 rounds away from zero to -64
        x[2] = 0.5;
        let b = encode(&x).unwrap();
        assert_eq!(b.len(), 34);
        assert_eq!(&b[..2], &f16::from_f32(1.0).to_le_bytes());
        assert_eq!(b[2] as i8, 127);
        assert_eq!(b[3] as i8, -64);
        assert_eq!(b[4] as i8, 1);
        let y = decode(&b, 32).unwrap();
        assert_eq!(&y[..3], &[127.0, -64.0, 1.0]);
        assert!(encode(&[0.0; 31]).is_err());
        assert!(decode(&b[..33], 32).is_err());
    }
}
