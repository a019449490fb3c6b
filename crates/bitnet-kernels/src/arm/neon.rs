//! aarch64 NEON kernels. [`Neon`] needs only Advanced SIMD; [`NeonDot`] (ternary matmul),
//! [`q8_sdot`] (Q8_0 dot) and [`q6k_sdot`] (Q6_K dot) also need the dot-product extension. The
//! dispatch (`dispatch.rs`) only routes here after checking the features at run time.
//!
//! Two instructions are written as inline asm because their intrinsics are not stable in Rust
//! 1.89 (the workspace's `rust-version`):
//! - `sdot` (`vdotq_s32`, feature `stdarch_neon_dotprod`);
//! - `fcvtl` f16 -> f32 (`vcvt_f32_f16` takes a `float16x4_t`, which needs the unstable `f16`
//!   type); the instruction itself is baseline Advanced SIMD.

use crate::kernel::{BlockKernel, DenseKernel, QuantizeKernel, TernaryKernel};
use bitnet_quantization::q8_0::{BLOCK_BYTES as Q8_BLOCK_BYTES, QK8_0 as QK};
use bitnet_quantization::{DenseType, SCALE_EPS};
use std::arch::aarch64::*;
use std::arch::asm;

pub(crate) struct Neon;
pub(crate) struct NeonDot;

/// `acc + sdot(a, b)`: every i32 lane gains the sum of the four products of its bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: a register-only instruction; the caller guarantees the dot-product extension.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// Eight f16 bit patterns as f32 (exact, like `half::f16::to_f32`).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn f16x8_to_f32(h: uint16x8_t) -> [float32x4_t; 2] {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only instructions of baseline Advanced SIMD. `lo` is a plain `out` so it
    // cannot share `h`'s register, which the second instruction still reads.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = lateout(vreg) hi,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    [lo, hi]
}

/// Four f16 bit patterns as f32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let f: float32x4_t;
    // SAFETY: a register-only instruction of baseline Advanced SIMD.
    unsafe {
        asm!(
            "fcvtl {f:v}.4s, {h:v}.4h",
            h = in(vreg) h,
            f = lateout(vreg) f,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    f
}

/// 16 bytes at `p`, any alignment (the weights come straight from a file mapping).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_u8(p: *const u8) -> uint8x16_t {
    // SAFETY: the caller guarantees 16 readable bytes; `ld1 {.16b}` has no alignment demand.
    unsafe { vld1q_u8(p) }
}

// ---------------------------------------------------------------------------------------------
// Ternary x int8

/// The codes (0..=2) of the 128-weight block at `wp`, in activation order: vector `2g + h`
/// holds elements `32g + 16h ..= 32g + 16h + 15`, i.e. bits `7-2g..6-2g` of bytes
/// `16h ..= 16h + 15`. As signed bytes they are the same 0..=2, which `smull` / `sdot` want.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn unpack_block(wp: *const u8) -> [int8x16_t; 8] {
    // SAFETY: the caller guarantees the 32 bytes of the block.
    let (lo, hi) = unsafe { (load_u8(wp), load_u8(wp.add(16))) };
    let m = vdupq_n_u8(3);
    // Group 0 needs no mask: the shift leaves two bits.
    [
        vreinterpretq_s8_u8(vshrq_n_u8::<6>(lo)),
        vreinterpretq_s8_u8(vshrq_n_u8::<6>(hi)),
        vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(lo), m)),
        vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(hi), m)),
        vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(lo), m)),
        vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(hi), m)),
        vreinterpretq_s8_u8(vandq_u8(lo, m)),
        vreinterpretq_s8_u8(vandq_u8(hi, m)),
    ]
}

/// `acc + c * a` with each of the 8 i16 lanes taking two of the 16 byte products.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn mla16(acc: int16x8_t, c: int8x16_t, a: int8x16_t) -> int16x8_t {
    vmlal_high_s8(vmlal_s8(acc, vget_low_s8(c), vget_low_s8(a)), c, a)
}

