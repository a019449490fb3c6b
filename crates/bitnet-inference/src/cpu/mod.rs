//! The CPU backend: the model's weights where the loader placed them (huge-page arena or file
//! mapping), a paged KV cache in host memory, and the `bitnet-kernels` kernels on a pool of
//! worker threads.
//!
//! Each operation of [`Context`] is one stretch of the forward pass. Every BitLinear quantizes
//! its input per token to int8 once (shared by q/k/v and by gate/up) and accumulates in
//! integers; everything before the LM head is per token or per sequence, so a sequence's K/V and
//! hidden states do not depend on what else is in the batch (only the float LM head sums a tile
//! of tokens in another order than one token).

mod kv_cache;
mod ops;
mod pool;

pub use kv_cache::KvCache;
pub(crate) use ops::Rope;

use crate::profile::{Stage, Timer};
use bitnet_backend::sampling::{self, TopK};
use bitnet_backend::{
    run_layers, Backend, BackendError, Context, Device, KvType, Logits, Result, SeqChunk, KV_BLOCK,
};
use bitnet_kernels::{ops as kops, ternary_matmul, ternary_matmul_many, DenseMatrixExt};
use bitnet_models::{Activation, LoadedModel, ModelWeights};
use ops::{attention, norm_inplace, norm_stream, resize, take_residual, Batch, Chunk, Scratch};
use pool::{build_pool, Pool};
use std::sync::Arc;

/// What the backend and all its contexts share.
struct Shared {
    model: Arc<LoadedModel>,
    rope: Rope,
    pool: Pool,
    threads: usize,
}

/// The model on the CPU, with its worker threads. Cheap to clone.
#[derive(Clone)]
pub struct CpuBackend {
    shared: Arc<Shared>,
}

impl CpuBackend {
    /// A backend over `model` running its kernels on `threads` worker threads (the spinning
    /// pool, or rayon's with `BITNET_POOL=rayon`).
    pub fn new(model: Arc<LoadedModel>, threads: usize) -> crate::Result<CpuBackend> {
        let threads = threads.max(1);
        let pool = build_pool(threads)?;
        let rope = Rope::new(&model.weights.config);
        Ok(CpuBackend {
            shared: Arc::new(Shared {
                model,
                rope,
                pool,
                threads,
            }),
        })
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn describe(&self) -> String {
        format!(
            "cpu: {} threads, kernels {:?}",
            self.shared.threads,
            bitnet_kernels::detected_isa()
        )
    }

    fn kv_bytes(&self, blocks: usize, ty: KvType) -> usize {
        let c = &self.shared.model.weights.config;
        KvCache::nbytes_for(
            c.num_layers,
            c.kv_dim(),
            blocks.saturating_mul(KV_BLOCK),
            ty,
        )
    }

    /// Host memory is checked by the engine before this (`Engine::check_kv_size`): the cache's
    /// zeroed pages are only touched as blocks fill, so an allocation that cannot be backed
    /// would not fail here but kill the process later. Scratch grows on first use.
    fn new_context(
        &self,
        blocks: usize,
        ty: KvType,
        _max_batch_tokens: usize,
    ) -> Result<Box<dyn Context>> {
        let c = &self.shared.model.weights.config;
        Ok(Box::new(CpuContext {
            cache: KvCache::new(c.num_layers, c.kv_dim(), blocks, ty),
            shared: Arc::clone(&self.shared),
            s: Scratch::default(),
            batch: Batch::default(),
        }))
    }
}

/// A KV cache in host memory, the scratch of one stream of passes and the batch `begin` set up.
pub struct CpuContext {
    shared: Arc<Shared>,
    cache: KvCache,
    s: Scratch,
    batch: Batch,
}

/// What an operation works on, borrowed apart so the pool's closure can hold them all.
struct Parts<'a> {
    w: &'a ModelWeights,
    rope: &'a Rope,
    cache: &'a mut KvCache,
    s: &'a mut Scratch,
    batch: &'a Batch,
}

