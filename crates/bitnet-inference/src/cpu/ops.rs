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
    /// The LM head's output of a greedy or top-k step, kept for the next one (its largest
    /// size: the rows that sample, at most the running sequences).
    pub(super) logits: Vec<f32>,
    /// `proj` holds a sublayer's output not yet added to the residual stream `x`: the next
    /// norm (a layer's attention or FFN norm, or the final one) adds it in the pass that reads
    /// the row anyway, instead of a parallel loop of its own.
    pub(super) residual: bool,
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

pub(super) fn norm_inplace(row: &mut [f32], weight: &[f32], eps: f32) {
    NORM_TMP.with_borrow_mut(|tmp| {
        tmp.clear();
        tmp.resize(row.len(), 0.0);
        ops::rms_norm(row, weight, eps, tmp);
        row.copy_from_slice(tmp);
    });
}

/// The residual stream's `t` rows (`h` wide) through the RMSNorm `weight` into `s.xn` and its
/// quantized activations, each row taking the pending sublayer output first ([`take_residual`]):
/// one parallel pass.
pub(super) fn norm_stream(s: &mut Scratch, t: usize, h: usize, weight: &[f32], eps: f32) {
    let (proj, pending) = (&s.proj, s.residual);
    s.acts
        .quantize_produced_from(&mut s.x, &mut s.xn, t, h, |i, x, xn| {
            take_residual(x, proj, i, pending);
            ops::rms_norm(x, weight, eps, xn)
        });
    s.residual = false;
}

/// Row `i` of the residual stream `x` before its norm: `x += proj[i]` when a sublayer's output is
/// pending (`Scratch::residual`), the same f32 additions as a separate pass would make.
pub(super) fn take_residual(x: &mut [f32], proj: &[f32], i: usize, pending: bool) {
    if pending {
        ops::axpy(1.0, &proj[i * x.len()..][..x.len()], x);
    }
}

/// Query tokens per attention task.
const Q_BLOCK: usize = 8;

/// Into how many tasks the query heads of one KV head are split. A task of `group / s` query
/// heads costs that many head-units and the pool runs `ceil(tasks / threads)` rounds of them,
/// so the time is about `rounds * group / s`; of the splits with the least time the fewest wins
/// (1: every query head of a group in one task, so each cached row is read from memory once
/// for all of them; `group`: one task per query head).
fn head_splits(group: usize, kv_heads: usize, runs: usize, threads: usize) -> usize {
    let time = |s: usize| (kv_heads * s * runs).div_ceil(threads.max(1)) * (group / s);
    (1..=group)
        .filter(|s| group.is_multiple_of(*s))
        .min_by_key(|&s| (time(s), s))
        .unwrap_or(1)
}

/// Scores a task keeps at once: its queries go through the cached blocks in as many passes as
/// keep `queries x positions` under this, so a long prompt's 32 queries at 100k positions do
/// not hold 13 MB of scores (each query's operations are the same in any pass).
const SCORES_MAX: usize = 16 * 1024;

/// Causal grouped-query attention for the new tokens of every chunk, each reading keys and
/// values for its own positions `0..=pos` through its block table. One task per (KV head,
/// share of its query heads, run of at most [`Q_BLOCK`] tokens of one sequence), the share
/// chosen by [`head_splits`]. A task walks the cached rows block by block and runs every
/// (token, query head) of its own on each block before the next, so a block's rows come from
/// memory once and stay in L1 for the rest: with one task per query head, the query heads of
/// a group (four in 2B4T) each streamed the whole head's keys and values, 4x the cache traffic
/// once the context outgrows L2. The queries of one token (the task's query heads) read a
/// block's rows in place in one call (`Buf::dots_group` / `Buf::axpys_group`, f16 widened in
/// registers, once for up to four queries on AVX-512), and every query sees the same
/// operations in the same order however the queries are grouped into tasks, so the result is
/// bit-identical for any split and thread count. A decode-only batch writes each task's heads
/// straight into `out` (`[token][head * head_dim]`); otherwise results go to `tmp` laid out per
/// task and are scattered into `out` afterwards.
pub(super) fn attention(
    c: &ModelConfig,
    q: &[f32],
    k: &Buf,
    v: &Buf,
    batch: &Batch,
    tmp: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (nh, nkv) = (c.num_heads, c.num_kv_heads);
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
    let threads = bitnet_kernels::pool::current_num_threads();
    let splits = head_splits(group, nkv, runs.len(), threads);
    let split = Split {
        shares: splits,
        scores_max: SCORES_MAX,
    };
    attention_with(c, q, k, v, batch, &runs, split, tmp, out);
}

