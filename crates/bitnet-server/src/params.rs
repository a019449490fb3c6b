//! From a parsed OpenAI request to what the engine runs: every value checked against its
//! range (OpenAI's where it has one), OpenAI's defaults filled in, prompts tokenized.

use crate::api::{GenerateOptions, SamplingParams, MAX_TOP_LOGPROBS};
use crate::errors::ApiError;
use crate::openai::{ContentIn, GenerationRequest, PromptIn, StopIn};
use bitnet_inference::settings::SamplingOverrides;
use bitnet_tokenizers::{ChatMessage, Tokenizer};
use serde_json::Value;

/// What a request gets for the fields it leaves out: the server's own settings where it has
/// them (`bitnet serve` takes them from its settings file and `BITNET_*` variables, as `run`
/// does), else OpenAI's defaults. Values a request sends always win, and are range-checked
/// whatever the defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestDefaults {
    pub sampling: SamplingOverrides,
    /// `max_tokens` of a request without one (at most the context); `None`: until the
    /// context is full, as OpenAI.
    pub max_tokens: Option<usize>,
}

/// Most choices one request may ask for (`n` times the number of prompts): each is a
/// sequence in the engine, and one client should not be able to take all of them.
pub const MAX_CHOICES: usize = 16;
/// Most stop strings (OpenAI allows 4; llama-server any number).
pub const MAX_STOP: usize = 16;
/// Longest stop string, in bytes. Neither OpenAI nor llama-server documents a limit, but the
/// engine matches stop strings on its one scheduling thread after every token, in time that
/// grows with the square of their length, so every sequence being decoded would wait on a
/// few huge ones. 256 bytes is far more than any real stop sequence needs.
pub const MAX_STOP_BYTES: usize = 256;
/// A prompt longer than this many bytes per context token cannot fit whatever the
/// vocabulary (no token is that long), so it is refused before tokenizing it.
pub const PROMPT_BYTES_PER_TOKEN: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    /// The request field that holds the prompt, for error messages.
    pub fn prompt_param(self) -> &'static str {
        match self {
            Endpoint::Chat => "messages",
            Endpoint::Completions => "prompt",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PromptSource {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A validated request.
#[derive(Clone, Debug)]
pub struct Plan {
    pub prompts: Vec<PromptSource>,
    /// Choices per prompt.
    pub n: usize,
    pub options: GenerateOptions,
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub echo: bool,
}

impl Plan {
    /// The engine options of choice `j` of a prompt: seeded requests get seed, seed + 1, ...
    /// so the choices differ but the whole response is reproducible.
    pub fn options_for(&self, j: usize) -> GenerateOptions {
        let mut o = self.options.clone();
        if let Some(s) = o.sampling.seed {
            o.sampling.seed = Some(s.wrapping_add(j as u64));
        }
        o
    }
}

fn range_f64(param: &str, v: Option<f64>, default: f64, lo: f64, hi: f64) -> Result<f32, ApiError> {
    let x = v.unwrap_or(default);
    if !(x.is_finite() && x >= lo && x <= hi) {
        return Err(ApiError::invalid_param(
            param,
            format!("{param} must be between {lo} and {hi}, got {x}"),
        ));
    }
    Ok(x as f32)
}

/// Checks everything that does not need the tokenizer. `ctx` is the engine's context per
/// sequence.
/// Fields whose meaning this server does not implement, refused with a 400 naming them (as
/// vLLM and llama-server do without the matching option) rather than answered as if absent:
/// a client asking for JSON output or a tool call must not get prose and a 200. Their neutral
/// values pass: `{"type": "text"}`, no tools (or `tool_choice: "none"`), an empty bias, an
/// empty suffix, `best_of` no more than `n`.
fn refuse_unsupported(req: &GenerationRequest) -> Result<(), ApiError> {
    let present = |v: &Option<Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    };
    if let Some(rf) = req.response_format.as_ref().filter(|v| !v.is_null()) {
        let kind = rf.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return Err(ApiError::invalid_param(
                "response_format",
                format!(
                    "response_format {} is not supported: only {{\"type\": \"text\"}} (no constrained JSON output)",
                    kind.map_or_else(|| rf.to_string(), |k| format!("of type '{k}'"))
                ),
            ));
        }
    }
    let no_tools = req.tool_choice.as_ref().and_then(Value::as_str) == Some("none");
    for (param, v) in [("tools", &req.tools), ("functions", &req.functions)] {
        if present(v) && !no_tools {
            return Err(ApiError::invalid_param(
                param,
                "tool and function calling are not supported by this server",
            ));
        }
    }
    if present(&req.logit_bias) {
        return Err(ApiError::invalid_param(
            "logit_bias",
            "logit_bias is not supported by this server",
        ));
    }
    if present(&req.suffix) {
        return Err(ApiError::invalid_param(
            "suffix",
            "suffix (text after the insertion point) is not supported by this server",
        ));
    }
    if req.stream_options.is_some() && req.stream != Some(true) {
        return Err(ApiError::invalid_param(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    if let Some(b) = req.best_of {
        if b > req.n.unwrap_or(1) {
            return Err(ApiError::invalid_param(
                "best_of",
                "best_of larger than n is not supported (every choice generated is returned)",
            ));
        }
    }
    Ok(())
}

pub fn plan(
    req: &GenerationRequest,
    endpoint: Endpoint,
    ctx: usize,
    defaults: &RequestDefaults,
) -> Result<Plan, ApiError> {
    refuse_unsupported(req)?;
    let d = &defaults.sampling;
    let or = |v: Option<f64>, server: Option<f32>| v.or(server.map(f64::from));
    let prompts = match endpoint {
        Endpoint::Chat => vec![chat_prompt(req)?],
        Endpoint::Completions => completion_prompts(req)?,
    };
    let max_bytes = ctx.saturating_mul(PROMPT_BYTES_PER_TOKEN);
    let bytes: usize = prompts
        .iter()
        .map(|p| match p {
            PromptSource::Chat(m) => m.iter().map(|m| m.content.len() + m.role.len()).sum(),
            PromptSource::Text(t) => t.len(),
            PromptSource::Tokens(_) => 0,
        })
        .max()
        .unwrap_or(0);
    if bytes > max_bytes {
        return Err(ApiError::context_length(format!(
            "the prompt is {bytes} bytes, more than a context of {ctx} tokens can hold"
        ))
        .with_param(endpoint.prompt_param()));
    }

    let n = req.n.unwrap_or(1);
    let choices = (n as u128) * prompts.len() as u128;
    if n == 0 || choices > MAX_CHOICES as u128 {
        return Err(ApiError::invalid_param(
            "n",
            format!(
                "n must be between 1 and {} (times the number of prompts: at most {MAX_CHOICES} choices)",
                MAX_CHOICES / prompts.len().max(1)
            ),
        ));
    }

    let (param, max) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = match max {
        None => None,
        Some(m) if m == 0 || m > ctx as u64 => {
            return Err(ApiError::invalid_param(
                param,
                format!("{param} must be between 1 and the context size {ctx}, got {m}"),
            ))
        }
        Some(m) => Some(m as usize),
    };

    let mut top_p = range_f64("top_p", or(req.top_p, d.top_p), 1.0, 0.0, 1.0)?;
    if top_p == 0.0 {
        // OpenAI accepts 0: the smallest nucleus, which is the single most likely token.
        top_p = f32::MIN_POSITIVE;
    }
    let sampling = SamplingParams {
        temperature: range_f64(
            "temperature",
            or(req.temperature, d.temperature),
            1.0,
            0.0,
            2.0,
        )?,
        top_k: req.top_k.map_or(d.top_k.unwrap_or(0), |k| {
            usize::try_from(k).unwrap_or(usize::MAX)
        }),
        top_p,
        min_p: range_f64("min_p", or(req.min_p, d.min_p), 0.0, 0.0, 1.0)?,
        repeat_penalty: {
            let r = range_f64(
                "repetition_penalty",
                or(req.repetition_penalty, d.repeat_penalty),
                1.0,
                0.0,
                100.0,
            )?;
            if r == 0.0 {
                return Err(ApiError::invalid_param(
                    "repetition_penalty",
                    "repetition_penalty must be greater than 0",
                ));
            }
            r
        },
        presence_penalty: range_f64(
            "presence_penalty",
            or(req.presence_penalty, d.presence_penalty),
            0.0,
            -2.0,
            2.0,
        )?,
        frequency_penalty: range_f64(
            "frequency_penalty",
            or(req.frequency_penalty, d.frequency_penalty),
            0.0,
            -2.0,
            2.0,
        )?,
        seed: req.seed.map(|s| s as u64).or(d.seed),
        repeat_last_n: d
            .repeat_last_n
            .unwrap_or(SamplingParams::default().repeat_last_n),
    };
    sampling
        .validate()
        .map_err(|m| ApiError::engine_invalid(&m, endpoint))?;

    let stop: Vec<String> = match &req.stop {
        None => Vec::new(),
        Some(StopIn::One(s)) => vec![s.clone()],
        Some(StopIn::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid_param(
            "stop",
            format!("at most {MAX_STOP} stop strings"),
        ));
    }
    if let Some(i) = stop.iter().position(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "stop strings must be at most {MAX_STOP_BYTES} bytes long; stop[{i}] is {}",
                stop[i].len()
            ),
        ));
    }
    // An empty stop string would match everywhere; OpenAI ignores them, and so does the
    // engine's matcher (dropped here too so what is submitted says what runs).
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();

    let logprobs = match endpoint {
        Endpoint::Chat => {
            let on = match &req.logprobs {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "logprobs",
                        "logprobs must be a boolean",
                    ))
                }
            };
            match (on, req.top_logprobs) {
                (_, Some(k)) if k > MAX_TOP_LOGPROBS as u64 => {
                    return Err(ApiError::invalid_param(
                        "top_logprobs",
                        format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"),
                    ))
                }
                (false, Some(_)) => {
                    return Err(ApiError::invalid_param(
                        "top_logprobs",
                        "logprobs must be true when top_logprobs is given",
                    ))
                }
                (true, k) => Some(k.unwrap_or(0) as usize),
                (false, None) => None,
            }
        }
        Endpoint::Completions => match &req.logprobs {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(k) if k <= MAX_TOP_LOGPROBS as u64 => Some(k as usize),
                _ => {
                    return Err(ApiError::invalid_param(
                        "logprobs",
                        format!("logprobs must be an integer between 0 and {MAX_TOP_LOGPROBS}"),
                    ))
                }
            },
        },
    };

    let echo = endpoint == Endpoint::Completions && req.echo.unwrap_or(false);
    if echo && logprobs.is_some() {
        return Err(ApiError::invalid_param(
            "echo",
            "echo together with logprobs is not supported (prompt log-probabilities are not computed)",
        ));
    }
    let stream = req.stream.unwrap_or(false);
    Ok(Plan {
        prompts,
        n: n as usize,
        options: GenerateOptions {
            // Without a limit, generation runs until the context is full, as with OpenAI.
            max_tokens: max_tokens.unwrap_or(defaults.max_tokens.map_or(ctx, |m| m.clamp(1, ctx))),
            sampling,
            stop,
            ignore_eos: req.ignore_eos.unwrap_or(false),
        },
        logprobs,
        stream,
        include_usage: stream
            && req
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        echo,
    })
}

