//! Dense matrices ([`DenseMatrix`]: the token embedding and the (tied) LM head) on the CPU:
//! [`DenseMatrixExt`] adds the matmul and the row lookup to the type from `bitnet-quantization`.
//!
//! F32 / F16 / BF16 weights stay in their file type and are widened inside the dot product:
//! the LM head is the largest tensor of a BitNet model (656 MB in F16 for 2B4T) and decoding is
//! memory-bound, so widening it in memory would double the bytes read per token.
//!
//! Q8_0 and Q6_K follow llama.cpp's CPU path: every activation row is quantized once to the
//! weight type's partner blocks, and each weight row is dotted block by block with exact
//! integer lanes (`kernel::BlockKernel`).
//! - Q8_0 (blocks of 32 int8 weights with one f16 scale `d` first, 34 bytes): activations as
//!   ggml's AVX2 `quantize_row_q8_0` does (per 32 values `amax = max|x|`,
//!   `q = round_half_even(x * (127 / amax))`, `d = f16(amax / 127)`), dots as
//!   `ggml_vec_dot_q8_0_q8_0` on AVX2.
//! - Q6_K (210-byte blocks of 256 weights: `ql[128]`, `qh[64]`, 16 int8 sub-block scales, f16
//!   `d`): activations to Q8_K (`quantize_row_q8_K_ref` per 256 values: f32 `d`, int8 codes),
//!   dots as the AVX2 `ggml_vec_dot_q6_K_q8_K`.
//!
//! The integer lanes are exact, and every kernel (scalar, AVX2, NEON with and without `sdot`, and
//! for batches the AVX-512 VNNI Q8_0 kernel in `x86::q8_0_pairs`) performs the same float steps
//! in the same order, so they are bit-identical to each other
//! and to llama.cpp's AVX2 kernels (tests/dense_q6k.rs checks results produced by ggml's own
//! code). The one exception: a Q8_0 matrix on [`Isa::Amx`] takes the tile kernel of
//! `x86::amx_q8_0` at every token count (unless `BITNET_AMX_Q8_HEAD=0`), which sums the same
//! integer block dots in block order (within rounding of ggml's result).

use crate::dispatch::with_kernel;
use crate::kernel::{DenseKernel, Kernel};
use crate::matmul::{self, RowTiles, Tiles, TOKEN_TILE};
use crate::pool::SharedOut;
use crate::{check_isa, detected_isa, Isa};
use bitnet_quantization::q6_k::{self, quantize_q8_k_block};
use bitnet_quantization::q8_0::QK8_0;
use bitnet_quantization::{DenseMatrix, DenseType};
use half::f16;

/// Rows side by side for one token ([`DenseKernel::dot_rows`]): two rows' four FMA chains each
/// and their operands fill AVX2's 16 ymm registers (four rows measured slower, also with
/// AVX-512's 32 registers).
const DENSE_DECODE_ROWS: usize = 2;

/// Heads up to this size take one token's rows side by side: they stay in cache from one token
/// to the next (the KJV model's F16 head is 4 MiB), so a row's FMA chains and horizontal sum
/// bound them, and two rows at a time ran 4096 x 512 F16 in 100-105 us instead of 141 (one Zen 4
/// core). A head streamed from DRAM (2B4T's 657 MB) is bound by the stream instead, which one
/// row at a time keeps faster (31 ms against 39 with two rows, one core).
const CACHED_DENSE_BYTES: usize = 8 << 20;

/// The row tiles for one token of `m`: [`DENSE_DECODE_ROWS`] where `m` stays in cache (see
/// [`CACHED_DENSE_BYTES`]), else none (one row at a time). Both head operands (float and
/// block-quantized) decide by this.
fn one_token_row_tiles(m: &DenseMatrix) -> &'static [usize] {
    if m.nbytes() <= CACHED_DENSE_BYTES {
        &[DENSE_DECODE_ROWS]
    } else {
        &[]
    }
}

/// The CPU operations on a [`DenseMatrix`] (import the trait to call them as methods).
pub trait DenseMatrixExt {
    /// `out[t * rows + r] = dot(x[t], row r)` with f32 accumulation, over row chunks on the
    /// current pool (`pool`). For Q8_0 the activations are first quantized to Q8_0 blocks and
    /// the block dots are exact integers (llama.cpp's `vec_dot_q8_0_q8_0`); for Q6_K likewise
    /// with Q8_K activation blocks (`vec_dot_q6_K_q8_K`).
    ///
    /// # Panics
    /// If `x.len() != tokens * cols` or `out.len() != tokens * rows`.
    fn matmul(&self, x: &[f32], tokens: usize, out: &mut [f32]);

