//! NVIDIA GPU kernels for BitNet b1.58 (issue 11): the device, run-time kernel compilation,
//! the ternary matmul and the whole forward pass, behind `bitnet_backend`'s seam
//! ([`CudaBackend`], [`CudaContext`]: a paged KV cache, batches of sequences, decode steps
//! replayed as a CUDA graph).
//!
//! Nothing here needs a CUDA toolkit at build time: `libcuda` and `libnvrtc` are opened when a
//! GPU is first asked for ([`Gpu::open`]), kernels are compiled from the CUDA C++ sources in
//! `kernels/` by NVRTC for the GPU found, and the PTX is cached on disk. Without a driver,
//! [`Gpu::open`] is a clear error, never a panic, and the CPU path is untouched.
//!
//! Numerics: the integer parts are exact (the same `sum t * q` as the CPU kernels) and the
//! float epilogues use the same IEEE operations in the same order (`__fdiv_rn`, `__fmul_rn`,
//! `rintf`), so the GPU ternary matmul and activation quantization are bit-identical to
//! `bitnet_kernels` (tested in `tests/cuda_ops.rs` on the lent GPU machine).

mod backend;
mod compile;
mod decode;
mod device;
mod error;
mod model;
mod ops;
mod sample;
mod ternary;

pub use backend::{CudaBackend, CudaContext};
pub use device::{Gpu, GpuInfo};
pub use error::CudaError;
pub use model::GpuModel;
pub use ops::{
    push_flash_tiles, ArgmaxScratch, AttnDims, AttnSplit, GpuDense, NormInput, PagedBatch,
    FLASH_TILE, MAX_HEAD_DIM,
};
pub use sample::TopKScratch;
pub use ternary::{GpuActivations, GpuTernaryMatrix, TernaryKernel};
