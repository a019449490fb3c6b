//! The threads a forward pass runs its kernels on.

use crate::error::{EngineError, Result};

/// The spinning pool is the default (see `bitnet_kernels::pool` for why); `BITNET_POOL=rayon`
/// picks rayon's work-stealing pool, to measure one against the other.
pub(crate) enum Pool {
    Spin(bitnet_kernels::pool::ThreadPool),
    Rayon(rayon::ThreadPool),
}

impl Pool {
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Pool::Spin(p) => p.install(f),
            Pool::Rayon(p) => p.install(f),
        }
    }
}

pub(crate) fn build_pool(threads: usize) -> Result<Pool> {
    let err = |e: &dyn std::fmt::Display| {
        EngineError::ThreadPool(format!(
            "cannot start {threads} worker threads: {e}; use fewer threads"
        ))
    };
    match std::env::var("BITNET_POOL").as_deref() {
        Ok("rayon") => rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bitnet-worker-{i}"))
            .build()
            .map(Pool::Rayon)
            .map_err(|e| err(&e)),
        Ok("spin") | Ok("") | Err(_) => bitnet_kernels::pool::ThreadPool::new(threads)
            .map(Pool::Spin)
            .map_err(|e| err(&e)),
        Ok(other) => Err(EngineError::ThreadPool(format!(
            "BITNET_POOL={other}: expected spin or rayon"
        ))),
    }
}
