//! The BitNet b1.58 forward pass over a batch of tokens.
//!
//! Per block: `x += o(attn_sub_norm(attn(rope(q(n1(x))), rope(k(..)), v(..))))`, then
//! `x += down(ffn_sub_norm(act(gate(n2(x))) * up(n2(x))))`. Every BitLinear quantizes its input
//! per token to int8 once (shared by q/k/v and by gate/up) and accumulates in integers.

use crate::kv_cache::{Buf, KvCache, KV_BLOCK};
use crate::profile::{Stage, Timer};
use bitnet_kernels::{
    ops, ternary_matmul, ternary_matmul_many, DenseMatrixExt, QuantizedActivations,
};
use bitnet_models::{Activation, ModelConfig, ModelWeights};

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
    fn table(
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
    fn apply(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
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
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    attn_tmp: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    hidden: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    acts: QuantizedActivations,
}

fn resize(v: &mut Vec<f32>, n: usize) {
    v.clear();
    v.resize(n, 0.0);
}

/// Which positions of the batch need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
    None,
}

/// One sequence's part of a forward batch: `tokens` at positions `start..start + tokens.len()`,
/// its KV blocks in position order (covering those positions), and which logits it wants.
pub(crate) struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub blocks: &'a [u32],
    pub want: Logits,
}

/// Runs the tokens of every chunk (already checked against the vocabulary and the blocks) in one
/// pass: each matrix multiplies all tokens of the batch at once, attention runs per sequence over
/// its own cached positions. Fills the cache and returns the requested logits, chunk by chunk.
///
/// Every step is per token (RMSNorm, int8 quantization, integer matmuls, RoPE, attention over the
/// sequence's own positions), so a sequence's K/V and hidden states do not depend on what else is
/// in the batch; only the float LM head sums in a different order for one token than for a tile.
pub(crate) fn forward(
    w: &ModelWeights,
    rope: &Rope,
    cache: &mut KvCache,
    s: &mut Scratch,
    seqs: &[SeqChunk<'_>],
) -> Vec<f32> {
    let c = &w.config;
    let t: usize = seqs.iter().map(|q| q.tokens.len()).sum();
    let mut timer = Timer::start();
    let (h, qd, kvd, ffn) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    resize(&mut s.x, t * h);
    let ids = seqs.iter().flat_map(|q| q.tokens);
    for (row, &id) in s.x.chunks_exact_mut(h).zip(ids) {
        w.token_embd.row_f32(id as usize, row);
    }
    resize(&mut s.xn, t * h);
    resize(&mut s.q, t * qd);
    resize(&mut s.k, t * kvd);
    resize(&mut s.v, t * kvd);
    resize(&mut s.attn, t * qd);
    resize(&mut s.proj, t * h);
    resize(&mut s.gate, t * ffn);
    resize(&mut s.up, t * ffn);
    resize(&mut s.hidden, t * ffn);
    // The cache offset every token's K/V goes to, and its rotation.
    let mut slots = Vec::with_capacity(t);
    for q in seqs {
        for p in q.start..q.start + q.tokens.len() {
            slots.push(cache.offset(q.blocks, p));
        }
    }
    let positions = seqs.iter().flat_map(|q| q.start..q.start + q.tokens.len());
    rope.table(positions, &mut s.cos, &mut s.sin);
    let half = c.head_dim / 2;
    timer.stage(Stage::Embed);

    for (l, lw) in w.layers.iter().enumerate() {
        // Attention.
        norm_rows(&s.x, &lw.attn_norm, c.rms_norm_eps, &mut s.xn, h);
        s.acts.quantize(&s.xn, t, h);
        timer.stage(Stage::AttnNorm);
        ternary_matmul_many(
            &[&lw.wq, &lw.wk, &lw.wv],
            &s.acts,
            &mut [&mut s.q, &mut s.k, &mut s.v],
        );
        timer.stage(Stage::Qkv);
        let (cos, sin) = (&s.cos, &s.sin);
        for (q, dim) in [(&mut s.q, qd), (&mut s.k, kvd)] {
            rows_mut(q, dim, |i, row| {
                let (cos, sin) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                Rope::apply(row, c.head_dim, cos, sin)
            });
        }
        for (i, &at) in slots.iter().enumerate() {
            cache.k[l].write(at, &s.k[i * kvd..(i + 1) * kvd]);
            cache.v[l].write(at, &s.v[i * kvd..(i + 1) * kvd]);
        }
        timer.stage(Stage::Rope);
        attention(
            c,
            &s.q,
            &cache.k[l],
            &cache.v[l],
            seqs,
            &mut s.attn_tmp,
            &mut s.attn,
        );
        timer.stage(Stage::Attention);
        norm_rows_inplace(&mut s.attn, &lw.attn_sub_norm, c.rms_norm_eps, qd);
        s.acts.quantize(&s.attn, t, qd);
        timer.stage(Stage::AttnSubNorm);
        ternary_matmul(&lw.wo, &s.acts, &mut s.proj);
        timer.stage(Stage::Wo);
        add_assign(&mut s.x, &s.proj, h);
        timer.stage(Stage::Residual);

        // Feed-forward.
        norm_rows(&s.x, &lw.ffn_norm, c.rms_norm_eps, &mut s.xn, h);
        s.acts.quantize(&s.xn, t, h);
        timer.stage(Stage::FfnNorm);
        ternary_matmul_many(
            &[&lw.w_gate, &lw.w_up],
            &s.acts,
            &mut [&mut s.gate, &mut s.up],
        );
        timer.stage(Stage::GateUp);
        let (gate, up) = (&s.gate, &s.up);
        rows_mut(&mut s.hidden, ffn, |i, row| {
            let (g, u) = (&gate[i * ffn..][..ffn], &up[i * ffn..][..ffn]);
            match c.activation() {
                Activation::Relu2 => ops::relu2_mul(g, u, row),
                Activation::Silu => ops::silu_mul(g, u, row),
            }
            norm_inplace(row, &lw.ffn_sub_norm, c.rms_norm_eps);
        });
        s.acts.quantize(&s.hidden, t, ffn);
        timer.stage(Stage::FfnAct);
        ternary_matmul(&lw.w_down, &s.acts, &mut s.proj);
        timer.stage(Stage::Down);
        add_assign(&mut s.x, &s.proj, h);
        timer.stage(Stage::Residual);
    }

    let mut rows = Vec::new();
    let mut first = 0;
    for q in seqs {
        let n = q.tokens.len();
        match q.want {
            Logits::None => {}
            Logits::Last => rows.push(first + n - 1),
            Logits::All => rows.extend(first..first + n),
        }
        first += n;
    }
    if rows.is_empty() {
        return Vec::new();
    }
    let mut normed = vec![0f32; rows.len() * h];
    for (out, &r) in normed.chunks_exact_mut(h).zip(&rows) {
        ops::rms_norm(
            &s.x[r * h..(r + 1) * h],
            &w.output_norm,
            c.rms_norm_eps,
            out,
        );
    }
    let head = w.lm_head();
    let mut logits = vec![0f32; rows.len() * head.rows()];
    head.matmul(&normed, rows.len(), &mut logits);
    timer.stage(Stage::Head);
    logits
}

/// `f(i, row i)` for the `dim`-sized rows of `data`, spread over the pool when the batch has
/// enough rows to pay for the loop (a decode step's single row runs inline).
fn rows_mut(data: &mut [f32], dim: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
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

fn norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], dim: usize) {
    rows_mut(out, dim, |i, o| {
        ops::rms_norm(&x[i * dim..][..dim], weight, eps, o)
    });
}

