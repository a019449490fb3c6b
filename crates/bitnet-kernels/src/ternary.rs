//! Ternary weights x int8 activations: the [`TernaryMatrix`] operand of the matmul driver and
//! the public entry points.
//!
//! Weights keep bitnet.cpp's I2_S block layout per row (128 elements -> 32 bytes, MSB-first,
//! code = t + 1), so an I2_S tensor with `cols % 128 == 0` is used straight from the mmap.
//! The kernels compute `raw = sum code_k * q_k` with unsigned codes (what `maddubs` wants) and
//! subtract the precomputed `sum q_k`, giving the exact integer `sum t_k * q_k`. Padding is
//! code 1 against activation 0, so it contributes nothing to either sum.
//!
//! Why multiply-add and not lookup tables (bitnet.cpp TL1/TL2, T-MAC): a trial kernel, exact and
//! TL2-style (3 weights -> sign + 4-bit index, 1.67 bits/weight, `pshufb` over per-token i16
//! tables), was timed against these kernels (docs/lut-trial.md; its source is in git history).
//! With int8 activations the tables are i16, so every lookup needs two byte planes, a merge and
//! a sign fix: 15.2 vector ops per 128 weights on AVX2 against 15 for `maddubs`, 7 zmm ops
//! against 4 for `vpdpbusd`. Measured on the 2-core Xeon (1 thread): hot decode LUT/MAD
//! 1.07-1.09x (AVX2) and 0.86-0.93x (AVX-512), prefill (64 tokens) 0.71-1.00x; from DRAM it
//! gains 2-16% over a MAD kernel with the same software prefetch, about what its 16% fewer bytes
//! give. That is not worth a second weight layout today; the prefetch it taught us is in the
//! decode kernels (`TernaryKernel::dot_rows`).

use crate::activations::QuantizedActivations;
use crate::dispatch::with_kernel;
use crate::kernel::{Kernel, TernaryKernel};
use crate::matmul::{self, Tiles, DECODE_ROWS, PROMPT_ROWS};
use crate::pool::SharedOut;
use crate::{check_isa, detected_isa, Isa};
use bitnet_quantization::TernaryMatrix;

fn check_shapes(w: &TernaryMatrix, a: &QuantizedActivations, out_len: usize) {
    assert_eq!(
        a.cols(),
        w.cols(),
        "ternary_matmul: activation cols != weight cols"
    );
    assert_eq!(
        out_len,
        a.tokens() * w.rows(),
        "ternary_matmul: out.len() != tokens * rows"
    );
}

/// Where a driver call's exact integer results `sum_k t_k * q_k` go.
enum Sink<'a> {
    /// The BitLinear outputs `acc as f32 / s_x[t] * scale`.
    F32 {
        outs: Vec<SharedOut<f32>>,
        scales: &'a [f32],
    },
    /// The integers themselves, of a call with one matrix.
    I32(SharedOut<i32>),
}

/// One ternary matrix of a driver call: matrix `m` of the call's [`Sink`].
struct TernaryTiles<'a> {
    m: usize,
    w: &'a TernaryMatrix,
    a: &'a QuantizedActivations,
    sink: &'a Sink<'a>,
}

