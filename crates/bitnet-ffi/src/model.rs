//! Models: loading (from a path or from memory), facts about the model, tokenization and the
//! chat template.

use crate::bitnet_token;
use crate::buffers::{
    check_out_ptr, copy_out, copy_text_out, path_in, slice_in, str_in, text_in, write_out,
};
use crate::registry::{self, Object};
use crate::status::{bitnet_status, guard, Error, Result};
use bitnet_inference::{Engine, EngineOptions, KvType};
use bitnet_tokenizers::ChatMessage;
use std::ffi::c_char;
use std::sync::Arc;

/// A loaded model: weights, tokenizer and worker threads. Opaque.
#[allow(non_camel_case_types)]
pub struct bitnet_model {
    _opaque: [u8; 0],
}

pub struct Model {
    pub engine: Engine,
}

/// KV-cache element type, for `bitnet_model_params.kv_type`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bitnet_kv_type {
    BITNET_KV_F16 = 0,
    BITNET_KV_F32 = 1,
}

/// How to load a model. Start from `bitnet_model_default_params()` and change fields.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct bitnet_model_params {
    /// Worker threads of the forward pass; 0 = one per physical core; at most 1024
    /// (BITNET_ERR_INVALID_ARGUMENT above).
    pub n_threads: u32,
    /// Prompt tokens per forward batch; 0 = the default (512).
    pub n_batch: u32,
    /// A `bitnet_kv_type` value: the element type of every session's KV cache.
    pub kv_type: i32,
    /// true: keep the weights in the file mapping where their layout allows (faster start,
    /// pages shared between processes); false: copy them into an aligned arena (faster
    /// decoding). Ignored by `bitnet_model_load_from_buffer`.
    pub use_mmap: bool,
    /// A folder with a tokenizer.json that replaces the model's own tokenizer; NULL = the
    /// model's. Only for `bitnet_model_load`.
    pub tokenizer_dir: *const c_char,
}

/// Facts about a loaded model.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct bitnet_model_info {
    pub n_vocab: u32,
    /// The context the model was trained with (the default session size).
    pub n_ctx_train: u32,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    /// Worker threads of the forward pass.
    pub n_threads: u32,
    /// -1 if the tokenizer has none.
    pub bos_token: i32,
    /// -1 if the tokenizer has none.
    pub eos_token: i32,
    /// Whether the tokenizer adds BOS by default (the `add_bos` to pass to `bitnet_tokenize`
    /// for plain prompts).
    pub add_bos: bool,
    pub has_chat_template: bool,
}

/// One chat message for `bitnet_chat_apply_template`: NUL-terminated UTF-8 strings.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct bitnet_chat_message {
    /// "system", "user", "assistant", ...
    pub role: *const c_char,
    pub content: *const c_char,
}

/// The model behind a handle.
pub fn model(handle: *const bitnet_model) -> Result<Arc<Model>> {
    match registry::get(handle, "model")? {
        Object::Model(m) => Ok(m),
        other => Err(registry::wrong_kind("model", &other)),
    }
}

/// Default load settings: all physical cores, batches of 512, f16 KV cache, weights copied
/// into the arena, the model's own tokenizer.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_model_default_params() -> bitnet_model_params {
    let d = EngineOptions::default();
    bitnet_model_params {
        n_threads: 0,
        n_batch: d.batch_size as u32,
        kv_type: match d.kv_type {
            KvType::F16 => bitnet_kv_type::BITNET_KV_F16 as i32,
            KvType::F32 => bitnet_kv_type::BITNET_KV_F32 as i32,
        },
        use_mmap: d.mmap,
        tokenizer_dir: std::ptr::null(),
    }
}

/// Engine options from C params (NULL = defaults). `for_path` says whether path-only fields
/// may be set.
unsafe fn engine_options(
    params: *const bitnet_model_params,
    for_path: bool,
) -> Result<EngineOptions> {
    let p = if params.is_null() {
        bitnet_model_default_params()
    } else {
        // SAFETY: non-NULL and readable per the function contracts.
        unsafe { params.read() }
    };
    let kv_type = match p.kv_type {
        0 => KvType::F16,
        1 => KvType::F32,
        other => {
            return Err(Error::invalid(format!(
                "kv_type {other} is not a bitnet_kv_type (0 = f16, 1 = f32)"
            )))
        }
    };
    let tokenizer = if p.tokenizer_dir.is_null() {
        None
    } else if for_path {
        // SAFETY: non-NULL, NUL-terminated per contract.
        Some(unsafe { path_in(p.tokenizer_dir, "tokenizer_dir")? })
    } else {
        return Err(Error::invalid(
            "tokenizer_dir is only supported by bitnet_model_load (a buffer carries its GGUF tokenizer)",
        ));
    };
    let defaults = EngineOptions::default();
    Ok(EngineOptions {
        threads: (p.n_threads > 0).then_some(p.n_threads as usize),
        tokenizer,
        batch_size: if p.n_batch == 0 {
            defaults.batch_size
        } else {
            p.n_batch as usize
        },
        kv_type,
        mmap: p.use_mmap,
        ..defaults
    })
}

