//! Q8_0 dense matrices (8-bit embedding / LM head): AVX2 and scalar are bit-identical, the
//! matmul equals llama.cpp's `quantize_row_q8_0` + `vec_dot_q8_0_q8_0` model of the product
//! (checked in f64), stays close to the unquantized product, and bad sizes are rejected.

mod common;

use bitnet_common::Storage;
use bitnet_kernels::{DenseMatrix, DenseMatrixExt, DenseType, Isa, KernelError};
use bitnet_quantization::q8_0;
use common::{isas, pools, Rng};
use half::f16;
use proptest::prelude::*;

/// Random Q8_0 matrix (via the GGUF codec) and its dequantized values.
fn matrix(rows: usize, cols: usize, rng: &mut Rng) -> (DenseMatrix, Vec<f32>) {
    let vals: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 0.1).collect();
    let bytes = q8_0::encode(&vals).unwrap();
    let exact = q8_0::decode(&bytes, rows * cols).unwrap();
    (
        DenseMatrix::new(rows, cols, DenseType::Q8_0, Storage::from_vec(bytes)).unwrap(),
        exact,
    )
}

/// ggml's activation quantization (AVX2 `quantize_row_q8_0`): (q, f16-rounded d) per block.
fn quantize(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::new();
    let mut d = Vec::new();
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        d.push(f16::from_f32(amax / 127.0).to_f32());
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        q.extend(b.iter().map(|v| (v * id).round_ties_even() as i8));
    }
    (q, d)
}

/// Checks `out` (tokens x rows) against (a) the f64 value of the Q8_0 x Q8_0 product llama.cpp
/// computes (integer block dots, exact) and (b) the f64 product with the unquantized `x`,
/// within the activation quantization error.
fn check(m: &DenseMatrix, w: &[f32], x: &[f32], tokens: usize, out: &[f32]) -> Result<(), String> {
    let (rows, cols) = (m.rows(), m.cols());
    for t in 0..tokens {
        let xt = &x[t * cols..][..cols];
        let (q, d) = quantize(xt);
        for r in 0..rows {
            let wr = &w[r * cols..][..cols];
            let (mut model, mut model_mag, mut exact, mut qerr) = (0f64, 0f64, 0f64, 0f64);
            for (b, &db) in d.iter().enumerate() {
                let db = f64::from(db);
                // w = q_w * d_w (to f32 rounding), so sum(w * q_x) * d_x = d_w * d_x * sum(q_w * q_x).
                let (mut s, mut mag) = (0f64, 0f64);
                for k in b * 32..(b + 1) * 32 {
                    s += f64::from(wr[k]) * f64::from(q[k]);
                    mag += (f64::from(wr[k]) * f64::from(q[k])).abs();
                    exact += f64::from(wr[k]) * f64::from(xt[k]);
                    // |x - q * d| <= d / 2 + 127 * |d - f16(d)| <= 0.57 d.
                    qerr += f64::from(wr[k]).abs() * 0.57 * db;
                }
                model += s * db;
                model_mag += mag * db;
            }
            let got = f64::from(out[t * rows + r]);
            if (got - model).abs() > 1e-5 * model_mag.max(1e-30) {
                return Err(format!("t={t} r={r}: {got} vs model {model}"));
            }
            if (got - exact).abs() > qerr + 1e-5 * model_mag + 1e-30 {
                return Err(format!(
                    "t={t} r={r}: {got} vs exact {exact} (bound {qerr})"
                ));
            }
        }
    }
    Ok(())
}