/// Raw sums `sum_k code_k * q_t[k]` of one packed row against `T` tokens, without `sdot`: the
/// products go into `ACC` i16 accumulators per token (one block's 8 code vectors split evenly
/// between them), widened into i32 with `sadalp` every `8 * ACC` blocks.
///
/// Exactness: a product `code (0..=2) * q (-128..=127)` is in [-256, 254]. A block gives each
/// i16 lane of an accumulator `16 / ACC` products, so `8 * ACC` blocks add 128 products:
/// within [-32768, 32512], never wrapping (-32768 is reached only when every q is -128).
///
/// `ACC` = 2 for token tiles (the tile's tokens already give independent add chains), 4 for a
/// single token (decode), which would otherwise serialise 8 `smlal` pairs per block.
#[target_feature(enable = "neon")]
unsafe fn ternary_dot<const T: usize, const ACC: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
    let nb = w.len() / 32;
    let wp = w.as_ptr();
    let mut qp = [std::ptr::null::<i8>(); T];
    for t in 0..T {
        debug_assert!(q[t].len() >= nb * 128);
        qp[t] = q[t].as_ptr();
    }
    let mut acc = [vdupq_n_s32(0); T];
    let mut b = 0;
    while b < nb {
        let end = (b + 8 * ACC).min(nb);
        let mut acc16 = [[vdupq_n_s16(0); ACC]; T];
        while b < end {
            // SAFETY: b < nb, so 32 bytes of w and 128 of each q[t] are in bounds.
            unsafe {
                let c = unpack_block(wp.add(b * 32));
                for t in 0..T {
                    let a = qp[t].add(b * 128);
                    for (j, &cj) in c.iter().enumerate() {
                        let s = &mut acc16[t][j * ACC / 8];
                        *s = mla16(*s, cj, vld1q_s8(a.add(16 * j)));
                    }
                }
            }
            b += 1;
        }
        for t in 0..T {
            for &s in &acc16[t] {
                acc[t] = vpadalq_s16(acc[t], s);
            }
        }
    }
    let mut out = [0i32; T];
    for t in 0..T {
        out[t] = vaddvq_s32(acc[t]);
    }
    out
}

/// [`ternary_dot`] with `sdot`: four products per i32 lane and instruction, so no i16 stage and
/// no overflow bound beyond `MAX_COLS`. `ACC` i32 accumulators per token, as there.
#[target_feature(enable = "neon,dotprod")]
unsafe fn ternary_sdot<const T: usize, const ACC: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
    let nb = w.len() / 32;
    let wp = w.as_ptr();
    let mut qp = [std::ptr::null::<i8>(); T];
    for t in 0..T {
        debug_assert!(q[t].len() >= nb * 128);
        qp[t] = q[t].as_ptr();
    }
    let mut acc = [[vdupq_n_s32(0); ACC]; T];
    for b in 0..nb {
        // SAFETY: b < nb, so 32 bytes of w and 128 of each q[t] are in bounds.
        unsafe {
            let c = unpack_block(wp.add(b * 32));
            for t in 0..T {
                let a = qp[t].add(b * 128);
                for (j, &cj) in c.iter().enumerate() {
                    let s = &mut acc[t][j % ACC];
                    *s = sdot(*s, cj, vld1q_s8(a.add(16 * j)));
                }
            }
        }
    }
    let mut out = [0i32; T];
    for t in 0..T {
        let mut s = acc[t][0];
        for &v in &acc[t][1..] {
            s = vaddq_s32(s, v);
        }
        out[t] = vaddvq_s32(s);
    }
    out
}

impl TernaryKernel for Neon {
    unsafe fn dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
        if T == 1 {
            // SAFETY: this method's contract is the kernel's: NEON present (the dispatcher
            // checked it), every q[t].len() >= w.len() * 4.
            unsafe { ternary_dot::<T, 4>(w, q) }
        } else {
            // SAFETY: as above.
            unsafe { ternary_dot::<T, 2>(w, q) }
        }
    }
}

impl TernaryKernel for NeonDot {
    unsafe fn dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T] {
        if T == 1 {
            // SAFETY: this method's contract is the kernel's: NEON + dot product present (the
            // dispatcher checked both), every q[t].len() >= w.len() * 4.
            unsafe { ternary_sdot::<T, 4>(w, q) }
        } else {
            // SAFETY: as above.
            unsafe { ternary_sdot::<T, 2>(w, q) }
        }
    }
}

