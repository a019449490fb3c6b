//! Sessions: a KV cache and the tokens in it; evaluating tokens into logits, and whole
//! generations with a streaming callback.

use crate::bitnet_token;
use crate::buffers::{check_out, check_out_ptr, copy_out, slice_in, str_in, write_out};
use crate::model::{bitnet_model, check_ids, model};
use crate::registry::{self, Object};
use crate::sampler::{bitnet_sampling_greedy_params, bitnet_sampling_params};
use crate::status::{bitnet_status, guard, Error, Result};
use bitnet_inference::{FinishReason, GenerateOptions, Logits, Session};
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex};

/// A conversation's state: its own KV cache over a model's shared weights. Opaque.
#[allow(non_camel_case_types)]
pub struct bitnet_session {
    _opaque: [u8; 0],
}

/// Settings of a new session. Start from `bitnet_session_default_params()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct bitnet_session_params {
    /// Tokens the KV cache holds; 0 = the model's trained context.
    pub n_ctx: u32,
}

/// Facts about a session.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct bitnet_session_info {
    pub n_ctx: usize,
    /// Tokens currently in the cache.
    pub n_tokens: usize,
    pub kv_cache_bytes: usize,
    /// Rows of logits the last `bitnet_session_eval` kept (0 after a reset).
    pub n_logit_rows: usize,
}

/// Which positions `bitnet_session_eval` keeps logits for.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bitnet_logits {
    /// The last position only (what sampling needs).
    BITNET_LOGITS_LAST = 0,
    /// Every evaluated position (perplexity, scoring).
    BITNET_LOGITS_ALL = 1,
    /// None (prefilling a cache).
    BITNET_LOGITS_NONE = 2,
}

/// Receives generated text as it becomes final: `len` bytes of UTF-8 at `text`, followed by
/// a NUL (so `text` is also a C string, unless the model generated a NUL byte itself). The
/// pointer is valid only during the call. Return false to stop the generation (its finish
/// reason is then BITNET_FINISH_CANCELLED). The callback must not unwind (a C++ exception,
/// longjmp) into the library. NULL where a callback is optional.
#[allow(non_camel_case_types)]
pub type bitnet_text_callback =
    Option<extern "C" fn(text: *const c_char, len: usize, user_data: *mut c_void) -> bool>;

/// How to generate. Start from `bitnet_generate_default_params()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct bitnet_generate_params {
    /// Tokens to generate at most.
    pub max_tokens: u32,
    pub sampling: bitnet_sampling_params,
    /// `n_stop` NUL-terminated strings: generation stops before the first of them appears in
    /// the text, which then ends before it (finish reason BITNET_FINISH_STOP_STRING). NULL
    /// only if `n_stop` is 0; empty strings are ignored.
    pub stop: *const *const c_char,
    pub n_stop: usize,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Called with each piece of text; NULL = no streaming.
    pub on_text: bitnet_text_callback,
    /// Passed to `on_text` as it is.
    pub user_data: *mut c_void,
}

/// Why a generation ended.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bitnet_finish_reason {
    /// An end-of-sequence or end-of-turn token (not included in the output).
    BITNET_FINISH_EOS = 0,
    /// One of the stop strings.
    BITNET_FINISH_STOP_STRING = 1,
    /// `max_tokens` generated.
    BITNET_FINISH_LENGTH = 2,
    /// The session's context is full.
    BITNET_FINISH_CONTEXT_FULL = 3,
    /// The callback returned false.
    BITNET_FINISH_CANCELLED = 4,
}

/// What a generation did.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct bitnet_generation {
    /// Tokens generated (all of them, also when more than fit the caller's token buffer).
    pub n_tokens: usize,
    pub finish: bitnet_finish_reason,
    /// Prompt tokens evaluated: the prompt less the prefix already in the cache.
    pub n_prompt_evaluated: usize,
    pub prompt_ms: f64,
    pub generation_ms: f64,
}

pub struct SessionState {
    pub session: Session,
    /// The logits the last eval kept, `rows * vocab` values.
    logits: Vec<f32>,
    rows: usize,
}