fn register(engine: Engine) -> *mut bitnet_model {
    registry::insert(Object::Model(Arc::new(Model { engine })))
}

/// Loads a model from a GGUF file or a Hugging Face checkpoint folder. `params` may be NULL
/// (defaults). On success `*out` is a new handle to free with `bitnet_model_free`.
///
/// Errors: BITNET_ERR_MODEL for a missing, unreadable or invalid file.
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `path` must be NULL or NUL-terminated; `params` NULL or readable; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_model_load(
    path: *const c_char,
    params: *const bitnet_model_params,
    out: *mut *mut bitnet_model,
) -> bitnet_status {
    guard("bitnet_model_load", || {
        check_out_ptr(out, "out")?;
        // SAFETY: `path` is NULL or NUL-terminated (this function's contract).
        let path = unsafe { path_in(path, "path")? };
        // SAFETY: `params` is NULL or readable, and its `tokenizer_dir` NULL or NUL-terminated
        // (this function's contract).
        let opts = unsafe { engine_options(params, true)? };
        let engine = Engine::load(&path, &opts).map_err(|e| {
            // Parse errors describe the bytes, not the file: name it, once.
            let mut err = Error::from(e);
            let shown = path.display().to_string();
            if !err.message.contains(&shown) {
                err.message = format!("{shown}: {}", err.message);
            }
            err
        })?;
        // SAFETY: `out` is NULL or writable (this function's contract).
        unsafe { write_out(out, register(engine), "out") }
    })
}

/// Loads a GGUF model from `len` bytes at `data`, which are copied: the caller may free them
/// when the call returns. `params` may be NULL (defaults; `tokenizer_dir` must be NULL).
///
/// Errors: BITNET_ERR_MODEL for bytes that are not a valid GGUF model;
/// BITNET_ERR_OUT_OF_MEMORY if the copy cannot be allocated.
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `data` must be NULL or point to `len` readable bytes; `params` NULL or readable; `out`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_model_load_from_buffer(
    data: *const u8,
    len: usize,
    params: *const bitnet_model_params,
    out: *mut *mut bitnet_model,
) -> bitnet_status {
    guard("bitnet_model_load_from_buffer", || {
        check_out_ptr(out, "out")?;
        if data.is_null() {
            return Err(Error::null("data"));
        }
        // SAFETY: `data` points to `len` readable bytes (this function's contract).
        let src = unsafe { slice_in(data, len, "data")? };
        // SAFETY: `params` is NULL or readable (this function's contract); a `tokenizer_dir`
        // is refused before it is read.
        let opts = unsafe { engine_options(params, false)? };
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(src.len()).map_err(|_| {
            Error::new(
                bitnet_status::BITNET_ERR_OUT_OF_MEMORY,
                format!("cannot allocate {} bytes for the model copy", src.len()),
            )
        })?;
        bytes.extend_from_slice(src);
        let engine = Engine::load_bytes(bytes, "<memory buffer>", &opts)?;
        // SAFETY: `out` is NULL or writable (this function's contract).
        unsafe { write_out(out, register(engine), "out") }
    })
}

/// Frees a model handle. Sessions made from it stay usable (they keep the weights alive
/// until they are freed too). NULL is a no-op; a freed or invalid handle is
/// BITNET_ERR_INVALID_HANDLE.
///
/// Thread-safety: thread-safe; calls already running on the model finish normally.
#[no_mangle]
pub extern "C" fn bitnet_model_free(model: *mut bitnet_model) -> bitnet_status {
    guard("bitnet_model_free", || {
        if model.is_null() {
            return Ok(());
        }
        registry::remove(model, "model", |o| matches!(o, Object::Model(_)))
    })
}

/// Fills `*out` with facts about the model.
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_model_get_info(
    model: *const bitnet_model,
    out: *mut bitnet_model_info,
) -> bitnet_status {
    guard("bitnet_model_get_info", || {
        let m = self::model(model)?;
        let c = m.engine.config();
        let t = m.engine.tokenizer();
        let id = |x: Option<u32>| x.and_then(|v| i32::try_from(v).ok()).unwrap_or(-1);
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        let info = bitnet_model_info {
            n_vocab: n(c.vocab_size),
            n_ctx_train: n(c.max_position_embeddings),
            n_embd: n(c.hidden_size),
            n_layer: n(c.num_layers),
            n_head: n(c.num_heads),
            n_head_kv: n(c.num_kv_heads),
            n_threads: n(m.engine.threads()),
            bos_token: id(t.bos_id()),
            eos_token: id(t.eos_id()),
            add_bos: t.add_bos_default(),
            has_chat_template: t.chat_template().is_some(),
        };
        // SAFETY: per this function's contract.
        unsafe { write_out(out, info, "out") }
    })
}

/// Sets `*out` to whether `token` ends a generation (EOS, end of turn: every id the model's
/// generation config lists).
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_token_is_stop(
    model: *const bitnet_model,
    token: bitnet_token,
    out: *mut bool,
) -> bitnet_status {
    guard("bitnet_token_is_stop", || {
        let m = self::model(model)?;
        let stop = m.engine.tokenizer().stop_ids().contains(&token);
        // SAFETY: per this function's contract.
        unsafe { write_out(out, stop, "out") }
    })
}

