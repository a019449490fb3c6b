//! Per-token int8 activations, the partner of the ternary weights.

use crate::dispatch::with_kernel;
use crate::kernel::Kernel;
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
        assert_eq!(
            Some(x.len()),
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
            return;
        }
        self.scales.resize(tokens, 0.0);
        self.sums.resize(tokens, 0);
        // SAFETY: check_isa verified the ISA.
        with_kernel!(isa, K => unsafe { self.quantize_rows::<K>(x) });
    }

    /// Every token's row with `K`'s kernel; the shapes are set.
    ///
    /// # Safety
    /// The CPU supports `K`'s ISA.
    unsafe fn quantize_rows<K: Kernel>(&mut self, x: &[f32]) {
        let (tokens, cols, stride) = (self.tokens, self.cols, self.stride);
        let (scales, sums) = (
            SharedOut::new(&mut self.scales),
            SharedOut::new(&mut self.sums),
        );
        let row = |t: usize, qt: &mut [i8]| {
            let (xt, qt) = (&x[t * cols..][..cols], &mut qt[..cols]);
            // SAFETY: the caller guarantees the ISA; the lengths are equal.
            let (s, sum) = unsafe { K::quantize_row(xt, qt) };
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
