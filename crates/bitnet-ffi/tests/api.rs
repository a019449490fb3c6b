//! The C API called from Rust, against the Rust API it wraps: the same logits, the same
//! seeded samples, the same stop-string handling; and the one-call-at-a-time rule for a
//! session shared between threads. Model: the shared KJV GGUF (its reference outputs are
//! checked from C in tests/c_api.rs).

use bitnet_ffi::*;
use bitnet_inference::{Engine, EngineOptions, GenerateOptions, Logits, SamplingParams};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::sync::mpsc;

fn kjv_gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/bitnet-b1.58-kjv/gguf/bitnet-b1.58-kjv-i2_s.gguf")
}

fn ok(status: bitnet_status) {
    if status != bitnet_status::BITNET_OK {
        // SAFETY: bitnet_last_error returns a NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(bitnet_last_error()) };
        panic!("{status:?}: {}", msg.to_string_lossy());
    }
}

const THREADS: u32 = 2;

fn c_model() -> *mut bitnet_model {
    let path = CString::new(kjv_gguf().into_os_string().into_encoded_bytes()).unwrap();
    let mut params = bitnet_model_default_params();
    params.n_threads = THREADS;
    let mut model = null_mut();
    // SAFETY: a NUL-terminated path, a readable params struct and a writable handle slot.
    ok(unsafe { bitnet_model_load(path.as_ptr(), &params, &mut model) });
    model
}

fn rust_engine() -> Engine {
    let opts = EngineOptions {
        threads: Some(THREADS as usize),
        ..Default::default()
    };
    Engine::load(&kjv_gguf(), &opts).expect("load")
}

fn c_logits(session: *mut bitnet_session) -> Vec<f32> {
    let mut n = 0;
    // SAFETY: NULL with capacity 0 asks for the size; `n` is writable.
    let _ = unsafe { bitnet_session_get_logits(session, null_mut(), 0, &mut n) };
    let mut out = vec![0.0f32; n];
    // SAFETY: `out` holds `n` writable floats.
    ok(unsafe { bitnet_session_get_logits(session, out.as_mut_ptr(), n, &mut n) });
    out
}

const PROMPT: [u32; 4] = [0, 1145, 263, 2112]; // "In the beginning" (reference.json)

