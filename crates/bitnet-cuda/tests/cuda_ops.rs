//! GPU kernels against the CPU kernels of `bitnet-kernels` (the reference they must equal).
//!
//! Both the integer dot products and the float epilogue use the same IEEE operations in the
//! same order, so the tolerance is zero: outputs must be bit-identical.
//!
//! Where no GPU exists (CI), the GPU tests have nothing to run on and return early after
//! `Gpu::open` failed with the "not available" error, which `open_without_a_gpu_is_a_clear_error`
//! checks; on the GPU machine `BITNET_REQUIRE_CUDA=1` makes a failed open a failure instead.
//! Run there (binaries built here, see docs/cuda.md):
//! `BITNET_REQUIRE_CUDA=1 ./cuda_ops-<hash> --include-ignored`.

mod common;
use bitnet_common::Storage;
use bitnet_cuda::{CudaError, Gpu, GpuActivations, GpuDense, GpuTernaryMatrix, TernaryKernel};
use bitnet_kernels::{
    ternary_matmul, DenseMatrix, DenseMatrixExt, DenseType, QuantizedActivations, TernaryMatrix,
};
use bitnet_quantization::q6_k;
use common::{gpu, head_many_and_alone, required, same_bits, Rng};
use half::f16;

/// Activations like a real residual stream: mostly small, a few outliers, and in some rows
/// values that must not be quantized silently wrong (NaN, a huge value, all zeros).
fn activations(tokens: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..tokens * cols)
        .map(|i| {
            let v = rng.f32();
            if i % 97 == 0 {
                v * 40.0
            } else {
                v
            }
        })
        .collect();
    if tokens > 2 {
        x[cols..2 * cols].fill(0.0);
        x[2 * cols + cols / 2] = f32::NAN;
    }
    x
}

#[test]
fn open_without_a_gpu_is_a_clear_error() {
    match Gpu::open(0) {
        Ok(g) => {
            let info = g.info();
            assert!(
                info.compute_capability.0 >= 5 && info.total_mem > 0,
                "{info:?}"
            );
            eprintln!("GPU 0: {info:?}");
        }
        Err(e) => {
            assert!(!required(), "BITNET_REQUIRE_CUDA=1 but {e}");
            assert!(matches!(e, CudaError::Unavailable(_)), "{e:?}");
            assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
        }
    }
    // An index past the last GPU is the same kind of error, on any machine.
    let Err(e) = Gpu::open(1 << 20) else {
        panic!("GPU 1048576 opened");
    };
    assert!(matches!(e, CudaError::Unavailable(_)), "{e:?}");
}

#[test]
fn quantization_is_bit_identical_to_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (tokens, cols) in [(1, 128), (3, 300), (8, 2560), (13, 6912)] {
        let x = activations(tokens, cols, &mut rng);
        let mut cpu = QuantizedActivations::new();
        cpu.quantize(&x, tokens, cols);
        let xd = gpu.stream().clone_htod(&x).unwrap();
        let mut a = GpuActivations::new(&gpu, tokens, cols).unwrap();
        gpu.quantize(&xd, &mut a).unwrap();
        let (q, scales, sums) = a.to_host(&gpu).unwrap();
        assert_eq!(a.stride(), cpu.stride());
        for t in 0..tokens {
            assert_eq!(
                &q[t * a.stride()..][..a.stride()],
                cpu.q(t),
                "t={t} cols={cols}"
            );
        }
        assert_eq!(scales, cpu.scales(), "cols={cols}");
        assert_eq!(sums, cpu.sums(), "cols={cols}");
    }
}

