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
    /// Tokens per chunk after BOS; lines are packed greedily into chunks, never split. BOS plus
    /// a chunk must fit the context [default: -c minus 1 (BOS + chunk = -c, as llama-perplexity's
    /// context per chunk), else 256]
    #[arg(long)]
    chunk: Option<usize>,
    /// Also compare with this model (same vocabulary): KL divergence of its next-token
    /// distribution from the base's at every scored token, e.g. a quantized LM head against the
    /// f16 one
    #[arg(long, value_name = "BASE_MODEL")]
    kl_base: Option<PathBuf>,
}

/// Mean negative log-likelihood per token, the way the shared KJV model's reference computes it
/// (see `bitnet_inference::perplexity::line_packed`).
pub fn run(a: PerplexityArgs) -> Result<()> {
    let s = resolve(&a.model, None)?;
    let chunk = chunk_len(a.chunk, s.ctx_size)?;
    // Read before loading: a missing or special (FIFO) file fails fast.
    let text = bitnet_common::read_regular_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let engine = crate::load_engine(&s, false)?;
    if let Some(base_path) = &a.kl_base {
        let mut base_args = a.model.clone();
        base_args.source.model = Some(base_path.clone());
        base_args.source.hf_repo = None;
        base_args.source.hf_file = None;
        let bs = resolve(&base_args, None)?;
        let base = crate::load_engine(&bs, false)?;
        let bar = crate::progress::bar("scoring", crate::progress::Unit::Items("chunks"), false);
        let d = bitnet_inference::perplexity::divergence_with_progress(
            &engine,
            &base,
            &text,
            chunk,
            s.ctx_size,
            &mut crate::progress::reporter(&bar),
        );
        bar.finish_and_clear();
        let d = d?;
        println!(
            "tokens {} perplexity {:.3} (base {:.3}) KL(base||model) mean {:.6} max {:.4} nats, top-1 agreement {:.2}%",
            d.ppl.tokens,
            d.ppl.perplexity(),
            d.base.perplexity(),
            d.kl_mean,
            d.kl_max,
            100.0 * d.top1_agree
        );
        return Ok(());
    }
    let bar = crate::progress::bar("scoring", crate::progress::Unit::Items("chunks"), false);
    let r = bitnet_inference::perplexity::line_packed_with_progress(
        &engine,
        &text,
        chunk,
        s.ctx_size,
        &mut crate::progress::reporter(&bar),
    );
    bar.finish_and_clear();
    let r = r?;
    println!(
        "chunks {} tokens {} loss {:.4} nats/token perplexity {:.3}",
        r.chunks,
        r.tokens,
        r.loss,
        r.perplexity()
    );
    Ok(())
}

/// Tokens per chunk after BOS. `-c` is llama-perplexity's context per chunk: BOS plus the chunk
/// fill it, so `-c N` alone scores chunks of N - 1 tokens. (llama-perplexity cuts the token
/// stream every N tokens and scores each chunk's second half; here lines are never split and
/// every token after BOS is scored, as the KJV reference does.)
fn chunk_len(chunk: Option<usize>, ctx: Option<usize>) -> Result<usize> {
    const DEFAULT_CHUNK: usize = 256;
    let Some(ctx) = ctx else {
        let chunk = chunk.unwrap_or(DEFAULT_CHUNK);
        crate::validate::positive("--chunk", chunk)?;
        return Ok(chunk);
    };
    if ctx < 2 {
        return Err(crate::validate::usage(format!(
            "--ctx-size {ctx}: a chunk needs BOS and at least one token to score, so at least 2"
        )));
    }
    let chunk = chunk.unwrap_or(ctx - 1);
    crate::validate::positive("--chunk", chunk)?;
    // Each chunk is scored in one context of BOS + chunk tokens.
    if chunk >= ctx {
        return Err(crate::validate::usage(format!(
            "--chunk {chunk} needs a context of {} tokens (BOS + chunk), more than --ctx-size {ctx}",
            chunk + 1
        )));
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::chunk_len;

    #[test]
    fn ctx_size_sets_the_chunk_as_llama_perplexity_does() {
        assert_eq!(chunk_len(None, None).unwrap(), 256);
        assert_eq!(chunk_len(None, Some(128)).unwrap(), 127);
        assert_eq!(chunk_len(Some(64), Some(128)).unwrap(), 64);
        assert_eq!(chunk_len(Some(7), None).unwrap(), 7);
        assert!(chunk_len(Some(128), Some(128)).is_err());
        assert!(chunk_len(None, Some(1)).is_err());
        assert!(chunk_len(Some(0), None).is_err());
    }
}
