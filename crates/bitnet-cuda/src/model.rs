//! The whole BitNet b1.58 forward pass on the GPU: weights resident ([`GpuModel`]), an f16 KV
//! cache and scratch buffers allocated once per session ([`GpuSession`]), every op a kernel,
//! greedy decoding with the argmax on the GPU so only a token id comes back, and the decode
//! step optionally captured once as a CUDA graph and replayed.
//!
//! Per layer, as `bitnet-inference`'s forward pass: RMSNorm + int8 quantization (one kernel),
//! q/k/v as one stacked ternary matmul, RoPE + KV cache write (one kernel), attention, sub-norm +
//! quantization, o matmul adding into the residual stream, FFN norm + quantization, gate/up
//! stacked, gated activation + sub-norm + quantization (one kernel), down matmul adding into
//! the residual. Then the final norm and the head for the last token. A one-token pass (decode)
//! runs 4 kernels a layer instead: each norm + quantization inside the matmul that consumes it,
//! RoPE + the cache write inside attention (same bits; see [`GpuSession::set_fused`]).

use crate::device::Gpu;
use crate::error::{CudaError, Result};
use crate::ops::{ArgmaxScratch, AttnDims, GpuDense, NormInput};
use crate::ternary::{GpuActivations, GpuTernaryMatrix};
use bitnet_models::{Activation, ModelConfig, ModelWeights};
use cudarc::driver::{CudaGraph, CudaSlice};

struct GpuLayer {
    attn_norm: CudaSlice<f32>,
    qkv: GpuTernaryMatrix,
    wo: GpuTernaryMatrix,
    attn_sub_norm: CudaSlice<f32>,
    ffn_norm: CudaSlice<f32>,
    gate_up: GpuTernaryMatrix,
    down: GpuTernaryMatrix,
    ffn_sub_norm: CudaSlice<f32>,
}

/// A model's weights on the GPU: ternary matrices in their I2_S rows (q/k/v and gate/up
/// stacked), norms as f32, the head (and an untied embedding) in their file type.
pub struct GpuModel {
    config: ModelConfig,
    dims: AttnDims,
    layers: Vec<GpuLayer>,
    output_norm: CudaSlice<f32>,
    head: GpuDense,
    /// The token embedding when it is not the head (untied models).
    embed: Option<GpuDense>,
    /// RoPE frequencies, computed as the CPU computes them.
    inv_freq: CudaSlice<f32>,
    nbytes: usize,
}