/// Tokenizes `text_len` bytes of UTF-8 `text` (no NUL needed). `add_bos` prepends the BOS
/// token as the tokenizer's post-processor defines it. Writes up to `capacity` ids to
/// `tokens`; `*n_tokens` always receives the number of ids, and if it exceeds `capacity`
/// nothing is written and the call returns BITNET_ERR_BUFFER_TOO_SMALL (pass NULL and 0 to
/// ask for the size).
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `text` must point to `text_len` readable bytes (NULL only if 0); `tokens` to `capacity`
/// writable ids (NULL only if 0); `n_tokens` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_tokenize(
    model: *const bitnet_model,
    text: *const c_char,
    text_len: usize,
    add_bos: bool,
    tokens: *mut bitnet_token,
    capacity: usize,
    n_tokens: *mut usize,
) -> bitnet_status {
    guard("bitnet_tokenize", || {
        let m = self::model(model)?;
        // SAFETY: per this function's contract.
        let text = unsafe { text_in(text, text_len, "text")? };
        let ids = m.engine.tokenizer().encode(text, add_bos)?;
        // SAFETY: `tokens` holds `capacity` writable ids and `n_tokens` is NULL or writable
        // (this function's contract).
        unsafe { copy_out(&ids, tokens, capacity, n_tokens, "tokens") }
    })
}

/// Turns token ids back into UTF-8 text, skipping special tokens (BOS, EOS, ...) if
/// `skip_special`. Writes the text and a terminating NUL to `buf`, which needs
/// `*n_bytes + 1` bytes; `*n_bytes` always receives the text's length without the NUL, and if
/// `capacity` is too small nothing is written and the call returns
/// BITNET_ERR_BUFFER_TOO_SMALL.
///
/// Errors: BITNET_ERR_DOES_NOT_FIT for an id outside the vocabulary.
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `tokens` must point to `n` readable ids (NULL only if 0); `buf` to `capacity` writable
/// bytes (NULL only if 0); `n_bytes` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitnet_detokenize(
    model: *const bitnet_model,
    tokens: *const bitnet_token,
    n: usize,
    skip_special: bool,
    buf: *mut c_char,
    capacity: usize,
    n_bytes: *mut usize,
) -> bitnet_status {
    guard("bitnet_detokenize", || {
        let m = self::model(model)?;
        // SAFETY: per this function's contract.
        let ids = unsafe { slice_in(tokens, n, "tokens")? };
        check_ids(&m.engine, ids)?;
        let text = m.engine.tokenizer().decode(ids, skip_special)?;
        // SAFETY: `buf` holds `capacity` writable bytes and `n_bytes` is NULL or writable (this
        // function's contract).
        unsafe { copy_text_out(&text, buf, capacity, n_bytes, "buf") }
    })
}

/// Ids outside the vocabulary are input that does not fit, as in `Session::eval`.
pub fn check_ids(engine: &Engine, ids: &[bitnet_token]) -> Result<()> {
    let vocab = engine.config().vocab_size;
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(&id) => Err(bitnet_inference::EngineError::BadToken { id, vocab }.into()),
        None => Ok(()),
    }
}

/// Renders the model's chat template over `n` messages (as transformers'
/// `apply_chat_template`), with the assistant's opening if `add_generation_prompt`. The
/// result already holds the template's BOS, so tokenize it with `add_bos` false. Output as
/// `bitnet_detokenize`: text plus NUL in `buf`, its length in `*n_bytes`.
///
/// Errors: BITNET_ERR_TOKENIZER if the model has no chat template or the template fails.
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `messages` must point to `n` readable messages whose strings are NUL-terminated (NULL
/// only if 0); `buf` and `n_bytes` as for `bitnet_detokenize`.
#[no_mangle]
pub unsafe extern "C" fn bitnet_chat_apply_template(
    model: *const bitnet_model,
    messages: *const bitnet_chat_message,
    n: usize,
    add_generation_prompt: bool,
    buf: *mut c_char,
    capacity: usize,
    n_bytes: *mut usize,
) -> bitnet_status {
    guard("bitnet_chat_apply_template", || {
        let m = self::model(model)?;
        // SAFETY: per this function's contract.
        let raw = unsafe { slice_in(messages, n, "messages")? };
        let mut msgs = Vec::new();
        for (i, msg) in raw.iter().enumerate() {
            // SAFETY: every message's strings are NULL or NUL-terminated (this function's
            // contract).
            let role = unsafe { str_in(msg.role, &format!("messages[{i}].role"))? };
            // SAFETY: as for `role`.
            let content = unsafe { str_in(msg.content, &format!("messages[{i}].content"))? };
            msgs.push(ChatMessage::new(role, content));
        }
        let text = m
            .engine
            .tokenizer()
            .apply_chat_template(&msgs, add_generation_prompt)?;
        // SAFETY: `buf` and `n_bytes` as for bitnet_detokenize (this function's contract).
        unsafe { copy_text_out(&text, buf, capacity, n_bytes, "buf") }
    })
}
