//! The Rust side of the C API's overhead benchmark: the same work as examples/c/bench.c
//! through `bitnet_inference` directly, printing the same lines (scripts/bench-capi.sh).
//!
//!     cargo run --release -p bitnet-ffi --example bench_rust -- MODEL N_TOKENS REPS [THREADS]

use bitnet_inference::{Engine, EngineOptions, GenerateOptions, Logits, Sampler, SamplingParams};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: bench_rust MODEL N_TOKENS REPS [THREADS]".into());
    }
    let n_tokens: usize = args[2].parse()?;
    let reps: usize = args[3].parse()?;
    let threads: usize = args.get(4).map(|t| t.parse()).transpose()?.unwrap_or(0);
    let opts = EngineOptions {
        threads: (threads > 0).then_some(threads),
        ..Default::default()
    };
    let engine = Engine::load(args[1].as_ref(), &opts)?;
    let prompt = engine.tokenizer().encode("In the beginning", true)?;
    let mut session = engine.session(None)?;
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let (mut gen, mut lp) = (Vec::new(), Vec::new());
    for r in 0..=reps {
        let opts = GenerateOptions {
            max_tokens: n_tokens,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..Default::default()
        };
        let mut bytes = 0usize;
        session.reset();
        let g = session.generate(&prompt, &opts, |t| {
            bytes += t.len();
            true
        })?;

        session.reset();
        let mut logits = session.eval(&prompt, Logits::Last)?;
        let t0 = Instant::now();
        for _ in 0..n_tokens {
            let next = sampler.sample(&mut logits, session.tokens(), prompt.len());
            logits = session.eval(&[next], Logits::Last)?;
        }
        let elapsed = t0.elapsed();
        if r > 0 {
            gen.push(g.timings.generation_time.as_secs_f64() * 1e3 / g.tokens.len() as f64);
            lp.push(elapsed.as_secs_f64() * 1e3 / n_tokens as f64);
        }
    }
    // The same greedy sample as the C side's `sample_us`, without the copy: the Rust sampler
    // works on the logits in place.
    session.reset();
    let mut logits = session.eval(&prompt, Logits::Last)?;
    let samples = 100_000;
    let t0 = Instant::now();
    let mut sink = 0u32;
    for _ in 0..samples {
        sink ^= sampler.sample(&mut logits, session.tokens(), prompt.len());
    }
    let sample_us = t0.elapsed().as_secs_f64() * 1e6 / samples as f64;
    std::hint::black_box(sink);
    println!("api rust\nthreads {threads}\ntokens {n_tokens}\nreps {reps}");
    println!(
        "generate_ms_per_token {:.4}\nloop_ms_per_token {:.4}\nsample_us {sample_us:.3}",
        median(gen),
        median(lp)
    );
    Ok(())
}
