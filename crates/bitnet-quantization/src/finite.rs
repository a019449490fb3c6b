//! Finding NaN and infinity in stored floats, once per tensor at load and before writing.
//!
//! A non-finite weight, norm or scale does not fail loudly later: it turns every logit into
//! NaN, and sampling then yields empty or garbage text with exit code 0. Checking costs one
//! read of each float tensor, so the scan is written to vectorize: a float is non-finite
//! exactly when its bits without the sign reach the all-ones exponent, so each chunk is
//! reduced with an unsigned maximum (no branch per element), and only a chunk that holds
//! one is searched for the index.

/// Elements reduced per step before the early-exit test.
const CHUNK: usize = 4096;

/// Bits of one stored float type.
trait Bits: Copy + Ord + Default + bytemuck::Pod {
    /// Everything but the sign bit.
    const ABS_MASK: Self;
    fn abs_bits(self) -> Self;
}

impl Bits for u16 {
    const ABS_MASK: u16 = 0x7fff;
    fn abs_bits(self) -> u16 {
        u16::from_le(self) & Self::ABS_MASK
    }
}

impl Bits for u32 {
    const ABS_MASK: u32 = 0x7fff_ffff;
    fn abs_bits(self) -> u32 {
        u32::from_le(self) & Self::ABS_MASK
    }
}

/// Index of the first element of `bytes` (little-endian `T`s) whose bits without the sign
/// are at least `limit`.
fn first_at_least<T: Bits>(bytes: &[u8], limit: T) -> Option<usize> {
    let size = std::mem::size_of::<T>();
    // Unaligned data (safetensors does not align tensors) is copied a chunk at a time.
    let mut buf: Vec<T> = Vec::new();
    for (c, raw) in bytes.chunks(CHUNK * size).enumerate() {
        let raw = &raw[..raw.len() / size * size];
        let chunk: &[T] = match bytemuck::try_cast_slice(raw) {
            Ok(aligned) => aligned,
            Err(_) => {
                buf.resize(raw.len() / size, T::default());
                bytemuck::cast_slice_mut(&mut buf).copy_from_slice(raw);
                &buf
            }
        };
        let max = chunk
            .iter()
            .map(|&x| x.abs_bits())
            .fold(T::default(), Ord::max);
        if max >= limit {
            let at = chunk.iter().position(|&x| x.abs_bits() >= limit);
            return at.map(|at| c * CHUNK + at);
        }
    }
    None
}

/// Index of the first NaN or infinity among little-endian f32 bytes.
pub fn first_non_finite_f32(bytes: &[u8]) -> Option<usize> {
    first_at_least::<u32>(bytes, 0x7f80_0000)
}

/// Index of the first NaN or infinity among little-endian IEEE f16 bytes.
pub fn first_non_finite_f16(bytes: &[u8]) -> Option<usize> {
    first_at_least::<u16>(bytes, 0x7c00)
}

/// Index of the first NaN or infinity among little-endian bf16 bytes.
pub fn first_non_finite_bf16(bytes: &[u8]) -> Option<usize> {
    first_at_least::<u16>(bytes, 0x7f80)
}

/// Index of the first non-finite value of a decoded tensor.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    first_non_finite_f32(bytemuck::cast_slice(values))
}

/// Index of the first block whose f16 scale, `at` bytes into each `block_bytes`-byte block, is
/// NaN or infinite (Q8_0: `d` first, at 0 of 34; Q6_K: `d` last, at 208 of 210). The
/// integer codes of such formats are always finite.
pub fn first_non_finite_block_scale(bytes: &[u8], block_bytes: usize, at: usize) -> Option<usize> {
    if block_bytes < at + 2 {
        return None;
    }
    bytes
        .chunks_exact(block_bytes)
        .position(|b| u16::from_le_bytes([b[at], b[at + 1]]) & 0x7fff >= 0x7c00)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn finds_the_first_nan_or_infinity_at_any_position_and_alignment() {
        for n in [0usize, 1, 7, CHUNK - 1, CHUNK, 3 * CHUNK + 5] {
            let v: Vec<f32> = (0..n).map(|i| (i as f32 - 100.0) * 1e30).collect();
            // Large finite values, the largest finite, and negative zero are all fine.
            let mut v = v;
            if n > 2 {
                v[0] = f32::MAX;
                v[1] = -0.0;
            }
            for shift in 0..4 {
                // Unaligned starts (safetensors does not align tensor data).
                let mut bytes = vec![0u8; shift];
                bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                assert_eq!(first_non_finite_f32(&bytes[shift..]), None, "n {n}");
                let h: Vec<u8> = std::iter::repeat_n(0u8, shift)
                    .chain(
                        v.iter()
                            .flat_map(|&x| f16::from_f32(x.clamp(-6e4, 6e4)).to_le_bytes()),
                    )
                    .collect();
                assert_eq!(first_non_finite_f16(&h[shift..]), None, "n {n}");
                for bad in [n / 2, n.saturating_sub(1)].into_iter().filter(|_| n > 0) {
                    for (x, x16, xb) in [
                        (f32::NAN, f16::NAN, bf16::NAN),
                        (f32::INFINITY, f16::INFINITY, bf16::INFINITY),
                        (f32::NEG_INFINITY, f16::NEG_INFINITY, bf16::NEG_INFINITY),
                    ] {
                        let mut w = v.clone();
                        w[bad] = x;
                        if bad > 0 {
                            // A later one is not reported first.
                            w[n - 1] = x;
                        }
                        let mut b = vec![0u8; shift];
                        b.extend(w.iter().flat_map(|x| x.to_le_bytes()));
                        assert_eq!(
                            first_non_finite_f32(&b[shift..]),
                            Some(bad),
                            "n {n} shift {shift}"
                        );
                        assert_eq!(first_non_finite(&w), Some(bad));
                        let mut h16: Vec<u8> = vec![0u8; shift];
                        let mut hb: Vec<u8> = vec![0u8; shift];
                        for (i, &y) in w.iter().enumerate() {
                            let (a, c) = if i == bad || (bad > 0 && i == n - 1) {
                                (x16, xb)
                            } else {
                                (
                                    f16::from_f32(y.clamp(-6e4, 6e4)),
                                    bf16::from_f32(y.clamp(-3e38, 3e38)),
                                )
                            };
                            h16.extend(a.to_le_bytes());
                            hb.extend(c.to_le_bytes());
                        }
                        assert_eq!(first_non_finite_f16(&h16[shift..]), Some(bad));
                        assert_eq!(first_non_finite_bf16(&hb[shift..]), Some(bad));
                    }
                }
            }
        }
    }

    #[test]
    fn block_scales() {
        let q8 = crate::q8_0::encode(&[1.0; 64]).unwrap();
        assert_eq!(first_non_finite_block_scale(&q8, 34, 0), None);
        let mut bad = q8.clone();
        bad[34..36].copy_from_slice(&f16::NAN.to_le_bytes());
        assert_eq!(first_non_finite_block_scale(&bad, 34, 0), Some(1));
        let q6 = crate::q6_k::encode(&[0.5; 256]).unwrap();
        assert_eq!(first_non_finite_block_scale(&q6, 210, 208), None);
        let mut bad = q6.clone();
        bad[208..210].copy_from_slice(&f16::INFINITY.to_le_bytes());
        assert_eq!(first_non_finite_block_scale(&bad, 210, 208), Some(0));
    }
}
