//! ggml `Q6_K` (type 14): super-blocks of 256 weights in 6 bits, 16 sub-blocks of 16 with an int8
//! scale each and one f16 super-block scale, 210 bytes (6.5625 bits per weight). llama.cpp's
//! default type for the output / tied embedding tensor of its 4- and 5-bit k-quant mixes.
//!
//! Port of ggml-quants.c `quantize_row_q6_K_ref` (with `make_qx_quants(16, 32, x, L, 1, NULL)`)
//! and `dequantize_row_q6_K`, operation for operation in f32, so the bytes equal what llama.cpp
//! writes when its C is compiled without floating-point contraction (plain `-O2` on x86-64, whose
//! baseline has no FMA). A `-march=native` build lets GCC fuse `iscale * x + 12582912.f` inside
//! `nearest_int` into one FMA, which can round a near-tie the other way: files quantized that way
//! may differ from ours in a rare 6-bit code, which only matters for byte-for-byte comparisons.
//!
//! [`quantize_q8_k_block`] is ggml's `quantize_row_q8_K_ref` for one block: the activation
//! format llama.cpp dots a Q6_K weight with (on x86 `quantize_row_q8_K` is that reference).

use crate::{check_len, check_multiple, Result};
use half::f16;

/// ggml `QK_K`: weights per super-block.
pub const QK_K: usize = 256;
/// Bytes per block: `ql[128]`, `qh[64]`, `scales[16]`, then `d` (f16).
pub const BLOCK_BYTES: usize = 210;

/// ggml `block_q6_K`, in file order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    /// Low 4 bits of the codes: byte `l` of half `h` (64 bytes each) holds element
    /// `128h + l` (`l < 32`: low nibble; elements `128h + 32 + l` for `ql[64h + 32 + l]`) and
    /// element `+64` in the high nibble.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits: byte `l` of half `h` holds those of elements `128h + l + 32k` at bits `2k`.
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales, element `e` uses `scales[e / 16]`.
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == BLOCK_BYTES);

/// Offsets of the fields in a block's bytes (`ql` at 0).
pub const QH: usize = 128;
pub const SCALES: usize = 192;
pub const D: usize = 208;

/// ggml `GROUP_MAX_EPS`: a group whose largest magnitude is below this counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Encoded size of `n` elements (`n % 256 == 0`).
pub fn nbytes(n: usize) -> usize {
    n / QK_K * BLOCK_BYTES
}