impl CpuContext {
    /// Runs `f` on this backend's threads (the kernels' `pool::for_each*` use the installed
    /// pool). Installing is a thread-local swap for the spinning pool, and runs inline when
    /// already inside the pool (a whole pass installs once, see `forward`).
    fn run<R: Send>(&mut self, f: impl FnOnce(Parts<'_>) -> R + Send) -> R {
        let CpuContext {
            shared,
            cache,
            s,
            batch,
        } = self;
        let shared: &Shared = shared;
        shared.pool.install(|| {
            f(Parts {
                w: &shared.model.weights,
                rope: &shared.rope,
                cache,
                s,
                batch,
            })
        })
    }

    /// The final norm and the head into the logits buffer kept between steps, then `f` over it
    /// (`rows x vocab`, and the vocabulary size), on this backend's threads.
    fn with_logits<R: Send>(&mut self, f: impl FnOnce(&mut [f32], usize) -> R + Send) -> R {
        self.run(|mut p| {
            let mut logits = std::mem::take(&mut p.s.logits);
            let stride = head(&mut p, &mut logits);
            let out = f(&mut logits, stride);
            p.s.logits = logits;
            out
        })
    }

    /// The whole pass, ending in `last`, inside one `install`: rayon's pool would otherwise move
    /// every operation to a worker thread and back.
    fn whole_pass<R: Send>(
        &mut self,
        seqs: &[SeqChunk<'_>],
        last: impl FnOnce(&mut Self) -> Result<R> + Send,
    ) -> Result<R> {
        let shared = Arc::clone(&self.shared);
        shared.pool.install(|| {
            run_layers(self, seqs)?;
            last(self)
        })
    }
}

impl Context for CpuContext {
    fn layers(&self) -> usize {
        self.shared.model.weights.layers.len()
    }

    fn kv_blocks(&self) -> usize {
        self.cache.blocks()
    }

    fn vocab_size(&self) -> usize {
        self.shared.model.weights.lm_head().rows()
    }

    fn begin(&mut self, seqs: &[SeqChunk<'_>]) -> Result<()> {
        let vocab = self.shared.model.weights.config.vocab_size;
        let kv_blocks = self.cache.blocks();
        let b = &mut self.batch;
        b.tokens.clear();
        b.chunks.clear();
        b.blocks.clear();
        b.slots.clear();
        b.rows.clear();
        for q in seqs {
            q.check(kv_blocks, vocab)?;
            let end = q.start + q.tokens.len();
            let first = b.tokens.len();
            let n = q.tokens.len();
            match q.want {
                Logits::None => {}
                Logits::Last if n > 0 => b.rows.push(first + n - 1),
                Logits::Last => {}
                Logits::All => b.rows.extend(first..first + n),
            }
            let table = (b.blocks.len(), b.blocks.len() + q.blocks.len());
            b.blocks.extend_from_slice(q.blocks);
            b.tokens.extend_from_slice(q.tokens);
            for p in q.start..end {
                b.slots.push(self.cache.offset(q.blocks, p));
            }
            b.chunks.push(Chunk {
                start: q.start,
                len: n,
                first,
                blocks: table,
            });
        }
        Ok(())
    }

    fn embed(&mut self) -> Result<()> {
        self.run(|p| {
            let (w, s, b) = (p.w, p.s, p.batch);
            let c = &w.config;
            let t = b.tokens.len();
            let mut timer = Timer::start();
            let (h, qd, kvd, ffn) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
            resize(&mut s.x, t * h);
            s.residual = false;
            for (row, &id) in s.x.chunks_exact_mut(h).zip(&b.tokens) {
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
            let positions = b.chunks.iter().flat_map(|q| q.start..q.start + q.len);
            p.rope.table(positions, &mut s.cos, &mut s.sin);
            timer.stage(Stage::Embed);
        });
        Ok(())
    }

    fn qkv(&mut self, layer: usize) -> Result<()> {
        self.run(|p| {
            let (c, lw, s) = (&p.w.config, &p.w.layers[layer], p.s);
            let (t, h) = (p.batch.tokens.len(), c.hidden_size);
            let mut timer = Timer::start();
            norm_stream(s, t, h, &lw.attn_norm, c.rms_norm_eps);
            timer.stage(Stage::AttnNorm);
            ternary_matmul_many(
                &[&lw.wq, &lw.wk, &lw.wv],
                &s.acts,
                &mut [&mut s.q, &mut s.k, &mut s.v],
            );
            timer.stage(Stage::Qkv);
        });
        Ok(())
    }

    fn attention(&mut self, layer: usize) -> Result<()> {
        self.run(|p| {
            let (c, s, cache, b) = (&p.w.config, p.s, p.cache, p.batch);
            let (qd, kvd) = (c.q_dim(), c.kv_dim());
            let half = c.head_dim / 2;
            let mut timer = Timer::start();
            let (cos, sin) = (&s.cos, &s.sin);
            let rope = |i: usize, q: &mut [f32], k: &mut [f32]| {
                let (cos, sin) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                Rope::apply(q, c.head_dim, cos, sin);
                Rope::apply(k, c.head_dim, cos, sin);
            };
            let t = b.slots.len();
            let parallel =
                t >= bitnet_kernels::PAR_ROWS && bitnet_kernels::pool::current_num_threads() > 1;
            let rows = if parallel {
                let (kc, vc) = (&mut cache.k[layer], &mut cache.v[layer]);
                kc.rows_mut(&b.slots, kvd).zip(vc.rows_mut(&b.slots, kvd))
            } else {
                None
            };
            if let Some((kr, vr)) = rows {
                // A batch: each token's rotations and cache rows in one parallel pass, on the
                // core that reads its q/k/v rows anyway (a serial cache write pulled every row
                // back from the cores that computed it).
                let mut rows: Vec<_> =
                    s.q.chunks_exact_mut(qd)
                        .zip(s.k.chunks_exact_mut(kvd))
                        .zip(s.v.chunks_exact(kvd))
                        .zip(kr.into_iter().zip(vr))
                        .collect();
                bitnet_kernels::pool::for_each_chunk_mut(&mut rows, 1, |i, row| {
                    let (((q, k), v), (kc, vc)) = &mut row[0];
                    rope(i, q, k);
                    kc.write(k);
                    vc.write(v);
                });
            } else {
                for (i, (q, k)) in
                    s.q.chunks_exact_mut(qd)
                        .zip(s.k.chunks_exact_mut(kvd))
                        .enumerate()
                {
                    rope(i, q, k);
                }
                for (i, &at) in b.slots.iter().enumerate() {
                    cache.k[layer].write(at, &s.k[i * kvd..(i + 1) * kvd]);
                    cache.v[layer].write(at, &s.v[i * kvd..(i + 1) * kvd]);
                }
            }
            timer.stage(Stage::Rope);
            attention(
                c,
                &s.q,
                &cache.k[layer],
                &cache.v[layer],
                b,
                &mut s.attn_tmp,
                &mut s.attn,
            );
            timer.stage(Stage::Attention);
        });
        Ok(())
    }

    fn attn_out(&mut self, layer: usize) -> Result<()> {
        self.run(|p| {
            let (c, lw, s) = (&p.w.config, &p.w.layers[layer], p.s);
            let (t, qd) = (p.batch.tokens.len(), c.q_dim());
            let mut timer = Timer::start();
            s.acts.quantize_produced(&mut s.attn, t, qd, |_, row| {
                norm_inplace(row, &lw.attn_sub_norm, c.rms_norm_eps)
            });
            timer.stage(Stage::AttnSubNorm);
            ternary_matmul(&lw.wo, &s.acts, &mut s.proj);
            s.residual = true;
            timer.stage(Stage::Wo);
        });
        Ok(())
    }

    fn gate_up(&mut self, layer: usize) -> Result<()> {
        self.run(|p| {
            let (c, lw, s) = (&p.w.config, &p.w.layers[layer], p.s);
            let (t, h) = (p.batch.tokens.len(), c.hidden_size);
            let mut timer = Timer::start();
            norm_stream(s, t, h, &lw.ffn_norm, c.rms_norm_eps);
            timer.stage(Stage::FfnNorm);
            ternary_matmul_many(
                &[&lw.w_gate, &lw.w_up],
                &s.acts,
                &mut [&mut s.gate, &mut s.up],
            );
            timer.stage(Stage::GateUp);
        });
        Ok(())
    }

    fn ffn_out(&mut self, layer: usize) -> Result<()> {
        self.run(|p| {
            let (c, lw, s) = (&p.w.config, &p.w.layers[layer], p.s);
            let (t, ffn) = (p.batch.tokens.len(), c.intermediate_size);
            let mut timer = Timer::start();
            let (gate, up) = (&s.gate, &s.up);
            s.acts.quantize_produced(&mut s.hidden, t, ffn, |i, row| {
                let (g, u) = (&gate[i * ffn..][..ffn], &up[i * ffn..][..ffn]);
                match c.activation() {
                    Activation::Relu2 => kops::relu2_mul(g, u, row),
                    Activation::Silu => kops::silu_mul(g, u, row),
                }
                norm_inplace(row, &lw.ffn_sub_norm, c.rms_norm_eps);
            });
            timer.stage(Stage::FfnAct);
            ternary_matmul(&lw.w_down, &s.acts, &mut s.proj);
            s.residual = true;
            timer.stage(Stage::Down);
        });
        Ok(())
    }

    fn logits(&mut self) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.run(|mut p| head(&mut p, &mut logits));
        Ok(logits)
    }

    /// The head into a buffer kept between steps (16 rows of a 128k vocabulary are 8 MB that a
    /// fresh vector would zero, and fault in, every step), then the rows' argmax in parallel
    /// pieces: one thread scanning 16 x 128k logits took 1.2 ms of a ~20 ms batched step.
    fn greedy(&mut self, vocab: usize) -> Result<Vec<u32>> {
        Ok(self.with_logits(|logits, stride| argmax_rows(logits, stride, vocab.min(stride))))
    }

    /// As [`Self::greedy`]: the head into the kept buffer, then every row's candidates in
    /// pieces on the pool (each piece's `k` best, merged per row). One thread selecting 40 of
    /// 128k took about 0.5 ms a row: a sampled decode step of 16 sequences waited 8 ms on it.
    fn top_k(&mut self, vocab: usize, rows: &[TopK]) -> Result<Vec<Vec<(u32, f32)>>> {
        self.with_logits(|logits, stride| top_k_rows(logits, stride, vocab.min(stride), rows))
    }

    fn parallel_for(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        self.shared
            .pool
            .install(|| bitnet_kernels::pool::parallel_for(n, f))
    }

    fn forward(&mut self, seqs: &[SeqChunk<'_>]) -> Result<Vec<f32>> {
        self.whole_pass(seqs, |c| c.logits())
    }

    fn forward_greedy(&mut self, seqs: &[SeqChunk<'_>], vocab: usize) -> Result<Vec<u32>> {
        self.whole_pass(seqs, |c| c.greedy(vocab))
    }

    fn forward_top_k(
        &mut self,
        seqs: &[SeqChunk<'_>],
        vocab: usize,
        rows: &[TopK],
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        self.whole_pass(seqs, |c| c.top_k(vocab, rows))
    }
}

/// The final norm and the LM head for the batch's rows with logits, into `out` (`rows x vocab`,
/// every value written; its old contents are not cleared). Returns the vocabulary size.
fn head(p: &mut Parts<'_>, out: &mut Vec<f32>) -> usize {
    let (w, s, rows) = (p.w, &mut *p.s, &p.batch.rows);
    let c = &w.config;
    let h = c.hidden_size;
    let head = w.lm_head();
    out.resize(rows.len() * head.rows(), 0.0);
    if rows.is_empty() {
        return head.rows();
    }
    let mut timer = Timer::start();
    let mut normed = vec![0f32; rows.len() * h];
    // Only the rows with logits take the last FFN's pending output: the stream of the others
    // ends here.
    for (out, &r) in normed.chunks_exact_mut(h).zip(rows) {
        let x = &mut s.x[r * h..(r + 1) * h];
        take_residual(x, &s.proj, r, s.residual);
        kops::rms_norm(x, &w.output_norm, c.rms_norm_eps, out);
    }
    s.residual = false;
    head.matmul(&normed, rows.len(), out);
    timer.stage(Stage::Head);
    head.rows()
}

/// Logits a parallel task scans (64 KiB): a 128k vocabulary is eight tasks a row.
const PIECE: usize = 16 * 1024;

/// Task `i` of a parallel pass over rows of logits (the first `n` of each `stride`) in `pieces`
/// pieces a row: its row, its first logit's index in the row, and the piece.
fn piece(
    logits: &[f32],
    stride: usize,
    n: usize,
    pieces: usize,
    i: usize,
) -> (usize, usize, &[f32]) {
    let (r, k) = (i / pieces, i % pieces);
    let start = (k * PIECE).min(n);
    (r, start, &logits[r * stride..][start..n.min(start + PIECE)])
}

thread_local! {
    static PIECE_CANDIDATES: std::cell::RefCell<Vec<(u32, f32)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// [`bitnet_backend::sampling::top_k`] of every row (the first `n` of each `stride` logits):
/// penalties in place, then each piece's candidates on the installed pool, merged per row.
fn top_k_rows(
    logits: &mut [f32],
    stride: usize,
    n: usize,
    rows: &[TopK],
) -> Result<Vec<Vec<(u32, f32)>>> {
    let count = logits.len().checked_div(stride).unwrap_or(0);
    if count != rows.len() {
        return Err(BackendError::Batch(format!(
            "{} top-k requests for {count} rows of logits",
            rows.len()
        )));
    }
    for (row, req) in logits.chunks_exact_mut(stride.max(1)).zip(rows) {
        req.penalties.apply(&mut row[..n]);
    }
    let logits: &[f32] = logits;
    let pieces = n.div_ceil(PIECE).max(1);
    let mut found: Vec<Vec<(u32, f32)>> = vec![Vec::new(); count * pieces];
    bitnet_kernels::pool::for_each_chunk_mut(&mut found, 1, |i, slot| {
        let (r, start, piece) = piece(logits, stride, n, pieces, i);
        // A piece's 16k candidates in a buffer each worker keeps; only its k best are copied.
        PIECE_CANDIDATES.with_borrow_mut(|buf| {
            buf.clear();
            // Ids fit u32: the vocabulary is a model dimension (checked at load).
            sampling::candidates(piece, start as u32, &rows[r], buf);
            slot[0] = buf.clone();
        });
    });
    Ok(found
        .chunks_mut(pieces)
        .zip(rows)
        .map(|(pieces, req)| {
            let mut row: Vec<(u32, f32)> = pieces.iter_mut().flat_map(std::mem::take).collect();
            sampling::keep_best(&mut row, req.k);
            row
        })
        .collect())
}

/// Each row's [`bitnet_backend::argmax`] over its first `n` logits (rows `stride` apart), in
/// pieces of [`PIECE`] on the installed pool.
fn argmax_rows(logits: &[f32], stride: usize, n: usize) -> Vec<u32> {
    let rows = logits.len().checked_div(stride).unwrap_or(0);
    let pieces = n.div_ceil(PIECE).max(1);
    let mut best: Vec<Option<(usize, f32)>> = vec![None; rows * pieces];
    bitnet_kernels::pool::for_each_chunk_mut(&mut best, 1, |i, slot| {
        let (_, start, piece) = piece(logits, stride, n, pieces, i);
        slot[0] = bitnet_backend::max_first(piece).map(|(j, v)| (start + j, v));
    });
    best.chunks(pieces)
        .map(|row| {
            // The first piece holding the row's largest value: first on ties, as one scan.
            let mut pick: Option<(usize, f32)> = None;
            for &(j, v) in row.iter().flatten() {
                if pick.is_none_or(|(_, b)| v > b) {
                    pick = Some((j, v));
                }
            }
            pick.map_or(0, |(j, _)| j as u32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{argmax_rows, top_k_rows};
    use bitnet_backend::argmax;
    use bitnet_backend::sampling::{self, Penalties, PenaltyToken, TopK};

    #[test]
    fn top_k_rows_equal_one_selection_per_row() {
        let (stride, n) = (2 * 16384 + 9, 2 * 16384 + 3);
        // Few distinct values (ties across pieces), a NaN, and a penalized token per row.
        let mut logits: Vec<f32> = (0..3 * stride)
            .map(|i| ((i * 7919) % 61) as f32 / 4.0)
            .collect();
        logits[stride + 7] = f32::NAN;
        let rows: Vec<TopK> = [(1, 1.0), (40, 0.7), (1024, 1.3)]
            .into_iter()
            .enumerate()
            .map(|(r, (k, temperature))| TopK {
                k,
                temperature,
                penalties: Penalties {
                    repeat: 1.3,
                    presence: 0.5,
                    frequency: 0.25,
                    tokens: vec![PenaltyToken {
                        id: (r * 16384 + 2) as u32,
                        repeat: true,
                        count: 2,
                    }],
                },
            })
            .collect();
        let want: Vec<Vec<(u32, f32)>> = logits
            .chunks(stride)
            .zip(&rows)
            .map(|(row, req)| {
                let mut row = row[..n].to_vec();
                let mut cand = Vec::new();
                sampling::top_k(&mut row, req, &mut cand);
                cand
            })
            .collect();
        let pool = bitnet_kernels::pool::ThreadPool::new(3).unwrap();
        let got = pool.install(|| top_k_rows(&mut logits.clone(), stride, n, &rows).unwrap());
        let bits = |v: &[Vec<(u32, f32)>]| -> Vec<Vec<(u32, u32)>> {
            v.iter()
                .map(|r| r.iter().map(|&(i, x)| (i, x.to_bits())).collect())
                .collect()
        };
        assert_eq!(bits(&got), bits(&want));
        assert_eq!(want.iter().map(Vec::len).collect::<Vec<_>>(), [1, 40, 1024]);
        assert!(top_k_rows(&mut logits, stride, n, &rows[..2]).is_err());
    }

    #[test]
    fn argmax_rows_equal_one_scan_per_row() {
        let (stride, n) = (3 * 16384 + 5, 3 * 16384 + 2);
        let mut logits: Vec<f32> = (0..4 * stride)
            .map(|i| ((i * 7919) % 1000) as f32)
            .collect();
        // Row 0: the largest value in the first and the last piece (the first wins); row 1:
        // beyond `n` (ignored); row 2: all NaN and -inf (0, as a scan); row 3: as generated.
        logits[5] = 2000.0;
        logits[3 * 16384 + 1] = 2000.0;
        logits[stride + n + 1] = 5000.0;
        logits[stride + 40000] = 3000.0;
        for (i, v) in logits[2 * stride..3 * stride].iter_mut().enumerate() {
            *v = if i % 2 == 0 {
                f32::NAN
            } else {
                f32::NEG_INFINITY
            };
        }
        let want: Vec<u32> = logits.chunks(stride).map(|row| argmax(&row[..n])).collect();
        assert_eq!(want[..3], [5, 40000, 0]);
        let pool = bitnet_kernels::pool::ThreadPool::new(3).unwrap();
        assert_eq!(pool.install(|| argmax_rows(&logits, stride, n)), want);
        assert_eq!(argmax_rows(&logits, stride, n), want);
        assert_eq!(argmax_rows(&[], stride, n), Vec::<u32>::new());
    }
}
