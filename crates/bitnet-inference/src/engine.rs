//! The public engine API: load a model once ([`Engine`]), open any number of [`Session`]s (each
//! with its own KV cache), and generate with a callback or as an async stream.

use crate::cpu::KvCache;
use crate::error::{EngineError, Result};
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::{StopMatcher, StopResult};
use bitnet_backend::sampling::TopK;
use bitnet_backend::{Backend, BackendError, Context, Device, KvType, Logits, SeqChunk};
use bitnet_models::{LoadedModel, ModelConfig, Placement};
use bitnet_tokenizers::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
#[cfg(not(target_family = "wasm"))]
use std::time::Instant;
// std's Instant panics on wasm32-unknown-unknown (no clock without the host); web-time's reads
// `performance.now()` there.
#[cfg(target_family = "wasm")]
use web_time::Instant;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Where the forward pass runs. A device that cannot be used is an error at load, never a
    /// silent fallback to the CPU.
    pub device: Device,
    /// Worker threads of the CPU backend; `None` = physical cores.
    pub threads: Option<usize>,
    /// Folder with a tokenizer.json that replaces the model's own tokenizer.
    pub tokenizer: Option<PathBuf>,
    /// Prompt tokens per forward batch.
    pub batch_size: usize,
    /// Element type of every session's KV cache.
    pub kv_type: KvType,
    /// Keep the weights in the file mapping where their layout allows (faster start, pages
    /// shared with other processes) instead of copying the streamed matrices into a huge-page
    /// arena (faster decoding; `bitnet_models::Placement`).
    pub mmap: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: Device::Cpu,
            threads: None,
            tokenizer: None,
            batch_size: crate::settings::DEFAULT_BATCH_SIZE,
            kv_type: KvType::default(),
            mmap: false,
        }
    }
}

impl EngineOptions {
    /// Where [`Engine::load`] puts the weights.
    pub fn placement(&self) -> Placement {
        if self.mmap {
            Placement::Mapped
        } else {
            Placement::Arena
        }
    }
}

struct Inner {
    model: Arc<LoadedModel>,
    backend: Arc<dyn Backend>,
    threads: usize,
    batch_size: usize,
    kv_type: KvType,
}

/// A loaded model and its worker threads. Cheap to clone; share it between sessions and threads.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// More worker threads than this is a typo, not a machine: each is a spinning OS thread, and
/// the pool allocates per-thread state (4 billion of them asked 512 GiB and aborted).
pub const MAX_THREADS: usize = 1024;

/// `threads` (at least 1) if it is at most [`MAX_THREADS`].
fn checked_threads(threads: usize) -> Result<usize> {
    if threads > MAX_THREADS {
        return Err(EngineError::Settings(format!(
            "{threads} worker threads: at most {MAX_THREADS}"
        )));
    }
    Ok(threads.max(1))
}

impl Engine {
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Engine> {
        // Before the load: a bad count should not cost one.
        opts.threads.map(checked_threads).transpose()?;
        let model = bitnet_models::load_with(path, opts.tokenizer.as_deref(), opts.placement())?;
        Engine::from_model(model, opts)
    }

    /// An engine over a GGUF model held in memory (see `bitnet_models::load_gguf_bytes`).
    pub fn load_bytes(bytes: Vec<u8>, name: &str, opts: &EngineOptions) -> Result<Engine> {
        opts.threads.map(checked_threads).transpose()?;
        let model = bitnet_models::load_gguf_bytes(bytes, name, opts.placement())?;
        Engine::from_model(model, opts)
    }

    /// An engine over an already loaded model, whose weights stay where they were placed (load
    /// with `bitnet_models::load_with(.., Placement::Arena)` for the fastest decoding).
    pub fn from_model(model: LoadedModel, opts: &EngineOptions) -> Result<Engine> {
        // `bitnet_models` loaders check this too; a model assembled by hand gets it here.
        bitnet_models::vocab_fit::check_vocab_fits(
            model.tokenizer.vocab_size(),
            model.weights.config.vocab_size,
        )?;
        let threads = checked_threads(
            opts.threads
                .unwrap_or_else(|| crate::settings::physical_cores().min(MAX_THREADS)),
        )?;
        let model = Arc::new(model);
        let backend = crate::device::open(opts.device, &model, threads)?;
        let batch_size = opts.batch_size.max(1);
        Ok(Engine {
            inner: Arc::new(Inner {
                model,
                backend,
                threads,
                batch_size,
                kv_type: opts.kv_type,
            }),
        })
    }

