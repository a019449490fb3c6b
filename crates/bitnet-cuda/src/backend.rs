//! The CUDA backend behind `bitnet_backend`'s seam: [`CudaBackend`] owns the GPU and the
//! model's weights on it; each [`CudaContext`] owns a paged f16 KV cache, scratch for a batch of
//! tokens and a stream of its own, and runs the five fused operations of a layer as kernels.
//!
//! A batch is any number of sequences at any positions. [`Context::begin`] packs everything the
//! kernels need to know about it (token ids, positions, each token's cache row, each token's
//! block table, the rows that want logits, the block tables) into one buffer and copies it to
//! the GPU in one transfer; the kernels read it from there.
//!
//! One token of one sequence (decode) takes the fused path: each norm + int8 quantization runs
//! inside the matmul that consumes it and RoPE + the KV write inside attention, 4 kernels a
//! layer instead of 10, the same bits. Such a step is captured as a CUDA graph (the second
//! time its shape comes) and then replayed after its packed inputs are copied in (the kernels
//! read them from device memory), so a decode step costs one copy in, one graph launch and one
//! copy back. Batches of several tokens (prompts, many sequences decoding together) run the
//! batched kernels, whose matmuls read each weight once for many tokens; a decode step of
//! several sequences (one token each) is a graph too, one for each number of sequences that
//! recurs. In those batches, the chunks of two or more tokens (prompt passes) attend on the
//! tensor cores (`attention_flash_*`, tiles of up to 64 tokens cut in `begin`); chunks of one
//! token keep the per-query attention kernel.
//!
//! Batch invariance: every kernel computes a token's values with the same operations in the
//! same order whatever else is in the batch (one norm block per token, exact integer matmuls,
//! one attention block per head and token or a flash tile whose rows each depend on their own
//! q and position only, head sums per row in one order, the fused decode kernels bit-identical
//! to the separate ones), so a sequence's logits do not depend on the sequences batched with
//! it (tested in `tests/cuda_forward.rs`). A token's attention does depend on whether its
//! chunk has one token (per-query kernel) or more (flash: tensor cores, another summation
//! order): decoding a prompt one token a pass agrees with one pass to rounding, not bit for
//! bit, while passes of two or more tokens each give one pass's bits.

use crate::compile::{FORWARD, TERNARY};
use crate::decode::PersistentStep;
use crate::device::{Gpu, HostStage};
use crate::error::CudaError;
use crate::model::GpuModel;
use crate::ops::{push_flash_tiles, ArgmaxScratch, AttnSplit, NormInput, PagedBatch, FLASH_TILE};
use crate::sample::TopKScratch;
use crate::ternary::GpuActivations;
use bitnet_backend::sampling::TopK;
use bitnet_backend::{
    run_layers, Backend, BackendError, Context, Device, KvType, Logits, SeqChunk, KV_BLOCK,
};
use bitnet_models::{Activation, ModelWeights};
use cudarc::driver::{CudaGraph, CudaSlice, CudaView};
use std::sync::Arc;

type Result<T> = std::result::Result<T, BackendError>;
type CudaResult<T> = crate::error::Result<T>;

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Unavailable(_) => BackendError::Unavailable(e.to_string()),
            CudaError::Unsupported(_) => BackendError::Unsupported(e.to_string()),
            other => BackendError::Device(other.to_string()),
        }
    }
}

fn dev(e: impl Into<CudaError>) -> BackendError {
    e.into().into()
}

/// Every kernel the forward pass launches, looked up when the backend loads: compiling (or
/// reading the cached PTX) then, not inside the first pass or, worse, a graph capture.
pub(crate) const FORWARD_KERNELS: [&str; 38] = [
    "embed_rows",
    "embed_rows_q6_k",
    "decode_layers",
    "decode_layers_long",
    "norm_quant",
    "norm_ternary_t1",
    "rope_kv",
    "attention",
    "attention_hd64",
    "attention_hd128",
    "attention_chunks",
    "attention_chunks_hd64",
    "attention_chunks_hd128",
    "attention_flash_hd64",
    "attention_flash_hd128",
    "rope_attention",
    "rope_attention_hd64",
    "rope_attention_hd128",
    "gather_rows",
    "quantize_q8_0",
    "head_q8_0",
    "head_dense",
    "head_q8_0_mma",
    "head_q8_0_mma16",
    "head_q8_0_mma_few",
    "head_q8_0_mma16_few",
    "head_q8_0_mma_few8",
    "head_q8_0_mma16_few8",
    "quantize_q8_k",
    "head_q6_k",
    "head_q6_k_many",
    "head_dense_many",
    "argmax_partial",
    "argmax_advance",
    "argmax_rows",
    "penalize_logits",
    "top_k_split",
    "top_k_merge",
];
pub(crate) const TERNARY_KERNELS: [&str; 8] = [
    "ternary_matmul_t8",
    "ternary_matmul_t4",
    "ternary_matmul_t2",
    "ternary_matmul_t1",
    "ternary_matmul_w32_t8",
    "ternary_matmul_w32_t4",
    "ternary_matmul_w32_t2",
    "ternary_matmul_w32_t1",
];

struct Shared {
    gpu: Gpu,
    model: GpuModel,
}

/// A model resident on one NVIDIA GPU.
pub struct CudaBackend {
    shared: Arc<Shared>,
}

