//! Dense F32 / F16 / BF16 / Q8_0 / Q6_K matrices: the token embedding and the (tied) LM head.
//!
//! The weights stay in their file type and are converted on the fly inside the dot product:
//! the LM head is the largest tensor of a BitNet model (656 MB in F16 for 2B4T) and decoding is
//! memory-bound, so widening it to f32 in memory would double the bytes read per token.

use crate::{check_isa, detected_isa, row_chunk, Isa, KernelError, SharedOut};
use bitnet_common::Storage;

/// Element type of a [`DenseMatrix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseType {
    F32,
    F16,
    BF16,
    /// ggml `Q8_0`: blocks of 32 weights, an f16 scale then 32 x i8 (34 bytes). Columns must
    /// be a multiple of 32; the matmul quantizes activations to Q8_0 too (see `dense_q8`).
    Q8_0,
    /// ggml `Q6_K`: blocks of 256 weights in 6 bits with 16 int8 sub-block scales and an f16
    /// scale (210 bytes, 6.5625 bits per weight). Columns must be a multiple of 256; the matmul
    /// quantizes activations to Q8_K (see `dense_q6k`).
    #[allow(non_camel_case_types)]
    Q6_K,
}

impl DenseType {
    /// Elements per block (1 for the float types, 32 for Q8_0, 256 for Q6_K).
    pub fn block_size(self) -> usize {
        match self {
            DenseType::Q8_0 => crate::dense_q8::QK,
            DenseType::Q6_K => crate::dense_q6k::QK,
            _ => 1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DenseType::F32 => 4,
            DenseType::F16 | DenseType::BF16 => 2,
            DenseType::Q8_0 => crate::dense_q8::BLOCK_BYTES,
            DenseType::Q6_K => crate::dense_q6k::BLOCK_BYTES,
        }
    }

    /// Whether the matmul quantizes the activations and dots integer blocks (Q8_0, Q6_K)
    /// instead of widening the weights to f32.
    pub fn is_quantized(self) -> bool {
        matches!(self, DenseType::Q8_0 | DenseType::Q6_K)
    }

    /// Bytes of a row of `cols` elements; `None` if `cols` is not a multiple of
    /// [`Self::block_size`] or the size overflows.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_size()) {
            return None;
        }
        (cols / self.block_size()).checked_mul(self.block_bytes())
    }
}

/// Row-major `[rows x cols]` matrix in a [`Storage`] (little-endian, possibly unaligned bytes).
#[derive(Clone, Debug)]
pub struct DenseMatrix {
    rows: usize,
    cols: usize,
    ty: DenseType,
    data: Storage,
}

/// A Q8_0 / Q6_K row as f32 (`out.len()` elements): embedding lookup, and the widening fallback
/// that keeps the [`DenseKernel`] impls total for types [`DenseMatrix`] never routes to them.
pub(crate) fn quantized_row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]) {
    debug_assert!(ty.is_quantized(), "{ty:?} is not a block type");
    match ty {
        DenseType::Q6_K => crate::dense_q6k::row_to_f32(row, out),
        _ => crate::dense_q8::row_to_f32(row, out),
    }
}

/// Tokens per pass over a weight row.
const TOKEN_TILE: usize = 4;
const CHUNK_BYTES: usize = 256 * 1024;
const SERIAL_WORK: usize = 64 * 1024;

/// Dense dot kernels for one ISA.
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

    /// # Safety
    /// The CPU must support the ISA; `row.len() == ty.row_bytes(out.len())`.
    unsafe fn row_to_f32(row: &[u8], ty: DenseType, out: &mut [f32]);
}