/// How [`attention`]'s queries are grouped: the query heads of each KV head in `shares` tasks,
/// and at most `scores_max` scores held at once (a task's queries in passes).
#[derive(Clone, Copy)]
struct Split {
    shares: usize,
    scores_max: usize,
}

/// [`attention`] over the given runs, its queries grouped as `split` says. Task (share, run)
/// (shares numbered over all KV heads, so share `s` holds query heads `s * heads..`) writes
/// `[token of the run][head of the share][head_dim]`: in place in `out` when every run is one
/// token in batch order (task `run * shares + share`), else into `tmp[share * runs + run]`,
/// scattered into `out` afterwards.
#[allow(clippy::too_many_arguments)]
fn attention_with(
    c: &ModelConfig,
    q: &[f32],
    k: &Buf,
    v: &Buf,
    batch: &Batch,
    runs: &[(usize, usize, usize, usize)],
    split: Split,
    tmp: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, nh, nkv, kvd) = (c.head_dim, c.num_heads, c.num_kv_heads, c.kv_dim());
    let splits = split.shares;
    debug_assert!(
        (nh / nkv).is_multiple_of(splits),
        "{splits} shares of {nh}/{nkv} heads"
    );
    let heads = nh / nkv / splits;
    let block = runs.iter().map(|r| r.3).max().unwrap_or(1);
    let per_task = heads * block * hd;
    let nruns = runs.len();
    let scale = 1.0 / (hd as f32).sqrt();
    // Task (share, run r) into `o`: `[token of the run][head of the share][head_dim]`.
    let task = |share: usize, r: usize, o: &mut [f32]| {
        let (ci, tok0, i0, len) = runs[r];
        let sq = &batch.chunks[ci];
        let blocks = batch.table(sq);
        // The share's query heads share * heads.. all read one KV head.
        let col = (share * heads / (nh / nkv)) * hd;
        // Query `i` of the task: token `i / heads` of the run, head `i % heads` of the share,
        // attending to positions 0..end(i) (its own included). A token's queries are one
        // group: the same positions, their vectors side by side in `q`, their outputs side by
        // side in `o` (`[token][head][head_dim]`), so a cached row is read once for all of them.
        let nq = heads * len;
        let end = |i: usize| sq.start + i0 + i / heads + 1;
        let longest = sq.start + i0 + len;
        // Queries i..g, all of one token.
        let queries = |i: usize, g: usize| {
            let h = share * heads + i % heads;
            &q[((tok0 + i / heads) * nh + h) * hd..][..(g - i) * hd]
        };
        // The groups (i, g) of a pass: its first query and every token's first head start one,
        // which ends at the next token or the pass's end.
        let groups = |pass: std::ops::Range<usize>| {
            let end = pass.end;
            pass.clone()
                .filter(move |&i| i == pass.start || i.is_multiple_of(heads))
                .map(move |i| (i, ((i / heads + 1) * heads).min(end)))
        };
        let used = &blocks[..longest.div_ceil(KV_BLOCK)];
        let per_pass = (split.scores_max / longest.max(1)).clamp(1, nq.max(1));
        o.fill(0.0);
        SCORES.with_borrow_mut(|scores| {
            for first in (0..nq).step_by(per_pass) {
                let pass = first..(first + per_pass).min(nq);
                // Query i's scores at scores[(i - first) * longest..][..end(i)].
                scores.clear();
                scores.resize(pass.len() * longest, 0.0);
                for (b, &id) in used.iter().enumerate() {
                    let at = id as usize * KV_BLOCK * kvd + col;
                    for (i, g) in groups(pass.clone()) {
                        let n = end(i);
                        if n > b * KV_BLOCK {
                            let p = b * KV_BLOCK..n.min((b + 1) * KV_BLOCK);
                            let sc = &mut scores[(i - first) * longest + p.start..];
                            k.dots_group(at, kvd, queries(i, g), hd, p.len(), sc, longest);
                        }
                    }
                }
                for i in pass.clone() {
                    let sc = &mut scores[(i - first) * longest..][..end(i)];
                    sc.iter_mut().for_each(|s| *s *= scale);
                    ops::softmax_inplace(sc);
                }
                for (b, &id) in used.iter().enumerate() {
                    let at = id as usize * KV_BLOCK * kvd + col;
                    for (i, g) in groups(pass.clone()) {
                        let n = end(i);
                        if n > b * KV_BLOCK {
                            let p = b * KV_BLOCK..n.min((b + 1) * KV_BLOCK);
                            let alphas = &scores[(i - first) * longest + p.start..];
                            let ys = &mut o[i * hd..g * hd];
                            v.axpys_group(at, kvd, alphas, longest, p.len(), ys, hd);
                        }
                    }
                }
            }
        });
    };
    let shares = nkv * splits;
    if block == 1
        && out.len() == shares * nruns * per_task
        && runs.iter().enumerate().all(|(r, run)| run.1 == r)
    {
        // Decode steps only: run r is token r, so a task's output (its share's heads of that
        // token) is one contiguous piece of `out`, written in place. Gathering a batch's
        // outputs from per-task scratch on the calling thread read every line back from the
        // cores that wrote it (16 tokens x 20 heads on the 16-core Xeon: most of the stage).
        bitnet_kernels::pool::for_each_chunk_mut(out, per_task, |t, o| {
            task(t % shares, t / shares, o)
        });
        return;
    }
    resize(tmp, shares * nruns * per_task);
    bitnet_kernels::pool::for_each_chunk_mut(tmp, per_task, |t, o| task(t / nruns, t % nruns, o));
    for task in 0..shares * nruns {
        let (share, r) = (task / nruns, task % nruns);
        let (_, tok0, _, len) = runs[r];
        for j in 0..len {
            // The task's heads of token j, side by side in `tmp` and in `out`.
            let src = &tmp[(task * block + j) * heads * hd..][..heads * hd];
            out[((tok0 + j) * nh + share * heads) * hd..][..heads * hd].copy_from_slice(src);
        }
    }
}