    /// The same model (shared, not reloaded) with a different number of worker threads. Only
    /// the CPU backend has them: another device's backend is shared as it is.
    pub fn with_threads(&self, threads: usize) -> Result<Engine> {
        let inner = &self.inner;
        let threads = checked_threads(threads)?;
        let backend = match inner.backend.device() {
            Device::Cpu => crate::device::open(Device::Cpu, &inner.model, threads)?,
            _ => Arc::clone(&inner.backend),
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                model: Arc::clone(&inner.model),
                backend,
                threads,
                batch_size: inner.batch_size,
                kv_type: inner.kv_type,
            }),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.inner.model.weights.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.model.tokenizer
    }

    /// Ids that can be sampled: the tokenizer's, which may be fewer than the embedding's rows
    /// (`config().vocab_size`) when those are padded. Rows past it stand for no text.
    pub fn sampled_vocab(&self) -> usize {
        self.tokenizer().vocab_size().min(self.config().vocab_size)
    }

    /// Tokenizes a prompt that must fit `ctx` tokens, refusing unread a text that cannot
    /// (see [`Tokenizer::encode_within`]); the length check against `ctx` follows at
    /// [`Session::generate`] or [`Scheduler::submit`](crate::Scheduler::submit).
    pub fn encode_prompt(&self, text: &str, add_bos: bool, ctx: usize) -> Result<Vec<u32>> {
        Ok(self.tokenizer().encode_within(text, add_bos, ctx)?)
    }

    pub fn model(&self) -> &LoadedModel {
        &self.inner.model
    }

    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Where the forward pass runs, and on what (`bench` prints it).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    pub fn device(&self) -> Device {
        self.inner.backend.device()
    }

    /// A forward-pass context with a KV cache of `blocks` blocks, on this engine's device.
    pub(crate) fn new_context(
        &self,
        blocks: usize,
        max_batch_tokens: usize,
    ) -> Result<Box<dyn Context>> {
        Ok(self
            .inner
            .backend
            .new_context(blocks, self.kv_type(), max_batch_tokens)?)
    }

    /// Element type of the KV caches this engine's sessions and schedulers allocate.
    pub fn kv_type(&self) -> KvType {
        self.inner.kv_type
    }

    pub(crate) fn batch_size(&self) -> usize {
        self.inner.batch_size
    }

    /// Checks that a KV cache of `positions` positions fits in memory before it is allocated:
    /// under every limit that can end the process (`crate::memory`), once all its blocks are
    /// written. Pages are only touched as blocks fill, so an oversized cache would otherwise
    /// pass here and abort (or be OOM-killed) later. Another device's cache is not in host
    /// memory: there only the position limit applies, and the device's own allocation error
    /// speaks for its memory.
    pub(crate) fn check_kv_size(&self, positions: usize) -> Result<()> {
        let c = self.config();
        let blocks = KvCache::blocks_for(positions);
        let bytes = self.inner.backend.kv_bytes(blocks, self.kv_type());
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let exceeded = if positions > MAX_KV_POSITIONS {
            Some(format!("the limit of {MAX_KV_POSITIONS} positions"))
        } else if self.device() == Device::Cpu {
            crate::memory::MemoryRoom::current().exceeded_by(bytes as u64)
        } else {
            None
        };
        match exceeded {
            None => Ok(()),
            Some(limit) => Err(EngineError::Settings(format!(
                "a KV cache of {positions} positions ({:?}) needs {:.2} GiB, more than {limit}; use a smaller --ctx-size{} (the model was trained on {} positions)",
                self.kv_type(),
                gib(bytes),
                if self.kv_type() == KvType::F32 { " or --kv-type f16" } else { "" },
                c.max_position_embeddings,
            ))),
        }
    }

    /// A new session whose KV cache holds `ctx` tokens (default: the model's trained context).
    pub fn session(&self, ctx: Option<usize>) -> Result<Session> {
        let c = self.config();
        let ctx = ctx.unwrap_or(c.max_position_embeddings);
        if ctx == 0 {
            return Err(EngineError::Settings(
                "context size must be at least 1".into(),
            ));
        }
        // Refuse caches that cannot possibly be allocated instead of aborting on OOM.
        self.check_kv_size(ctx)?;
        let blocks = KvCache::blocks_for(ctx);
        Ok(Session {
            engine: self.clone(),
            context: self.new_context(blocks, self.batch_size())?,
            table: (0..blocks as u32).collect(),
            ctx,
            tokens: Vec::new(),
        })
    }
}

/// Positions one KV cache may hold at most, whatever the memory: far beyond any trained
/// context, and small enough that block ids fit `u32` and sizes cannot overflow.
pub const MAX_KV_POSITIONS: usize = 1 << 24;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; the string itself is not returned.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: crate::settings::DEFAULT_MAX_TOKENS,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence / end-of-turn token.
    Eos,
    /// One of the stop strings.
    StopString,
    /// `max_tokens` reached.
    Length,
    /// The KV cache is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    pub generation_time: Duration,
}