fn chat_prompt(req: &GenerationRequest) -> Result<PromptSource, ApiError> {
    let Some(messages) = &req.messages else {
        return Err(ApiError::invalid_param("messages", "messages is required"));
    };
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        // Templates know system/user/assistant; OpenAI's newer "developer" is the system role.
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].role"),
                    format!("unsupported role '{other}' (system, developer, user, assistant)"),
                ))
            }
        };
        let content = match &m.content {
            None if role == "assistant" => String::new(),
            None => {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].content"),
                    "content is required",
                ))
            }
            Some(ContentIn::Text(t)) => t.clone(),
            Some(ContentIn::Parts(parts)) => {
                let mut text = String::new();
                for (k, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::invalid_param(
                                format!("messages[{i}].content[{k}]"),
                                "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                            ))
                        }
                    }
                }
                text
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(PromptSource::Chat(out))
}

fn completion_prompts(req: &GenerationRequest) -> Result<Vec<PromptSource>, ApiError> {
    let prompts = match &req.prompt {
        None => return Err(ApiError::invalid_param("prompt", "prompt is required")),
        Some(PromptIn::Text(t)) => vec![PromptSource::Text(t.clone())],
        Some(PromptIn::Texts(v)) => v.iter().cloned().map(PromptSource::Text).collect(),
        Some(PromptIn::Tokens(t)) => vec![PromptSource::Tokens(t.clone())],
        Some(PromptIn::TokenLists(v)) => v.iter().cloned().map(PromptSource::Tokens).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "prompt must not be empty",
        ));
    }
    if prompts.len() > MAX_CHOICES {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("at most {MAX_CHOICES} prompts per request"),
        ));
    }
    Ok(prompts)
}