impl SessionState {
    /// The last kept row of logits, if any.
    pub fn last_logits(&self) -> Option<&[f32]> {
        let vocab = self.session.engine().config().vocab_size;
        (self.rows > 0 && self.logits.len() >= vocab)
            .then(|| &self.logits[self.logits.len() - vocab..])
    }

    fn forget_logits(&mut self) {
        self.logits.clear();
        self.rows = 0;
    }
}

pub fn session(handle: *const bitnet_session) -> Result<Arc<Mutex<SessionState>>> {
    match registry::get(handle, "session")? {
        Object::Session(s) => Ok(s),
        other => Err(registry::wrong_kind("session", &other)),
    }
}

/// Runs `f` on the locked session behind `handle`.
fn with_session<R>(
    handle: *const bitnet_session,
    f: impl FnOnce(&mut SessionState) -> Result<R>,
) -> Result<R> {
    let s = session(handle)?;
    let mut state = registry::lock(&s, "the session")?;
    f(&mut state)
}

/// Default session settings: the model's trained context.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_session_default_params() -> bitnet_session_params {
    bitnet_session_params { n_ctx: 0 }
}

/// A new session over `model` with its own KV cache; `params` may be NULL (defaults). Free it
/// with `bitnet_session_free`.
///
/// Errors: BITNET_ERR_INVALID_ARGUMENT for a context the machine's memory cannot hold.
///
/// Thread-safety: thread-safe; any number of sessions may share one model, and sessions may
/// be used on different threads at once.
///
/// # Safety
/// `params` must be NULL or readable; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_session_new(
    model: *const bitnet_model,
    params: *const bitnet_session_params,
    out: *mut *mut bitnet_session,
) -> bitnet_status {
    guard("bitnet_session_new", || {
        check_out_ptr(out, "out")?;
        let m = self::model(model)?;
        let p = if params.is_null() {
            bitnet_session_default_params()
        } else {
            // SAFETY: non-NULL and readable per contract.
            unsafe { params.read() }
        };
        let ctx = (p.n_ctx > 0).then_some(p.n_ctx as usize);
        let state = SessionState {
            session: m.engine.session(ctx)?,
            logits: Vec::new(),
            rows: 0,
        };
        let handle = registry::insert(Object::Session(Arc::new(Mutex::new(state))));
        // SAFETY: checked non-NULL above; writable per contract.
        unsafe { write_out(out, handle, "out") }
    })
}

/// Frees a session and its KV cache. NULL is a no-op; a freed or invalid handle is
/// BITNET_ERR_INVALID_HANDLE. A call running on the session (on another thread, or the
/// generation whose callback frees it) finishes first, then the memory goes.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_session_free(session: *mut bitnet_session) -> bitnet_status {
    guard("bitnet_session_free", || {
        if session.is_null() {
            return Ok(());
        }
        registry::remove(session, "session", |o| matches!(o, Object::Session(_)))
    })
}

/// Fills `*out` with the session's context size, token count and cache size.
///
/// Thread-safety: one call at a time per session (BITNET_ERR_BUSY otherwise).
///
/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_session_get_info(
    session: *mut bitnet_session,
    out: *mut bitnet_session_info,
) -> bitnet_status {
    guard("bitnet_session_get_info", || {
        let info = with_session(session, |s| {
            Ok(bitnet_session_info {
                n_ctx: s.session.ctx_size(),
                n_tokens: s.session.tokens().len(),
                kv_cache_bytes: s.session.kv_cache_bytes(),
                n_logit_rows: s.rows,
            })
        })?;
        // SAFETY: per this function's contract.
        unsafe { write_out(out, info, "out") }
    })
}

/// Copies the tokens in the session's cache to `tokens` (convention of `bitnet_tokenize`:
/// `*n_tokens` always gets the count; too small a buffer is BITNET_ERR_BUFFER_TOO_SMALL).
///
/// Thread-safety: one call at a time per session (BITNET_ERR_BUSY otherwise).
///
/// # Safety
/// `tokens` must point to `capacity` writable ids (NULL only if 0); `n_tokens` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_session_get_tokens(
    session: *mut bitnet_session,
    tokens: *mut bitnet_token,
    capacity: usize,
    n_tokens: *mut usize,
) -> bitnet_status {
    guard("bitnet_session_get_tokens", || {
        with_session(session, |s| {
            // SAFETY: per this function's contract.
            unsafe { copy_out(s.session.tokens(), tokens, capacity, n_tokens, "tokens") }
        })
    })
}

