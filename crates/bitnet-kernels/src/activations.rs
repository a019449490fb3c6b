//! Per-token int8 activations, the partner of the ternary weights.

use crate::dispatch::with_kernel;
use crate::kernel::QuantizeKernel;
use crate::pool::{self, SharedOut};
use crate::{check_isa, detected_isa, Isa};
use bitnet_quantization::i2s;

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
        if !self.shape(x.len(), tokens, cols) {
            return;
        }
        // SAFETY: check_isa verified the ISA; every x[t] is cols long.
        with_kernel!(isa, K => unsafe {
            self.quantize_rows(|t, qt| K::quantize_row(&x[t * cols..][..cols], qt))
        });
    }

    /// [`Self::quantize`] of rows that `produce(t, row)` first writes into `x` (`tokens` rows of
    /// `cols`): for a batch, one parallel pass in which each row is quantized by the core that
    /// produced it (a norm, an activation), instead of a second pass that reads every row back
    /// from the core that wrote it.
    ///
    /// # Panics
    /// If `x.len() != tokens * cols`.
    pub fn quantize_produced(
        &mut self,
        x: &mut [f32],
        tokens: usize,
        cols: usize,
        produce: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        if !self.shape(x.len(), tokens, cols) {
            return;
        }
        let rows = SharedOut::new(x);
        let row = |t: usize| {
            // SAFETY: row t is inside x (tokens x cols, checked by shape) and only the call for
            // token t touches it; x is mutably borrowed for the whole call.
            let xt = unsafe { rows.slice_mut(t * cols, cols) };
            produce(t, xt);
            xt
        };
        // SAFETY: detected_isa is supported; each row is cols long.
        with_kernel!(detected_isa(), K => unsafe {
            self.quantize_rows(|t, qt| K::quantize_row(row(t), qt))
        });
    }

    /// [`Self::quantize_produced`] where producing row `t` of `x` also updates row `t` of
    /// `src` (same shape): `produce(t, src_row, x_row)`. The forward pass adds the residual
    /// into the stream and normalizes it in one pass, on the core that then quantizes the row.
    ///
    /// # Panics
    /// If `x.len() != tokens * cols` or `src.len() != x.len()`.
    pub fn quantize_produced_from(
        &mut self,
        src: &mut [f32],
        x: &mut [f32],
        tokens: usize,
        cols: usize,
        produce: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
    ) {
        assert_eq!(
            src.len(),
            x.len(),
            "QuantizedActivations: src.len() != x.len()"
        );
        let src = SharedOut::new(src);
        self.quantize_produced(x, tokens, cols, |t, xt| {
            // SAFETY: row t of src (inside it: same length as x, which `quantize_produced`
            // checked is tokens x cols) is touched by the call for token t only; src is mutably
            // borrowed for the whole call.
            let st = unsafe { src.slice_mut(t * cols, cols) };
            produce(t, st, xt)
        });
    }

    /// Sets the shapes for `tokens` rows of `cols` and sizes the buffers; false when there is
    /// nothing to quantize (`cols == 0`: every token gets the empty row's scale and sum).
    ///
    /// # Panics
    /// If `len != tokens * cols`.
    fn shape(&mut self, len: usize, tokens: usize, cols: usize) -> bool {
        assert_eq!(
            Some(len),
            tokens.checked_mul(cols),
            "QuantizedActivations: x.len() != tokens * cols"
        );
        let stride = cols.div_ceil(i2s::BLOCK) * i2s::BLOCK;
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
            return false;
        }
        self.scales.resize(tokens, 0.0);
        self.sums.resize(tokens, 0);
        true
    }

    /// Every token's row: `quantize(t, q_t)` writes the codes of token t (`cols` of its
    /// `stride`) and returns its scale and code sum; the shapes are set.
    ///
    /// # Safety
    /// `quantize` is safe to call for every token (the caller guarantees its kernel's ISA).
    unsafe fn quantize_rows(&mut self, quantize: impl Fn(usize, &mut [i8]) -> (f32, i32) + Sync) {
        let (tokens, cols, stride) = (self.tokens, self.cols, self.stride);
        let (scales, sums) = (
            SharedOut::new(&mut self.scales),
            SharedOut::new(&mut self.sums),
        );
        let row = |t: usize, qt: &mut [i8]| {
            let (s, sum) = quantize(t, &mut qt[..cols]);
            // SAFETY: token t's scale and sum are written by this call only.
            unsafe {
                scales.write(t, s);
                sums.write(t, sum);
            }
        };
        // A prompt or a batch of sequences quantizes many rows: spread them over the pool
        // (one row is too little work to pay for the loop).
        if tokens >= crate::PAR_ROWS && pool::current_num_threads() > 1 {
            pool::for_each_chunk_mut(&mut self.q, stride, row);
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
