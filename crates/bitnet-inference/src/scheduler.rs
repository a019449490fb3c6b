//! Continuous batching: many requests share one forward pass per step.
//!
//! Decoding is bound by memory bandwidth: every step streams all weights whether it computes one
//! token or sixty-four. A [`Scheduler`] runs the active sequences together (one matmul over all
//! their new tokens, attention per sequence), so N users cost about one weight read per step
//! instead of N. Its loop runs on its own OS thread (never on an async runtime), and between
//! steps it:
//! - admits waiting requests while sequences and KV blocks are free, reusing cached prefix
//!   blocks ([`crate::blocks`]);
//! - gives every decoding sequence its one token, then fills the rest of the step's token budget
//!   with prompt chunks, so a long prompt is processed a chunk per step alongside everyone
//!   else's decoding instead of stalling them;
//! - turns logits into events (sampling, stop strings, streaming detokenization per request);
//! - retires finished and cancelled requests (a dropped [`RequestHandle`]) and frees their blocks.
//!
//! When the KV blocks run out mid-generation, the most recently admitted sequence is preempted:
//! its blocks are released (full ones stay in the prefix cache) and it is recomputed later from
//! its tokens, keeping its sampler state, so its output does not change.

use crate::blocks::{BlockKey, BlockManager};
use crate::cpu::KvCache;
use crate::engine::{Engine, FinishReason, GenerateOptions};
use crate::error::{EngineError, Result};
use crate::request::{
    Event, Request, RequestHandle, SubmitError, TokenLogprobs, Usage, MAX_TOP_LOGPROBS,
};
use crate::sampler::Sampler;
use crate::stop::{StopMatcher, StopResult};
use bitnet_backend::sampling::TopK;
use bitnet_backend::{Context, Logits, SeqChunk, KV_BLOCK};
use bitnet_tokenizers::{StreamDecoder, Tokenizer};
use futures::channel::mpsc::{unbounded, UnboundedSender};
use std::collections::VecDeque;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Sequences decoded together at most (llama-server's `--parallel`).
    pub max_sequences: usize,
    /// KV positions of one sequence (prompt and generated tokens; the last sampled token needs
    /// none, so a sequence ends with at most `ctx_size + 1` tokens, as a `Session`); `None`:
    /// the model's trained context.
    pub ctx_size: Option<usize>,
    /// KV positions shared by all sequences (rounded up to whole blocks); `None`:
    /// `max_sequences * ctx_size`, capped at 64Ki positions but never below `ctx_size`.
    pub kv_tokens: Option<usize>,
    /// Tokens per forward step: all decoding sequences' tokens plus prompt chunks. Raised to
    /// `max_sequences` if below, so every running sequence advances at every step (decoding
    /// ones by their token, and at least one prompt by a chunk).
    pub max_batch_tokens: usize,
    /// Requests that may wait for a free sequence; more are refused ([`SubmitError::QueueFull`]).
    pub max_queue: usize,
    /// Reuse the KV blocks of prompt prefixes computed before.
    pub prefix_cache: bool,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            max_sequences: 16,
            ctx_size: None,
            kv_tokens: None,
            max_batch_tokens: crate::settings::DEFAULT_BATCH_SIZE,
            max_queue: 256,
            prefix_cache: true,
        }
    }
}

impl SchedulerOptions {
    /// KV positions with which `sequences` sequences of up to `ctx` positions each all run
    /// together: each one's context in whole blocks, plus the free block that admission keeps
    /// for every running sequence before it admits another (with `sequences * ctx` only about
    /// half of them run at a time once contexts fill their blocks). `None` on overflow.
    pub fn kv_tokens_for(sequences: usize, ctx: usize) -> Option<usize> {
        ctx.div_ceil(KV_BLOCK)
            .checked_add(1)?
            .checked_mul(KV_BLOCK)?
            .checked_mul(sequences)
    }
}

/// A snapshot of the scheduler's state and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Requests not yet running (queued, or preempted and waiting to resume).
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    /// Positions per KV block.
    pub kv_block_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub prefix_cache_hit_tokens: u64,
    /// Prompt tokens submitted.
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub requests_finished: u64,
    /// Forward passes run.
    pub steps: u64,
    /// Sequences whose blocks were taken back to make room (recomputed later).
    pub preemptions: u64,
}

struct Pending {
    req: Request,
    tx: UnboundedSender<Event>,
    submitted: Instant,
}

