//! WebAssembly SIMD128 kernels (wasm32 built with `-C target-feature=+simd128`; lib.rs compiles
//! this module only then, so every intrinsic here is available and none needs run-time checks).
//!
//! Baseline SIMD128 has no byte dot product (the relaxed-SIMD `i32x4.dot_i8x16_i7x16_add` is
//! not in Node 20 nor in every browser), so the ternary kernel multiplies bytes into i16 lanes
//! with `i16x8.extmul_*_i8x16_s` and widens with `i32x4.extadd_pairwise_i16x8_s`, as the NEON
//! kernel without `sdot` does. There is no f16 conversion instruction either: [`f16x4_to_f32`]
//! does it with integer ops and one exact multiply. `exp` has no vector form here, so softmax and
//! SiLU stay scalar (they are a small share of a decode step next to the matmuls).

use crate::kernel::{BlockKernel, DenseKernel, QuantizeKernel, TernaryKernel};
use crate::scalar::Scalar;
use bitnet_quantization::{DenseType, SCALE_EPS};
use std::arch::wasm32::*;

pub(crate) struct Simd128;

/// Scalar (see the module comment); `unsafe` like the dispatched ISA versions it stands for.
///
/// # Safety
/// None.
pub(crate) unsafe fn softmax_inplace(x: &mut [f32]) {
    crate::scalar::softmax_inplace(x)
}

/// Scalar, as [`softmax_inplace`].
///
/// # Safety
/// None.
pub(crate) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    crate::scalar::silu_mul(gate, up, out)
}

/// 16 bytes at `p`, any alignment (WebAssembly loads need none).
///
/// # Safety
/// 16 readable bytes at `p`.
#[inline(always)]
unsafe fn load(p: *const u8) -> v128 {
    // SAFETY: forwarded contract.
    unsafe { v128_load(p as *const v128) }
}

fn hsum_i32(v: v128) -> i32 {
    i32x4_extract_lane::<0>(v)
        .wrapping_add(i32x4_extract_lane::<1>(v))
        .wrapping_add(i32x4_extract_lane::<2>(v))
        .wrapping_add(i32x4_extract_lane::<3>(v))
}

// ---------------------------------------------------------------------------------------------
// Ternary x int8

/// The codes (0..=2) of the 128-weight block at `wp`, in activation order: vector `2g + h`
/// holds elements `32g + 16h ..= 32g + 16h + 15`, i.e. bits `7-2g..6-2g` of bytes
/// `16h ..= 16h + 15` (the layout `Scalar::dot` reads).
///
/// # Safety
/// 32 readable bytes at `wp`.
#[inline(always)]
unsafe fn unpack_block(wp: *const u8) -> [v128; 8] {
    // SAFETY: forwarded contract.
    let (lo, hi) = unsafe { (load(wp), load(wp.add(16))) };
    let m = u8x16_splat(3);
    // Group 0 needs no mask: the shift leaves two bits.
    [
        u8x16_shr(lo, 6),
        u8x16_shr(hi, 6),
        v128_and(u8x16_shr(lo, 4), m),
        v128_and(u8x16_shr(hi, 4), m),
        v128_and(u8x16_shr(lo, 2), m),
        v128_and(u8x16_shr(hi, 2), m),
        v128_and(lo, m),
        v128_and(hi, m),
    ]
}

/// `acc + c * a` with each of the 8 i16 lanes taking two of the 16 byte products.
#[inline(always)]
fn mla16(acc: v128, c: v128, a: v128) -> v128 {
    i16x8_add(
        acc,
        i16x8_add(i16x8_extmul_low_i8x16(c, a), i16x8_extmul_high_i8x16(c, a)),
    )
}

