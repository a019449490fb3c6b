//! Reading the JSON files of a Hugging Face model folder.
//!
//! Only the few fields the engine needs are pulled out, by hand from
//! `serde_json::Value`, because their shapes vary between transformers versions
//! (a token can be a string or an `AddedToken` object, a template a string or a
//! list of named templates, `eos_token_id` an int or a list).

use std::path::Path;

use serde_json::Value;

use crate::TokenizerError;

pub(crate) const TOKENIZER_JSON: &str = "tokenizer.json";
pub(crate) const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";
pub(crate) const GENERATION_CONFIG_JSON: &str = "generation_config.json";
pub(crate) const CONFIG_JSON: &str = "config.json";
/// Newer transformers versions save the template in its own file.
pub(crate) const CHAT_TEMPLATE_JINJA: &str = "chat_template.jinja";

/// Reads and parses a JSON file that must exist.
pub(crate) fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let bytes = read_required(path)?;
    parse_json(path, &bytes)
}

/// Reads a file that must exist, mapping "not found" to [`TokenizerError::Missing`].
pub(crate) fn read_required(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    // A FIFO in a model folder would block a plain open forever.
    match bitnet_common::read_regular(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(TokenizerError::Missing(path.to_path_buf()))
        }
        Err(source) => Err(TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn parse_json(path: &Path, bytes: &[u8]) -> Result<Value, TokenizerError> {
    serde_json::from_slice(bytes).map_err(|e| bad_file(path, e))
}

/// Reads an optional JSON file: `Ok(None)` when it does not exist.
pub(crate) fn read_json_opt(path: &Path) -> Result<Option<Value>, TokenizerError> {
    match read_json(path) {
        Ok(v) => Ok(Some(v)),
        Err(TokenizerError::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn bad_file(path: &Path, message: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::BadFile {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// What `tokenizer_config.json` (plus `chat_template.jinja`) says.
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub chat_template: Option<String>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
}

impl TokenizerConfig {
    pub(crate) fn load(dir: &Path) -> Result<TokenizerConfig, TokenizerError> {
        let path = dir.join(TOKENIZER_CONFIG_JSON);
        let mut cfg = match read_json_opt(&path)? {
            Some(v) => TokenizerConfig {
                bos_token: v.get("bos_token").and_then(token_content),
                eos_token: v.get("eos_token").and_then(token_content),
                pad_token: v.get("pad_token").and_then(token_content),
                chat_template: v.get("chat_template").and_then(template_text),
                add_bos_token: v.get("add_bos_token").and_then(Value::as_bool),
                add_eos_token: v.get("add_eos_token").and_then(Value::as_bool),
            },
            None => TokenizerConfig::default(),
        };
        if cfg.chat_template.is_none() {
            let jinja = dir.join(CHAT_TEMPLATE_JINJA);
            match bitnet_common::read_regular_to_string(&jinja) {
                Ok(t) => cfg.chat_template = Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(TokenizerError::Io {
                        path: jinja,
                        source,
                    })
                }
            }
        }
        Ok(cfg)
    }
}

/// A special token in tokenizer_config: `"<s>"` or `{"content": "<s>", ...}`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A chat template: a string, or a list of `{"name", "template"}` where the
/// one named "default" is the chat template (transformers' convention).
fn template_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let named = |name: &str| {
                items
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            };
            named("default")
                .or_else(|| items.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        _ => None,
    }
}

/// What `generation_config.json` says about special ids.
#[derive(Clone, Debug, Default)]
pub(crate) struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    /// `eos_token_id`, which may be a single id or a list (Llama 3 lists eot too).
    pub eos_token_ids: Vec<u32>,
}

impl GenerationConfig {
    pub(crate) fn load(dir: &Path) -> Result<GenerationConfig, TokenizerError> {
        let path = dir.join(GENERATION_CONFIG_JSON);
        let Some(v) = read_json_opt(&path)? else {
            return Ok(GenerationConfig::default());
        };
        Ok(GenerationConfig {
            bos_token_id: v.get("bos_token_id").and_then(as_u32),
            eos_token_ids: v.get("eos_token_id").map(id_list).unwrap_or_default(),
        })
    }
}

/// `config.json` fields used when the tokenizer files leave something out.
#[derive(Clone, Debug, Default)]
pub(crate) struct ModelConfig {
    pub vocab_size: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub(crate) fn load(dir: &Path) -> Result<ModelConfig, TokenizerError> {
        let Some(v) = read_json_opt(&dir.join(CONFIG_JSON))? else {
            return Ok(ModelConfig::default());
        };
        Ok(ModelConfig {
            vocab_size: v.get("vocab_size").and_then(as_u32),
            bos_token_id: v.get("bos_token_id").and_then(as_u32),
            eos_token_ids: v.get("eos_token_id").map(id_list).unwrap_or_default(),
        })
    }
}

pub(crate) fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn id_list(v: &Value) -> Vec<u32> {
    match v {
        Value::Array(items) => items.iter().filter_map(as_u32).collect(),
        other => as_u32(other).into_iter().collect(),
    }
}

/// Special tokens that the tokenizer.json post-processor puts around a single
/// sequence (`TemplateProcessing`, possibly inside a `Sequence`): the first and
/// the last item when they are special tokens. This is what HF adds with
/// `add_special_tokens=True`, and what llama.cpp's converter turns into
/// `add_bos_token` / `add_eos_token`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TemplateSpecials {
    pub first: Option<String>,
    pub last: Option<String>,
}

pub(crate) fn template_specials(tokenizer_json: &Value) -> TemplateSpecials {
    fn find(v: &Value) -> Option<&Value> {
        match v.get("type").and_then(Value::as_str) {
            Some("TemplateProcessing") => Some(v),
            Some("Sequence") => v
                .get("processors")
                .and_then(Value::as_array)?
                .iter()
                .find_map(find),
            _ => None,
        }
    }
    let Some(single) = tokenizer_json
        .get("post_processor")
        .and_then(find)
        .and_then(|t| t.get("single"))
        .and_then(Value::as_array)
    else {
        return TemplateSpecials::default();
    };
    let special = |item: Option<&Value>| {
        item.and_then(|i| i.get("SpecialToken"))
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    TemplateSpecials {
        first: special(single.first()),
        last: special(single.last()),
    }
}