#[test]
fn logits_equal_the_rust_session_from_a_path_and_from_memory() {
    let engine = rust_engine();
    let want = engine
        .session(None)
        .unwrap()
        .eval(&PROMPT, Logits::All)
        .unwrap();

    let from_path = c_model();
    let bytes = std::fs::read(kjv_gguf()).unwrap();
    let mut params = bitnet_model_default_params();
    params.n_threads = THREADS;
    let mut from_buffer = null_mut();
    // SAFETY: `bytes` holds `len` readable bytes; params and handle slot as in c_model.
    ok(unsafe {
        bitnet_model_load_from_buffer(bytes.as_ptr(), bytes.len(), &params, &mut from_buffer)
    });
    for model in [from_path, from_buffer] {
        let mut session = null_mut();
        // SAFETY: a live model handle, NULL params (defaults), a writable handle slot.
        ok(unsafe { bitnet_session_new(model, null(), &mut session) });
        // SAFETY: PROMPT holds the 4 ids passed.
        ok(unsafe { bitnet_session_eval(session, PROMPT.as_ptr(), 4, 1) });
        // The same engine code on the same thread count: bit-for-bit equal.
        assert_eq!(c_logits(session), want);
        let mut info = bitnet_session_info::default();
        // SAFETY: `info` is writable.
        ok(unsafe { bitnet_session_get_info(session, &mut info) });
        assert_eq!((info.n_tokens, info.n_logit_rows, info.n_ctx), (4, 4, 1024));
        let (mut tokens, mut n) = ([0u32; 4], 0);
        // SAFETY: `tokens` holds the 4 writable ids passed; `n` is writable.
        ok(unsafe { bitnet_session_get_tokens(session, tokens.as_mut_ptr(), 4, &mut n) });
        assert_eq!((tokens, n), (PROMPT, 4));
        ok(bitnet_session_truncate(session, 2));
        // SAFETY: the slice holds the 2 ids passed.
        ok(unsafe { bitnet_session_eval(session, PROMPT[2..].as_ptr(), 2, 0) });
        // Two tokens in a batch instead of four take other kernels' summation order: equal up
        // to float rounding, far inside the reference's 0.15 tolerance.
        let again = c_logits(session);
        let diff = again
            .iter()
            .zip(&want[3 * 4096..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(again.len(), 4096);
        assert!(
            diff < 1e-3,
            "re-evaluated after truncate: max |diff| {diff}"
        );
        ok(bitnet_session_free(session));
        ok(bitnet_model_free(model));
    }
}

#[test]
fn seeded_sampling_and_stop_strings_match_the_rust_api() {
    let engine = rust_engine();
    let model = c_model();
    let mut session = null_mut();
    // SAFETY: as in the first test.
    ok(unsafe { bitnet_session_new(model, null(), &mut session) });
    let sampling = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.9,
        presence_penalty: 0.5,
        seed: Some(11),
        ..Default::default()
    };
    let stop = CString::new("LORD").unwrap();
    for stops in [vec![], vec![stop.as_ptr()]] {
        let mut params = bitnet_generate_default_params();
        params.max_tokens = 24;
        params.sampling = bitnet_sampling_default_params();
        params.sampling.temperature = 0.9;
        params.sampling.top_p = 0.9;
        params.sampling.presence_penalty = 0.5;
        params.sampling.seed = 11;
        params.stop = stops.as_ptr();
        params.n_stop = stops.len();
        let mut text = String::new();
        params.on_text = Some(collect);
        params.user_data = (&mut text as *mut String).cast();
        let mut tokens = [0u32; 24];
        let mut result = std::mem::MaybeUninit::<bitnet_generation>::uninit();
        // SAFETY: PROMPT holds 4 ids, `params` is readable with `n_stop` NUL-terminated stop
        // strings that outlive the call, `tokens` holds 24 writable ids, `result` is writable.
        ok(unsafe {
            bitnet_session_generate(
                session,
                PROMPT.as_ptr(),
                4,
                &params,
                tokens.as_mut_ptr(),
                24,
                result.as_mut_ptr(),
            )
        });
        // SAFETY: `ok` returned, so the call returned BITNET_OK, which fills `result`.
        let result = unsafe { result.assume_init() };

        let opts = GenerateOptions {
            max_tokens: 24,
            sampling: sampling.clone(),
            stop: if stops.is_empty() {
                vec![]
            } else {
                vec!["LORD".into()]
            },
            ignore_eos: false,
        };
        let want = engine
            .session(None)
            .unwrap()
            .generate(&PROMPT, &opts, |_| true)
            .unwrap();
        assert_eq!(tokens[..result.n_tokens], want.tokens[..]);
        assert_eq!(text, want.text);
        let finish = match want.finish {
            bitnet_inference::FinishReason::StopString => {
                bitnet_finish_reason::BITNET_FINISH_STOP_STRING
            }
            bitnet_inference::FinishReason::Length => bitnet_finish_reason::BITNET_FINISH_LENGTH,
            bitnet_inference::FinishReason::Eos => bitnet_finish_reason::BITNET_FINISH_EOS,
            other => panic!("unexpected finish {other:?}"),
        };
        assert_eq!(result.finish, finish);
        if !stops.is_empty() {
            assert!(!text.contains("LORD"), "{text:?}");
        }
    }
    ok(bitnet_session_free(session));
    ok(bitnet_model_free(model));
}

extern "C" fn collect(text: *const c_char, len: usize, user_data: *mut c_void) -> bool {
    // SAFETY: the library passes `len` bytes of UTF-8 followed by a NUL; user_data is the
    // String the test passed.
    let piece = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
    // SAFETY: as above, the NUL follows the `len` bytes.
    assert_eq!(unsafe { *text.add(len) }, 0, "NUL-terminated");
    // SAFETY: user_data is the test's `String`, borrowed by nothing else during the call.
    let out = unsafe { &mut *user_data.cast::<String>() };
    out.push_str(std::str::from_utf8(piece).expect("UTF-8 piece"));
    true
}

/// What the blocking callback shares with the test: it says when generation has started,
/// then waits for the test to let it go on.
struct Gate {
    started: mpsc::Sender<()>,
    resume: mpsc::Receiver<()>,
}

extern "C" fn wait_at_gate(_: *const c_char, _: usize, user_data: *mut c_void) -> bool {
    // SAFETY: user_data is the Gate owned by the generating thread for the call's duration.
    let gate = unsafe { &*user_data.cast::<Gate>() };
    let _ = gate.started.send(());
    let _ = gate.resume.recv();
    false
}

#[test]
fn a_session_in_use_on_one_thread_is_busy_for_another() {
    let model = c_model();
    let mut session = null_mut();
    // SAFETY: as in the first test.
    ok(unsafe { bitnet_session_new(model, null(), &mut session) });
    let (started_tx, started_rx) = mpsc::channel();
    let (resume_tx, resume_rx) = mpsc::channel();
    let handle = session as usize;
    let generating = std::thread::spawn(move || {
        let gate = Gate {
            started: started_tx,
            resume: resume_rx,
        };
        let mut params = bitnet_generate_default_params();
        params.max_tokens = 8;
        params.on_text = Some(wait_at_gate);
        params.user_data = (&gate as *const Gate).cast_mut().cast();
        let mut result = std::mem::MaybeUninit::<bitnet_generation>::uninit();
        // SAFETY: the handle is live until the test frees it after this thread is joined;
        // `params` and the Gate it points to outlive the call; `result` is writable.
        let status = unsafe {
            bitnet_session_generate(
                handle as *mut bitnet_session,
                PROMPT.as_ptr(),
                4,
                &params,
                null_mut(),
                0,
                result.as_mut_ptr(),
            )
        };
        // `result` is written only on success: read it only then.
        let finish = if status == bitnet_status::BITNET_OK {
            // SAFETY: BITNET_OK means the call wrote `result`.
            Some(unsafe { result.assume_init() }.finish)
        } else {
            None
        };
        (status, finish)
    });
    started_rx.recv().unwrap();
    // The session is mid-generation on the other thread: refused, not blocked, not raced.
    // SAFETY: PROMPT holds the id passed.
    let status = unsafe { bitnet_session_eval(session, PROMPT.as_ptr(), 1, 0) };
    assert_eq!(status, bitnet_status::BITNET_ERR_BUSY);
    // SAFETY: bitnet_last_error returns a NUL-terminated string.
    let msg = unsafe { CStr::from_ptr(bitnet_last_error()) }.to_string_lossy();
    assert!(msg.contains("in use"), "{msg}");
    // The model is shared: other sessions work meanwhile.
    let mut other = null_mut();
    // SAFETY: as in the first test.
    ok(unsafe { bitnet_session_new(model, null(), &mut other) });
    // SAFETY: PROMPT holds the 4 ids passed.
    ok(unsafe { bitnet_session_eval(other, PROMPT.as_ptr(), 4, 0) });
    ok(bitnet_session_free(other));
    resume_tx.send(()).unwrap();
    let (status, finish) = generating.join().unwrap();
    assert_eq!(status, bitnet_status::BITNET_OK);
    assert_eq!(finish, Some(bitnet_finish_reason::BITNET_FINISH_CANCELLED));
    // SAFETY: PROMPT holds the id passed.
    ok(unsafe { bitnet_session_eval(session, PROMPT.as_ptr(), 1, 0) });
    ok(bitnet_session_free(session));
    ok(bitnet_model_free(model));
}

#[test]
fn chat_template_renders_the_reference_chat_prompt() {
    let model = c_model();
    let (role, content) = (
        CString::new("user").unwrap(),
        CString::new("Who is the Lord?").unwrap(),
    );
    let msg = bitnet_chat_message {
        role: role.as_ptr(),
        content: content.as_ptr(),
    };
    let mut len = 0;
    // SAFETY: `msg` holds NUL-terminated strings; NULL with capacity 0 asks for the size.
    let status =
        unsafe { bitnet_chat_apply_template(model, &msg, 1, true, null_mut(), 0, &mut len) };
    assert_eq!(status, bitnet_status::BITNET_ERR_BUFFER_TOO_SMALL);
    let mut buf = vec![0u8; len + 1];
    // SAFETY: `buf` holds the `len + 1` writable bytes passed.
    ok(unsafe {
        bitnet_chat_apply_template(
            model,
            &msg,
            1,
            true,
            buf.as_mut_ptr().cast(),
            len + 1,
            &mut len,
        )
    });
    // reference.json, prompt "chat".
    assert_eq!(
        &buf[..len],
        b"<|begin_of_text|>User: Who is the Lord?<|eot_id|>Assistant: "
    );
    assert_eq!(buf[len], 0);
    ok(bitnet_model_free(model));
}
