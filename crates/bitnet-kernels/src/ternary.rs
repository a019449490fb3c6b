//! Ternary weights x int8 activations.
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
//! decode kernels ([`TernaryKernel::dot_rows`]).

use crate::{check_isa, detected_isa, row_chunk, Isa, KernelError, SharedOut};
use bitnet_common::Storage;
use bitnet_quantization::i2s;

/// Elements per packed block (I2_S).
pub(crate) const BLOCK: usize = i2s::BLOCK;
const BLOCK_BYTES: usize = i2s::BLOCK_BYTES;

/// Largest supported `cols`: keeps `sum code * q` (|.| <= 2 * 128 * cols) inside i32, which is
/// what makes every kernel exact.
pub const MAX_COLS: usize = 1 << 22;

/// Tokens that share one pass over a weight row: enough to amortize the 2-bit unpacking, few
/// enough that codes + accumulators stay in the 16 ymm registers.
const TOKEN_TILE: usize = 4;

/// Weight bytes per parallel task, sized to stay in L2 while all token tiles stream over them.
const CHUNK_BYTES: usize = 256 * 1024;

/// Below this many weight-bytes x tokens a call runs on the calling thread: a fork/join
/// costs more than the work.
const SERIAL_WORK: usize = 64 * 1024;

/// Ternary matrix `[rows x cols]`, one per-tensor multiplicative scale.
#[derive(Clone, Debug)]
pub struct TernaryMatrix {
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Storage,
    scale: f32,
}

