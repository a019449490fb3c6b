//! Whole-model speed on the GPU: prompt processing (ppN) and greedy batch-1 decoding (tgN) of
//! a model file, or of a random-weight 2B4T-shaped model made in memory (as `bitnet fixture
//! --shape 2b4t --arch bitnet-b1.58 --seed 42` makes it: random ternary weights, F16 tied
//! embedding/head) so nothing of GB size has to be carried to the GPU machine.
//!
//! ```text
//! cargo build --release -p bitnet-cuda --example cuda_generate   # here; on the GPU machine:
//! ./cuda_generate [MODEL.gguf] [--head f16,q8_0,q6_k] [--pp 512] [--tg 128] [--reps 3] [--batch 16,64] [--batched-only]
//! ```
//! Everything runs through the backend seam (`bitnet_backend::Context`), as the engine runs it.
//! The prompt is timed with flash attention and again with the per-query attention kernel.
//! Decode is timed with the step captured as a CUDA graph and with plain launches; `--batch`
//! times B sequences decoding together (B tokens a step, the batched kernels, as a graph and
//! as plain launches) and reports their aggregate tokens/s; the sampled rows time the default sampler with its top-k
//! candidates selected on the GPU against whole rows of logits sampled on the host.

use bitnet_backend::{Context, KvType, Logits, SeqChunk, KV_BLOCK};
use bitnet_common::Storage;
use bitnet_cuda::CudaBackend;
use bitnet_inference::{Sampler, SamplingParams};
use bitnet_kernels::{DenseMatrix, DenseMatrixExt, DenseType};
use bitnet_models::{Arch, ModelWeights};
use std::time::Instant;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The head `m` re-encoded as Q8_0 or Q6_K (what `bitnet convert --embed q8_0|q6_k`
/// writes), rows spread over the CPU's cores (Q6_K's encoder is slow: 328M weights for 2B4T).
fn requantized(m: &DenseMatrix, ty: DenseType) -> AnyResult<DenseMatrix> {
    let (rows, cols) = (m.rows(), m.cols());
    let row_bytes = ty
        .row_bytes(cols)
        .ok_or("head width not a multiple of the block")?;
    let mut bytes = vec![0u8; rows * row_bytes];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| -> AnyResult<()> {
        let jobs: Vec<_> = bytes
            .chunks_mut(per * row_bytes)
            .enumerate()
            .map(|(i, out)| {
                s.spawn(move || -> Result<(), String> {
                    let n = out.len() / row_bytes;
                    let mut f = vec![0f32; n * cols];
                    for (j, row) in f.chunks_exact_mut(cols).enumerate() {
                        m.row_f32(i * per + j, row);
                    }
                    let enc = match ty {
                        DenseType::Q6_K => bitnet_quantization::q6_k::encode(&f),
                        _ => bitnet_quantization::q8_0::encode(&f),
                    };
                    out.copy_from_slice(&enc.map_err(|e| e.to_string())?);
                    Ok(())
                })
            })
            .collect();
        for j in jobs {
            j.join().map_err(|_| "encoder thread panicked")??;
        }
        Ok(())
    })?;
    Ok(DenseMatrix::new(rows, cols, ty, Storage::from_vec(bytes))?)
}

