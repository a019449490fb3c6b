//! aarch64 kernels: [`neon::Neon`] (Advanced SIMD) and [`neon::NeonDot`] (plus the dot-product
//! extension's `sdot`).

pub(crate) mod neon;