/// Keeps the first `n` tokens of the cache and forgets the rest (and the kept logits); `n`
/// at or past the count changes nothing but the logits. 0 empties the session.
///
/// Thread-safety: one call at a time per session (BITNET_ERR_BUSY otherwise).
#[no_mangle]
pub extern "C" fn bitnet_session_truncate(session: *mut bitnet_session, n: usize) -> bitnet_status {
    guard("bitnet_session_truncate", || {
        with_session(session, |s| {
            s.session.truncate(n);
            s.forget_logits();
            Ok(())
        })
    })
}

/// Appends `n` tokens to the session, running the model over them (the prompt in batches),
/// and keeps logits as `logits` (a `bitnet_logits` value) says, for `bitnet_session_get_logits`
/// and `bitnet_sampler_sample`.
///
/// Errors: BITNET_ERR_DOES_NOT_FIT if the tokens do not fit the context or an id is outside
/// the vocabulary (the session is unchanged then).
///
/// Thread-safety: one call at a time per session (BITNET_ERR_BUSY otherwise).
///
/// # Safety
/// `tokens` must point to `n` readable ids (NULL only if 0).
#[no_mangle]
pub unsafe extern "C" fn bitnet_session_eval(
    session: *mut bitnet_session,
    tokens: *const bitnet_token,
    n: usize,
    logits: i32,
) -> bitnet_status {
    guard("bitnet_session_eval", || {
        let want = match logits {
            0 => Logits::Last,
            1 => Logits::All,
            2 => Logits::None,
            other => {
                return Err(Error::invalid(format!(
                    "logits {other} is not a bitnet_logits value (0 last, 1 all, 2 none)"
                )))
            }
        };
        // SAFETY: per this function's contract.
        let ids = unsafe { slice_in(tokens, n, "tokens")? };
        with_session(session, |s| {
            let out = s.session.eval(ids, want)?;
            let vocab = s.session.engine().config().vocab_size;
            s.rows = out.len() / vocab.max(1);
            s.logits = out;
            Ok(())
        })
    })
}

/// Copies the logits the last `bitnet_session_eval` kept: `rows * n_vocab` floats, row by row
/// in position order (one row for BITNET_LOGITS_LAST). Convention of `bitnet_tokenize`:
/// `*n_floats` always gets the count; too small a buffer is BITNET_ERR_BUFFER_TOO_SMALL.
///
/// Thread-safety: one call at a time per session (BITNET_ERR_BUSY otherwise).
///
/// # Safety
/// `out` must point to `capacity` writable floats (NULL only if 0); `n_floats` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_session_get_logits(
    session: *mut bitnet_session,
    out: *mut f32,
    capacity: usize,
    n_floats: *mut usize,
) -> bitnet_status {
    guard("bitnet_session_get_logits", || {
        with_session(session, |s| {
            // SAFETY: per this function's contract.
            unsafe { copy_out(&s.logits, out, capacity, n_floats, "out") }
        })
    })
}

/// Greedy, at most 128 tokens, no stop strings, no callback.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_generate_default_params() -> bitnet_generate_params {
    let d = GenerateOptions::default();
    bitnet_generate_params {
        max_tokens: u32::try_from(d.max_tokens).unwrap_or(u32::MAX),
        sampling: bitnet_sampling_greedy_params(),
        stop: std::ptr::null(),
        n_stop: 0,
        ignore_eos: d.ignore_eos,
        on_text: None,
        user_data: std::ptr::null_mut(),
    }
}