impl Tiles for TernaryTiles<'_> {
    type Scratch = ();

    fn rows(&self) -> usize {
        self.w.rows()
    }

    fn row_bytes(&self) -> usize {
        self.w.row_bytes()
    }

    /// Whole decode row tiles: a ragged chunk runs its tail rows one by one, and its tile
    /// prefetch reaches into the next chunk, which another thread may own.
    fn row_align(&self) -> usize {
        DECODE_ROWS
    }

    fn row_tiles(&self, tokens: usize, _nt: usize) -> &'static [usize] {
        if tokens == 1 {
            &[DECODE_ROWS]
        } else {
            &[PROMPT_ROWS]
        }
    }

    unsafe fn tile<K: Kernel, const R: usize, const T: usize>(
        &self,
        r: usize,
        t0: usize,
        _: &mut (),
    ) {
        let (w, a) = (self.w, self.a);
        let rows: [&[u8]; R] = std::array::from_fn(|j| w.row(r + j));
        let q: [&[i8]; T] = std::array::from_fn(|i| a.q(t0 + i));
        // Every q(t) is `stride` = row_bytes * 4 long; the caller guarantees the ISA.
        let acc: [[i32; T]; R] = if R == 1 {
            // SAFETY: see above.
            std::array::from_fn(|j| unsafe { <K as TernaryKernel>::dot::<T>(rows[j], q) })
        } else if a.tokens() == 1 {
            // SAFETY: see above (T == 1 when there is one token).
            let v = unsafe { K::dot_rows::<R>(rows, q[0]) };
            std::array::from_fn(|j| [v[j]; T])
        } else {
            // SAFETY: see above.
            unsafe { K::dot_tile::<R, T>(rows, q) }
        };
        let sums = &a.sums()[t0..t0 + T];
        let acc: [[i32; T]; R] = acc.map(|row| std::array::from_fn(|i| row[i] - sums[i]));
        match self.sink {
            Sink::F32 { outs, scales } => {
                let out = outs[self.m];
                // The tile's divisions four at a time ([`to_bitlinear`]): with one `divss` per
                // output this wrapper took 12% of a 16-sequence step on the KJV model (`perf`).
                let s: [f32; T] = std::array::from_fn(|i| scales[t0 + i]);
                let ws = w.scale();
                let v: [[f32; T]; R] = if T == 1 {
                    // One token (decode, or a prompt's last): the rows share its scale.
                    let col = to_bitlinear(acc.map(|row| row[0]), &[s[0]; R], ws);
                    std::array::from_fn(|j| [col[j]; T])
                } else {
                    acc.map(|row| to_bitlinear(row, &s, ws))
                };
                // SAFETY: the driver's tile contract (rows r.., tokens t0.. exist, this task's
                // alone).
                unsafe { write_tile(out, v, r, t0, w.rows()) }
            }
            Sink::I32(out) => {
                debug_assert_eq!(self.m, 0, "an I32 sink takes one matrix");
                // SAFETY: as above.
                unsafe { write_tile(*out, acc, r, t0, w.rows()) }
            }
        }
    }

    /// The decode step's rows: the kernel's row tiles fill the raw sums of up to
    /// [`DECODE_SPAN`] rows, then one pass turns them into outputs and stores them (one token:
    /// the rows are contiguous in the output and share the activation scale). Per four-row
    /// tile, the correction, the divisions and four scalar stores cost about as much as a
    /// 512-column row tile's kernel (`perf`, KJV shapes); here they run vectorised, off the
    /// kernels' path. The same operations per output as [`Self::tile`]: bit-identical.
    unsafe fn decode_rows<K: Kernel>(&self, r0: usize, r1: usize, _: &mut ()) {
        let (w, a) = (self.w, self.a);
        let q = a.q(0);
        let sum = a.sums()[0];
        let mut r = r0;
        while r < r1 {
            let n = (r1 - r).min(DECODE_SPAN);
            let mut acc = [0i32; DECODE_SPAN];
            let acc = &mut acc[..n];
            let rb = w.row_bytes();
            let rows = &w.data()[r * rb..][..n * rb];
            // SAFETY: the caller guarantees K's ISA; q is `stride` = row_bytes * 4 long; the
            // run's rows are `n` whole rows.
            unsafe { K::dot_run::<DECODE_ROWS>(rows, rb, q, acc) };
            for x in acc.iter_mut() {
                *x -= sum;
            }
            match self.sink {
                Sink::F32 { outs, scales } => {
                    let (s, ws) = (scales[0], w.scale());
                    // SAFETY: token 0's outputs of rows r..r + n, this task's alone (the
                    // driver's contract).
                    let out = unsafe { outs[self.m].slice_mut(r, n) };
                    for (o, &x) in out.iter_mut().zip(acc.iter()) {
                        *o = x as f32 / s * ws;
                    }
                }
                Sink::I32(out) => {
                    // SAFETY: as above.
                    unsafe { out.slice_mut(r, n) }.copy_from_slice(acc);
                }
            }
            r += n;
        }
    }
}

/// Rows a one-token call finishes together in [`TernaryTiles::decode_rows`].
const DECODE_SPAN: usize = 64;

/// Stores a tile `v[row][token]` of rows `r..` and tokens `t0..` into a token-major output of
/// `rows` rows.
///
/// # Safety
/// The rows and tokens are inside the output, and no other task writes these elements.
#[inline(always)]
unsafe fn write_tile<V: Copy, const R: usize, const T: usize>(
    out: SharedOut<V>,
    v: [[V; T]; R],
    r: usize,
    t0: usize,
    rows: usize,
) {
    for (j, row) in v.into_iter().enumerate() {
        for (i, x) in row.into_iter().enumerate() {
            // SAFETY: forwarded contract.
            unsafe { out.write((t0 + i) * rows + r + j, x) }
        }
    }
}