/// Raw sums `sum_k code_k * q_t[k]` of one packed row against `T` tokens: `ACC` i16
/// accumulators per token (a block's 8 code vectors split evenly between them), widened into i32
/// every `8 * ACC` blocks.
///
/// Exactness (as the NEON kernel): a product `code (0..=2) * q (-128..=127)` is in [-256, 254];
/// a block gives each i16 lane of an accumulator `16 / ACC` products, so `8 * ACC` blocks add
/// 128 products: within [-32768, 32512], never wrapping.
///
/// # Safety
/// `q[t].len() >= w.len() / 32 * 128` for every token.
unsafe fn ternary_dot<const T: usize, const ACC: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
    let nb = w.len() / 32;
    let wp = w.as_ptr();
    let mut qp = [std::ptr::null::<u8>(); T];
    for t in 0..T {
        debug_assert!(q[t].len() >= nb * 128);
        qp[t] = q[t].as_ptr().cast();
    }
    let mut acc = [i32x4_splat(0); T];
    let mut b = 0;
    while b < nb {
        let end = (b + 8 * ACC).min(nb);
        let mut acc16 = [[i16x8_splat(0); ACC]; T];
        while b < end {
            // SAFETY: b < nb, so 32 bytes of w and 128 of each q[t] are in bounds.
            unsafe {
                let c = unpack_block(wp.add(b * 32));
                for t in 0..T {
                    let a = qp[t].add(b * 128);
                    for (j, &cj) in c.iter().enumerate() {
                        let s = &mut acc16[t][j * ACC / 8];
                        *s = mla16(*s, cj, load(a.add(16 * j)));
                    }
                }
            }
            b += 1;
        }
        for t in 0..T {
            for &s in &acc16[t] {
                acc[t] = i32x4_add(acc[t], i32x4_extadd_pairwise_i16x8(s));
            }
        }
    }
    acc.map(hsum_i32)
}

impl TernaryKernel for Simd128 {
    unsafe fn dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
        // One token gets 4 independent add chains; a tile's tokens already give several.
        if T == 1 {
            // SAFETY: this method's contract is the kernel's: every q[t].len() >= w.len() * 4
            // (SIMD128 is compiled in, so there is no feature to check).
            unsafe { ternary_dot::<T, 4>(w, q) }
        } else {
            // SAFETY: as above.
            unsafe { ternary_dot::<T, 2>(w, q) }
        }
    }
}

/// `clamp(round_half_even(x * s), -128, 127)` of 4 floats at `p`, as i32.
///
/// # Safety
/// 4 readable floats at `p`.
#[inline(always)]
unsafe fn quantize4(p: *const f32, s: v128, lo: v128, hi: v128) -> v128 {
    // SAFETY: forwarded contract.
    let v = f32x4_mul(unsafe { load(p.cast()) }, s);
    // `nearest` rounds half to even, like `round_ties_even`. pmax(lo, r) is `lo < r ? r : lo`,
    // so NaN gives -128 like the scalar `.max(-128.0)`; then pmin(hi, r) is `r < hi ? r : hi`.
    let r = f32x4_pmin(hi, f32x4_pmax(lo, f32x4_nearest(v)));
    // Already an integer in [-128, 127]: the conversion is exact.
    i32x4_trunc_sat_f32x4(r)
}

