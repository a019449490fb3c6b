//! Pre-tokenizer selection: the `tokenizer.ggml.pre` names llama.cpp knows,
//! the split regexes they stand for, and the reverse mapping for conversion.

use serde_json::Value;

use crate::TokenizerError;

/// Llama 3 split regex, written as in Meta's tokenizer.json. llama.cpp uses an
/// equivalent form with explicit case classes; the HF form is used here so the
/// GGUF path and the tokenizer.json path run the very same regex.
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2 split regex (Llama 3 with single digits), as in Qwen's tokenizer.json.
pub(crate) const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's fallback for byte-level BPE files without a usable `pre` key:
/// several regexes applied one after the other, each splitting the pieces of the
/// previous one (a `Sequence` of `Split`s in `tokenizers` terms).
const LLAMA_CPP_DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// How to pre-tokenize a byte-level BPE vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PreTokenizerSpec {
    /// Regexes applied in order with `Isolated` behaviour before the byte mapping.
    pub splits: Vec<&'static str>,
    /// Let the `ByteLevel` step split with its built-in GPT-2 regex (GPT-2 style
    /// vocabularies have no separate `Split`).
    pub byte_level_regex: bool,
    /// Look whole pre-tokenized words up in the vocabulary before merging (Llama 3).
    pub ignore_merges: bool,
    /// llama.cpp's `add_bos` default for this pre type, used when the GGUF has no
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
}

impl PreTokenizerSpec {
    fn llama3() -> Self {
        PreTokenizerSpec {
            splits: vec![LLAMA3_REGEX],
            byte_level_regex: false,
            ignore_merges: true,
            add_bos: true,
        }
    }
    fn gpt2() -> Self {
        PreTokenizerSpec {
            splits: vec![],
            byte_level_regex: true,
            ignore_merges: false,
            add_bos: false,
        }
    }
    fn regexes(splits: Vec<&'static str>) -> Self {
        PreTokenizerSpec {
            splits,
            byte_level_regex: false,
            ignore_merges: false,
            add_bos: false,
        }
    }
}

/// The pre-tokenizer llama.cpp would use for `tokenizer.ggml.pre`.
///
/// `looks_llama3` matters only when the key is missing or "default": the
/// official bitnet-b1.58-2B-4T GGUF carries a Llama 3 vocabulary but no `pre`
/// key, and llama.cpp's generic fallback tokenizes it differently from the way
/// the model was trained, so a Llama 3 vocabulary gets the Llama 3 regex.
pub(crate) fn spec_for_gguf_pre(
    pre: Option<&str>,
    looks_llama3: bool,
) -> Result<PreTokenizerSpec, TokenizerError> {
    let pre = pre.map(str::trim).filter(|p| !p.is_empty());
    let spec = match pre {
        None | Some("default") => {
            if looks_llama3 {
                PreTokenizerSpec::llama3()
            } else {
                PreTokenizerSpec::regexes(LLAMA_CPP_DEFAULT_REGEXES.to_vec())
            }
        }
        Some(
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
            | "jina-v5-nano",
        ) => PreTokenizerSpec::llama3(),
        // Same regex as Llama 3, but llama.cpp keeps the merges for these.
        Some("dbrx" | "smaug-bpe") => PreTokenizerSpec::regexes(vec![LLAMA3_REGEX]),
        Some(
            "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
            | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt"
            | "olmo" | "jais" | "trillion" | "granite-docling" | "exaone4",
        ) => PreTokenizerSpec::gpt2(),
        Some(
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "megrez" | "hunyuan" | "solar-open",
        ) => PreTokenizerSpec::regexes(vec![QWEN2_REGEX]),
        Some(other) => {
            return Err(TokenizerError::Unsupported(format!(
                "GGUF pre-tokenizer '{other}' (supported: llama-bpe/llama3 family, gpt-2 family, qwen2 family, default)"
            )))
        }
    };
    Ok(spec)
}

