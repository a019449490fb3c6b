//! The one request/response pair every front end uses with the [`Scheduler`](crate::Scheduler):
//! a [`Request`] goes in, a stream of [`Event`]s comes out of its [`RequestHandle`].

use crate::engine::{FinishReason, GenerateOptions};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most alternatives a request may ask for per token (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generation: a tokenized prompt and how to continue it.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    /// `Some(n)`: report each generated token's log-probability and the `n` most likely
    /// alternatives (0..=[`MAX_TOP_LOGPROBS`]), from the model's raw distribution (before
    /// penalties, temperature and truncation, as OpenAI reports them).
    pub logprobs: Option<usize>,
}

impl Request {
    pub fn new(prompt: Vec<u32>, options: GenerateOptions) -> Request {
        Request {
            prompt,
            options,
            logprobs: None,
        }
    }
}

/// Log-probabilities of one generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// Natural-log probability of the chosen token.
    pub logprob: f32,
    /// The most likely tokens, best first, as (id, logprob).
    pub top: Vec<(u32, f32)>,
}

/// Token counts and timings of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV entries came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// From submission to the first generated token (queueing included).
    pub time_to_first_token: Duration,
    /// From submission to the end.
    pub total_time: Duration,
}

/// What a request produces, in order: any number of `Token`s, then exactly one `Done` or
/// `Error`.
#[derive(Clone, Debug)]
pub enum Event {
    /// One generated token. `text` is what became final with it: empty while a UTF-8 character
    /// or a possible stop string is still incomplete, longer when held-back text is released.
    Token {
        id: u32,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    /// The end. `text` is held-back text released at the end (usually empty).
    Done {
        text: String,
        finish: FinishReason,
        usage: Usage,
    },
    /// The request failed; the scheduler and other requests go on.
    Error(String),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error("the prompt has {prompt} tokens but a sequence holds at most {ctx}")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// The receiving end of one request. Dropping it cancels the request: the scheduler notices
/// before its next step and frees the request's KV blocks.
pub struct RequestHandle {
    pub(crate) id: u64,
    pub(crate) rx: futures::channel::mpsc::UnboundedReceiver<Event>,
}

impl RequestHandle {
    /// The scheduler's id of this request (unique per scheduler).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Blocks until the next event; `None` after `Done`/`Error`.
    pub fn next_blocking(&mut self) -> Option<Event> {
        futures::executor::block_on(futures::StreamExt::next(&mut self.rx))
    }
}

impl futures::Stream for RequestHandle {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}
