//! Shared helpers for the kernel tests (in a directory so cargo does not build it as a test).
#![allow(dead_code)]

use bitnet_kernels::Isa;
use std::sync::OnceLock;

/// A pool the kernels can run on: rayon's, or the crate's spinning pool.
pub enum Pool {
    Rayon(rayon::ThreadPool),
    Spin(bitnet_kernels::pool::ThreadPool),
}

impl Pool {
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Pool::Rayon(p) => p.install(f),
            Pool::Spin(p) => p.install(f),
        }
    }

    pub fn current_num_threads(&self) -> usize {
        match self {
            Pool::Rayon(p) => p.current_num_threads(),
            Pool::Spin(p) => p.threads(),
        }
    }
}

/// Rayon pools of 1, 2 and 3 threads and spinning pools of 2 and 3, built once per test binary.
/// On wasm32 (no threads) one single-thread spinning pool, which runs every loop inline.
pub fn pools() -> &'static [Pool] {
    static POOLS: OnceLock<Vec<Pool>> = OnceLock::new();
    #[cfg(target_family = "wasm")]
    return POOLS.get_or_init(|| {
        vec![Pool::Spin(
            bitnet_kernels::pool::ThreadPool::new(1).unwrap(),
        )]
    });
    #[cfg(not(target_family = "wasm"))]
    POOLS.get_or_init(|| {
        let rayon = (1..=3).map(|n| {
            Pool::Rayon(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap(),
            )
        });
        let spin = (2..=3).map(|n| Pool::Spin(bitnet_kernels::pool::ThreadPool::new(n).unwrap()));
        rayon.chain(spin).collect()
    })
}

/// Every ISA this CPU can run; tests compare each against the scalar reference. Notes once per
/// test binary (stderr; shown with `--nocapture`) which ISAs are skipped on this CPU.
pub fn isas() -> Vec<Isa> {
    static NOTE: std::sync::Once = std::sync::Once::new();
    let all = Isa::ALL;
    NOTE.call_once(|| {
        for isa in all.iter().filter(|i| !i.is_supported()) {
            eprintln!(
                "note: {} not supported by this CPU; its kernels are not tested",
                isa.name()
            );
        }
    });
    all.into_iter().filter(|i| i.is_supported()).collect()
}

/// Small deterministic PRNG (xorshift*) so tests need no extra dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn ternary(&mut self) -> i8 {
        (self.next_u64() % 3) as i8 - 1
    }
}
