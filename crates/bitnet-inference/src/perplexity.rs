//! Perplexity over a text, chunked the way the shared KJV model's reference measures it.

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::forward::Logits;

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
/// BOS + at most `chunk` tokens (a line is never split); every token after BOS is scored.
pub fn line_packed(engine: &Engine, text: &str, chunk: usize) -> Result<Perplexity> {
    let tok = engine.tokenizer();
    let bos = tok
        .bos_id()
        .ok_or_else(|| EngineError::Settings("the tokenizer has no BOS token".into()))?;
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
    for c in chunks.iter().filter(|c| c.len() >= 2) {
        session.reset();
        let logits = session.eval(&c[..c.len() - 1], Logits::All)?;
        for (row, &target) in logits.chunks_exact(vocab).zip(&c[1..]) {
            nll += log_sum_exp(row) - row[target as usize] as f64;
            n += 1;
        }
    }
    Ok(Perplexity {
        chunks: chunks.len(),
        tokens: n,
        loss: nll / n.max(1) as f64,
    })
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
