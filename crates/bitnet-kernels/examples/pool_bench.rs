//! Fixed cost of one parallel loop on the spinning pool and on rayon: the time of `n`-index
//! loops whose tasks do almost nothing, which is what a decode step pays ~150 times per token on
//! top of its memory traffic.
//!
//! ```text
//! cargo run --release -p bitnet-kernels --example pool_bench -- [THREADS ...]
//! ```

use bitnet_kernels::pool::{parallel_for, ThreadPool};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Microseconds per loop of `n` tasks that each busy-wait `task_us`, minus the ideal time
/// (`ceil(n / threads)` tasks back to back): the loop's own cost.
fn time_loops(n: usize, threads: usize, task_us: f64, iters: usize) -> f64 {
    let sink = AtomicUsize::new(0);
    let t = Instant::now();
    for _ in 0..iters {
        parallel_for(n, |i| {
            let t0 = Instant::now();
            while t0.elapsed().as_secs_f64() * 1e6 < task_us {
                sink.fetch_add(black_box(i) & 1, Ordering::Relaxed);
            }
        });
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
    per - n.div_ceil(threads) as f64 * task_us
}

fn main() {
    let threads: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let threads = if threads.is_empty() {
        vec![2, 4, 8, 16]
    } else {
        threads
    };
    println!("tasks of 5 us each; loop cost = time per loop - ceil(tasks / threads) * 5 us");
    println!("threads  tasks   spin us/loop  rayon us/loop");
    for &t in &threads {
        let pool = match ThreadPool::new(t) {
            Ok(p) => p,
            Err(e) => return eprintln!("{t} threads: {e}"),
        };
        let rayon = match rayon::ThreadPoolBuilder::new().num_threads(t).build() {
            Ok(p) => p,
            Err(e) => return eprintln!("{t} threads: {e}"),
        };
        for n in [t, 4 * t] {
            let spin = pool.install(|| {
                time_loops(n, t, 5.0, 200);
                time_loops(n, t, 5.0, 5000)
            });
            let ray = rayon.install(|| {
                time_loops(n, t, 5.0, 200);
                time_loops(n, t, 5.0, 5000)
            });
            println!("{t:>7} {n:>6} {spin:>14.2} {ray:>14.2}");
        }
    }
}
