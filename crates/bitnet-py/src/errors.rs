//! The module's exceptions and how engine errors map onto them.
//!
//! `InputError` is also a `ValueError` (so `except ValueError` code keeps working), which needs
//! two bases; `create_exception!` takes one, so the classes are defined in Python at import.

use bitnet_inference::EngineError;
use bitnet_tokenizers::TokenizerError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

const CLASSES: &std::ffi::CStr = cr#"
class BitnetError(Exception):
    """Base class of every error raised by bitnet; the message is the engine's."""
    __module__ = "bitnet"


class ModelError(BitnetError):
    """The model file or folder is missing, unreadable or invalid (the CLI's exit code 3)."""
    __module__ = "bitnet"


class InputError(BitnetError, ValueError):
    """An argument the engine rejects: a prompt longer than the context, a token id outside the
    vocabulary, an empty prompt, an invalid sampling setting (the CLI's exit codes 2 and 4)."""
    __module__ = "bitnet"
"#;

static TYPES: PyOnceLock<[Py<PyType>; 3]> = PyOnceLock::new();

#[derive(Clone, Copy)]
pub enum Kind {
    Base = 0,
    Model = 1,
    Input = 2,
}

fn types(py: Python<'_>) -> PyResult<&[Py<PyType>; 3]> {
    TYPES.get_or_try_init(py, || {
        let m = PyModule::from_code(py, CLASSES, c"bitnet/errors.py", c"bitnet_errors")?;
        let get = |name: &str| -> PyResult<Py<PyType>> {
            Ok(m.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        Ok([get("BitnetError")?, get("ModelError")?, get("InputError")?])
    })
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    for (name, ty) in ["BitnetError", "ModelError", "InputError"]
        .iter()
        .zip(types(py)?)
    {
        m.add(*name, ty.bind(py))?;
    }
    Ok(())
}

/// An exception of `kind` carrying `msg`.
pub fn raise(kind: Kind, msg: impl Into<String>) -> PyErr {
    let msg = msg.into();
    Python::attach(|py| match types(py) {
        Ok(t) => PyErr::from_type(t[kind as usize].bind(py).clone(), msg),
        // Only if the class definitions above failed to run, which they do not.
        Err(_) => PyRuntimeError::new_err(msg),
    })
}

/// The error and its causes, "outer: inner: ...", as the CLI prints them (anyhow's `{:#}`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        // Transparent wrappers repeat their source's text.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The class an engine error belongs to, following the CLI's exit codes.
fn kind_of(e: &EngineError) -> Kind {
    match e {
        EngineError::Model(_) => Kind::Model,
        EngineError::PromptTooLong { .. }
        | EngineError::ContextFull { .. }
        | EngineError::BadToken { .. }
        | EngineError::EmptyPrompt
        | EngineError::BadInput(_)
        | EngineError::Settings(_) => Kind::Input,
        // Non-finite results: the model's numbers are broken.
        EngineError::NotFinite { .. } => Kind::Model,
        EngineError::Tokenizer(t) => tokenizer_kind(t),
        EngineError::ThreadPool(_) | EngineError::Backend(_) => Kind::Base,
    }
}

fn tokenizer_kind(e: &TokenizerError) -> Kind {
    match e {
        // Caused by what the caller passed: an id to decode, messages the template rejects.
        TokenizerError::UnknownId { .. }
        | TokenizerError::Template(_)
        | TokenizerError::InputTooLarge(_) => Kind::Input,
        // The model file's own template is unusable.
        TokenizerError::InvalidTemplate(_) => Kind::Model,
        _ => Kind::Base,
    }
}

pub fn engine(e: EngineError) -> PyErr {
    raise(kind_of(&e), chain(&e))
}

pub fn tokenizer(e: TokenizerError) -> PyErr {
    raise(tokenizer_kind(&e), chain(&e))
}
