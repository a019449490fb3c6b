//! Little-endian F16 / BF16 <-> f32 conversions for tensors read from GGUF / safetensors bytes.
//! Load-time helpers; the matmul kernels convert on the fly instead.
//!
//! The byte slices may be unaligned (GGUF only aligns tensor starts to 32, safetensors not at
//! all), so these read bytes rather than casting to `&[f16]`.

use half::{bf16, f16};

/// # Panics
/// If `bytes.len() != 2 * out.len()`.
pub fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), 2 * out.len(), "f16_to_f32: length mismatch");
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// # Panics
/// If `bytes.len() != 2 * out.len()`.
pub fn bf16_to_f32(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), 2 * out.len(), "bf16_to_f32: length mismatch");
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// Round-to-nearest-even f32 -> f16 bytes (what ggml and torch do).
pub fn f32_to_f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Round-to-nearest-even f32 -> bf16 bytes (what torch's `.to(bfloat16)` does).
pub fn f32_to_bf16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let mut out = [0.0f32; 3];
        f16_to_f32(&[0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b], &mut out);
        assert_eq!(out, [1.0, -2.0, 65504.0]);
        bf16_to_f32(&[0x80, 0x3f, 0x00, 0xc0, 0x49, 0x40], &mut out);
        assert_eq!(out, [1.0, -2.0, 3.140625]);
        assert_eq!(f32_to_f16_bytes(&[1.0, -2.0]), vec![0x00, 0x3c, 0x00, 0xc0]);
        // Exact ties round to even: 1 + 2^-8 -> 1.0, 1 + 3 * 2^-8 -> 1 + 2^-6.
        assert_eq!(
            f32_to_bf16_bytes(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]),
            vec![0x80, 0x3f, 0x82, 0x3f]
        );
    }
}
