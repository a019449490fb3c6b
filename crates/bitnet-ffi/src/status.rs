//! Status codes, the per-thread last-error message, and [`guard`], through which every
//! exported function runs its body so that no panic unwinds into C.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What every fallible function returns. On anything but `BITNET_OK`,
/// `bitnet_last_error()` on the same thread describes the problem and out-parameters are
/// left unchanged, except where a function says otherwise (`BITNET_ERR_BUFFER_TOO_SMALL`
/// still reports the size needed).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bitnet_status {
    BITNET_OK = 0,
    /// A required pointer argument was NULL.
    BITNET_ERR_NULL_ARGUMENT = 1,
    /// A handle that is not a live object of the expected kind: freed, never returned by
    /// this library, or a handle of another kind (a session passed as a model).
    BITNET_ERR_INVALID_HANDLE = 2,
    /// An argument out of range: text that is not UTF-8, a sampling setting outside its
    /// range, an unknown enum value.
    BITNET_ERR_INVALID_ARGUMENT = 3,
    /// The output buffer is too small; the size needed was written to the size
    /// out-parameter.
    BITNET_ERR_BUFFER_TOO_SMALL = 4,
    /// The model file or buffer could not be read or is not a valid model (the CLI's exit
    /// code 3).
    BITNET_ERR_MODEL = 5,
    /// Input that does not fit: a prompt longer than the context, a full context, a token
    /// id outside the vocabulary, an empty prompt (the CLI's exit code 4).
    BITNET_ERR_DOES_NOT_FIT = 6,
    /// Tokenizer or chat-template failure (a model without a chat template included).
    BITNET_ERR_TOKENIZER = 7,
    /// The session is in use by another call (another thread, or the session's own
    /// generation callback); sessions take one call at a time.
    BITNET_ERR_BUSY = 8,
    /// Memory for the request could not be allocated.
    BITNET_ERR_OUT_OF_MEMORY = 9,
    /// A bug inside the library: a panic, caught at the boundary. The object the call was
    /// working on should not be used further.
    BITNET_ERR_INTERNAL = 10,
}

use bitnet_status::*;

/// A failure on its way to C: the code to return and the message for `bitnet_last_error`.
#[derive(Debug)]
pub struct Error {
    pub status: bitnet_status,
    pub message: String,
}

impl Error {
    pub fn new(status: bitnet_status, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }

