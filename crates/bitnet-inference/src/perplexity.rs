//! Perplexity over a text, chunked the way the shared KJV model's reference measures it.

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use bitnet_backend::Logits;

#[derive(Clone, Copy, Debug)]
pub struct Perplexity {
    pub chunks: usize,
    /// Tokens scored (every token after each chunk's BOS).
    pub tokens: usize,
    /// Mean negative log-likelihood, nats per token.
    pub loss: f64,
}

impl Perplexity {
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }
}

/// Each line (with its newline) is tokenized alone; lines are packed greedily into chunks of
/// BOS + at most `chunk` tokens (a line is never split). A line longer than a chunk gets one of
/// its own, up to `ctx` positions with BOS (the caller's context size; default the model's
/// trained context).
fn line_chunks(
    engine: &Engine,
    text: &str,
    chunk: usize,
    ctx: Option<usize>,
) -> Result<Vec<Vec<u32>>> {
    let trained = engine.config().max_position_embeddings;
    let (limit, whose) = match ctx {
        Some(c) => (c, "--ctx-size"),
        None => (trained, "the model's trained context"),
    };
    if chunk == 0 || chunk >= trained {
        return Err(EngineError::Settings(format!(
            "chunk of {chunk} tokens: it must be at least 1 and, with BOS, fit the model's trained context of {trained} tokens"
        )));
    }
    let tok = engine.tokenizer();
    let bos = tok
        .bos_id()
        .ok_or_else(|| EngineError::Settings("the tokenizer has no BOS token".into()))?;
    let mut chunks: Vec<Vec<u32>> = Vec::new();
    let mut cur = vec![bos];
    for (lineno, line) in text.lines().enumerate() {
        let ids = tok.encode(&format!("{line}\n"), false)?;
        if cur.len() + ids.len() > chunk + 1 && cur.len() > 1 {
            chunks.push(std::mem::replace(&mut cur, vec![bos]));
        }
        cur.extend(&ids);
        // A line is never split, so one longer than the context cannot be scored.
        if cur.len() > limit {
            return Err(EngineError::BadInput(format!(
                "line {} has {} tokens: with BOS, more than a context of {limit} ({whose}) holds; split it",
                lineno + 1,
                ids.len()
            )));
        }
    }
    chunks.push(cur);
    if chunks.iter().all(|c| c.len() < 2) {
        return Err(EngineError::BadInput(
            "nothing to score: the text has no tokens".into(),
        ));
    }
    Ok(chunks)
}

/// The mean of `sum` over `n` scored tokens, refusing a non-finite result.
fn mean(what: &'static str, sum: f64, n: usize) -> Result<f64> {
    let v = sum / n.max(1) as f64;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(EngineError::NotFinite { what, value: v })
    }
}

/// Lines packed into chunks as [`line_chunks`] does; every token after each chunk's BOS is scored.
pub fn line_packed(engine: &Engine, text: &str, chunk: usize) -> Result<Perplexity> {
    line_packed_with_progress(engine, text, chunk, None, &mut |_, _| {})
}

