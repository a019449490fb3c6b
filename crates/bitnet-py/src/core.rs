//! The engine side of a `bitnet.Model`, free of Python types so it can move to worker threads.

use bitnet_inference::{Engine, EngineError, GenerateOptions, Generation, Session};
use std::sync::{Mutex, TryLockError};

pub struct Core {
    pub engine: Engine,
    /// Context size of every session this model opens.
    pub ctx: usize,
    /// Kept between calls so that a prompt extending the previous one (a chat) reuses its cache.
    session: Mutex<Session>,
}

impl Core {
    pub fn new(engine: Engine, ctx: Option<usize>) -> Result<Core, EngineError> {
        let session = engine.session(ctx)?;
        Ok(Core {
            ctx: session.ctx_size(),
            engine,
            session: Mutex::new(session),
        })
    }

    /// Runs `f` on the model's session, or on a new one while another thread holds it, so calls
    /// from several Python threads run side by side instead of queueing.
    pub fn with_session<R>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R, EngineError>,
    ) -> Result<R, EngineError> {
        match self.session.try_lock() {
            Ok(mut s) => f(&mut s),
            Err(TryLockError::Poisoned(p)) => {
                // A panic left the cache in an unknown state: start it afresh.
                let mut s = p.into_inner();
                s.reset();
                self.session.clear_poison();
                f(&mut s)
            }
            Err(TryLockError::WouldBlock) => f(&mut self.engine.session(Some(self.ctx))?),
        }
    }

    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation, EngineError> {
        self.with_session(|s| s.generate(prompt, opts, on_text))
    }
}
