//! The kernel traits: what one instruction set provides to the drivers. A leaf module: the
//! implementations (`scalar`, `x86/`, `arm/`, `wasm/`) depend on it, the drivers (`matmul`,
//! `ternary`, `dense`, `activations`) are generic over it, and `dispatch` picks one type per ISA,
//! so nothing here refers back to them.
//!
//! Every method is `unsafe` for the same reason: the caller guarantees that the CPU supports
//! the implementing type's ISA (the public entry points check it once with `check_isa`).

use bitnet_quantization::DenseType;

/// A ternary dot kernel: raw sums `sum_k code_k * q_t[k]` of packed I2_S rows (codes 0..=2,
/// before the `- sum(q)` correction) against `T` tokens' activations, each `w.len() / 32 * 128`
/// long.
pub(crate) trait TernaryKernel {
    /// # Safety
    /// The CPU must support the kernel's ISA; `q[t].len() >= w.len() * 4`.
    unsafe fn dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T];

    /// Raw sums of `R` packed rows (all the same length) against one token: decode steps (and
    /// a prompt's last token tile when it holds one token).
    /// Rows are short (640 bytes at 2B4T's 2560 columns), so one row per call leaves the
    /// accumulator chains latency-bound and pays the horizontal sum and the call per 640 bytes;
    /// several rows share every activation load and the set-up. ISAs without a multi-row
    /// kernel take the rows one by one.
    ///
    /// # Safety
    /// As [`Self::dot`], for every row.
    unsafe fn dot_rows<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
        let mut out = [0i32; R];
        for (o, row) in out.iter_mut().zip(w) {
            // SAFETY: forwarded contract.
            *o = unsafe { Self::dot::<1>(row, [q]) }[0];
        }
        out
    }

    /// Raw sums of the consecutive packed rows in `w` (each `row_bytes` long, one per element
    /// of `out`) against `T` tokens: [`Self::dot_rows`] tiles of `R` rows for one token,
    /// [`Self::dot_tile`] tiles for several, the rest one by one ([`dot_run_loop`]). ISAs
    /// override it only to expand that loop in a function with their own features, so the
    /// tiles inline into it and overlap, instead of each call waiting for its horizontal sums
    /// before the next one starts.
    ///
    /// # Safety
    /// As [`Self::dot`], for every row; `w.len() == out.len() * row_bytes`.
    unsafe fn dot_run<const R: usize, const T: usize>(
        w: &[u8],
        row_bytes: usize,
        q: [&[i8]; T],
        out: &mut [[i32; T]],
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            dot_run_loop!(
                R,
                T,
                w,
                row_bytes,
                q,
                out,
                rows: Self::dot_rows::<R>,
                tile: Self::dot_tile::<R, T>,
                one: Self::dot::<T>
            )
        }
    }

    /// Raw sums of `R` packed rows against `T` tokens, `[row][token]`: the prompt case. Rows
    /// and tokens both reuse each other's loads, so kernels that are bound by loading
    /// activations (one load per multiply-add instruction with a single row) gain from it;
    /// ISAs without a tile kernel take the rows one by one.
    ///
    /// # Safety
    /// As [`Self::dot`], for every row.
    unsafe fn dot_tile<const R: usize, const T: usize>(
        w: [&[u8]; R],
        q: [&[i8]; T],
    ) -> [[i32; T]; R] {
        // SAFETY: forwarded contract.
        w.map(|row| unsafe { Self::dot::<T>(row, q) })
    }
}

/// The loop of [`TernaryKernel::dot_run`] for `R` rows a tile and `T` tokens: `rows` (one
/// token) or `tile` (several) on each whole group of `R` rows, then `one` on the rest. A macro,
/// so that it expands inside an ISA's `#[target_feature]` function and the kernels, named as
/// functions rather than wrapped in closures, are called directly and inline: closures around
/// them were left out of line and called once per tile.
///
/// Must be used in an `unsafe` context whose contract is [`TernaryKernel::dot_run`]'s.
macro_rules! dot_run_loop {
    ($R:ident, $T:ident, $w:expr, $row_bytes:expr, $q:expr, $out:expr,
     rows: $rows:expr, tile: $tile:expr, one: $one:expr) => {{
        let (w, row_bytes, q, out): (&[u8], usize, [&[i8]; $T], &mut [[i32; $T]]) =
            ($w, $row_bytes, $q, $out);
        // The kernels size every row of a tile from its first: the rows must be whole.
        assert_eq!(w.len(), out.len() * row_bytes, "dot_run: rows != out");
        if row_bytes == 0 {
            // Rows of no columns (a zero-width matrix) sum to zero.
            out.fill([0; $T]);
        } else {
            let mut rows = w.chunks_exact(row_bytes);
            let mut tiles = out.chunks_exact_mut($R);
            for tile in &mut tiles {
                let mut group = [&w[..0]; $R];
                for (g, row) in group.iter_mut().zip(&mut rows) {
                    *g = row;
                }
                if $T == 1 {
                    let v = $rows(group, q[0]);
                    for (o, v) in tile.iter_mut().zip(v) {
                        *o = [v; $T];
                    }
                } else {
                    tile.copy_from_slice(&$tile(group, q));
                }
            }
            for (o, row) in tiles.into_remainder().iter_mut().zip(rows) {
                *o = $one(row, q);
            }
        }
    }};
}
pub(crate) use dot_run_loop;