/// A tokenized prompt and the text that `echo` returns for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub text: String,
}

/// Tokenizes as `bitnet run` does: text gets BOS when the tokenizer wants it; a chat is
/// rendered with the model's template, which writes its own BOS; token ids are taken as
/// they are. Text that cannot fit `ctx` tokens however it tokenizes is refused before
/// tokenizing, as the context-length error a longer token list gets. CPU work: call it off
/// the async runtime.
pub fn tokenize(
    tok: &Tokenizer,
    src: &PromptSource,
    endpoint: Endpoint,
    want_text: bool,
    ctx: usize,
) -> Result<Tokenized, ApiError> {
    let param = endpoint.prompt_param();
    let bad = |e: bitnet_tokenizers::TokenizerError| match e {
        bitnet_tokenizers::TokenizerError::InputTooLarge(_) => {
            ApiError::context_length(e.to_string()).with_param(param)
        }
        // The model's template, not the request, is at fault.
        bitnet_tokenizers::TokenizerError::InvalidTemplate(_) => ApiError::internal(e.to_string()),
        _ => ApiError::invalid_param(param, e.to_string()),
    };
    let out = match src {
        PromptSource::Chat(messages) => {
            let text = tok
                .apply_chat_template_within(messages, true, ctx)
                .map_err(bad)?;
            Tokenized {
                ids: tok.encode(&text, false).map_err(bad)?,
                text,
            }
        }
        PromptSource::Text(text) => {
            if text.is_empty() {
                return Err(ApiError::invalid_param(param, "the prompt is empty"));
            }
            Tokenized {
                ids: tok
                    .encode_within(text, tok.add_bos_default(), ctx)
                    .map_err(bad)?,
                text: text.clone(),
            }
        }
        PromptSource::Tokens(ids) => Tokenized {
            text: if want_text {
                tok.decode(ids, false).map_err(bad)?
            } else {
                String::new()
            },
            ids: ids.clone(),
        },
    };
    if out.ids.is_empty() {
        return Err(ApiError::invalid_param(param, "the prompt is empty"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> GenerationRequest {
        serde_json::from_str(json).unwrap()
    }

    fn err(json: &str, ep: Endpoint) -> ApiError {
        plan(&req(json), ep, 1024, &RequestDefaults::default()).unwrap_err()
    }

    fn planned(json: &str, ep: Endpoint) -> Plan {
        plan(&req(json), ep, 1024, &RequestDefaults::default())
            .unwrap_or_else(|e| panic!("{json}: {e:?}"))
    }

    #[test]
    fn openai_defaults() {
        let p = plan(
            &req(r#"{"prompt":"hi"}"#),
            Endpoint::Completions,
            1024,
            &RequestDefaults::default(),
        )
        .unwrap();
        let s = &p.options.sampling;
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p),
            (1.0, 1.0, 0, 0.0)
        );
        assert_eq!(s.repeat_penalty, 1.0);
        assert_eq!(p.options.max_tokens, 1024);
        assert_eq!(p.n, 1);
        assert!(!p.stream && !p.include_usage && !p.echo);
        assert_eq!(p.logprobs, None);
    }

    #[test]
    fn neutral_values_of_unsupported_fields_pass() {
        for json in [
            r#"{"messages":[{"role":"user","content":"a"}],"response_format":{"type":"text"}}"#,
            r#"{"messages":[{"role":"user","content":"a"}],"response_format":null,"tools":[],"logit_bias":{}}"#,
            r#"{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function"}],"tool_choice":"none"}"#,
            r#"{"messages":[{"role":"user","content":"a"}],"stream":true,"stream_options":{"include_usage":false}}"#,
        ] {
            planned(json, Endpoint::Chat);
        }
        for json in [
            r#"{"prompt":"a","suffix":"","best_of":2,"n":2}"#,
            r#"{"prompt":"a","suffix":null,"best_of":1}"#,
        ] {
            planned(json, Endpoint::Completions);
        }
    }

    #[test]
    fn extensions_and_max_completion_tokens() {
        let p = plan(
            &req(r#"{"messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "top_k":5,"min_p":0.1,"repetition_penalty":1.1,"max_tokens":3,"max_completion_tokens":7,
                "seed":-1,"stop":"x","n":2,"stream":true,"stream_options":{"include_usage":true},
                "logprobs":true,"top_logprobs":3}"#),
            Endpoint::Chat,
            1024,
            &RequestDefaults::default(),
        )
        .unwrap();
        assert_eq!(
            p.prompts,
            vec![PromptSource::Chat(vec![ChatMessage::new("system", "ab")])]
        );
        let s = &p.options.sampling;
        assert_eq!((s.top_k, s.min_p, s.repeat_penalty), (5, 0.1, 1.1));
        assert_eq!(p.options.max_tokens, 7);
        assert_eq!(p.options.stop, vec!["x".to_string()]);
        assert_eq!(p.options_for(0).sampling.seed, Some(u64::MAX));
        assert_eq!(p.options_for(1).sampling.seed, Some(0));
        assert!(p.stream && p.include_usage);
        assert_eq!(p.logprobs, Some(3));
    }

    #[test]
    fn out_of_range_values_name_their_param() {
        let c = Endpoint::Completions;
        for (json, param) in [
            (r#"{"prompt":"a","temperature":2.5}"#, "temperature"),
            (r#"{"prompt":"a","temperature":-0.1}"#, "temperature"),
            (r#"{"prompt":"a","top_p":1.5}"#, "top_p"),
            (r#"{"prompt":"a","presence_penalty":3}"#, "presence_penalty"),
            (
                r#"{"prompt":"a","frequency_penalty":-2.1}"#,
                "frequency_penalty",
            ),
            (r#"{"prompt":"a","min_p":2}"#, "min_p"),
            (
                r#"{"prompt":"a","repetition_penalty":0}"#,
                "repetition_penalty",
            ),
            (r#"{"prompt":"a","max_tokens":0}"#, "max_tokens"),
            (r#"{"prompt":"a","max_tokens":1000000000000}"#, "max_tokens"),
            (
                r#"{"prompt":"a","max_completion_tokens":1025}"#,
                "max_completion_tokens",
            ),
            (r#"{"prompt":"a","n":0}"#, "n"),
            (r#"{"prompt":"a","n":17}"#, "n"),
            (r#"{"prompt":["a","b"],"n":9}"#, "n"),
            (r#"{"prompt":"a","logprobs":21}"#, "logprobs"),
            (r#"{"prompt":"a","logprobs":true}"#, "logprobs"),
            (r#"{"prompt":"a","logprobs":2,"echo":true}"#, "echo"),
            (r#"{"prompt":[]}"#, "prompt"),
            (
                format!(r#"{{"prompt":"a","stop":"{}"}}"#, "x".repeat(257)).as_str(),
                "stop",
            ),
            (
                format!(r#"{{"prompt":"a","stop":["b","{}"]}}"#, "é".repeat(129)).as_str(),
                "stop",
            ),
            (r#"{}"#, "prompt"),
            (r#"{"prompt":"a","suffix":"b"}"#, "suffix"),
            (r#"{"prompt":"a","best_of":3,"n":2}"#, "best_of"),
            (r#"{"prompt":"a","logit_bias":{"1":5}}"#, "logit_bias"),
        ] {
            let e = err(json, c);
            assert_eq!(e.status, 400, "{json}");
            assert_eq!(e.param.as_deref(), Some(param), "{json}: {e:?}");
        }
        let ch = Endpoint::Chat;
        for (json, param) in [
            (r#"{"messages":[]}"#, "messages"),
            (r#"{"prompt":"a"}"#, "messages"),
            (
                r#"{"messages":[{"role":"tool","content":"x"}]}"#,
                "messages[0].role",
            ),
            (r#"{"messages":[{"role":"user"}]}"#, "messages[0].content"),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0].content[0]",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"logprobs":1}"#,
                "logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"top_logprobs":2}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"logprobs":true,"top_logprobs":21}"#,
                "top_logprobs",
            ),
            // What this server cannot honour is refused, not quietly ignored.
            (
                r#"{"messages":[{"role":"user","content":"a"}],"response_format":{"type":"json_object"}}"#,
                "response_format",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"response_format":{"type":"json_schema","json_schema":{"name":"x"}}}"#,
                "response_format",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"response_format":"json"}"#,
                "response_format",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
                "tools",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function"}],"tool_choice":"required"}"#,
                "tools",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"functions":[{"name":"f"}]}"#,
                "functions",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"logit_bias":{"50256":-100}}"#,
                "logit_bias",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
        ] {
            let e = err(json, ch);
            assert_eq!(e.status, 400, "{json}");
            assert_eq!(e.param.as_deref(), Some(param), "{json}: {e:?}");
        }
    }

    #[test]
    fn oversized_prompt_is_refused_before_tokenizing() {
        let big = "a".repeat(4 * PROMPT_BYTES_PER_TOKEN + 1);
        let e = plan(
            &req(&format!(r#"{{"prompt":"{big}"}}"#)),
            Endpoint::Completions,
            4,
            &RequestDefaults::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(e.param.as_deref(), Some("prompt"));
    }

    #[test]
    fn empty_stop_strings_are_dropped_and_top_p_zero_is_greedy_nucleus() {
        let p = plan(
            &req(r#"{"prompt":"a","stop":["","b"],"top_p":0}"#),
            Endpoint::Completions,
            8,
            &RequestDefaults::default(),
        )
        .unwrap();
        assert_eq!(p.options.stop, vec!["b".to_string()]);
        assert!(p.options.sampling.top_p > 0.0);
        // The longest stop string allowed.
        let longest = "x".repeat(MAX_STOP_BYTES);
        let p = plan(
            &req(&format!(r#"{{"prompt":"a","stop":"{longest}"}}"#)),
            Endpoint::Completions,
            8,
            &RequestDefaults::default(),
        )
        .unwrap();
        assert_eq!(p.options.stop, vec![longest]);
    }

    #[test]
    fn server_defaults_fill_what_a_request_leaves_out() {
        let d = RequestDefaults {
            sampling: SamplingOverrides {
                temperature: Some(0.0),
                top_k: Some(7),
                top_p: Some(0.5),
                seed: Some(9),
                repeat_last_n: Some(16),
                ..Default::default()
            },
            max_tokens: Some(5000),
        };
        let p = plan(&req(r#"{"prompt":"a"}"#), Endpoint::Completions, 1024, &d).unwrap();
        let s = &p.options.sampling;
        assert_eq!((s.temperature, s.top_k, s.top_p), (0.0, 7, 0.5));
        assert_eq!((s.seed, s.repeat_last_n), (Some(9), 16));
        // A default above the context is cut to it; the request's own values win.
        assert_eq!(p.options.max_tokens, 1024);
        let p = plan(
            &req(r#"{"prompt":"a","temperature":1.5,"top_k":0,"seed":1,"max_tokens":3}"#),
            Endpoint::Completions,
            1024,
            &d,
        )
        .unwrap();
        let s = &p.options.sampling;
        assert_eq!((s.temperature, s.top_k, s.seed), (1.5, 0, Some(1)));
        assert_eq!(p.options.max_tokens, 3);
    }
}