/// Absmax int8 quantization of one row; bit-identical to
/// `bitnet_quantization::quantize_activation_row` (same f32 ops: `|x|` max, `127 / max`, `x * s`,
/// round-half-even, clamp with the same NaN behaviour). Returns `(s_x, sum of q)`.
///
/// # Safety
/// None beyond the module's (kept `unsafe` like the other ISAs' entry points).
pub(crate) unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    debug_assert_eq!(x.len(), q.len());
    let n = x.len().min(q.len());
    let xp = x.as_ptr();
    // pmax(m, |x|) is `m < |x| ? |x| : m`: a NaN is skipped like f32::max does; otherwise max is
    // order-independent (all values >= +0), so four lane chains give the scalar fold's result.
    let mut m = [f32x4_splat(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (j, m) in m.iter_mut().enumerate() {
            // SAFETY: i + 16 <= n.
            *m = f32x4_pmax(*m, f32x4_abs(unsafe { load(xp.add(i + 4 * j).cast()) }));
        }
        i += 16;
    }
    let mv = f32x4_pmax(f32x4_pmax(m[0], m[1]), f32x4_pmax(m[2], m[3]));
    let mut amax = f32x4_extract_lane::<0>(mv)
        .max(f32x4_extract_lane::<1>(mv))
        .max(f32x4_extract_lane::<2>(mv))
        .max(f32x4_extract_lane::<3>(mv));
    for &v in &x[i..n] {
        amax = v.abs().max(amax);
    }
    let s = 127.0f32 / amax.max(SCALE_EPS);

    let sv = f32x4_splat(s);
    let lo = f32x4_splat(-128.0);
    let hi = f32x4_splat(127.0);
    let mut sumv = i32x4_splat(0);
    let qp = q.as_mut_ptr();
    i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n for both x and q.
        unsafe {
            let a = quantize4(xp.add(i), sv, lo, hi);
            let b = quantize4(xp.add(i + 4), sv, lo, hi);
            let c = quantize4(xp.add(i + 8), sv, lo, hi);
            let d = quantize4(xp.add(i + 12), sv, lo, hi);
            sumv = i32x4_add(sumv, i32x4_add(i32x4_add(a, b), i32x4_add(c, d)));
            // In range already, so the saturating narrowings change nothing.
            let ab = i16x8_narrow_i32x4(a, b);
            let cd = i16x8_narrow_i32x4(c, d);
            v128_store(qp.add(i) as *mut v128, i8x16_narrow_i16x8(ab, cd));
        }
        i += 16;
    }
    let mut sum = hsum_i32(sumv);
    for (qi, &xi) in q[i..n].iter_mut().zip(&x[i..n]) {
        // Same expression as the scalar definition (not `clamp`, which keeps NaN).
        #[allow(clippy::manual_clamp)]
        let v = (xi * s).round_ties_even().max(-128.0).min(127.0);
        *qi = v as i8;
        sum += i32::from(*qi);
    }
    (s, sum)
}

// ---------------------------------------------------------------------------------------------
// Dense F32 / F16 / BF16 (the tied LM head of the default model is F16)

const TY_F32: u8 = 0;
const TY_F16: u8 = 1;
const TY_BF16: u8 = 2;

/// Four f16 bit patterns (the low 16 bits of each u32 lane) as f32, exactly like
/// `half::f16::to_f32`: the exponent and mantissa moved into f32 position and multiplied by
/// 2^112 (the bias difference), which is exact for normal and subnormal values alike; infinity
/// and NaN get the f32 all-ones exponent, NaN also the quiet bit, as `half` does.
#[inline(always)]
fn f16x4_to_f32(h: v128) -> v128 {
    let sign = i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16);
    let em = v128_and(h, u32x4_splat(0x7fff));
    let shifted = i32x4_shl(em, 13);
    let finite = f32x4_mul(shifted, f32x4_splat(f32::from_bits(0x7780_0000)));
    let man = v128_and(h, u32x4_splat(0x03ff));
    let quiet = v128_and(
        v128_not(u32x4_eq(man, u32x4_splat(0))),
        u32x4_splat(0x0040_0000),
    );
    let special = v128_or(v128_or(shifted, u32x4_splat(0x7f80_0000)), quiet);
    let is_special = u32x4_ge(em, u32x4_splat(0x7c00));
    v128_or(sign, v128_bitselect(special, finite, is_special))
}

/// 8 elements of type `TY` at `p` (any alignment) as f32.
///
/// # Safety
/// 8 readable elements at `p`.
#[inline(always)]
unsafe fn load8<const TY: u8>(p: *const u8) -> [v128; 2] {
    // SAFETY: forwarded contract.
    unsafe {
        match TY {
            TY_F32 => [load(p), load(p.add(16))],
            TY_F16 => {
                let h = load(p);
                [
                    f16x4_to_f32(u32x4_extend_low_u16x8(h)),
                    f16x4_to_f32(u32x4_extend_high_u16x8(h)),
                ]
            }
            _ => {
                // bf16 is the top half of an f32.
                let h = load(p);
                [
                    i32x4_shl(u32x4_extend_low_u16x8(h), 16),
                    i32x4_shl(u32x4_extend_high_u16x8(h), 16),
                ]
            }
        }
    }
}

