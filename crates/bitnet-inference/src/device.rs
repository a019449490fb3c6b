//! The one place a [`Device`] becomes a [`Backend`].

use crate::cpu::CpuBackend;
use crate::error::Result;
use bitnet_backend::{Backend, Device};
use bitnet_models::LoadedModel;
use std::sync::Arc;

/// The backend for `device` over `model`; `threads` are the CPU backend's worker threads.
pub(crate) fn open(
    device: Device,
    model: &Arc<LoadedModel>,
    threads: usize,
) -> Result<Arc<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Arc::new(CpuBackend::new(Arc::clone(model), threads)?)),
        Device::Cuda(ordinal) => cuda(ordinal, model),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize, model: &LoadedModel) -> Result<Arc<dyn Backend>> {
    use bitnet_backend::BackendError as E;
    // The backend's messages say what is missing; the prefix says which device was asked for.
    let named = |m: String| format!("device cuda:{ordinal}: {m}");
    let b = bitnet_cuda::CudaBackend::load(ordinal, &model.weights).map_err(|e| match e {
        E::Unavailable(m) => E::Unavailable(named(m)),
        E::Unsupported(m) => E::Unsupported(named(m)),
        E::Device(m) => E::Device(named(m)),
        other => other,
    })?;
    Ok(Arc::new(b))
}

/// Refused, never run on the CPU instead: whoever asked for a GPU wants to know they have none.
#[cfg(not(feature = "cuda"))]
fn cuda(ordinal: usize, _model: &LoadedModel) -> Result<Arc<dyn Backend>> {
    Err(no_cuda(ordinal))
}

/// Whether this build can drive `device` at all, checked before a model is loaded for it: a
/// build without the `cuda` feature refuses CUDA at once. Whether a GPU is really there is only
/// known when the backend opens it.
pub fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => Ok(()),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(ordinal) => Err(no_cuda(ordinal)),
    }
}

#[cfg(not(feature = "cuda"))]
fn no_cuda(ordinal: usize) -> crate::EngineError {
    crate::EngineError::Backend(bitnet_backend::BackendError::Unavailable(format!(
        "device cuda:{ordinal}: this bitnet was built without CUDA support (cargo feature `cuda`)"
    )))
}
