//! The BitNet b1.58 forward pass over a batch of tokens.
//!
//! Per block: `x += o(attn_sub_norm(attn(rope(q(n1(x))), rope(k(..)), v(..))))`, then
//! `x += down(ffn_sub_norm(act(gate(n2(x))) * up(n2(x))))`. Every BitLinear quantizes its input
//! per token to int8 once (shared by q/k/v and by gate/up) and accumulates in integers.

use crate::kv_cache::{Buf, KvCache};
use crate::profile::{Stage, Timer};
use bitnet_kernels::{ops, ternary_matmul, ternary_matmul_many, QuantizedActivations};
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

    /// Rotates every head of `x` (`n_heads * head_dim` values) for position `pos`, pairing
    /// element i with i + head_dim/2 (NEOX / transformers' rotate_half).
    fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let half = head_dim / 2;
        for (i, f) in self.inv_freq.iter().enumerate() {
            let angle = pos as f32 * f;
            cos[i] = angle.cos();
            sin[i] = angle.sin();
        }
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

/// Runs `tokens` (already checked against the vocabulary and the cache capacity) at positions
/// `start..start + tokens.len()`, fills the cache, and returns logits for the requested positions.
pub(crate) fn forward(
    w: &ModelWeights,
    rope: &Rope,
    cache: &mut KvCache,
    s: &mut Scratch,
    tokens: &[u32],
    start: usize,
    want: Logits,
) -> Vec<f32> {
    let c = &w.config;
    let t = tokens.len();
    let mut timer = Timer::start();
    let (h, qd, kvd, ffn) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    resize(&mut s.x, t * h);
    for (row, &id) in s.x.chunks_exact_mut(h).zip(tokens) {
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
    let mut cos = vec![0f32; c.head_dim / 2];
    let mut sin = vec![0f32; c.head_dim / 2];
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
        for i in 0..t {
            rope.apply(
                &mut s.q[i * qd..(i + 1) * qd],
                c.head_dim,
                start + i,
                &mut cos,
                &mut sin,
            );
            rope.apply(
                &mut s.k[i * kvd..(i + 1) * kvd],
                c.head_dim,
                start + i,
                &mut cos,
                &mut sin,
            );
        }
        cache.k[l].write(start * kvd, &s.k);
        cache.v[l].write(start * kvd, &s.v);
        timer.stage(Stage::Rope);
        attention(
            c,
            &s.q,
            &cache.k[l],
            &cache.v[l],
            start,
            &mut s.attn_tmp,
            &mut s.attn,
        );
        timer.stage(Stage::Attention);
        norm_rows_inplace(&mut s.attn, &lw.attn_sub_norm, c.rms_norm_eps, qd);
        s.acts.quantize(&s.attn, t, qd);
        timer.stage(Stage::AttnSubNorm);
        ternary_matmul(&lw.wo, &s.acts, &mut s.proj);
        timer.stage(Stage::Wo);
        add_assign(&mut s.x, &s.proj);
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
        match c.activation() {
            Activation::Relu2 => ops::relu2_mul(&s.gate, &s.up, &mut s.hidden),
            Activation::Silu => ops::silu_mul(&s.gate, &s.up, &mut s.hidden),
        }
        norm_rows_inplace(&mut s.hidden, &lw.ffn_sub_norm, c.rms_norm_eps, ffn);
        s.acts.quantize(&s.hidden, t, ffn);
        timer.stage(Stage::FfnAct);
        ternary_matmul(&lw.w_down, &s.acts, &mut s.proj);
        timer.stage(Stage::Down);
        add_assign(&mut s.x, &s.proj);
        timer.stage(Stage::Residual);
    }

    let rows: Vec<usize> = match want {
        Logits::None => return Vec::new(),
        Logits::Last => vec![t - 1],
        Logits::All => (0..t).collect(),
    };
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

fn norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], dim: usize) {
    for (xi, oi) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        ops::rms_norm(xi, weight, eps, oi);
    }
}

fn norm_rows_inplace(x: &mut [f32], weight: &[f32], eps: f32, dim: usize) {
    let mut tmp = vec![0f32; dim];
    for row in x.chunks_exact_mut(dim) {
        ops::rms_norm(row, weight, eps, &mut tmp);
        row.copy_from_slice(&tmp);
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    ops::axpy(1.0, y, x);
}

/// Query tokens per attention task.
const Q_BLOCK: usize = 8;

/// Causal grouped-query attention for the new tokens at `start..`, reading keys and values for
/// positions `0..=start+i` from the cache. One task per (query head, block of [`Q_BLOCK`]
/// tokens): 20 tasks for a 2B4T decode step, so two threads split them evenly (per-KV-head tasks
/// split 3:2). Each query reads its head's cached rows in place, all of them in one call
/// (`Buf::dots` / `Buf::axpys`, f16 converted in registers): a call per cached row cost as much
/// as the 128-element dot itself, and widened f32 copies of the rows only paid off across many
/// queries. Results go to `tmp` laid out per task and are scattered into `out`
/// (`[token][head * head_dim]`) afterwards.
fn attention(
    c: &ModelConfig,
    q: &[f32],
    k: &Buf,
    v: &Buf,
    start: usize,
    tmp: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, nh, nkv, kvd) = (c.head_dim, c.num_heads, c.num_kv_heads, c.kv_dim());
    let group = nh / nkv;
    let t = out.len() / (nh * hd);
    // A decode step has one token: sizing the blocks by Q_BLOCK would zero 8x the scratch.
    let block = Q_BLOCK.min(t);
    let blocks = t.div_ceil(block);
    let per_task = block * hd;
    resize(tmp, nh * blocks * per_task);
    let scale = 1.0 / (hd as f32).sqrt();
    bitnet_kernels::pool::for_each_chunk_mut(tmp, per_task, |task, o| {
        let (head, b) = (task / blocks, task % blocks);
        let col = (head / group) * hd;
        SCORES.with_borrow_mut(|scores| {
            for i in b * block..((b + 1) * block).min(t) {
                let n = start + i + 1;
                scores.clear();
                scores.resize(n, 0.0);
                k.dots(col, kvd, &q[(i * nh + head) * hd..][..hd], scores);
                scores.iter_mut().for_each(|s| *s *= scale);
                ops::softmax_inplace(scores);
                let oh = &mut o[(i - b * block) * hd..][..hd];
                oh.fill(0.0);
                v.axpys(col, kvd, scores, oh);
            }
        });
    });
    for head in 0..nh {
        for i in 0..t {
            let (b, r) = (i / block, i % block);
            let src = &tmp[(head * blocks + b) * per_task + r * hd..][..hd];
            out[(i * nh + head) * hd..][..hd].copy_from_slice(src);
        }
    }
}

thread_local! {
    /// Attention scores of the running task, reused so decoding allocates nothing.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
