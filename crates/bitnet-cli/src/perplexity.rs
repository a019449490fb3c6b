use crate::args::{resolve, ModelArgs};
use anyhow::{Context, Result};
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

/// Mean negative log-likelihood per token, the way the shared KJV model's reference computes it
/// (see `bitnet_inference::perplexity::line_packed`).
pub fn run(a: PerplexityArgs) -> Result<()> {
    let s = resolve(&a.model, None)?;
    let engine = crate::load_engine(&s, false)?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let r = bitnet_inference::perplexity::line_packed(&engine, &text, a.chunk)?;
    println!(
        "chunks {} tokens {} loss {:.4} nats/token perplexity {:.3}",
        r.chunks,
        r.tokens,
        r.loss,
        r.perplexity()
    );
    Ok(())
}
