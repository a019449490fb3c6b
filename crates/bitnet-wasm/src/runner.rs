//! The Rust side of the bindings, free of JS types so the host tests exercise it: a model loaded
//! from bytes, prompts tokenized like `bitnet run`, generation with a callback per text piece.

use bitnet_inference::{Engine, EngineOptions, FinishReason, GenerateOptions, SamplingParams};

/// What [`Runner::generate`] should do; the defaults are `bitnet run`'s, greedy aside.
#[derive(Clone, Debug)]
pub struct Request {
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// `None`: a seed from the host's random source (the engine's own fallback reads the clock
    /// and the process id, which wasm32-unknown-unknown does not have).
    pub seed: Option<u64>,
    /// Prepend BOS as the model's tokenizer says (`bitnet run` without `--no-bos`).
    pub add_bos: bool,
    /// Context size; `None` = the model's maximum.
    pub ctx: Option<usize>,
}

impl Default for Request {
    fn default() -> Self {
        let s = SamplingParams::default();
        Request {
            max_tokens: bitnet_inference::settings::DEFAULT_MAX_TOKENS,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            seed: None,
            add_bos: true,
            ctx: None,
        }
    }
}

/// What came out of one generation.
#[derive(Clone, Debug)]
pub struct Output {
    pub text: String,
    pub tokens: Vec<u32>,
    /// `eos`, `stop`, `length`, `context_full` or `cancelled`.
    pub finish: &'static str,
    pub prompt_tokens: usize,
    pub prompt_ms: f64,
    pub generation_ms: f64,
}

/// A loaded model. One thread (the pool runs loops inline on wasm32), weights left in the
/// buffer they came in (the huge-page arena needs anonymous mappings, which wasm32 lacks, and
/// would double the memory).
pub struct Runner {
    engine: Engine,
}

impl Runner {
    /// Loads a GGUF model held in memory; `name` only labels errors.
    pub fn load(bytes: Vec<u8>, name: &str) -> Result<Runner, String> {
        let opts = EngineOptions {
            threads: Some(1),
            mmap: true,
            ..EngineOptions::default()
        };
        let engine = Engine::load_bytes(bytes, name, &opts).map_err(|e| e.to_string())?;
        Ok(Runner { engine })
    }

    /// The kernel ISA in use (`simd128` in the browser build, else the host's).
    pub fn isa() -> &'static str {
        bitnet_kernels::detected_isa().name()
    }

    pub fn vocab_size(&self) -> usize {
        self.engine.config().vocab_size
    }

    pub fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, String> {
        let tok = self.engine.tokenizer();
        tok.encode(text, add_bos && tok.add_bos_default())
            .map_err(|e| e.to_string())
    }

    /// Generates a continuation of `prompt`; `on_text` gets each piece of text as it becomes
    /// final and returns `false` to stop.
    pub fn generate(
        &self,
        prompt: &str,
        req: &Request,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Output, String> {
        let ids = self.tokenize(prompt, req.add_bos)?;
        let seed = match req.seed {
            Some(s) => s,
            None => random_seed()?,
        };
        let opts = GenerateOptions {
            max_tokens: req.max_tokens,
            sampling: SamplingParams {
                temperature: req.temperature,
                top_k: req.top_k,
                top_p: req.top_p,
                seed: Some(seed),
                ..SamplingParams::default()
            },
            stop: Vec::new(),
            ignore_eos: false,
        };
        let mut session = self.engine.session(req.ctx).map_err(|e| e.to_string())?;
        let g = session
            .generate(&ids, &opts, on_text)
            .map_err(|e| e.to_string())?;
        Ok(Output {
            text: g.text,
            tokens: g.tokens,
            finish: match g.finish {
                FinishReason::Eos => "eos",
                FinishReason::StopString => "stop",
                FinishReason::Length => "length",
                FinishReason::ContextFull => "context_full",
                FinishReason::Cancelled => "cancelled",
            },
            prompt_tokens: g.timings.prompt_tokens,
            prompt_ms: g.timings.prompt_time.as_secs_f64() * 1e3,
            generation_ms: g.timings.generation_time.as_secs_f64() * 1e3,
        })
    }
}

#[cfg(target_arch = "wasm32")]
fn random_seed() -> Result<u64, String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| format!("no random source for the seed: {e}"))?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(not(target_arch = "wasm32"))]
fn random_seed() -> Result<u64, String> {
    // The host build is only used by tests; any varying seed will do.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    Ok(t.as_nanos() as u64)
}
