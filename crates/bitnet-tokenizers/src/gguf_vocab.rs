//! [`GgufVocab`]: the tokenizer as GGUF stores it, and the conversion from a
//! Hugging Face folder that llama.cpp's `convert_hf_to_gguf.py` performs.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::hf_files::{self, ModelConfig, TokenizerConfig};
use crate::{pretokenizer, specials, TokenizerError};

/// llama.cpp's `llama_token_type` values, as stored in `tokenizer.ggml.token_type`.
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer as stored in GGUF metadata (llama.cpp keys: `tokenizer.ggml.model`,
/// `.pre`, `.tokens`, `.token_type`, `.merges`, `.scores`, `.bos_token_id`,
/// `.eos_token_id`, `.eot_token_id`, `.padding_token_id`, `.add_bos_token`,
/// `.add_eos_token`, and `tokenizer.chat_template`).
///
/// The model loader fills it from the GGUF file; this crate does not read GGUF.
#[derive(Clone, Debug, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`, e.g. "llama-bpe"; absent in some files (2B4T's).
    pub pre: Option<String>,
    /// Token strings in id order (byte-level form for "gpt2").
    pub tokens: Vec<String>,
    /// Per-token types, see [`token_type`].
    pub token_types: Option<Vec<i32>>,
    /// BPE merges as "left right", highest priority first.
    pub merges: Vec<String>,
    /// Per-token scores (SentencePiece merge priority).
    pub scores: Option<Vec<f32>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Builds the GGUF form from a Hugging Face folder (tokenizer.json plus the
    /// optional tokenizer_config.json / chat_template.jinja / config.json), as
    /// llama.cpp's converter does for byte-level BPE.
    ///
    /// Only byte-level BPE is converted; other tokenizer.json models give
    /// [`TokenizerError::Unsupported`], as does a split regex that has no
    /// llama.cpp pre-tokenizer name.
    pub fn from_hf_dir(dir: &Path) -> Result<GgufVocab, TokenizerError> {
        let path = dir.join(hf_files::TOKENIZER_JSON);
        let json = hf_files::read_json(&path)?;
        let model = json
            .get("model")
            .ok_or_else(|| hf_files::bad_file(&path, "no `model` section"))?;
        let model_type = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
        if model_type != "BPE" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.json model '{model_type}': only byte-level BPE converts to GGUF here"
            )));
        }
        if !is_byte_level(&json) {
            return Err(TokenizerError::Unsupported(
                "tokenizer.json BPE without ByteLevel (SentencePiece-style) does not convert to GGUF here".into(),
            ));
        }
        let pre = pretokenizer::gguf_pre_for_hf(json.get("pre_tokenizer").unwrap_or(&Value::Null))?;
        let cfg = TokenizerConfig::load(dir)?;
        let model_cfg = ModelConfig::load(dir)?;

        let (tokens, token_types) = tokens_in_id_order(&path, model, &json, model_cfg.vocab_size)?;
        let merges = merges_as_strings(&path, model)?;

        let ids: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), id_u32(i)))
            .collect();
        let lookup = |s: &str| ids.get(s).copied();

        let template = hf_files::template_specials(&json);
        let bos_id = cfg
            .bos_token
            .as_deref()
            .and_then(lookup)
            .or_else(|| template.first.as_deref().and_then(lookup))
            .or(model_cfg.bos_token_id);
        let eos_id = cfg
            .eos_token
            .as_deref()
            .and_then(lookup)
            .or(model_cfg.eos_token_ids.first().copied());
        let add_bos = cfg.add_bos_token.unwrap_or_else(|| {
            bos_id.is_some() && template.first.as_deref().and_then(lookup) == bos_id
        });
        let add_eos = cfg.add_eos_token.unwrap_or_else(|| {
            eos_id.is_some() && template.last.as_deref().and_then(lookup) == eos_id
        });

        Ok(GgufVocab {
            model: "gpt2".to_string(),
            pre: Some(pre),
            eot_id: specials::find_eot(lookup),
            pad_id: cfg.pad_token.as_deref().and_then(lookup),
            tokens,
            token_types: Some(token_types),
            merges,
            scores: None,
            bos_id,
            eos_id,
            add_bos: Some(add_bos),
            add_eos: Some(add_eos),
            chat_template: cfg.chat_template,
        })
    }
}