/// `clamp(round_half_even(x * s), -128, 127)` of 4 floats at `p`, as i32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn quantize4(p: *const f32, s: float32x4_t, lo: float32x4_t, hi: float32x4_t) -> int32x4_t {
    // SAFETY: the caller guarantees 4 readable floats.
    let v = vmulq_f32(unsafe { vld1q_f32(p) }, s);
    // frintn rounds half to even, like `round_ties_even`. fmaxnm / fminnm return the number
    // when the other operand is NaN: max(NaN, -128) = -128 like the scalar `.max(-128.0)`.
    let r = vminnmq_f32(vmaxnmq_f32(vrndnq_f32(v), lo), hi);
    // Already an integer in [-128, 127]: the truncating conversion is exact.
    vcvtq_s32_f32(r)
}

/// Absmax int8 quantization of one row; bit-identical to
/// `bitnet_quantization::quantize_activation_row` (same f32 ops: `|x|` max, `127 / max`, `x * s`,
/// round-half-even, clamp with the same NaN behaviour). Returns `(s_x, sum of q)`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    debug_assert_eq!(x.len(), q.len());
    let n = x.len().min(q.len());
    let xp = x.as_ptr();
    // fmaxnm skips (quiet) NaNs like f32::max; max is order-independent otherwise (all values
    // are >= +0 after fabs), so four lane-parallel chains give the scalar fold's result.
    let mut m = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (j, m) in m.iter_mut().enumerate() {
            // SAFETY: i + 16 <= n.
            *m = vmaxnmq_f32(vabsq_f32(unsafe { vld1q_f32(xp.add(i + 4 * j)) }), *m);
        }
        i += 16;
    }
    let mut amax = vmaxnmvq_f32(vmaxnmq_f32(
        vmaxnmq_f32(m[0], m[1]),
        vmaxnmq_f32(m[2], m[3]),
    ));
    for &v in &x[i..n] {
        amax = v.abs().max(amax);
    }
    let s = 127.0f32 / amax.max(SCALE_EPS);

    let sv = vdupq_n_f32(s);
    let lo = vdupq_n_f32(-128.0);
    let hi = vdupq_n_f32(127.0);
    let mut sumv = vdupq_n_s32(0);
    let qp = q.as_mut_ptr();
    i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n for both x and q.
        unsafe {
            let a = quantize4(xp.add(i), sv, lo, hi);
            let b = quantize4(xp.add(i + 4), sv, lo, hi);
            let c = quantize4(xp.add(i + 8), sv, lo, hi);
            let d = quantize4(xp.add(i + 12), sv, lo, hi);
            sumv = vaddq_s32(sumv, vaddq_s32(vaddq_s32(a, b), vaddq_s32(c, d)));
            // In range already, so plain narrowing (no saturation needed).
            let ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
            let cd = vcombine_s16(vmovn_s32(c), vmovn_s32(d));
            vst1q_s8(qp.add(i), vcombine_s8(vmovn_s16(ab), vmovn_s16(cd)));
        }
        i += 16;
    }
    let mut sum = vaddvq_s32(sumv);
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
// Dense F32 / F16 / BF16

const TY_F32: u8 = 0;
const TY_F16: u8 = 1;
const TY_BF16: u8 = 2;

