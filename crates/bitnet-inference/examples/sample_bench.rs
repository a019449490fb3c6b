//! Time of one sampling step on a 2B4T-sized row of logits (128,256), as the scheduler and
//! `Session::generate` call it, for a few common settings.
//!
//! ```text
//! cargo run --release -p bitnet-inference --example sample_bench -- [VOCAB] [REPS]
//! ```
//!
//! Prints one line per setting: microseconds a call (the median of REPS calls, each on a fresh
//! copy of the row, the copy not timed).

use bitnet_inference::{Rng, Sampler, SamplingParams};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let vocab: usize = args.first().map_or(Ok(128_256), |s| s.parse())?;
    let reps: usize = args.get(1).map_or(Ok(200), |s| s.parse())?;
    // Logits shaped like a language model's: a few strong candidates over a wide, low tail.
    let mut rng = Rng::new(1);
    let row: Vec<f32> = (0..vocab)
        .map(|i| {
            let tail = (rng.next_f64() * 8.0 - 4.0) as f32;
            if i % 9973 == 0 {
                tail + 12.0
            } else {
                tail
            }
        })
        .collect();
    let openai = SamplingParams {
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(7),
        ..Default::default()
    };
    for (name, params) in [
        (
            "temperature 0.8 (OpenAI defaults: top-k, top-p, min-p off)",
            openai.clone(),
        ),
        (
            "temperature 0.8, top-p 0.95",
            SamplingParams {
                top_p: 0.95,
                ..openai.clone()
            },
        ),
        (
            "temperature 0.8, min-p 0.05",
            SamplingParams {
                min_p: 0.05,
                ..openai
            },
        ),
        (
            "engine defaults (top-k 40, top-p 0.95, min-p 0.05)",
            SamplingParams {
                seed: Some(7),
                ..Default::default()
            },
        ),
    ] {
        let mut sampler = Sampler::new(params);
        let mut buf = row.clone();
        let mut times = Vec::with_capacity(reps);
        let mut sink = 0u32;
        for _ in 0..reps {
            buf.copy_from_slice(&row);
            let t = Instant::now();
            sink ^= sampler.sample(&mut buf, &[], 0);
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{:>9.1} us  {name}  (vocab {vocab}; {sink})",
            times[reps / 2]
        );
    }
    Ok(())
}