fn main() -> AnyResult<()> {
    let (mut model, mut head, mut pp, mut tg, mut reps) =
        (None::<String>, None::<String>, 512, 128, 3);
    let mut batches = vec![16usize, 64];
    let mut batched_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> AnyResult<usize> { Ok(args.next().ok_or("missing number")?.parse()?) };
        match a.as_str() {
            "--pp" => pp = num()?,
            "--tg" => tg = num()?,
            "--reps" => reps = num()?,
            "--head" => head = Some(args.next().ok_or("missing head type")?),
            "--batch" => {
                let list = args.next().ok_or("missing batch sizes")?;
                batches = list
                    .split(',')
                    .filter(|b| !b.is_empty() && *b != "0")
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--fixture-2b4t" => model = None,
            // Only the batched greedy rows (e.g. under a profiler).
            "--batched-only" => batched_only = true,
            other if !other.starts_with('-') => model = Some(other.to_string()),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let t = Instant::now();
    let mut weights = match &model {
        Some(p) => bitnet_models::load(p.as_ref(), None)?.weights,
        None => {
            let c = bitnet_models::fixture::config_2b4t(Arch::BitnetB158);
            bitnet_models::fixture::random_weights(&c, 42)?
        }
    };
    let load_s = t.elapsed().as_secs_f64();
    let heads = head.unwrap_or_else(|| "f16,q8_0".into());
    // Every requested head is made from the file's own (F16 for the fixture).
    let file_head = weights.lm_head().clone();
    for head in heads.split(',') {
        let h = match head {
            "f16" if file_head.ty() == DenseType::F16 => file_head.clone(),
            "q8_0" => requantized(&file_head, DenseType::Q8_0)?,
            "q6_k" => requantized(&file_head, DenseType::Q6_K)?,
            other => {
                return Err(
                    format!("--head {other}: f16 (an F16 model's own head), q8_0 or q6_k").into(),
                )
            }
        };
        match weights.output.as_mut() {
            Some(o) => *o = h,
            None => weights.token_embd = h,
        }
        let opts = Opts {
            pp,
            tg,
            reps,
            batches: &batches,
            batched_only,
        };
        bench(&weights, model.as_deref(), load_s, &opts)?;
    }
    Ok(())
}

struct Opts<'a> {
    pp: usize,
    tg: usize,
    reps: usize,
    batches: &'a [usize],
    batched_only: bool,
}

/// Block tables of `b` sequences of `per_seq` blocks each, side by side in one cache.
fn seq_tables(b: usize, per_seq: usize) -> Vec<Vec<u32>> {
    (0..b)
        .map(|s| (0..per_seq).map(|i| (s * per_seq + i) as u32).collect())
        .collect()
}

fn one<'a>(tokens: &'a [u32], start: usize, blocks: &'a [u32]) -> SeqChunk<'a> {
    SeqChunk {
        tokens,
        start,
        blocks,
        want: Logits::Last,
    }
}

fn bench(weights: &ModelWeights, model: Option<&str>, load_s: f64, o: &Opts) -> AnyResult<()> {
    let (pp, tg, reps) = (o.pp, o.tg, o.reps);
    let t = Instant::now();
    let backend = CudaBackend::load(0, weights)?;
    let c = weights.config.clone();
    println!(
        "model {} ({} layers, hidden {}, vocab {}, head {:?}): {:.2} GB on the GPU; made/loaded in \
         {load_s:.1} s, uploaded and kernels ready in {:.1} s",
        model.unwrap_or("2B4T fixture, seed 42"),
        c.num_layers,
        c.hidden_size,
        c.vocab_size,
        weights.lm_head().ty(),
        backend.model().nbytes() as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    let nbytes = backend.model().nbytes() as f64;
    let per_seq = (pp.max(1) + tg + 1).div_ceil(KV_BLOCK);
    let table: Vec<u32> = (0..per_seq as u32).collect();
    let vocab = c.vocab_size;
    let prompt: Vec<u32> = (0..pp as u32)
        .map(|i| (i * 7919 + 13) % vocab as u32)
        .collect();

    // Prompt processing: the whole prompt, the greedy choice after its last token; then the
    // same with the per-query attention kernel instead of the flash kernel.
    for flash in [true, false] {
        if pp == 0 {
            break;
        }
        let mut cx = backend.context(per_seq, KvType::F16, pp)?;
        cx.set_flash(flash);
        cx.forward_greedy(&[one(&prompt, 0, &table)], vocab)?; // warms the caches
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            cx.forward_greedy(&[one(&prompt, 0, &table)], vocab)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "pp{pp}{}: {:.1} ms, {:.0} tokens/s (best of {reps})",
            if flash { "" } else { " (per-query attention)" },
            best * 1e3,
            pp as f64 / best
        );
    }

    // Decode: tg tokens after a one-token prompt, as llama-bench's tgN.
    let single: &[(bool, bool, bool)] = if o.batched_only {
        &[]
    } else {
        &[
            (false, true, false),
            (true, false, false),
            (true, true, false),
            (false, true, true),
            (true, true, true),
        ]
    };
    for &(graph, fused, persistent) in single {
        let mut cx = backend.context(per_seq, KvType::F16, 1)?;
        cx.set_graph(graph);
        cx.set_fused(fused);
        cx.set_persistent(persistent);
        let mut best = f64::MAX;
        let mut ids = Vec::new();
        for rep in 0..=reps {
            let mut id = cx.forward_greedy(&[one(&[1], 0, &table)], vocab)?[0];
            let t = Instant::now();
            ids.clear();
            // The first round warms up (and captures the graph).
            let n = if rep == 0 { 8.min(tg) } else { tg };
            for pos in 1..=n {
                id = cx.forward_greedy(&[one(&[id], pos, &table)], vocab)?[0];
                ids.push(id);
            }
            if rep > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        if let Some(p) = cx.persistent_profile() {
            let names = ["q/k/v", "attention", "o", "gate/up", "down"];
            let parts: Vec<String> = names
                .iter()
                .zip(p)
                .map(|(n, [w, r, c, b])| format!("{n} {w:.0}/{r:.0}/{c:.0}/{b:.0}"))
                .collect();
            println!(
                "  persistent step, us per token (block 0): {}",
                parts.join(", ")
            );
        }
        // Every path gives the same bits, so the same ids: their digest says so at a glance.
        let digest = ids.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &i| {
            (h ^ u64::from(i)).wrapping_mul(0x100_0000_01b3)
        });
        println!(
            "tg{tg} ({}, {}): {:.1} us/token, {:.0} tokens/s, {:.0} GB/s of weights (best of \
             {reps}; first ids {:?}, ids digest {digest:016x})",
            if graph { "graph" } else { "launches" },
            match (fused, persistent) {
                (true, true) => "persistent kernel",
                (true, false) => "fused norms",
                _ => "separate norms",
            },
            best / tg as f64 * 1e6,
            tg as f64 / best,
            nbytes * tg as f64 / best / 1e9,
            &ids[..ids.len().min(4)]
        );
    }

    // Batched decode: B sequences, one token each per step, each over its own blocks.
    for (b, graph) in o.batches.iter().flat_map(|&b| [(b, true), (b, false)]) {
        let mut cx = backend.context(b * per_seq, KvType::F16, b)?;
        cx.set_graph(graph);
        let tables = seq_tables(b, per_seq);
        let mut best = f64::MAX;
        for rep in 0..=reps {
            let firsts: Vec<[u32; 1]> =
                (0..b).map(|s| [((s * 7919 + 13) % vocab) as u32]).collect();
            let chunks: Vec<SeqChunk> = (0..b).map(|s| one(&firsts[s], 0, &tables[s])).collect();
            let mut ids = cx.forward_greedy(&chunks, vocab)?;
            let n = if rep == 0 { 8.min(tg) } else { tg };
            let t = Instant::now();
            for pos in 1..=n {
                let toks: Vec<[u32; 1]> = ids.iter().map(|&i| [i]).collect();
                let chunks: Vec<SeqChunk> =
                    (0..b).map(|s| one(&toks[s], pos, &tables[s])).collect();
                ids = cx.forward_greedy(&chunks, vocab)?;
            }
            if rep > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        println!(
            "tg{tg} x {b} sequences (batched, {}): {:.1} us/step, {:.0} tokens/s aggregate \
             (best of {reps})",
            if graph { "graph" } else { "launches" },
            best / tg as f64 * 1e6,
            (b * tg) as f64 / best
        );
    }

    // Sampled decode (the default sampler: temperature 0.8, top-k 40, top-p 0.95, min-p
    // 0.05): candidates selected on the GPU against whole rows of logits sampled on the host.
    let sampled: &[usize] = if o.batched_only { &[] } else { o.batches };
    for &b in std::iter::once(&1)
        .filter(|_| !o.batched_only)
        .chain(sampled)
    {
        for on_gpu in [false, true] {
            let mut cx = backend.context(b * per_seq, KvType::F16, b)?;
            let tables = seq_tables(b, per_seq);
            let mut best = f64::MAX;
            for rep in 0..=reps {
                let mut samplers: Vec<Sampler> = (0..b)
                    .map(|s| {
                        Sampler::new(SamplingParams {
                            seed: Some(s as u64),
                            ..Default::default()
                        })
                    })
                    .collect();
                let mut hist: Vec<Vec<u32>> = (0..b)
                    .map(|s| vec![((s * 7919 + 13) % vocab) as u32])
                    .collect();
                let n = if rep == 0 { 8.min(tg) } else { tg };
                let t = Instant::now();
                for pos in 0..n {
                    let toks: Vec<[u32; 1]> = hist.iter().map(|h| [h[pos]]).collect();
                    let chunks: Vec<SeqChunk> =
                        (0..b).map(|s| one(&toks[s], pos, &tables[s])).collect();
                    if on_gpu {
                        let reqs: Vec<_> = (0..b)
                            .map(|s| samplers[s].top_k_request(&hist[s], 1, vocab))
                            .collect::<Option<_>>()
                            .ok_or("the default sampler takes top-k candidates")?;
                        let mut cands = cx.forward_top_k(&chunks, vocab, &reqs)?;
                        for s in 0..b {
                            let id = samplers[s].sample_candidates(&mut cands[s]);
                            hist[s].push(id);
                        }
                    } else {
                        let mut logits = cx.forward(&chunks)?;
                        for (s, row) in logits.chunks_exact_mut(vocab).enumerate() {
                            let id = samplers[s].sample(row, &hist[s], 1);
                            hist[s].push(id);
                        }
                    }
                }
                if rep > 0 {
                    best = best.min(t.elapsed().as_secs_f64());
                }
            }
            println!(
                "tg{tg} x {b} sampled ({}): {:.1} us/step, {:.0} tokens/s aggregate (best of \
                 {reps})",
                if on_gpu {
                    "top-k on the GPU"
                } else {
                    "whole logits, host sampler"
                },
                best / tg as f64 * 1e6,
                (b * tg) as f64 / best
            );
        }
    }
    Ok(())
}
