//! Wall time of greedy generation through the Rust API (`Session::generate`), the baseline that
//! `scripts/bench_py.py` measures the Python binding against: the same model, threads, prompt
//! and token count, one session kept across runs as `bitnet.Model` keeps one.
//!
//! ```text
//! cargo run --release -p bitnet-inference --example generate_bench -- MODEL THREADS TOKENS RUNS [PROMPT]
//! ```
//!
//! Prints one line per run (after one warm-up run): `wall_s engine_s generated_tokens`, where
//! `engine_s` is the engine's own timing of the prompt and the generation.

use bitnet_inference::{Engine, EngineOptions, GenerateOptions, SamplingParams};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, threads, tokens, runs, rest @ ..] = args.as_slice() else {
        return Err("usage: generate_bench MODEL THREADS TOKENS RUNS [PROMPT]".into());
    };
    let prompt = rest.first().map_or("In the beginning", String::as_str);
    let opts = EngineOptions {
        threads: Some(threads.parse()?),
        ..Default::default()
    };
    let engine = Engine::load(model.as_ref(), &opts)?;
    let mut session = engine.session(None)?;
    let ids = engine.tokenizer().encode(prompt, true)?;
    let gen = GenerateOptions {
        max_tokens: tokens.parse()?,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    let runs: usize = runs.parse()?;
    for run in 0..=runs {
        let t = Instant::now();
        let out = session.generate(&ids, &gen, |_| true)?;
        let wall = t.elapsed().as_secs_f64();
        if run > 0 {
            let t = out.timings;
            let engine = (t.prompt_time + t.generation_time).as_secs_f64();
            println!("{wall:.6} {engine:.6} {}", out.tokens.len());
        }
    }
    Ok(())
}