/// [`line_packed`] within a context of `ctx` positions (None: the model's trained context; a
/// line longer than that is an error), telling `progress(done, total)` how many chunks are
/// scored.
pub fn line_packed_with_progress(
    engine: &Engine,
    text: &str,
    chunk: usize,
    ctx: Option<usize>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Perplexity> {
    let chunks = line_chunks(engine, text, chunk, ctx)?;
    let longest = chunks.iter().map(Vec::len).max().unwrap_or(1);
    let mut session = engine.session(Some(longest))?;
    let vocab = engine.config().vocab_size;
    let (mut nll, mut n) = (0f64, 0usize);
    let scored = chunks.iter().filter(|c| c.len() >= 2).count() as u64;
    progress(0, scored);
    for (i, c) in chunks.iter().filter(|c| c.len() >= 2).enumerate() {
        session.reset();
        let logits = session.eval(&c[..c.len() - 1], Logits::All)?;
        for (row, &target) in logits.chunks_exact(vocab).zip(&c[1..]) {
            nll += log_sum_exp(row) - row[target as usize] as f64;
            n += 1;
        }
        progress(i as u64 + 1, scored);
    }
    Ok(Perplexity {
        chunks: chunks.len(),
        tokens: n,
        loss: mean("the mean loss", nll, n)?,
    })
}

/// How far a model's next-token distributions are from a base model's on the same text (for
/// instance the same weights with a quantized LM head against the f16 one).
#[derive(Clone, Copy, Debug)]
pub struct Divergence {
    /// The model under test.
    pub ppl: Perplexity,
    /// The base model on the same tokens.
    pub base: Perplexity,
    /// Mean of KL(base || model) over the scored positions, nats.
    pub kl_mean: f64,
    /// Largest KL at one position, nats.
    pub kl_max: f64,
    /// Share of positions where both models' most likely token is the same.
    pub top1_agree: f64,
}

/// KL(base || engine) of the next-token distribution at every scored position of
/// [`line_packed`], with both perplexities. The two engines must share the vocabulary (same
/// token ids); both run chunk by chunk, so memory stays at one chunk's logits per model.
pub fn divergence(engine: &Engine, base: &Engine, text: &str, chunk: usize) -> Result<Divergence> {
    divergence_with_progress(engine, base, text, chunk, None, &mut |_, _| {})
}

/// [`divergence`] within a context of `ctx` positions (as [`line_packed_with_progress`]),
/// telling `progress(done, total)` how many chunks are scored.
pub fn divergence_with_progress(
    engine: &Engine,
    base: &Engine,
    text: &str,
    chunk: usize,
    ctx: Option<usize>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Divergence> {
    let vocab = engine.config().vocab_size;
    if base.config().vocab_size != vocab {
        return Err(EngineError::Settings(format!(
            "the base model's vocabulary ({}) differs from the model's ({vocab})",
            base.config().vocab_size
        )));
    }
    let chunks = line_chunks(engine, text, chunk, ctx)?;
    if line_chunks(base, text, chunk, ctx)? != chunks {
        return Err(EngineError::Settings(
            "the two models tokenize the text differently".into(),
        ));
    }
    let longest = chunks.iter().map(Vec::len).max().unwrap_or(1);
    let (mut sm, mut sb) = (engine.session(Some(longest))?, base.session(Some(longest))?);
    let (mut nll, mut base_nll, mut n) = (0f64, 0f64, 0usize);
    let (mut kl_sum, mut kl_max, mut agree) = (0f64, 0f64, 0usize);
    let scored = chunks.iter().filter(|c| c.len() >= 2).count() as u64;
    progress(0, scored);
    for (i, c) in chunks.iter().filter(|c| c.len() >= 2).enumerate() {
        sm.reset();
        sb.reset();
        let lm = sm.eval(&c[..c.len() - 1], Logits::All)?;
        let lb = sb.eval(&c[..c.len() - 1], Logits::All)?;
        for ((rm, rb), &target) in lm
            .chunks_exact(vocab)
            .zip(lb.chunks_exact(vocab))
            .zip(&c[1..])
        {
            let (lse_m, lse_b) = (log_sum_exp(rm), log_sum_exp(rb));
            nll += lse_m - rm[target as usize] as f64;
            base_nll += lse_b - rb[target as usize] as f64;
            let kl = kl_divergence_lse(rb, lse_b, rm, lse_m);
            kl_sum += kl;
            kl_max = kl_max.max(kl);
            agree += usize::from(bitnet_backend::argmax(rm) == bitnet_backend::argmax(rb));
            n += 1;
        }
        progress(i as u64 + 1, scored);
    }
    let ppl = |loss| Perplexity {
        chunks: chunks.len(),
        tokens: n,
        loss,
    };
    Ok(Divergence {
        ppl: ppl(mean("the mean loss", nll, n)?),
        base: ppl(mean("the base model's mean loss", base_nll, n)?),
        kl_mean: mean("the mean KL divergence", kl_sum, n)?,
        kl_max,
        top1_agree: agree as f64 / n.max(1) as f64,
    })
}

/// KL(base || model) in nats between the softmax distributions of two logit rows, in f64.
pub fn kl_divergence(base: &[f32], model: &[f32]) -> f64 {
    kl_divergence_lse(base, log_sum_exp(base), model, log_sum_exp(model))
}

/// [`kl_divergence`] with both rows' [`log_sum_exp`] already known.
fn kl_divergence_lse(base: &[f32], lse_b: f64, model: &[f32], lse_m: f64) -> f64 {
    base.iter()
        .zip(model)
        .map(|(&b, &m)| {
            let lb = b as f64 - lse_b;
            lb.exp() * (lb - (m as f64 - lse_m))
        })
        .sum()
}

/// `ln(sum(exp(row)))` in f64, shifted by the maximum so large logits cannot overflow.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_means_are_errors() {
        assert_eq!(mean("loss", 6.0, 3).unwrap(), 2.0);
        for bad in [f64::NAN, f64::INFINITY] {
            let e = mean("the mean loss", bad, 3).unwrap_err();
            assert!(matches!(e, EngineError::NotFinite { .. }), "{e}");
            assert!(e.to_string().contains("the mean loss is"), "{e}");
        }
    }
}