/// 8 elements of type `TY` at `p` (any alignment) as f32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load8<const TY: u8>(p: *const u8) -> [float32x4_t; 2] {
    // SAFETY: callers guarantee 8 readable elements.
    unsafe {
        match TY {
            TY_F32 => [
                vreinterpretq_f32_u8(load_u8(p)),
                vreinterpretq_f32_u8(load_u8(p.add(16))),
            ],
            TY_F16 => f16x8_to_f32(vreinterpretq_u16_u8(load_u8(p))),
            _ => {
                // bf16 is the top half of an f32.
                let h = vreinterpretq_u16_u8(load_u8(p));
                [
                    vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                    vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
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

/// `dot(row, x[t])` for T tokens: each 16-element slice of the row is converted once and
/// FMA'd into every token's four accumulators.
#[target_feature(enable = "neon")]
unsafe fn dense_dot<const T: usize, const TY: u8>(row: &[u8], x: [&[f32]; T]) -> [f32; T] {
    let es = ty_size(TY);
    let cols = row.len() / es;
    let rp = row.as_ptr();
    let mut xp = [std::ptr::null::<f32>(); T];
    for t in 0..T {
        debug_assert_eq!(x[t].len(), cols);
        xp[t] = x[t].as_ptr();
    }
    let mut acc = [[vdupq_n_f32(0.0); 4]; T];
    let mut i = 0;
    while i + 16 <= cols {
        // SAFETY: i + 16 <= cols = row.len() / es = x[t].len() (the callers' contract, checked
        // by DenseMatrix) bounds every row and x access.
        unsafe {
            let [w0, w1] = load8::<TY>(rp.add(i * es));
            let [w2, w3] = load8::<TY>(rp.add((i + 8) * es));
            for t in 0..T {
                for (j, wj) in [w0, w1, w2, w3].into_iter().enumerate() {
                    acc[t][j] = vfmaq_f32(acc[t][j], wj, vld1q_f32(xp[t].add(i + 4 * j)));
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
                acc[t][0] = vfmaq_f32(acc[t][0], w0, vld1q_f32(xp[t].add(i)));
                acc[t][1] = vfmaq_f32(acc[t][1], w1, vld1q_f32(xp[t].add(i + 4)));
            }
        }
        i += 8;
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        let [a0, a1, a2, a3] = acc[t];
        let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
        for (k, &xv) in x[t].iter().enumerate().skip(i) {
            s += load1::<TY>(row, k) * xv;
        }
        out[t] = s;
    }
    out
}

#[target_feature(enable = "neon")]
unsafe fn row_to_f32_ty<const TY: u8>(row: &[u8], out: &mut [f32]) {
    let es = ty_size(TY);
    let cols = out.len().min(row.len() / es);
    let op = out.as_mut_ptr();
    let mut i = 0;
    while i + 8 <= cols {
        // SAFETY: i + 8 <= cols for both.
        unsafe {
            let [a, b] = load8::<TY>(row.as_ptr().add(i * es));
            vst1q_f32(op.add(i), a);
            vst1q_f32(op.add(i + 4), b);
        }
        i += 8;
    }
    for (k, o) in out.iter_mut().enumerate().take(cols).skip(i) {
        *o = load1::<TY>(row, k);
    }
}

impl DenseKernel for Neon {
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
                // The dense matmul routes Q8_0 / Q6_K to the BlockKernel dots (quantized
                // activations); this widening fallback only keeps the trait total.
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
// Dense Q8_0 (the scalar twin these must equal bit for bit is `scalar::q8_0_dot`)

/// The eight i32 lanes of one 32-byte block pair that the scalar twin `scalar::q8_0_dot`
/// defines: lane `l` is the sum of the products of bytes `4l..4l + 4`, lanes 0..4 from
/// `w[0] * x[0]`.
///
/// # Safety
/// NEON, and the dot-product extension when `DOT`.
#[inline(always)]
unsafe fn q8_lanes<const DOT: bool>(w: [int8x16_t; 2], x: [int8x16_t; 2]) -> [int32x4_t; 2] {
    if DOT {
        // SAFETY: register-only; NEON is this function's contract (as an `inline(always)` body it
        // has no target feature of its own), and only q8_sdot, which has the dot-product
        // extension, passes DOT.
        unsafe {
            let z = vdupq_n_s32(0);
            [sdot(z, w[0], x[0]), sdot(z, w[1], x[1])]
        }
    } else {
        // smull gives exact i16 products (|-128 * -128| fits); saddlp widens them into pair
        // sums [p0+p1, p2+p3, ..] and addp adds neighbouring pairs, so lane l = p4l + .. + p4l+3.
        // SAFETY: register-only NEON instructions; NEON is this function's contract.
        let lanes = |w: int8x16_t, x: int8x16_t| unsafe {
            let lo = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(x)));
            let hi = vpaddlq_s16(vmull_high_s8(w, x));
            vpaddq_s32(lo, hi)
        };
        [lanes(w[0], x[0]), lanes(w[1], x[1])]
    }
}

/// `ggml_vec_dot_q8_0_q8_0` for `T` tokens sharing each weight block load, bit-identical to
/// `scalar::q8_0_dot`: per block the exact integer lanes, converted to f32 and fused
/// multiply-added with `d_w * d_x` into eight lane accumulators (two vectors), then its
/// `hsum_float_8` order: `((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))`.
///
/// The body of [`q8_dot`] and [`q8_sdot`]: `inline(always)` puts it into those two, whose target
/// features then let [`sdot`] inline as well.
#[inline(always)]
unsafe fn q8_dot_body<const T: usize, const DOT: bool>(
    row: &[u8],
    q: [&[i8]; T],
    d: [&[f32]; T],
) -> [f32; T] {
    let nb = row.len() / Q8_BLOCK_BYTES;
    for t in 0..T {
        debug_assert!(q[t].len() >= nb * QK && d[t].len() >= nb);
    }
    let rp = row.as_ptr();
    // SAFETY: NEON is this function's contract (it has no target feature of its own).
    let mut acc = [[unsafe { vdupq_n_f32(0.0) }; 2]; T];
    for b in 0..nb {
        // SAFETY: the caller guarantees the CPU features and that block b is in the row and in
        // every q[t] / d[t].
        unsafe {
            let blk = rp.add(b * Q8_BLOCK_BYTES);
            // The f16 scale is the block's first 2 bytes, at any alignment.
            let h = vdup_n_u16((blk as *const u16).read_unaligned());
            let dw = vgetq_lane_f32::<0>(f16x4_to_f32(h));
            let w = [
                vld1q_s8(blk.add(2) as *const i8),
                vld1q_s8(blk.add(18) as *const i8),
            ];
            for t in 0..T {
                let xp = q[t].as_ptr().add(b * QK);
                let [s0, s1] = q8_lanes::<DOT>(w, [vld1q_s8(xp), vld1q_s8(xp.add(16))]);
                let db = dw * *d[t].get_unchecked(b);
                acc[t][0] = vfmaq_n_f32(acc[t][0], vcvtq_f32_s32(s0), db);
                acc[t][1] = vfmaq_n_f32(acc[t][1], vcvtq_f32_s32(s1), db);
            }
        }
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        // [a0+a4, a1+a5, a2+a6, a3+a7] -> [(a0+a4)+(a2+a6), (a1+a5)+(a3+a7)] -> their sum.
        // SAFETY: register-only NEON instructions; NEON is this function's contract.
        out[t] = unsafe {
            let v = vaddq_f32(acc[t][0], acc[t][1]);
            vaddv_f32(vadd_f32(vget_low_f32(v), vget_high_f32(v)))
        };
    }
    out
}

/// Q8_0 row dot for `T` tokens (see [`q8_dot_body`]).
///
/// # Safety
/// NEON; `q[t].len() >= blocks * 32`, `d[t].len() >= blocks`.
#[target_feature(enable = "neon")]
unsafe fn q8_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    // SAFETY: forwarded contract.
    unsafe { q8_dot_body::<T, false>(row, q, d) }
}

/// [`q8_dot`] with `sdot` for the integer lanes.
///
/// # Safety
/// NEON + dot product; `q[t].len() >= blocks * 32`, `d[t].len() >= blocks`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn q8_sdot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    // SAFETY: forwarded contract.
    unsafe { q8_dot_body::<T, true>(row, q, d) }
}

// ---------------------------------------------------------------------------------------------
// Dense Q6_K (the scalar twin these must equal bit for bit is `scalar::q6_k_dot`)

/// Four i32 lanes of a 16-byte slice: lane `l` sums the products of bytes `4l..4l + 4`.
///
/// # Safety
/// NEON, and the dot-product extension when `DOT`.
#[inline(always)]
unsafe fn q6k_lanes4<const DOT: bool>(w: int8x16_t, x: int8x16_t) -> int32x4_t {
    if DOT {
        // SAFETY: register-only; NEON is this function's contract, and only q6k_sdot, which has
        // the dot-product extension, passes DOT.
        unsafe { sdot(vdupq_n_s32(0), w, x) }
    } else {
        // As in q8_lanes: exact i16 products, pair sums, then neighbouring pairs.
        // SAFETY: register-only NEON instructions; NEON is this function's contract.
        unsafe {
            let lo = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(x)));
            let hi = vpaddlq_s16(vmull_high_s8(w, x));
            vpaddq_s32(lo, hi)
        }
    }
}