/// Dense (F32 / F16 / BF16) dot kernels: the weights are widened to f32 inside the dot.
pub(crate) trait DenseKernel {
    /// `dot(row, x[t])` for `T` tokens; `buf` is scratch the kernel may use.
    ///
    /// # Safety
    /// The CPU must support the ISA; `row.len() == ty.row_bytes(x[t].len())`.
    unsafe fn dot<const T: usize>(
        row: &[u8],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [f32; T];

    /// [`Self::dot`] of `R` rows against one token (decode: the LM head): the same sum per row
    /// as `dot::<1>`, so a row's value does not depend on the rows beside it. A head that stays
    /// in cache (the KJV model's 4096 x 512) is bound by one row's FMA chains and its horizontal
    /// sum, not by memory; kernels that run several rows' chains side by side override this.
    ///
    /// # Safety
    /// As [`Self::dot`], for every row.
    unsafe fn dot_rows<const R: usize>(
        rows: [&[u8]; R],
        ty: DenseType,
        x: &[f32],
        buf: &mut Vec<f32>,
    ) -> [f32; R] {
        // SAFETY: forwarded contract.
        rows.map(|row| unsafe { Self::dot::<1>(row, ty, [x], buf)[0] })
    }

    /// [`Self::dot`] for two rows. A batch of tokens (prompt tiles, many sequences decoding
    /// together) makes the LM head compute-bound: kernels that can share each token's loads
    /// between two rows override this.
    ///
    /// # Safety
    /// As [`Self::dot`], for both rows.
    unsafe fn dot_pair<const T: usize>(
        rows: [&[u8]; 2],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [[f32; T]; 2] {
        // SAFETY: forwarded contract.
        unsafe {
            [
                Self::dot::<T>(rows[0], ty, x, buf),
                Self::dot::<T>(rows[1], ty, x, buf),
            ]
        }
    }

    /// [`Self::dot`] for four rows: kernels with enough registers for a 4 x 4 tile (AVX-512's
    /// 32) load each token's activations once for four rows, halving the activation traffic
    /// of [`Self::dot_pair`], which is what bounds a batched LM head once the activations of a
    /// token tile (4 x 2560 f32 for 2B4T) no longer fit the L1 cache.
    ///
    /// # Safety
    /// As [`Self::dot`], for every row.
    unsafe fn dot_quad<const T: usize>(
        rows: [&[u8]; 4],
        ty: DenseType,
        x: [&[f32]; T],
        buf: &mut Vec<f32>,
    ) -> [[f32; T]; 4] {
        // SAFETY: forwarded contract.
        let ([a, b], [c, d]) = unsafe {
            (
                Self::dot_pair::<T>([rows[0], rows[1]], ty, x, buf),
                Self::dot_pair::<T>([rows[2], rows[3]], ty, x, buf),
            )
        };
        [a, b, c, d]
    }

    /// One row as f32 (embedding lookup).
    ///
    /// # Safety
    /// The CPU must support the ISA; `row.len() == ty.row_bytes(out.len())`.
    unsafe fn row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]);
}

/// Dots of the block-quantized dense types against activations quantized to their partner
/// blocks (llama.cpp's `vec_dot_type`): `q[t]` holds token `t`'s int8 codes, `d[t]` its
/// per-block scales. Every implementation is bit-identical to the scalar twin (same integer
/// lanes, same FMA order; see `scalar`).
pub(crate) trait BlockKernel {
    /// Q8_0 weights x Q8_0 activations (`ggml_vec_dot_q8_0_q8_0`).
    ///
    /// # Safety
    /// The CPU supports the ISA; `row` is whole 34-byte blocks and every `q[t]` / `d[t]`
    /// covers them (32 codes, one scale per block).
    unsafe fn q8_0_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T];

    /// [`Self::q8_0_dot`] of `R` rows against one token, each row's value its bits alone (as
    /// [`crate::kernel::DenseKernel::dot_rows`], for a Q8_0 head that stays in cache).
    ///
    /// # Safety
    /// As [`Self::q8_0_dot`], for every row.
    unsafe fn q8_0_dot_rows<const R: usize>(rows: [&[u8]; R], q: &[i8], d: &[f32]) -> [f32; R] {
        // SAFETY: forwarded contract.
        rows.map(|row| unsafe { Self::q8_0_dot::<1>(row, [q], [d])[0] })
    }

    /// Q6_K weights x Q8_K activations (`ggml_vec_dot_q6_K_q8_K`).
    ///
    /// # Safety
    /// As [`Self::q8_0_dot`], with 210-byte blocks of 256 weights.
    unsafe fn q6_k_dot<const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T];
}

/// Per-token absmax int8 quantization of activations, bit-identical to
/// `bitnet_quantization::quantize_activation_row` on every ISA.
pub(crate) trait QuantizeKernel {
    /// Writes `q` (same length as `x`) and returns `(s_x, sum q)`.
    ///
    /// # Safety
    /// The CPU supports the ISA; `q.len() == x.len()`.
    unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32);
}

/// Everything one ISA provides; `dispatch::with_kernel!` names one such type per ISA.
pub(crate) trait Kernel: TernaryKernel + DenseKernel + BlockKernel + QuantizeKernel {}

impl<K: TernaryKernel + DenseKernel + BlockKernel + QuantizeKernel> Kernel for K {}
