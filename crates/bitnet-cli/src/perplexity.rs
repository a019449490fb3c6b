use crate::args::{resolve, ModelArgs};
use anyhow::{Context, Result};
use bitnet_inference::Logits;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file; each line is a unit (a verse, a sentence)
    #[arg(short, long)]
    file: PathBuf,
    /// Tokens per chunk after BOS; lines are packed greedily into chunks, never split
    #[arg(long, default_value_t = 256)]
    chunk: usize,
}

/// Mean negative log-likelihood per token, the way the shared KJV model's reference computes it:
/// each line (with its newline) is tokenized alone, lines are packed greedily into chunks of
/// BOS + at most `chunk` tokens, and every token after BOS is scored.
pub fn run(a: PerplexityArgs) -> Result<()> {
    let s = resolve(&a.model, None)?;
    let engine = crate::load_engine(&s, false)?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let r = perplexity(&engine, &text, a.chunk)?;
    println!(
        "chunks {} tokens {} loss {:.4} nats/token perplexity {:.3}",
        r.0,
        r.1,
        r.2,
        r.2.exp()
    );
    Ok(())
}

pub fn perplexity(
    engine: &bitnet_inference::Engine,
    text: &str,
    chunk: usize,
) -> Result<(usize, usize, f64)> {
    let tok = engine.tokenizer();
    let bos = tok.bos_id().context("the tokenizer has no BOS token")?;
    let mut chunks: Vec<Vec<u32>> = Vec::new();
    let mut cur = vec![bos];
    for line in text.lines() {
        let ids = tok.encode(&format!("{line}\n"), false)?;
        if cur.len() + ids.len() > chunk + 1 && cur.len() > 1 {
            chunks.push(std::mem::replace(&mut cur, vec![bos]));
        }
        cur.extend(ids);
    }
    chunks.push(cur);
    let longest = chunks.iter().map(Vec::len).max().unwrap_or(1);
    let mut session = engine.session(Some(longest))?;
    let vocab = engine.config().vocab_size;
    let (mut nll, mut n) = (0f64, 0usize);
    for c in &chunks {
        if c.len() < 2 {
            continue;
        }
        session.reset();
        let logits = session.eval(&c[..c.len() - 1], Logits::All)?;
        for (row, &target) in logits.chunks_exact(vocab).zip(&c[1..]) {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[target as usize] as f64;
            n += 1;
        }
    }
    Ok((chunks.len(), n, nll / n.max(1) as f64))
}
