//! CPU kernels for bitnet-rs behind one runtime dispatch.
//!
//! - [`ternary_matmul`]: I2_S-layout ternary weights x per-token int8 activations, integer
//!   accumulation, `y = acc / s_x * w_scale` (transformers AutoBitLinear / bitnet.cpp semantics).
//! - [`DenseMatrix::matmul`]: F32/F16/BF16 matrices (embeddings, tied LM head).
//! - [`ops`]: the f32 vector ops of the forward pass.
//!
//! Each kernel has a scalar reference (`*_scalar`, public so tests can compare) and an AVX2
//! version in its own module; which one runs is decided once per process by [`detected_isa`]
//! (runtime CPU detection, so a generic release binary still gets AVX2). The integer kernels
//! are bit-exact across ISAs and thread counts; the float ones agree to rounding.

mod dense;
pub mod ops;
mod scalar;
mod ternary;

#[cfg(target_arch = "x86_64")]
mod avx2;

pub use dense::{DenseMatrix, DenseType};
pub use ternary::{
    ternary_matmul, ternary_matmul_i32, ternary_matmul_i32_scalar, ternary_matmul_i32_with,
    ternary_matmul_scalar, ternary_matmul_with, QuantizedActivations, TernaryMatrix,
};

use std::sync::OnceLock;

/// Instruction sets with a kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust; the reference every other ISA is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell / Zen and later).
    Avx2,
}

impl Isa {
    /// Whether this CPU can run the ISA's kernels (ignores `BITNET_FORCE_SCALAR`).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => avx2_supported(),
        }
    }

    /// Stable lower-case name for logs and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
        }
    }
}

fn avx2_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The ISA every dispatched kernel uses, decided on first call and fixed for the process.
/// `BITNET_FORCE_SCALAR=1` (read once, at that first call) forces [`Isa::Scalar`] for tests and
/// benchmarks.
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("BITNET_FORCE_SCALAR").is_ok_and(|v| !v.is_empty() && v != "0");
        if !forced && Isa::Avx2.is_supported() {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    })
}

/// Panics unless `isa` can run here: asking for AVX2 on a CPU without it is a caller bug, and
/// silently running scalar code instead would make an ISA comparison test meaningless.
pub(crate) fn check_isa(isa: Isa) {
    assert!(
        isa.is_supported(),
        "{isa:?} kernels requested but this CPU does not support them"
    );
}

/// Errors building kernel operands from model data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("size overflow computing {0}")]
    Overflow(&'static str),
    #[error(transparent)]
    Quant(#[from] bitnet_quantization::QuantError),
}

/// A raw output pointer shared by the tasks of one parallel kernel call. Each task writes a
/// disjoint set of elements (its own rows, for every token), which is what makes the `Send` /
/// `Sync` impls sound; the outputs of a row chunk are strided by `rows` when there are several
/// tokens, so `par_chunks_mut` cannot express the split.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<T>(*mut T);
unsafe impl<T: Send> Send for SharedOut<T> {}
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    pub(crate) fn new(out: &mut [T]) -> Self {
        SharedOut(out.as_mut_ptr())
    }

    /// # Safety
    /// `i` must be in bounds of the slice this was made from, and no other task may access
    /// element `i` during the call.
    #[inline(always)]
    pub(crate) unsafe fn write(self, i: usize, v: T) {
        unsafe { self.0.add(i).write(v) }
    }
}

/// Splits `rows` into chunks for rayon: enough chunks for load balance on the installed pool,
/// and at most `max_chunk_bytes` of weights per chunk so a chunk stays in L2 while every token
/// tile streams over it.
pub(crate) fn row_chunk(rows: usize, row_bytes: usize, max_chunk_bytes: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let balance = rows.div_ceil(threads * 4);
    let cache = (max_chunk_bytes / row_bytes.max(1)).max(1);
    balance.min(cache).max(1)
}