/// The float order of `isa`'s Q8_0 matmul: ggml's (0) everywhere, except the AMX tile kernel
/// that `Isa::Amx` takes unless `BITNET_AMX_Q8_HEAD=0` (1: whole-block sums, `x86::amx_q8_0`).
/// Kernels of one order are bit-identical; the two orders agree within rounding (`check`).
fn order(isa: Isa) -> usize {
    usize::from(isa == Isa::Amx && std::env::var("BITNET_AMX_Q8_HEAD").map_or(true, |v| v != "0"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn matmul_matches_reference_and_isas_agree(rows in 1usize..70, blocks in 1usize..40,
                                               tokens in 1usize..10, seed in any::<u64>()) {
        let cols = blocks * 32;
        let mut rng = Rng(seed | 1);
        let (m, w) = matrix(rows, cols, &mut rng);
        let mut x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32() * 3.0).collect();
        // An all-zero block (d = 0) in the first token.
        x[..32].fill(0.0);
        let mut first: [Option<Vec<f32>>; 2] = [None, None];
        for pool in pools() {
            for &isa in &isas() {
                let mut out = vec![f32::NAN; tokens * rows];
                pool.install(|| m.matmul_with(isa, &x, tokens, &mut out));
                if let Err(e) = check(&m, &w, &x, tokens, &out) {
                    return Err(TestCaseError::fail(format!("{isa:?}: {e}")));
                }
                // Same integer block dots, same FMA order: bit-identical across ISAs, thread
                // counts and token tiling.
                match &first[order(isa)] {
                    None => first[order(isa)] = Some(out),
                    Some(f) => prop_assert!(
                        f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{:?} differs from the first run", isa
                    ),
                }
            }
        }
    }
}

/// 2B4T-like width, enough rows and tokens to take the parallel path with ragged token tiles
/// (4 tokens a tile on AVX2, 8 = four pairs on AVX-512 VNNI: 9 and 17 leave one odd token over).
#[test]
fn parallel_ragged_tokens_bit_identical() {
    let (rows, cols) = (1003, 2560);
    let mut rng = Rng(7);
    let (m, w) = matrix(rows, cols, &mut rng);
    for tokens in [1, 2, 3, 5, 7, 9, 16, 17] {
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32()).collect();
        let mut outs: [Vec<Vec<f32>>; 2] = [Vec::new(), Vec::new()];
        for pool in pools() {
            for &isa in &isas() {
                let mut out = vec![f32::NAN; tokens * rows];
                pool.install(|| m.matmul_with(isa, &x, tokens, &mut out));
                check(&m, &w, &x, tokens, &out).unwrap();
                outs[order(isa)].push(out);
            }
        }
        for outs in outs.iter().filter(|o| !o.is_empty()) {
            for o in &outs[1..] {
                assert!(outs[0]
                    .iter()
                    .zip(o)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
        // Token t of a batch equals the same token alone (the detected ISA's order).
        let mut one = vec![0f32; rows];
        let mut batch = vec![0f32; tokens * rows];
        let t = tokens - 1;
        m.matmul(&x[t * cols..][..cols], 1, &mut one);
        m.matmul(&x, tokens, &mut batch);
        assert_eq!(one, batch[t * rows..][..rows]);
    }
}

/// Weight byte -128 never comes out of ggml's quantizer but a file may hold it; the sign trick
/// still gives the exact product because activations stay within [-127, 127], so every ISA
/// gives the scalar kernel's bits. Five tokens (a full token tile and one left over) over ten
/// blocks (a whole group of eight block scales and a ragged one).
#[test]
fn extreme_weight_bytes() {
    let (rows, cols, tokens) = (5, 320, 5);
    let mut bytes = Vec::new();
    for r in 0..rows {
        for b in 0..cols / 32 {
            bytes.extend_from_slice(&f16::from_f32(0.5 + r as f32 + b as f32).to_le_bytes());
            bytes.extend((0..32).map(|k| [-128i8, 127, -127, 0][(k + r) % 4] as u8));
        }
    }
    let w = q8_0::decode(&bytes, rows * cols).unwrap();
    let m = DenseMatrix::new(rows, cols, DenseType::Q8_0, Storage::from_vec(bytes)).unwrap();
    let mut rng = Rng(3);
    let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32()).collect();
    let mut first: [Option<Vec<f32>>; 2] = [None, None];
    for &isa in &isas() {
        let mut out = vec![0f32; tokens * rows];
        m.matmul_with(isa, &x, tokens, &mut out);
        check(&m, &w, &x, tokens, &out).unwrap();
        match &first[order(isa)] {
            None => first[order(isa)] = Some(out),
            Some(f) => assert!(
                f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa:?} differs from the scalar kernel"
            ),
        }
    }
}

#[test]
fn row_f32_dequantizes() {
    let mut rng = Rng(11);
    let (m, w) = matrix(5, 96, &mut rng);
    let mut row = vec![0f32; 96];
    for r in 0..5 {
        m.row_f32(r, &mut row);
        assert_eq!(row, w[r * 96..][..96]);
    }
    assert_eq!(m.nbytes(), 5 * 3 * 34);
    assert_eq!(DenseType::Q8_0.row_bytes(96), Some(102));
    assert_eq!(DenseType::Q8_0.row_bytes(95), None);
}

#[test]
fn bad_sizes_rejected() {
    let s = Storage::from_vec(vec![0u8; 2 * 34]);
    let e = DenseMatrix::new(2, 33, DenseType::Q8_0, s.clone()).unwrap_err();
    assert!(e.to_string().contains("multiple of 32"), "{e}");
    assert!(matches!(
        DenseMatrix::new(2, 64, DenseType::Q8_0, s.clone()),
        Err(KernelError::Shape { .. })
    ));
    assert!(DenseMatrix::new(2, 32, DenseType::Q8_0, s).is_ok());
    let big = Storage::from_vec(vec![0u8; 34]);
    assert!(DenseMatrix::new(usize::MAX / 2, 32, DenseType::Q8_0, big).is_err());
}

#[test]
#[should_panic(expected = "x.len() != tokens * cols")]
fn wrong_activation_length_panics() {
    let m = DenseMatrix::new(1, 32, DenseType::Q8_0, Storage::from_vec(vec![0u8; 34])).unwrap();
    let mut out = [0f32; 1];
    m.matmul_with(Isa::Scalar, &[0.0; 31], 1, &mut out);
}
