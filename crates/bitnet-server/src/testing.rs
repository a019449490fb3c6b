//! A scripted [`Backend`] for the failure paths the real scheduler does not produce on demand.

use crate::api::{Event, FinishReason, Request, SchedulerStats, SubmitError, TokenLogprobs, Usage};
use crate::backend::{Backend, EventStream};
use bitnet_inference::{Engine, EngineOptions};
use bitnet_tokenizers::Tokenizer;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/bitnet-b1.58-kjv-i2_s.gguf"
);

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let opts = EngineOptions {
            threads: Some(1),
            ..Default::default()
        };
        Engine::load(MODEL.as_ref(), &opts).expect("load the default model")
    })
}

pub fn tokenizer() -> &'static Tokenizer {
    engine().tokenizer()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Script {
    /// Echo the prompt's tokens back, up to max_tokens, then Length.
    Echo,
    /// One token, then an engine error.
    FailAfterOne,
    /// Tokens never come (a request stuck in the queue).
    Hang,
    /// Refuse with a full queue.
    Full,
    /// Tokens without end, whatever max_tokens says (a response bigger than any socket buffer).
    Flood,
}

pub struct Mock {
    pub script: Mutex<Script>,
    /// Requests submitted and not yet dropped by the server.
    pub live: Arc<AtomicUsize>,
    pub submitted: Mutex<Vec<Request>>,
}

impl Mock {
    pub fn new(script: Script) -> Arc<Mock> {
        Arc::new(Mock {
            script: Mutex::new(script),
            live: Arc::new(AtomicUsize::new(0)),
            submitted: Mutex::new(Vec::new()),
        })
    }
}

struct Live(Arc<AtomicUsize>);
impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend for Mock {
    fn submit(&self, req: Request) -> Result<EventStream, SubmitError> {
        let script = *self.script.lock().unwrap();
        if script == Script::Full {
            return Err(SubmitError::QueueFull(4));
        }
        if req.prompt.len() > self.ctx_size() {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt.len(),
                ctx: self.ctx_size(),
            });
        }
        let vocab = tokenizer().vocab_size();
        if let Some(&id) = req.prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(SubmitError::BadToken { id, vocab });
        }
        self.submitted.lock().unwrap().push(req.clone());
        self.live.fetch_add(1, Ordering::SeqCst);
        let live = Live(self.live.clone());
        let tok = tokenizer();
        let lp = req.logprobs.map(|k| TokenLogprobs {
            logprob: -0.25,
            top: (0..k as u32).map(|i| (i + 10, -1.0 - i as f32)).collect(),
        });
        let mut events: Vec<Event> = req
            .prompt
            .iter()
            .cycle()
            .take(req.options.max_tokens)
            .map(|&id| Event::Token {
                id,
                text: tok.decode(&[id], true).unwrap_or_default(),
                logprobs: lp.clone(),
            })
            .collect();
        let n = events.len();
        events.push(Event::Done {
            text: String::new(),
            finish: FinishReason::Length,
            usage: Usage {
                prompt_tokens: req.prompt.len(),
                cached_tokens: 0,
                completion_tokens: n,
                time_to_first_token: Duration::from_millis(1),
                total_time: Duration::from_millis(2),
            },
        });
        let s: EventStream = match script {
            Script::Echo | Script::Full => futures::stream::iter(events).boxed(),
            Script::FailAfterOne => futures::stream::iter(
                events
                    .into_iter()
                    .take(1)
                    .chain([Event::Error("kaboom".into())]),
            )
            .boxed(),
            Script::Hang => futures::stream::pending().boxed(),
            Script::Flood => {
                // 256 tokens a millisecond, as an engine would hand them over: in bursts, with
                // the task yielding between them.
                // A token with text (the prompt's first is BOS, which prints nothing).
                let token = events
                    .into_iter()
                    .find(|e| matches!(e, Event::Token { text, .. } if !text.is_empty()));
                let burst: Vec<Event> = token.into_iter().cycle().take(256).collect();
                futures::stream::unfold(burst, |burst| async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Some((futures::stream::iter(burst.clone()), burst))
                })
                .flatten()
                .boxed()
            }
        };
        // `live` goes with the stream: dropping the stream is the cancellation.
        Ok(s.map(move |e| {
            let _ = &live;
            e
        })
        .boxed())
    }

    fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            running: self.live.load(Ordering::SeqCst),
            ..Default::default()
        }
    }

    fn tokenizer(&self) -> &Tokenizer {
        tokenizer()
    }

    fn ctx_size(&self) -> usize {
        64
    }

    fn shutdown(&self) {}
}