/// `acc[i] as f32 / s[i] * ws`, four at a time where SSE is there (x86-64's baseline; the
/// compiler leaves the element loop scalar): the same IEEE quotients and products.
#[inline(always)]
fn to_bitlinear<const T: usize>(acc: [i32; T], s: &[f32; T], ws: f32) -> [f32; T] {
    let mut v = acc.map(|x| x as f32);
    #[cfg(target_arch = "x86_64")]
    let done = {
        use std::arch::x86_64::{_mm_div_ps, _mm_loadu_ps, _mm_mul_ps, _mm_set1_ps, _mm_storeu_ps};
        for i in (0..T / 4 * 4).step_by(4) {
            // SAFETY: SSE is part of x86-64; i + 4 <= T for both arrays.
            unsafe {
                let q = _mm_div_ps(
                    _mm_loadu_ps(v.as_ptr().add(i)),
                    _mm_loadu_ps(s.as_ptr().add(i)),
                );
                _mm_storeu_ps(v.as_mut_ptr().add(i), _mm_mul_ps(q, _mm_set1_ps(ws)));
            }
        }
        T / 4 * 4
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (x, s) in v[done..].iter_mut().zip(&s[done..]) {
        *x = *x / s * ws;
    }
    v
}

/// Runs the driver over all rows of every matrix in `ws` (all of them read the same
/// activations), storing every output once into `sink`. `isa` and the shapes are checked by the
/// caller.
fn drive(isa: Isa, ws: &[&TernaryMatrix], a: &QuantizedActivations, sink: &Sink<'_>) {
    let jobs: Vec<TernaryTiles<'_>> = ws
        .iter()
        .enumerate()
        .map(|(m, w)| TernaryTiles { m, w, a, sink })
        .collect();
    // SAFETY: the public entry points checked the ISA with check_isa; `a` holds its tokens.
    with_kernel!(isa, K => unsafe { matmul::drive::<K, _>(&jobs, a.tokens()) })
}

/// [`ternary_matmul`] for several matrices that read the same activations (q/k/v, gate/up):
/// `outs[m][t * ws[m].rows() + r]`. One parallel pass instead of one per matrix, so a decode
/// step pays one fork/join for them and the small matrices (k, v) fill the gaps of the big one.
///
/// # Panics
/// If `ws.len() != outs.len()` or any matrix/output shape disagrees with `a`.
pub fn ternary_matmul_many(
    ws: &[&TernaryMatrix],
    a: &QuantizedActivations,
    outs: &mut [&mut [f32]],
) {
    ternary_matmul_many_with(detected_isa(), ws, a, outs)
}

/// [`ternary_matmul_many`] with an explicit ISA. Panics if the CPU does not support it.
pub fn ternary_matmul_many_with(
    isa: Isa,
    ws: &[&TernaryMatrix],
    a: &QuantizedActivations,
    outs: &mut [&mut [f32]],
) {
    check_isa(isa);
    assert_eq!(
        ws.len(),
        outs.len(),
        "ternary_matmul_many: matrices != outputs"
    );
    for (w, o) in ws.iter().zip(outs.iter()) {
        check_shapes(w, a, o.len());
    }
    let sink = Sink::F32 {
        outs: outs.iter_mut().map(|o| SharedOut::new(o)).collect(),
        scales: a.scales(),
    };
    drive(isa, ws, a, &sink);
}

/// `out[t * w.rows() + r] = (sum_k t_rk * q_tk) as f32 / s_x[t] * w.scale()`, the BitLinear
/// output for every token `t` and row `r`. Multithreaded over row chunks on the current
/// pool ([`crate::pool`]: an installed spinning pool, else rayon's); bit-identical for any
/// thread count.
///
/// # Panics
/// If `a.cols() != w.cols()` or `out.len() != a.tokens() * w.rows()`.
pub fn ternary_matmul(w: &TernaryMatrix, a: &QuantizedActivations, out: &mut [f32]) {
    ternary_matmul_with(detected_isa(), w, a, out)
}

/// [`ternary_matmul`] with an explicit ISA. Panics if the CPU does not support it.
pub fn ternary_matmul_with(isa: Isa, w: &TernaryMatrix, a: &QuantizedActivations, out: &mut [f32]) {
    ternary_matmul_many_with(isa, &[w], a, &mut [out])
}

/// The exact integer dot products `out[t * rows + r] = sum_k t_rk * q_tk` (what the float
/// output is computed from); the ISA comparison tests use this.
pub fn ternary_matmul_i32(w: &TernaryMatrix, a: &QuantizedActivations, out: &mut [i32]) {
    ternary_matmul_i32_with(detected_isa(), w, a, out)
}

/// [`ternary_matmul_i32`] with an explicit ISA. Panics if the CPU does not support it.
pub fn ternary_matmul_i32_with(
    isa: Isa,
    w: &TernaryMatrix,
    a: &QuantizedActivations,
    out: &mut [i32],
) {
    check_isa(isa);
    check_shapes(w, a, out.len());
    drive(isa, &[w], a, &Sink::I32(SharedOut::new(out)));
}

/// Reference: element by element from the definition, single-threaded, no tiling.
pub fn ternary_matmul_i32_scalar(w: &TernaryMatrix, a: &QuantizedActivations, out: &mut [i32]) {
    check_shapes(w, a, out.len());
    for t in 0..a.tokens() {
        let q = a.q(t);
        for r in 0..w.rows() {
            out[t * w.rows() + r] = (0..w.cols())
                .map(|k| i32::from(w.weight(r, k)) * i32::from(q[k]))
                .sum();
        }
    }
}

/// Reference float output: [`ternary_matmul_i32_scalar`] then `acc as f32 / s_x * scale`.
pub fn ternary_matmul_scalar(w: &TernaryMatrix, a: &QuantizedActivations, out: &mut [f32]) {
    let mut acc = vec![0i32; out.len()];
    ternary_matmul_i32_scalar(w, a, &mut acc);
    for (i, (o, v)) in out.iter_mut().zip(acc).enumerate() {
        *o = v as f32 / a.scales()[i / w.rows().max(1)] * w.scale();
    }
}
