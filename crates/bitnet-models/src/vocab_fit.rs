//! The tokenizer against the embedding: every id the tokenizer can produce needs a row.
//!
//! A tokenizer larger than the embedding would fail mid-generation, after text was printed, the
//! first time it produced an id past the last row. A smaller one is normal when the embedding
//! is padded (to a multiple of 64 or 128 for faster matrices: Qwen2, phi-2, OLMo); the rows past
//! the tokenizer then stand for no text, and the engine never samples them. Padding is a few
//! percent at most in real models, so a tokenizer that leaves more than [`MAX_PADDING`] of the
//! rows without a token is one that belongs to another model, and is refused too.

use crate::{ModelError, Result};

/// Largest share of the embedding rows a tokenizer may leave without a token (1/8).
pub const MAX_PADDING: f64 = 0.125;

/// Checks `tokenizer_size` (one past the tokenizer's largest id) against `embedding_rows`
/// (the model's `vocab_size`).
pub fn check_vocab_fits(tokenizer_size: usize, embedding_rows: usize) -> Result<()> {
    if tokenizer_size > embedding_rows {
        return Err(ModelError::Config(format!(
            "the tokenizer has {tokenizer_size} tokens but the embedding has only \
             {embedding_rows} rows (vocab_size): ids {embedding_rows} and above would have no row"
        )));
    }
    let unused = embedding_rows - tokenizer_size;
    if unused as f64 > embedding_rows as f64 * MAX_PADDING {
        return Err(ModelError::Config(format!(
            "the tokenizer has {tokenizer_size} tokens but the embedding has {embedding_rows} rows \
             (vocab_size): {unused} rows without a token is more than padding; the tokenizer \
             belongs to another model"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_and_padded_sizes_pass() {
        for (tok, rows) in [
            (4096, 4096),
            (128256, 128256),
            (151646, 151936),
            (50295, 51200),
        ] {
            assert!(check_vocab_fits(tok, rows).is_ok(), "{tok} / {rows}");
        }
        // The largest gap allowed: an eighth of the rows.
        assert!(check_vocab_fits(3584, 4096).is_ok());
    }

    #[test]
    fn larger_or_far_smaller_tokenizers_are_refused_with_both_numbers() {
        for (tok, rows) in [(4097, 4096), (128256, 32000), (1000, 4096), (3583, 4096)] {
            let e = check_vocab_fits(tok, rows)
                .expect_err("refused")
                .to_string();
            assert!(
                e.contains(&tok.to_string()) && e.contains(&rows.to_string()),
                "{e}"
            );
        }
    }
}
