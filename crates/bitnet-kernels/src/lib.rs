//! CPU kernels for bitnet-rs behind one runtime dispatch.
//!
//! - [`ternary_matmul`]: I2_S-layout ternary weights x per-token int8 activations, integer
//!   accumulation, `y = acc / s_x * w_scale` (transformers AutoBitLinear / bitnet.cpp semantics).
//! - [`DenseMatrixExt::matmul`]: F32/F16/BF16/Q8_0/Q6_K matrices (embeddings, tied LM head).
//! - [`ops`]: the f32 vector ops of the forward pass.
//!
//! Each kernel has a scalar reference (`*_scalar`, public so tests can compare) and SIMD
//! versions in their own modules: AVX2 (the ternary matmul also AVX-512 VNNI, and AMX tiles for
//! batches) on x86-64, NEON
//! (the ternary matmul and the Q8_0 / Q6_K dots also NEON + dot product) on aarch64, SIMD128 on
//! wasm32 builds with `+simd128` (WebAssembly has no run-time detection: a module with SIMD
//! instructions does not even load without it, so there it is a compile-time choice). Which one
//! runs is decided once per process by [`detected_isa`] (runtime CPU detection, so a generic
//! release binary still gets AVX2 / AVX-512 / `sdot`). The integer kernels (and the Q8_0 / Q6_K
//! dots) are bit-exact across ISAs and thread counts; the float ones agree to rounding.
//!
//! The matrix types themselves ([`TernaryMatrix`], [`DenseMatrix`]) are
//! `bitnet_quantization`'s, re-exported here; this crate only computes with them.
//!
//! The modules form a one-way graph:
//! - leaves: `isa` (what the CPU supports), `kernel` (the kernel traits), [`pool`];
//! - implementations of the traits: `scalar`, `x86/` (`avx2`, `avx512`; `amx`, the batched
//!   ternary driver on tile registers that `ternary` hands batches to), `arm/` (`neon`),
//!   `wasm/` (`simd128`);
//! - `dispatch`: the one map from [`Isa`] to an implementation;
//! - drivers, generic over the traits: `matmul` (the one matmul driver and its tile constants),
//!   then `ternary`, `dense` and `activations` (its operands and entry points), and [`ops`].

mod isa;
mod kernel;
pub mod pool;
mod scalar;

#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
mod x86;

mod dispatch;

mod activations;
mod dense;
mod matmul;
pub mod ops;
mod ternary;

pub use activations::QuantizedActivations;
pub use bitnet_quantization::matrix::{
    DenseMatrix, DenseType, MatrixError, MatrixError as KernelError, TernaryMatrix, MAX_COLS,
};
pub use dense::DenseMatrixExt;
pub use isa::{detected_isa, splits_512bit_vectors, Isa};
pub use pool::PAR_ROWS;
pub use ternary::{
    ternary_matmul, ternary_matmul_i32, ternary_matmul_i32_scalar, ternary_matmul_i32_with,
    ternary_matmul_many, ternary_matmul_many_with, ternary_matmul_scalar, ternary_matmul_with,
};

pub(crate) use isa::check_isa;