fn norm_inplace(row: &mut [f32], weight: &[f32], eps: f32) {
    NORM_TMP.with_borrow_mut(|tmp| {
        tmp.clear();
        tmp.resize(row.len(), 0.0);
        ops::rms_norm(row, weight, eps, tmp);
        row.copy_from_slice(tmp);
    });
}

fn norm_rows_inplace(x: &mut [f32], weight: &[f32], eps: f32, dim: usize) {
    rows_mut(x, dim, |_, row| norm_inplace(row, weight, eps));
}

fn add_assign(x: &mut [f32], y: &[f32], dim: usize) {
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
fn attention(
    c: &ModelConfig,
    q: &[f32],
    k: &Buf,
    v: &Buf,
    seqs: &[SeqChunk<'_>],
    tmp: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, nh, nkv, kvd) = (c.head_dim, c.num_heads, c.num_kv_heads, c.kv_dim());
    let group = nh / nkv;
    // Runs of consecutive tokens of one sequence: (chunk, first token in the batch, first
    // token in the chunk, length). A decode step's runs have one token: sizing every run by
    // Q_BLOCK would zero 8x the scratch.
    let mut runs = Vec::new();
    let mut first = 0;
    for (ci, sq) in seqs.iter().enumerate() {
        let n = sq.tokens.len();
        let mut i = 0;
        while i < n {
            let len = Q_BLOCK.min(n - i);
            runs.push((ci, first + i, i, len));
            i += len;
        }
        first += n;
    }
    let block = runs.iter().map(|r| r.3).max().unwrap_or(1);
    let per_task = block * hd;
    let nruns = runs.len();
    resize(tmp, nh * nruns * per_task);
    let scale = 1.0 / (hd as f32).sqrt();
    bitnet_kernels::pool::for_each_chunk_mut(tmp, per_task, |task, o| {
        let (head, r) = (task / nruns, task % nruns);
        let (ci, tok0, i0, len) = runs[r];
        let sq = &seqs[ci];
        let col = (head / group) * hd;
        SCORES.with_borrow_mut(|scores| {
            for j in 0..len {
                let n = sq.start + i0 + j + 1;
                let qh = &q[((tok0 + j) * nh + head) * hd..][..hd];
                scores.clear();
                scores.resize(n, 0.0);
                for (b, sc) in scores.chunks_mut(KV_BLOCK).enumerate() {
                    let at = sq.blocks[b] as usize * KV_BLOCK * kvd + col;
                    k.dots(at, kvd, qh, sc);
                }
                scores.iter_mut().for_each(|s| *s *= scale);
                ops::softmax_inplace(scores);
                let oh = &mut o[j * hd..][..hd];
                oh.fill(0.0);
                for (b, sc) in scores.chunks(KV_BLOCK).enumerate() {
                    let at = sq.blocks[b] as usize * KV_BLOCK * kvd + col;
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
