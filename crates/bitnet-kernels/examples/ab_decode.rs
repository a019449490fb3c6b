//! The one-token (decode) ternary kernels of every SIMD ISA this CPU supports, side by side: calls
//! interleaved round-robin (so a noisy machine slows them alike), each on a different matrix of
//! a 1 GiB huge-page arena (so every call streams its weights from DRAM, as decoding a real model
//! does), on the spinning pool the engine uses. Prints min / p25 / median / mean microseconds per
//! call and the bandwidth the mean implies.
//!
//! ```text
//! cargo run --release -p bitnet-kernels --example ab_decode -- [threads] [calls]
//! ```

use bitnet_common::ArenaBuilder;
use bitnet_kernels::{
    pool::ThreadPool, ternary_matmul_with, Isa, QuantizedActivations, TernaryMatrix,
};
use std::time::Instant;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let threads = args.next().unwrap_or(2);
    let calls = args.next().unwrap_or(250).max(1);
    let pool = ThreadPool::new(threads).expect("thread pool");
    let isas: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&i| i != Isa::Scalar && i.is_supported())
        .collect();
    println!("threads {threads}, {calls} calls per kernel; min / p25 / median / mean us per call");
    for (rows, cols) in [(2560usize, 2560usize), (6912, 2560), (2560, 6912)] {
        let bytes = rows * cols / 4;
        let n = (1usize << 30) / bytes;
        // Random codes 0..=2 (never 3, which the loader rejects), four per byte.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut arena = ArenaBuilder::new(n * bytes).expect("arena");
        let data = arena
            .push_with(n * bytes, |buf| {
                for b in buf.iter_mut() {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    let r = (state >> 32) as u32;
                    *b = (0..4).fold(0u8, |acc, i| acc << 2 | ((r >> (8 * i)) % 3) as u8);
                }
            })
            .expect("arena push");
        let mats: Vec<TernaryMatrix> = (0..n)
            .map(|i| {
                let slice = data.slice(i * bytes, bytes).expect("in range");
                TernaryMatrix::from_i2s(rows, cols, slice, 1.0).expect("valid codes")
            })
            .collect();
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut a = QuantizedActivations::new();
        a.quantize(&x, 1, cols);
        let mut out = vec![0f32; rows];
        let mut times = vec![Vec::with_capacity(calls); isas.len()];
        pool.install(|| {
            for call in 0..calls {
                for (k, &isa) in isas.iter().enumerate() {
                    let m = &mats[(call * isas.len() + k) % n];
                    let t = Instant::now();
                    ternary_matmul_with(isa, m, &a, &mut out);
                    times[k].push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
        });
        println!("{rows}x{cols}");
        for (isa, t) in isas.iter().zip(&mut times) {
            t.sort_by(f64::total_cmp);
            let q = |f: usize| t[(t.len() - 1) * f / 4];
            let mean = t.iter().sum::<f64>() / t.len() as f64;
            println!(
                "  {:>14} {:8.1} {:8.1} {:8.1} {:8.1}  ({:.1} GB/s at the mean)",
                isa.name(),
                t[0],
                q(1),
                q(2),
                mean,
                bytes as f64 / mean / 1e3
            );
        }
    }
}
