//! Keyword arguments of the generating methods -> the engine's `GenerateOptions`.
//!
//! Five methods take the same sampling keywords, so they arrive as `**options` and are read here
//! once; an unknown keyword is a `TypeError`, as Python does for a misspelt argument. Omitted
//! keywords keep the engine's defaults (`SamplingParams::default()`, `GenerateOptions::default()`).

use crate::errors::{raise, Kind};
use bitnet_inference::GenerateOptions;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

/// Everything `generate` and friends accept besides the prompt.
pub struct Options {
    pub generate: GenerateOptions,
    /// Only for text prompts: `None` = the tokenizer's default.
    pub add_bos: Option<bool>,
}

/// A non-negative integer argument (a negative one is an `InputError`, not an `OverflowError`).
pub fn count(name: &str, v: &Bound<'_, PyAny>) -> PyResult<usize> {
    let n: i64 = v.extract()?;
    usize::try_from(n).map_err(|_| raise(Kind::Input, format!("{name} must be >= 0, got {n}")))
}

fn float(v: &Bound<'_, PyAny>) -> PyResult<f32> {
    Ok(v.extract::<f64>()? as f32)
}

/// `str` or a sequence of `str` (a bare string is one stop string, not its characters).
fn strings(v: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if v.is_instance_of::<PyString>() {
        return Ok(vec![v.extract()?]);
    }
    v.extract()
}

const KEYS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "ignore_eos",
    "add_bos",
];

/// Reads `options`; `allow_add_bos` is false where the prompt is not a text (chat messages).
pub fn parse(options: Option<&Bound<'_, PyDict>>, allow_add_bos: bool) -> PyResult<Options> {
    let mut out = Options {
        generate: GenerateOptions::default(),
        add_bos: None,
    };
    let Some(options) = options else {
        return Ok(out);
    };
    for (key, v) in options.iter() {
        let key: String = key.extract()?;
        if !(KEYS.contains(&key.as_str()) && (allow_add_bos || key != "add_bos")) {
            return Err(PyTypeError::new_err(format!(
                "unexpected keyword argument '{key}'"
            )));
        }
        // None means "the default" for every option, as in the stubs.
        if !v.is_none() {
            set(&mut out, &key, &v).map_err(|e| named(&key, e))?;
        }
    }
    // Checked here too (the engine checks again) so a bad value fails before any work starts.
    out.generate
        .sampling
        .validate()
        .map_err(|m| raise(Kind::Input, m))?;
    Ok(out)
}

fn set(out: &mut Options, key: &str, v: &Bound<'_, PyAny>) -> PyResult<()> {
    let g = &mut out.generate;
    let s = &mut g.sampling;
    match key {
        "max_tokens" => g.max_tokens = count(key, v)?,
        "temperature" => s.temperature = float(v)?,
        "top_k" => s.top_k = count(key, v)?,
        "top_p" => s.top_p = float(v)?,
        "min_p" => s.min_p = float(v)?,
        "repeat_penalty" => s.repeat_penalty = float(v)?,
        "repeat_last_n" => s.repeat_last_n = count(key, v)?,
        "presence_penalty" => s.presence_penalty = float(v)?,
        "frequency_penalty" => s.frequency_penalty = float(v)?,
        "seed" => s.seed = Some(count(key, v)? as u64),
        "stop" => g.stop = strings(v)?,
        "ignore_eos" => g.ignore_eos = v.extract()?,
        "add_bos" => out.add_bos = Some(v.extract()?),
        // parse() admits only KEYS.
        _ => {
            return Err(PyTypeError::new_err(format!(
                "unexpected keyword argument '{key}'"
            )))
        }
    }
    Ok(())
}

/// A `TypeError` from extracting an option names the option, as Python's own errors do.
fn named(key: &str, e: PyErr) -> PyErr {
    Python::attach(|py| {
        if e.is_instance_of::<PyTypeError>(py) {
            PyTypeError::new_err(format!("argument '{key}': {}", e.value(py)))
        } else {
            e
        }
    })
}
