//! `Model.stream`: generation on its own thread, text pieces handed to a Python iterator.
//!
//! The engine thread never waits for Python (an unbounded channel), so a slow consumer costs no
//! decoding speed; dropping or closing the iterator makes the next send fail, which stops the
//! generation at that token.

use crate::core::Core;
use crate::errors::{self, raise, Kind};
use crate::model::Completion;
use bitnet_inference::{EngineError, GenerateOptions, Generation};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};

enum Msg {
    Text(String),
    Done(Result<Generation, EngineError>),
}

/// An iterator over the pieces of text of a generation, as they are decoded.
///
/// Iterating releases the GIL while it waits. `completion` holds the result (tokens, finish
/// reason, timings) once the iterator is exhausted. Leaving a `for` loop early, `close()`, or
/// dropping the iterator stops the generation.
#[pyclass(frozen, module = "bitnet")]
pub struct TextStream {
    /// `None` once the generation has ended or the stream was closed.
    rx: Mutex<Option<Receiver<Msg>>>,
    cancel: Arc<AtomicBool>,
    completion: Mutex<Option<Completion>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TextStream {
    pub fn start(core: Arc<Core>, prompt: Vec<u32>, opts: GenerateOptions) -> PyResult<TextStream> {
        // What the engine would report from the thread, raised here instead of at the first
        // `next()`, where a caller would not expect it.
        if prompt.is_empty() {
            return Err(errors::engine(EngineError::EmptyPrompt));
        }
        if prompt.len() > core.ctx {
            return Err(errors::engine(EngineError::PromptTooLong {
                prompt: prompt.len(),
                ctx: core.ctx,
            }));
        }
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancel);
        std::thread::Builder::new()
            .name("bitnet-stream".into())
            .spawn(move || {
                let result = core.generate(&prompt, &opts, |t| {
                    !stop.load(Ordering::Relaxed) && tx.send(Msg::Text(t.to_owned())).is_ok()
                });
                let _ = tx.send(Msg::Done(result));
            })
            .map_err(|e| raise(Kind::Base, format!("cannot start a generation thread: {e}")))?;
        Ok(TextStream {
            rx: Mutex::new(Some(rx)),
            cancel,
            completion: Mutex::new(None),
        })
    }
}

enum Next {
    Text(String),
    End,
    Failed(EngineError),
    Lost,
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let next = py.detach(|| {
            let mut rx = lock(&self.rx);
            let Some(r) = rx.as_ref() else {
                return Next::End;
            };
            let next = match r.recv() {
                Ok(Msg::Text(t)) => return Next::Text(t),
                Ok(Msg::Done(Ok(g))) => {
                    *lock(&self.completion) = Some(Completion::from(g));
                    Next::End
                }
                Ok(Msg::Done(Err(e))) => Next::Failed(e),
                Err(_) => Next::Lost,
            };
            *rx = None;
            next
        });
        match next {
            Next::Text(t) => Ok(Some(t)),
            Next::End => Ok(None),
            Next::Failed(e) => Err(errors::engine(e)),
            Next::Lost => Err(raise(
                Kind::Base,
                "the generation thread ended without a result (it panicked; see stderr)",
            )),
        }
    }

    /// Stops the generation; the iterator then ends. Safe to call more than once.
    fn close(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        *lock(&self.rx) = None;
    }

    /// The finished generation (`Completion`), or None while it is running or if it was
    /// stopped by `close()`.
    #[getter]
    fn completion(&self) -> Option<Completion> {
        lock(&self.completion).clone()
    }
}