thread_local! {
    /// Attention scores of the running task, reused so decoding allocates nothing.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A row being normalized in place.
    static NORM_TMP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kv_cache::KvCache;
    use bitnet_backend::KvType;

    #[test]
    fn head_splits_balance_the_pool() {
        // 2B4T (5 KV heads, groups of 4), one decode step: 2 threads take 10 tasks (5 rounds of
        // 2 heads, as fast as 20 single heads and half the reads), 16 threads 10 tasks in one
        // round; a batch of 16 steps or one thread keeps whole groups.
        assert_eq!(head_splits(4, 5, 1, 2), 2);
        assert_eq!(head_splits(4, 5, 1, 16), 2);
        assert_eq!(head_splits(4, 5, 16, 16), 1);
        assert_eq!(head_splits(4, 5, 1, 1), 1);
        // KJV (2 KV heads): one group per thread on two.
        assert_eq!(head_splits(4, 2, 1, 2), 1);
        assert_eq!(head_splits(4, 2, 1, 3), 4);
        assert_eq!(head_splits(4, 2, 1, 4), 2);
        // Multi-head attention: nothing to share.
        assert_eq!(head_splits(1, 8, 1, 16), 1);
    }

    /// Every split of the query heads gives the same bits as attending one query at a time
    /// (what `attention` did before it grouped them): the same `dots` / `axpys` calls per block,
    /// the same scale and softmax. Two sequences: an 11-token prompt chunk that starts at
    /// position 28 (a run of 8 and one of 3; the first run's queries end on both sides of the
    /// block boundary at 32, so some skip the second block) and a decode step at position 70,
    /// over shuffled blocks.
    #[test]
    fn grouped_attention_matches_one_query_at_a_time() {
        let c = ModelConfig {
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 64,
            ..bitnet_models::fixture::config_2b4t(bitnet_models::Arch::BitnetB158)
        };
        let (hd, nh, kvd) = (c.head_dim, c.num_heads, c.kv_dim());
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let mut cache = KvCache::new(1, kvd, 8, KvType::F16);
        let table_a: Vec<u32> = vec![5, 2];
        let table_b: Vec<u32> = vec![7, 0, 3];
        for (table, len) in [(&table_a, 39), (&table_b, 71)] {
            for pos in 0..len {
                let at = (table[pos / KV_BLOCK] as usize * KV_BLOCK + pos % KV_BLOCK) * kvd;
                let (kr, vr): (Vec<f32>, Vec<f32>) = (0..kvd).map(|_| (rand(), rand())).unzip();
                cache.k[0].write(at, &kr);
                cache.v[0].write(at, &vr);
            }
        }
        let mut blocks = table_a.clone();
        blocks.extend(&table_b);
        let chunk = |start, len, first, blocks| Chunk {
            start,
            len,
            first,
            blocks,
        };
        let batch = Batch {
            tokens: vec![0; 12],
            chunks: vec![chunk(28, 11, 0, (0, 2)), chunk(70, 1, 11, (2, 5))],
            blocks,
            slots: Vec::new(),
            rows: Vec::new(),
        };
        let q: Vec<f32> = (0..12 * nh * hd).map(|_| rand() * 4.0).collect();
        let runs = [(0, 0, 0, 8), (0, 8, 8, 3), (1, 11, 0, 1)];
        check_splits(&c, &cache, &batch, &runs, &q);

        // A decode step of both sequences (positions 38 and 70): the path that writes each
        // task's heads in place.
        let decode = Batch {
            tokens: vec![0; 2],
            chunks: vec![chunk(38, 1, 0, (0, 2)), chunk(70, 1, 1, (2, 5))],
            ..batch
        };
        check_splits(
            &c,
            &cache,
            &decode,
            &[(0, 0, 0, 1), (1, 1, 0, 1)],
            &q[..2 * nh * hd],
        );
    }

    /// `attention_with` for every share count, with all of a task's queries in one pass and one
    /// query a pass, gives the bits of attending one query at a time.
    fn check_splits(
        c: &ModelConfig,
        cache: &KvCache,
        batch: &Batch,
        runs: &[(usize, usize, usize, usize)],
        q: &[f32],
    ) {
        let (hd, nh, kvd) = (c.head_dim, c.num_heads, c.kv_dim());
        let mut want = vec![0.0f32; q.len()];
        let scale = 1.0 / (hd as f32).sqrt();
        for tok in 0..batch.tokens.len() {
            let sq = batch
                .chunks
                .iter()
                .find(|sq| (sq.first..sq.first + sq.len).contains(&tok))
                .unwrap();
            for head in 0..nh {
                let n = sq.start + (tok - sq.first) + 1;
                let qh = &q[(tok * nh + head) * hd..][..hd];
                let col = (head / (nh / c.num_kv_heads)) * hd;
                let mut scores = vec![0.0f32; n];
                for (b, sc) in scores.chunks_mut(KV_BLOCK).enumerate() {
                    let at = batch.table(sq)[b] as usize * KV_BLOCK * kvd + col;
                    cache.k[0].dots(at, kvd, qh, sc);
                }
                scores.iter_mut().for_each(|s| *s *= scale);
                ops::softmax_inplace(&mut scores);
                let oh = &mut want[(tok * nh + head) * hd..][..hd];
                for (b, sc) in scores.chunks(KV_BLOCK).enumerate() {
                    let at = batch.table(sq)[b] as usize * KV_BLOCK * kvd + col;
                    cache.v[0].axpys(at, kvd, sc, oh);
                }
            }
        }
        for shares in [1, 2, 4] {
            // 117 scores: passes of three queries where a task's longest position is 36-39, so
            // a pass starts a group of a token's heads part way.
            for scores_max in [SCORES_MAX, 117, 1] {
                let (mut tmp, mut got) = (Vec::new(), vec![f32::NAN; q.len()]);
                let (k, v) = (&cache.k[0], &cache.v[0]);
                let split = Split { shares, scores_max };
                attention_with(c, q, k, v, batch, runs, split, &mut tmp, &mut got);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{shares} shares, {scores_max} scores at once: not the same bits"
                );
            }
        }
    }
}