/// Every kernel (`Auto` and each one forced) on one matrix and several token counts, against
/// the CPU kernel, bit for bit, with and without the accumulating epilogue.
fn check_every_kernel(gpu: &mut Gpu, rng: &mut Rng, rows: usize, cols: usize, tokens: &[usize]) {
    let codes: Vec<i8> = (0..rows * cols)
        .map(|_| (rng.next() % 3) as i8 - 1)
        .collect();
    let w = TernaryMatrix::from_codes(rows, cols, &codes, 0.75 + rng.f32().abs()).unwrap();
    let wd = GpuTernaryMatrix::upload(gpu, &w).unwrap();
    for &tokens in tokens {
        let x = activations(tokens, cols, rng);
        let mut qa = QuantizedActivations::new();
        qa.quantize(&x, tokens, cols);
        let mut want = vec![0f32; tokens * rows];
        ternary_matmul(&w, &qa, &mut want);
        // The residual add: one f32 addition per value onto what was there.
        let base: Vec<f32> = (0..tokens * rows).map(|_| rng.f32() * 3.0).collect();
        let want_acc: Vec<f32> = base.iter().zip(&want).map(|(b, y)| b + y).collect();

        let xd = gpu.stream().clone_htod(&x).unwrap();
        let mut a = GpuActivations::new(gpu, tokens, cols).unwrap();
        gpu.quantize(&xd, &mut a).unwrap();
        // The K split unset, at its default and at a target that always cuts in 8 (which
        // pieces run otherwise depends on the GPU's SM count).
        for (kernel, split) in TernaryKernel::ALL
            .into_iter()
            .flat_map(|k| [(k, 0), (k, 2), (k, 1000)])
        {
            gpu.set_ternary_kernel(kernel);
            gpu.set_split_k(split);
            let mut out = gpu.stream().alloc_zeros::<f32>(tokens * rows).unwrap();
            gpu.ternary_matmul(&wd, &a, &mut out.as_view_mut()).unwrap();
            let got = gpu.stream().clone_dtoh(&out).unwrap();
            assert!(
                same_bits(&got, &want),
                "{rows}x{cols} tokens={tokens} {kernel:?} split {split}: first difference at {:?}",
                got.iter()
                    .zip(&want)
                    .position(|(a, b)| a.to_bits() != b.to_bits())
            );
            let mut out = gpu.stream().clone_htod(&base).unwrap();
            gpu.ternary_matmul_accumulate(&wd, &a, &mut out.as_view_mut())
                .unwrap();
            let got = gpu.stream().clone_dtoh(&out).unwrap();
            assert!(
                same_bits(&got, &want_acc),
                "{rows}x{cols} tokens={tokens} {kernel:?} split {split} accumulating"
            );
        }
    }
    gpu.set_ternary_kernel(TernaryKernel::Auto);
    gpu.set_split_k(2);
}

#[test]
fn ternary_matmul_is_bit_identical_to_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    let mut rng = Rng(42);
    // 2B4T shapes (q/o, k/v, gate/up, down) with token counts that exercise every dp4a tile
    // (8, 4, 2, 1), the tensor-core tiles' edges (16, 32, 64, 128 tokens and one past) and a
    // 512-token prompt; then ragged row counts and widths, up to 600 tokens.
    let few = [1, 2, 3, 8, 15];
    let many = [1, 2, 3, 8, 15, 16, 33, 64, 130, 512];
    for (rows, cols) in [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)] {
        check_every_kernel(&mut gpu, &mut rng, rows, cols, &many);
    }
    check_every_kernel(&mut gpu, &mut rng, 2560, 2560, &[600]);
    for (rows, cols) in [(200, 384), (7, 300), (1, 128), (129, 2560)] {
        check_every_kernel(&mut gpu, &mut rng, rows, cols, &few);
        check_every_kernel(&mut gpu, &mut rng, rows, cols, &[31, 65, 257, 600]);
    }
}

#[test]
fn ternary_kernel_names_parse() {
    for k in TernaryKernel::ALL {
        assert_eq!(k.name().parse::<TernaryKernel>().unwrap(), k);
    }
    assert!(matches!(
        "mma".parse::<TernaryKernel>(),
        Err(CudaError::Unsupported(_))
    ));
}