fn load1<const TY: u8>(b: &[u8], k: usize) -> f32 {
    match TY {
        TY_F32 => f32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]]),
        TY_F16 => half::f16::from_le_bytes([b[2 * k], b[2 * k + 1]]).to_f32(),
        _ => half::bf16::from_le_bytes([b[2 * k], b[2 * k + 1]]).to_f32(),
    }
}

const fn ty_size(ty: u8) -> usize {
    if ty == TY_F32 {
        4
    } else {
        2
    }
}

fn hsum_f32(v: v128) -> f32 {
    (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v))
        + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
}

/// `dot(row, x[t])` for T tokens: each 16-element slice of the row is converted once and
/// multiply-added into every token's four accumulators (baseline SIMD128 has no FMA).
///
/// # Safety
/// `x[t].len() == row.len() / size of TY` for every token.
unsafe fn dense_dot<const T: usize, const TY: u8>(row: &[u8], x: [&[f32]; T]) -> [f32; T] {
    let es = ty_size(TY);
    let cols = row.len() / es;
    let rp = row.as_ptr();
    let mut xp = [std::ptr::null::<u8>(); T];
    for t in 0..T {
        debug_assert_eq!(x[t].len(), cols);
        xp[t] = x[t].as_ptr().cast();
    }
    let mut acc = [[f32x4_splat(0.0); 4]; T];
    let mut i = 0;
    while i + 16 <= cols {
        // SAFETY: i + 16 <= cols = row.len() / es = x[t].len() (this function's contract)
        // bounds every row and x access.
        unsafe {
            let [w0, w1] = load8::<TY>(rp.add(i * es));
            let [w2, w3] = load8::<TY>(rp.add((i + 8) * es));
            for t in 0..T {
                for (j, wj) in [w0, w1, w2, w3].into_iter().enumerate() {
                    let xv = load(xp[t].add(4 * (i + 4 * j)));
                    acc[t][j] = f32x4_add(acc[t][j], f32x4_mul(wj, xv));
                }
            }
        }
        i += 16;
    }
    if i + 8 <= cols {
        // SAFETY: i + 8 <= cols, as above.
        unsafe {
            let [w0, w1] = load8::<TY>(rp.add(i * es));
            for t in 0..T {
                acc[t][0] = f32x4_add(acc[t][0], f32x4_mul(w0, load(xp[t].add(4 * i))));
                acc[t][1] = f32x4_add(acc[t][1], f32x4_mul(w1, load(xp[t].add(4 * (i + 4)))));
            }
        }
        i += 8;
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        let [a0, a1, a2, a3] = acc[t];
        let mut s = hsum_f32(f32x4_add(f32x4_add(a0, a1), f32x4_add(a2, a3)));
        for (k, &xv) in x[t].iter().enumerate().skip(i) {
            s += load1::<TY>(row, k) * xv;
        }
        out[t] = s;
    }
    out
}

/// # Safety
/// None beyond the bounds it takes from the slices.
unsafe fn row_to_f32_ty<const TY: u8>(row: &[u8], out: &mut [f32]) {
    let es = ty_size(TY);
    let cols = out.len().min(row.len() / es);
    let op = out.as_mut_ptr();
    let mut i = 0;
    while i + 8 <= cols {
        // SAFETY: i + 8 <= cols for both.
        unsafe {
            let [a, b] = load8::<TY>(row.as_ptr().add(i * es));
            v128_store(op.add(i) as *mut v128, a);
            v128_store(op.add(i + 4) as *mut v128, b);
        }
        i += 8;
    }
    for (k, o) in out.iter_mut().enumerate().take(cols).skip(i) {
        *o = load1::<TY>(row, k);
    }
}

