//! Q6_K dense matrices (6.5625-bit embedding / LM head): every ISA is bit-identical to the scalar
//! kernel, which equals (a) results computed by llama.cpp's own AVX2 `ggml_vec_dot_q6_K_q8_K`
//! and (b) an independent f64 / exact-integer model of ggml's formula; bad sizes are rejected.

mod common;

use bitnet_common::Storage;
use bitnet_kernels::{DenseMatrix, DenseMatrixExt, DenseType, Isa, KernelError};
use bitnet_quantization::q6_k;
use common::{isas, pools, Rng};
use half::f16;
use proptest::prelude::*;

#[path = "../../bitnet-quantization/tests/common/q6k_inputs.rs"]
mod q6k_inputs;
use q6k_inputs::{ka_weights, Lcg};

const QK: usize = 256;
const BB: usize = 210;

/// The signed codes (`q - 32`) and int8 scales of one block, unpacked the way ggml's
/// `dequantize_row_q6_K` walks it (independently of `q6_k::code`).
fn unpack(blk: &[u8]) -> ([i32; QK], [i32; 16], f64) {
    let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
    let mut q = [0i32; QK];
    for n in 0..2 {
        for l in 0..32 {
            let (a, b, h) = (ql[64 * n + l], ql[64 * n + 32 + l], qh[32 * n + l]);
            q[128 * n + l] = i32::from((a & 0xF) | ((h & 3) << 4)) - 32;
            q[128 * n + l + 32] = i32::from((b & 0xF) | (((h >> 2) & 3) << 4)) - 32;
            q[128 * n + l + 64] = i32::from((a >> 4) | (((h >> 4) & 3) << 4)) - 32;
            q[128 * n + l + 96] = i32::from((b >> 4) | (((h >> 6) & 3) << 4)) - 32;
        }
    }
    let s = std::array::from_fn(|i| i32::from(sc[i] as i8));
    let d = f64::from(f16::from_le_bytes([blk[208], blk[209]]).to_f32());
    (q, s, d)
}

/// ggml's `quantize_row_q8_K_ref` written out again: per 256 values the first value of largest
/// magnitude `max`, `iscale = -127 / max`, `q = min(127, round_half_even(iscale * x))`,
/// `d = 1 / iscale`.
fn q8k(x: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let (mut q, mut d) = (Vec::new(), Vec::new());
    for b in x.chunks_exact(QK) {
        let max = b
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        if max == 0.0 {
            q.extend([0; QK]);
            d.push(0.0);
            continue;
        }
        let is = -127.0f32 / max;
        q.extend(
            b.iter()
                .map(|&v| ((is * v).round_ties_even() as i32).min(127)),
        );
        d.push(1.0 / is);
    }
    (q, d)
}

/// Checks `out` (tokens x rows) against the exact value of ggml's formula,
/// `Σ_blocks d_w * d_x * Σ_e scale[e/16] * (q_e - 32) * q8_e` (integer sums, f64 scaling),
/// within 1e-5 of the magnitude of its terms (the kernels round f32 products and sums), and
/// against the f64 product with the unquantized activations within the Q8_K rounding
/// (`|x - q8 * d| <= |d| / 2` per element, plus the same float slack).
fn check(m: &DenseMatrix, x: &[f32], tokens: usize, out: &[f32]) -> Result<(), String> {
    let (rows, cols) = (m.rows(), m.cols());
    let nb = cols / QK;
    let data = &m.data()[..];
    for t in 0..tokens {
        let xt = &x[t * cols..][..cols];
        let (q8, dx) = q8k(xt);
        for r in 0..rows {
            let (mut model, mut mag, mut exact, mut qerr) = (0f64, 0f64, 0f64, 0f64);
            for b in 0..nb {
                let (q, sc, dw) = unpack(&data[(r * nb + b) * BB..][..BB]);
                let dd = dw * f64::from(dx[b]);
                let (mut s, mut sa) = (0i64, 0i64);
                for e in 0..QK {
                    let p = i64::from(sc[e / 16] * q[e] * q8[b * QK + e]);
                    s += p;
                    sa += p.abs();
                    let w = dw * f64::from(sc[e / 16] * q[e]);
                    exact += w * f64::from(xt[b * QK + e]);
                    qerr += w.abs() * f64::from(dx[b]).abs() * 0.5;
                }
                model += dd * s as f64;
                mag += (dd * sa as f64).abs();
            }
            let got = f64::from(out[t * rows + r]);
            if (got - model).abs() > 1e-5 * mag + 1e-30 {
                return Err(format!("t={t} r={r}: {got} vs model {model}"));
            }
            if (got - exact).abs() > qerr * 1.001 + 1e-5 * mag + 1e-30 {
                return Err(format!(
                    "t={t} r={r}: {got} vs exact {exact} (bound {qerr})"
                ));
            }
        }
    }
    Ok(())
}