/// ggml's `nearest_int`: adding 1.5 * 2^23 puts the rounded integer (ties to even) in the low
/// mantissa bits. Exact for |x| <= 2^22; outside that (or for NaN) it returns ggml's
/// bit-trick garbage rather than panicking, which is also what ggml's release build does.
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// The value of largest magnitude (the first one on ties, sign kept) and that magnitude, as
/// ggml's k-quant and Q8_K quantizers pick them.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// `make_qx_quants(16, 32, x, L, rmse_type = 1, NULL)`: the scale of one 16-weight sub-block
/// that maximises `(Σ w x l)² / Σ w l²` with weights `w = x²`, over 19 candidate inverse
/// scales `-(32 + 0.1 is) / max` (`is = -9..=9`), and its codes `L = l + 32` in `0..64`.
/// An all-zero sub-block gives scale 0 and codes 0 (not 32), as in ggml.
fn make_qx_quants(x: &[f32], codes: &mut [i8]) -> f32 {
    const NMAX: i32 = 32;
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        codes.fill(0);
        return 0.0;
    }
    // Each line below is one C expression, evaluated in the same order and all in f32
    // (`w*x[i]*l` is `(w * x) * l`, `w*l*l` is `(w * l) * l`).
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
    let mut iscale = -(NMAX as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (c, &v) in codes.iter_mut().zip(x) {
        let l = quant(iscale, v);
        *c = (l + NMAX) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    // C's `suml2 ? a : b` is true for NaN too.
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(NMAX as f32 + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = quant(iscale, v);
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = (quant(iscale, v) + NMAX) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// One block of `quantize_row_q6_K_ref`.
fn encode_block(x: &[f32], out: &mut [u8]) {
    debug_assert!(x.len() == QK_K && out.len() == BLOCK_BYTES);
    let mut codes = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ((xs, cs), s) in x
        .chunks_exact(16)
        .zip(codes.chunks_exact_mut(16))
        .zip(&mut scales)
    {
        *s = make_qx_quants(xs, cs);
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = *s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        // ggml zeroes the whole block; f16(0) is 0 too.
        out.fill(0);
        return;
    }
    let iscale = -128.0f32 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let mut sc = [0i8; QK_K / 16];
    for (q, &s) in sc.iter_mut().zip(&scales) {
        // `int8_t = MIN(127, int)`: the conversion wraps in C as `as` does here.
        *q = nearest_int(iscale * s).min(127) as i8;
    }
    // Re-quantize against the scales as stored (f16 d times the int8 scale); a sub-block whose
    // stored scale is 0 keeps the codes make_qx_quants chose.
    let df = d.to_f32();
    for ((xs, cs), &s) in x.chunks_exact(16).zip(codes.chunks_exact_mut(16)).zip(&sc) {
        let dl = df * f32::from(s);
        if dl == 0.0 {
            continue;
        }
        for (c, &v) in cs.iter_mut().zip(xs) {
            *c = (nearest_int(v / dl).clamp(-32, 31) + 32) as i8;
        }
    }
    // Codes are in 0..64, so the u8 casts below keep every bit.
    let (ql, rest) = out.split_at_mut(QH);
    let (qh, rest) = rest.split_at_mut(SCALES - QH);
    for h in 0..2 {
        let c = &codes[128 * h..][..128];
        for l in 0..32 {
            let q = |k: usize| c[l + 32 * k] as u8;
            ql[64 * h + l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            ql[64 * h + 32 + l] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            qh[32 * h + l] =
                (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
    for (o, &s) in rest[..16].iter_mut().zip(&sc) {
        *o = s as u8;
    }
    rest[16..18].copy_from_slice(&d.to_le_bytes());
}

/// `quantize_row_q6_K_ref` over `x` (`x.len() % 256 == 0`).
pub fn encode(x: &[f32]) -> Result<Vec<u8>> {
    check_multiple("q6_k element count", x.len(), QK_K)?;
    let mut out = vec![0u8; nbytes(x.len())];
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        encode_block(xb, ob);
    }
    Ok(out)
}

/// The 6-bit code (0..64) of element `e` of a block: the inverse of the packing in
/// [`encode`]; subtract 32 for the signed value.
#[inline(always)]
pub fn code(block: &[u8; BLOCK_BYTES], e: usize) -> u8 {
    let (h, r) = (e / 128, e % 128);
    let (k, l) = (r / 32, r % 32);
    let lo = block[64 * h + 32 * (k & 1) + l];
    let lo = if k >= 2 { lo >> 4 } else { lo & 0xF };
    let hi = (block[QH + 32 * h + l] >> (2 * k)) & 3;
    lo | (hi << 4)
}

/// `dequantize_row_q6_K` for one block: `y = (d * scale) * (code - 32)`, in that order.
pub fn decode_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK_K]) {
    let d = f16::from_le_bytes([block[D], block[D + 1]]).to_f32();
    for (e, o) in out.iter_mut().enumerate() {
        let s = block[SCALES + e / 16] as i8;
        let q = i32::from(code(block, e)) - 32;
        *o = d * f32::from(s) * q as f32;
    }
}

/// Dequantizes whole blocks into `out` (`out.len() == bytes.len() / 210 * 256`).
pub fn decode_into(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_multiple("q6_k tensor bytes", bytes.len(), BLOCK_BYTES)?;
    check_len(
        "q6_k element count",
        bytes.len() / BLOCK_BYTES * QK_K,
        out.len(),
    )?;
    let (blocks, _) = bytes.as_chunks::<BLOCK_BYTES>();
    let (outs, _) = out.as_chunks_mut::<QK_K>();
    for (b, o) in blocks.iter().zip(outs) {
        decode_block(b, o);
    }
    Ok(())
}

/// Dequantizes `n` values (`n % 256 == 0`).
pub fn decode(bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    check_multiple("q6_k element count", n, QK_K)?;
    check_len("q6_k tensor bytes", nbytes(n), bytes.len())?;
    let mut out = vec![0.0f32; n];
    decode_into(bytes, &mut out)?;
    Ok(out)
}

/// ggml `quantize_row_q8_K_ref` for one 256-value block (the activations a Q6_K weight is dotted
/// with): the value of largest magnitude `max` (the first one on ties) sets
/// `iscale = -127 / max`, `q = min(127, nearest_int(iscale * x))`, and the returned scale is
/// `d = 1 / iscale` (f32; negative when `max` is positive). An all-zero block gives `d = 0`.
/// ggml's `bsums` are not produced: its AVX2 Q6_K dot does not read them.
///
/// # Panics
/// If `x` or `q` is not 256 long (a caller bug).
pub fn quantize_q8_k_block(x: &[f32], q: &mut [i8]) -> f32 {
    assert!(
        x.len() == QK_K && q.len() == QK_K,
        "quantize_q8_k_block: blocks are 256 values"
    );
    let (max, amax) = signed_absmax(x);
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let iscale = -127.0f32 / max;
    for (o, &v) in q.iter_mut().zip(x) {
        *o = nearest_int(iscale * v).min(127) as i8;
    }
    1.0 / iscale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, n) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.49, -2),
            (31.6, 32),
            (-33.0, -33),
            (4_194_303.0, 4_194_303),
        ] {
            assert_eq!(nearest_int(x), n, "{x}");
        }
    }

    #[test]
    fn code_inverts_the_packing() {
        // Every element gets a distinct-ish code; decode must find each where encode put it.
        let mut b = [0u8; BLOCK_BYTES];
        let codes: Vec<u8> = (0..QK_K).map(|e| ((e * 37 + 11) % 64) as u8).collect();
        for h in 0..2 {
            for l in 0..32 {
                let q = |k: usize| codes[128 * h + l + 32 * k];
                b[64 * h + l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                b[64 * h + 32 + l] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                b[QH + 32 * h + l] =
                    (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
        for (e, &c) in codes.iter().enumerate() {
            assert_eq!(code(&b, e), c, "element {e}");
        }
    }

    #[test]
    fn q8_k_block() {
        let mut x = [0.0f32; QK_K];
        // max = -127 (negative, first of two equal magnitudes) makes iscale exactly 1, so every
        // product is exact and the ties show nearest_int's rounding.
        x[3] = -127.0;
        x[4] = 127.0;
        x[5] = 2.5;
        x[6] = -0.5;
        x[7] = 3.5;
        let mut q = [0i8; QK_K];
        assert_eq!(quantize_q8_k_block(&x, &mut q), 1.0);
        assert_eq!(&q[3..8], &[-127, 127, 2, 0, 4]);
        // A positive max flips the signs: d is negative.
        x[3] = 127.0;
        assert_eq!(quantize_q8_k_block(&x, &mut q), -1.0);
        assert_eq!(&q[3..8], &[-127, -127, -2, 0, -4]);
        let mut q = [1i8; QK_K];
        assert_eq!(quantize_q8_k_block(&[0.0; QK_K], &mut q), 0.0);
        assert!(q.iter().all(|&v| v == 0));
    }
}
