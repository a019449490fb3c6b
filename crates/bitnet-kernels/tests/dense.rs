//! Dense F32/F16/BF16 matmul and row lookup against an f64 reference.

mod common;

use bitnet_common::Storage;
use bitnet_kernels::{DenseMatrix, DenseMatrixExt, DenseType, Isa};
use bitnet_quantization::float;
use common::{isas, pools, Rng};
use proptest::prelude::*;

/// Random matrix in `ty`, plus its exact f32 values (after rounding to `ty`).
fn matrix(rows: usize, cols: usize, ty: DenseType, rng: &mut Rng) -> (DenseMatrix, Vec<f32>) {
    let vals: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 2.0).collect();
    let bytes = match ty {
        DenseType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DenseType::F16 => float::f32_to_f16_bytes(&vals),
        DenseType::BF16 => float::f32_to_bf16_bytes(&vals),
        DenseType::Q8_0 | DenseType::Q6_K => {
            unreachable!("the block types have their own tests (dense_q8.rs, dense_q6k.rs)")
        }
    };
    let mut exact = vec![0f32; rows * cols];
    match ty {
        DenseType::F32 => exact.copy_from_slice(&vals),
        DenseType::F16 => float::f16_to_f32(&bytes, &mut exact),
        DenseType::BF16 => float::bf16_to_f32(&bytes, &mut exact),
        DenseType::Q8_0 | DenseType::Q6_K => unreachable!(),
    }
    (
        DenseMatrix::new(rows, cols, ty, Storage::from_vec(bytes)).unwrap(),
        exact,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn matmul_matches_f64(rows in 1usize..50, cols in 1usize..300, tokens in 1usize..9,
                          ty in prop_oneof![Just(DenseType::F32), Just(DenseType::F16), Just(DenseType::BF16)],
                          seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let (m, exact) = matrix(rows, cols, ty, &mut rng);
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32()).collect();
        for pool in pools() {
            for &isa in &isas() {
                let mut out = vec![f32::NAN; tokens * rows];
                pool.install(|| m.matmul_with(isa, &x, tokens, &mut out));
                for t in 0..tokens {
                    for r in 0..rows {
                        let (mut s, mut mag) = (0f64, 0f64);
                        for k in 0..cols {
                            let p = f64::from(exact[r * cols + k]) * f64::from(x[t * cols + k]);
                            s += p;
                            mag += p.abs();
                        }
                        let got = f64::from(out[t * rows + r]);
                        // Relative to the magnitude of the terms: cancellation can make the
                        // result itself arbitrarily small.
                        prop_assert!((got - s).abs() <= 1e-4 * mag.max(1e-30),
                            "{:?} {:?} t={} r={}: {} vs {}", isa, ty, t, r, got, s);
                    }
                }
            }
        }
    }

    /// One token (decode) runs rows side by side (`DenseKernel::dot_rows`); each row's value
    /// must be the bits that row gets alone, so a logit never depends on the rows beside it.
    #[test]
    fn one_token_rows_equal_each_row_alone(rows in 1usize..100, cols in 1usize..300,
                          ty in prop_oneof![Just(DenseType::F32), Just(DenseType::F16), Just(DenseType::BF16)],
                          seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let (m, _) = matrix(rows, cols, ty, &mut rng);
        let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
        for &isa in &isas() {
            let mut out = vec![f32::NAN; rows];
            m.matmul_with(isa, &x, 1, &mut out);
            for (r, got) in out.iter().enumerate() {
                let one = DenseMatrix::new(1, cols, ty,
                    Storage::from_vec(m.row(r).to_vec())).unwrap();
                let mut alone = [f32::NAN];
                one.matmul_with(isa, &x, 1, &mut alone);
                prop_assert_eq!(got.to_bits(), alone[0].to_bits(),
                    "{:?} {:?} row {} of {}: {} vs {} alone", isa, ty, r, rows, got, alone[0]);
            }
        }
    }
}

#[test]
fn row_lookup_is_exact() {
    let mut rng = Rng(3);
    for ty in [DenseType::F32, DenseType::F16, DenseType::BF16] {
        for cols in [1, 7, 8, 9, 16, 33, 512] {
            let (m, exact) = matrix(4, cols, ty, &mut rng);
            assert_eq!(
                (m.rows(), m.cols(), m.ty(), m.nbytes()),
                (4, cols, ty, 4 * ty.row_bytes(cols).unwrap())
            );
            let mut row = vec![0f32; cols];
            for r in 0..4 {
                m.row_f32(r, &mut row);
                assert_eq!(row, exact[r * cols..(r + 1) * cols], "{ty:?} cols={cols}");
            }
        }
    }
}

#[test]
fn unaligned_storage_and_size_check() {
    // GGUF tensors are only 32-byte aligned and safetensors not at all: use an odd offset.
    let vals: Vec<f32> = (0..24).map(|i| i as f32 * 0.25).collect();
    let mut bytes = vec![0u8];
    bytes.extend(float::f32_to_f16_bytes(&vals));
    let s = Storage::from_vec(bytes).slice(1, 48).unwrap();
    let m = DenseMatrix::new(2, 12, DenseType::F16, s.clone()).unwrap();
    let x = vec![1.0f32; 12];
    let mut out = [0f32; 2];
    for &isa in &isas() {
        m.matmul_with(isa, &x, 1, &mut out);
        assert_eq!(
            out,
            [
                vals[..12].iter().sum::<f32>(),
                vals[12..].iter().sum::<f32>()
            ]
        );
    }
    let mut out2 = [0f32; 2];
    m.matmul_scalar(&x, 1, &mut out2);
    assert_eq!(out, out2);
    assert!(DenseMatrix::new(2, 13, DenseType::F16, s.clone()).is_err());
    assert!(DenseMatrix::new(usize::MAX, 2, DenseType::F32, s).is_err());
    let _ = Isa::Scalar.name();
}