impl GpuModel {
    pub fn upload(gpu: &Gpu, w: &ModelWeights) -> Result<GpuModel> {
        let c = &w.config;
        let dims = AttnDims {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        // Rejects shapes the kernels do not handle before anything is uploaded.
        if dims.heads == 0
            || dims.kv_heads == 0
            || !dims.heads.is_multiple_of(dims.kv_heads)
            || !dims.head_dim.is_multiple_of(2)
            || dims.head_dim > crate::ops::MAX_HEAD_DIM
        {
            return Err(CudaError::Unsupported(format!(
                "{} heads, {} KV heads of dimension {}",
                dims.heads, dims.kv_heads, dims.head_dim
            )));
        }
        let s = &gpu.stream;
        let mut layers = Vec::with_capacity(w.layers.len());
        for lw in &w.layers {
            layers.push(GpuLayer {
                attn_norm: s.clone_htod(&lw.attn_norm)?,
                qkv: GpuTernaryMatrix::upload_stacked(gpu, &[&lw.wq, &lw.wk, &lw.wv])?,
                wo: GpuTernaryMatrix::upload(gpu, &lw.wo)?,
                attn_sub_norm: s.clone_htod(&lw.attn_sub_norm)?,
                ffn_norm: s.clone_htod(&lw.ffn_norm)?,
                gate_up: GpuTernaryMatrix::upload_stacked(gpu, &[&lw.w_gate, &lw.w_up])?,
                down: GpuTernaryMatrix::upload(gpu, &lw.w_down)?,
                ffn_sub_norm: s.clone_htod(&lw.ffn_sub_norm)?,
            });
        }
        let head_name = if w.output.is_some() {
            "output (LM head)"
        } else {
            "token_embd (tied LM head)"
        };
        let head = GpuDense::upload(gpu, w.lm_head(), head_name)?;
        let embed = match w.output {
            Some(_) => Some(GpuDense::upload(gpu, &w.token_embd, "token_embd")?),
            None => None,
        };
        for m in std::iter::once(&head).chain(embed.as_ref()) {
            if m.cols() != c.hidden_size {
                return Err(CudaError::Shape(format!(
                    "dense matrix of {} columns for hidden size {}",
                    m.cols(),
                    c.hidden_size
                )));
            }
        }
        let inv_freq: Vec<f32> = (0..c.head_dim / 2)
            .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / c.head_dim as f32))
            .collect();
        let ternary: usize = layers
            .iter()
            .map(|l| l.qkv.nbytes() + l.wo.nbytes() + l.gate_up.nbytes() + l.down.nbytes())
            .sum();
        let nbytes = ternary + head.nbytes() + embed.as_ref().map_or(0, GpuDense::nbytes);
        Ok(GpuModel {
            config: c.clone(),
            dims,
            layers,
            output_norm: s.clone_htod(&w.output_norm)?,
            head,
            embed,
            inv_freq: s.clone_htod(&inv_freq)?,
            nbytes,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes of weights on the GPU (ternary matrices, head, untied embedding).
    pub fn nbytes(&self) -> usize {
        self.nbytes
    }

    fn embedding(&self) -> &GpuDense {
        self.embed.as_ref().unwrap_or(&self.head)
    }
}

/// One sequence on the GPU: its f16 KV cache (`ctx` positions), scratch for up to `batch`
/// tokens per pass, and the device words a decode step reads (its token and position).
pub struct GpuSession<'a> {
    gpu: &'a Gpu,
    model: &'a GpuModel,
    ctx: usize,
    batch: usize,
    k: Vec<CudaSlice<u16>>,
    v: Vec<CudaSlice<u16>>,
    tokens: CudaSlice<u32>,
    pos0: CudaSlice<i32>,
    next_id: CudaSlice<u32>,
    x: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    gate_up: CudaSlice<f32>,
    acts_h: GpuActivations,
    acts_q: GpuActivations,
    acts_f: GpuActivations,
    xn: CudaSlice<f32>,
    q8: CudaSlice<i8>,
    d8: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    argmax: ArgmaxScratch,
    /// Positions held in the cache.
    pos: usize,
    /// Tokens of the last pass (the head reads the last one's hidden state).
    last: usize,
    /// Whether tokens[0] / pos0 hold the next decode step's token and position (set by a
    /// greedy pass, spent by anything else).
    next_ready: bool,
    use_graph: bool,
    /// Whether one-token passes run each norm inside the matmul that consumes it.
    fused: bool,
    graph: Option<CudaGraph>,
}

impl<'a> GpuSession<'a> {
    /// A session of `ctx` positions running prompts `batch` tokens per pass.
    pub fn new(gpu: &'a Gpu, model: &'a GpuModel, ctx: usize, batch: usize) -> Result<Self> {
        let c = &model.config;
        let d = model.dims;
        if ctx == 0 || batch == 0 || i32::try_from(ctx).is_err() {
            return Err(CudaError::Shape(format!(
                "a session of {ctx} positions, {batch} tokens per pass"
            )));
        }
        let smem = d.attn_smem(ctx);
        if smem > 200 * 1024 {
            return Err(CudaError::Unsupported(format!(
                "a context of {ctx} positions for head dimension {} (the attention kernel's \
                 scores would need {} KiB of shared memory)",
                d.head_dim,
                smem / 1024
            )));
        }
        let s = &gpu.stream;
        let (h, ffn) = (c.hidden_size, c.intermediate_size);
        let kv_len = ctx * d.kv_dim();
        let mut k = Vec::with_capacity(c.num_layers);
        let mut v = Vec::with_capacity(c.num_layers);
        for _ in 0..c.num_layers {
            k.push(s.alloc_zeros::<u16>(kv_len)?);
            v.push(s.alloc_zeros::<u16>(kv_len)?);
        }
        Ok(GpuSession {
            gpu,
            model,
            ctx,
            batch,
            k,
            v,
            tokens: s.alloc_zeros(batch)?,
            pos0: s.alloc_zeros(1)?,
            next_id: s.alloc_zeros(1)?,
            x: s.alloc_zeros(batch * h)?,
            qkv: s.alloc_zeros(batch * d.qkv_dim())?,
            attn: s.alloc_zeros(batch * d.q_dim())?,
            gate_up: s.alloc_zeros(batch * 2 * ffn)?,
            acts_h: GpuActivations::new(gpu, batch, h)?,
            acts_q: GpuActivations::new(gpu, batch, d.q_dim())?,
            acts_f: GpuActivations::new(gpu, batch, ffn)?,
            xn: s.alloc_zeros(h)?,
            q8: s.alloc_zeros(h)?,
            d8: s.alloc_zeros(h.div_ceil(32).max(1))?,
            logits: s.alloc_zeros(model.head.rows())?,
            argmax: ArgmaxScratch::new(gpu)?,
            pos: 0,
            last: 0,
            next_ready: false,
            use_graph: true,
            fused: true,
            graph: None,
        })
    }