fn shape_err(what: &'static str, expected: usize, got: usize) -> KernelError {
    KernelError::Shape {
        what,
        expected,
        got,
    }
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
fn reject_code_3(bytes: &[u8]) -> Result<(), KernelError> {
    if has_code_3(bytes) {
        // Cold path: unpacking locates the bad code for the error message.
        let mut codes = vec![0i8; bytes.len() * 4];
        i2s::unpack_into(bytes, &mut codes)?;
    }
    Ok(())
}

impl TernaryMatrix {
    fn check_dims(rows: usize, cols: usize) -> Result<(usize, usize), KernelError> {
        if cols > MAX_COLS {
            return Err(shape_err("ternary matrix cols (max)", MAX_COLS, cols));
        }
        let row_bytes = i2s::packed_len(cols);
        let total = rows
            .checked_mul(row_bytes)
            .ok_or(KernelError::Overflow("ternary matrix bytes"))?;
        Ok((row_bytes, total))
    }

    /// Packs row-major codes in {-1, 0, 1}.
    pub fn from_codes(
        rows: usize,
        cols: usize,
        codes: &[i8],
        scale: f32,
    ) -> Result<Self, KernelError> {
        let (row_bytes, total) = Self::check_dims(rows, cols)?;
        let n = rows
            .checked_mul(cols)
            .ok_or(KernelError::Overflow("ternary matrix elements"))?;
        if codes.len() != n {
            return Err(shape_err("ternary codes (rows * cols)", n, codes.len()));
        }
        if let Some(index) = codes.iter().position(|c| !(-1..=1).contains(c)) {
            return Err(bitnet_quantization::QuantError::InvalidCode {
                index,
                code: codes[index],
            }
            .into());
        }
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
    ) -> Result<Self, KernelError> {
        let (row_bytes, total) = Self::check_dims(rows, cols)?;
        let n = rows
            .checked_mul(cols)
            .ok_or(KernelError::Overflow("ternary matrix elements"))?;
        let need = i2s::packed_len(n);
        if data.len() < need {
            return Err(shape_err("i2s tensor bytes", need, data.len()));
        }
        if cols.is_multiple_of(BLOCK) {
            debug_assert_eq!(need, total);
            let data = data
                .slice(0, total)
                .ok_or(KernelError::Overflow("i2s slice"))?;
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
    pub fn with_data(&self, data: Storage) -> Result<Self, KernelError> {
        if data.len() != self.nbytes() {
            return Err(shape_err("ternary matrix bytes", self.nbytes(), data.len()));
        }
        reject_code_3(&data)?;
        Ok(TernaryMatrix {
            data,
            ..self.clone()
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Bytes per packed row (`ceil(cols / 128) * 32`).
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Bytes of packed weights (what one matmul streams from memory).
    pub fn nbytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// The packed weights, `rows * row_bytes` bytes.
    pub fn data(&self) -> &Storage {
        &self.data
    }

    /// Packed bytes of row `r`.
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

    /// Code-minus-one at column `k` of row `r`, straight from the layout (reference kernels).
    fn weight(&self, r: usize, k: usize) -> i32 {
        let b = self.row(r)[(k / BLOCK) * BLOCK_BYTES + k % 32];
        i32::from((b >> (6 - 2 * ((k % BLOCK) / 32))) & 3) - 1
    }
}

/// Per-token int8 activations (absmax, transformers `ActQuant`), each token padded with zeros to
/// a multiple of 128 so the kernels never need a tail loop. Reuse one value across calls: its
/// buffers only grow.
#[derive(Clone, Debug, Default)]
pub struct QuantizedActivations {
    tokens: usize,
    cols: usize,
    stride: usize,
    q: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

impl QuantizedActivations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `tokens` rows of `cols` floats (row-major `x`), bit-identical to
    /// `bitnet_quantization::quantize_activation_row` on every ISA.
    ///
    /// # Panics
    /// If `x.len() != tokens * cols`.
    pub fn quantize(&mut self, x: &[f32], tokens: usize, cols: usize) {
        self.quantize_with(detected_isa(), x, tokens, cols)
    }

    /// [`Self::quantize`] with an explicit ISA (tests, benchmarks).
    ///
    /// # Panics
    /// If `x.len() != tokens * cols` or `isa` is not supported by this CPU.
    pub fn quantize_with(&mut self, isa: Isa, x: &[f32], tokens: usize, cols: usize) {
        check_isa(isa);
        assert_eq!(
            Some(x.len()),
            tokens.checked_mul(cols),
            "QuantizedActivations: x.len() != tokens * cols"
        );
        let stride = cols.div_ceil(BLOCK) * BLOCK;
        self.tokens = tokens;
        self.cols = cols;
        self.stride = stride;
        // `clear` + `resize` reuses capacity, so steady-state decoding allocates nothing.
        self.q.clear();
        self.q.resize(tokens * stride, 0);
        self.scales.clear();
        self.sums.clear();
        if cols == 0 {
            self.scales
                .resize(tokens, 127.0 / bitnet_quantization::SCALE_EPS);
            self.sums.resize(tokens, 0);
            return;
        }
        self.scales.resize(tokens, 0.0);
        self.sums.resize(tokens, 0);
        let (scales, sums) = (
            SharedOut::new(&mut self.scales),
            SharedOut::new(&mut self.sums),
        );
        let row = |t: usize, qt: &mut [i8]| {
            let (xt, qt) = (&x[t * cols..][..cols], &mut qt[..cols]);
            let (s, sum) = match isa.vector_base() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: check_isa verified AVX2/FMA/F16C (the AVX-512 ISAs imply them).
                Isa::Avx2 => unsafe { crate::avx2::quantize_row(xt, qt) },
                #[cfg(target_arch = "aarch64")]
                // SAFETY: check_isa verified NEON (NeonDotprod implies it).
                Isa::Neon => unsafe { crate::neon::quantize_row(xt, qt) },
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                // SAFETY: built with +simd128 (the only way Simd128 is supported).
                Isa::Simd128 => unsafe { crate::wasm_simd128::quantize_row(xt, qt) },
                _ => {
                    let s = bitnet_quantization::quantize_activation_row(xt, qt);
                    (s, qt.iter().map(|&v| i32::from(v)).sum())
                }
            };
            // SAFETY: token t's scale and sum are written by this call only.
            unsafe {
                scales.write(t, s);
                sums.write(t, sum);
            }
        };
        // A prompt or a batch of sequences quantizes many rows: spread them over the pool
        // (one row is too little work to pay for the loop).
        if tokens >= crate::PAR_ROWS && crate::pool::current_num_threads() > 1 {
            crate::pool::for_each_chunk_mut(&mut self.q, stride, row);
        } else {
            for (t, qt) in self.q.chunks_exact_mut(stride).enumerate() {
                row(t, qt);
            }
        }
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Elements per token in [`Self::q`], `cols` rounded up to a multiple of 128.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Quantized values of token `t` including the zero padding (`stride` values).
    pub fn q(&self, t: usize) -> &[i8] {
        &self.q[t * self.stride..][..self.stride]
    }

    /// `s_x` per token: dequantized activation = q / s_x.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Sum of q per token (the correction for unsigned weight codes).
    pub fn sums(&self) -> &[i32] {
        &self.sums
    }
}

/// A ternary dot kernel for one ISA: raw sums `sum_k code_k * q_t[k]` of one packed weight row
/// against `T` tokens' activations, each `w.len() / 32 * 128` long.
pub(crate) trait TernaryKernel {
    /// # Safety
    /// The CPU must support the kernel's ISA; `q[t].len() >= w.len() * 4`.
    unsafe fn dot<const T: usize>(w: &[u8], q: [&[i8]; T]) -> [i32; T];

    /// Raw sums of `R` packed rows (all the same length) against one token: the decode case.
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

/// Rows per decode kernel call ([`TernaryKernel::dot_rows`]).
const ROW_TILE: usize = 4;

/// Rows per prompt kernel call ([`TernaryKernel::dot_tile`]).
const PROMPT_ROWS: usize = 2;

fn check_shapes(w: &TernaryMatrix, a: &QuantizedActivations, out_len: usize) {
    assert_eq!(
        a.cols, w.cols,
        "ternary_matmul: activation cols != weight cols"
    );
    assert_eq!(
        out_len,
        a.tokens * w.rows,
        "ternary_matmul: out.len() != tokens * rows"
    );
}

/// Rows `r0..r1` for every token, token tiles outermost so the chunk's weights are read from
/// memory once and then reused from cache by every tile.
///
/// # Safety
/// The CPU must support `K`'s ISA.
unsafe fn rows_kernel<K: TernaryKernel>(
    w: &TernaryMatrix,
    a: &QuantizedActivations,
    r0: usize,
    r1: usize,
    emit: &(impl Fn(usize, usize, i32) + Sync),
) {
    if a.tokens == 1 {
        let q = a.q(0);
        let mut r = r0;
        while r + ROW_TILE <= r1 {
            // SAFETY: the caller guarantees the ISA; q is `stride` = row_bytes * 4 long.
            let acc = unsafe { K::dot_rows::<ROW_TILE>(std::array::from_fn(|i| w.row(r + i)), q) };
            for (i, v) in acc.into_iter().enumerate() {
                emit(0, r + i, v - a.sums[0]);
            }
            r += ROW_TILE;
        }
        for r in r..r1 {
            // SAFETY: as above.
            let [v] = unsafe { K::dot::<1>(w.row(r), [q]) };
            emit(0, r, v - a.sums[0]);
        }
        return;
    }
    let mut t0 = 0;
    while t0 < a.tokens {
        let nt = (a.tokens - t0).min(TOKEN_TILE);
        let mut r = r0;
        while r < r1 {
            let nr = if r + PROMPT_ROWS <= r1 {
                PROMPT_ROWS
            } else {
                1
            };
            macro_rules! tile {
                ($rows:literal, $($i:literal),+) => {{
                    // SAFETY: the caller guarantees the ISA; every q(t) is `stride` =
                    // row_bytes * 4 long.
                    let acc = unsafe {
                        K::dot_tile::<$rows, { [$($i),+].len() }>(
                            std::array::from_fn(|j| w.row(r + j)),
                            [$(a.q(t0 + $i)),+],
                        )
                    };
                    for (j, row) in acc.into_iter().enumerate() {
                        for (i, v) in row.into_iter().enumerate() {
                            emit(t0 + i, r + j, v - a.sums[t0 + i]);
                        }
                    }
                }};
            }
            match (nr, nt) {
                (PROMPT_ROWS, 4) => tile!(2, 0, 1, 2, 3),
                (PROMPT_ROWS, 3) => tile!(2, 0, 1, 2),
                (PROMPT_ROWS, 2) => tile!(2, 0, 1),
                (PROMPT_ROWS, _) => tile!(2, 0),
                (_, 4) => tile!(1, 0, 1, 2, 3),
                (_, 3) => tile!(1, 0, 1, 2),
                (_, 2) => tile!(1, 0, 1),
                _ => tile!(1, 0),
            }
            r += nr;
        }
        t0 += nt;
    }
}

/// Runs the tiled kernel over all rows of every matrix in `ws` (all of them read the same
/// activations), in one parallel pass on the current pool (`crate::pool`), calling
/// `emit(matrix, token, row, sum_k t_k * q_k)` exactly once per output.
fn drive(
    isa: Isa,
    ws: &[&TernaryMatrix],
    a: &QuantizedActivations,
    emit: impl Fn(usize, usize, usize, i32) + Sync,
) {
    if a.tokens == 0 {
        return;
    }
    // Chunk sizes are fixed here, on the calling thread, so every task maps indices the same way.
    let chunks: Vec<(usize, usize)> = ws
        .iter()
        .map(|w| {
            // Whole row tiles: a ragged chunk runs its tail rows one by one, and its tile
            // prefetch reaches into the next chunk, which another thread may own.
            let chunk = row_chunk(w.rows, w.row_bytes, CHUNK_BYTES).next_multiple_of(ROW_TILE);
            (chunk, w.rows.div_ceil(chunk))
        })
        .collect();
    let n_chunks: usize = chunks.iter().map(|&(_, n)| n).sum();
    if n_chunks == 0 {
        return;
    }
    let run = |mut c: usize| {
        // Matrix `m` owns the next `chunks[m].1` chunk indices; a handful of matrices at most.
        let mut m = 0;
        while c >= chunks[m].1 {
            c -= chunks[m].1;
            m += 1;
        }
        let (w, chunk) = (ws[m], chunks[m].0);
        let r0 = c * chunk;
        let r1 = (r0 + chunk).min(w.rows);
        let emit = |t: usize, r: usize, v: i32| emit(m, t, r, v);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the public entry points checked the ISA with check_isa.
            Isa::Avx2 => unsafe { rows_kernel::<crate::avx2::Avx2>(w, a, r0, r1, &emit) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above (AVX-512 F/BW/VL/VNNI checked).
            Isa::Avx512Vnni => unsafe {
                rows_kernel::<crate::avx512::Avx512Vnni<false>>(w, a, r0, r1, &emit)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above (AVX-512 F/BW/VL/VNNI checked).
            Isa::Avx512Vnni256 => unsafe {
                rows_kernel::<crate::avx512::Avx512Vnni<true>>(w, a, r0, r1, &emit)
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above (NEON checked).
            Isa::Neon => unsafe { rows_kernel::<crate::neon::Neon>(w, a, r0, r1, &emit) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above (NEON + dot product checked).
            Isa::NeonDotprod => unsafe { rows_kernel::<crate::neon::NeonDot>(w, a, r0, r1, &emit) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            // SAFETY: as above (built with +simd128).
            Isa::Simd128 => unsafe {
                rows_kernel::<crate::wasm_simd128::Simd128>(w, a, r0, r1, &emit)
            },
            // SAFETY: scalar code runs anywhere.
            _ => unsafe { rows_kernel::<crate::scalar::Scalar>(w, a, r0, r1, &emit) },
        }
    };
    let work: usize = ws.iter().map(|w| w.nbytes()).sum::<usize>() * a.tokens;
    if crate::pool::current_num_threads() <= 1 || work < SERIAL_WORK {
        (0..n_chunks).for_each(run);
    } else {
        crate::pool::parallel_for(n_chunks, run);
    }
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
    let scales = &a.scales;
    let ptrs: Vec<SharedOut<f32>> = outs.iter_mut().map(|o| SharedOut::new(o)).collect();
    drive(isa, ws, a, |m, t, r, acc| {
        let w = ws[m];
        // SAFETY: t < tokens and r < rows of matrix m, and drive emits each (m, t, r) once.
        unsafe { ptrs[m].write(t * w.rows + r, acc as f32 / scales[t] * w.scale) }
    });
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
    let rows = w.rows;
    let out = SharedOut::new(out);
    drive(isa, &[w], a, |_, t, r, acc| {
        // SAFETY: as in ternary_matmul_with.
        unsafe { out.write(t * rows + r, acc) }
    });
}

/// Reference: element by element from the definition, single-threaded, no tiling.
pub fn ternary_matmul_i32_scalar(w: &TernaryMatrix, a: &QuantizedActivations, out: &mut [i32]) {
    check_shapes(w, a, out.len());
    for t in 0..a.tokens {
        let q = a.q(t);
        for r in 0..w.rows {
            out[t * w.rows + r] = (0..w.cols).map(|k| w.weight(r, k) * i32::from(q[k])).sum();
        }
    }
}

/// Reference float output: [`ternary_matmul_i32_scalar`] then `acc as f32 / s_x * scale`.
pub fn ternary_matmul_scalar(w: &TernaryMatrix, a: &QuantizedActivations, out: &mut [f32]) {
    let mut acc = vec![0i32; out.len()];
    ternary_matmul_i32_scalar(w, a, &mut acc);
    for (i, (o, v)) in out.iter_mut().zip(acc).enumerate() {
        *o = v as f32 / a.scales[i / w.rows.max(1)] * w.scale;
    }
}
