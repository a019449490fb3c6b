//! Engine events to OpenAI responses: a whole JSON body, or server-sent events in OpenAI's
//! `chat.completion.chunk` / `text_completion` chunk format ending in `data: [DONE]`.
//!
//! [`Choices`] holds the per-choice state both modes share; [`ChunkWriter`] turns events into
//! SSE payloads and is pure, so the framing is tested without HTTP.

use crate::api::{Event, FinishReason, TokenLogprobs, Usage};
use crate::errors::ApiError;
use crate::metrics::Metrics;
use crate::openai::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, LegacyLogprobs, UsageOut};
use crate::params::Endpoint;
use bitnet_tokenizers::Tokenizer;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What turning events into responses needs from the server.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub tok: &'a Tokenizer,
    pub metrics: &'a Metrics,
}

/// What every response of one request shares.
#[derive(Clone, Debug)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }
}

pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length | FinishReason::ContextFull => "length",
        FinishReason::Eos | FinishReason::StopString | FinishReason::Cancelled => "stop",
    }
}

fn token_text(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_bytes(id).unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

pub fn chat_logprob(tok: &Tokenizer, id: u32, lp: &TokenLogprobs) -> ChatTokenLogprob {
    let (token, bytes) = token_text(tok, id);
    ChatTokenLogprob {
        token,
        logprob: lp.logprob,
        bytes,
        top_logprobs: lp
            .top
            .iter()
            .map(|&(id, logprob)| {
                let (token, bytes) = token_text(tok, id);
                ChatTopLogprob {
                    token,
                    logprob,
                    bytes,
                }
            })
            .collect(),
    }
}

/// One token of completions' legacy logprobs; `offset` is where its text starts in the
/// choice's text (in characters, as Python indexes strings).
pub fn legacy_logprob(
    tok: &Tokenizer,
    id: u32,
    lp: &TokenLogprobs,
    offset: usize,
) -> LegacyLogprobs {
    let mut top = Map::new();
    for &(id, logprob) in &lp.top {
        top.insert(token_text(tok, id).0, json!(logprob));
    }
    LegacyLogprobs {
        tokens: vec![token_text(tok, id).0],
        token_logprobs: vec![lp.logprob],
        top_logprobs: vec![top],
        text_offset: vec![offset],
    }
}

fn utf8_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// Where a token with these bytes starts, in characters, after `chars` characters have begun:
/// a token that starts inside a character (a byte token that continues a UTF-8 sequence) is
/// placed on that character.
fn text_offset(chars: usize, bytes: &[u8]) -> usize {
    match bytes.first() {
        Some(&b) if utf8_continuation(b) => chars.saturating_sub(1),
        _ => chars,
    }
}

/// The state of every choice of a request: `index = prompt * n + j`.
pub struct Choices {
    pub n: usize,
    pub prompt_tokens: Vec<usize>,
    pub text: Vec<String>,
    /// Whether `text` grows with the tokens: a stream sends text as it comes and never needs
    /// it whole.
    keep_text: bool,
    /// Characters that the echo and the tokens so far stand for, for legacy `text_offset`.
    /// Counted from each token's own text, not from the text released so far, which lags
    /// while text is held back (half a character, the start of a possible stop string).
    chars: Vec<usize>,
    pub chat_logprobs: Vec<Vec<ChatTokenLogprob>>,
    pub legacy_logprobs: Vec<LegacyLogprobs>,
    pub finish: Vec<Option<FinishReason>>,
    pub usage: Vec<Option<Usage>>,
    last_token: Vec<Option<Instant>>,
}

impl Choices {
    pub fn new(n: usize, prompt_tokens: Vec<usize>, echo: &[String]) -> Choices {
        let total = n * prompt_tokens.len();
        let text: Vec<String> = (0..total)
            .map(|c| echo.get(c / n).cloned().unwrap_or_default())
            .collect();
        Choices {
            n,
            prompt_tokens,
            chars: text.iter().map(|t| t.chars().count()).collect(),
            text,
            keep_text: true,
            chat_logprobs: vec![Vec::new(); total],
            legacy_logprobs: vec![LegacyLogprobs::default(); total],
            finish: vec![None; total],
            usage: vec![None; total],
            last_token: vec![None; total],
        }
    }

    pub fn len(&self) -> usize {
        self.finish.len()
    }

    /// Stops keeping each choice's text, and drops what was kept (the echoed prompts).
    pub fn forget_text(&mut self) {
        self.keep_text = false;
        self.text = vec![String::new(); self.text.len()];
    }

    pub fn all_done(&self) -> bool {
        self.finish.iter().all(Option::is_some)
    }

    /// Usage over the whole request: each distinct prompt counted once (as OpenAI does for
    /// `n` > 1), every choice's completion tokens.
    pub fn usage_out(&self) -> UsageOut {
        let mut prompt = 0;
        let mut cached = 0;
        for (p, &len) in self.prompt_tokens.iter().enumerate() {
            let u = self.usage.get(p * self.n).copied().flatten();
            prompt += u.map_or(len, |u| u.prompt_tokens);
            cached += u.map_or(0, |u| u.cached_tokens);
        }
        let completion = self
            .usage
            .iter()
            .map(|u| u.map_or(0, |u| u.completion_tokens))
            .sum();
        UsageOut::new(prompt, cached, completion)
    }

    /// Records a token: returns its text and its logprob entries for this endpoint.
    fn token(
        &mut self,
        cx: Ctx,
        c: usize,
        id: u32,
        text: &str,
        lp: Option<&TokenLogprobs>,
    ) -> (Option<ChatTokenLogprob>, Option<LegacyLogprobs>) {
        let now = Instant::now();
        if let Some(prev) = self.last_token[c].replace(now) {
            cx.metrics.itl.observe(now - prev);
        }
        let out = match lp {
            None => (None, None),
            Some(lp) => {
                let bytes = cx.tok.token_bytes(id).unwrap_or_default();
                let offset = text_offset(self.chars[c], &bytes);
                self.chars[c] += bytes.iter().filter(|&&b| !utf8_continuation(b)).count();
                (
                    Some(chat_logprob(cx.tok, id, lp)),
                    Some(legacy_logprob(cx.tok, id, lp, offset)),
                )
            }
        };
        if self.keep_text {
            self.text[c].push_str(text);
        }
        out
    }

    fn done(
        &mut self,
        metrics: &Metrics,
        c: usize,
        text: &str,
        finish: FinishReason,
        usage: Usage,
    ) {
        if self.keep_text {
            self.text[c].push_str(text);
        }
        self.finish[c] = Some(finish);
        self.usage[c] = Some(usage);
        if usage.completion_tokens > 0 {
            metrics.ttft.observe(usage.time_to_first_token);
        }
    }
}

/// Collects every choice's events into one response body (non-streaming).
pub struct Collector {
    pub meta: Meta,
    pub choices: Choices,
    pub logprobs: bool,
}

impl Collector {
    /// Takes one event; an engine error fails the whole request.
    pub fn event(&mut self, cx: Ctx, c: usize, ev: Event) -> Result<(), ApiError> {
        if c >= self.choices.len() {
            return Err(ApiError::internal("event for an unknown choice"));
        }
        match ev {
            Event::Token { id, text, logprobs } => {
                let (chat, legacy) = self.choices.token(cx, c, id, &text, logprobs.as_ref());
                if let Some(e) = chat {
                    self.choices.chat_logprobs[c].push(e);
                }
                if let Some(l) = legacy {
                    self.choices.legacy_logprobs[c].extend(l);
                }
            }
            Event::Done {
                text,
                finish,
                usage,
            } => self.choices.done(cx.metrics, c, &text, finish, usage),
            Event::Error(msg) => {
                cx.metrics.generation_errors.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::internal(format!("generation failed: {msg}")));
            }
        }
        Ok(())
    }

    pub fn body(&self) -> Value {
        let ch = &self.choices;
        let choices: Vec<Value> = (0..ch.len())
            .map(|c| {
                let finish = ch.finish[c].map(finish_reason);
                match self.meta.endpoint {
                    Endpoint::Chat => json!({
                        "index": c,
                        "message": {"role": "assistant", "content": ch.text[c], "refusal": null},
                        "logprobs": if self.logprobs {
                            json!(ChatLogprobs { content: ch.chat_logprobs[c].clone() })
                        } else {
                            Value::Null
                        },
                        "finish_reason": finish,
                    }),
                    Endpoint::Completions => json!({
                        "index": c,
                        "text": ch.text[c],
                        "logprobs": if self.logprobs {
                            json!(ch.legacy_logprobs[c])
                        } else {
                            Value::Null
                        },
                        "finish_reason": finish,
                    }),
                }
            })
            .collect();
        json!({
            "id": self.meta.id,
            "object": self.meta.object(false),
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
            "usage": ch.usage_out(),
        })
    }
}