impl CudaBackend {
    /// Opens GPU `ordinal`, uploads `weights` and compiles the kernels.
    pub fn load(ordinal: usize, weights: &ModelWeights) -> Result<CudaBackend> {
        let gpu = Gpu::open(ordinal)?;
        let model = GpuModel::upload(&gpu, weights).map_err(|e| match e {
            // A shape the kernels cannot take is a property of the model, not a device fault.
            CudaError::Shape(s) => BackendError::Unsupported(format!("on the GPU: {s}")),
            e => e.into(),
        })?;
        for name in FORWARD_KERNELS {
            gpu.kernels.function(FORWARD, name)?;
        }
        for name in TERNARY_KERNELS {
            gpu.kernels.function(TERNARY, name)?;
        }
        // Contexts run on streams of their own and read the weights without events.
        gpu.synchronize()?;
        Ok(CudaBackend {
            shared: Arc::new(Shared { gpu, model }),
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.shared.gpu
    }

    pub fn model(&self) -> &GpuModel {
        &self.shared.model
    }

    /// [`Backend::new_context`] as its concrete type (for the benchmark's switches).
    pub fn context(
        &self,
        blocks: usize,
        ty: KvType,
        max_batch_tokens: usize,
    ) -> Result<CudaContext> {
        CudaContext::new(self.shared.clone(), blocks, ty, max_batch_tokens)
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        Device::Cuda(self.shared.gpu.info().ordinal)
    }

    fn describe(&self) -> String {
        let i = self.shared.gpu.info();
        format!(
            "cuda:{} {} ({:.1} GiB, compute capability {}.{}; {:.2} GB of weights on it)",
            i.ordinal,
            i.name,
            i.total_mem as f64 / (1u64 << 30) as f64,
            i.compute_capability.0,
            i.compute_capability.1,
            self.shared.model.nbytes() as f64 / 1e9
        )
    }

    fn kv_bytes(&self, blocks: usize, ty: KvType) -> usize {
        let m = &self.shared.model;
        m.layers.len() * 2 * blocks * KV_BLOCK * m.dims.kv_dim() * ty.size()
    }

    fn new_context(
        &self,
        blocks: usize,
        ty: KvType,
        max_batch_tokens: usize,
    ) -> Result<Box<dyn Context>> {
        Ok(Box::new(self.context(blocks, ty, max_batch_tokens)?))
    }
}

/// Buffers sized by the tokens of a batch (`tokens`) or by its rows that want logits (`rows`).
struct Scratch {
    tokens: usize,
    rows: usize,
    x: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    gate_up: CudaSlice<f32>,
    acts_h: GpuActivations,
    acts_q: GpuActivations,
    acts_f: GpuActivations,
    /// The gathered hidden states of the rows that want logits, then their final norm.
    xg: CudaSlice<f32>,
    xn: CudaSlice<f32>,
    q8: CudaSlice<i8>,
    d8: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    ids: CudaSlice<u32>,
}

impl Scratch {
    fn new(gpu: &Gpu, m: &GpuModel, tokens: usize, rows: usize) -> CudaResult<Scratch> {
        let s = &gpu.stream;
        let c = &m.config;
        let d = m.dims;
        let (h, ffn, vocab) = (c.hidden_size, c.intermediate_size, m.head.rows());
        Ok(Scratch {
            tokens,
            rows,
            x: s.alloc_zeros(tokens * h)?,
            qkv: s.alloc_zeros(tokens * d.qkv_dim())?,
            attn: s.alloc_zeros(tokens * d.q_dim())?,
            gate_up: s.alloc_zeros(tokens * 2 * ffn)?,
            acts_h: GpuActivations::new(gpu, tokens, h)?,
            acts_q: GpuActivations::new(gpu, tokens, d.q_dim())?,
            acts_f: GpuActivations::new(gpu, tokens, ffn)?,
            xg: s.alloc_zeros(rows * h)?,
            xn: s.alloc_zeros(rows * h)?,
            q8: s.alloc_zeros(rows * h)?,
            d8: s.alloc_zeros((rows * h).div_ceil(32).max(1))?,
            logits: s.alloc_zeros(rows * vocab)?,
            ids: s.alloc_zeros(rows)?,
        })
    }
}

/// Where each part of the packed batch buffer starts (in u32 words): token ids at 0, then per
/// token its position, cache row and block-table offset, then the rows that want logits, then
/// the flash-attention tiles (pairs of first token and token count), then the block tables
/// (last: a one-token step reads past their end, see `batch_views`).
#[derive(Clone, Copy, Debug, Default)]
struct Layout {
    pos: usize,
    slot: usize,
    table: usize,
    rows: usize,
    tiles: usize,
    blocks: usize,
    end: usize,
}

/// The packed batch's positions, cache rows and table offsets of `n` tokens, and its block
/// tables: for a one-token step (`one_step`) `ctx / KV_BLOCK` ids from the first, as the decode
/// kernels load them without waiting for the position (begin makes room).
fn batch_views(
    meta: &CudaSlice<u32>,
    o: Layout,
    ctx: usize,
    n: usize,
    one_step: bool,
) -> [CudaView<'_, u32>; 4] {
    let blocks_end = if one_step {
        o.blocks + ctx / KV_BLOCK
    } else {
        o.end
    };
    [
        meta.slice(o.pos..o.pos + n),
        meta.slice(o.slot..o.slot + n),
        meta.slice(o.table..o.table + n),
        meta.slice(o.blocks..blocks_end),
    ]
}

/// What a captured graph ran: replayable for a batch that needs the same launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GraphKey {
    /// Sequences of the decode step, one token and one logit row each (the kernels' grids and
    /// the ternary kernel chosen for that many tokens).
    seqs: usize,
    /// The attention kernels' score capacity (their shared memory).
    ctx: usize,
    /// `Some(vocab)`: ends in the greedy choice over that many logits.
    greedy: Option<usize>,
    fused: bool,
    persistent: bool,
}

/// How many decode graphs a context keeps (a server's step changes shape as sequences come
/// and go; each shape's graph is a few hundred kernel nodes).
const MAX_GRAPHS: usize = 8;

/// What a decode step of a given shape does with the graphs a context keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Replay the kept graph (`GraphCache::last`).
    Replay,
    /// The shape's second time: capture it, then `insert` the graph.
    Capture,
    /// The shape's first time: launch the kernels one by one.
    Launch,
}