/// `ggml_vec_dot_q6_K_q8_K` for `T` tokens sharing each block's unpacking, bit-identical to
/// `scalar::q6_k_dot`: per block the eight exact i32 lanes (lanes 0..4 from the first 16
/// bytes of every 32-element group, times that group's first scale; lanes 4..8 from the last
/// 16, times its second), converted to f32 and fused multiply-added with `d_x * d_w` into two
/// lane vectors, then the `hsum_float_8` order.
///
/// The body of [`q6k_dot`] and [`q6k_sdot`] (see [`q8_dot_body`] for why `inline(always)`).
#[inline(always)]
unsafe fn q6k_dot_body<const T: usize, const DOT: bool>(
    row: &[u8],
    q: [&[i8]; T],
    d: [&[f32]; T],
) -> [f32; T] {
    use bitnet_quantization::q6_k::{BLOCK_BYTES, D, QH, QK_K as QK, SCALES};
    let nb = row.len() / BLOCK_BYTES;
    for t in 0..T {
        debug_assert!(q[t].len() >= nb * QK && d[t].len() >= nb);
    }
    let rp = row.as_ptr();
    // SAFETY: NEON is this function's contract (it has no target feature of its own).
    let (m4, m3, off) = unsafe { (vdupq_n_u8(0x0F), vdupq_n_u8(3), vdupq_n_u8(32)) };
    // SAFETY: as above.
    let mut acc = [[unsafe { vdupq_n_f32(0.0) }; 2]; T];
    for b in 0..nb {
        // SAFETY: the caller guarantees the CPU features and that block b is in the row and in
        // every q[t] / d[t].
        unsafe {
            let blk = rp.add(b * BLOCK_BYTES);
            let h = vdup_n_u16((blk.add(D) as *const u16).read_unaligned());
            let dw = vgetq_lane_f32::<0>(f16x4_to_f32(h));
            let mut sc = [0i32; 16];
            for (i, s) in sc.iter_mut().enumerate() {
                *s = i32::from(*blk.add(SCALES + i) as i8);
            }
            let mut sum = [[vdupq_n_s32(0); 2]; T];
            for j in 0..2 {
                for half in 0..2 {
                    let o = 16 * half;
                    let l1 = load_u8(blk.add(64 * j + o));
                    let l2 = load_u8(blk.add(64 * j + 32 + o));
                    let hb = load_u8(blk.add(QH + 32 * j + o));
                    // Codes of elements 128j + 32k + o + 0..16 (k = 0..4) minus 32: the low
                    // nibbles of l1 / l2, then their high nibbles, each with two bits of hb.
                    let hi = |v: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(v, m3));
                    let w = [
                        vorrq_u8(vandq_u8(l1, m4), hi(hb)),
                        vorrq_u8(vandq_u8(l2, m4), hi(vshrq_n_u8::<2>(hb))),
                        vorrq_u8(vshrq_n_u8::<4>(l1), hi(vshrq_n_u8::<4>(hb))),
                        vorrq_u8(vshrq_n_u8::<4>(l2), hi(vshrq_n_u8::<6>(hb))),
                    ]
                    .map(|v| vreinterpretq_s8_u8(vsubq_u8(v, off)));
                    for (k, &wk) in w.iter().enumerate() {
                        let g = 4 * j + k;
                        let s = sc[2 * g + half];
                        for t in 0..T {
                            let x = vld1q_s8(q[t].as_ptr().add(b * QK + 32 * g + o));
                            let l = q6k_lanes4::<DOT>(wk, x);
                            sum[t][half] = vmlaq_n_s32(sum[t][half], l, s);
                        }
                    }
                }
            }
            for t in 0..T {
                let db = *d[t].get_unchecked(b) * dw;
                acc[t][0] = vfmaq_n_f32(acc[t][0], vcvtq_f32_s32(sum[t][0]), db);
                acc[t][1] = vfmaq_n_f32(acc[t][1], vcvtq_f32_s32(sum[t][1]), db);
            }
        }
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        // [a0+a4, a1+a5, a2+a6, a3+a7] -> [(a0+a4)+(a2+a6), (a1+a5)+(a3+a7)] -> their sum.
        // SAFETY: register-only NEON instructions; NEON is this function's contract.
        out[t] = unsafe {
            let v = vaddq_f32(acc[t][0], acc[t][1]);
            vaddv_f32(vadd_f32(vget_low_f32(v), vget_high_f32(v)))
        };
    }
    out
}

