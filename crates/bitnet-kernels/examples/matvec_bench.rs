//! Quick ternary matmul benchmark at bitnet-b1.58-2B-4T shapes (no criterion).
//!
//! ```text
//! cargo run --release -p bitnet-kernels --example matvec_bench -- [--threads N] [--min-ms N] [--iters N] [--cold-mib N] [--scalar | --isa NAME] [--no-dense | --only-dense] [--shapes RxC,..] [--tokens N,..] [--dense-shape RxC] [--spin]
//! ```
//!
//! `--shapes` replaces the ternary shapes (rows x cols, e.g. `1536x512,512x1536` for the KJV
//! model's gate/up and down) and `--tokens` the token counts (default 1 and 64). `--dense-shape`
//! replaces the head's (default 2B4T's 128256x2560; `4096x512` is the KJV model's, which stays in
//! cache, so its kernels' arithmetic shows instead of the memory's bandwidth).
//!
//! For each shape and token count it reports the time per call, the weight bandwidth
//! (packed weight bytes / time) and GOP/s counting one multiply-add as 2 ops, like a float
//! GEMM's GFLOP/s; GOP/cpu-s divides by the process CPU time instead of the wall time, which
//! stays meaningful on a machine shared with other jobs. "hot" reuses one matrix (it stays in cache); "cold" cycles through distinct
//! matrices covering `--cold-mib` (default 1024) so every call streams its weights from DRAM,
//! which is the decode situation for a real model. A plain read-bandwidth probe over the same
//! buffer gives the ceiling to compare the cold numbers with.

use bitnet_common::Storage;
use bitnet_kernels::{
    detected_isa, ternary_matmul_with, DenseMatrix, DenseMatrixExt, DenseType, Isa,
    QuantizedActivations, TernaryMatrix,
};
use rayon::prelude::*;
use std::time::Instant;

struct Args {
    threads: usize,
    iters: usize,
    min_ms: usize,
    skip_dense: bool,
    only_dense: bool,
    cold_mib: usize,
    isa: Isa,
    shapes: Option<Vec<(usize, usize)>>,
    tokens: Vec<usize>,
    dense_shape: (usize, usize),
    spin: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        threads: 0,
        iters: 20,
        min_ms: 400,
        skip_dense: false,
        only_dense: false,
        cold_mib: 1024,
        isa: detected_isa(),
        shapes: None,
        tokens: vec![1, 64],
        dense_shape: (128_256, 2560),
        spin: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--threads" => a.threads = num("--threads"),
            "--iters" => a.iters = num("--iters"),
            "--min-ms" => a.min_ms = num("--min-ms"),
            "--cold-mib" => a.cold_mib = num("--cold-mib"),
            "--scalar" => a.isa = Isa::Scalar,
            "--isa" => {
                let name = it.next().unwrap_or_default();
                a.isa = Isa::from_name(&name).unwrap_or_else(|| panic!("unknown ISA {name}"));
            }
            "--spin" => a.spin = true,
            "--no-dense" => a.skip_dense = true,
            "--only-dense" => a.only_dense = true,
            "--shapes" => {
                let list = it.next().unwrap_or_default();
                let shapes: Option<Vec<(usize, usize)>> =
                    list.split(',').map(|s| shape(s, 1 << 36)).collect();
                a.shapes = Some(shapes.unwrap_or_else(|| {
                    panic!("--shapes RxC,.. above 0, R x C at most 2^36 (got {list})")
                }));
            }
            "--dense-shape" => {
                let v = it.next().unwrap_or_default();
                // f32 rows are the largest of the benchmark's copies: at most 16 GiB of them.
                let shape = shape(&v, 1 << 32).filter(|&(_, c)| c % 256 == 0);
                a.dense_shape = shape.unwrap_or_else(|| {
                    panic!("--dense-shape RxC, C a multiple of 256, R x C at most 2^32 (got {v})")
                });
            }
            "--tokens" => {
                let list = it.next().unwrap_or_default();
                let tokens: Result<Vec<usize>, _> = list.split(',').map(str::parse).collect();
                let tokens = tokens
                    .ok()
                    .filter(|v: &Vec<usize>| v.iter().all(|&t| t > 0));
                a.tokens = tokens.unwrap_or_else(|| panic!("--tokens N,.. above 0 (got {list})"));
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// `RxC` with both above 0 and at most `max` elements in all (no allocation is sized by an
/// overflowing product).
fn shape(s: &str, max: u64) -> Option<(usize, usize)> {
    let (r, c) = s.split_once('x')?;
    let (r, c): (usize, usize) = (r.parse().ok()?, c.parse().ok()?);
    let n = r.checked_mul(c)?;
    (r > 0 && c > 0 && n as u64 <= max).then_some((r, c))
}

/// `n` pseudo-random packed bytes whose four 2-bit codes are each in {0, 1, 2} (valid I2_S).
fn random_packed(n: usize, mut s: u64) -> Vec<u8> {
    let valid: Vec<u8> = (0..=255u8).filter(|b| b & (b >> 1) & 0x55 == 0).collect();
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            valid[(s >> 32) as usize % valid.len()]
        })
        .collect()
}