struct Queue {
    pending: VecDeque<Pending>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Mutex<SchedulerStats>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent across a panic (plain counters and queues), so a
    // poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs many requests through one model with continuous batching. Share it (`Arc`) between
/// threads and tasks; [`Scheduler::submit`] never blocks.
pub struct Scheduler {
    shared: Arc<Shared>,
    engine: Engine,
    ctx: usize,
    max_queue: usize,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Scheduler {
    /// Allocates the shared KV cache (pages are touched only as blocks are written) and starts
    /// the scheduling thread.
    pub fn start(engine: Engine, opts: SchedulerOptions) -> Result<Scheduler> {
        let ctx = opts
            .ctx_size
            .unwrap_or(engine.config().max_position_embeddings);
        let setting = |m: String| Err(EngineError::Settings(m));
        if ctx == 0 {
            return setting("context size must be at least 1".into());
        }
        if opts.max_sequences == 0 || opts.max_batch_tokens == 0 || opts.max_queue == 0 {
            return setting(
                "parallel sequences, batch tokens and queue length must be at least 1".into(),
            );
        }
        let kv_tokens = opts
            .kv_tokens
            .unwrap_or_else(|| opts.max_sequences.saturating_mul(ctx).min(1 << 16))
            .max(ctx);
        engine.check_kv_size(kv_tokens)?;
        let blocks = KvCache::blocks_for(kv_tokens);
        let max_batch_tokens = opts.max_batch_tokens.max(opts.max_sequences);
        let context = engine.new_context(blocks, max_batch_tokens)?;
        let stats = SchedulerStats {
            kv_blocks_total: blocks,
            kv_block_tokens: KV_BLOCK,
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            stats: Mutex::new(stats),
            next_id: AtomicU64::new(1),
        });
        let worker = Worker {
            engine: engine.clone(),
            shared: Arc::clone(&shared),
            context,
            blocks: BlockManager::new(blocks, opts.prefix_cache),
            running: Vec::new(),
            preempted: VecDeque::new(),
            max_sequences: opts.max_sequences,
            max_batch_tokens,
            ctx,
            stats,
        };
        let thread = std::thread::Builder::new()
            .name("bitnet-scheduler".into())
            .spawn(move || worker.run())
            .map_err(|e| EngineError::ThreadPool(format!("scheduler thread: {e}")))?;
        Ok(Scheduler {
            shared,
            engine,
            ctx,
            max_queue: opts.max_queue,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Longest sequence (prompt and generated tokens).
    pub fn ctx_size(&self) -> usize {
        self.ctx
    }

    /// Queues a request and returns the handle its events arrive on.
    pub fn submit(&self, req: Request) -> std::result::Result<RequestHandle, SubmitError> {
        let n = req.prompt.len();
        if n == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if n > self.ctx {
            return Err(SubmitError::PromptTooLong {
                prompt: n,
                ctx: self.ctx,
            });
        }
        let vocab = self.engine.config().vocab_size;
        if let Some(&id) = req.prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(SubmitError::BadToken { id, vocab });
        }
        req.options
            .sampling
            .validate()
            .map_err(SubmitError::Invalid)?;
        if let Some(k) = req.logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(SubmitError::Invalid(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {k}"
            )));
        }
        let (tx, rx) = unbounded();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = lock(&self.shared.queue);
            if q.shutdown {
                return Err(SubmitError::ShuttingDown);
            }
            if q.pending.len() >= self.max_queue {
                return Err(SubmitError::QueueFull(q.pending.len()));
            }
            q.pending.push_back(Pending {
                req,
                tx,
                submitted: Instant::now(),
            });
        }
        self.shared.wake.notify_one();
        Ok(RequestHandle { id, rx })
    }

    pub fn stats(&self) -> SchedulerStats {
        let mut s = *lock(&self.shared.stats);
        s.waiting += lock(&self.shared.queue).pending.len();
        s
    }