/// A random Q6_K matrix through the codec, rows of different magnitudes.
fn matrix(rows: usize, cols: usize, rng: &mut Rng) -> DenseMatrix {
    let vals: Vec<f32> = (0..rows * cols)
        .map(|i| rng.f32() * 0.05 * (1.0 + (i / cols % 7) as f32))
        .collect();
    let bytes = q6_k::encode(&vals).unwrap();
    DenseMatrix::new(rows, cols, DenseType::Q6_K, Storage::from_vec(bytes)).unwrap()
}

/// Every supported ISA on every pool; asserts all outputs are bit-identical and returns one.
fn run_all(m: &DenseMatrix, x: &[f32], tokens: usize) -> Result<Vec<f32>, String> {
    let mut first: Option<(Isa, Vec<f32>)> = None;
    for pool in pools() {
        for &isa in &isas() {
            let mut out = vec![f32::NAN; tokens * m.rows()];
            pool.install(|| m.matmul_with(isa, x, tokens, &mut out));
            match &first {
                None => first = Some((isa, out)),
                Some((i0, f)) => {
                    if let Some(k) = (0..out.len()).find(|&k| f[k].to_bits() != out[k].to_bits()) {
                        return Err(format!(
                            "{isa:?} on {} threads: out[{k}] = {} but {i0:?} gave {}",
                            pool.current_num_threads(),
                            out[k],
                            f[k]
                        ));
                    }
                }
            }
        }
    }
    Ok(first.map(|(_, o)| o).unwrap_or_default())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn isas_bit_identical_and_match_model(rows in 1usize..70, blocks in 1usize..5,
                                          tokens in 1usize..=9, seed in any::<u64>()) {
        let cols = blocks * QK;
        let mut rng = Rng(seed | 1);
        let m = matrix(rows, cols, &mut rng);
        let mut x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32() * 3.0).collect();
        // An all-zero activation block (d = 0) in the first token.
        x[..QK].fill(0.0);
        let out = run_all(&m, &x, tokens).map_err(TestCaseError::fail)?;
        // The scalar kernel is the reference; run_all's first result is it (Isa::ALL order).
        let mut scalar = vec![0f32; tokens * rows];
        m.matmul_scalar(&x, tokens, &mut scalar);
        prop_assert!(scalar.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()));
        check(&m, &x, tokens, &out).map_err(TestCaseError::fail)?;
    }

    /// Arbitrary block bytes (any codes, any int8 scale including -128, any finite d): the
    /// kernels must still agree bit for bit and with the model.
    #[test]
    fn arbitrary_block_bytes(rows in 1usize..9, blocks in 1usize..3, tokens in 1usize..6,
                             seed in any::<u64>()) {
        let cols = blocks * QK;
        let mut rng = Rng(seed | 1);
        let mut bytes: Vec<u8> = (0..rows * blocks * BB).map(|_| rng.next_u64() as u8).collect();
        for blk in bytes.chunks_exact_mut(BB) {
            let d = f16::from_f32(rng.f32() * 1e-2);
            blk[208..].copy_from_slice(&d.to_le_bytes());
        }
        let m = DenseMatrix::new(rows, cols, DenseType::Q6_K, Storage::from_vec(bytes)).unwrap();
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32()).collect();
        let out = run_all(&m, &x, tokens).map_err(TestCaseError::fail)?;
        check(&m, &x, tokens, &out).map_err(TestCaseError::fail)?;
    }
}

/// 2B4T's width, enough rows and tokens for the parallel path and ragged token tiles.
#[test]
fn parallel_ragged_tokens_bit_identical() {
    let (rows, cols) = (600, 2560);
    let mut rng = Rng(7);
    let m = matrix(rows, cols, &mut rng);
    for tokens in [1, 2, 3, 5, 7] {
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32()).collect();
        let out = run_all(&m, &x, tokens).unwrap();
        check(&m, &x, tokens, &out).unwrap();
        // Token t of a batch equals the same token alone.
        let mut one = vec![0f32; rows];
        let t = tokens - 1;
        m.matmul(&x[t * cols..][..cols], 1, &mut one);
        assert_eq!(one, out[t * rows..][..rows]);
    }
}

