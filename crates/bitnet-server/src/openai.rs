//! OpenAI's request and response bodies for `/v1/chat/completions` and `/v1/completions`.
//!
//! One request type serves both endpoints: they share almost every field, and unknown fields
//! are ignored (as OpenAI does), so a field of the other endpoint is simply never read.
//! Fields are typed, so a wrong type fails deserialization with the field's path.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
pub struct GenerationRequest {
    pub model: Option<String>,
    /// Chat only.
    pub messages: Option<Vec<MessageIn>>,
    /// Completions only.
    pub prompt: Option<PromptIn>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<StopIn>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Chat: a boolean; completions: the number of alternatives (legacy). Checked per endpoint.
    pub logprobs: Option<Value>,
    /// Chat only: alternatives per token when `logprobs` is true.
    pub top_logprobs: Option<u64>,
    /// Completions only: return the prompt before the completion.
    pub echo: Option<bool>,
    // Extensions that llama-server also accepts.
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    // Fields this server cannot honour: read only to refuse them (params::refuse_unsupported)
    // where they would change the answer, instead of a 200 that quietly ignores them.
    pub response_format: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub logit_bias: Option<Value>,
    pub suffix: Option<Value>,
    pub best_of: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum StopIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, an array of strings, an array of token ids or an array of such arrays"
)]
pub enum PromptIn {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    pub content: Option<ContentIn>,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string or an array of content parts ({\"type\": \"text\", \"text\": ...})"
)]
pub enum ContentIn {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

// ---- responses ----

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct UsageOut {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl UsageOut {
    pub fn new(prompt_tokens: usize, cached_tokens: usize, completion_tokens: usize) -> UsageOut {
        UsageOut {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached_tokens.min(prompt_tokens),
            },
        }
    }
}

/// One token in chat's `logprobs.content`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// Completions' legacy `logprobs` object.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
    pub text_offset: Vec<usize>,
}

impl LegacyLogprobs {
    pub fn extend(&mut self, other: LegacyLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<GenerationRequest, String> {
        let de = &mut serde_json::Deserializer::from_str(s);
        serde_path_to_error::deserialize(de).map_err(|e| format!("{} | {}", e.path(), e.inner()))
    }

    #[test]
    fn unknown_fields_are_ignored_and_nulls_are_absent() {
        let r = parse(r#"{"prompt":"x","frobnicate":{"a":[1]},"user":"u","temperature":null}"#)
            .unwrap();
        assert!(matches!(r.prompt, Some(PromptIn::Text(ref s)) if s == "x"));
        assert!(r.temperature.is_none());
    }

    #[test]
    fn prompt_and_stop_shapes() {
        let r = parse(r#"{"prompt":[1,2,3],"stop":["a","b"]}"#).unwrap();
        assert!(matches!(r.prompt, Some(PromptIn::Tokens(ref t)) if t == &[1, 2, 3]));
        assert!(matches!(r.stop, Some(StopIn::Many(ref v)) if v.len() == 2));
        let r = parse(r#"{"prompt":[[1],[2,3]],"stop":"x"}"#).unwrap();
        assert!(matches!(r.prompt, Some(PromptIn::TokenLists(ref t)) if t.len() == 2));
        let r = parse(r#"{"prompt":["a"]}"#).unwrap();
        assert!(matches!(r.prompt, Some(PromptIn::Texts(ref t)) if t == &["a"]));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse(r#"{"prompt":"x","max_tokens":"ten"}"#).unwrap_err();
        assert!(e.starts_with("max_tokens |"), "{e}");
        let e = parse(r#"{"prompt":"x","max_tokens":-1}"#).unwrap_err();
        assert!(e.starts_with("max_tokens |"), "{e}");
        let e = parse(r#"{"prompt":{"a":1}}"#).unwrap_err();
        assert!(e.starts_with("prompt |"), "{e}");
        let e = parse(r#"{"messages":[{"role":"user","content":5}]}"#).unwrap_err();
        assert!(e.starts_with("messages[0].content |"), "{e}");
        let e = parse(r#"{"stop":[1]}"#).unwrap_err();
        assert!(e.starts_with("stop |"), "{e}");
        let e = parse(r#"{"prompt":[-1]}"#).unwrap_err();
        assert!(e.starts_with("prompt |"), "{e}");
    }

    #[test]
    fn usage_serializes_with_details() {
        let u = serde_json::to_value(UsageOut::new(5, 9, 3)).unwrap();
        assert_eq!(
            u,
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                "prompt_tokens_details": {"cached_tokens": 5}})
        );
    }
}
