//! Python arguments -> engine inputs: prompts, token id lists, chat messages.

use crate::errors::{raise, Kind};
use bitnet_tokenizers::ChatMessage;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyMapping, PyString};

pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A `str`, or a sequence of token ids.
pub fn prompt_ids(v: &Bound<'_, PyAny>) -> PyResult<Prompt> {
    if v.is_instance_of::<PyString>() {
        return Ok(Prompt::Text(v.extract()?));
    }
    token_ids(v).map(Prompt::Ids).map_err(|e| {
        if e.is_instance_of::<PyTypeError>(v.py()) {
            PyTypeError::new_err(format!(
                "prompt must be a str or a sequence of token ids, not {}",
                type_name(v)
            ))
        } else {
            e
        }
    })
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A sequence of ints (a list, a tuple, a NumPy array). A negative id is an `InputError`
/// naming it, like an id past the vocabulary (which the engine reports).
pub fn token_ids(v: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    // A str is a sequence too, of one-character strings: say what was meant instead.
    if v.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "expected a sequence of token ids, not str (use Model.tokenize)",
        ));
    }
    let ids: Vec<i64> = v.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "expected a sequence of int token ids, not {}",
            type_name(v)
        ))
    })?;
    ids.into_iter()
        .map(|id| {
            u32::try_from(id).map_err(|_| {
                raise(
                    Kind::Input,
                    format!("token id {id} is not a valid token id"),
                )
            })
        })
        .collect()
}

/// A sequence of {"role": str, "content": str} mappings.
pub fn messages(v: &Bound<'_, PyAny>) -> PyResult<Vec<ChatMessage>> {
    if v.is_instance_of::<PyString>() || v.cast::<PyMapping>().is_ok() {
        return Err(PyTypeError::new_err(
            "messages must be a list of {\"role\": ..., \"content\": ...} dicts",
        ));
    }
    let items: Vec<Bound<'_, PyAny>> = v.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "messages must be a list of dicts, not {}",
            type_name(v)
        ))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |key: &str| -> PyResult<String> {
                let bad = || {
                    PyTypeError::new_err(format!(
                        "messages[{i}] must be a mapping with str \"role\" and \"content\""
                    ))
                };
                let value = m.get_item(key).map_err(|_| bad())?;
                value.extract().map_err(|_| bad())
            };
            Ok(ChatMessage::new(field("role")?, field("content")?))
        })
        .collect()
}
