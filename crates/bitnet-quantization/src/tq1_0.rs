//! llama.cpp `TQ1_0` (ggml type 34): 256-element super-blocks of base-3 packed trits (1.6875 bpw).
//!
//! Byte-exact port of ggml-quants.c `quantize_row_tq1_0_ref` / `dequantize_row_tq1_0`:
//! - `qs[0..32]`: byte `m` holds elements `m + 32n` (n = 0..5) of elements 0..160,
//! - `qs[32..48]`: byte `32 + m` holds elements `160 + m + 16n` (n = 0..5),
//! - `qh[0..4]`: byte `j` holds elements `240 + j + 4m` (m = 0..4), shifted one trit up,
//!
//! each as a base-3 number (first element most significant) stored as `ceil(q * 256 / 243)`, so
//! that trit `n` is recovered by `((u8)(byte * 3^n) * 3) >> 8` without a division.

use crate::{check_len, check_multiple, Result};
use half::f16;

/// ggml `QK_K`: elements per super-block.
pub const QK_K: usize = 256;

/// ggml `block_tq1_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockTq1_0 {
    pub qs: [u8; (QK_K - 4 * QK_K / 64) / 5],
    pub qh: [u8; QK_K / 64],
    pub d: f16,
}

/// Bytes per block (ggml: `sizeof(ggml_half) + QK_K/64 + (QK_K - 4*QK_K/64)/5`).
pub const BLOCK_BYTES: usize = 54;
const _: () = assert!(std::mem::size_of::<BlockTq1_0>() == BLOCK_BYTES);

const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

impl BlockTq1_0 {
    /// The on-disk bytes (little-endian `d` last).
    pub fn to_bytes(&self) -> [u8; BLOCK_BYTES] {
        let mut out = [0u8; BLOCK_BYTES];
        out[..48].copy_from_slice(&self.qs);
        out[48..52].copy_from_slice(&self.qh);
        out[52..].copy_from_slice(&self.d.to_le_bytes());
        out
    }

    /// Parses one block from exactly 54 bytes.
    pub fn from_bytes(b: &[u8; BLOCK_BYTES]) -> Self {
        let mut qs = [0u8; 48];
        qs.copy_from_slice(&b[..48]);
        let qh = [b[48], b[49], b[50], b[51]];
        BlockTq1_0 {
            qs,
            qh,
            d: f16::from_le_bytes([b[52], b[53]]),
        }
    }
}

/// Encoded size of `n` elements (`n % 256 == 0`).
pub fn nbytes(n: usize) -> usize {
    n / QK_K * BLOCK_BYTES
}

/// `ceil(q * 256 / 243)` in the u16 arithmetic of the reference.
fn scale_up(q: u8) -> u8 {
    (u16::from(q) * 256).div_ceil(243) as u8
}

/// The trit at position `n` (0 = most significant) of a stored byte.
fn trit(byte: u8, n: usize) -> u8 {
    let q = byte.wrapping_mul(POW3[n]);
    ((u16::from(q) * 3) >> 8) as u8
}

/// Port of `quantize_row_tq1_0_ref` for arbitrary f32 input (`d = absmax`, trit =
/// `lroundf(x / d) + 1`, round half away from zero).
pub fn quantize_ref(x: &[f32]) -> Result<Vec<u8>> {
    check_multiple("tq1_0 element count", x.len(), QK_K)?;
    let mut out = Vec::with_capacity(nbytes(x.len()));
    for blk in x.chunks_exact(QK_K) {
        // C `MAX(amax, fabsf(v))`, kept verbatim so even NaN inputs behave the same.
        let amax = blk
            .iter()
            .fold(0.0f32, |m, &v| if m > v.abs() { m } else { v.abs() });
        let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
        // |v * id| <= 1, so this is 0..=2 (f32::round is lroundf's half-away-from-zero).
        let code = |v: f32| ((v * id).round() as i32 + 1) as u8;
        let mut b = BlockTq1_0 {
            qs: [0; 48],
            qh: [0; 4],
            d: f16::from_f32(amax),
        };
        // 5 elements per byte along 32 bytes (elements 0..160).
        for m in 0..32 {
            let q = (0..5).fold(0u8, |q, n| {
                q.wrapping_mul(3).wrapping_add(code(blk[m + n * 32]))
            });
            b.qs[m] = scale_up(q);
        }
        // 5 elements per byte along 16 bytes (elements 160..240).
        let xs = &blk[160..240];
        for m in 0..16 {
            let q = (0..5).fold(0u8, |q, n| {
                q.wrapping_mul(3).wrapping_add(code(xs[m + n * 16]))
            });
            b.qs[32 + m] = scale_up(q);
        }
        // 4 elements per byte (elements 240..256), then one more *3 so the first trit is the
        // most significant of five.
        let xs = &blk[240..256];
        for j in 0..4 {
            let q = (0..4).fold(0u8, |q, m| {
                q.wrapping_mul(3).wrapping_add(code(xs[j + m * 4]))
            });
            b.qh[j] = scale_up(q.wrapping_mul(3));
        }
        out.extend_from_slice(&b.to_bytes());
    }
    Ok(out)
}

/// Encodes ternary codes with one scale exactly as llama.cpp would encode the floats
/// `codes[i] * scale`: blocks with a nonzero weight get `d = f16(|scale|)`, all-zero blocks
/// `d = 0`; a negative scale flips the codes.
pub fn encode(codes: &[i8], scale: f32) -> Result<Vec<u8>> {
    quantize_ref(&crate::ternary_values(codes, scale)?)
}

/// Decodes `n` codes and the per-block scales `d` (as f32). Value = code * d[i / 256].
/// Every byte decodes to trits in 0..=2, so there is nothing to reject beyond the length.
pub fn decode(bytes: &[u8], n: usize) -> Result<(Vec<i8>, Vec<f32>)> {
    check_multiple("tq1_0 element count", n, QK_K)?;
    check_len("tq1_0 tensor bytes", nbytes(n), bytes.len())?;
    let mut codes = Vec::with_capacity(n);
    let mut ds = Vec::with_capacity(n / QK_K);
    for raw in bytes.chunks_exact(BLOCK_BYTES) {
        ds.push(f16::from_le_bytes([raw[52], raw[53]]).to_f32());
        // Output order of dequantize_row_tq1_0: trit n outer, byte m inner, per byte group.
        for n in 0..5 {
            codes.extend(raw[..32].iter().map(|&b| trit(b, n) as i8 - 1));
        }
        for n in 0..5 {
            codes.extend(raw[32..48].iter().map(|&b| trit(b, n) as i8 - 1));
        }
        for n in 0..4 {
            codes.extend(raw[48..52].iter().map(|&b| trit(b, n) as i8 - 1));
        }
    }
    Ok((codes, ds))
}
