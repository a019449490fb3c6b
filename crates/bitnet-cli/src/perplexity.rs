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
    /// a chunk must fit the context (-c, else the model's trained one)
    #[arg(long, default_value_t = 256)]
    chunk: usize,
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
    crate::validate::positive("--chunk", a.chunk)?;
    if let Some(ctx) = s.ctx_size {
        // Each chunk is scored in one context of BOS + chunk tokens.
        if a.chunk >= ctx {
            return Err(crate::validate::usage(format!(
                "--chunk {} needs a context of {} tokens (BOS + chunk), more than --ctx-size {ctx}",
                a.chunk,
                a.chunk + 1
            )));
        }
    }
    // Read before loading: a missing or special (FIFO) file fails fast.
    let text = bitnet_common::read_regular_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let engine = crate::load_engine(&s, false)?;
    if let Some(base_path) = &a.kl_base {
        let mut base_args = a.model.clone();
        base_args.model = Some(base_path.clone());
        base_args.hf_repo = None;
        base_args.hf_file = None;
        let bs = resolve(&base_args, None)?;
        let base = crate::load_engine(&bs, false)?;
        let bar = crate::progress::bar("scoring", crate::progress::Unit::Items("chunks"), false);
        let d = bitnet_inference::perplexity::divergence_with_progress(
            &engine,
            &base,
            &text,
            a.chunk,
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
        a.chunk,
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
