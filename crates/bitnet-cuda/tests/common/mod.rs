//! What both GPU test files need: opening the GPU (a skip without one, a failure with
//! `BITNET_REQUIRE_CUDA=1`) and a small deterministic generator for test data.

// Each test binary uses its own subset.
#![allow(dead_code)]

use bitnet_cuda::Gpu;

/// `BITNET_REQUIRE_CUDA=1`: a missing GPU fails the tests instead of skipping them (set on the
/// lent GPU machine, so a broken driver setup cannot pass as "skipped").
pub fn required() -> bool {
    std::env::var_os("BITNET_REQUIRE_CUDA").is_some_and(|v| v == "1")
}

/// GPU 0, or `None` (the test returns early) where there is none and none is required.
pub fn gpu() -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e) if !required() => {
            eprintln!("no GPU here ({e}); set BITNET_REQUIRE_CUDA=1 where one must exist");
            None
        }
        Err(e) => panic!("BITNET_REQUIRE_CUDA=1 but {e}"),
    }
}

/// xorshift64: the same data on every machine, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}