/// The decode graphs of a context, least recently used first, and the shapes run once without
/// one: a shape is captured the second time it comes, so that a step seen once (a server's
/// batch between two arrivals) costs no capture.
struct GraphCache<G> {
    graphs: Vec<(GraphKey, G)>,
    seen: Vec<GraphKey>,
}

impl<G> GraphCache<G> {
    fn new() -> Self {
        GraphCache {
            graphs: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Forgets the graphs (they point into buffers that are being replaced).
    fn clear(&mut self) {
        self.graphs.clear();
    }

    /// What to do for `key`. A hit becomes the most recently used (`last`).
    fn plan(&mut self, key: GraphKey) -> Plan {
        if let Some(at) = self.graphs.iter().position(|(k, _)| *k == key) {
            let hit = self.graphs.remove(at);
            self.graphs.push(hit);
            return Plan::Replay;
        }
        if let Some(at) = self.seen.iter().position(|k| *k == key) {
            self.seen.remove(at);
            return Plan::Capture;
        }
        if self.seen.len() == MAX_GRAPHS {
            self.seen.remove(0);
        }
        self.seen.push(key);
        Plan::Launch
    }

    /// The most recently used graph.
    fn last(&self) -> Option<&G> {
        self.graphs.last().map(|(_, g)| g)
    }

    /// Keeps a graph captured for `key`, dropping the least recently used past `MAX_GRAPHS`.
    fn insert(&mut self, key: GraphKey, g: G) {
        if self.graphs.len() == MAX_GRAPHS {
            self.graphs.remove(0);
        }
        self.graphs.push((key, g));
    }
}

struct Graph(CudaGraph);
// SAFETY: a graph exec handle is a driver object usable from any thread (launch binds the CUDA
// context first); its context is used by one thread at a time (every use takes `&mut self`).
unsafe impl Send for Graph {}

/// One stream of forward passes on the GPU: a paged f16 KV cache, scratch, and the captured
/// decode graphs.
pub struct CudaContext {
    shared: Arc<Shared>,
    /// The backend's GPU with a stream of this context's own.
    gpu: Gpu,
    kv_blocks: usize,
    /// Per layer `[block][row][kv_dim]` f16 bits.
    k: Vec<CudaSlice<u16>>,
    v: Vec<CudaSlice<u16>>,
    s: Scratch,
    argmax: ArgmaxScratch,
    top_k: TopKScratch,
    /// A decode step's attention records, one chunk of a head a block (sized for `ctx`).
    split: AttnSplit,
    /// Where the single-row argmax also writes the next token and position (unused here).
    spare_tok: CudaSlice<u32>,
    spare_pos: CudaSlice<i32>,
    /// The packed batch on the device, and its host copy.
    meta: CudaSlice<u32>,
    host: Vec<u32>,
    lay: Layout,
    /// Tokens, sequences and logit rows of the current batch.
    n: usize,
    seqs: usize,
    rows: usize,
    /// Flash-attention tiles of the current batch (its chunks of two or more tokens), and
    /// whether it also has chunks of one token (for the per-query attention kernel).
    tiles: usize,
    singles: bool,
    /// Score capacity of the attention kernels for this batch (a power of two >= its longest
    /// sequence, so that decode steps reuse a graph until the length doubles).
    ctx: usize,
    fused: bool,
    /// Whether prompt chunks may attend with the flash kernel.
    flash: bool,
    /// Whether a fused decode step may run as the one persistent kernel.
    persistent: bool,
    /// Built on the first decode step; `Some(None)`: the kernel does not apply here.
    step: Option<Option<PersistentStep>>,
    use_graph: bool,
    graphs: GraphCache<Graph>,
    /// Page-locked memory the logits and the picked ids come back through.
    host_logits: HostStage<f32>,
    host_ids: HostStage<u32>,
}

impl CudaContext {
    fn new(
        shared: Arc<Shared>,
        blocks: usize,
        ty: KvType,
        max_batch_tokens: usize,
    ) -> Result<CudaContext> {
        if ty == KvType::F32 {
            return Err(BackendError::Unsupported(
                "an f32 KV cache on the GPU: the CUDA kernels store keys and values as f16 \
                 (use the f16 KV cache)"
                    .into(),
            ));
        }
        if blocks
            .checked_mul(KV_BLOCK)
            .is_none_or(|rows| i32::try_from(rows).is_err())
        {
            return Err(BackendError::Unsupported(format!(
                "a KV cache of {blocks} blocks (at most {} positions on the GPU)",
                i32::MAX
            )));
        }
        let gpu = shared.gpu.with_new_stream().map_err(dev)?;
        let m = &shared.model;
        let per_layer = (blocks * KV_BLOCK * m.dims.kv_dim()).max(1);
        let st = &gpu.stream;
        let mut k = Vec::with_capacity(m.layers.len());
        let mut v = Vec::with_capacity(m.layers.len());
        for _ in 0..m.layers.len() {
            k.push(st.alloc_zeros::<u16>(per_layer).map_err(dev)?);
            v.push(st.alloc_zeros::<u16>(per_layer).map_err(dev)?);
        }
        let s = Scratch::new(&gpu, m, max_batch_tokens.max(1), 1)?;
        let argmax = ArgmaxScratch::new(&gpu)?;
        let top_k = TopKScratch::new(&gpu)?;
        let split = AttnSplit::new(&gpu, m.dims, 0).map_err(dev)?;
        Ok(CudaContext {
            spare_tok: st.alloc_zeros(1).map_err(dev)?,
            spare_pos: st.alloc_zeros(1).map_err(dev)?,
            meta: st.alloc_zeros(64).map_err(dev)?,
            host: Vec::new(),
            lay: Layout::default(),
            n: 0,
            seqs: 0,
            rows: 0,
            tiles: 0,
            singles: false,
            ctx: 0,
            fused: true,
            flash: true,
            persistent: true,
            step: None,
            use_graph: true,
            graphs: GraphCache::new(),
            host_logits: HostStage::default(),
            host_ids: HostStage::default(),
            kv_blocks: blocks,
            k,
            v,
            s,
            argmax,
            top_k,
            split,
            gpu,
            shared,
        })
    }

    /// Whether a decode step (one token of each of one or more sequences) replays a captured
    /// CUDA graph (the default) or launches its kernels one by one.
    pub fn set_graph(&mut self, on: bool) {
        self.use_graph = on;
    }

    /// Whether a decode step fuses each norm + quantization into the matmul after it and RoPE
    /// into attention (the default), or runs the batched kernels; both give the same bits.
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on;
    }

    /// Whether chunks of two or more tokens attend with the flash kernel (the default where
    /// the head dimension allows) or with the per-query kernel, as single tokens do (then a
    /// prompt's bits do not depend on how it is cut into passes at all).
    pub fn set_flash(&mut self, on: bool) {
        self.flash = on;
    }

    /// Whether a fused decode step runs every layer as one persistent kernel (the default
    /// where the GPU and the model's shapes allow), or a kernel per stage; both give the same
    /// bits.
    pub fn set_persistent(&mut self, on: bool) {
        self.persistent = on;
    }

    fn fused_step(&self) -> bool {
        self.fused && self.n == 1 && self.seqs == 1
    }

    /// `BITNET_CUDA_PROFILE=1`: the last persistent decode step's time per stage in
    /// microseconds, summed over the layers (q/k/v, attention, o, gate/up, down), each as
    /// [waiting for its staged weights, its norm, the rest of its work, its barrier].
    pub fn persistent_profile(&self) -> Option<[[f64; 4]; 5]> {
        match &self.step {
            Some(Some(st)) => st.profile(&self.gpu).ok().flatten(),
            _ => None,
        }
    }

    /// Whether this batch's layers run as the persistent kernel (building it on first use).
    fn persistent_step(&mut self) -> bool {
        if !(self.persistent && self.fused_step()) {
            return false;
        }
        if self.step.is_none() {
            // The persistent kernel is an optimization: where it cannot be set up, the
            // per-stage kernels (the same bits) run instead of the step failing.
            let step = PersistentStep::new(&self.gpu, &self.shared.model, &self.k, &self.v);
            self.step = Some(step.ok().flatten());
        }
        matches!(&self.step, Some(Some(st)) if st.smem(&self.shared.model, self.ctx).is_some())
    }

    /// Grows the scratch for `n` tokens, `rows` logit rows and `words` of packed batch; any
    /// new buffer invalidates the captured graph, which holds the old pointers.
    fn ensure(&mut self, n: usize, rows: usize, words: usize) -> CudaResult<()> {
        if n > self.s.tokens || rows > self.s.rows {
            let tokens = self.s.tokens.max(n.next_power_of_two());
            let r = self.s.rows.max(rows.next_power_of_two());
            self.graphs.clear();
            // The old buffers go first: the new ones may need their memory.
            self.s = Scratch::new(&self.gpu, &self.shared.model, 1, 1)?;
            self.s = Scratch::new(&self.gpu, &self.shared.model, tokens, r)?;
        }
        if words > self.meta.len() {
            self.graphs.clear();
            self.meta = self.gpu.stream.alloc_zeros(words.next_power_of_two())?;
        }
        Ok(())
    }

    fn layer(&self, layer: usize) -> Result<&crate::model::GpuLayer> {
        self.shared.model.layers.get(layer).ok_or_else(|| {
            BackendError::Batch(format!(
                "layer {layer} of a model of {}",
                self.shared.model.layers.len()
            ))
        })
    }

    fn embed_op(&mut self) -> CudaResult<()> {
        let (n, m) = (self.n, &self.shared.model);
        if n == 0 {
            return Ok(());
        }
        let h = m.config.hidden_size;
        self.gpu.embed(
            m.embedding(),
            &self.meta.slice(..n),
            &mut self.s.x.slice_mut(..n * h),
        )
    }

    fn qkv_op(&mut self, l: usize) -> CudaResult<()> {
        self.norm_matmul(l, Proj::Qkv)
    }

    fn attention_op(&mut self, l: usize) -> CudaResult<()> {
        let (n, m) = (self.n, &self.shared.model);
        if n == 0 {
            return Ok(());
        }
        let d = m.dims;
        let (width, qd) = (d.qkv_dim(), d.q_dim());
        let fused = self.fused_step();
        let views = batch_views(&self.meta, self.lay, self.ctx, n, fused);
        let batch = PagedBatch::of(&views);
        let tiles = self
            .meta
            .slice(self.lay.tiles..self.lay.tiles + 2 * self.tiles);
        let s = &mut self.s;
        if fused {
            return self.gpu.rope_attention(
                &s.qkv.slice(..width),
                d,
                self.ctx,
                &m.inv_freq,
                &batch,
                &mut self.k[l],
                &mut self.v[l],
                &mut s.attn.slice_mut(..qd),
                &mut self.split,
            );
        }
        self.gpu.rope_kv(
            &mut s.qkv.slice_mut(..n * width),
            n,
            d,
            &m.inv_freq,
            &batch,
            &mut self.k[l],
            &mut self.v[l],
        )?;
        // Chunks of two or more tokens (prompts) on the tensor cores, single tokens (decode
        // steps of several sequences) by the per-query kernel with its exact bits.
        let flash = self.flash && self.tiles > 0 && d.flash_fits();
        if flash {
            self.gpu.attention_flash(
                &s.qkv.slice(..n * width),
                n,
                d,
                &batch,
                &tiles,
                &self.k[l],
                &self.v[l],
                &mut s.attn.slice_mut(..n * qd),
            )?;
            if !self.singles {
                return Ok(());
            }
        }
        self.gpu.attention(
            &s.qkv.slice(..n * width),
            n,
            d,
            self.ctx,
            &batch,
            &self.k[l],
            &self.v[l],
            &mut s.attn.slice_mut(..n * qd),
            flash,
        )
    }

    fn attn_out_op(&mut self, l: usize) -> CudaResult<()> {
        let (n, m) = (self.n, &self.shared.model);
        if n == 0 {
            return Ok(());
        }
        let lw = &m.layers[l];
        let (h, eps, qd) = (m.config.hidden_size, m.config.rms_norm_eps, m.dims.q_dim());
        let fused = self.fused_step();
        let s = &mut self.s;
        if fused {
            return self.gpu.norm_ternary_matmul(
                &s.attn.slice(..qd),
                NormInput::Plain,
                &lw.attn_sub_norm,
                eps,
                &lw.wo,
                &mut s.x.slice_mut(..h),
                true,
            );
        }
        s.acts_q.set_tokens(n)?;
        self.gpu.norm_quantize(
            &s.attn.slice(..n * qd),
            n,
            qd,
            NormInput::Plain,
            &lw.attn_sub_norm,
            eps,
            None,
            Some(&mut s.acts_q),
        )?;
        self.gpu
            .ternary_matmul_accumulate(&lw.wo, &s.acts_q, &mut s.x.slice_mut(..n * h))
    }

    fn gate_up_op(&mut self, l: usize) -> CudaResult<()> {
        self.norm_matmul(l, Proj::GateUp)
    }

    /// RMSNorm of the residual stream, int8 quantization and a stacked projection (q/k/v or
    /// gate/up): inside the matmul for a one-token step, as separate kernels for a batch (one
    /// norm kernel then serves all its tokens).
    fn norm_matmul(&mut self, l: usize, proj: Proj) -> CudaResult<()> {
        let (n, m) = (self.n, &self.shared.model);
        if n == 0 {
            return Ok(());
        }
        let lw = &m.layers[l];
        let (h, eps) = (m.config.hidden_size, m.config.rms_norm_eps);
        let fused = self.fused_step();
        let s = &mut self.s;
        let (norm, w, out) = match proj {
            Proj::Qkv => (&lw.attn_norm, &lw.qkv, &mut s.qkv),
            Proj::GateUp => (&lw.ffn_norm, &lw.gate_up, &mut s.gate_up),
        };
        let width = w.rows();
        if fused {
            return self.gpu.norm_ternary_matmul(
                &s.x.slice(..h),
                NormInput::Plain,
                norm,
                eps,
                w,
                &mut out.slice_mut(..width),
                false,
            );
        }
        s.acts_h.set_tokens(n)?;
        self.gpu.norm_quantize(
            &s.x.slice(..n * h),
            n,
            h,
            NormInput::Plain,
            norm,
            eps,
            None,
            Some(&mut s.acts_h),
        )?;
        self.gpu
            .ternary_matmul(w, &s.acts_h, &mut out.slice_mut(..n * width))
    }

    fn ffn_out_op(&mut self, l: usize) -> CudaResult<()> {
        let (n, m) = (self.n, &self.shared.model);
        if n == 0 {
            return Ok(());
        }
        let lw = &m.layers[l];
        let (h, eps) = (m.config.hidden_size, m.config.rms_norm_eps);
        let width = lw.gate_up.rows();
        let act = match m.config.activation() {
            Activation::Relu2 => NormInput::Relu2Gate,
            Activation::Silu => NormInput::SiluGate,
        };
        let fused = self.fused_step();
        let s = &mut self.s;
        if fused {
            return self.gpu.norm_ternary_matmul(
                &s.gate_up.slice(..width),
                act,
                &lw.ffn_sub_norm,
                eps,
                &lw.down,
                &mut s.x.slice_mut(..h),
                true,
            );
        }
        s.acts_f.set_tokens(n)?;
        self.gpu.norm_quantize(
            &s.gate_up.slice(..n * width),
            n,
            width,
            act,
            &lw.ffn_sub_norm,
            eps,
            None,
            Some(&mut s.acts_f),
        )?;
        self.gpu
            .ternary_matmul_accumulate(&lw.down, &s.acts_f, &mut s.x.slice_mut(..n * h))
    }

    /// Final norm and head for the rows that want logits, into `s.logits` (no copy back).
    fn head_op(&mut self) -> CudaResult<()> {
        let (n, r, m) = (self.n, self.rows, &self.shared.model);
        if r == 0 {
            return Ok(());
        }
        let (h, eps, vocab) = (m.config.hidden_size, m.config.rms_norm_eps, m.head.rows());
        let s = &mut self.s;
        if r == 1 {
            // One row needs no gather: the norm reads it where it is.
            let row = self.host[self.lay.rows] as usize;
            self.gpu.norm_quantize(
                &s.x.slice(row * h..(row + 1) * h),
                1,
                h,
                NormInput::Plain,
                &m.output_norm,
                eps,
                Some(&mut s.xn.slice_mut(..h)),
                None,
            )?;
        } else {
            let rows = self.meta.slice(self.lay.rows..self.lay.rows + r);
            self.gpu
                .gather_rows(&s.x.slice(..n * h), h, &rows, &mut s.xg.slice_mut(..r * h))?;
            self.gpu.norm_quantize(
                &s.xg.slice(..r * h),
                r,
                h,
                NormInput::Plain,
                &m.output_norm,
                eps,
                Some(&mut s.xn.slice_mut(..r * h)),
                None,
            )?;
        }
        self.gpu.head_rows(
            &m.head,
            &s.xn.slice(..r * h),
            r,
            &mut s.q8,
            &mut s.d8,
            &mut s.logits.slice_mut(..r * vocab),
        )
    }

    /// The greedy choice over the first `vocab` logits of each row, into `s.ids`.
    fn argmax_op(&mut self, vocab: usize) -> CudaResult<()> {
        let (r, stride) = (self.rows, self.shared.model.head.rows());
        let v = vocab.min(stride);
        if r == 0 || v == 0 {
            return Ok(());
        }
        let s = &mut self.s;
        if r == 1 {
            // Two stages over many blocks: one block over a 128K vocabulary takes ~50 us.
            return self.gpu.argmax_advance(
                &s.logits.slice(..v),
                &mut self.argmax,
                &mut s.ids,
                &mut self.spare_tok,
                &mut self.spare_pos,
                0,
            );
        }
        self.gpu.argmax_rows(
            &s.logits.slice(..r * stride),
            stride,
            v,
            &mut s.ids.slice_mut(..r),
        )
    }

    fn layers_op(&mut self) -> CudaResult<()> {
        self.embed_op()?;
        if self.persistent_step() {
            let m = &self.shared.model;
            let views = batch_views(&self.meta, self.lay, self.ctx, 1, true);
            let batch = PagedBatch::of(&views);
            let s = &mut self.s;
            if let Some(Some(step)) = &mut self.step {
                let (h, d) = (m.config.hidden_size, m.dims);
                let ffn = m.config.intermediate_size;
                return step.launch(
                    &self.gpu,
                    m,
                    self.ctx,
                    &batch,
                    &mut s.x.slice_mut(..h),
                    &mut s.qkv.slice_mut(..d.qkv_dim()),
                    &mut s.attn.slice_mut(..d.q_dim()),
                    &mut s.gate_up.slice_mut(..2 * ffn),
                    &mut self.split,
                );
            }
        }
        for l in 0..self.shared.model.layers.len() {
            self.qkv_op(l)?;
            self.attention_op(l)?;
            self.attn_out_op(l)?;
            self.gate_up_op(l)?;
            self.ffn_out_op(l)?;
        }
        Ok(())
    }

    fn read_logits(&mut self) -> CudaResult<Vec<f32>> {
        let len = self.rows * self.shared.model.head.rows();
        if len == 0 {
            return Ok(Vec::new());
        }
        self.host_logits
            .read(&self.gpu, &self.s.logits.slice(..len))
    }

    /// Each requested row's top-k candidates (`Gpu::top_k`) of the logits in `s.logits`.
    fn top_k_op(&mut self, vocab: usize, rows: &[TopK]) -> CudaResult<Vec<Vec<(u32, f32)>>> {
        let stride = self.shared.model.head.rows();
        if rows.len() != self.rows {
            return Err(CudaError::Shape(format!(
                "{} top-k requests for {} rows of logits",
                rows.len(),
                self.rows
            )));
        }
        self.gpu.top_k(
            &mut self.s.logits.slice_mut(..self.rows * stride),
            stride,
            vocab.min(stride),
            rows,
            &mut self.top_k,
        )
    }

    fn read_ids(&mut self, vocab: usize) -> CudaResult<Vec<u32>> {
        if self.rows == 0 || vocab == 0 {
            return Ok(vec![0; self.rows]);
        }
        self.host_ids
            .read(&self.gpu, &self.s.ids.slice(..self.rows))
    }

    /// Whether `seqs` is a decode step a captured graph can run: every chunk one token that
    /// wants its logits (the rows are then the tokens in order, read from the packed buffer).
    fn graph_step(&self, seqs: &[SeqChunk<'_>]) -> bool {
        self.use_graph
            && !seqs.is_empty()
            && seqs
                .iter()
                .all(|s| s.tokens.len() == 1 && s.want != Logits::None)
    }

    /// The batch already begun, through the graph for its shape: captured the second time the
    /// shape comes, replayed after that; the first time its kernels are launched one by one.
    fn replay(&mut self, greedy: Option<usize>) -> CudaResult<()> {
        let key = GraphKey {
            seqs: self.seqs,
            ctx: self.ctx,
            greedy,
            fused: self.fused_step(),
            persistent: self.persistent_step(),
        };
        match self.graphs.plan(key) {
            Plan::Replay => {
                if let Some(g) = self.graphs.last() {
                    g.0.launch()?;
                }
                Ok(())
            }
            Plan::Launch => self.pass(greedy),
            Plan::Capture => {
                let g = match self.capture(greedy) {
                    Ok(g) => g,
                    // A driver that cannot record a cooperative launch in a graph still runs
                    // the per-stage kernels: retry without the persistent kernel, for good.
                    Err(_) if key.persistent => {
                        self.step = Some(None);
                        return self.replay(greedy);
                    }
                    Err(e) => return Err(e),
                };
                g.launch()?;
                self.graphs.insert(key, Graph(g));
                Ok(())
            }
        }
    }

    /// The kernels of a pass over the batch already begun, through the head and, for
    /// `greedy`, the argmax (launched, or recorded while a graph is captured).
    fn pass(&mut self, greedy: Option<usize>) -> CudaResult<()> {
        self.layers_op()?;
        self.head_op()?;
        match greedy {
            Some(v) => self.argmax_op(v),
            None => Ok(()),
        }
    }

    /// Records the pass (recording runs nothing); the launches read every input that changes
    /// between decode steps from the packed batch buffer.
    fn capture(&mut self, greedy: Option<usize>) -> CudaResult<CudaGraph> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let stream = self.gpu.stream.clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let recorded = self.pass(greedy);
        // Capture must end even when recording failed, or the stream stays unusable.
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        graph?.ok_or_else(|| CudaError::Shape("the decode step captured no work".into()))
    }
}

impl Context for CudaContext {
    fn layers(&self) -> usize {
        self.shared.model.layers.len()
    }

