//! The packed weight matrices a model is made of, as validated views of file bytes: ternary
//! [`TernaryMatrix`] (I2_S row layout) and [`DenseMatrix`] (F32 / F16 / BF16 / Q8_0 / Q6_K:
//! embeddings and the LM head).
//!
//! They live here, below the kernels, so that model loading and export (`bitnet-models`) need
//! only the formats, and every backend (the CPU kernels in `bitnet-kernels`, the CUDA one) takes
//! the same types. Construction checks shapes and codes, since the bytes come from files; the
//! arithmetic on them is the backends' business. The small accessors are `#[inline]`: the
//! kernels call them for every row (and the ternary matmul for every output) from another crate,
//! where they were field reads before the types moved here.

use crate::{i2s, q6_k, q8_0, QuantError};
use bitnet_common::Storage;

/// Errors building a matrix from model data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatrixError {
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("size overflow computing {0}")]
    Overflow(&'static str),
    #[error(transparent)]
    Quant(#[from] QuantError),
}

fn shape_err(what: &'static str, expected: usize, got: usize) -> MatrixError {
    MatrixError::Shape {
        what,
        expected,
        got,
    }
}

/// Largest supported ternary `cols`: keeps `sum code * q` (|.| <= 2 * 128 * cols) inside i32,
/// which is what makes every integer kernel exact.
pub const MAX_COLS: usize = 1 << 22;

/// Ternary matrix `[rows x cols]`, one per-tensor multiplicative scale.
///
/// Rows keep bitnet.cpp's I2_S block layout (128 elements -> 32 bytes, MSB-first, code = t + 1),
/// so an I2_S tensor with `cols % 128 == 0` is used straight from the mmap; a row's padding is
/// code 1 (weight 0).
#[derive(Clone, Debug)]
pub struct TernaryMatrix {
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Storage,
    scale: f32,
}

/// True if any 2-bit field is 3. Checked on load so a corrupt file cannot make the kernels
/// compute with a weight of +2.
fn has_code_3(bytes: &[u8]) -> bool {
    let (words, tail) = bytes.split_at(bytes.len() / 8 * 8);
    let word_hit = words.chunks_exact(8).any(|c| {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        w & (w >> 1) & 0x5555_5555_5555_5555 != 0
    });
    word_hit || tail.iter().any(|&b| b & (b >> 1) & 0x55 != 0)
}

/// Packed rows straight from outside (a file, a copy): a code 3 is an error that says where.
fn reject_code_3(bytes: &[u8]) -> Result<(), MatrixError> {
    if has_code_3(bytes) {
        // Cold path: unpacking locates the bad code for the error message.
        let mut codes = vec![0i8; bytes.len() * 4];
        i2s::unpack_into(bytes, &mut codes)?;
    }
    Ok(())
}

impl TernaryMatrix {
    fn check_dims(rows: usize, cols: usize) -> Result<(usize, usize), MatrixError> {
        if cols > MAX_COLS {
            return Err(shape_err("ternary matrix cols (max)", MAX_COLS, cols));
        }
        let row_bytes = i2s::packed_len(cols);
        let total = rows
            .checked_mul(row_bytes)
            .ok_or(MatrixError::Overflow("ternary matrix bytes"))?;
        Ok((row_bytes, total))
    }

    /// Packs row-major codes in {-1, 0, 1}.
    pub fn from_codes(
        rows: usize,
        cols: usize,
        codes: &[i8],
        scale: f32,
    ) -> Result<Self, MatrixError> {
        let (row_bytes, total) = Self::check_dims(rows, cols)?;
        let n = rows
            .checked_mul(cols)
            .ok_or(MatrixError::Overflow("ternary matrix elements"))?;
        if codes.len() != n {
            return Err(shape_err("ternary codes (rows * cols)", n, codes.len()));
        }
        crate::check_codes(codes)?;
        let mut data = vec![0u8; total];
        if cols > 0 {
            for (src, dst) in codes
                .chunks_exact(cols)
                .zip(data.chunks_exact_mut(row_bytes))
            {
                i2s::pack_into(src, dst);
            }
        }
        Ok(TernaryMatrix {
            rows,
            cols,
            row_bytes,
            data: Storage::from_vec(data),
            scale,
        })
    }

    /// Wraps an I2_S tensor as stored in a GGUF file (packed codes; a trailing scale tail may be
    /// included and is ignored: pass the scale from `i2s::scale`). With `cols % 128 == 0` the
    /// rows are already in kernel layout and the storage is shared, not copied. Otherwise the
    /// flattened 128-blocks straddle rows, so the codes are unpacked and repacked per row.
    pub fn from_i2s(
        rows: usize,
        cols: usize,
        data: Storage,
        scale: f32,
    ) -> Result<Self, MatrixError> {
        let (row_bytes, total) = Self::check_dims(rows, cols)?;
        let n = rows
            .checked_mul(cols)
            .ok_or(MatrixError::Overflow("ternary matrix elements"))?;
        let need = i2s::packed_len(n);
        if data.len() < need {
            return Err(shape_err("i2s tensor bytes", need, data.len()));
        }
        if cols.is_multiple_of(i2s::BLOCK) {
            debug_assert_eq!(need, total);
            let data = data
                .slice(0, total)
                .ok_or(MatrixError::Overflow("i2s slice"))?;
            reject_code_3(&data)?;
            Ok(TernaryMatrix {
                rows,
                cols,
                row_bytes,
                data,
                scale,
            })
        } else {
            let mut codes = vec![0i8; n];
            i2s::unpack_into(&data, &mut codes)?;
            Self::from_codes(rows, cols, &codes, scale)
        }
    }

    /// The same matrix over `data`, which must hold this matrix's packed rows (e.g. a copy of
    /// [`Self::data`] placed elsewhere in memory, such as a huge-page arena). Validated again,
    /// since the bytes could come from anywhere.
    pub fn with_data(&self, data: Storage) -> Result<Self, MatrixError> {
        if data.len() != self.nbytes() {
            return Err(shape_err("ternary matrix bytes", self.nbytes(), data.len()));
        }
        reject_code_3(&data)?;
        Ok(TernaryMatrix {
            data,
            ..self.clone()
        })
    }

    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }

    #[inline]
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Bytes per packed row (`ceil(cols / 128) * 32`).
    #[inline]
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Bytes of packed weights (what one matmul streams from memory).
    #[inline]
    pub fn nbytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// The packed weights, `rows * row_bytes` bytes.
    #[inline]
    pub fn data(&self) -> &Storage {
        &self.data
    }

    /// Packed bytes of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..][..self.row_bytes]
    }

    /// Ternary codes of row `r` (for tests and export).
    pub fn codes_row(&self, r: usize) -> Vec<i8> {
        let mut out = vec![0i8; self.cols];
        // Rows were validated (code 3 rejected) at construction, so this cannot fail.
        let _ = i2s::unpack_into(self.row(r), &mut out);
        out
    }

    /// The weight (-1, 0 or 1) at column `k` of row `r`, straight from the layout: what the
    /// reference kernels compute with.
    ///
    /// # Panics
    /// If `r >= rows` or `k >= row_bytes * 4`.
    #[inline]
    pub fn weight(&self, r: usize, k: usize) -> i8 {
        let b = self.row(r)[(k / i2s::BLOCK) * i2s::BLOCK_BYTES + k % 32];
        ((b >> (6 - 2 * ((k % i2s::BLOCK) / 32))) & 3) as i8 - 1
    }
}

