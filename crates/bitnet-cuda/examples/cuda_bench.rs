//! Ternary matmul speed on the GPU at bitnet-b1.58-2B-4T shapes: every ternary matrix of the
//! 30 layers (0.52 GB of I2_S weights, ten times the H200's L2) once per step, as a forward
//! pass reads them (q/k/v and gate/up stacked: four matmuls and four activation quantizations
//! per layer), for a batch of 1 (decode), 8, 64 and 512 tokens (prompt).
//!
//! ```text
//! cargo build --release -p bitnet-cuda --example cuda_bench    # here; then on the GPU machine:
//! ./cuda_bench [--iters N] [--layers N] [--tokens 1,8,64,512] [--kernels auto,dp4a,...]
//! ```
//! Prints, per kernel (`TernaryKernel` names; `auto` picks by token count) and token count, the
//! time per step, the weight bytes per second (the decode roofline is the HBM bandwidth, about
//! 4.8 TB/s on an H200), tokens per second of the ternary part alone and its multiply-adds per
//! second.

use bitnet_cuda::{Gpu, GpuActivations, GpuTernaryMatrix, TernaryKernel};
use bitnet_kernels::TernaryMatrix;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut iters = 20usize;
    let mut layers = 30usize;
    let mut token_counts = vec![1usize, 8, 64, 512];
    let mut kernels = vec![TernaryKernel::Auto];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> Result<usize, Box<dyn std::error::Error>> {
            Ok(args.next().ok_or("missing number")?.parse()?)
        };
        match a.as_str() {
            "--iters" => iters = num()?,
            "--layers" => layers = num()?,
            "--tokens" => {
                token_counts = args
                    .next()
                    .ok_or("missing token counts")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--kernels" => {
                kernels = args
                    .next()
                    .ok_or("missing kernel names")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut gpu = Gpu::open(0)?;
    eprintln!("{:?}", gpu.info());
    // (rows, cols) of q, k, v, o, gate, up, down.
    let shapes = [
        (2560, 2560),
        (640, 2560),
        (640, 2560),
        (2560, 2560),
        (6912, 2560),
        (6912, 2560),
        (2560, 6912),
    ];
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut random = |rows: usize, cols: usize| {
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 3) as i8 - 1
            })
            .collect();
        TernaryMatrix::from_codes(rows, cols, &codes, 1.0)
    };
    // Per layer, as the forward pass will run them: q/k/v stacked, o, gate/up stacked, down:
    // four matmuls and four activation quantizations.
    let mut mats = Vec::new();
    for _ in 0..layers {
        let ws: Vec<TernaryMatrix> = shapes
            .iter()
            .map(|&(rows, cols)| random(rows, cols))
            .collect::<Result<_, _>>()?;
        mats.push(GpuTernaryMatrix::upload_stacked(
            &gpu,
            &[&ws[0], &ws[1], &ws[2]],
        )?);
        mats.push(GpuTernaryMatrix::upload(&gpu, &ws[3])?);
        mats.push(GpuTernaryMatrix::upload_stacked(&gpu, &[&ws[4], &ws[5]])?);
        mats.push(GpuTernaryMatrix::upload(&gpu, &ws[6])?);
    }
    let bytes: usize = mats.iter().map(|m| m.nbytes()).sum();
    println!(
        "{} matrices, {:.1} MB of weights",
        mats.len(),
        bytes as f64 / 1e6
    );
    let macs: usize = mats.iter().map(|m| m.rows() * m.cols()).sum();
    println!(
        "{:>10} {:>7} {:>9} {:>11} {:>10} {:>12} {:>8}",
        "kernel", "tokens", "how", "us/step", "GB/s(w)", "tokens/s", "TMAC/s"
    );
    for kernel in kernels {
        gpu.set_ternary_kernel(kernel);
        for &tokens in &token_counts {
            let xs: Vec<_> = [2560usize, 6912]
                .iter()
                .map(|&cols| {
                    let x: Vec<f32> = (0..tokens * cols)
                        .map(|i| ((i % 23) as f32 - 11.0) / 7.0)
                        .collect();
                    gpu.stream().clone_htod(&x)
                })
                .collect::<Result<_, _>>()?;
            let mut acts = [
                GpuActivations::new(&gpu, tokens, 2560)?,
                GpuActivations::new(&gpu, tokens, 6912)?,
            ];
            let mut out = gpu.stream().alloc_zeros::<f32>(tokens * 2 * 6912)?;
            let mut step = |gpu: &Gpu| -> Result<(), Box<dyn std::error::Error>> {
                for m in &mats {
                    let i = usize::from(m.cols() == 6912);
                    gpu.quantize(&xs[i], &mut acts[i])?;
                    let mut o = out.slice_mut(..tokens * m.rows());
                    gpu.ternary_matmul(m, &acts[i], &mut o)?;
                }
                Ok(())
            };
            step(&gpu)?;
            gpu.synchronize()?;
            let t = Instant::now();
            for _ in 0..iters {
                step(&gpu)?;
            }
            gpu.synchronize()?;
            let dt = t.elapsed().as_secs_f64() / iters as f64;
            // The same step captured once as a CUDA graph: what the kernels cost without the
            // per-launch CPU overhead (the forward pass will run as a graph).
            let stream = gpu.stream().clone();
            stream.begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )?;
            step(&gpu)?;
            let graph = stream
                .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))?
                .ok_or("empty graph")?;
            graph.launch()?;
            gpu.synchronize()?;
            let t = Instant::now();
            for _ in 0..iters {
                graph.launch()?;
            }
            gpu.synchronize()?;
            let dg = t.elapsed().as_secs_f64() / iters as f64;
            for (how, dt) in [("launches", dt), ("graph", dg)] {
                println!(
                    "{:>10} {tokens:>7} {how:>9} {:>11.1} {:>10.1} {:>12.0} {:>8.1}",
                    kernel.name(),
                    dt * 1e6,
                    bytes as f64 / dt / 1e9,
                    tokens as f64 / dt,
                    (macs * tokens) as f64 / dt / 1e12
                );
            }
        }
    }
    Ok(())
}
