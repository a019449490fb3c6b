//! How much text can possibly fit a context, known before tokenizing it.
//!
//! Tokenizing costs about 120 bytes of memory per byte of text, so a 50 MB prompt took 6 GB
//! only to learn that it does not fit. For most tokenizers one token never stands for more text
//! than its own vocabulary string: the normalizer only adds (SentencePiece's `▁` is 3 bytes for
//! a 1-byte space, and a prefix), byte-level strings spend 1-2 bytes per byte, `<0x41>` spends 6
//! for 1, and nothing is dropped. Then a text of more than `ctx × longest token` bytes needs
//! more than `ctx` tokens, and refusing it unread refuses nothing that would fit.
//!
//! A tokenizer that may drop or shrink text (BERT-style normalizers and whitespace splitting,
//! fused unknown tokens, a byte-level vocabulary missing bytes) gets [`LOSSY_SLACK`] times the
//! room: the bound still stops a 50 MB prompt, but a prompt that shrinks more than that is
//! refused although it might fit.

use serde_json::Value;
use tokenizers::models::ModelWrapper;

use crate::byte_level;

/// Extra room for tokenizers whose output may stand for more text than their vocabulary
/// strings (see the module documentation).
pub(crate) const LOSSY_SLACK: usize = 4;

/// Most bytes of input text one token of `inner` can stand for; `longest` is the byte length
/// of its longest vocabulary string (added tokens included).
pub(crate) fn bytes_per_token(inner: &tokenizers::Tokenizer, longest: usize) -> usize {
    let longest = longest.max(1);
    if keeps_every_byte(inner) {
        longest
    } else {
        longest.saturating_mul(LOSSY_SLACK)
    }
}

/// Whether every byte of the input ends up inside some token whose string is at least as long
/// as the text it covers.
fn keeps_every_byte(inner: &tokenizers::Tokenizer) -> bool {
    let json = |x: Option<String>| x.and_then(|s| serde_json::from_str::<Value>(&s).ok());
    let normalizer = inner
        .get_normalizer()
        .map(|n| json(serde_json::to_string(n).ok()));
    let pre = inner
        .get_pre_tokenizer()
        .map(|p| json(serde_json::to_string(p).ok()));
    let normalizer_ok = match normalizer {
        None => true,
        Some(Some(n)) => normalizer_only_grows(&n),
        Some(None) => false,
    };
    let pre_ok = match &pre {
        None => true,
        Some(Some(p)) => pre_tokenizer_keeps_text(p),
        Some(None) => false,
    };
    let byte_level = pre
        .as_ref()
        .is_some_and(|p| p.as_ref().is_some_and(has_byte_level));
    normalizer_ok && pre_ok && model_keeps_text(inner, byte_level)
}

/// Normalizers that only prepend or replace with something at least as long.
fn normalizer_only_grows(n: &Value) -> bool {
    match n.get("type").and_then(Value::as_str) {
        Some("Sequence") => n
            .get("normalizers")
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().all(normalizer_only_grows)),
        Some("Prepend") => true,
        Some("Replace") => {
            let pattern = n
                .get("pattern")
                .and_then(|p| p.get("String"))
                .and_then(Value::as_str);
            let content = n.get("content").and_then(Value::as_str);
            matches!((pattern, content), (Some(p), Some(c)) if c.len() >= p.len())
        }
        _ => false,
    }
}

/// Pre-tokenizers that split without removing anything.
fn pre_tokenizer_keeps_text(p: &Value) -> bool {
    let kept = |key: &str| p.get(key).and_then(Value::as_str) != Some("Removed");
    match p.get("type").and_then(Value::as_str) {
        Some("Sequence") => p
            .get("pretokenizers")
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().all(pre_tokenizer_keeps_text)),
        Some("ByteLevel" | "Metaspace" | "Digits" | "UnicodeScripts") => true,
        Some("Split" | "Punctuation") => kept("behavior"),
        _ => false,
    }
}

fn has_byte_level(p: &Value) -> bool {
    match p.get("type").and_then(Value::as_str) {
        Some("ByteLevel") => true,
        Some("Sequence") => p
            .get("pretokenizers")
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(has_byte_level)),
        _ => false,
    }
}

/// A BPE model that neither drops characters it lacks nor fuses a run of them into one
/// unknown token.
fn model_keeps_text(inner: &tokenizers::Tokenizer, byte_level: bool) -> bool {
    let ModelWrapper::BPE(bpe) = inner.get_model() else {
        return false;
    };
    let has = |s: &str| inner.token_to_id(s).is_some();
    if byte_level {
        // Every byte becomes one of 256 characters; all of them must be tokens.
        return (0u32..0x200)
            .filter_map(char::from_u32)
            .filter(|&c| byte_level::char_to_byte(c).is_some())
            .all(|c| has(c.encode_utf8(&mut [0; 4])));
    }
    let all_bytes = bpe.byte_fallback && (0..=255u8).all(|b| has(&format!("<0x{b:02X}>")));
    // An unknown token for each unknown character covers at most 4 bytes; "<unk>" is longer.
    let unk_per_char = bpe.unk_token.as_deref().is_some_and(|u| u.len() >= 4) && !bpe.fuse_unk;
    all_bytes || unk_per_char
}
