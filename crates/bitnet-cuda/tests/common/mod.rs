//! What both GPU test files need: opening the GPU (a skip without one, a failure with
//! `BITNET_REQUIRE_CUDA=1`), a small deterministic generator for test data, a bit-for-bit
//! comparison, and the LM head run both ways (many rows at once, one row alone).

// Each test binary uses its own subset.
#![allow(dead_code)]

use bitnet_cuda::{Gpu, GpuDense};

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

/// Whether two float slices are the same bits (-0 is not 0, and NaNs compare by their bits).
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The head `g` over the `tokens` rows of `x` at once (`Gpu::head_rows`), and each row listed in
/// `alone` by itself (`Gpu::head`): (every row's logits, the lone rows' logits in that order).
/// The scratch is what the backend gives a Q8_0 head (as many codes, a scale per 32), which is
/// also enough for Q6_K's Q8_K activations.
pub fn head_many_and_alone(
    gpu: &Gpu,
    g: &GpuDense,
    x: &[f32],
    tokens: usize,
    alone: &[usize],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (rows, cols) = (g.rows(), x.len() / tokens);
    let xd = gpu.stream().clone_htod(x).unwrap();
    let mut q8 = gpu.stream().alloc_zeros::<i8>(tokens * cols).unwrap();
    let mut d8 = gpu.stream().alloc_zeros::<f32>(tokens * cols / 32).unwrap();
    let mut many = gpu.stream().alloc_zeros::<f32>(tokens * rows).unwrap();
    gpu.head_rows(
        g,
        &xd.slice(..),
        tokens,
        &mut q8,
        &mut d8,
        &mut many.slice_mut(..),
    )
    .unwrap();
    let ones = alone
        .iter()
        .map(|&t| {
            let mut one = gpu.stream().alloc_zeros::<f32>(rows).unwrap();
            gpu.head(
                g,
                &xd.slice(t * cols..(t + 1) * cols),
                &mut q8,
                &mut d8,
                &mut one.slice_mut(..),
            )
            .unwrap();
            gpu.stream().clone_dtoh(&one).unwrap()
        })
        .collect();
    (gpu.stream().clone_dtoh(&many).unwrap(), ones)
}