/// Element type of a [`DenseMatrix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseType {
    F32,
    F16,
    BF16,
    /// ggml `Q8_0`: blocks of 32 weights, an f16 scale then 32 x i8 (34 bytes). Columns must
    /// be a multiple of 32; the CPU matmul quantizes activations to Q8_0 too.
    Q8_0,
    /// ggml `Q6_K`: blocks of 256 weights in 6 bits with 16 int8 sub-block scales and an f16
    /// scale (210 bytes, 6.5625 bits per weight). Columns must be a multiple of 256; the CPU
    /// matmul quantizes activations to Q8_K.
    #[allow(non_camel_case_types)]
    Q6_K,
}

impl DenseType {
    /// Elements per block (1 for the float types, 32 for Q8_0, 256 for Q6_K).
    #[inline]
    pub fn block_size(self) -> usize {
        match self {
            DenseType::Q8_0 => q8_0::QK8_0,
            DenseType::Q6_K => q6_k::QK_K,
            _ => 1,
        }
    }

    /// Bytes per block.
    #[inline]
    pub fn block_bytes(self) -> usize {
        match self {
            DenseType::F32 => 4,
            DenseType::F16 | DenseType::BF16 => 2,
            DenseType::Q8_0 => q8_0::BLOCK_BYTES,
            DenseType::Q6_K => q6_k::BLOCK_BYTES,
        }
    }