/// Q6_K row dot for `T` tokens (see [`q6k_dot_body`]).
///
/// # Safety
/// NEON; `q[t].len() >= blocks * 256`, `d[t].len() >= blocks`.
#[target_feature(enable = "neon")]
unsafe fn q6k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    // SAFETY: forwarded contract.
    unsafe { q6k_dot_body::<T, false>(row, q, d) }
}

/// [`q6k_dot`] with `sdot` for the integer lanes.
///
/// # Safety
/// NEON + dot product; `q[t].len() >= blocks * 256`, `d[t].len() >= blocks`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn q6k_sdot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
    // SAFETY: forwarded contract.
    unsafe { q6k_dot_body::<T, true>(row, q, d) }
}

impl BlockKernel for Neon {
    unsafe fn q8_0_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: forwarded contract (NEON).
        unsafe { q8_dot(row, q, d) }
    }

    unsafe fn q6_k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: forwarded contract (NEON).
        unsafe { q6k_dot(row, q, d) }
    }
}

impl BlockKernel for NeonDot {
    unsafe fn q8_0_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: forwarded contract (NEON + dot product).
        unsafe { q8_sdot(row, q, d) }
    }

    unsafe fn q6_k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T] {
        // SAFETY: forwarded contract (NEON + dot product).
        unsafe { q6k_sdot(row, q, d) }
    }
}

