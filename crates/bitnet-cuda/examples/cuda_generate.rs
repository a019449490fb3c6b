//! Whole-model speed on the GPU: prompt processing (ppN) and greedy batch-1 decoding (tgN) of
//! a model file, or of a random-weight 2B4T-shaped model made in memory (as `bitnet fixture
//! --shape 2b4t --arch bitnet-b1.58 --seed 42` makes it: random ternary weights, F16 tied
//! embedding/head) so nothing of GB size has to be carried to the GPU machine.
//!
//! ```text
//! cargo build --release -p bitnet-cuda --example cuda_generate   # here; on the GPU machine:
//! ./cuda_generate [MODEL.gguf] [--head f16,q8_0] [--pp 512] [--tg 128] [--reps 3]
//! ```
//! Decode is timed with the step captured as a CUDA graph and with plain launches.

use bitnet_common::Storage;
use bitnet_cuda::{Gpu, GpuModel, GpuSession};
use bitnet_kernels::{DenseMatrix, DenseMatrixExt, DenseType};
use bitnet_models::{Arch, ModelWeights};
use std::time::Instant;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The tied head re-encoded as Q8_0 (what `bitnet convert --embed q8_0` writes).
fn q8_0_head(w: &mut ModelWeights) -> AnyResult<()> {
    let m = &w.token_embd;
    let mut f = vec![0f32; m.rows() * m.cols()];
    for (r, row) in f.chunks_exact_mut(m.cols()).enumerate() {
        m.row_f32(r, row);
    }
    let bytes = bitnet_quantization::q8_0::encode(&f)?;
    w.token_embd = DenseMatrix::new(
        m.rows(),
        m.cols(),
        DenseType::Q8_0,
        Storage::from_vec(bytes),
    )?;
    Ok(())
}

fn main() -> AnyResult<()> {
    let (mut model, mut head, mut pp, mut tg, mut reps) =
        (None::<String>, None::<String>, 512, 128, 3);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> AnyResult<usize> { Ok(args.next().ok_or("missing number")?.parse()?) };
        match a.as_str() {
            "--pp" => pp = num()?,
            "--tg" => tg = num()?,
            "--reps" => reps = num()?,
            "--head" => head = Some(args.next().ok_or("missing head type")?),
            "--fixture-2b4t" => model = None,
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
    let gpu = Gpu::open(0)?;
    let heads = head.unwrap_or_else(|| "f16,q8_0".into());
    for head in heads.split(',') {
        match head {
            "f16" if weights.lm_head().ty() == DenseType::F16 => {}
            "q8_0" => q8_0_head(&mut weights)?,
            other => return Err(format!("--head {other}: f16 (before q8_0) or q8_0").into()),
        }
        bench(&gpu, &weights, model.as_deref(), load_s, pp, tg, reps)?;
    }
    Ok(())
}

fn bench(
    gpu: &Gpu,
    weights: &ModelWeights,
    model: Option<&str>,
    load_s: f64,
    pp: usize,
    tg: usize,
    reps: usize,
) -> AnyResult<()> {
    let t = Instant::now();
    let gm = GpuModel::upload(gpu, weights)?;
    gpu.synchronize()?;
    let c = weights.config.clone();
    println!(
        "model {} ({} layers, hidden {}, vocab {}, head {:?}): {:.2} GB on the GPU; made/loaded in \
         {load_s:.1} s, uploaded in {:.1} s",
        model.unwrap_or("2B4T fixture, seed 42"),
        c.num_layers,
        c.hidden_size,
        c.vocab_size,
        weights.lm_head().ty(),
        gm.nbytes() as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    let ctx = (pp + tg + 1).next_power_of_two().max(256);
    let vocab = c.vocab_size as u32;
    let prompt: Vec<u32> = (0..pp as u32).map(|i| (i * 7919 + 13) % vocab).collect();

    // Prompt processing: the whole prompt, logits of its last token.
    let mut s = GpuSession::new(gpu, &gm, ctx, pp.max(1))?;
    s.forward_greedy(&prompt, 0)?; // compiles the kernels, warms the caches
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        s.forward_greedy(&prompt, 0)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "pp{pp}: {:.1} ms, {:.0} tokens/s (best of {reps})",
        best * 1e3,
        pp as f64 / best
    );

    // Decode: tg tokens after a one-token prompt, as llama-bench's tgN.
    for (graph, fused) in [(false, true), (true, false), (true, true)] {
        let mut s = GpuSession::new(gpu, &gm, ctx, 1)?;
        s.set_graph(graph);
        s.set_fused(fused);
        s.generate_greedy(&[1], 8)?; // warm-up (and the graph's capture)
        let mut best = f64::MAX;
        let mut ids = Vec::new();
        for _ in 0..reps {
            s.forward_greedy(&[1], 0)?;
            let t = Instant::now();
            ids.clear();
            for _ in 0..tg {
                ids.push(s.decode_greedy()?);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "tg{tg} ({}, {}): {:.1} us/token, {:.0} tokens/s, {:.0} GB/s of weights (best of \
             {reps}; first ids {:?})",
            if graph { "graph" } else { "launches" },
            if fused {
                "fused norms"
            } else {
                "separate norms"
            },
            best / tg as f64 * 1e6,
            tg as f64 / best,
            gm.nbytes() as f64 * tg as f64 / best / 1e9,
            &ids[..ids.len().min(4)]
        );
    }
    Ok(())
}