/// q/k/v stacked into one matrix: one kernel, each row with its own tensor's scale, the same
/// bits as `ternary_matmul_many` on the CPU.
#[test]
fn stacked_matrices_equal_the_cpu_many_matmul() {
    let Some(mut gpu) = gpu() else { return };
    let mut rng = Rng(7);
    let (cols, tokens) = (2560, 5);
    let ws: Vec<TernaryMatrix> = [(2560, 0.5f32), (640, 1.25), (640, 2.0)]
        .into_iter()
        .map(|(rows, scale)| {
            let codes: Vec<i8> = (0..rows * cols)
                .map(|_| (rng.next() % 3) as i8 - 1)
                .collect();
            TernaryMatrix::from_codes(rows, cols, &codes, scale).unwrap()
        })
        .collect();
    let x = activations(tokens, cols, &mut rng);
    let mut qa = QuantizedActivations::new();
    qa.quantize(&x, tokens, cols);
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; tokens * w.rows()]).collect();
    {
        let refs: Vec<&TernaryMatrix> = ws.iter().collect();
        let mut outs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        bitnet_kernels::ternary_matmul_many(&refs, &qa, &mut outs);
    }
    let refs: Vec<&TernaryMatrix> = ws.iter().collect();
    let wd = GpuTernaryMatrix::upload_stacked(&gpu, &refs).unwrap();
    let xd = gpu.stream().clone_htod(&x).unwrap();
    let mut a = GpuActivations::new(&gpu, tokens, cols).unwrap();
    gpu.quantize(&xd, &mut a).unwrap();
    for kernel in TernaryKernel::ALL {
        gpu.set_ternary_kernel(kernel);
        let mut out = gpu.stream().alloc_zeros::<f32>(tokens * wd.rows()).unwrap();
        gpu.ternary_matmul(&wd, &a, &mut out.as_view_mut()).unwrap();
        let got = gpu.stream().clone_dtoh(&out).unwrap();
        for t in 0..tokens {
            let mut off = t * wd.rows();
            for (w, o) in ws.iter().zip(&outs) {
                let want = &o[t * w.rows()..][..w.rows()];
                let g = &got[off..][..w.rows()];
                assert!(
                    same_bits(g, want),
                    "token {t}, matrix of {} rows, {kernel:?}",
                    w.rows()
                );
                off += w.rows();
            }
        }
    }
    // Matrices of different widths cannot be stacked.
    let narrow = TernaryMatrix::from_codes(4, 128, &[0; 512], 1.0).unwrap();
    assert!(matches!(
        GpuTernaryMatrix::upload_stacked(&gpu, &[&ws[0], &narrow]),
        Err(CudaError::Shape(_))
    ));
}

#[test]
fn shape_mismatches_are_errors() {
    let Some(gpu) = gpu() else { return };
    let w = TernaryMatrix::from_codes(4, 128, &[0; 512], 1.0).unwrap();
    let wd = GpuTernaryMatrix::upload(&gpu, &w).unwrap();
    let a = GpuActivations::new(&gpu, 2, 256).unwrap();
    let mut out = gpu.stream().alloc_zeros::<f32>(8).unwrap();
    assert!(matches!(
        gpu.ternary_matmul(&wd, &a, &mut out.as_view_mut()),
        Err(CudaError::Shape(_))
    ));
}

