//! The engine types the server speaks. TEMPORARY: a mirror of `bitnet_inference`'s
//! request/scheduler API until it lands on main; replaced by re-exports then.

pub use bitnet_inference::{FinishReason, GenerateOptions, SamplingParams};
use std::time::Duration;

pub const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub logprobs: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub time_to_first_token: Duration,
    pub total_time: Duration,
}

#[derive(Clone, Debug)]
pub enum Event {
    Token {
        id: u32,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    Done {
        text: String,
        finish: FinishReason,
        usage: Usage,
    },
    Error(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError {
    QueueFull(usize),
    PromptTooLong { prompt: usize, ctx: usize },
    EmptyPrompt,
    BadToken { id: u32, vocab: usize },
    Invalid(String),
    ShuttingDown,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::QueueFull(n) => {
                write!(f, "the queue is full ({n} requests waiting); retry later")
            }
            SubmitError::PromptTooLong { prompt, ctx } => write!(
                f,
                "the prompt has {prompt} tokens but a sequence holds at most {ctx}"
            ),
            SubmitError::EmptyPrompt => write!(f, "empty prompt: at least one token is needed"),
            SubmitError::BadToken { id, vocab } => {
                write!(f, "token id {id} is outside the vocabulary of {vocab}")
            }
            SubmitError::Invalid(s) => write!(f, "invalid request: {s}"),
            SubmitError::ShuttingDown => write!(f, "the engine is shutting down"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SchedulerStats {
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub kv_block_tokens: usize,
    pub prefix_cache_hit_tokens: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub requests_finished: u64,
}