    /// Whether decode steps replay a captured CUDA graph (the default) or launch their kernels
    /// one by one.
    pub fn set_graph(&mut self, on: bool) {
        self.use_graph = on;
    }

    /// Whether one-token passes (decode) fuse each norm + quantization into the matmul after
    /// it (the default) or run them as separate kernels, as prompts do; both give the same bits.
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on;
        self.graph = None;
    }

    /// Positions held in the KV cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Runs `tokens` at positions `start..` (`start <= pos()`: positions after it are
    /// overwritten) and returns the logits of the last one.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>> {
        self.prefill(tokens, start)?;
        self.head()?;
        Ok(self.gpu.stream.clone_dtoh(&self.logits)?)
    }

    /// [`Self::forward`], then the greedy next token chosen on the GPU (only its id comes back);
    /// it is left on the device for [`Self::decode_greedy`].
    pub fn forward_greedy(&mut self, tokens: &[u32], start: usize) -> Result<u32> {
        let last = self.prefill(tokens, start)?;
        self.head()?;
        self.argmax(last)?;
        self.next_ready = true;
        self.read_id()
    }

    /// Runs the token the last greedy pass chose, at the next position, and returns the one
    /// after it.
    pub fn decode_greedy(&mut self) -> Result<u32> {
        if !self.next_ready {
            return Err(CudaError::Shape(
                "decode_greedy needs a greedy pass before it".into(),
            ));
        }
        if self.pos >= self.ctx {
            return Err(CudaError::Shape(format!(
                "the context of {} positions is full",
                self.ctx
            )));
        }
        if self.use_graph {
            if self.graph.is_none() {
                self.graph = Some(self.capture()?);
            }
            if let Some(g) = &self.graph {
                g.launch()?;
            }
        } else {
            self.step()?;
        }
        self.pos += 1;
        self.read_id()
    }

    /// The prompt, then `n` greedy tokens (the prompt's next token first).
    pub fn generate_greedy(&mut self, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return Ok(out);
        }
        out.push(self.forward_greedy(prompt, 0)?);
        while out.len() < n {
            out.push(self.decode_greedy()?);
        }
        Ok(out)
    }

    fn read_id(&self) -> Result<u32> {
        let mut id = [0u32];
        self.gpu.stream.memcpy_dtoh(&self.next_id, &mut id)?;
        Ok(id[0])
    }

    /// The layers over `tokens` in passes of at most `batch`; returns the last pass's length
    /// (its last token's hidden state is what the head reads).
    fn prefill(&mut self, tokens: &[u32], start: usize) -> Result<usize> {
        self.next_ready = false;
        let vocab = self.model.embedding().rows();
        if tokens.is_empty() {
            return Err(CudaError::Shape("no tokens to run".into()));
        }
        if start > self.pos || start + tokens.len() > self.ctx {
            return Err(CudaError::Shape(format!(
                "{} tokens at position {start}: the cache holds {} of {} positions",
                tokens.len(),
                self.pos,
                self.ctx
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(CudaError::Shape(format!(
                "token id {bad} outside the vocabulary of {vocab}"
            )));
        }
        let mut last = 0;
        for (i, chunk) in tokens.chunks(self.batch).enumerate() {
            let p = start + i * self.batch;
            self.gpu
                .stream
                .memcpy_htod(chunk, &mut self.tokens.slice_mut(..chunk.len()))?;
            self.gpu.stream.memcpy_htod(&[p as i32], &mut self.pos0)?;
            self.layers(chunk.len())?;
            self.pos = p + chunk.len();
            last = chunk.len();
        }
        self.last = last;
        Ok(last)
    }

    /// Every layer over the `n` tokens whose ids and first position are on the device.
    fn layers(&mut self, n: usize) -> Result<()> {
        let (g, m) = (self.gpu, self.model);
        let c = &m.config;
        let d = m.dims;
        let (h, qd, ffn, eps) = (
            c.hidden_size,
            d.q_dim(),
            c.intermediate_size,
            c.rms_norm_eps,
        );
        let qkv_len = n * d.qkv_dim();
        let act = match c.activation() {
            Activation::Relu2 => NormInput::Relu2Gate,
            Activation::Silu => NormInput::SiluGate,
        };
        self.acts_h.set_tokens(n)?;
        self.acts_q.set_tokens(n)?;
        self.acts_f.set_tokens(n)?;
        g.embed(
            m.embedding(),
            &self.tokens.slice(..n),
            &mut self.x.slice_mut(..n * h),
        )?;
        if n == 1 && self.fused {
            return self.layers_fused();
        }
        for (l, lw) in m.layers.iter().enumerate() {
            g.norm_quantize(
                &self.x.slice(..n * h),
                n,
                h,
                NormInput::Plain,
                &lw.attn_norm,
                eps,
                None,
                Some(&mut self.acts_h),
            )?;
            g.ternary_matmul(&lw.qkv, &self.acts_h, &mut self.qkv.slice_mut(..qkv_len))?;
            g.rope_kv(
                &mut self.qkv.slice_mut(..qkv_len),
                n,
                d,
                &m.inv_freq,
                &self.pos0,
                &mut self.k[l],
                &mut self.v[l],
            )?;
            g.attention(
                &self.qkv.slice(..qkv_len),
                n,
                d,
                self.ctx,
                &self.pos0,
                &self.k[l],
                &self.v[l],
                &mut self.attn.slice_mut(..n * qd),
            )?;
            g.norm_quantize(
                &self.attn.slice(..n * qd),
                n,
                qd,
                NormInput::Plain,
                &lw.attn_sub_norm,
                eps,
                None,
                Some(&mut self.acts_q),
            )?;
            g.ternary_matmul_accumulate(&lw.wo, &self.acts_q, &mut self.x.slice_mut(..n * h))?;
            g.norm_quantize(
                &self.x.slice(..n * h),
                n,
                h,
                NormInput::Plain,
                &lw.ffn_norm,
                eps,
                None,
                Some(&mut self.acts_h),
            )?;
            g.ternary_matmul(
                &lw.gate_up,
                &self.acts_h,
                &mut self.gate_up.slice_mut(..n * 2 * ffn),
            )?;
            g.norm_quantize(
                &self.gate_up.slice(..n * 2 * ffn),
                n,
                2 * ffn,
                act,
                &lw.ffn_sub_norm,
                eps,
                None,
                Some(&mut self.acts_f),
            )?;
            g.ternary_matmul_accumulate(&lw.down, &self.acts_f, &mut self.x.slice_mut(..n * h))?;
        }
        self.last = n;
        Ok(())
    }

    /// [`Self::layers`] for one token (the embedding done), each norm computed inside the
    /// matmul that consumes it and RoPE + the cache write inside attention: 4 kernels a
    /// layer, not 10.
    fn layers_fused(&mut self) -> Result<()> {
        let (g, m) = (self.gpu, self.model);
        let c = &m.config;
        let d = m.dims;
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        let act = match c.activation() {
            Activation::Relu2 => NormInput::Relu2Gate,
            Activation::Silu => NormInput::SiluGate,
        };
        let qkv_len = d.qkv_dim();
        for (l, lw) in m.layers.iter().enumerate() {
            g.norm_ternary_matmul(
                &self.x.slice(..h),
                NormInput::Plain,
                &lw.attn_norm,
                eps,
                &lw.qkv,
                &mut self.qkv.slice_mut(..qkv_len),
                false,
            )?;
            g.rope_attention(
                &self.qkv.slice(..qkv_len),
                d,
                self.ctx,
                &m.inv_freq,
                &self.pos0,
                &mut self.k[l],
                &mut self.v[l],
                &mut self.attn.slice_mut(..d.q_dim()),
            )?;
            g.norm_ternary_matmul(
                &self.attn.slice(..d.q_dim()),
                NormInput::Plain,
                &lw.attn_sub_norm,
                eps,
                &lw.wo,
                &mut self.x.slice_mut(..h),
                true,
            )?;
            g.norm_ternary_matmul(
                &self.x.slice(..h),
                NormInput::Plain,
                &lw.ffn_norm,
                eps,
                &lw.gate_up,
                &mut self.gate_up.slice_mut(..lw.gate_up.rows()),
                false,
            )?;
            g.norm_ternary_matmul(
                &self.gate_up.slice(..lw.gate_up.rows()),
                act,
                &lw.ffn_sub_norm,
                eps,
                &lw.down,
                &mut self.x.slice_mut(..h),
                true,
            )?;
        }
        self.last = 1;
        Ok(())
    }

    /// Final norm and head on the last token of the last pass, into `logits`.
    fn head(&mut self) -> Result<()> {
        let (g, m) = (self.gpu, self.model);
        let h = m.config.hidden_size;
        let r = self.last.saturating_sub(1);
        g.norm_quantize(
            &self.x.slice(r * h..(r + 1) * h),
            1,
            h,
            NormInput::Plain,
            &m.output_norm,
            m.config.rms_norm_eps,
            Some(&mut self.xn.slice_mut(..)),
            None,
        )?;
        g.head(
            &m.head,
            &self.xn.slice(..),
            &mut self.q8,
            &mut self.d8,
            &mut self.logits.slice_mut(..),
        )
    }

    fn argmax(&mut self, advance: usize) -> Result<()> {
        self.gpu.argmax_advance(
            &self.logits.slice(..),
            &mut self.argmax,
            &mut self.next_id,
            &mut self.tokens,
            &mut self.pos0,
            advance as i32,
        )
    }

    /// One decode step reading its token and position from the device and leaving the next
    /// ones there: the same launches whether run directly or captured.
    fn step(&mut self) -> Result<()> {
        self.layers(1)?;
        self.head()?;
        self.argmax(1)
    }

    /// The decode step recorded once as a CUDA graph (recording runs nothing).
    fn capture(&mut self) -> Result<CudaGraph> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let stream = self.gpu.stream.clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let recorded = self.step();
        // Capture must end even when recording failed, or the stream stays unusable.
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        graph?.ok_or_else(|| CudaError::Shape("the decode step captured no work".into()))
    }
}
