//! The CPU's pieces of the forward pass: RoPE, the scratch buffers, row-parallel helpers and
//! attention over the paged cache. The operations that use them are in `super`.

use super::kv_cache::Buf;
use bitnet_backend::KV_BLOCK;
use bitnet_kernels::{ops, QuantizedActivations};
use bitnet_models::ModelConfig;

/// Precomputed RoPE frequencies, as transformers computes them (f32 `inv_freq`).
pub(crate) struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub(crate) fn new(c: &ModelConfig) -> Rope {
        let d = c.head_dim;
        let inv_freq = (0..d / 2)
            .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / d as f32))
            .collect();
        Rope { inv_freq }
    }

    /// cos/sin of every frequency at each position in `positions`, concatenated: the table
    /// [`Self::apply`] reads, computed once per batch instead of once per layer.
    pub(super) fn table(
        &self,
        positions: impl Iterator<Item = usize>,
        cos: &mut Vec<f32>,
        sin: &mut Vec<f32>,
    ) {
        cos.clear();
        sin.clear();
        for pos in positions {
            for f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }

    /// Rotates every head of `x` (`n_heads * head_dim` values) by one position's `cos`/`sin`
    /// (`head_dim / 2` each), pairing element i with i + head_dim/2 (NEOX / transformers'
    /// rotate_half).
    pub(super) fn apply(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = head_dim / 2;
        for head in x.chunks_exact_mut(head_dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

/// Reusable buffers for one batch; sized on first use.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(super) x: Vec<f32>,
    pub(super) xn: Vec<f32>,
    pub(super) q: Vec<f32>,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    pub(super) attn: Vec<f32>,
    pub(super) attn_tmp: Vec<f32>,
    pub(super) proj: Vec<f32>,
    pub(super) gate: Vec<f32>,
    pub(super) up: Vec<f32>,
    pub(super) hidden: Vec<f32>,
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
    pub(super) acts: QuantizedActivations,
}

pub(super) fn resize(v: &mut Vec<f32>, n: usize) {
    v.clear();
    v.resize(n, 0.0);
}

/// One sequence's part of the batch set up by `begin`, owned so that the operations after it
/// need no borrow of the engine's block tables.
pub(super) struct Chunk {
    pub(super) start: usize,
    pub(super) len: usize,
    /// Its first token's index in the batch.
    pub(super) first: usize,
    /// Its block table: `Batch::blocks[blocks.0..blocks.1]`.
    pub(super) blocks: (usize, usize),
}

/// The batch of the running pass.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) tokens: Vec<u32>,
    pub(super) chunks: Vec<Chunk>,
    pub(super) blocks: Vec<u32>,
    /// The cache offset every token's K/V goes to.
    pub(super) slots: Vec<usize>,
    /// Tokens (batch rows) whose logits were asked for, in order.
    pub(super) rows: Vec<usize>,
}

impl Batch {
    pub(super) fn table(&self, c: &Chunk) -> &[u32] {
        &self.blocks[c.blocks.0..c.blocks.1]
    }
}

/// `f(i, row i)` for the `dim`-sized rows of `data`, spread over the pool when the batch has
/// enough rows to pay for the loop (a decode step's single row runs inline).
pub(super) fn rows_mut(data: &mut [f32], dim: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if data.len() >= bitnet_kernels::PAR_ROWS * dim
        && bitnet_kernels::pool::current_num_threads() > 1
    {
        bitnet_kernels::pool::for_each_chunk_mut(data, dim, f);
    } else {
        for (i, row) in data.chunks_exact_mut(dim).enumerate() {
            f(i, row);
        }
    }
}

pub(super) fn norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], dim: usize) {
    rows_mut(out, dim, |i, o| {
        ops::rms_norm(&x[i * dim..][..dim], weight, eps, o)
    });
}

pub(super) fn norm_inplace(row: &mut [f32], weight: &[f32], eps: f32) {
    NORM_TMP.with_borrow_mut(|tmp| {
        tmp.clear();
        tmp.resize(row.len(), 0.0);
        ops::rms_norm(row, weight, eps, tmp);
        row.copy_from_slice(tmp);
    });
}

