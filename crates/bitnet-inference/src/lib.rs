//! The bitnet-rs engine.
//!
//! ```no_run
//! use bitnet_inference::{Engine, EngineOptions, GenerateOptions, SamplingParams};
//! let engine = Engine::load("model.gguf".as_ref(), &EngineOptions::default())?;
//! let mut session = engine.session(Some(1024))?;
//! let prompt = engine.tokenizer().encode("In the beginning", true)?;
//! let opts = GenerateOptions { max_tokens: 32, sampling: SamplingParams::greedy(), ..Default::default() };
//! let out = session.generate(&prompt, &opts, |text| { print!("{text}"); true })?;
//! eprintln!("{:.1} tokens/s", out.timings.generation_tps());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod blocks;
mod cpu;
mod device;
mod engine;
mod error;
pub mod memory;
pub mod perplexity;
pub mod profile;
mod request;
mod sampler;
mod scheduler;
pub mod settings;
mod softmax;
mod stop;

pub use bitnet_backend::{
    argmax, run_layers, Backend, BackendError, Context, Device, KvType, Logits, SeqChunk, KV_BLOCK,
};
pub use cpu::{CpuBackend, CpuContext, KvCache};
pub use device::check_device;
pub use engine::{
    generate_stream, Engine, EngineOptions, FinishReason, GenerateOptions, Generation, Session,
    StreamEvent, Timings, MAX_KV_POSITIONS, MAX_THREADS,
};
pub use error::{EngineError, Result};
pub use request::{
    Event, Request, RequestHandle, SubmitError, TokenLogprobs, Usage, MAX_TOP_LOGPROBS,
};
pub use sampler::{Rng, Sampler, SamplingParams};
pub use scheduler::{Scheduler, SchedulerOptions, SchedulerStats};
pub use settings::Settings;
pub use stop::{StopMatcher, StopResult};