/// A Q6_K matrix: rows encoded from weights like a trained head's (`q6_k::encode`, a few
/// outliers), or random blocks (every 6-bit code and int8 sub-block scale, -128 included, with
/// f16 block scales of both signs around the normal / subnormal boundary), which exercise the
/// integer lanes harder than real weights do.
fn q6_k_matrix(rows: usize, cols: usize, encoded: bool, rng: &mut Rng) -> DenseMatrix {
    let bytes = if encoded {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| rng.f32() * if i % 211 == 0 { 0.5 } else { 0.05 })
            .collect();
        q6_k::encode(&w).unwrap()
    } else {
        let mut b = vec![0u8; rows * cols / q6_k::QK_K * q6_k::BLOCK_BYTES];
        for blk in b.chunks_exact_mut(q6_k::BLOCK_BYTES) {
            for x in &mut blk[..q6_k::D] {
                *x = rng.next() as u8;
            }
            let d = f16::from_f32(rng.f32() * 2e-4);
            blk[q6_k::D..].copy_from_slice(&d.to_le_bytes());
        }
        b
    };
    DenseMatrix::new(rows, cols, DenseType::Q6_K, Storage::from_vec(bytes)).unwrap()
}

/// The Q6_K head (one token: `Gpu::head`; many: `Gpu::head_rows`) against the CPU's
/// `DenseMatrixExt::matmul`, bit for bit: the activations quantized to Q8_K as the CPU does
/// (absmax with its first-on-ties sign, ggml's `nearest_int`; a NaN activation is a zero
/// code on both), exact integer lanes per block, and the lanes' FMAs and final sum in the
/// CPU's order. Shapes: a 2B4T-wide slice of the vocabulary (2560 columns, 10 blocks a row)
/// and ragged ones (1 to 27 blocks a row, row counts off the kernel's 8 rows per CUDA block,
/// token counts off its 8 tokens per warp).
#[test]
fn q6_k_head_is_bit_identical_to_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(0x6b);
    let cases: [(usize, usize, bool, &[usize]); 6] = [
        (16_387, 2560, false, &[1, 8, 17]),
        (1000, 2560, true, &[1, 3, 11]),
        (1, 256, true, &[1, 2, 9]),
        (300, 768, false, &[1, 3, 8, 11]),
        (37, 6912, true, &[1, 5]),
        (129, 1280, false, &[1, 16, 33]),
    ];
    for (rows, cols, encoded, token_counts) in cases {
        let m = q6_k_matrix(rows, cols, encoded, &mut rng);
        let g = GpuDense::upload(&gpu, &m, "output (LM head)").unwrap();
        assert_eq!(g.ty(), DenseType::Q6_K);
        for &tokens in token_counts {
            // Residual-stream-like rows with outliers; from 3 tokens on a zero row and a NaN.
            let x = activations(tokens, cols, &mut rng);
            let mut want = vec![0f32; tokens * rows];
            m.matmul(&x, tokens, &mut want);
            let alone = [0, tokens - 1];
            let (got, ones) = head_many_and_alone(&gpu, &g, &x, tokens, &alone);
            let first = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                first.is_none(),
                "{rows}x{cols} ({}), {tokens} tokens: first difference at {first:?}: {:?}",
                if encoded { "encoded" } else { "random blocks" },
                first.map(|i| (got[i], want[i]))
            );
            // And each token alone through the one-token kernel.
            for (t, one) in alone.iter().zip(&ones) {
                assert!(
                    same_bits(one, &want[t * rows..][..rows]),
                    "{rows}x{cols}, token {t} of {tokens} alone"
                );
            }
        }
    }
    // Scratch too small for the Q8_K codes is an error, not a fault.
    let m = q6_k_matrix(4, 512, false, &mut rng);
    let g = GpuDense::upload(&gpu, &m, "head").unwrap();
    let xd = gpu.stream().clone_htod(&vec![1f32; 2 * 512]).unwrap();
    let mut q8 = gpu.stream().alloc_zeros::<i8>(512).unwrap();
    let mut d8 = gpu.stream().alloc_zeros::<f32>(16).unwrap();
    let mut out = gpu.stream().alloc_zeros::<f32>(8).unwrap();
    assert!(matches!(
        gpu.head_rows(
            &g,
            &xd.slice(..),
            2,
            &mut q8,
            &mut d8,
            &mut out.slice_mut(..)
        ),
        Err(CudaError::Shape(_))
    ));
}