impl QuantizeKernel for Neon {
    unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        // SAFETY: forwarded contract (NEON).
        unsafe { quantize_row(x, q) }
    }
}

impl QuantizeKernel for NeonDot {
    unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        // SAFETY: forwarded contract (NEON + dot product implies NEON).
        unsafe { quantize_row(x, q) }
    }
}

/// The dense dots need no dot product: [`NeonDot`] runs [`Neon`]'s.
impl DenseKernel for NeonDot {
    unsafe fn dot<const T: usize>(
        row: &[u8],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [f32; T] {
        // SAFETY: forwarded contract (NEON + dot product implies NEON).
        unsafe { <Neon as DenseKernel>::dot::<T>(row, ty, x, buf) }
    }

    unsafe fn dot_pair<const T: usize>(
        rows: [&[u8]; 2],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [[f32; T]; 2] {
        // SAFETY: as above.
        unsafe { <Neon as DenseKernel>::dot_pair::<T>(rows, ty, x, buf) }
    }

    unsafe fn dot_quad<const T: usize>(
        rows: [&[u8]; 4],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [[f32; T]; 4] {
        // SAFETY: as above.
        unsafe { <Neon as DenseKernel>::dot_quad::<T>(rows, ty, x, buf) }
    }

    unsafe fn row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { <Neon as DenseKernel>::row_to_f32(row, ty, out) }
    }
}

// ---------------------------------------------------------------------------------------------
// f32 vector ops (lengths are checked by the public wrappers in ops.rs)

#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16 <= n.
            unsafe {
                *acc = vfmaq_f32(
                    *acc,
                    vld1q_f32(ap.add(i + 4 * j)),
                    vld1q_f32(bp.add(i + 4 * j)),
                );
            }
        }
        i += 16;
    }
    while i + 4 <= n {
        // SAFETY: i + 4 <= n.
        unsafe { acc[0] = vfmaq_f32(acc[0], vld1q_f32(ap.add(i)), vld1q_f32(bp.add(i))) };
        i += 4;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    for k in i..n {
        s += a[k] * b[k];
    }
    s
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n.
        unsafe {
            vst1q_f32(
                yp.add(i),
                vfmaq_n_f32(vld1q_f32(yp.add(i)), vld1q_f32(xp.add(i)), alpha),
            )
        };
        i += 4;
    }
    for k in i..n {
        y[k] += alpha * x[k];
    }
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len().min(weight.len()).min(out.len());
    if n == 0 {
        return;
    }
    // SAFETY: same feature.
    let ss = unsafe { dot(&x[..n], &x[..n]) };
    let r = 1.0 / (ss / n as f32 + eps).sqrt();
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n. Same op order as the scalar version: w * (x * r).
        unsafe {
            let v = vmulq_n_f32(vld1q_f32(x.as_ptr().add(i)), r);
            vst1q_f32(
                out.as_mut_ptr().add(i),
                vmulq_f32(vld1q_f32(weight.as_ptr().add(i)), v),
            );
        }
        i += 4;
    }
    for k in i..n {
        out[k] = weight[k] * (x[k] * r);
    }
}