/// Turns events into SSE payloads (the text after `data: `).
pub struct ChunkWriter {
    pub meta: Meta,
    pub choices: Choices,
    pub logprobs: bool,
    pub include_usage: bool,
    /// Set once the stream has ended (after `[DONE]` or an error).
    pub ended: bool,
}

impl ChunkWriter {
    fn chunk(&self, choice: Value) -> String {
        let mut v = json!({
            "id": self.meta.id,
            "object": self.meta.object(true),
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [choice],
        });
        if self.include_usage {
            // OpenAI sends `usage: null` on every chunk but the last when usage is asked for.
            v["usage"] = Value::Null;
        }
        v.to_string()
    }

    fn choice(&self, c: usize, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        match self.meta.endpoint {
            Endpoint::Chat => {
                let delta = if text.is_empty() && finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": c, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Endpoint::Completions => {
                json!({"index": c, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }

    /// The chunks sent before any token: chat's `role` delta, completions' echoed prompt.
    /// From here on the choices' text is not kept: every piece is sent as it comes.
    pub fn start(&mut self) -> Vec<String> {
        let out = (0..self.choices.len())
            .filter_map(|c| match self.meta.endpoint {
                Endpoint::Chat => Some(self.chunk(json!({
                    "index": c,
                    "delta": {"role": "assistant", "content": "", "refusal": null},
                    "logprobs": null,
                    "finish_reason": null,
                }))),
                Endpoint::Completions if !self.choices.text[c].is_empty() => {
                    Some(self.chunk(self.choice(c, &self.choices.text[c], Value::Null, None)))
                }
                Endpoint::Completions => None,
            })
            .collect();
        self.choices.forget_text();
        out
    }

    pub fn event(&mut self, cx: Ctx, c: usize, ev: Event) -> Vec<String> {
        if self.ended || c >= self.choices.len() {
            return Vec::new();
        }
        let mut out = Vec::new();
        match ev {
            Event::Token { id, text, logprobs } => {
                let (chat, legacy) = self.choices.token(cx, c, id, &text, logprobs.as_ref());
                let lp = match (self.logprobs, self.meta.endpoint) {
                    (false, _) => Value::Null,
                    (true, Endpoint::Chat) => {
                        json!({"content": chat.into_iter().collect::<Vec<_>>()})
                    }
                    (true, Endpoint::Completions) => json!(legacy.unwrap_or_default()),
                };
                // Tokens whose text is held back (half a character, a possible stop string)
                // produce a chunk only when they carry log-probabilities.
                if !text.is_empty() || !lp.is_null() {
                    out.push(self.chunk(self.choice(c, &text, lp, None)));
                }
            }
            Event::Done {
                text,
                finish,
                usage,
            } => {
                self.choices.done(cx.metrics, c, &text, finish, usage);
                if !text.is_empty() {
                    out.push(self.chunk(self.choice(c, &text, Value::Null, None)));
                }
                out.push(self.chunk(self.choice(c, "", Value::Null, Some(finish_reason(finish)))));
                if self.choices.all_done() {
                    if self.include_usage {
                        out.push(
                            json!({
                                "id": self.meta.id,
                                "object": self.meta.object(true),
                                "created": self.meta.created,
                                "model": self.meta.model,
                                "choices": [],
                                "usage": self.choices.usage_out(),
                            })
                            .to_string(),
                        );
                    }
                    out.push("[DONE]".into());
                    self.ended = true;
                }
            }
            Event::Error(msg) => {
                cx.metrics.generation_errors.fetch_add(1, Ordering::Relaxed);
                out.push(self.error(&ApiError::internal(format!("generation failed: {msg}"))));
            }
        }
        out
    }

    /// An error in the middle of a stream: OpenAI's clients raise on a chunk with `error`.
    pub fn error(&mut self, e: &ApiError) -> String {
        self.ended = true;
        json!({"error": e.object()}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::testing::tokenizer;

    fn cx(metrics: &Metrics) -> Ctx<'_> {
        Ctx {
            tok: tokenizer(),
            metrics,
        }
    }

    fn meta(endpoint: Endpoint) -> Meta {
        Meta {
            id: "x-1".into(),
            created: 7,
            model: "m".into(),
            endpoint,
        }
    }

    fn usage(p: usize, c: usize) -> Usage {
        Usage {
            prompt_tokens: p,
            cached_tokens: 1,
            completion_tokens: c,
            time_to_first_token: Duration::from_millis(5),
            total_time: Duration::from_millis(9),
        }
    }

    fn tok_ev(id: u32, text: &str) -> Event {
        Event::Token {
            id,
            text: text.into(),
            logprobs: Some(TokenLogprobs {
                logprob: -0.5,
                top: vec![(id, -0.5), (id + 1, -1.5)],
            }),
        }
    }

    fn parse(payloads: &[String]) -> Vec<Value> {
        payloads
            .iter()
            .map(|p| serde_json::from_str(p).unwrap_or(Value::String(p.clone())))
            .collect()
    }

    #[test]
    fn chat_stream_framing() {
        let metrics = Metrics::default();
        let mut w = ChunkWriter {
            meta: meta(Endpoint::Chat),
            choices: Choices::new(2, vec![4], &[]),
            logprobs: true,
            include_usage: true,
            ended: false,
        };
        let mut all = w.start();
        all.extend(w.event(cx(&metrics), 0, tok_ev(100, "He")));
        all.extend(w.event(cx(&metrics), 1, tok_ev(101, "")));
        all.extend(w.event(cx(&metrics), 1, tok_ev(102, "llo")));
        all.extend(w.event(
            cx(&metrics),
            0,
            Event::Done {
                text: "!".into(),
                finish: FinishReason::Length,
                usage: usage(4, 1),
            },
        ));
        assert!(!w.ended);
        all.extend(w.event(
            cx(&metrics),
            1,
            Event::Done {
                text: String::new(),
                finish: FinishReason::StopString,
                usage: usage(4, 2),
            },
        ));
        assert!(w.ended);
        assert!(w.event(cx(&metrics), 0, tok_ev(5, "late")).is_empty());
        // A stream does not keep what it has sent.
        assert!(w.choices.text.iter().all(String::is_empty));
        let v = parse(&all);
        assert_eq!(v.last().unwrap(), "[DONE]");
        for c in &v[..v.len() - 1] {
            assert_eq!(c["id"], "x-1");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["created"], 7);
            assert_eq!(c["model"], "m");
        }
        assert_eq!(v[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(v[1]["choices"][0]["index"], 1);
        assert_eq!(v[0]["usage"], Value::Null);
        assert_eq!(v[2]["choices"][0]["delta"]["content"], "He");
        let lp = &v[2]["choices"][0]["logprobs"]["content"][0];
        assert_eq!(lp["logprob"], -0.5);
        assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), 2);
        let bytes: Vec<u8> = lp["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            lp["token"].as_str().unwrap()
        );
        // The held-back token still reports its logprobs, with empty content.
        assert_eq!(v[3]["choices"][0]["delta"]["content"], "");
        assert_eq!(v[4]["choices"][0]["delta"]["content"], "llo");
        assert_eq!(v[5]["choices"][0]["delta"]["content"], "!");
        assert_eq!(v[6]["choices"][0]["finish_reason"], "length");
        assert_eq!(v[6]["choices"][0]["delta"], json!({}));
        assert_eq!(v[7]["choices"][0]["finish_reason"], "stop");
        assert_eq!(v[8]["choices"], json!([]));
        assert_eq!(
            v[8]["usage"],
            json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 1}})
        );
        assert_eq!(v.len(), 10);
    }

    #[test]
    fn completion_stream_echo_and_error() {
        let metrics = Metrics::default();
        let mut w = ChunkWriter {
            meta: meta(Endpoint::Completions),
            choices: Choices::new(1, vec![3], &["In the".into()]),
            logprobs: false,
            include_usage: false,
            ended: false,
        };
        let mut all = w.start();
        all.extend(w.event(cx(&metrics), 0, tok_ev(1, " beginning")));
        all.extend(w.event(cx(&metrics), 0, Event::Error("boom".into())));
        assert!(w.ended);
        assert!(w.choices.text.iter().all(String::is_empty));
        let v = parse(&all);
        assert_eq!(v[0]["choices"][0]["text"], "In the");
        assert_eq!(v[0]["object"], "text_completion");
        assert!(v[0].get("usage").is_none());
        assert_eq!(v[1]["choices"][0]["text"], " beginning");
        assert_eq!(v[1]["choices"][0]["logprobs"], Value::Null);
        assert_eq!(v[2]["error"]["type"], "server_error");
        assert!(v[2]["error"]["message"].as_str().unwrap().contains("boom"));
        assert_eq!(v.len(), 3);
    }

    /// `text_offset` follows the tokens even while their text is held back (here: a possible
    /// stop string, released with the next token) and across a character split in bytes.
    #[test]
    fn text_offsets_count_each_tokens_own_text() {
        let metrics = Metrics::default();
        let tok = tokenizer();
        let ids = tok.encode(" his people, and 世", false).unwrap();
        let texts: Vec<String> = ids
            .iter()
            .map(|&id| String::from_utf8_lossy(&tok.token_bytes(id).unwrap()).into_owned())
            .collect();
        let whole = tok.decode(&ids, false).unwrap();
        for streaming in [false, true] {
            let mut col = Collector {
                meta: meta(Endpoint::Completions),
                choices: Choices::new(1, vec![2], &["ab".into()]),
                logprobs: true,
            };
            let mut w = ChunkWriter {
                meta: meta(Endpoint::Completions),
                choices: Choices::new(1, vec![2], &["ab".into()]),
                logprobs: true,
                include_usage: false,
                ended: false,
            };
            let mut streamed = Vec::new();
            // The first two tokens are held back; the third releases them; the rest stays
            // held (no Done here).
            for (k, &id) in ids.iter().enumerate() {
                let text = match k {
                    0 | 1 => String::new(),
                    2 => texts[..3].concat(),
                    _ => String::new(),
                };
                let ev = tok_ev(id, &text);
                if streaming {
                    streamed.extend(w.event(cx(&metrics), 0, ev));
                } else {
                    col.event(cx(&metrics), 0, ev).unwrap();
                }
            }
            let offsets: Vec<usize> = if streaming {
                parse(&streamed)
                    .iter()
                    .map(|v| {
                        v["choices"][0]["logprobs"]["text_offset"][0]
                            .as_u64()
                            .unwrap() as usize
                    })
                    .collect()
            } else {
                col.body()["choices"][0]["logprobs"]["text_offset"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_u64().unwrap() as usize)
                    .collect()
            };
            let full: Vec<char> = format!("ab{whole}").chars().collect();
            assert_eq!(offsets.len(), ids.len());
            let mut at = 2;
            for (k, t) in texts.iter().enumerate() {
                if t.contains('\u{FFFD}') {
                    // A byte of 世: every part sits on the character.
                    assert_eq!(full[offsets[k]], '世', "{offsets:?}");
                    continue;
                }
                assert_eq!(offsets[k], at, "token {k} {t:?}: {offsets:?}");
                let here: String = full[at..at + t.chars().count()].iter().collect();
                assert_eq!(&here, t);
                at += t.chars().count();
            }
        }
    }

    #[test]
    fn collected_bodies() {
        let metrics = Metrics::default();
        let mut col = Collector {
            meta: meta(Endpoint::Completions),
            choices: Choices::new(1, vec![2, 5], &["ab".into(), "c".into()]),
            logprobs: true,
        };
        col.event(cx(&metrics), 0, tok_ev(10, "xy")).unwrap();
        col.event(cx(&metrics), 0, tok_ev(11, "z")).unwrap();
        col.event(
            cx(&metrics),
            0,
            Event::Done {
                text: String::new(),
                finish: FinishReason::Eos,
                usage: usage(2, 2),
            },
        )
        .unwrap();
        col.event(
            cx(&metrics),
            1,
            Event::Done {
                text: "q".into(),
                finish: FinishReason::ContextFull,
                usage: usage(5, 1),
            },
        )
        .unwrap();
        assert!(col.choices.all_done());
        let b = col.body();
        assert_eq!(b["object"], "text_completion");
        assert_eq!(b["choices"][0]["text"], "abxyz");
        assert_eq!(b["choices"][0]["finish_reason"], "stop");
        assert_eq!(b["choices"][1]["text"], "cq");
        assert_eq!(b["choices"][1]["finish_reason"], "length");
        let lp = &b["choices"][0]["logprobs"];
        let len10 = tokenizer().token_bytes(10).unwrap().len();
        assert_eq!(lp["text_offset"], json!([2, 2 + len10]));
        assert_eq!(lp["token_logprobs"], json!([-0.5, -0.5]));
        assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
        assert_eq!(b["usage"]["prompt_tokens"], 7);
        assert_eq!(b["usage"]["completion_tokens"], 3);
        assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        assert!(col
            .event(cx(&metrics), 0, Event::Error("x".into()))
            .is_err());
        assert!(col
            .event(cx(&metrics), 9, Event::Error("x".into()))
            .is_err());

        let mut chat = Collector {
            meta: meta(Endpoint::Chat),
            choices: Choices::new(1, vec![2], &[]),
            logprobs: false,
        };
        chat.event(cx(&metrics), 0, tok_ev(10, "hi")).unwrap();
        let b = chat.body();
        assert_eq!(b["object"], "chat.completion");
        assert_eq!(b["choices"][0]["message"]["content"], "hi");
        assert_eq!(b["choices"][0]["message"]["role"], "assistant");
        assert_eq!(b["choices"][0]["logprobs"], Value::Null);
    }
}