pub(super) fn norm_rows_inplace(x: &mut [f32], weight: &[f32], eps: f32, dim: usize) {
    rows_mut(x, dim, |_, row| norm_inplace(row, weight, eps));
}

pub(super) fn add_assign(x: &mut [f32], y: &[f32], dim: usize) {
    rows_mut(x, dim, |i, row| ops::axpy(1.0, &y[i * dim..][..dim], row));
}

/// Query tokens per attention task.
const Q_BLOCK: usize = 8;

/// Causal grouped-query attention for the new tokens of every chunk, each reading keys and
/// values for its own positions `0..=pos` through its block table. One task per (query head,
/// run of at most [`Q_BLOCK`] tokens of one sequence): 20 tasks for a 2B4T decode step, so two
/// threads split them evenly (per-KV-head tasks split 3:2), and a batch of decode steps gives
/// 20 per sequence. Each query reads its head's cached rows in place, a block's rows per call
/// (`Buf::dots` / `Buf::axpys`, f16 converted in registers, per-row results that do not depend
/// on how the rows are split into calls): a call per cached row cost as much as the
/// 128-element dot itself, and widened f32 copies of the rows only paid off across many
/// queries. Results go to `tmp` laid out per task and are scattered into `out`
/// (`[token][head * head_dim]`) afterwards.
pub(super) fn attention(
    c: &ModelConfig,
    q: &[f32],
    k: &Buf,
    v: &Buf,
    batch: &Batch,
    tmp: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, nh, nkv, kvd) = (c.head_dim, c.num_heads, c.num_kv_heads, c.kv_dim());
    let group = nh / nkv;
    // Runs of consecutive tokens of one sequence: (chunk, first token in the batch, first
    // token in the chunk, length). A decode step's runs have one token: sizing every run by
    // Q_BLOCK would zero 8x the scratch.
    let mut runs = Vec::new();
    for (ci, sq) in batch.chunks.iter().enumerate() {
        let n = sq.len;
        let mut i = 0;
        while i < n {
            let len = Q_BLOCK.min(n - i);
            runs.push((ci, sq.first + i, i, len));
            i += len;
        }
    }
    let block = runs.iter().map(|r| r.3).max().unwrap_or(1);
    let per_task = block * hd;
    let nruns = runs.len();
    resize(tmp, nh * nruns * per_task);
    let scale = 1.0 / (hd as f32).sqrt();
    bitnet_kernels::pool::for_each_chunk_mut(tmp, per_task, |task, o| {
        let (head, r) = (task / nruns, task % nruns);
        let (ci, tok0, i0, len) = runs[r];
        let sq = &batch.chunks[ci];
        let blocks = batch.table(sq);
        let col = (head / group) * hd;
        SCORES.with_borrow_mut(|scores| {
            for j in 0..len {
                let n = sq.start + i0 + j + 1;
                let qh = &q[((tok0 + j) * nh + head) * hd..][..hd];
                scores.clear();
                scores.resize(n, 0.0);
                for (b, sc) in scores.chunks_mut(KV_BLOCK).enumerate() {
                    let at = blocks[b] as usize * KV_BLOCK * kvd + col;
                    k.dots(at, kvd, qh, sc);
                }
                scores.iter_mut().for_each(|s| *s *= scale);
                ops::softmax_inplace(scores);
                let oh = &mut o[j * hd..][..hd];
                oh.fill(0.0);
                for (b, sc) in scores.chunks(KV_BLOCK).enumerate() {
                    let at = blocks[b] as usize * KV_BLOCK * kvd + col;
                    v.axpys(at, kvd, sc, oh);
                }
            }
        });
    });
    for head in 0..nh {
        for (r, &(_, tok0, _, len)) in runs.iter().enumerate() {
            for j in 0..len {
                let src = &tmp[(head * nruns + r) * per_task + j * hd..][..hd];
                out[((tok0 + j) * nh + head) * hd..][..hd].copy_from_slice(src);
            }
        }
    }
}

thread_local! {
    /// Attention scores of the running task, reused so decoding allocates nothing.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A row being normalized in place.
    static NORM_TMP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
