//! `bitnet.Model`: a loaded model with its tokenizer, and `bitnet.Completion`.
//!
//! Every method that computes releases the GIL (`py.detach`) for the whole engine call, so other
//! Python threads run meanwhile, and calls from several threads compute side by side.

use crate::convert::{messages, prompt_ids, token_ids, Prompt};
use crate::core::Core;
use crate::errors::{self, raise, Kind};
use crate::options::{self, count};
use crate::stream::TextStream;
use bitnet_inference::{
    perplexity, Engine, EngineError, EngineOptions, FinishReason, Generation, KvType, Logits,
};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

/// The result of `Model.complete` (and `TextStream.completion`).
#[pyclass(frozen, get_all, module = "bitnet")]
#[derive(Clone)]
pub struct Completion {
    /// The generated text (without the prompt, and without a stop string that ended it).
    text: String,
    /// The generated token ids.
    tokens: Vec<u32>,
    /// "eos", "stop", "length", "context_full" or "cancelled".
    finish_reason: &'static str,
    /// Prompt tokens computed (fewer than the prompt when its start was still in the cache).
    prompt_tokens: usize,
    /// Seconds spent on the prompt.
    prompt_seconds: f64,
    /// Seconds spent generating, from the first sampled token to the last.
    generation_seconds: f64,
}

impl From<Generation> for Completion {
    fn from(g: Generation) -> Completion {
        Completion {
            finish_reason: match g.finish {
                FinishReason::Eos => "eos",
                FinishReason::StopString => "stop",
                FinishReason::Length => "length",
                FinishReason::ContextFull => "context_full",
                FinishReason::Cancelled => "cancelled",
            },
            prompt_tokens: g.timings.prompt_tokens,
            prompt_seconds: g.timings.prompt_time.as_secs_f64(),
            generation_seconds: g.timings.generation_time.as_secs_f64(),
            text: g.text,
            tokens: g.tokens,
        }
    }
}

#[pymethods]
impl Completion {
    fn __repr__(&self) -> String {
        format!(
            "Completion(text={:?}, tokens=<{} ids>, finish_reason={:?})",
            self.text,
            self.tokens.len(),
            self.finish_reason
        )
    }
}

/// A BitNet b1.58 model loaded by the bitnet-rs engine.
///
/// `path` is a GGUF file or a Hugging Face checkpoint folder. `threads`: worker threads (default:
/// the physical cores). `ctx`: the context in tokens (default: the model's trained context).
/// `kv_type`: "f16" (default) or "f32" KV cache. `mmap`: keep the weights in the file mapping
/// instead of copying them into huge pages. Raises `ModelError` if the model cannot be loaded.
#[pyclass(frozen, module = "bitnet")]
pub struct Model {
    core: Arc<Core>,
    name: String,
}

fn engine_options(
    threads: Option<&Bound<'_, PyAny>>,
    kv_type: &str,
    mmap: bool,
) -> PyResult<EngineOptions> {
    let threads = match threads {
        Some(t) => match count("threads", t)? {
            0 => return Err(raise(Kind::Input, "threads must be >= 1")),
            n => Some(n),
        },
        None => None,
    };
    let kv_type = KvType::parse(kv_type).ok_or_else(|| {
        raise(
            Kind::Input,
            format!("kv_type must be \"f16\" or \"f32\", got {kv_type:?}"),
        )
    })?;
    Ok(EngineOptions {
        threads,
        kv_type,
        mmap,
        ..Default::default()
    })
}

fn ctx_arg(ctx: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    ctx.map(|c| count("ctx", c)).transpose()
}

impl Model {
    fn from_engine(
        py: Python<'_>,
        name: String,
        load: impl FnOnce() -> Result<Engine, EngineError> + Send,
        ctx: Option<usize>,
    ) -> PyResult<Model> {
        let core = py
            .detach(|| Core::new(load()?, ctx))
            .map_err(errors::engine)?;
        Ok(Model {
            core: Arc::new(core),
            name,
        })
    }

    fn encode(&self, py: Python<'_>, prompt: Prompt, add_bos: Option<bool>) -> PyResult<Vec<u32>> {
        match prompt {
            Prompt::Ids(ids) => Ok(ids),
            Prompt::Text(text) => {
                let tok = self.core.engine.tokenizer();
                let bos = add_bos.unwrap_or_else(|| tok.add_bos_default());
                py.detach(|| tok.encode(&text, bos))
                    .map_err(errors::tokenizer)
            }
        }
    }