    /// Scalar reference of [`Self::matmul`] (same as `matmul_with(Isa::Scalar, ..)`).
    fn matmul_scalar(&self, x: &[f32], tokens: usize, out: &mut [f32]);

    /// [`Self::matmul`] with an explicit ISA. Panics if the CPU does not support it.
    fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize, out: &mut [f32]);

    /// Row `r` as f32 (embedding lookup), with the detected ISA's conversion.
    ///
    /// # Panics
    /// If `r >= rows` or `out.len() != cols`.
    fn row_f32(&self, r: usize, out: &mut [f32]);
}

impl DenseMatrixExt for DenseMatrix {
    fn matmul(&self, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.matmul_with(detected_isa(), x, tokens, out)
    }

    fn matmul_scalar(&self, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.matmul_with(Isa::Scalar, x, tokens, out)
    }

    fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize, out: &mut [f32]) {
        check_isa(isa);
        let (rows, cols) = (self.rows(), self.cols());
        assert_eq!(
            Some(x.len()),
            tokens.checked_mul(cols),
            "DenseMatrix::matmul: x.len() != tokens * cols"
        );
        assert_eq!(
            Some(out.len()),
            tokens.checked_mul(rows),
            "DenseMatrix::matmul: out.len() != tokens * rows"
        );
        if rows == 0 || tokens == 0 {
            return;
        }
        if cols == 0 {
            out.fill(0.0);
            return;
        }
        let out = SharedOut::new(out);
        match self.ty() {
            #[cfg(target_arch = "x86_64")]
            DenseType::Q8_0 if isa == Isa::Amx && crate::x86::amx_q8_0::enabled() => {
                use crate::x86::amx_q8_0::{Packed, Q8AmxTiles};
                let (q, d) = quantize_q8_0(x);
                let packed = Packed::new(q, d, tokens, cols / QK8_0);
                let job = Q8AmxTiles::<false> {
                    m: self,
                    packed: &packed,
                    out,
                };
                // SAFETY: check_isa verified Isa::Amx (AMX enabled for this process, with
                // AVX2, FMA and F16C); `packed` holds every token.
                with_kernel!(isa, K => unsafe { matmul::drive::<K, _>(&[job], tokens) })
            }
            #[cfg(target_arch = "x86_64")]
            DenseType::Q8_0 if tokens >= 2 && matches!(isa, Isa::Avx512Vnni | Isa::Amx) => {
                use crate::x86::q8_0_pairs::{pack, Q8PairTiles};
                let (q, d) = quantize_q8_0(x);
                let packed = pack(&q, &d, tokens, cols / QK8_0);
                let job = Q8PairTiles {
                    m: self,
                    packed: &packed,
                    tokens,
                    out,
                };
                // SAFETY: check_isa verified AVX-512 VNNI (which implies AVX2, FMA and F16C
                // here); `packed` holds every token's pairs.
                with_kernel!(isa, K => unsafe { matmul::drive::<K, _>(&[job], tokens) })
            }
            DenseType::Q8_0 => {
                let (q, d) = quantize_q8_0(x);
                let job = BlockTiles::<Q8Blocks> {
                    m: self,
                    q: &q,
                    d: &d,
                    out,
                    format: std::marker::PhantomData,
                };
                // SAFETY: check_isa verified the ISA; q / d hold `tokens` quantized rows.
                with_kernel!(isa, K => unsafe { matmul::drive::<K, _>(&[job], tokens) })
            }
            DenseType::Q6_K => {
                let (q, d) = quantize_q8_k(x);
                let job = BlockTiles::<Q6kBlocks> {
                    m: self,
                    q: &q,
                    d: &d,
                    out,
                    format: std::marker::PhantomData,
                };
                // SAFETY: as above.
                with_kernel!(isa, K => unsafe { matmul::drive::<K, _>(&[job], tokens) })
            }
            _ => {
                let job = DenseTiles { m: self, x, out };
                // SAFETY: check_isa verified the ISA; x holds `tokens` rows.
                with_kernel!(isa, K => unsafe { matmul::drive::<K, _>(&[job], tokens) })
            }
        }
    }

    fn row_f32(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows(),
            "DenseMatrix::row_f32: row {r} out of {}",
            self.rows()
        );
        assert_eq!(
            out.len(),
            self.cols(),
            "DenseMatrix::row_f32: out.len() != cols"
        );
        let (row, ty) = (self.row(r), self.ty());
        if ty.is_quantized() {
            return ty.row_to_f32(row, out);
        }
        // SAFETY: detected_isa only returns ISAs this CPU supports; lengths checked above.
        with_kernel!(detected_isa(), K => unsafe { <K as DenseKernel>::row_to_f32(row, ty, out) })
    }
}