/// Upper bound on vocabulary size; guards allocations against corrupt ids.
const MAX_VOCAB: usize = 1 << 24;

pub(crate) fn id_u32(i: usize) -> u32 {
    // Vocabularies are far below 2^32 entries; saturate rather than wrap if not.
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Whether a tokenizer.json is byte-level (ByteLevel pre-tokenizer or decoder).
fn is_byte_level(json: &Value) -> bool {
    fn has_byte_level(v: &Value, list_key: &str) -> bool {
        match v.get("type").and_then(Value::as_str) {
            Some("ByteLevel") => true,
            Some("Sequence") => v
                .get(list_key)
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(|x| has_byte_level(x, list_key))),
            _ => false,
        }
    }
    json.get("pre_tokenizer")
        .is_some_and(|p| has_byte_level(p, "pretokenizers"))
        || json
            .get("decoder")
            .is_some_and(|d| has_byte_level(d, "decoders"))
}

/// Token strings and types in id order, the way the converter lays them out:
/// model vocabulary, then added tokens (their text is used as is), gaps filled
/// with `[PAD{id}]` UNUSED tokens, up to `config.json`'s `vocab_size` if larger.
fn tokens_in_id_order(
    path: &Path,
    model: &Value,
    json: &Value,
    config_vocab_size: Option<u32>,
) -> Result<(Vec<String>, Vec<i32>), TokenizerError> {
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| hf_files::bad_file(path, "`model.vocab` is not an object"))?;
    let mut entries: Vec<(u32, String, i32)> = Vec::with_capacity(vocab.len());
    for (text, id) in vocab {
        let id = hf_files::as_u32(id)
            .ok_or_else(|| hf_files::bad_file(path, format!("bad id for token {text:?}")))?;
        entries.push((id, text.clone(), token_type::NORMAL));
    }
    for added in json
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(text)) = (
            added.get("id").and_then(hf_files::as_u32),
            added.get("content").and_then(Value::as_str),
        ) else {
            return Err(hf_files::bad_file(path, format!("bad added token {added}")));
        };
        let special = added
            .get("special")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (text, ty) = if special || specials::looks_special(text) {
            (text.to_string(), token_type::CONTROL)
        } else {
            // llama.cpp expects user-defined tokens pre-normalized: SentencePiece
            // spaces become real spaces (the converter does this for Gemma).
            (text.replace('\u{2581}', " "), token_type::USER_DEFINED)
        };
        entries.push((id, text, ty));
    }
    let max_id = entries.iter().map(|e| e.0).max();
    let config_n = config_vocab_size.unwrap_or(0) as usize;
    if config_n > MAX_VOCAB {
        return Err(TokenizerError::InvalidVocab(format!(
            "config.json vocab_size {config_n} is implausibly large"
        )));
    }
    let n = max_id.map_or(0, |m| m as usize + 1).max(config_n);
    if n > MAX_VOCAB {
        return Err(TokenizerError::InvalidVocab(format!(
            "token id {} is implausibly large",
            n - 1
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![token_type::UNUSED; n];
    // Added tokens come last in `entries`, so they win over a model entry with the same id.
    for (id, text, ty) in entries {
        let i = id as usize;
        tokens[i] = Some(text);
        types[i] = ty;
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    Ok((tokens, types))
}

/// Merges as "left right" strings; tokenizer.json stores either that or `[left, right]`.
fn merges_as_strings(path: &Path, model: &Value) -> Result<Vec<String>, TokenizerError> {
    let Some(merges) = model.get("merges").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    merges
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
                _ => Err(hf_files::bad_file(path, format!("bad merge {m}"))),
            },
            _ => Err(hf_files::bad_file(path, format!("bad merge {m}"))),
        })
        .collect()
}