// ---------------------------------------------------------------------------------------------
// Known answers from llama.cpp.
//
// A throwaway C program (not kept) pasted ggml's `quantize_row_q6_K_ref`, `quantize_row_q8_K_ref`
// (ggml/src/ggml-quants.c, llama.cpp commit 01243c587feceaa5d6a6c2305535ef2f549c48b8) and the
// AVX2 branch of `ggml_vec_dot_q6_K_q8_K` with `get_scale_shuffle` / `hsum_float_8`
// (ggml/src/ggml-cpu/arch/x86/quants.c, commit 04e1dd75ab73c5c1814474138d8b18e9613f3d80),
// built with `gcc 12.2 -O2 -mavx2 -mfma -mf16c -ffp-contract=off`, and printed the dots below for
// the inputs of bitnet-quantization's tests/common/q6k_inputs.rs (whose encoded bytes its
// tests/q6_k.rs pins).

#[test]
fn matches_llama_cpp_avx2_dot() {
    let blocks = q6_k::encode(&ka_weights()).unwrap();
    // Row 0: the eight blocks in order; row 1: reversed.
    let mut bytes = blocks.clone();
    for b in (0..8).rev() {
        bytes.extend_from_slice(&blocks[b * BB..][..BB]);
    }
    let m = DenseMatrix::new(2, 8 * QK, DenseType::Q6_K, Storage::from_vec(bytes)).unwrap();
    // Two tokens; the second has an all-zero block and an outlier.
    let mut g = Lcg(7);
    let mut x = vec![0.0f32; 2 * 8 * QK];
    for v in &mut x[..8 * QK] {
        *v = g.unit() * 2.0;
    }
    for v in &mut x[8 * QK..] {
        *v = g.unit() * 0.3;
    }
    x[8 * QK + 2 * QK..8 * QK + 3 * QK].fill(0.0);
    x[8 * QK + 5 * QK + 9] = -4.0;
    // out[t * rows + r]: ggml printed (row 0, token 0) -12.9586773, (1, 0) 28.9333553,
    // (0, 1) -2.72840261, (1, 1) 6.56488323.
    let want = [0xc14f56beu32, 0x41e77783, 0xc02e9e26, 0x40d21386];
    let out = run_all(&m, &x, 2).unwrap();
    assert_eq!(out.map_bits(), want);
    // One token at a time takes the T = 1 kernels.
    for t in 0..2 {
        let mut one = [0f32; 2];
        for &isa in &isas() {
            m.matmul_with(isa, &x[t * 8 * QK..][..8 * QK], 1, &mut one);
            assert_eq!(
                one.map(f32::to_bits),
                [want[2 * t], want[2 * t + 1]],
                "{isa:?}"
            );
        }
    }
    check(&m, &x, 2, &out).unwrap();
}

trait Bits {
    fn map_bits(&self) -> Vec<u32>;
}

impl Bits for Vec<f32> {
    fn map_bits(&self) -> Vec<u32> {
        self.iter().map(|v| v.to_bits()).collect()
    }
}

#[test]
fn row_f32_dequantizes() {
    let mut rng = Rng(11);
    let m = matrix(5, 512, &mut rng);
    let w = q6_k::decode(&m.data()[..], 5 * 512).unwrap();
    let mut row = vec![0f32; 512];
    for r in 0..5 {
        m.row_f32(r, &mut row);
        assert_eq!(row, w[r * 512..][..512]);
    }
    assert_eq!(m.nbytes(), 5 * 2 * 210);
    assert_eq!(DenseType::Q6_K.block_size(), 256);
    assert_eq!(DenseType::Q6_K.block_bytes(), 210);
    assert_eq!(DenseType::Q6_K.row_bytes(2560), Some(2100));
    assert_eq!(DenseType::Q6_K.row_bytes(160), None);
    assert!(DenseType::Q6_K.is_quantized() && !DenseType::F16.is_quantized());
}

#[test]
fn bad_sizes_rejected() {
    let s = Storage::from_vec(vec![0u8; 2 * BB]);
    for cols in [160, 255, 300] {
        let e = DenseMatrix::new(2, cols, DenseType::Q6_K, s.clone()).unwrap_err();
        assert!(e.to_string().contains("multiple of 256"), "{e}");
        assert!(e.to_string().contains("Q6_K"), "{e}");
    }
    assert!(matches!(
        DenseMatrix::new(2, 512, DenseType::Q6_K, s.clone()),
        Err(KernelError::Shape { .. })
    ));
    assert!(DenseMatrix::new(2, 256, DenseType::Q6_K, s).is_ok());
    let big = Storage::from_vec(vec![0u8; BB]);
    assert!(DenseMatrix::new(usize::MAX / 2, 256, DenseType::Q6_K, big).is_err());
}

#[test]
#[should_panic(expected = "x.len() != tokens * cols")]
fn wrong_activation_length_panics() {
    let m = DenseMatrix::new(1, 256, DenseType::Q6_K, Storage::from_vec(vec![0u8; BB])).unwrap();
    let mut out = [0f32; 1];
    m.matmul_with(Isa::Scalar, &[0.0; 255], 1, &mut out);
}