/// An F32 / F16 / BF16 matrix in the driver: full token tiles take rows in fours
/// ([`crate::kernel::DenseKernel::dot_quad`]), then pairs, so each token's activations are
/// loaded once for all of them.
struct DenseTiles<'a> {
    m: &'a DenseMatrix,
    x: &'a [f32],
    out: SharedOut<f32>,
}

impl Tiles for DenseTiles<'_> {
    type Scratch = Vec<f32>;

    fn rows(&self) -> usize {
        self.m.rows()
    }

    fn row_bytes(&self) -> usize {
        self.m.row_bytes()
    }

    unsafe fn run<K: Kernel>(
        &self,
        t0: usize,
        nt: usize,
        rows: std::ops::Range<usize>,
        scratch: &mut Self::Scratch,
    ) {
        // SAFETY: forwarded contract.
        unsafe { matmul::run_tiles::<K, Self>(self, t0, nt, rows, scratch) }
    }
}

impl RowTiles for DenseTiles<'_> {
    fn row_tiles(&self, nt: usize) -> &'static [usize] {
        match nt {
            TOKEN_TILE => &[4, 2],
            // one token (decode): [`DenseKernel::dot_rows`], each row's bits as one at a time
            1 => one_token_row_tiles(self.m),
            _ => &[],
        }
    }

    unsafe fn tile<K: Kernel, const R: usize, const T: usize>(
        &self,
        r: usize,
        t0: usize,
        buf: &mut Vec<f32>,
    ) {
        let (m, cols) = (self.m, self.m.cols());
        let ty = m.ty();
        let x: [&[f32]; T] = std::array::from_fn(|i| &self.x[(t0 + i) * cols..][..cols]);
        let rows: [&[u8]; R] = std::array::from_fn(|j| m.row(r + j));
        // The kernels' contract, for all three calls: the caller guarantees K's ISA; every row
        // is row_bytes() = ty.row_bytes(cols) long and every x[t] is cols long.
        let v: [[f32; T]; R] = match R {
            _ if T == 1 => {
                // SAFETY: see above.
                let v = unsafe { <K as DenseKernel>::dot_rows::<R>(rows, ty, x[0], buf) };
                std::array::from_fn(|j| std::array::from_fn(|_| v[j]))
            }
            4 => {
                let rows = [rows[0], rows[1], rows[2], rows[3]];
                // SAFETY: see above.
                let v = unsafe { <K as DenseKernel>::dot_quad::<T>(rows, ty, x, buf) };
                std::array::from_fn(|j| v[j])
            }
            2 => {
                let rows = [rows[0], rows[1]];
                // SAFETY: see above.
                let v = unsafe { <K as DenseKernel>::dot_pair::<T>(rows, ty, x, buf) };
                std::array::from_fn(|j| v[j])
            }
            // SAFETY: see above.
            _ => std::array::from_fn(|j| unsafe {
                <K as DenseKernel>::dot::<T>(rows[j], ty, x, buf)
            }),
        };
        for (j, vj) in v.into_iter().enumerate() {
            for (i, v) in vj.into_iter().enumerate() {
                // SAFETY: (t0 + i, r + j) is inside `out` (tokens * rows long, checked by
                // matmul_with); rows r.. are this task's alone and each output is written once.
                unsafe { self.out.write((t0 + i) * m.rows() + r + j, v) }
            }
        }
    }
}

/// A block-quantized row format and its [`crate::kernel::BlockKernel`] dot.
trait BlockFormat {
    /// Weights per block.
    const QK: usize;

    /// # Safety
    /// As [`crate::kernel::BlockKernel::q8_0_dot`].
    unsafe fn dot<K: Kernel, const T: usize>(row: &[u8], q: [&[i8]; T], d: [&[f32]; T])
        -> [f32; T];

    /// `R` rows against one token, each row's value its `dot` bits.
    ///
    /// # Safety
    /// As [`Self::dot`], for every row.
    unsafe fn dot_rows<K: Kernel, const R: usize>(
        rows: [&[u8]; R],
        q: &[i8],
        d: &[f32],
    ) -> [f32; R] {
        // SAFETY: forwarded contract.
        rows.map(|row| unsafe { Self::dot::<K, 1>(row, [q], [d])[0] })
    }
}

struct Q8Blocks;

impl BlockFormat for Q8Blocks {
    const QK: usize = QK8_0;

    unsafe fn dot<K: Kernel, const T: usize>(
        row: &[u8],
        q: [&[i8]; T],
        d: [&[f32]; T],
    ) -> [f32; T] {
        // SAFETY: forwarded contract.
        unsafe { K::q8_0_dot::<T>(row, q, d) }
    }