/// Whether a token list looks like a Llama 3 vocabulary (used when `pre` is absent).
pub(crate) fn looks_llama3<'a>(mut tokens: impl Iterator<Item = &'a str>) -> bool {
    tokens.any(|t| t == "<|begin_of_text|>" || t == "<|eot_id|>" || t == "<|start_header_id|>")
}

/// The `tokenizer.ggml.pre` name for a tokenizer.json `pre_tokenizer`, as
/// llama.cpp's converter would pick it (it hashes the output on a test string;
/// comparing the split regex gives the same answer for the supported families).
pub(crate) fn gguf_pre_for_hf(pre_tokenizer: &Value) -> Result<String, TokenizerError> {
    let mut splits = Vec::new();
    let mut byte_level_regex = false;
    collect_pre_tokenizers(pre_tokenizer, &mut splits, &mut byte_level_regex)?;
    match (splits.as_slice(), byte_level_regex) {
        ([r], false) if r == LLAMA3_REGEX => Ok("llama-bpe".to_string()),
        ([r], false) if r == QWEN2_REGEX => Ok("qwen2".to_string()),
        ([], true) => Ok("gpt-2".to_string()),
        _ => Err(TokenizerError::Unsupported(format!(
            "pre-tokenizer with split regexes {splits:?} (ByteLevel regex: {byte_level_regex}) has no \
             llama.cpp pre-tokenizer name this crate knows (llama-bpe, qwen2, gpt-2)"
        ))),
    }
}

fn collect_pre_tokenizers(
    v: &Value,
    splits: &mut Vec<String>,
    byte_level_regex: &mut bool,
) -> Result<(), TokenizerError> {
    match v.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            for p in v
                .get("pretokenizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                collect_pre_tokenizers(p, splits, byte_level_regex)?;
            }
        }
        Some("Split") => {
            let regex = v
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Value::as_str);
            match regex {
                Some(r) => splits.push(r.to_string()),
                None => {
                    return Err(TokenizerError::Unsupported(format!(
                        "Split pre-tokenizer without a regex pattern: {v}"
                    )))
                }
            }
        }
        Some("ByteLevel") => {
            // `use_regex` defaults to true in tokenizers.
            if v.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                *byte_level_regex = true;
            }
        }
        Some(other) => {
            return Err(TokenizerError::Unsupported(format!(
                "pre-tokenizer type '{other}' in a byte-level BPE tokenizer"
            )))
        }
        None if v.is_null() => {}
        None => {
            return Err(TokenizerError::Unsupported(format!(
                "pre-tokenizer without a type: {v}"
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_names_and_fallback() {
        assert_eq!(
            spec_for_gguf_pre(Some("llama-bpe"), false).ok(),
            Some(PreTokenizerSpec::llama3())
        );
        assert_eq!(
            spec_for_gguf_pre(None, true).ok(),
            Some(PreTokenizerSpec::llama3())
        );
        assert_eq!(
            spec_for_gguf_pre(Some("default"), true).ok(),
            Some(PreTokenizerSpec::llama3())
        );
        assert!(!spec_for_gguf_pre(None, false)
            .map(|s| s.ignore_merges)
            .unwrap_or(true));
        assert!(spec_for_gguf_pre(Some("gpt-2"), false)
            .map(|s| s.byte_level_regex)
            .unwrap_or(false));
        let err = spec_for_gguf_pre(Some("klingon"), false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("klingon"), "{err}");
    }

    #[test]
    fn hf_regex_to_pre_name() {
        let v: Value = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
        assert_eq!(gguf_pre_for_hf(&v).ok().as_deref(), Some("llama-bpe"));
        let gpt2 = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false});
        assert_eq!(gguf_pre_for_hf(&gpt2).ok().as_deref(), Some("gpt-2"));
        let odd = serde_json::json!({"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated"});
        let err = gguf_pre_for_hf(&odd)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\\\\w+"), "{err}");
    }
}
