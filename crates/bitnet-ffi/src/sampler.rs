//! Samplers: turning a session's last logits into the next token, with the Rust `Sampler`'s
//! settings (penalties, then greedy or temperature + top-k / top-p / min-p, seeded).

use crate::bitnet_token;
use crate::buffers::{check_out_ptr, write_out};
use crate::registry::{self, Object};
use crate::session::{bitnet_session, session};
use crate::status::{bitnet_status, guard, Error, Result};
use bitnet_inference::{Sampler, SamplingParams};
use std::sync::{Arc, Mutex};

/// A sampler: its settings and its random stream. Opaque.
#[allow(non_camel_case_types)]
pub struct bitnet_sampler {
    _opaque: [u8; 0],
}

/// `seed` value that asks for a seed from the clock and process id.
pub const BITNET_SEED_RANDOM: u64 = 0xFFFF_FFFF_FFFF_FFFF;

/// Sampling settings, applied in transformers' order: penalties, temperature, top-k, top-p,
/// min-p. Start from `bitnet_sampling_default_params()` or `bitnet_sampling_greedy_params()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct bitnet_sampling_params {
    /// 0 = greedy (argmax); otherwise >= 0.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: u32,
    /// In (0, 1]; 1 disables.
    pub top_p: f32,
    /// In [0, 1]; 0 disables.
    pub min_p: f32,
    /// Multiplies down the logits of tokens among the last `repeat_last_n`; 1 disables.
    pub repeat_penalty: f32,
    pub repeat_last_n: u32,
    /// Subtracted once from the logit of every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted once per occurrence among the generated tokens.
    pub frequency_penalty: f32,
    /// Fixes the random stream; BITNET_SEED_RANDOM for a fresh one.
    pub seed: u64,
}

pub struct SamplerState {
    sampler: Sampler,
    /// The logits being sampled: penalties change them, the session's copy stays intact.
    scratch: Vec<f32>,
}

impl bitnet_sampling_params {
    fn from_rust(p: &SamplingParams) -> Self {
        bitnet_sampling_params {
            temperature: p.temperature,
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: u32::try_from(p.repeat_last_n).unwrap_or(u32::MAX),
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            seed: p.seed.unwrap_or(BITNET_SEED_RANDOM),
        }
    }

    /// The Rust settings, validated (range errors name the field).
    pub fn to_rust(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n as usize,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: (self.seed != BITNET_SEED_RANDOM).then_some(self.seed),
        };
        p.validate().map_err(Error::invalid)?;
        Ok(p)
    }
}

/// The engine's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties,
/// a random seed.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_sampling_default_params() -> bitnet_sampling_params {
    bitnet_sampling_params::from_rust(&SamplingParams::default())
}

/// Greedy decoding (temperature 0), otherwise the defaults.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_sampling_greedy_params() -> bitnet_sampling_params {
    bitnet_sampling_params::from_rust(&SamplingParams::greedy())
}

fn sampler(handle: *const bitnet_sampler) -> Result<Arc<Mutex<SamplerState>>> {
    match registry::get(handle, "sampler")? {
        Object::Sampler(s) => Ok(s),
        other => Err(registry::wrong_kind("sampler", &other)),
    }
}

/// A new sampler; `params` may be NULL (the defaults). Free it with `bitnet_sampler_free`.
///
/// Errors: BITNET_ERR_INVALID_ARGUMENT for a setting out of range (the message names it).
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `params` must be NULL or readable; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_sampler_new(
    params: *const bitnet_sampling_params,
    out: *mut *mut bitnet_sampler,
) -> bitnet_status {
    guard("bitnet_sampler_new", || {
        check_out_ptr(out, "out")?;
        let p = if params.is_null() {
            bitnet_sampling_default_params()
        } else {
            // SAFETY: non-NULL and readable per contract.
            unsafe { params.read() }
        };
        let state = SamplerState {
            sampler: Sampler::new(p.to_rust()?),
            scratch: Vec::new(),
        };
        let handle = registry::insert(Object::Sampler(Arc::new(Mutex::new(state))));
        // SAFETY: checked non-NULL above; writable per contract.
        unsafe { write_out(out, handle, "out") }
    })
}

/// Frees a sampler. NULL is a no-op; a freed or invalid handle is BITNET_ERR_INVALID_HANDLE.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_sampler_free(sampler: *mut bitnet_sampler) -> bitnet_status {
    guard("bitnet_sampler_free", || {
        if sampler.is_null() {
            return Ok(());
        }
        registry::remove(sampler, "sampler", |o| matches!(o, Object::Sampler(_)))
    })
}

/// Picks the next token from the logits of the last position the session evaluated (see
/// `bitnet_session_eval`) and writes it to `*out`; it does not add it to the session.
/// Penalties look at the session's tokens: the repetition penalty at its last
/// `repeat_last_n`, the presence and frequency penalties at those after the first `n_prompt`
/// (the generated ones: pass the prompt's length).
///
/// Errors: BITNET_ERR_INVALID_ARGUMENT if the session has no logits yet (nothing evaluated,
/// BITNET_LOGITS_NONE, or reset since); BITNET_ERR_BUSY if the sampler or the session is in
/// use by another call.
///
/// Thread-safety: a sampler and a session each take one call at a time; different samplers
/// may be used in parallel.
///
/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_sampler_sample(
    sampler: *mut bitnet_sampler,
    session: *mut bitnet_session,
    n_prompt: usize,
    out: *mut bitnet_token,
) -> bitnet_status {
    guard("bitnet_sampler_sample", || {
        check_out_ptr(out, "out")?;
        let smp = self::sampler(sampler)?;
        let sess = self::session(session)?;
        let mut smp = registry::lock(&smp, "the sampler")?;
        let sess = registry::lock(&sess, "the session")?;
        let logits = sess.last_logits().ok_or_else(|| {
            Error::invalid("the session has no logits: evaluate tokens with BITNET_LOGITS_LAST or BITNET_LOGITS_ALL first")
        })?;
        let SamplerState { sampler, scratch } = &mut *smp;
        scratch.clear();
        scratch.extend_from_slice(logits);
        let history = sess.session.tokens();
        let token = sampler.sample(scratch, history, n_prompt.min(history.len()));
        // SAFETY: checked non-NULL above; writable per contract.
        unsafe { write_out(out, token, "out") }
    })
}