    fn kv_blocks(&self) -> usize {
        self.kv_blocks
    }

    fn vocab_size(&self) -> usize {
        self.shared.model.head.rows()
    }

    fn begin(&mut self, seqs: &[SeqChunk<'_>]) -> Result<()> {
        // A batch that fails to begin leaves an empty one, never half of the last.
        (self.n, self.seqs, self.rows, self.tiles) = (0, 0, 0, 0);
        let m = &self.shared.model;
        let vocab = m.embedding().rows();
        let (mut n, mut rows, mut table_words, mut longest) = (0usize, 0usize, 0usize, 0usize);
        let (mut tile_words, mut singles) = (0usize, false);
        for (i, s) in seqs.iter().enumerate() {
            let bad = |what: String| Err(BackendError::Batch(format!("chunk {i}: {what}")));
            if s.tokens.is_empty() {
                return bad("no tokens".into());
            }
            match s.check(self.kv_blocks, vocab) {
                Ok(()) => {}
                Err(BackendError::Batch(what)) => return bad(what),
                Err(e) => return Err(e),
            }
            let end = s.start + s.tokens.len();
            let need = end.div_ceil(KV_BLOCK);
            n += s.tokens.len();
            rows += match s.want {
                Logits::Last => 1,
                Logits::All => s.tokens.len(),
                Logits::None => 0,
            };
            table_words += need;
            longest = longest.max(end);
            if s.tokens.len() >= 2 {
                tile_words += 2 * s.tokens.len().div_ceil(FLASH_TILE);
            } else {
                singles = true;
            }
        }
        let max_len = m.dims.max_attn_len();
        if longest > max_len {
            return Err(BackendError::Unsupported(format!(
                "a sequence of {longest} positions on the GPU (its attention kernel keeps the \
                 sequence's block ids in shared memory: at most {max_len} positions for head \
                 dimension {})",
                m.dims.head_dim
            )));
        }
        let lay = Layout {
            pos: n,
            slot: 2 * n,
            table: 3 * n,
            rows: 4 * n,
            tiles: 4 * n + rows,
            blocks: 4 * n + rows + tile_words,
            end: 4 * n + rows + tile_words + table_words,
        };
        let host = &mut self.host;
        host.clear();
        host.resize(lay.tiles, 0);
        let mut t = 0usize;
        for s in seqs {
            push_flash_tiles(host, t, s.tokens.len());
            t += s.tokens.len();
        }
        debug_assert_eq!(host.len(), lay.blocks);
        host.resize(lay.end, 0);
        let (mut t, mut row, mut tab) = (0usize, lay.rows, lay.blocks);
        for s in seqs {
            let need = (s.start + s.tokens.len()).div_ceil(KV_BLOCK);
            let table_at = (tab - lay.blocks) as u32;
            host[tab..tab + need].copy_from_slice(&s.blocks[..need]);
            tab += need;
            let first = t;
            for (j, &tok) in s.tokens.iter().enumerate() {
                let p = s.start + j;
                host[t] = tok;
                host[lay.pos + t] = p as u32;
                host[lay.slot + t] =
                    s.blocks[p / KV_BLOCK] * KV_BLOCK as u32 + (p % KV_BLOCK) as u32;
                host[lay.table + t] = table_at;
                t += 1;
            }
            let wanted = match s.want {
                Logits::Last => t - 1..t,
                Logits::All => first..t,
                Logits::None => t..t,
            };
            for r in wanted {
                host[row] = r as u32;
                row += 1;
            }
        }
        let ctx = longest.next_power_of_two().max(256).min(max_len);
        // Past the end: room for the ctx / KV_BLOCK block ids the fused decode kernel loads.
        self.ensure(n, rows, lay.end.max(lay.blocks + ctx / KV_BLOCK))
            .map_err(dev)?;
        let dims = self.shared.model.dims;
        if !self.split.fits(dims, ctx) {
            // New records: the captured graphs hold the old ones.
            self.graphs.clear();
            self.split = AttnSplit::new(&self.gpu, dims, ctx).map_err(dev)?;
        }
        if lay.end > 0 {
            // `meta` holds lay.end words (ensured above).
            self.gpu
                .copy_in_async(&mut self.meta, &self.host)
                .map_err(dev)?;
        }
        self.lay = lay;
        (self.n, self.seqs, self.rows) = (n, seqs.len(), rows);
        (self.tiles, self.singles) = (tile_words / 2, singles);
        self.ctx = ctx;
        Ok(())
    }

    fn embed(&mut self) -> Result<()> {
        self.embed_op().map_err(dev)
    }

    fn qkv(&mut self, layer: usize) -> Result<()> {
        self.layer(layer)?;
        self.qkv_op(layer).map_err(dev)
    }

    fn attention(&mut self, layer: usize) -> Result<()> {
        self.layer(layer)?;
        self.attention_op(layer).map_err(dev)
    }

    fn attn_out(&mut self, layer: usize) -> Result<()> {
        self.layer(layer)?;
        self.attn_out_op(layer).map_err(dev)
    }

    fn gate_up(&mut self, layer: usize) -> Result<()> {
        self.layer(layer)?;
        self.gate_up_op(layer).map_err(dev)
    }

    fn ffn_out(&mut self, layer: usize) -> Result<()> {
        self.layer(layer)?;
        self.ffn_out_op(layer).map_err(dev)
    }

    fn logits(&mut self) -> Result<Vec<f32>> {
        self.head_op().map_err(dev)?;
        self.read_logits().map_err(dev)
    }

    fn greedy(&mut self, vocab: usize) -> Result<Vec<u32>> {
        self.head_op().map_err(dev)?;
        self.argmax_op(vocab).map_err(dev)?;
        self.read_ids(vocab).map_err(dev)
    }

    fn forward(&mut self, seqs: &[SeqChunk<'_>]) -> Result<Vec<f32>> {
        if !self.graph_step(seqs) {
            run_layers(self, seqs)?;
            return self.logits();
        }
        self.begin(seqs)?;
        self.replay(None).map_err(dev)?;
        self.read_logits().map_err(dev)
    }

    fn top_k(&mut self, vocab: usize, rows: &[TopK]) -> Result<Vec<Vec<(u32, f32)>>> {
        self.head_op().map_err(dev)?;
        self.top_k_op(vocab, rows).map_err(dev)
    }

    fn forward_top_k(
        &mut self,
        seqs: &[SeqChunk<'_>],
        vocab: usize,
        rows: &[TopK],
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        if !self.graph_step(seqs) {
            run_layers(self, seqs)?;
            return self.top_k(vocab, rows);
        }
        self.begin(seqs)?;
        self.replay(None).map_err(dev)?;
        self.top_k_op(vocab, rows).map_err(dev)
    }

    fn forward_greedy(&mut self, seqs: &[SeqChunk<'_>], vocab: usize) -> Result<Vec<u32>> {
        if !self.graph_step(seqs) {
            run_layers(self, seqs)?;
            return self.greedy(vocab);
        }
        self.begin(seqs)?;
        let v = vocab.min(self.vocab_size());
        self.replay(Some(v)).map_err(dev)?;
        self.read_ids(v).map_err(dev)
    }
}

/// The two projections that read the normalized residual stream.
#[derive(Clone, Copy)]
enum Proj {
    Qkv,
    GateUp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seqs: usize) -> GraphKey {
        GraphKey {
            seqs,
            ctx: 256,
            greedy: Some(1000),
            fused: seqs == 1,
            persistent: false,
        }
    }

    #[test]
    fn a_shape_is_captured_the_second_time_and_replayed_after() {
        let mut c = GraphCache::new();
        assert_eq!(c.plan(key(16)), Plan::Launch);
        assert_eq!(c.plan(key(64)), Plan::Launch);
        assert_eq!(c.plan(key(16)), Plan::Capture);
        c.insert(key(16), 16);
        assert_eq!(c.plan(key(16)), Plan::Replay);
        assert_eq!(c.last(), Some(&16));
        assert_eq!(c.plan(key(64)), Plan::Capture);
        c.insert(key(64), 64);
        // A hit becomes the most recently used, whatever was inserted last.
        assert_eq!(c.plan(key(16)), Plan::Replay);
        assert_eq!(c.last(), Some(&16));
        // Cleared graphs start over: launched once, captured the next time.
        c.clear();
        assert_eq!(c.plan(key(16)), Plan::Launch);
        assert_eq!(c.plan(key(16)), Plan::Capture);
    }

    #[test]
    fn the_least_recently_used_graph_goes_first() {
        let mut c = GraphCache::new();
        for s in 1..=MAX_GRAPHS {
            assert_eq!(c.plan(key(s)), Plan::Launch);
            assert_eq!(c.plan(key(s)), Plan::Capture);
            c.insert(key(s), s);
        }
        // Shape 1 used again: shape 2 is now the least recently used.
        assert_eq!(c.plan(key(1)), Plan::Replay);
        let new = MAX_GRAPHS + 1;
        assert_eq!(c.plan(key(new)), Plan::Launch);
        assert_eq!(c.plan(key(new)), Plan::Capture);
        c.insert(key(new), new);
        assert_eq!(c.graphs.len(), MAX_GRAPHS);
        assert_eq!(c.plan(key(1)), Plan::Replay);
        assert_eq!(c.plan(key(2)), Plan::Launch);
        for s in 3..=new {
            assert_eq!(c.plan(key(s)), Plan::Replay, "shape {s}");
            assert_eq!(c.last(), Some(&s));
        }
    }

    #[test]
    fn shapes_seen_once_are_remembered_up_to_the_limit() {
        let mut c = GraphCache::<usize>::new();
        for s in 1..=MAX_GRAPHS + 1 {
            assert_eq!(c.plan(key(s)), Plan::Launch);
        }
        // The first was forgotten to make room; the last MAX_GRAPHS are remembered.
        assert_eq!(c.plan(key(1)), Plan::Launch);
        assert_eq!(c.plan(key(MAX_GRAPHS + 1)), Plan::Capture);
    }
}