impl DenseMatrix {
    /// Checks that `data` holds exactly `rows * cols` elements of `ty` (for the block types,
    /// that `cols` is a multiple of the block size: 32 for Q8_0, 256 for Q6_K).
    pub fn new(
        rows: usize,
        cols: usize,
        ty: DenseType,
        data: Storage,
    ) -> Result<Self, KernelError> {
        let bs = ty.block_size();
        if !cols.is_multiple_of(bs) {
            return Err(bitnet_quantization::QuantError::NotMultiple {
                what: match ty {
                    DenseType::Q6_K => "Q6_K dense matrix columns",
                    _ => "Q8_0 dense matrix columns",
                },
                n: cols,
                multiple: bs,
            }
            .into());
        }
        let n = ty
            .row_bytes(cols)
            .and_then(|rb| rb.checked_mul(rows))
            .ok_or(KernelError::Overflow("dense matrix bytes"))?;
        if data.len() != n {
            return Err(KernelError::Shape {
                what: "dense matrix bytes",
                expected: n,
                got: data.len(),
            });
        }
        Ok(DenseMatrix {
            rows,
            cols,
            ty,
            data,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn ty(&self) -> DenseType {
        self.ty
    }

    pub fn nbytes(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &Storage {
        &self.data
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.block_bytes()
    }

    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes()..][..self.row_bytes()]
    }

    /// Row `r` as f32 (embedding lookup).
    ///
    /// # Panics
    /// If `r >= rows` or `out.len() != cols`.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows,
            "DenseMatrix::row_f32: row {r} out of {}",
            self.rows
        );
        assert_eq!(
            out.len(),
            self.cols,
            "DenseMatrix::row_f32: out.len() != cols"
        );
        if self.ty.is_quantized() {
            return quantized_row_to_f32(self.row(r), self.ty, out);
        }
        match detected_isa().vector_base() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detected_isa only returns an AVX2-family ISA when the CPU supports AVX2;
            // lengths checked.
            Isa::Avx2 => unsafe {
                <crate::avx2::Avx2 as DenseKernel>::row_to_f32(self.row(r), self.ty, out)
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: detected_isa only returns a NEON ISA when the CPU has NEON; lengths checked.
            Isa::Neon => unsafe {
                <crate::neon::Neon as DenseKernel>::row_to_f32(self.row(r), self.ty, out)
            },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            // SAFETY: built with +simd128; lengths checked.
            Isa::Simd128 => unsafe {
                <crate::wasm_simd128::Simd128 as DenseKernel>::row_to_f32(self.row(r), self.ty, out)
            },
            // SAFETY: scalar code runs anywhere; lengths checked.
            _ => unsafe {
                <crate::scalar::Scalar as DenseKernel>::row_to_f32(self.row(r), self.ty, out)
            },
        }
    }

    /// `out[t * rows + r] = dot(x[t], row r)` with f32 accumulation, over row chunks on the
    /// current pool (`pool`). For Q8_0 the activations are first quantized to Q8_0 blocks and the
    /// block dots are exact integers (llama.cpp's `vec_dot_q8_0_q8_0`); for Q6_K likewise with
    /// Q8_K activation blocks (`vec_dot_q6_K_q8_K`).
    ///
    /// # Panics
    /// If `x.len() != tokens * cols` or `out.len() != tokens * rows`.
    pub fn matmul(&self, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.matmul_with(detected_isa(), x, tokens, out)
    }

    /// Scalar reference of [`Self::matmul`] (same as `matmul_with(Isa::Scalar, ..)`).
    pub fn matmul_scalar(&self, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.matmul_with(Isa::Scalar, x, tokens, out)
    }