    pub fn null(what: &str) -> Error {
        Error::new(BITNET_ERR_NULL_ARGUMENT, format!("{what} is NULL"))
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(BITNET_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<bitnet_inference::EngineError> for Error {
    fn from(e: bitnet_inference::EngineError) -> Error {
        use bitnet_inference::EngineError as E;
        // The same classes as the CLI's exit codes, so C callers can map them the same way.
        let status = match &e {
            E::Model(_) => BITNET_ERR_MODEL,
            E::PromptTooLong { .. }
            | E::ContextFull { .. }
            | E::BadToken { .. }
            | E::EmptyPrompt
            | E::BadInput(_) => BITNET_ERR_DOES_NOT_FIT,
            // The model's numbers are broken: a model problem, as the CLI's exit code 3 says
            // for non-finite weights.
            E::NotFinite { .. } => BITNET_ERR_MODEL,
            E::Tokenizer(t) => tokenizer_status(t),
            E::Settings(_) => BITNET_ERR_INVALID_ARGUMENT,
            // A device that cannot be used or fails: the CLI's generic exit code 1.
            E::ThreadPool(_) | E::Backend(_) => BITNET_ERR_INTERNAL,
        };
        Error::new(status, e.to_string())
    }
}

/// A text too large for the context does not fit; the model file's own unusable chat template
/// is a model problem; the rest are tokenizer errors.
fn tokenizer_status(e: &bitnet_tokenizers::TokenizerError) -> bitnet_status {
    use bitnet_tokenizers::TokenizerError as T;
    match e {
        T::InputTooLarge(_) => BITNET_ERR_DOES_NOT_FIT,
        T::InvalidTemplate(_) => BITNET_ERR_MODEL,
        _ => BITNET_ERR_TOKENIZER,
    }
}

impl From<bitnet_tokenizers::TokenizerError> for Error {
    fn from(e: bitnet_tokenizers::TokenizerError) -> Error {
        Error::new(tokenizer_status(&e), e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

thread_local! {
    /// The message of this thread's last failed call, NUL-terminated for C.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Interior NULs would cut the message short in C; show them instead of dropping the rest.
    let clean = message.replace('\0', "\\0");
    let c = CString::new(clean).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = c);
}

/// Runs an exported function's body: a returned error or a panic becomes a status code and
/// this thread's last-error message. Nothing unwinds past this point.
pub fn guard(name: &str, body: impl FnOnce() -> Result<()>) -> bitnet_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => BITNET_OK,
        Ok(Err(e)) => {
            set_last_error(&format!("{name}: {}", e.message));
            e.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            set_last_error(&format!("{name}: internal error (panic): {what}"));
            BITNET_ERR_INTERNAL
        }
    }
}

/// The message of the last call on this thread that did not return `BITNET_OK`, or "" if
/// none failed yet. The string belongs to the library and stays valid until the next failing
/// call on this thread.
///
/// Thread-safety: thread-safe; each thread has its own message.
#[no_mangle]
pub extern "C" fn bitnet_last_error() -> *const c_char {
    // Reading a thread-local cannot fail short of the thread being torn down, where there is
    // no message to give.
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// A short, static description of a status code ("invalid handle"); never NULL, also for
/// values outside the enum.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_status_str(status: i32) -> *const c_char {
    let s: &'static CStr = match status {
        0 => c"ok",
        1 => c"null argument",
        2 => c"invalid handle",
        3 => c"invalid argument",
        4 => c"buffer too small",
        5 => c"invalid or unreadable model",
        6 => c"input does not fit",
        7 => c"tokenizer error",
        8 => c"session busy",
        9 => c"out of memory",
        10 => c"internal error",
        _ => c"unknown status",
    };
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: bitnet_last_error returns a NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(bitnet_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let status = guard("bitnet_test", || panic!("boom {}", 42));
        assert_eq!(status, BITNET_ERR_INTERNAL);
        assert_eq!(last_error(), "bitnet_test: internal error (panic): boom 42");
    }

    #[test]
    fn an_error_sets_the_message_and_success_keeps_it() {
        let status = guard("bitnet_x", || Err(Error::null("out")));
        assert_eq!(status, BITNET_ERR_NULL_ARGUMENT);
        assert_eq!(last_error(), "bitnet_x: out is NULL");
        assert_eq!(guard("bitnet_y", || Ok(())), BITNET_OK);
        assert_eq!(last_error(), "bitnet_x: out is NULL");
    }

    #[test]
    fn messages_are_per_thread() {
        guard("main", || Err(Error::invalid("here")));
        let other = std::thread::spawn(|| {
            let before = last_error();
            guard("other", || Err(Error::invalid("there")));
            (before, last_error())
        })
        .join()
        .unwrap();
        assert_eq!(other, (String::new(), "other: there".to_string()));
        assert_eq!(last_error(), "main: here");
    }

    #[test]
    fn every_status_has_a_description() {
        for code in 0..=10 {
            // SAFETY: bitnet_status_str returns a static NUL-terminated string, never NULL.
            let s = unsafe { CStr::from_ptr(bitnet_status_str(code)) };
            assert_ne!(s.to_bytes(), b"unknown status", "code {code}");
        }
        // SAFETY: as above.
        let s = unsafe { CStr::from_ptr(bitnet_status_str(-7)) };
        assert_eq!(s.to_bytes(), b"unknown status");
    }
}