impl Timings {
    pub fn prompt_tps(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_time)
    }
    pub fn generation_tps(&self) -> f64 {
        rate(self.generated_tokens, self.generation_time)
    }
}

/// `rows` after `out`: moved when `out` is empty (a decode step's one row of logits: 513 KB
/// for a 128k vocabulary, not copied again).
fn append(out: &mut Vec<f32>, mut rows: Vec<f32>) {
    if out.is_empty() {
        *out = rows;
    } else {
        out.append(&mut rows);
    }
}

fn rate(n: usize, t: Duration) -> f64 {
    if t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub timings: Timings,
}

/// One conversation's state: the KV cache and the tokens it holds.
pub struct Session {
    engine: Engine,
    /// A private cache whose blocks are all this session's, in order (`table`).
    context: Box<dyn Context>,
    table: Vec<u32>,
    ctx: usize,
    tokens: Vec<u32>,
}

impl Session {
    pub fn ctx_size(&self) -> usize {
        self.ctx
    }

    /// Tokens currently in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn kv_cache_bytes(&self) -> usize {
        let blocks = self.context.kv_blocks();
        self.engine
            .backend()
            .kv_bytes(blocks, self.engine.kv_type())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Forgets everything after the first `n` tokens (the cache entries beyond are overwritten later).
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    /// Appends `tokens` to the context and returns logits (`vocab` values per requested
    /// position). The prompt is processed in batches, matrix-matrix.
    pub fn eval(&mut self, tokens: &[u32], want: Logits) -> Result<Vec<f32>> {
        Ok(self.eval_inner(tokens, want, Pick::Row)?.0)
    }