impl DenseKernel for Simd128 {
    unsafe fn dot<const T: usize>(
        row: &[u8],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [f32; T] {
        // SAFETY: forwarded contract.
        unsafe {
            match ty {
                DenseType::F32 => dense_dot::<T, TY_F32>(row, x),
                DenseType::F16 => dense_dot::<T, TY_F16>(row, x),
                DenseType::BF16 => dense_dot::<T, TY_BF16>(row, x),
                // The dense matmul routes Q8_0 / Q6_K to the BlockKernel dots (scalar there on
                // wasm32); this widening fallback only keeps the trait total.
                DenseType::Q8_0 | DenseType::Q6_K => {
                    let cols = x.first().map_or(0, |x| x.len());
                    buf.resize(cols, 0.0);
                    ty.row_to_f32(row, buf);
                    x.map(|xt| dot(buf, xt))
                }
            }
        }
    }

    unsafe fn row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]) {
        // SAFETY: forwarded contract.
        unsafe {
            match ty {
                DenseType::F32 => row_to_f32_ty::<TY_F32>(row, out),
                DenseType::F16 => row_to_f32_ty::<TY_F16>(row, out),
                DenseType::BF16 => row_to_f32_ty::<TY_BF16>(row, out),
                DenseType::Q8_0 | DenseType::Q6_K => ty.row_to_f32(row, out),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// f32 vector ops

/// Bit-identical to `scalar::dot`: its eight interleaved partial sums are lanes of two vectors,
/// combined in its order, and without FMA each step is the same multiply then add.
///
/// # Safety
/// None beyond the bounds it takes from the slices.
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len()) / 8 * 8;
    let (ap, bp) = (a.as_ptr().cast::<u8>(), b.as_ptr().cast::<u8>());
    let (mut lo, mut hi) = (f32x4_splat(0.0), f32x4_splat(0.0));
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n for both slices.
        unsafe {
            lo = f32x4_add(lo, f32x4_mul(load(ap.add(4 * i)), load(bp.add(4 * i))));
            hi = f32x4_add(
                hi,
                f32x4_mul(load(ap.add(4 * i + 16)), load(bp.add(4 * i + 16))),
            );
        }
        i += 8;
    }
    // scalar: ((acc0 + acc4) + (acc1 + acc5)) + ((acc2 + acc6) + (acc3 + acc7)).
    let p = f32x4_add(lo, hi);
    let mut s = (f32x4_extract_lane::<0>(p) + f32x4_extract_lane::<1>(p))
        + (f32x4_extract_lane::<2>(p) + f32x4_extract_lane::<3>(p));
    for (x, y) in a[n..].iter().zip(&b[n..]) {
        s += x * y;
    }
    s
}

/// [`dot`] against f16 values converted in registers (the attention scores against an f16 KV
/// cache); bit-identical to `dot(a, widened(b))`, since the conversion is exact.
///
/// # Safety
/// None beyond the bounds it takes from the slices.
pub(crate) unsafe fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
    let n = a.len().min(b.len()) / 8 * 8;
    let (ap, bp) = (a.as_ptr().cast::<u8>(), b.as_ptr().cast::<u8>());
    let (mut lo, mut hi) = (f32x4_splat(0.0), f32x4_splat(0.0));
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n for both slices.
        unsafe {
            let h = load(bp.add(2 * i));
            let w0 = f16x4_to_f32(u32x4_extend_low_u16x8(h));
            let w1 = f16x4_to_f32(u32x4_extend_high_u16x8(h));
            lo = f32x4_add(lo, f32x4_mul(load(ap.add(4 * i)), w0));
            hi = f32x4_add(hi, f32x4_mul(load(ap.add(4 * i + 16)), w1));
        }
        i += 8;
    }
    let p = f32x4_add(lo, hi);
    let mut s = (f32x4_extract_lane::<0>(p) + f32x4_extract_lane::<1>(p))
        + (f32x4_extract_lane::<2>(p) + f32x4_extract_lane::<3>(p));
    for (x, y) in a[n..].iter().zip(&b[n..]) {
        s += x * y.to_f32();
    }
    s
}