/// Generates a continuation of `prompt` (`n_prompt` ids, at least one): samples token after
/// token until EOS, a stop string, `max_tokens`, a full context, or the callback's false;
/// streams the text to `params->on_text`. A prefix of the prompt already in the session's
/// cache (the previous turn of a chat) is reused, not recomputed. `params` may be NULL
/// (defaults: greedy, 128 tokens). The generated ids go to `tokens_out` (the first
/// `tokens_capacity` of them; NULL if 0) and the summary to `*result` (may be NULL).
///
/// Errors: BITNET_ERR_DOES_NOT_FIT for an empty prompt, one longer than the context or one
/// with an id outside the vocabulary; BITNET_ERR_INVALID_ARGUMENT for sampling settings out
/// of range.
///
/// Thread-safety: one call at a time per session (BITNET_ERR_BUSY otherwise, also for calls
/// on this session from inside `on_text`; other sessions and the model may be used there).
///
/// # Safety
/// `prompt` must point to `n_prompt` readable ids; `params` NULL or readable, with `stop`
/// pointing to `n_stop` NUL-terminated strings; `tokens_out` to `tokens_capacity` writable
/// ids; `result` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_session_generate(
    session: *mut bitnet_session,
    prompt: *const bitnet_token,
    n_prompt: usize,
    params: *const bitnet_generate_params,
    tokens_out: *mut bitnet_token,
    tokens_capacity: usize,
    result: *mut bitnet_generation,
) -> bitnet_status {
    guard("bitnet_session_generate", || {
        let p = if params.is_null() {
            bitnet_generate_default_params()
        } else {
            // SAFETY: non-NULL and readable per contract.
            unsafe { params.read() }
        };
        // SAFETY: per this function's contract.
        let prompt = unsafe { slice_in(prompt, n_prompt, "prompt")? };
        // SAFETY: a non-NULL `params` has `stop` pointing to `n_stop` readable pointers (this
        // function's contract); the defaults have none.
        let stop_ptrs = unsafe { slice_in(p.stop, p.n_stop, "stop")? };
        let mut stop = Vec::new();
        for (i, &s) in stop_ptrs.iter().enumerate() {
            // SAFETY: each of them is NUL-terminated (this function's contract).
            stop.push(unsafe { str_in(s, &format!("stop[{i}]"))? }.to_string());
        }
        let opts = GenerateOptions {
            max_tokens: p.max_tokens as usize,
            sampling: p.sampling.to_rust()?,
            stop,
            ignore_eos: p.ignore_eos,
        };
        // Checked before generating: an error after the text was streamed would be late.
        check_out(tokens_out, tokens_capacity, "tokens_out")?;
        let handle = self::session(session)?;
        let mut state = registry::lock(&handle, "the session")?;
        // Checked here too so a bad id is reported before any cached prefix is dropped.
        check_ids(state.session.engine(), prompt)?;
        state.forget_logits();
        // The callback's text is copied into one reusable buffer to give C a NUL terminator.
        let mut piece = Vec::<u8>::new();
        let on_text = |text: &str| match p.on_text {
            None => true,
            Some(cb) => {
                piece.clear();
                piece.extend_from_slice(text.as_bytes());
                piece.push(0);
                cb(piece.as_ptr().cast(), text.len(), p.user_data)
            }
        };
        let g = state.session.generate(prompt, &opts, on_text)?;
        drop(state);
        let written = g.tokens.len().min(tokens_capacity);
        if written > 0 {
            // SAFETY: `tokens_out` holds `tokens_capacity >= written` ids per contract.
            let out = unsafe { std::slice::from_raw_parts_mut(tokens_out, written) };
            out.copy_from_slice(&g.tokens[..written]);
        }
        if !result.is_null() {
            let summary = bitnet_generation {
                n_tokens: g.tokens.len(),
                finish: match g.finish {
                    FinishReason::Eos => bitnet_finish_reason::BITNET_FINISH_EOS,
                    FinishReason::StopString => bitnet_finish_reason::BITNET_FINISH_STOP_STRING,
                    FinishReason::Length => bitnet_finish_reason::BITNET_FINISH_LENGTH,
                    FinishReason::ContextFull => bitnet_finish_reason::BITNET_FINISH_CONTEXT_FULL,
                    FinishReason::Cancelled => bitnet_finish_reason::BITNET_FINISH_CANCELLED,
                },
                n_prompt_evaluated: g.timings.prompt_tokens,
                prompt_ms: g.timings.prompt_time.as_secs_f64() * 1e3,
                generation_ms: g.timings.generation_time.as_secs_f64() * 1e3,
            };
            // SAFETY: non-NULL, writable per contract.
            unsafe { write_out(result, summary, "result")? };
        }
        Ok(())
    })
}