    /// Refuses new requests and ends the running ones with [`Event::Error`]; returns once the
    /// scheduling thread has stopped. Front ends that shut down gracefully wait for their
    /// requests first.
    pub fn shutdown(&self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.wake.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Lets a request's stream decoder hold the tokenizer through the engine it belongs to.
struct TokenizerOf(Engine);

impl Deref for TokenizerOf {
    type Target = Tokenizer;
    fn deref(&self) -> &Tokenizer {
        self.0.tokenizer()
    }
}

/// One request in flight: its tokens, KV blocks and generation state.
struct Sequence {
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Leading tokens whose K/V are in the cache.
    computed: usize,
    /// KV blocks in position order.
    blocks: Vec<u32>,
    /// Leading full blocks registered in the prefix cache, and the last one's key.
    registered: usize,
    last_key: Option<BlockKey>,
    opts: GenerateOptions,
    logprobs: Option<usize>,
    sampler: Sampler,
    stops: StopMatcher,
    decoder: StreamDecoder<TokenizerOf>,
    tx: UnboundedSender<Event>,
    submitted: Instant,
    first_token: Option<Duration>,
    cached_tokens: usize,
    /// Set once the prompt's prefix lookup has been counted (not again after a preemption).
    admitted_once: bool,
}

impl Sequence {
    fn new(p: Pending, engine: &Engine) -> Sequence {
        let Pending { req, tx, submitted } = p;
        Sequence {
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            computed: 0,
            blocks: Vec::new(),
            registered: 0,
            last_key: None,
            sampler: Sampler::new(req.options.sampling.clone()),
            stops: StopMatcher::new(&req.options.stop),
            decoder: StreamDecoder::new(TokenizerOf(engine.clone()), true),
            opts: req.options,
            logprobs: req.logprobs,
            tx,
            submitted,
            first_token: None,
            cached_tokens: 0,
            admitted_once: false,
        }
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn cancelled(&self) -> bool {
        self.tx.is_closed()
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached_tokens,
            completion_tokens: self.generated(),
            time_to_first_token: self.first_token.unwrap_or_default(),
            total_time: self.submitted.elapsed(),
        }
    }
}

/// What the scheduling thread owns.
struct Worker {
    engine: Engine,
    shared: Arc<Shared>,
    /// The shared paged KV cache and the scratch of the forward passes, on the engine's device.
    context: Box<dyn Context>,
    blocks: BlockManager,
    /// In admission order (preemption takes from the back).
    running: Vec<Sequence>,
    /// Preempted sequences, resumed before new requests are admitted.
    preempted: VecDeque<Sequence>,
    max_sequences: usize,
    max_batch_tokens: usize,
    ctx: usize,
    stats: SchedulerStats,
}

/// How a sequence leaves the running set.
enum Exit {
    Finished(FinishReason),
    Failed(String),
    Cancelled,
}

impl Worker {
    fn run(mut self) {
        let mut reason = SubmitError::ShuttingDown.to_string();
        loop {
            if !self.wait_for_work() {
                break;
            }
            let round = catch_unwind(AssertUnwindSafe(|| {
                self.drop_cancelled();
                self.admit();
                self.step()
            }));
            match round {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => {
                    // A panic or a device error inside the forward pass: fail this step's
                    // requests, keep serving the others.
                    for seq in std::mem::take(&mut self.running) {
                        self.retire(seq, Exit::Failed(msg.clone()));
                    }
                }
                Err(p) => {
                    // The bookkeeping itself panicked, so its state can no longer be trusted:
                    // stop taking work and end every request with the error below instead of
                    // leaving them waiting on a thread that is gone.
                    reason = panic_message(&p);
                    lock(&self.shared.queue).shutdown = true;
                    break;
                }
            }
            self.publish_stats();
        }
        // Only the event senders are touched here (no block bookkeeping), so this cannot panic
        // again on state a panic left behind.
        let running = std::mem::take(&mut self.running);
        let preempted = std::mem::take(&mut self.preempted);
        for seq in running.into_iter().chain(preempted) {
            let _ = seq.tx.unbounded_send(Event::Error(reason.clone()));
        }
        for p in lock(&self.shared.queue).pending.drain(..) {
            let _ = p.tx.unbounded_send(Event::Error(reason.clone()));
        }
        self.stats.running = 0;
        *lock(&self.shared.stats) = self.stats;
    }

    /// Blocks while there is nothing to do; `false` on shutdown.
    fn wait_for_work(&self) -> bool {
        let mut q = lock(&self.shared.queue);
        loop {
            if q.shutdown {
                return false;
            }
            if !self.running.is_empty() || !self.preempted.is_empty() || !q.pending.is_empty() {
                return true;
            }
            q = self
                .shared
                .wake
                .wait(q)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|s| s.cancelled());
        self.running = kept;
        for s in gone {
            self.retire(s, Exit::Cancelled);
        }
        let (gone, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.preempted)
            .into_iter()
            .partition(|s| s.cancelled());
        self.preempted = kept;
        for s in gone {
            self.retire(s, Exit::Cancelled);
        }
        lock(&self.shared.queue)
            .pending
            .retain(|p| !p.tx.is_closed());
    }

    /// Moves preempted, then queued, requests into the running set while there is room.
    fn admit(&mut self) {
        while self.running.len() < self.max_sequences {
            let mut seq = match self.preempted.pop_front() {
                Some(s) => s,
                None => match lock(&self.shared.queue).pending.pop_front() {
                    Some(p) => Sequence::new(p, &self.engine),
                    None => return,
                },
            };
            if self.attach_prefix(&mut seq) {
                self.running.push(seq);
            } else {
                // Not enough blocks yet: it waits at the head of the line.
                self.preempted.push_front(seq);
                return;
            }
        }
    }

    /// Takes the cached blocks of `seq`'s longest cached prefix (always leaving at least one
    /// token to compute, for its logits) and checks that the rest of its tokens fit beside the
    /// running sequences, which keep one free block each to grow into. On `false` nothing is
    /// held.
    fn attach_prefix(&mut self, seq: &mut Sequence) -> bool {
        let usable = (seq.tokens.len() - 1) / KV_BLOCK * KV_BLOCK;
        for key in self.blocks.chain(&seq.tokens[..usable]) {
            match self.blocks.lookup(&key) {
                Some(b) => {
                    seq.blocks.push(b);
                    seq.last_key = Some(key);
                }
                None => break,
            }
        }
        seq.registered = seq.blocks.len();
        seq.computed = seq.blocks.len() * KV_BLOCK;
        let need = KvCache::blocks_for(seq.tokens.len()) - seq.blocks.len();
        // Blocks already promised to admitted prompts that are still being processed (in chunks)
        // count as taken, or several prompts admitted together would all pass against the same
        // free blocks and then preempt each other.
        let promised: usize = self
            .running
            .iter()
            .map(|s| KvCache::blocks_for(s.tokens.len()).saturating_sub(s.blocks.len()))
            .sum();
        if need + promised + self.running.len() > self.blocks.available() {
            self.blocks.release_all(&mut seq.blocks);
            seq.registered = 0;
            seq.computed = 0;
            seq.last_key = None;
            return false;
        }
        if !seq.admitted_once {
            seq.admitted_once = true;
            seq.cached_tokens = seq.computed.min(seq.prompt_len);
            self.stats.prefix_cache_hit_tokens += seq.cached_tokens as u64;
            self.stats.prompt_tokens += seq.prompt_len as u64;
        }
        true
    }

    /// Plans, runs and consumes one forward pass. `Err` if it panicked or the backend failed.
    fn step(&mut self) -> std::result::Result<(), String> {
        let plan = self.plan();
        if plan.is_empty() {
            return Ok(());
        }
        let engine = self.engine.clone();
        let (vocab, stop_ids) = (engine.config().vocab_size, engine.tokenizer().stop_ids());
        // Padded embedding rows past the tokenizer are never sampled nor reported.
        let sampled_vocab = engine.sampled_vocab();
        // When every sequence that samples this step takes the plain argmax and wants no
        // logprobs, the backend picks the ids itself (a GPU then copies back ids, not logits).
        let greedy = plan.iter().all(|&(i, n)| {
            let s = &self.running[i];
            s.computed + n < s.tokens.len()
                || (s.sampler.params().is_plain_greedy() && s.logprobs.is_none())
        });
        // Otherwise, when every sampler can pick from its top-k candidates (and wants no
        // logprobs), the backend selects those (a GPU copies back k candidates, not the row).
        let top_k: Option<Vec<TopK>> = if greedy {
            None
        } else {
            plan.iter()
                .filter(|&&(i, n)| {
                    let s = &self.running[i];
                    s.computed + n == s.tokens.len()
                })
                .map(|&(i, _)| {
                    let s = &self.running[i];
                    if s.logprobs.is_some() {
                        return None;
                    }
                    s.sampler
                        .top_k_request(&s.tokens, s.prompt_len, sampled_vocab)
                })
                .collect()
        };
        let mut out = {
            let chunks: Vec<SeqChunk<'_>> = plan
                .iter()
                .map(|&(i, n)| {
                    let s = &self.running[i];
                    SeqChunk {
                        tokens: &s.tokens[s.computed..s.computed + n],
                        start: s.computed,
                        blocks: &s.blocks,
                        want: if s.computed + n == s.tokens.len() {
                            Logits::Last
                        } else {
                            Logits::None
                        },
                    }
                })
                .collect();
            let context = &mut self.context;
            catch_unwind(AssertUnwindSafe(|| {
                if greedy {
                    context.forward_greedy(&chunks, sampled_vocab).map(Out::Ids)
                } else if let Some(reqs) = &top_k {
                    context
                        .forward_top_k(&chunks, sampled_vocab, reqs)
                        .map(Out::Candidates)
                } else {
                    context.forward(&chunks).map(Out::Logits)
                }
            }))
            .map_err(|p| panic_message(&p))?
            .map_err(|e| format!("forward pass failed: {e}"))?
        };
        self.stats.steps += 1;
        let picks: Vec<Pick<'_>> = match &mut out {
            Out::Logits(l) => l
                .chunks_exact(vocab)
                .map(|r| Pick::Row(&r[..sampled_vocab]))
                .collect(),
            Out::Ids(ids) => ids.iter().map(|&id| Pick::Id(id)).collect(),
            Out::Candidates(c) => c.iter_mut().map(Pick::Candidates).collect(),
        };
        let mut rows = picks.into_iter();
        // The sequences that sample this step, in plan order, with their share of `out` (a
        // short `out` fails the step, and with it every running request, before any samples).
        let mut ready = Vec::new();
        for &(i, n) in &plan {
            let seq = &mut self.running[i];
            seq.computed += n;
            register_full_blocks(&mut self.blocks, seq);
            if seq.computed < seq.tokens.len() {
                continue;
            }
            let Some(row) = rows.next() else {
                return Err("forward pass returned too few logits".into());
            };
            ready.push((i, row));
        }
        let choices = choose_all(&mut self.running, ready, &*self.context);
        let mut exits = Vec::new();
        for (i, choice) in choices {
            let seq = &mut self.running[i];
            let before = seq.tokens.len();
            let ctx = self.ctx;
            let exit = match choice {
                Choice::Token(next, logprobs) => catch_unwind(AssertUnwindSafe(|| {
                    accept(seq, next, logprobs, ctx, stop_ids)
                }))
                .unwrap_or_else(|p| Some(Exit::Failed(panic_message(&p)))),
                Choice::Exit(e) => Some(e),
            };
            self.stats.generated_tokens += (seq.tokens.len() - before) as u64;
            if let Some(e) = exit {
                exits.push((i, e));
            }
        }
        for (i, e) in exits.into_iter().rev() {
            let seq = self.running.remove(i);
            self.retire(seq, e);
        }
        Ok(())
    }

    /// This step's (running index, token count) pairs: one token for every decoding sequence,
    /// then prompt chunks in admission order within the token budget. Allocates the blocks they
    /// write, preempting the newest sequences when blocks run out.
    fn plan(&mut self) -> Vec<(usize, usize)> {
        let mut budget = self.max_batch_tokens;
        let mut plan = Vec::new();
        // Decoding sequences first: they must not wait behind prompts. The budget is at least one
        // token per sequence, so prompts always advance too; the starting point rotates every
        // step so prompts share what is left in turn.
        let n = self.running.len();
        let rot = (self.stats.steps % n.max(1) as u64) as usize;
        let mut order: Vec<usize> = (0..n).map(|i| (i + rot) % n).collect();
        order.sort_by_key(|&i| {
            let s = &self.running[i];
            s.tokens.len() - s.computed > 1
        });
        for i in order {
            if i >= self.running.len() || budget == 0 {
                continue;
            }
            let want = {
                let s = &self.running[i];
                (s.tokens.len() - s.computed).min(budget)
            };
            if !self.reserve_blocks(i, want) {
                // `i` itself was preempted (it was the newest); later indices are gone too.
                continue;
            }
            budget -= want;
            plan.push((i, want));
        }
        // Preemption removes from the back, so every planned index is still valid.
        plan.retain(|&(i, _)| i < self.running.len());
        plan.sort_unstable();
        plan
    }

    /// Makes sure running sequence `i` has blocks for its next `n` positions, preempting the
    /// newest sequences as needed. `false` if `i` itself had to be preempted.
    fn reserve_blocks(&mut self, i: usize, n: usize) -> bool {
        loop {
            let s = &self.running[i];
            let need = KvCache::blocks_for(s.computed + n).saturating_sub(s.blocks.len());
            if need <= self.blocks.available() {
                for _ in 0..need {
                    if let Some(b) = self.blocks.allocate() {
                        self.running[i].blocks.push(b);
                    }
                }
                return true;
            }
            let Some(mut victim) = self.running.pop() else {
                return false;
            };
            let victim_is_i = self.running.len() == i;
            self.stats.preemptions += 1;
            self.blocks.release_all(&mut victim.blocks);
            victim.computed = 0;
            victim.registered = 0;
            victim.last_key = None;
            self.preempted.push_front(victim);
            if victim_is_i {
                return false;
            }
        }
    }

    fn retire(&mut self, mut seq: Sequence, exit: Exit) {
        self.blocks.release_all(&mut seq.blocks);
        match exit {
            Exit::Finished(finish) => {
                self.stats.requests_finished += 1;
                let text = match finish {
                    FinishReason::StopString => String::new(),
                    _ => match seq.decoder.finish() {
                        Ok(rest) => seq.stops.finish() + &rest,
                        Err(e) => {
                            let _ = seq.tx.unbounded_send(Event::Error(e.to_string()));
                            return;
                        }
                    },
                };
                let usage = seq.usage();
                let _ = seq.tx.unbounded_send(Event::Done {
                    text,
                    finish,
                    usage,
                });
            }
            Exit::Failed(msg) => {
                self.stats.requests_finished += 1;
                let _ = seq.tx.unbounded_send(Event::Error(msg));
            }
            Exit::Cancelled => {}
        }
    }

    fn publish_stats(&mut self) {
        let mut s = self.stats;
        s.running = self.running.len();
        s.waiting = self.preempted.len();
        s.kv_blocks_used = self.blocks.in_use();
        *lock(&self.shared.stats) = s;
    }
}

/// What a step's forward pass returned.
enum Out {
    /// `vocab` logits per sequence that samples.
    Logits(Vec<f32>),
    /// The argmax of each of those rows, picked by the backend.
    Ids(Vec<u32>),
    /// The top-k candidates of each of those rows, selected by the backend.
    Candidates(Vec<Vec<(u32, f32)>>),
}

/// One sampling sequence's share of [`Out`].
enum Pick<'a> {
    Row(&'a [f32]),
    Id(u32),
    Candidates(&'a mut Vec<(u32, f32)>),
}

/// Registers the blocks `seq` has completely computed since the last call.
fn register_full_blocks(blocks: &mut BlockManager, seq: &mut Sequence) {
    let full = seq.computed / KV_BLOCK;
    while seq.registered < full {
        let r = seq.registered;
        let key = blocks.next_key(
            seq.last_key.as_ref(),
            &seq.tokens[r * KV_BLOCK..(r + 1) * KV_BLOCK],
        );
        blocks.register(seq.blocks[r], key.clone());
        seq.last_key = Some(key);
        seq.registered += 1;
    }
}

/// A row's log-softmax and its top entries (best first), for a request that asked.
type RowLogprobs = (Vec<f32>, Vec<(u32, f32)>);

/// A sequence being sampled on some thread: its pick going in, its choice coming out.
type SampleTask<'a, 'p> = Mutex<(&'a mut Sequence, Option<Pick<'p>>, Option<Choice>)>;

/// What sampling made of a sequence's share of a step.
enum Choice {
    /// The next token, with its log-softmax row and top entries when the request asked.
    Token(u32, Option<RowLogprobs>),
    /// Done before sampling (its token budget was spent), or its sampler panicked.
    Exit(Exit),
}

/// Each ready sequence's [`choose`], in the order given. Whole rows of logits are sampled on
/// the backend's threads (`Context::parallel_for`): a row cost ~1 ms with a libm `exp` over a
/// 128k vocabulary (16 of them in turn held a decode step of the 16-core host up by 12 ms), and
/// still ~0.1 ms with the vectorized softmax, plus a nucleus's sort with top-p. Each task uses
/// only its own sequence, so every draw is the one a serial loop makes.
fn choose_all(
    running: &mut [Sequence],
    ready: Vec<(usize, Pick<'_>)>,
    context: &dyn Context,
) -> Vec<(usize, Choice)> {
    let rows = ready
        .iter()
        .filter(|(_, p)| matches!(p, Pick::Row(_)))
        .count();
    let mut seqs: Vec<Option<&mut Sequence>> = running.iter_mut().map(Some).collect();
    let tasks: Vec<(usize, SampleTask<'_, '_>)> = ready
        .into_iter()
        .filter_map(|(i, pick)| {
            let seq = seqs.get_mut(i)?.take()?;
            Some((i, Mutex::new((seq, Some(pick), None))))
        })
        .collect();
    let run = |t: usize| {
        let mut task = lock(&tasks[t].1);
        let (seq, pick, out) = &mut *task;
        if let Some(pick) = pick.take() {
            let choice = catch_unwind(AssertUnwindSafe(|| choose(seq, pick)))
                .unwrap_or_else(|p| Choice::Exit(Exit::Failed(panic_message(&p))));
            *out = Some(choice);
        }
    };
    if rows > 1 {
        context.parallel_for(tasks.len(), &run);
    } else {
        (0..tasks.len()).for_each(run);
    }
    tasks
        .into_iter()
        .map(|(i, task)| {
            let (_, _, out) = task.into_inner().unwrap_or_else(PoisonError::into_inner);
            let choice = out.unwrap_or_else(|| {
                Choice::Exit(Exit::Failed(
                    "internal error: a sequence was not sampled".into(),
                ))
            });
            (i, choice)
        })
        .collect()
}

thread_local! {
    /// A row of logits while its sampler edits it (penalties), per thread.
    static SAMPLE_ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Samples `seq`'s next token from `pick` (the logits after its last token, the backend's
/// argmax of them, or its top-k candidates, whichever the sampler takes).
fn choose(seq: &mut Sequence, pick: Pick<'_>) -> Choice {
    if seq.generated() >= seq.opts.max_tokens {
        return Choice::Exit(Exit::Finished(FinishReason::Length));
    }
    match pick {
        Pick::Row(row) => {
            let logprobs = seq.logprobs.map(|k| top_logprobs(row, k));
            // The sampler edits logits in place (penalties); the row is the batch's.
            let next = SAMPLE_ROW.with_borrow_mut(|buf| {
                buf.clear();
                buf.extend_from_slice(row);
                seq.sampler.sample(buf, &seq.tokens, seq.prompt_len)
            });
            Choice::Token(next, logprobs)
        }
        // Only taken for sequences that want no logprobs (`Worker::step`).
        Pick::Id(id) => Choice::Token(id, None),
        Pick::Candidates(c) => Choice::Token(seq.sampler.sample_candidates(c), None),
    }
}

/// Appends `next` to `seq`, streams it, and says whether the sequence is done.
fn accept(
    seq: &mut Sequence,
    next: u32,
    logprobs: Option<RowLogprobs>,
    ctx: usize,
    stop_ids: &[u32],
) -> Option<Exit> {
    if seq.first_token.is_none() {
        seq.first_token = Some(seq.submitted.elapsed());
    }
    if !seq.opts.ignore_eos && stop_ids.contains(&next) {
        return Some(Exit::Finished(FinishReason::Eos));
    }
    seq.tokens.push(next);
    let piece = match seq.decoder.push(next) {
        Ok(p) => p,
        Err(e) => return Some(Exit::Failed(e.to_string())),
    };
    let (text, stop_hit) = match seq.stops.push(&piece) {
        StopResult::Continue(s) => (s, false),
        StopResult::Stop(s) => (s, true),
    };
    let logprobs = logprobs.map(|(lp, top)| TokenLogprobs {
        logprob: lp[next as usize],
        top,
    });
    let event = Event::Token {
        id: next,
        text,
        logprobs,
    };
    if seq.tx.unbounded_send(event).is_err() {
        return Some(Exit::Cancelled);
    }
    if stop_hit {
        Some(Exit::Finished(FinishReason::StopString))
    } else if seq.generated() >= seq.opts.max_tokens {
        Some(Exit::Finished(FinishReason::Length))
    } else if seq.tokens.len() > ctx {
        Some(Exit::Finished(FinishReason::ContextFull))
    } else {
        None
    }
}

/// Log-softmax of `row` and its `k` largest entries (best first, ties by lower id).
fn top_logprobs(row: &[f32], k: usize) -> RowLogprobs {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let lp: Vec<f32> = row.iter().map(|&l| l - lse).collect();
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let k = k.min(idx.len());
    let cmp = |a: &u32, b: &u32| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b));
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_unstable_by(cmp);
    let top = idx.into_iter().map(|i| (i, lp[i as usize])).collect();
    (lp, top)
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOptions;
    use std::path::PathBuf;

    fn engine() -> Engine {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/bitnet-b1.58-kjv-i2_s.gguf");
        let opts = EngineOptions {
            threads: Some(2),
            ..Default::default()
        };
        Engine::load(&path, &opts).expect("the committed default model loads")
    }

    /// Batch invariance: a sequence's logits decoded alone (a `Session`) and inside batches with
    /// 8 other sequences at other positions, some decoding and some in the middle of their
    /// prompts, through a shared paged cache whose blocks are not in position order.
    ///
    /// Everything before the LM head is per token or per sequence and integer where it matters
    /// (int8 activations x ternary weights), so the hidden states are identical; the float head
    /// sums a tile of tokens in another order than one token (four FMA chains for one token, one
    /// per token in a tile), which moves logits by float rounding only: held to 1e-4 (logits
    /// here are of order 10; measured max |diff| is printed).
    #[test]
    fn logits_alone_equal_logits_in_a_batch() {
        let e = engine();
        let tok = e.tokenizer();
        // Long enough that the target's prompt and steps cross KV blocks (32 positions).
        let target = tok
            .encode(
                "In the beginning God created the heaven and the earth. And the earth was \
                 without form, and void; and darkness was upon the face of the deep.",
                true,
            )
            .unwrap();
        let steps = 10;
        assert!(target.len() > KV_BLOCK && target.len() + steps < 2 * KV_BLOCK);
        let others: Vec<Vec<u32>> = [
            "And the earth was without form",
            "Blessed are the meek: for they shall inherit the earth.",
            "The LORD is my shepherd",
            "Jesus wept.",
            "For God so loved the world, that he gave his only begotten Son, that whosoever",
            "Now the serpent was more subtil",
            "Let there be light",
            "In my Father's house are many mansions: if it were not so, I would have told you.",
        ]
        .iter()
        .map(|t| tok.encode(t, true).unwrap())
        .collect();

        // Alone: the prompt, then greedy steps past the first block's end.
        let mut s = e.session(Some(256)).unwrap();
        let mut alone = vec![s.eval(&target, Logits::Last).unwrap()];
        let mut seq = target.clone();
        for _ in 0..steps {
            let next = bitnet_backend::argmax(alone.last().unwrap());
            seq.push(next);
            alone.push(s.eval(&[next], Logits::Last).unwrap());
        }

        // Batched: blocks handed out in reverse so no sequence's blocks are contiguous.
        let c = e.config();
        let mut context = e.new_context(64, 512).unwrap();
        let mut free: Vec<u32> = (0..64).collect();
        let mut table = |n: usize| -> Vec<u32> { (0..n).filter_map(|_| free.pop()).collect() };
        let tables: Vec<Vec<u32>> = (0..9).map(|_| table(4)).collect();
        // Others start with different prompt prefixes already cached (0..7 tokens each).
        let mut done: Vec<usize> = vec![0; 9];
        for (i, o) in others.iter().enumerate() {
            let n = i.min(o.len() - 1);
            if n > 0 {
                let chunk = SeqChunk {
                    tokens: &o[..n],
                    start: 0,
                    blocks: &tables[i + 1],
                    want: Logits::None,
                };
                context.forward(&[chunk]).unwrap();
                done[i + 1] = n;
            }
        }
        let mut worst = 0f32;
        for (step, expected) in alone.iter().enumerate() {
            // The target: its whole prompt first, then one token per step.
            let (t_tokens, t_start) = if step == 0 {
                (&seq[..target.len()], 0)
            } else {
                let p = target.len() + step - 1;
                (&seq[p..p + 1], p)
            };
            let mut chunks = vec![SeqChunk {
                tokens: t_tokens,
                start: t_start,
                blocks: &tables[0],
                want: Logits::Last,
            }];
            // Others: a chunk of 1-3 tokens each (decode-like or prompt-like), some with logits.
            let mut advance = Vec::new();
            for (i, o) in others.iter().enumerate() {
                let at = done[i + 1];
                let n = (1 + (i + step) % 3).min(o.len().saturating_sub(at));
                if n == 0 {
                    continue;
                }
                chunks.push(SeqChunk {
                    tokens: &o[at..at + n],
                    start: at,
                    blocks: &tables[i + 1],
                    want: if i % 2 == 0 {
                        Logits::Last
                    } else {
                        Logits::None
                    },
                });
                advance.push((i + 1, n));
            }
            // The target in the middle of the batch on odd steps.
            if step % 2 == 1 {
                let t = chunks.remove(0);
                chunks.insert(chunks.len() / 2, t);
            }
            let pos = chunks.iter().position(|c| c.blocks == tables[0].as_slice());
            let logits = context.forward(&chunks).unwrap();
            let vocab = c.vocab_size;
            let row = chunks[..pos.unwrap()]
                .iter()
                .filter(|c| c.want == Logits::Last)
                .count();
            let got = &logits[row * vocab..(row + 1) * vocab];
            let d = got
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst = worst.max(d);
            assert_eq!(
                bitnet_backend::argmax(got),
                bitnet_backend::argmax(expected),
                "step {step}"
            );
            for (i, n) in advance {
                done[i] += n;
            }
        }
        eprintln!("batch invariance: max |logit diff| alone vs batched = {worst:e}");
        assert!(worst <= 1e-4, "max |diff| {worst}");
    }
}