    /// The prompt ids and options of the generating methods.
    fn prepare(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(Vec<u32>, bitnet_inference::GenerateOptions)> {
        let o = options::parse(options, true)?;
        let ids = self.encode(py, prompt_ids(prompt)?, o.add_bos)?;
        Ok((ids, o.generate))
    }

    fn prepare_chat(
        &self,
        py: Python<'_>,
        msgs: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(Vec<u32>, bitnet_inference::GenerateOptions)> {
        let o = options::parse(options, false)?;
        let msgs = messages(msgs)?;
        let tok = self.core.engine.tokenizer();
        // The rendered template carries its own BOS.
        let ids = py
            .detach(|| tok.encode_chat(&msgs, true))
            .map_err(errors::tokenizer)?;
        Ok((ids, o.generate))
    }

    fn run(
        &self,
        py: Python<'_>,
        ids: Vec<u32>,
        opts: bitnet_inference::GenerateOptions,
    ) -> PyResult<Completion> {
        let core = &self.core;
        py.detach(|| core.generate(&ids, &opts, |_| true))
            .map(Completion::from)
            .map_err(errors::engine)
    }
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, threads=None, ctx=None, *, kv_type="f16", mmap=false))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        threads: Option<&Bound<'_, PyAny>>,
        ctx: Option<&Bound<'_, PyAny>>,
        kv_type: &str,
        mmap: bool,
    ) -> PyResult<Model> {
        let opts = engine_options(threads, kv_type, mmap)?;
        let ctx = ctx_arg(ctx)?;
        let name = path.display().to_string();
        Model::from_engine(py, name, || Engine::load(&path, &opts), ctx)
    }

    /// A model from the bytes of a GGUF file held in memory (same keywords as `Model`).
    #[staticmethod]
    #[pyo3(signature = (data, name="memory.gguf", threads=None, ctx=None, *, kv_type="f16"))]
    fn from_bytes(
        py: Python<'_>,
        data: Cow<'_, [u8]>,
        name: &str,
        threads: Option<&Bound<'_, PyAny>>,
        ctx: Option<&Bound<'_, PyAny>>,
        kv_type: &str,
    ) -> PyResult<Model> {
        let opts = engine_options(threads, kv_type, false)?;
        let ctx = ctx_arg(ctx)?;
        let bytes = data.into_owned();
        let label = name.to_owned();
        Model::from_engine(
            py,
            name.to_owned(),
            || Engine::load_bytes(bytes, &label, &opts),
            ctx,
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "bitnet.Model({:?}, threads={}, ctx={})",
            self.name,
            self.core.engine.threads(),
            self.core.ctx
        )
    }

    /// Size of the vocabulary (the length of a row of logits).
    #[getter]
    fn vocab_size(&self) -> usize {
        self.core.engine.config().vocab_size
    }

    /// Context size in tokens: the longest prompt plus generation.
    #[getter]
    fn ctx(&self) -> usize {
        self.core.ctx
    }

    /// Worker threads of the engine.
    #[getter]
    fn threads(&self) -> usize {
        self.core.engine.threads()
    }

    /// Id of the beginning-of-text token, if the tokenizer has one.
    #[getter]
    fn bos_id(&self) -> Option<u32> {
        self.core.engine.tokenizer().bos_id()
    }

    /// Ids that end a generation (end of text, end of turn).
    #[getter]
    fn eos_ids(&self) -> Vec<u32> {
        self.core.engine.tokenizer().stop_ids().to_vec()
    }

    /// The model's chat template (Jinja source), if it has one.
    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.core
            .engine
            .tokenizer()
            .chat_template()
            .map(str::to_owned)
    }

    /// Token ids of `text`; `add_bos` defaults to the tokenizer's setting.
    #[pyo3(signature = (text, add_bos=None))]
    fn tokenize(&self, py: Python<'_>, text: String, add_bos: Option<bool>) -> PyResult<Vec<u32>> {
        self.encode(py, Prompt::Text(text), add_bos)
    }

    /// The text of `tokens`; special tokens are kept unless `skip_special`.
    #[pyo3(signature = (tokens, skip_special=false))]
    fn detokenize(
        &self,
        py: Python<'_>,
        tokens: &Bound<'_, PyAny>,
        skip_special: bool,
    ) -> PyResult<String> {
        let ids = token_ids(tokens)?;
        let tok = self.core.engine.tokenizer();
        py.detach(|| tok.decode(&ids, skip_special))
            .map_err(errors::tokenizer)
    }

    /// Logits of `tokens` evaluated from an empty context, as a float32 NumPy array of shape
    /// (len(tokens), vocab_size): row i scores the token after tokens[:i+1]. With
    /// `last_only=True`, only the last row, shape (vocab_size,).
    #[pyo3(signature = (tokens, *, last_only=false))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        tokens: &Bound<'py, PyAny>,
        last_only: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ids = token_ids(tokens)?;
        if ids.is_empty() {
            return Err(errors::engine(EngineError::EmptyPrompt));
        }
        let want = if last_only { Logits::Last } else { Logits::All };
        let core = &self.core;
        let v = py
            .detach(|| {
                core.with_session(|s| {
                    s.reset();
                    s.eval(&ids, want)
                })
            })
            .map_err(errors::engine)?;
        let arr = PyArray1::from_vec(py, v);
        Ok(if last_only {
            arr.into_any()
        } else {
            arr.reshape([ids.len(), self.vocab_size()])?.into_any()
        })
    }

    /// Generates a continuation of `prompt` (a str, or a sequence of token ids) and returns its
    /// text. Keywords (all optional; None keeps the default): max_tokens (128), temperature
    /// (0.8; 0 = greedy), top_k (40; 0 = off), top_p (0.95), min_p (0.05), repeat_penalty
    /// (1.0), repeat_last_n (64), presence_penalty (0), frequency_penalty (0), seed (random),
    /// stop (a str or a list of them; not included in the text), ignore_eos (False), add_bos
    /// (text prompts: the tokenizer's default).
    #[pyo3(signature = (prompt, **options))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let (ids, opts) = self.prepare(py, prompt, options)?;
        Ok(self.run(py, ids, opts)?.text)
    }

    /// Like `generate`, returning a `Completion` (text, token ids, finish reason, timings).
    #[pyo3(signature = (prompt, **options))]
    fn complete(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Completion> {
        let (ids, opts) = self.prepare(py, prompt, options)?;
        self.run(py, ids, opts)
    }

    /// Like `generate`, returning an iterator (`TextStream`) over pieces of text as they are
    /// generated; the pieces joined equal `generate`'s text.
    #[pyo3(signature = (prompt, **options))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TextStream> {
        let (ids, opts) = self.prepare(py, prompt, options)?;
        TextStream::start(Arc::clone(&self.core), ids, opts)
    }

    /// The assistant's reply to `messages` (a list of {"role": ..., "content": ...} dicts),
    /// rendered with the model's chat template. Keywords as for `generate` (except add_bos).
    #[pyo3(signature = (messages, **options))]
    fn chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let (ids, opts) = self.prepare_chat(py, messages, options)?;
        Ok(self.run(py, ids, opts)?.text)
    }

    /// Like `chat`, returning an iterator over pieces of the reply (see `stream`).
    #[pyo3(signature = (messages, **options))]
    fn chat_stream(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TextStream> {
        let (ids, opts) = self.prepare_chat(py, messages, options)?;
        TextStream::start(Arc::clone(&self.core), ids, opts)
    }

    /// `messages` rendered with the model's chat template (the text `chat` generates from; it
    /// already holds the BOS token, so tokenize it with add_bos=False).
    #[pyo3(signature = (messages, add_generation_prompt=true))]
    fn apply_chat_template(
        &self,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        let msgs = crate::convert::messages(messages)?;
        self.core
            .engine
            .tokenizer()
            .apply_chat_template(&msgs, add_generation_prompt)
            .map_err(errors::tokenizer)
    }

    /// Perplexity of `text`: each line (with its newline) is tokenized alone, lines are packed
    /// into chunks of BOS + at most `chunk` tokens, and every token after a chunk's BOS is
    /// scored (how the shared KJV model's reference measures it). Returns exp(mean loss).
    #[pyo3(signature = (text, *, chunk=256))]
    fn perplexity(&self, py: Python<'_>, text: String, chunk: i64) -> PyResult<f64> {
        let chunk = usize::try_from(chunk)
            .ok()
            .filter(|&c| c >= 1)
            .ok_or_else(|| raise(Kind::Input, format!("chunk must be >= 1, got {chunk}")))?;
        let engine = &self.core.engine;
        let p = py
            .detach(|| perplexity::line_packed(engine, &text, chunk))
            .map_err(errors::engine)?;
        if p.tokens == 0 {
            return Err(raise(Kind::Input, "the text has no tokens to score"));
        }
        Ok(p.perplexity())
    }
}