/// `y += alpha * x` from f16 values (the attention output from an f16 KV cache); bit-identical
/// to `axpy(alpha, widened(x), y)`.
///
/// # Safety
/// None beyond the bounds it takes from the slices.
pub(crate) unsafe fn axpy_f16(alpha: f32, x: &[half::f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let al = f32x4_splat(alpha);
    let xp = x.as_ptr().cast::<u8>();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n for both.
        unsafe {
            let h = load(xp.add(2 * i));
            let yp = y.as_mut_ptr().add(i) as *mut v128;
            let x0 = f16x4_to_f32(u32x4_extend_low_u16x8(h));
            let x1 = f16x4_to_f32(u32x4_extend_high_u16x8(h));
            v128_store(yp, f32x4_add(v128_load(yp), f32x4_mul(al, x0)));
            let yp = yp.add(1);
            v128_store(yp, f32x4_add(v128_load(yp), f32x4_mul(al, x1)));
        }
        i += 8;
    }
    for k in i..n {
        y[k] += alpha * x[k].to_f32();
    }
}

/// `y += alpha * x`, bit-identical to the scalar version (multiply, then add).
///
/// # Safety
/// None beyond the bounds it takes from the slices.
pub(crate) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let al = f32x4_splat(alpha);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n for both.
        unsafe {
            let yp = y.as_mut_ptr().add(i) as *mut v128;
            let xv = load(x.as_ptr().add(i).cast());
            v128_store(yp, f32x4_add(v128_load(yp), f32x4_mul(al, xv)));
        }
        i += 4;
    }
    for k in i..n {
        y[k] += alpha * x[k];
    }
}

/// RMSNorm; the sum of squares is [`dot`]'s (eight partial sums instead of the scalar version's
/// one running sum, so the two agree to rounding), the scaling is the scalar `w * (x * r)`.
///
/// # Safety
/// None beyond the bounds it takes from the slices.
pub(crate) unsafe fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len().min(weight.len()).min(out.len());
    if n == 0 {
        return;
    }
    // SAFETY: no contract.
    let ss = unsafe { dot(&x[..n], &x[..n]) };
    let r = 1.0 / (ss / n as f32 + eps).sqrt();
    let rv = f32x4_splat(r);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n for all three.
        unsafe {
            let v = f32x4_mul(load(x.as_ptr().add(i).cast()), rv);
            let w = load(weight.as_ptr().add(i).cast());
            v128_store(out.as_mut_ptr().add(i) as *mut v128, f32x4_mul(w, v));
        }
        i += 4;
    }
    for k in i..n {
        out[k] = weight[k] * (x[k] * r);
    }
}

/// `relu(gate)^2 * up`, bit-identical to the scalar version: pmax(0, g) is `0 < g ? g : 0`, so
/// NaN gives 0 like `g.max(0.0)`.
///
/// # Safety
/// None beyond the bounds it takes from the slices.
pub(crate) unsafe fn relu2_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let zero = f32x4_splat(0.0);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n for all three.
        unsafe {
            let r = f32x4_pmax(zero, load(gate.as_ptr().add(i).cast()));
            let u = load(up.as_ptr().add(i).cast());
            v128_store(
                out.as_mut_ptr().add(i) as *mut v128,
                f32x4_mul(f32x4_mul(r, r), u),
            );
        }
        i += 4;
    }
    for k in i..n {
        let r = gate[k].max(0.0);
        out[k] = r * r * up[k];
    }
}

/// No Q8_0 / Q6_K SIMD128 kernels yet: the scalar twins (bit-identical by definition).
impl BlockKernel for Simd128 {
    unsafe fn q8_0_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: scalar code; forwarded contract.
        unsafe { <Scalar as BlockKernel>::q8_0_dot(row, q, d) }
    }

    unsafe fn q6_k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: as above.
        unsafe { <Scalar as BlockKernel>::q6_k_dot(row, q, d) }
    }
}

impl QuantizeKernel for Simd128 {
    unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        // SAFETY: forwarded contract (built with +simd128).
        unsafe { quantize_row(x, q) }
    }
}
