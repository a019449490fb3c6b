//! The seam between the engine and the hardware.
//!
//! The engine (`bitnet-inference`) decides *what* to compute: which sequences run in a step,
//! which of their tokens, where their keys and values live (block tables over a paged KV cache)
//! and which positions need logits. A [`Backend`] decides *how*: it owns the model's weights in
//! the layout its kernels want (host memory for the CPU, device memory for CUDA), and each
//! [`Context`] it creates owns a paged KV cache and the scratch buffers of one stream of forward
//! passes.
//!
//! The forward pass is written once, in [`forward`], as five fused operations per layer. The
//! boundaries are where every backend wants them: each BitLinear's RMSNorm and int8 activation
//! quantization run with the matmul that consumes them (a GPU fuses them into one kernel, the
//! CPU quantizes once for q/k/v and once for gate/up), RoPE and the KV write run with attention,
//! and the residual add runs in the epilogue of the matmul that produces it. What happens inside
//! an operation (which kernel, which tile, which ISA) is the backend's business.
//!
//! Data flows one way: model file -> `bitnet-models` (weights) -> backend (kernels) -> engine.

use std::fmt;

pub mod sampling;

use sampling::TopK;

/// Positions per KV block. Every backend's paged cache uses the same block size, so the engine's
/// block tables (and its prefix cache) mean the same thing on every device.
pub const KV_BLOCK: usize = 32;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    /// llama.cpp's and bitnet.cpp's default: half the memory and half the bytes attention reads.
    #[default]
    F16,
    /// Keeps the forward pass bit-for-bit the reference's float math.
    F32,
}

impl KvType {
    pub fn parse(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(KvType::F16),
            "f32" => Some(KvType::F32),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

/// Which positions of a chunk need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
    None,
}

/// One sequence's part of a forward batch: `tokens` at positions `start..start + tokens.len()`,
/// its KV blocks in position order (covering those positions), and which logits it wants.
/// Position `p` of the sequence lives in block `blocks[p / KV_BLOCK]`, row `p % KV_BLOCK`.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub blocks: &'a [u32],
    pub want: Logits,
}

