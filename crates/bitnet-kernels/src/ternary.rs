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
use crate::kernel::Kernel;
use crate::matmul::{self, Tiles, DECODE_ROWS, PROMPT_ROWS, TOKEN_TILE};
use crate::pool::SharedOut;
use crate::{check_isa, detected_isa, Isa};
use bitnet_quantization::TernaryMatrix;
use std::ops::Range;

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

impl Sink<'_> {
    /// Finishes and stores the raw sums (`sum code * q`) of token `t` against rows `r..r +
    /// raw.len()` of matrix `m` (`w`): `raw - sum(q)` is the exact `sum t_k * q_k`, and the F32
    /// sink stores `acc as f32 / s_x * scale` as the reference does. Overwrites `raw`.
    ///
    /// # Safety
    /// Those outputs exist and no other task accesses them during the call.
    unsafe fn store(
        &self,
        m: usize,
        w: &TernaryMatrix,
        a: &QuantizedActivations,
        t: usize,
        r: usize,
        raw: &mut [i32],
    ) {
        let sum = a.sums()[t];
        for x in raw.iter_mut() {
            *x -= sum;
        }
        match self {
            Sink::F32 { outs, scales } => {
                let (s, ws) = (scales[t], w.scale());
                // SAFETY: the caller's contract.
                let out = unsafe { outs[m].slice_mut(t * w.rows() + r, raw.len()) };
                for (o, &x) in out.iter_mut().zip(raw.iter()) {
                    *o = x as f32 / s * ws;
                }
            }
            Sink::I32(out) => {
                debug_assert_eq!(m, 0, "an I32 sink takes one matrix");
                // SAFETY: as above.
                unsafe { out.slice_mut(t * w.rows() + r, raw.len()) }.copy_from_slice(raw);
            }
        }
    }
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

    unsafe fn run<K: Kernel>(&self, t0: usize, nt: usize, rows: Range<usize>, _: &mut ()) {
        debug_assert!((1..=TOKEN_TILE).contains(&nt), "token tile of {nt}");
        // SAFETY: forwarded contract.
        unsafe {
            match nt {
                4 => self.run_t::<K, 4>(t0, rows),
                3 => self.run_t::<K, 3>(t0, rows),
                2 => self.run_t::<K, 2>(t0, rows),
                _ => self.run_t::<K, 1>(t0, rows),
            }
        }
    }
}

impl TernaryTiles<'_> {
    /// Rows `rows` for tokens `t0..t0 + T`, in runs of up to [`RUN_ROWS`]: the kernel fills a
    /// run's raw sums in one call ([`crate::kernel::TernaryKernel::dot_run`]: tiles of
    /// [`DECODE_ROWS`] rows for one token, of [`PROMPT_ROWS`] for several), then one pass per
    /// token corrects, scales and stores them (a token's outputs of consecutive rows are
    /// contiguous). Finishing every tile on its own cost about as much as a 512-column tile's
    /// kernel (`perf`, KJV shapes: divisions on the kernel's path, scalar stores, a call per
    /// tile). Every output is `(raw - sum(q)) as f32 / s_x * scale`, as in the reference.
    ///
    /// # Safety
    /// As [`Tiles::run`].
    unsafe fn run_t<K: Kernel, const T: usize>(&self, t0: usize, rows: Range<usize>) {
        let (w, a) = (self.w, self.a);
        let rb = w.row_bytes();
        // Every q(t) is `stride` = row_bytes * 4 long; the caller guarantees the ISA.
        let q: [&[i8]; T] = std::array::from_fn(|i| a.q(t0 + i));
        let mut r = rows.start;
        while r < rows.end {
            let n = (rows.end - r).min(RUN_ROWS);
            let mut acc = [[0i32; T]; RUN_ROWS];
            let acc = &mut acc[..n];
            let run = &w.data()[r * rb..][..n * rb];
            // SAFETY: see above; `run` is `n` whole rows.
            unsafe {
                if T == 1 {
                    K::dot_run::<DECODE_ROWS, T>(run, rb, q, acc)
                } else {
                    K::dot_run::<PROMPT_ROWS, T>(run, rb, q, acc)
                }
            }
            for i in 0..T {
                // Token t's sums gathered contiguously, so the pass in `store` is vectorised (a
                // strided one was not: one `divss` per output cost pp512 9% on KJV).
                let mut col = [0i32; RUN_ROWS];
                let col = &mut col[..n];
                for (c, x) in col.iter_mut().zip(acc.iter()) {
                    *c = x[i];
                }
                // SAFETY: token t0 + i's outputs of rows r..r + n, this task's alone (the
                // driver's contract).
                unsafe { self.sink.store(self.m, w, a, t0 + i, r, col) };
            }
            r += n;
        }
    }
}

/// Rows whose raw sums a task collects before finishing them ([`TernaryTiles::run_t`]): whole
/// tiles of either size, so a run that starts on a chunk boundary ends on a tile boundary.
const RUN_ROWS: usize = 64;
const _: () = assert!(RUN_ROWS.is_multiple_of(DECODE_ROWS) && RUN_ROWS.is_multiple_of(PROMPT_ROWS));

/// Runs the driver over all rows of every matrix in `ws` (all of them read the same
/// activations), storing every output once into `sink`. `isa` and the shapes are checked by the
/// caller.
fn drive(isa: Isa, ws: &[&TernaryMatrix], a: &QuantizedActivations, sink: &Sink<'_>) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Amx && a.tokens() >= crate::x86::amx::MIN_TOKENS && a.stride() > 0 {
        use crate::x86::amx;
        let store = |m: usize, t: usize, r: usize, raw: &mut [i32]| {
            // SAFETY: the AMX driver hands each (matrix, token, row) over exactly once, from
            // the one task that computed it.
            unsafe { sink.store(m, ws[m], a, t, r, raw) }
        };
        // SAFETY: Isa::Amx is supported (checked by the entry points), which implies AVX2 and
        // AMX enabled for this process; the shapes are checked and the stride is positive.
        return unsafe { amx::ternary_matmul(ws, a, &store) };
    }
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