    /// Whether a matmul quantizes the activations and dots integer blocks (Q8_0, Q6_K)
    /// instead of widening the weights to f32.
    #[inline]
    pub fn is_quantized(self) -> bool {
        matches!(self, DenseType::Q8_0 | DenseType::Q6_K)
    }

    /// Bytes of a row of `cols` elements; `None` if `cols` is not a multiple of
    /// [`Self::block_size`] or the size overflows.
    #[inline]
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_size()) {
            return None;
        }
        (cols / self.block_size()).checked_mul(self.block_bytes())
    }

    /// One row of this type (`row.len() == self.row_bytes(out.len())`) as f32: the portable
    /// conversion, exact for every type (the CPU kernels' SIMD versions give the same values).
    ///
    /// # Panics
    /// If the lengths disagree.
    pub fn row_to_f32(self, row: &[u8], out: &mut [f32]) {
        assert_eq!(
            Some(row.len()),
            self.row_bytes(out.len()),
            "DenseType::row_to_f32: row bytes != out.len() elements"
        );
        match self {
            DenseType::F32 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            DenseType::F16 => crate::float::f16_to_f32(row, out),
            DenseType::BF16 => crate::float::bf16_to_f32(row, out),
            DenseType::Q8_0 => q8_0::decode_row(row, out),
            DenseType::Q6_K => {
                let (blocks, _) = row.as_chunks::<{ q6_k::BLOCK_BYTES }>();
                let (outs, _) = out.as_chunks_mut::<{ q6_k::QK_K }>();
                for (b, o) in blocks.iter().zip(outs) {
                    q6_k::decode_block(b, o);
                }
            }
        }
    }
}

/// Row-major `[rows x cols]` matrix in a [`Storage`] (little-endian, possibly unaligned bytes),
/// kept in its file type: the LM head is the largest tensor of a BitNet model (656 MB in F16 for
/// 2B4T) and decoding is memory-bound, so the kernels convert inside the dot product.
#[derive(Clone, Debug)]
pub struct DenseMatrix {
    rows: usize,
    cols: usize,
    ty: DenseType,
    data: Storage,
}

impl DenseMatrix {
    /// Checks that `data` holds exactly `rows * cols` elements of `ty` (for the block types,
    /// that `cols` is a multiple of the block size: 32 for Q8_0, 256 for Q6_K).
    pub fn new(
        rows: usize,
        cols: usize,
        ty: DenseType,
        data: Storage,
    ) -> Result<Self, MatrixError> {
        let bs = ty.block_size();
        if !cols.is_multiple_of(bs) {
            return Err(QuantError::NotMultiple {
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
            .ok_or(MatrixError::Overflow("dense matrix bytes"))?;
        if data.len() != n {
            return Err(shape_err("dense matrix bytes", n, data.len()));
        }
        Ok(DenseMatrix {
            rows,
            cols,
            ty,
            data,
        })
    }

    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }

    #[inline]
    pub fn ty(&self) -> DenseType {
        self.ty
    }

    #[inline]
    pub fn nbytes(&self) -> usize {
        self.data.len()
    }

    #[inline]
    pub fn data(&self) -> &Storage {
        &self.data
    }

    /// Bytes per row.
    #[inline]
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.block_bytes()
    }

    /// The bytes of row `r`.
    ///
    /// # Panics
    /// If `r >= rows`.
    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes()..][..self.row_bytes()]
    }

    /// Row `r` as f32 with the portable conversion ([`DenseType::row_to_f32`]): for export and
    /// tests; the forward pass uses the CPU kernels' vectorized `row_f32`.
    ///
    /// # Panics
    /// If `r >= rows` or `out.len() != cols`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows,
            "DenseMatrix::dequantize_row: row {r} out of {}",
            self.rows
        );
        assert_eq!(
            out.len(),
            self.cols,
            "DenseMatrix::dequantize_row: out.len() != cols"
        );
        self.ty.row_to_f32(self.row(r), out)
    }
}