impl SeqChunk<'_> {
    /// The contract of [`Context::begin`] for this chunk: its blocks cover its positions, every
    /// block lies inside a cache of `kv_blocks`, every token inside a vocabulary of `vocab`.
    /// The engine keeps it; each backend checks it so that a broken batch is a
    /// [`BackendError::Batch`], never an index panic or a write into another sequence's blocks
    /// in the middle of a layer.
    pub fn check(&self, kv_blocks: usize, vocab: usize) -> Result<()> {
        let end = self.start.saturating_add(self.tokens.len());
        if end > self.blocks.len().saturating_mul(KV_BLOCK) {
            return Err(BackendError::Batch(format!(
                "positions up to {end} but {} KV blocks",
                self.blocks.len()
            )));
        }
        if let Some(&b) = self.blocks.iter().find(|&&b| b as usize >= kv_blocks) {
            return Err(BackendError::Batch(format!(
                "KV block {b} outside the cache of {kv_blocks} blocks"
            )));
        }
        if let Some(&id) = self.tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(BackendError::Batch(format!(
                "token {id} outside the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }
}

/// Where the forward pass runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
    /// An NVIDIA GPU by its CUDA ordinal.
    Cuda(usize),
}

impl Device {
    /// `cpu`, `cuda` (GPU 0) or `cuda:N`, as `--device` and `BITNET_DEVICE` take them.
    pub fn parse(s: &str) -> std::result::Result<Device, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Device::Cuda)
                    .map_err(|_| format!("`{s}`: the GPU ordinal after `cuda:` must be a number")),
                None => Err(format!("`{s}`: expected cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Device, String> {
        Device::parse(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device cannot be used at all: no driver, no such GPU, or a build without its support.
    #[error("{0}")]
    Unavailable(String),
    /// The device works but cannot run this model or setting (a head type it has no kernel for,
    /// a KV type it does not store, a context too long for its attention kernel).
    #[error("{0}")]
    Unsupported(String),
    /// A batch that breaks the contract of [`Context::begin`] (an engine bug, not user input).
    #[error("invalid batch: {0}")]
    Batch(String),
    /// The device failed while running (out of memory, a launch or copy error).
    #[error("{0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// A model resident on one device. Shared by every session and scheduler of an engine.
pub trait Backend: Send + Sync {
    fn device(&self) -> Device;

    /// One line for logs and `bench`: the device's name and what runs there.
    fn describe(&self) -> String;

    /// Bytes of a KV cache of `blocks` blocks, for planning before [`Self::new_context`].
    fn kv_bytes(&self, blocks: usize, ty: KvType) -> usize;

    /// A context with a paged KV cache of `blocks` blocks of [`KV_BLOCK`] positions and scratch
    /// for batches of up to `max_batch_tokens` tokens (larger batches may grow the scratch).
    fn new_context(
        &self,
        blocks: usize,
        ty: KvType,
        max_batch_tokens: usize,
    ) -> Result<Box<dyn Context>>;
}

/// One stream of forward passes: a paged KV cache and scratch, on the backend's device.
///
/// A pass is [`Self::begin`], [`Self::embed`], the five layer operations for every layer in
/// order, then [`Self::logits`] or [`Self::greedy`]; [`forward`] and [`forward_greedy`] drive
/// it. Operations may run asynchronously (a GPU queues kernels); results are only observable
/// through `logits`/`greedy`, which wait for them.
pub trait Context: Send {
    /// Number of transformer layers the operations take `layer` indices from.
    fn layers(&self) -> usize;

    /// Blocks in this context's KV cache.
    fn kv_blocks(&self) -> usize;

    /// Starts a pass over the tokens of `seqs` (each chunk's blocks cover its positions and lie
    /// below [`Self::kv_blocks`]; the engine checks both).
    fn begin(&mut self, seqs: &[SeqChunk<'_>]) -> Result<()>;

    /// Residual stream = embedding rows of the batch's tokens.
    fn embed(&mut self) -> Result<()>;

    /// `attn_norm` RMSNorm, int8 quantization, and the q, k and v projections.
    fn qkv(&mut self, layer: usize) -> Result<()>;

    /// RoPE on q and k, the new keys and values into the KV cache, causal grouped-query
    /// attention of every token over its own sequence's positions `0..=pos`.
    fn attention(&mut self, layer: usize) -> Result<()>;

    /// `attn_sub_norm`, int8 quantization, the o projection, added into the residual stream.
    fn attn_out(&mut self, layer: usize) -> Result<()>;

    /// `ffn_norm` RMSNorm, int8 quantization, and the gate and up projections.
    fn gate_up(&mut self, layer: usize) -> Result<()>;

    /// `act(gate) * up`, `ffn_sub_norm`, int8 quantization, the down projection, added into
    /// the residual stream.
    fn ffn_out(&mut self, layer: usize) -> Result<()>;

    /// Final RMSNorm and LM head for the positions the chunks asked for, chunk by chunk:
    /// `vocab_size` values per row (empty when none asked).
    fn logits(&mut self) -> Result<Vec<f32>>;

    /// Like [`Self::logits`], but only the id of the largest logit among the first `vocab`
    /// entries of each requested row (the first one on ties). A GPU picks it on the device and
    /// copies back only the ids.
    fn greedy(&mut self, vocab: usize) -> Result<Vec<u32>> {
        let logits = self.logits()?;
        let rows = logits.len().checked_div(self.vocab_size()).unwrap_or(0);
        let stride = self.vocab_size();
        Ok((0..rows)
            .map(|r| argmax(&logits[r * stride..][..vocab.min(stride)]))
            .collect())
    }

    /// Like [`Self::logits`], but for each requested row only its `rows[i].k` best candidates
    /// among the first `vocab` logits, as [`sampling::top_k`] selects them (penalties, then
    /// the temperature; best first). A GPU selects them on the device and copies back only
    /// those. `rows` has one entry per requested row.
    fn top_k(&mut self, vocab: usize, rows: &[TopK]) -> Result<Vec<Vec<(u32, f32)>>> {
        let mut logits = self.logits()?;
        let stride = self.vocab_size();
        let n = logits.len().checked_div(stride).unwrap_or(0);
        if n != rows.len() {
            return Err(BackendError::Batch(format!(
                "{} top-k requests for {n} rows of logits",
                rows.len()
            )));
        }
        Ok(logits
            .chunks_exact_mut(stride.max(1))
            .zip(rows)
            .map(|(row, req)| {
                let mut cand = Vec::new();
                sampling::top_k(&mut row[..vocab.min(stride)], req, &mut cand);
                cand
            })
            .collect())
    }

    /// Rows of the LM head (`logits` returns this many values per requested position).
    fn vocab_size(&self) -> usize;

    /// One whole pass; a backend may override it to replay a captured pass (a CUDA graph) when
    /// the batch has the shape of the last one.
    fn forward(&mut self, seqs: &[SeqChunk<'_>]) -> Result<Vec<f32>> {
        run_layers(self, seqs)?;
        self.logits()
    }

    /// One whole pass ending in [`Self::greedy`].
    fn forward_greedy(&mut self, seqs: &[SeqChunk<'_>], vocab: usize) -> Result<Vec<u32>> {
        run_layers(self, seqs)?;
        self.greedy(vocab)
    }

    /// `f(i)` for every `i < n`, on this backend's host threads where it has them (the engine
    /// samples whole rows of logits there: ~0.1 ms of softmax over a 128k vocabulary a row, more
    /// with a top-p nucleus to sort, which a batch of 16 sequences would otherwise spend in turn
    /// on one thread between steps).
    /// The default runs them in turn on the caller.
    fn parallel_for(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..n).for_each(f)
    }

    /// One whole pass ending in [`Self::top_k`].
    fn forward_top_k(
        &mut self,
        seqs: &[SeqChunk<'_>],
        vocab: usize,
        rows: &[TopK],
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        run_layers(self, seqs)?;
        self.top_k(vocab, rows)
    }
}

/// The BitNet b1.58 forward pass, once for every backend: embedding, then per layer
/// `x += o(attn_sub_norm(attn(rope(q(n1(x))), rope(k(..)), v(..))))` and
/// `x += down(ffn_sub_norm(act(gate(n2(x))) * up(n2(x))))`.
pub fn run_layers<C: Context + ?Sized>(c: &mut C, seqs: &[SeqChunk<'_>]) -> Result<()> {
    c.begin(seqs)?;
    c.embed()?;
    for layer in 0..c.layers() {
        c.qkv(layer)?;
        c.attention(layer)?;
        c.attn_out(layer)?;
        c.gate_up(layer)?;
        c.ffn_out(layer)?;
    }
    Ok(())
}

/// Index of the largest value (the first one on ties; NaN never wins). 0 for an empty slice.
pub fn argmax(xs: &[f32]) -> u32 {
    max_first(xs).map_or(0, |(i, _)| i as u32)
}

/// The largest value above negative infinity (NaN never counts) and the index of its first
/// occurrence; `None` when there is none. Equal to the one-pass `if v > best` scan, in two passes
/// that vectorize (a decode step of 16 sequences picks from 16 x 128k logits: the scan's
/// compare-and-branch chain took 1.2 ms of a ~20 ms step, these passes about a third of it).
pub fn max_first(xs: &[f32]) -> Option<(usize, f32)> {
    // Independent lanes so the compiler keeps a vector of maxima (`f32::max` skips NaN).
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let best = lanes
        .into_iter()
        .chain(chunks.remainder().iter().copied())
        .fold(f32::NEG_INFINITY, f32::max);
    if best == f32::NEG_INFINITY {
        return None;
    }
    // The first block holding it (a vectorized test of 64 values), then its place there.
    const BLOCK: usize = 64;
    xs.chunks(BLOCK).enumerate().find_map(|(b, blk)| {
        blk.iter()
            .fold(false, |hit, &v| hit | (v == best))
            .then(|| {
                blk.iter()
                    .position(|&v| v == best)
                    .map(|i| (b * BLOCK + i, blk[i]))
            })
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        assert_eq!(Device::parse("cpu"), Ok(Device::Cpu));
        assert_eq!(Device::parse("CUDA"), Ok(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:3"), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        assert!(Device::parse("cuda:x").unwrap_err().contains("ordinal"));
        assert!(Device::parse("tpu").unwrap_err().contains("expected cpu"));
    }

    #[test]
    fn argmax_takes_the_first_of_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0]), 1);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN]), 0);
        assert_eq!(max_first(&[f32::NAN, f32::NEG_INFINITY]), None);
    }

    /// The one-pass scan that `argmax` replaced: the definition.
    fn argmax_scan(xs: &[f32]) -> u32 {
        let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
        for (i, &v) in xs.iter().enumerate() {
            if v > best_v {
                best = i;
                best_v = v;
            }
        }
        best as u32
    }

    #[test]
    fn argmax_equals_the_one_pass_scan() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Few distinct values (ties everywhere), signed zeros, NaN and infinities, lengths
        // around the lane and block sizes.
        let pool = [
            0.0,
            -0.0,
            1.5,
            -2.0,
            3.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for len in (0..200).chain([1000, 4099]) {
            for _ in 0..20 {
                let rare = next() % 4 == 0;
                let xs: Vec<f32> = (0..len)
                    .map(|_| {
                        let r = next();
                        if rare && r % 50 != 0 {
                            pool[(r % 2) as usize + 5 * usize::from(r % 3 == 0)]
                        } else {
                            pool[(r % pool.len() as u64) as usize]
                        }
                    })
                    .collect();
                assert_eq!(argmax(&xs), argmax_scan(&xs), "{xs:?}");
                let v: Vec<f32> = (0..len).map(|_| (next() % 1000) as f32 / 7.0).collect();
                assert_eq!(argmax(&v), argmax_scan(&v));
            }
        }
    }
}