/// CPU seconds used by the whole process so far (all threads), from /proc/self/stat
/// (utime + stime, in USER_HZ = 100 ticks/s); None off Linux. On a shared machine the wall
/// time includes waiting for a core; ops per CPU-second does not.
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Read bandwidth in GB/s: parallel sum of u64 over every matrix's bytes.
fn read_bandwidth(mats: &[TernaryMatrix]) -> f64 {
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let total: u64 = mats
            .iter()
            .map(|m| {
                m.data()
                    .par_chunks(64 * 1024)
                    .map(|c| {
                        c.chunks_exact(8).fold(0u64, |s, w| {
                            s.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()))
                        })
                    })
                    .reduce(|| 0, u64::wrapping_add)
            })
            .fold(0, u64::wrapping_add);
        std::hint::black_box(total);
        let bytes: usize = mats.iter().map(|m| m.nbytes()).sum();
        best = best.max(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn main() {
    let args = parse_args();
    if args.spin {
        // The engine's pool (what `bitnet run` / `bench` use); rayon otherwise.
        let threads = if args.threads > 0 {
            args.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        let pool = bitnet_kernels::pool::ThreadPool::new(threads).expect("spin pool");
        return pool.install(|| run(args));
    }
    run(args)
}

fn run(args: Args) {
    if args.threads > 0 && !args.spin {
        rayon::ThreadPoolBuilder::new()
            .num_threads(args.threads)
            .build_global()
            .expect("rayon pool");
    }
    let threads = bitnet_kernels::pool::current_num_threads();
    println!(
        "isa={} threads={} (BITNET_FORCE_SCALAR / --scalar for the scalar kernels)",
        args.isa.name(),
        threads
    );
    println!(
        "{:>11} {:>6} {:>5} {:>10} {:>9} {:>9} {:>12}",
        "shape", "tokens", "mode", "us/call", "GB/s(w)", "GOP/s", "GOP/cpu-s"
    );

    // (rows = out_features, cols = in_features): q/o, gate/up, down.
    let shapes: &[(usize, usize)] = if args.only_dense {
        &[]
    } else if let Some(s) = &args.shapes {
        s
    } else {
        &[(2560, 2560), (6912, 2560), (2560, 6912)]
    };
    // One pool of random packed weights; every matrix is a zero-copy view into it, the cold
    // set cycling through all of it.
    let pool = Storage::from_vec(random_packed(args.cold_mib << 20, 0x9e37_79b9_7f4a_7c15));
    let mut bw_probe = None;
    for &(rows, cols) in shapes {
        let view = |i: usize| {
            let n = rows * cols / 4;
            TernaryMatrix::from_i2s(
                rows,
                cols,
                pool.slice(i * n, n).expect("pool too small"),
                0.02,
            )
            .unwrap()
        };
        let base = view(0);
        let cold: Vec<TernaryMatrix> = (0..pool.len() / base.nbytes()).map(view).collect();
        if bw_probe.is_none() {
            bw_probe = Some(read_bandwidth(&cold));
        }
        for &tokens in &args.tokens {
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut a = QuantizedActivations::new();
            a.quantize_with(args.isa, &x, tokens, cols);
            let mut out = vec![0f32; tokens * rows];
            let ops = 2.0 * (rows * cols * tokens) as f64;
            for (mode, mats) in [("hot", std::slice::from_ref(&base)), ("cold", &cold[..])] {
                // Warm-up also faults in pages and spins up the pool.
                for m in mats.iter().take(4) {
                    ternary_matmul_with(args.isa, m, &a, &mut out);
                }
                // Run for at least `min_ms` (and `iters` calls) so the CPU-time reading, which
                // has 10 ms resolution, means something.
                let mut samples = Vec::new();
                let (start, cpu0) = (Instant::now(), process_cpu_secs());
                let mut i = 0;
                while i < args.iters.max(3)
                    || start.elapsed().as_secs_f64() * 1e3 < args.min_ms as f64
                {
                    let m = &mats[i % mats.len()];
                    let t = Instant::now();
                    ternary_matmul_with(args.isa, m, &a, &mut out);
                    samples.push(t.elapsed().as_secs_f64());
                    i += 1;
                }
                let cpu = process_cpu_secs()
                    .zip(cpu0)
                    .map(|(b, a)| (b - a) / i as f64);
                std::hint::black_box(&out);
                let s = median(samples);
                println!(
                    "{:>11} {:>6} {:>5} {:>10.1} {:>9.2} {:>9.1} {:>12}",
                    format!("{rows}x{cols}"),
                    tokens,
                    mode,
                    s * 1e6,
                    base.nbytes() as f64 / s / 1e9,
                    ops / s / 1e9,
                    cpu.map_or("-".to_string(), |c| format!("{:.1}", ops / c / 1e9)),
                );
            }
        }
    }
    if let Some(bw) = bw_probe {
        println!("read-bandwidth probe (parallel u64 sum over the cold set): {bw:.2} GB/s");
    }
    // Quantization cost per token at the two activation widths (8 tokens: x stays in cache,
    // as it does in the forward pass).
    for cols in [2560usize, 6912] {
        let x: Vec<f32> = (0..8 * cols)
            .map(|i| ((i * 31) % 997) as f32 / 400.0 - 1.2)
            .collect();
        let mut a = QuantizedActivations::new();
        a.quantize_with(args.isa, &x, 8, cols);
        let t = Instant::now();
        for _ in 0..400 {
            a.quantize_with(args.isa, &x, 8, cols);
        }
        println!(
            "quantize {cols} cols: {:.2} us/token",
            t.elapsed().as_secs_f64() / 400.0 / 8.0 * 1e6
        );
    }

    // The tied LM head of 2B4T (128256 x 2560), one decode token, in F16, BF16, Q8_0 and Q6_K:
    // the other big stream of a decode step.
    if !args.skip_dense {
        let (rows, cols) = args.dense_shape;
        let x: Vec<f32> = (0..cols).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
        let mut out = vec![0f32; rows];
        for ty in [
            DenseType::F16,
            DenseType::BF16,
            DenseType::Q8_0,
            DenseType::Q6_K,
        ] {
            // Normal numbers of magnitude ~1e-3..1 like real embeddings: subnormal inputs would
            // hit the CPU's slow microcode path and measure that instead.
            let mut s = 0x2545_f491_4f6c_dd1du64;
            let (exp_lo, exp_span, exp_shift) = match ty {
                DenseType::F16 => (5u64, 10u64, 10),
                _ => (117, 10, 7),
            };
            let bytes: Vec<u8> = if ty == DenseType::Q6_K {
                // Any code and int8 scale bytes, f16 super-block scales ~1e-5.
                (0..rows * cols / 256)
                    .flat_map(|_| {
                        let mut blk: Vec<u8> = (0..208)
                            .map(|_| {
                                s ^= s << 13;
                                s ^= s >> 7;
                                s ^= s << 17;
                                (s >> 24) as u8
                            })
                            .collect();
                        let d = half::f16::from_f32(1e-5 * (1.0 + (s >> 60) as f32 / 16.0));
                        blk.extend(d.to_le_bytes());
                        blk
                    })
                    .collect()
            } else if ty == DenseType::Q8_0 {
                // f16 scales ~1e-3, int8 values in [-127, 127].
                (0..rows * cols / 32)
                    .flat_map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        let d = half::f16::from_f32(1e-3 * (1.0 + (s >> 60) as f32 / 16.0));
                        let mut blk = d.to_le_bytes().to_vec();
                        blk.extend(
                            (0..32)
                                .map(|k| ((s.rotate_left(k * 2) % 255) as i32 - 127) as i8 as u8),
                        );
                        blk
                    })
                    .collect()
            } else {
                (0..rows * cols)
                    .flat_map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        let exp = exp_lo + (s >> 40) % exp_span;
                        let bits =
                            ((s >> 63) << 15) | (exp << exp_shift) | (s & ((1 << exp_shift) - 1));
                        (bits as u16).to_le_bytes()
                    })
                    .collect()
            };
            let m = DenseMatrix::new(rows, cols, ty, Storage::from_vec(bytes)).unwrap();
            m.matmul_with(args.isa, &x, 1, &mut out);
            let mut samples = Vec::new();
            for _ in 0..args.iters.max(3) {
                let t = Instant::now();
                m.matmul_with(args.isa, &x, 1, &mut out);
                samples.push(t.elapsed().as_secs_f64());
            }
            let t = median(samples);
            println!(
                "dense {ty:?} {rows}x{cols} x 1 token: {:.1} us, {:.2} GB/s, {:.1} GFLOP/s",
                t * 1e6,
                m.nbytes() as f64 / t / 1e9,
                2.0 * (rows * cols) as f64 / t / 1e9
            );
            // 16 tokens: a batch of sequences decoding together, where the head is compute-bound.
            let xs: Vec<f32> = (0..16).flat_map(|_| x.iter().copied()).collect();
            let mut outs = vec![0f32; 16 * rows];
            m.matmul_with(args.isa, &xs, 16, &mut outs);
            let mut samples = Vec::new();
            let cpu0 = process_cpu_secs().unwrap_or(0.0);
            let iters = args.iters.max(3);
            for _ in 0..iters {
                let t = Instant::now();
                m.matmul_with(args.isa, &xs, 16, &mut outs);
                samples.push(t.elapsed().as_secs_f64());
            }
            let cpu = (process_cpu_secs().unwrap_or(0.0) - cpu0) / iters as f64;
            let t = median(samples);
            let flop = 2.0 * (rows * cols * 16) as f64;
            println!(
                "dense {ty:?} {rows}x{cols} x 16 tokens: {:.1} us, {:.1} GFLOP/s, {:.1} GFLOP/cpu-s",
                t * 1e6,
                flop / t / 1e9,
                flop / cpu / 1e9
            );
        }
    }
}
