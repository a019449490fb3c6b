//! The engine types the server speaks, re-exported so handlers and tests name one place.

pub use bitnet_inference::{
    Event, FinishReason, GenerateOptions, Request, SamplingParams, SchedulerStats, SubmitError,
    TokenLogprobs, Usage, MAX_TOP_LOGPROBS,
};