    unsafe fn dot_rows<K: Kernel, const R: usize>(
        rows: [&[u8]; R],
        q: &[i8],
        d: &[f32],
    ) -> [f32; R] {
        // SAFETY: forwarded contract.
        unsafe { K::q8_0_dot_rows::<R>(rows, q, d) }
    }
}

struct Q6kBlocks;

impl BlockFormat for Q6kBlocks {
    const QK: usize = q6_k::QK_K;

    unsafe fn dot<K: Kernel, const T: usize>(
        row: &[u8],
        q: [&[i8]; T],
        d: [&[f32]; T],
    ) -> [f32; T] {
        // SAFETY: forwarded contract.
        unsafe { K::q6_k_dot::<T>(row, q, d) }
    }
}

/// A Q8_0 / Q6_K matrix in the driver, with activations already quantized to its partner
/// blocks: `q[t * cols + k]`, `d[t * cols / QK + b]`. A row at a time (the integer kernels
/// share each weight block's unpacking between the tokens of a tile).
struct BlockTiles<'a, F> {
    m: &'a DenseMatrix,
    q: &'a [i8],
    d: &'a [f32],
    out: SharedOut<f32>,
    format: std::marker::PhantomData<F>,
}

impl<F: BlockFormat + Sync> Tiles for BlockTiles<'_, F> {
    type Scratch = ();

    fn rows(&self) -> usize {
        self.m.rows()
    }

    fn row_bytes(&self) -> usize {
        self.m.row_bytes()
    }

    unsafe fn run<K: Kernel>(
        &self,
        t0: usize,
        nt: usize,
        rows: std::ops::Range<usize>,
        scratch: &mut Self::Scratch,
    ) {
        // SAFETY: forwarded contract.
        unsafe { matmul::run_tiles::<K, Self>(self, t0, nt, rows, scratch) }
    }
}

impl<F: BlockFormat + Sync> RowTiles for BlockTiles<'_, F> {
    fn row_tiles(&self, nt: usize) -> &'static [usize] {
        // one token: [`BlockFormat::dot_rows`], as DenseTiles does
        if nt == 1 {
            one_token_row_tiles(self.m)
        } else {
            &[]
        }
    }

    unsafe fn tile<K: Kernel, const R: usize, const T: usize>(
        &self,
        r: usize,
        t0: usize,
        _: &mut (),
    ) {
        let (m, cols) = (self.m, self.m.cols());
        let nb = cols / F::QK;
        let q: [&[i8]; T] = std::array::from_fn(|i| &self.q[(t0 + i) * cols..][..cols]);
        let d: [&[f32]; T] = std::array::from_fn(|i| &self.d[(t0 + i) * nb..][..nb]);
        if T == 1 {
            let rows: [&[u8]; R] = std::array::from_fn(|j| m.row(r + j));
            // SAFETY: as below, for every row.
            let v = unsafe { F::dot_rows::<K, R>(rows, q[0], d[0]) };
            for (j, v) in v.into_iter().enumerate() {
                // SAFETY: (t0, r + j) is in bounds and written by this task only.
                unsafe { self.out.write(t0 * m.rows() + r + j, v) }
            }
            return;
        }
        for j in 0..R {
            // SAFETY: the caller guarantees K's ISA; the row is whole blocks and q / d cover
            // them for every token.
            let v = unsafe { F::dot::<K, T>(m.row(r + j), q, d) };
            for (i, v) in v.into_iter().enumerate() {
                // SAFETY: (t0 + i, r + j) is in bounds and written by this task only.
                unsafe { self.out.write((t0 + i) * m.rows() + r + j, v) }
            }
        }
    }
}

/// ggml's `quantize_row_q8_0` (the AVX2 one llama.cpp runs here; `_mm256_round_ps` with
/// `_MM_ROUND_NEAREST` rounds half to even): codes, and the f16-rounded block scales as f32.
fn quantize_q8_0(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    debug_assert!(x.len().is_multiple_of(QK8_0));
    let mut q = vec![0i8; x.len()];
    let mut d = Vec::with_capacity(x.len() / QK8_0);
    for (xb, qb) in x.chunks_exact(QK8_0).zip(q.chunks_exact_mut(QK8_0)) {
        let amax = xb.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        d.push(f16::from_f32(amax / 127.0).to_f32());
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = (v * id).round_ties_even() as i8;
        }
    }
    (q, d)
}

/// ggml's `quantize_row_q8_K` (on x86 the reference, `quantize_row_q8_K_ref`) per block.
fn quantize_q8_k(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; x.len()];
    let d = x
        .chunks_exact(q6_k::QK_K)
        .zip(q.chunks_exact_mut(q6_k::QK_K))
        .map(|(xb, qb)| quantize_q8_k_block(xb, qb))
        .collect();
    (q, d)
}
