//! bitnet.cpp `I2_S` (ggml type 36): 2-bit ternary codes with ONE per-tensor f32 scale.
//!
//! Layout (microsoft/BitNet `quantize_i2_s`, x86 and the official GGUF files): the tensor is
//! flattened row-major and cut into blocks of 128 elements -> 32 bytes. Element `j` of a block
//! goes to byte `j % 32` at bit shift `6 - 2 * (j / 32)` (MSB-first), code = t + 1. A partial last
//! block is padded with code 1 (= 0). Then comes a 32-byte tail whose first 4 bytes are the f32
//! scale; official files (convert-ms-to-gguf-bitnet.py, `np.tile(i2_scale, 8)`) repeat it 8 times
//! and so does [`encode`]. The scale is multiplicative: w = (code - 1) * scale.

use crate::{QuantError, Result};

/// Elements per packed block.
pub const BLOCK: usize = 128;
/// Bytes per packed block.
pub const BLOCK_BYTES: usize = 32;
/// Bytes after the packed codes that hold the scale.
pub const TAIL_BYTES: usize = 32;

/// Bytes of the packed codes alone (without the scale tail).
pub fn packed_len(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK_BYTES
}

/// Total encoded size: packed codes plus the 32-byte scale tail. Equals ggml's `n/4 + 32` when
/// `n % 128 == 0`, which real I2_S tensors always satisfy (the x86 kernel needs K % 128 == 0).
pub fn nbytes(n: usize) -> usize {
    packed_len(n) + TAIL_BYTES
}

/// Packs codes into `out` (`packed_len(codes.len())` bytes) in the 128/32 MSB-first layout,
/// padding the last block with code 1. Codes outside {-1,0,1} are clamped, as the reference
/// quantizer's `clamp(-1, 1)` would.
///
/// # Panics
/// If `out.len() != packed_len(codes.len())`.
pub fn pack_into(codes: &[i8], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        packed_len(codes.len()),
        "i2s::pack_into: output length"
    );
    for (blk, dst) in codes.chunks(BLOCK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let mut c = [1u8; BLOCK];
        for (ci, &t) in c.iter_mut().zip(blk) {
            *ci = (t.clamp(-1, 1) + 1) as u8;
        }
        for (b, byte) in dst.iter_mut().enumerate() {
            *byte = (c[b] << 6) | (c[b + 32] << 4) | (c[b + 64] << 2) | c[b + 96];
        }
    }
}

/// Unpacks `out.len()` codes from `packed` (at least `packed_len(out.len())` bytes).
/// Rejects the unused code 3 instead of guessing a value for it.
pub fn unpack_into(packed: &[u8], out: &mut [i8]) -> Result<()> {
    let need = packed_len(out.len());
    if packed.len() < need {
        return Err(QuantError::Length {
            what: "i2s packed codes",
            expected: need,
            got: packed.len(),
        });
    }
    for (bi, (blk, src)) in out
        .chunks_mut(BLOCK)
        .zip(packed.chunks_exact(BLOCK_BYTES))
        .enumerate()
    {
        for (j, t) in blk.iter_mut().enumerate() {
            let code = (src[j % 32] >> (6 - 2 * (j / 32))) & 3;
            if code == 3 {
                return Err(QuantError::InvalidPackedCode {
                    index: bi * BLOCK + j,
                });
            }
            *t = code as i8 - 1;
        }
    }
    Ok(())
}

/// Encodes a whole tensor: packed codes followed by the scale replicated 8x in the 32-byte tail.
pub fn encode(codes: &[i8], scale: f32) -> Vec<u8> {
    let p = packed_len(codes.len());
    let mut out = vec![0u8; p + TAIL_BYTES];
    pack_into(codes, &mut out[..p]);
    for chunk in out[p..].chunks_exact_mut(4) {
        chunk.copy_from_slice(&scale.to_le_bytes());
    }
    out
}

/// Reads the per-tensor scale: the first f32 of the tail after `packed_len(n)` bytes. The one
/// reader of the scale's place: bitnet.cpp puts it at `n / 4` (its `ggml_nbytes`), the same
/// offset whenever `n % 128 == 0`, and a GGUF I2_S tensor of any other length has no layout
/// both agree on (the GGUF loader rejects it).
pub fn scale(bytes: &[u8], n: usize) -> Result<f32> {
    let p = packed_len(n);
    let raw = bytes.get(p..p + 4).ok_or(QuantError::Length {
        what: "i2s tensor (packed codes + scale)",
        expected: p + 4,
        got: bytes.len(),
    })?;
    Ok(f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
}

/// Decodes `n` codes and the scale. Only the first float of the tail is read (some converters
/// leave the other 28 bytes zero), so anything at least `packed_len(n) + 4` bytes long is accepted.
pub fn decode(bytes: &[u8], n: usize) -> Result<(Vec<i8>, f32)> {
    let s = scale(bytes, n)?;
    let mut codes = vec![0i8; n];
    unpack_into(bytes, &mut codes)?;
    Ok((codes, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_msb_first_within_32_byte_groups() {
        let mut codes = vec![0i8; 128];
        codes[0] = 1; // byte 0 bits 7:6 -> code 2
        codes[32] = -1; // byte 0 bits 5:4 -> code 0
        codes[127] = 1; // byte 31 bits 1:0 -> code 2
        let b = encode(&codes, 0.5);
        assert_eq!(b.len(), 64);
        assert_eq!(b[0], 0b10_00_01_01);
        assert_eq!(b[31], 0b01_01_01_10);
        assert_eq!(b[1], 0x55);
        assert_eq!(&b[32..36], &0.5f32.to_le_bytes());
        assert_eq!(&b[60..64], &0.5f32.to_le_bytes());
        assert_eq!(decode(&b, 128).unwrap(), (codes, 0.5));
    }

    #[test]
    fn ragged_tail_is_padded_with_zero_code() {
        let b = encode(&[1, -1, 0], 2.0);
        assert_eq!(b.len(), nbytes(3));
        assert_eq!(b[0], 0b10_01_01_01);
        assert_eq!(b[1], 0b00_01_01_01);
        assert!(b[3..32].iter().all(|&x| x == 0x55));
        assert_eq!(decode(&b, 3).unwrap(), (vec![1, -1, 0], 2.0));
    }

    #[test]
    fn rejects_code_3_and_short_input() {
        let mut b = encode(&[0; 128], 1.0);
        b[5] |= 0b11 << 4;
        assert_eq!(
            decode(&b, 128),
            Err(QuantError::InvalidPackedCode { index: 37 })
        );
        assert!(matches!(
            decode(&b[..35], 128),
            Err(QuantError::Length { .. })
        ));
        assert!(decode(&b[..36], 128).is_err()); // code 3 still there
    }
}
