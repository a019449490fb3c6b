//! WebAssembly kernels: [`simd128::Simd128`] (built with `+simd128`, a compile-time choice).

pub(crate) mod simd128;