    /// [`Self::eval`]; with `want: Last` and a `pick` other than `Row` the last chunk's pass ends
    /// in what the backend picks for the sampler (the argmax or the top-k candidates), and only
    /// that comes back.
    fn eval_inner(
        &mut self,
        tokens: &[u32],
        want: Logits,
        pick: Pick<'_>,
    ) -> Result<(Vec<f32>, Option<Next>)> {
        let vocab = self.engine.config().vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(EngineError::BadToken { id, vocab });
        }
        let ctx = self.ctx;
        if self.tokens.len() + tokens.len() > ctx {
            if self.tokens.is_empty() {
                return Err(EngineError::PromptTooLong {
                    prompt: tokens.len(),
                    ctx,
                });
            }
            return Err(EngineError::ContextFull { ctx });
        }
        let chunks: Vec<&[u32]> = tokens.chunks(self.engine.batch_size()).collect();
        let mut out = Vec::new();
        let mut picked = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let chunk_want = match want {
                Logits::All => Logits::All,
                Logits::Last if last => Logits::Last,
                _ => Logits::None,
            };
            let start = self.tokens.len();
            let seq = SeqChunk {
                tokens: chunk,
                start,
                blocks: &self.table,
                want: chunk_want,
            };
            let none = || BackendError::Device("the pass returned no row".into());
            match pick {
                _ if chunk_want != Logits::Last => append(&mut out, self.context.forward(&[seq])?),
                Pick::Row => append(&mut out, self.context.forward(&[seq])?),
                Pick::Greedy(vocab) => {
                    let ids = self.context.forward_greedy(&[seq], vocab)?;
                    picked = Some(Next::Id(ids.first().copied().ok_or_else(none)?));
                }
                Pick::TopK(vocab, req) => {
                    let rows =
                        self.context
                            .forward_top_k(&[seq], vocab, std::slice::from_ref(req))?;
                    let cand = rows.into_iter().next().ok_or_else(none)?;
                    picked = Some(Next::Candidates(cand));
                }
            }
            self.tokens.extend_from_slice(chunk);
        }
        Ok((out, picked))
    }

    /// What the sampler needs after `tokens`: the logits (cut to `sampled_vocab`), or what
    /// the backend can pick for it (the argmax for plain greedy, the top-k candidates for a
    /// sampler that keeps only those).
    fn eval_next(
        &mut self,
        tokens: &[u32],
        sampled_vocab: usize,
        sampler: &Sampler,
        gen_start: usize,
    ) -> Result<Next> {
        let greedy = sampler.params().is_plain_greedy();
        let request = if greedy {
            None
        } else {
            // Penalties look at the context as it will be when the pick is made.
            let history = [&self.tokens[..], tokens].concat();
            sampler.top_k_request(&history, gen_start, sampled_vocab)
        };
        let pick = match &request {
            Some(req) => Pick::TopK(sampled_vocab, req),
            None if greedy => Pick::Greedy(sampled_vocab),
            None => Pick::Row,
        };
        let (mut logits, picked) = self.eval_inner(tokens, Logits::Last, pick)?;
        Ok(picked.unwrap_or_else(|| {
            logits.truncate(sampled_vocab);
            Next::Logits(logits)
        }))
    }

    /// Generates a continuation of `prompt`. Any prefix of `prompt` already in the cache (a
    /// previous chat turn) is reused. `on_text` receives text as it becomes final and returns
    /// `false` to stop.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        opts.sampling.validate().map_err(EngineError::Settings)?;
        let ctx = self.ctx;
        if prompt.len() > ctx {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                ctx,
            });
        }
        let engine = self.engine.clone();
        let tokenizer = engine.tokenizer();
        // Reuse the cached prefix, but always evaluate at least one token to get logits.
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        self.truncate(common.min(prompt.len() - 1));
        let t0 = Instant::now();
        let new_prompt = &prompt[self.tokens.len()..];
        let sampled_vocab = engine.sampled_vocab();
        // Only ids come back from the device when nothing but the argmax is needed.
        let mut sampler = Sampler::new(opts.sampling.clone());
        let gen_start = prompt.len();
        let mut step = self.eval_next(new_prompt, sampled_vocab, &sampler, gen_start)?;
        let mut timings = Timings {
            prompt_tokens: new_prompt.len(),
            prompt_time: t0.elapsed(),
            ..Default::default()
        };

        let mut stops = StopMatcher::new(&opts.stop);
        let mut decoder = tokenizer.stream_decoder();
        let stop_ids = tokenizer.stop_ids().to_vec();
        let mut text = String::new();
        let mut generated = Vec::new();
        let t1 = Instant::now();
        let finish = loop {
            if generated.len() >= opts.max_tokens {
                break FinishReason::Length;
            }
            let next = match &mut step {
                Next::Id(id) => *id,
                Next::Logits(logits) => sampler.sample(logits, &self.tokens, gen_start),
                Next::Candidates(cand) => sampler.sample_candidates(cand),
            };
            if !opts.ignore_eos && stop_ids.contains(&next) {
                break FinishReason::Eos;
            }
            generated.push(next);
            let piece = decoder.push(next)?;
            let mut stop_hit = false;
            let emit = match stops.push(&piece) {
                StopResult::Continue(s) => s,
                StopResult::Stop(s) => {
                    stop_hit = true;
                    s
                }
            };
            if !emit.is_empty() {
                text.push_str(&emit);
                if !on_text(&emit) {
                    break FinishReason::Cancelled;
                }
            }
            if stop_hit {
                break FinishReason::StopString;
            }
            if self.tokens.len() >= ctx {
                break FinishReason::ContextFull;
            }
            if generated.len() >= opts.max_tokens {
                break FinishReason::Length;
            }
            step = self.eval_next(&[next], sampled_vocab, &sampler, gen_start)?;
        };
        if finish != FinishReason::StopString {
            let mut rest = decoder.finish()?;
            rest.insert_str(0, &stops.finish());
            if !rest.is_empty() {
                text.push_str(&rest);
                on_text(&rest);
            }
        }
        timings.generated_tokens = generated.len();
        timings.generation_time = t1.elapsed();
        Ok(Generation {
            text,
            tokens: generated,
            finish,
            timings,
        })
    }
}

/// What a pass over new tokens gives the sampling loop.
enum Next {
    Logits(Vec<f32>),
    /// The argmax, picked by the backend.
    Id(u32),
    /// The sampler's top-k candidates, selected by the backend.
    Candidates(Vec<(u32, f32)>),
}

/// What [`Session::eval_inner`] asks the backend for after the last token.
#[derive(Clone, Copy)]
enum Pick<'a> {
    /// The whole row of logits.
    Row,
    /// The argmax among the first `vocab` logits.
    Greedy(usize),
    /// The top-k candidates among the first `vocab` logits.
    TopK(usize, &'a TopK),
}

/// An item of [`generate_stream`].
#[derive(Clone, Debug)]
pub enum StreamEvent {
    Text(String),
    Done(Generation),
}

/// Generates on a dedicated thread (the work is CPU-bound and must not block an async runtime)
/// and yields text as an async `Stream`. Dropping the stream cancels generation.
pub fn generate_stream(
    mut session: Session,
    prompt: Vec<u32>,
    opts: GenerateOptions,
) -> impl futures::Stream<Item = Result<StreamEvent>> {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    std::thread::spawn(move || {
        let tx2 = tx.clone();
        let result = session.generate(&prompt, &opts, |t| {
            tx2.unbounded_send(Ok(StreamEvent::Text(t.to_string())))
                .is_ok()
        });
        let _ = tx.unbounded_send(result.map(StreamEvent::Done));
    });
    rx
}