/// e^x for 4 lanes: the Cephes `expf` polynomial of avx2.rs's `exp256`, same steps (about 1 ulp
/// on normal results; inf on overflow, through the subnormals to 0 on underflow; NaN kept).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    // fmax / fmin (not the -nm forms) propagate NaN.
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-104.0)), vdupq_n_f32(88.8));
    let n = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
    // r = x - n*ln2 in two steps (ln2 = 0.693359375 - 2.12194440e-4, the first part exact).
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
    // n in [-150, 128], applied as two factors 2^n1 * 2^n2 that are both normal.
    let ni = vcvtq_s32_f32(n);
    let n1 = vshrq_n_s32::<1>(ni);
    let n2 = vsubq_s32(ni, n1);
    let bias = vdupq_n_s32(127);
    let f1 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, bias)));
    let f2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, bias)));
    vmulq_f32(vmulq_f32(y, f1), f2)
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn softmax_inplace(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let p = x.as_mut_ptr();
    let mut mv = vdupq_n_f32(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n. fmaxnm skips NaN lanes like f32::max.
        mv = vmaxnmq_f32(unsafe { vld1q_f32(p.add(i)) }, mv);
        i += 4;
    }
    let mut max = vmaxnmvq_f32(mv);
    for &v in &x[i..] {
        max = v.max(max);
    }
    let maxv = vdupq_n_f32(max);
    let mut sv = vdupq_n_f32(0.0);
    i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n.
        unsafe {
            let e = exp4(vsubq_f32(vld1q_f32(p.add(i)), maxv));
            vst1q_f32(p.add(i), e);
            sv = vaddq_f32(sv, e);
        }
        i += 4;
    }
    let mut sum = vaddvq_f32(sv);
    for v in &mut x[i..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n.
        unsafe { vst1q_f32(p.add(i), vmulq_n_f32(vld1q_f32(p.add(i)), inv)) };
        i += 4;
    }
    for v in &mut x[i..] {
        *v *= inv;
    }
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn relu2_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let zero = vdupq_n_f32(0.0);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n. fmaxnm(g, 0) maps NaN to 0 like f32::max; same op order as scalar.
        unsafe {
            let r = vmaxnmq_f32(vld1q_f32(gate.as_ptr().add(i)), zero);
            let v = vmulq_f32(vmulq_f32(r, r), vld1q_f32(up.as_ptr().add(i)));
            vst1q_f32(out.as_mut_ptr().add(i), v);
        }
        i += 4;
    }
    for k in i..n {
        let r = gate[k].max(0.0);
        out[k] = r * r * up[k];
    }
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let one = vdupq_n_f32(1.0);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n.
        unsafe {
            let g = vld1q_f32(gate.as_ptr().add(i));
            let e = exp4(vnegq_f32(g));
            let v = vmulq_f32(
                vdivq_f32(g, vaddq_f32(one, e)),
                vld1q_f32(up.as_ptr().add(i)),
            );
            vst1q_f32(out.as_mut_ptr().add(i), v);
        }
        i += 4;
    }
    for k in i..n {
        out[k] = gate[k] / (1.0 + (-gate[k]).exp()) * up[k];
    }
}