    /// [`Self::matmul`] with an explicit ISA. Panics if the CPU does not support it.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize, out: &mut [f32]) {
        check_isa(isa);
        assert_eq!(
            Some(x.len()),
            tokens.checked_mul(self.cols),
            "DenseMatrix::matmul: x.len() != tokens * cols"
        );
        assert_eq!(
            Some(out.len()),
            tokens.checked_mul(self.rows),
            "DenseMatrix::matmul: out.len() != tokens * rows"
        );
        if self.rows == 0 || tokens == 0 {
            return;
        }
        if self.cols == 0 {
            out.fill(0.0);
            return;
        }
        match self.ty {
            DenseType::Q8_0 => {
                return crate::dense_q8::matmul(
                    &self.data, self.rows, self.cols, isa, x, tokens, out,
                )
            }
            DenseType::Q6_K => {
                return crate::dense_q6k::matmul(
                    &self.data, self.rows, self.cols, isa, x, tokens, out,
                )
            }
            _ => {}
        }
        let chunk = row_chunk(self.rows, self.row_bytes(), CHUNK_BYTES);
        let shared = SharedOut::new(out);
        let run = |c: usize| {
            let r0 = c * chunk;
            let r1 = (r0 + chunk).min(self.rows);
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: check_isa verified the CPU; shapes checked above.
                Isa::Avx512Vnni | Isa::Avx512Vnni256 => unsafe {
                    self.rows_kernel::<crate::avx512::Avx512Dense>(x, tokens, r0, r1, shared)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: check_isa verified the CPU; shapes checked above.
                Isa::Avx2 => unsafe {
                    self.rows_kernel::<crate::avx2::Avx2>(x, tokens, r0, r1, shared)
                },
                #[cfg(target_arch = "aarch64")]
                // SAFETY: check_isa verified NEON (the dense kernels need no dot product).
                Isa::Neon | Isa::NeonDotprod => unsafe {
                    self.rows_kernel::<crate::neon::Neon>(x, tokens, r0, r1, shared)
                },
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                // SAFETY: check_isa verified SIMD128 (built with it).
                Isa::Simd128 => unsafe {
                    self.rows_kernel::<crate::wasm_simd128::Simd128>(x, tokens, r0, r1, shared)
                },
                // SAFETY: scalar code runs anywhere.
                _ => unsafe {
                    self.rows_kernel::<crate::scalar::Scalar>(x, tokens, r0, r1, shared)
                },
            }
        };
        let n_chunks = self.rows.div_ceil(chunk);
        if crate::pool::current_num_threads() <= 1 || self.nbytes() * tokens < SERIAL_WORK {
            (0..n_chunks).for_each(run);
        } else {
            crate::pool::parallel_for(n_chunks, run);
        }
    }

    /// Rows `r0..r1` for all tokens, token tiles outermost (weights of the chunk stay in cache).
    ///
    /// # Safety
    /// The CPU must support `K`'s ISA; shapes checked by the caller; no other task writes
    /// rows `r0..r1` of `out`.
    unsafe fn rows_kernel<K: DenseKernel>(
        &self,
        x: &[f32],
        tokens: usize,
        r0: usize,
        r1: usize,
        out: SharedOut<f32>,
    ) {
        let cols = self.cols;
        let xt = |t: usize| &x[t * cols..][..cols];
        let mut buf = Vec::new();
        let mut t0 = 0;
        while t0 < tokens {
            let nt = (tokens - t0).min(TOKEN_TILE);
            // SAFETY: t0 + i < tokens and r < r1 <= rows, so the index is inside `out`
            // (tokens * rows long, checked by matmul_with); rows r0..r1 are this task's alone
            // and each (token, row) is written once.
            let put =
                |r: usize, i: usize, v: f32| unsafe { out.write((t0 + i) * self.rows + r, v) };
            let mut r = r0;
            if nt == TOKEN_TILE {
                // Full tiles take rows in fours, then pairs: each token's activations are
                // loaded once for all of them.
                while r + 4 <= r1 {
                    let x = [xt(t0), xt(t0 + 1), xt(t0 + 2), xt(t0 + 3)];
                    let rows = [
                        self.row(r),
                        self.row(r + 1),
                        self.row(r + 2),
                        self.row(r + 3),
                    ];
                    // SAFETY: the caller guarantees K's ISA; every row is row_bytes() =
                    // ty.row_bytes(cols) long and every x[t] is cols long.
                    let v = unsafe { K::dot_quad::<4>(rows, self.ty, x, &mut buf) };
                    for (j, vj) in v.into_iter().enumerate() {
                        vj.into_iter()
                            .enumerate()
                            .for_each(|(i, v)| put(r + j, i, v));
                    }
                    r += 4;
                }
                while r + 2 <= r1 {
                    let x = [xt(t0), xt(t0 + 1), xt(t0 + 2), xt(t0 + 3)];
                    // SAFETY: as for dot_quad.
                    let v = unsafe {
                        K::dot_pair::<4>([self.row(r), self.row(r + 1)], self.ty, x, &mut buf)
                    };
                    for (j, vj) in v.into_iter().enumerate() {
                        vj.into_iter()
                            .enumerate()
                            .for_each(|(i, v)| put(r + j, i, v));
                    }
                    r += 2;
                }
            }
            for r in r..r1 {
                let row = self.row(r);
                // SAFETY: as for dot_quad.
                unsafe {
                    match nt {
                        4 => K::dot::<4>(
                            row,
                            self.ty,
                            [xt(t0), xt(t0 + 1), xt(t0 + 2), xt(t0 + 3)],
                            &mut buf,
                        )
                        .into_iter()
                        .enumerate()
                        .for_each(|(i, v)| put(r, i, v)),
                        3 => K::dot::<3>(row, self.ty, [xt(t0), xt(t0 + 1), xt(t0 + 2)], &mut buf)
                            .into_iter()
                            .enumerate()
                            .for_each(|(i, v)| put(r, i, v)),
                        2 => K::dot::<2>(row, self.ty, [xt(t0), xt(t0 + 1)], &mut buf)
                            .into_iter()
                            .enumerate()
                            .for_each(|(i, v)| put(r, i, v)),
                        _ => put(r, 0, K::dot::<1>(row, self.ty, [xt(t0)], &mut buf)[0]),
                    }
                }
            }
            t0 += nt;
        }
    }
}
