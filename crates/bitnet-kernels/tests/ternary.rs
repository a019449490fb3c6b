//! The ternary matmul: every ISA and thread count gives exactly the scalar reference's integers.

mod common;

use bitnet_common::Storage;
use bitnet_kernels::*;
use bitnet_quantization::{i2s, quantize_activation_row};
use common::{isas, pools, Rng};
use proptest::prelude::*;

fn random_case(rows: usize, cols: usize, tokens: usize, seed: u64) -> (TernaryMatrix, Vec<f32>) {
    let mut rng = Rng(seed | 1);
    let codes: Vec<i8> = (0..rows * cols).map(|_| rng.ternary()).collect();
    // Vary the magnitude per token so the int8 scales differ.
    let x: Vec<f32> = (0..tokens * cols)
        .map(|i| rng.f32() * (1 + i / cols.max(1)) as f32)
        .collect();
    (
        TernaryMatrix::from_codes(rows, cols, &codes, 0.0125).unwrap(),
        x,
    )
}

/// Checks every ISA under every pool against the element-wise reference, for i32 and f32.
fn check_all(w: &TernaryMatrix, x: &[f32], tokens: usize) -> Result<(), TestCaseError> {
    let mut a = QuantizedActivations::default();
    a.quantize_with(Isa::Scalar, x, tokens, w.cols());
    let n = tokens * w.rows();
    let mut want = vec![0i32; n];
    ternary_matmul_i32_scalar(w, &a, &mut want);
    let mut want_f = vec![0f32; n];
    ternary_matmul_scalar(w, &a, &mut want_f);
    for pool in pools() {
        for &isa in &isas() {
            let mut got = vec![i32::MIN; n];
            pool.install(|| ternary_matmul_i32_with(isa, w, &a, &mut got));
            prop_assert_eq!(
                &got,
                &want,
                "{:?} threads={}",
                isa,
                pool.current_num_threads()
            );
            let mut got_f = vec![f32::NAN; n];
            pool.install(|| ternary_matmul_with(isa, w, &a, &mut got_f));
            // Same integers and the same f32 formula: bitwise equal.
            prop_assert!(got_f
                .iter()
                .zip(&want_f)
                .all(|(g, w)| g.to_bits() == w.to_bits()));
        }
    }
    let mut got_f = vec![f32::NAN; n];
    ternary_matmul(w, &a, &mut got_f);
    prop_assert!(got_f
        .iter()
        .zip(&want_f)
        .all(|(g, w)| g.to_bits() == w.to_bits()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn matmul_matches_reference(rows in 1usize..70, cols in 1usize..600, tokens in 1usize..=9, seed in any::<u64>()) {
        let (w, x) = random_case(rows, cols, tokens, seed);
        check_all(&w, &x, tokens)?;
    }

    #[test]
    fn matmul_matches_reference_aligned(rows in 1usize..40, blocks in 1usize..24, tokens in 1usize..=9, seed in any::<u64>()) {
        // Whole 128-blocks, up to 23 of them: crosses the 16-block i16 accumulation group, odd
        // and even block counts (the AVX-512 kernel takes blocks in pairs).
        let (w, x) = random_case(rows, blocks * 128, tokens, seed);
        check_all(&w, &x, tokens)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The fused q/k/v-style call gives each matrix exactly what its own call gives, under every
    /// pool (one parallel pass mixes the chunks of all matrices).
    #[test]
    fn many_matches_one_by_one(rows in proptest::collection::vec(1usize..300, 1..4), cols in 1usize..400, tokens in 1usize..=20, seed in any::<u64>()) {
        let ws: Vec<TernaryMatrix> = rows
            .iter()
            .enumerate()
            .map(|(i, &r)| random_case(r, cols, tokens, seed ^ i as u64).0)
            .collect();
        let x = random_case(1, cols, tokens, seed).1;
        let mut a = QuantizedActivations::default();
        a.quantize(&x, tokens, cols);
        let want: Vec<Vec<f32>> = ws
            .iter()
            .map(|w| {
                let mut o = vec![0f32; tokens * w.rows()];
                ternary_matmul_scalar(w, &a, &mut o);
                o
            })
            .collect();
        for pool in pools() {
            let mut got: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; tokens * w.rows()]).collect();
            let refs: Vec<&TernaryMatrix> = ws.iter().collect();
            let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| &mut o[..]).collect();
            pool.install(|| ternary_matmul_many(&refs, &a, &mut outs));
            for (g, w) in got.iter().zip(&want) {
                prop_assert!(g.iter().zip(w).all(|(g, w)| g.to_bits() == w.to_bits()));
            }
        }
    }
}

#[test]
fn reference_is_the_definition() {
    // 2 x 3 weights, scale 0.5; one token with s_x = 1 (max |x| = 127).
    let w = TernaryMatrix::from_codes(2, 3, &[1, -1, 0, 0, 1, 1], 0.5).unwrap();
    let mut a = QuantizedActivations::new();
    a.quantize(&[127.0, 2.0, -3.0], 1, 3);
    assert_eq!(a.q(0)[..3], [127, 2, -3]);
    assert_eq!(a.stride(), 128);
    assert!(a.q(0)[3..].iter().all(|&v| v == 0));
    assert_eq!((a.scales(), a.sums()), (&[1.0f32][..], &[126][..]));
    let mut out = [0i32; 2];
    ternary_matmul_i32(&w, &a, &mut out);
    assert_eq!(out, [125, -1]);
    let mut y = [0f32; 2];
    ternary_matmul(&w, &a, &mut y);
    assert_eq!(y, [62.5, -0.5]);
}

#[test]
fn i16_accumulation_at_its_exact_limit() {
    // All-(+1) weights are code 2. Against q = -128 (NaN activations quantize to -128, the only
    // way to reach it) every maddubs pair is -512, so a 16-block i16 group sums to exactly
    // -32768; against q = 127 it is +32512. Both the decode kernel (1 token) and the token-tile
    // kernels (2..4 tokens) must stay exact across group boundaries. The NEON kernel without
    // `sdot` widens its i16 sums every 16 blocks for token tiles and every 32 for one token.
    // 63..=129 also cross the AVX-512 kernel's 64-block shift-down group (scaled i32 sums).
    // 1, 4, 5 and 7 rows: the one-row kernels, the 4-row decode tiles and 2-row prompt tiles,
    // and their ragged tails.
    for (rows, blocks) in [1usize, 4, 5, 7]
        .into_iter()
        .flat_map(|r| [1, 2, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 129].map(|b| (r, b)))
    {
        let cols = blocks * 128;
        let w = TernaryMatrix::from_codes(rows, cols, &vec![1i8; rows * cols], 1.0).unwrap();
        for tokens in [1, 2, 3, 4, 5] {
            for (x, q) in [(f32::NAN, -128i32), (1.0, 127)] {
                for &isa in &isas() {
                    let mut a = QuantizedActivations::new();
                    a.quantize_with(isa, &vec![x; tokens * cols], tokens, cols);
                    assert!(a.q(tokens - 1).iter().all(|&v| i32::from(v) == q));
                    let mut out = vec![0i32; rows * tokens];
                    ternary_matmul_i32_with(isa, &w, &a, &mut out);
                    assert_eq!(
                        out,
                        vec![q * cols as i32; rows * tokens],
                        "{isa:?} rows={rows} blocks={blocks} tokens={tokens}"
                    );
                }
            }
        }
    }
}

#[test]
fn from_i2s_is_zero_copy_and_equals_from_codes() {
    let mut rng = Rng(7);
    for (rows, cols) in [(5, 128), (3, 512), (7, 640), (4, 100), (3, 300), (1, 1)] {
        let codes: Vec<i8> = (0..rows * cols).map(|_| rng.ternary()).collect();
        let bytes = Storage::from_vec(i2s::encode(&codes, 0.75));
        let scale = i2s::scale(&bytes, rows * cols).unwrap();
        let a = TernaryMatrix::from_i2s(rows, cols, bytes.clone(), scale).unwrap();
        let b = TernaryMatrix::from_codes(rows, cols, &codes, 0.75).unwrap();
        assert_eq!(
            (a.rows(), a.cols(), a.scale(), a.nbytes()),
            (rows, cols, 0.75, b.nbytes())
        );
        assert_eq!(&a.data()[..], &b.data()[..], "{rows}x{cols}");
        for r in 0..rows {
            assert_eq!(a.codes_row(r), codes[r * cols..(r + 1) * cols]);
        }
        if cols % 128 == 0 {
            assert_eq!(
                a.data().as_ptr(),
                bytes.as_ptr(),
                "cols % 128 == 0 must not copy"
            );
        }
    }
}

#[test]
fn from_i2s_rejects_bad_input() {
    let codes = vec![0i8; 256];
    let mut bytes = i2s::encode(&codes, 1.0);
    assert!(TernaryMatrix::from_i2s(2, 128, Storage::from_vec(bytes[..63].to_vec()), 1.0).is_err());
    bytes[40] = 0xff; // code 3
    let err = TernaryMatrix::from_i2s(2, 128, Storage::from_vec(bytes.clone()), 1.0).unwrap_err();
    assert!(matches!(
        err,
        KernelError::Quant(bitnet_quantization::QuantError::InvalidPackedCode { .. })
    ));
    assert!(TernaryMatrix::from_i2s(1, 256, Storage::from_vec(bytes), 1.0).is_err());
    assert!(TernaryMatrix::from_codes(2, 2, &[0, 0, 2, 0], 1.0).is_err());
    assert!(TernaryMatrix::from_codes(2, 2, &[0, 0, 0], 1.0).is_err());
}

#[test]
fn empty_shapes() {
    let w = TernaryMatrix::from_codes(0, 5, &[], 1.0).unwrap();
    let mut a = QuantizedActivations::new();
    a.quantize(&[1.0; 10], 2, 5);
    ternary_matmul(&w, &a, &mut []);
    let w = TernaryMatrix::from_codes(3, 0, &[], 1.0).unwrap();
    a.quantize(&[], 2, 0);
    let mut out = [1.0f32; 6];
    ternary_matmul(&w, &a, &mut out);
    assert_eq!(out, [0.0; 6]);
}

/// x values chosen to hit the interesting cases of absmax int8 quantization.
fn activation_strategy() -> impl Strategy<Value = Vec<f32>> {
    let special = prop_oneof![
        Just(0.0f32),
        Just(-0.0f32),
        Just(f32::MAX),
        Just(-f32::MAX),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::NAN),
        Just(1e-40f32),                              // subnormal
        Just(1e-6f32),                               // below the 1e-5 floor
        (-300i32..300).prop_map(|k| k as f32 + 0.5), // .5 ties when s_x = 1
        -1e30f32..1e30,
        -1.0f32..1.0,
    ];
    prop::collection::vec(special, 0..300)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn quantize_is_bit_identical_to_definition(mut x in activation_strategy(), anchor in any::<bool>()) {
        // With an element of magnitude 127 (and nothing larger) s_x is exactly 1, so the
        // `k + 0.5` values are exact ties.
        if anchor {
            for v in &mut x {
                if v.is_nan() || v.abs() > 127.0 { *v = 126.5; }
            }
            x.push(-127.0);
        }
        let cols = x.len();
        let mut want = vec![0i8; cols];
        let s = quantize_activation_row(&x, &mut want);
        let sum: i32 = want.iter().map(|&v| i32::from(v)).sum();
        for &isa in &isas() {
            let mut a = QuantizedActivations::new();
            // Two tokens: the row itself and its negation (asymmetric clamp at -128 vs 127).
            let neg: Vec<f32> = x.iter().map(|v| -v).collect();
            let both: Vec<f32> = x.iter().chain(&neg).copied().collect();
            a.quantize_with(isa, &both, 2, cols);
            prop_assert_eq!(&a.q(0)[..cols], &want[..], "{:?}", isa);
            prop_assert!(a.q(0)[cols..].iter().all(|&v| v == 0));
            prop_assert_eq!(a.scales()[0].to_bits(), s.to_bits());
            prop_assert_eq!(a.sums()[0], sum);
            let mut want_neg = vec![0i8; cols];
            let s_neg = quantize_activation_row(&neg, &mut want_neg);
            prop_assert_eq!(&a.q(1)[..cols], &want_neg[..]);
            prop_assert_eq!(a.scales()[1].to_bits(), s_neg.to_bits());
            prop_assert_eq!(a.sums()[1], want_neg.iter().map(|&v| i32::from(v)).sum::<i32>());
        }
    }
}

#[test]
fn quantize_special_rows() {
    for &isa in &isas() {
        let mut a = QuantizedActivations::new();
        // All-zero row: s_x = 127 / 1e-5, q = 0.
        a.quantize_with(isa, &[0.0; 40], 1, 40);
        assert_eq!(a.scales()[0], 127.0 / 1e-5);
        assert!(a.q(0).iter().all(|&v| v == 0));
        // Exact ties at s_x = 1 go to even, both signs.
        let x: Vec<f32> = (0..40)
            .map(|i| {
                if i == 0 {
                    127.0
                } else {
                    (i as f32 - 20.0) + 0.5
                }
            })
            .collect();
        a.quantize_with(isa, &x, 1, 40);
        let want: Vec<i8> = x.iter().map(|v| v.round_ties_even() as i8).collect();
        assert_eq!(&a.q(0)[..40], &want[..]);
        // Buffer reuse: a smaller call after a larger one leaves no stale data.
        a.quantize_with(isa, &[1.0; 3], 1, 3);
        assert_eq!(a.q(0).len(), 128);
        assert_eq!(&a.q(0)[..4], &[127, 127, 127, 0]);
    }
}

#[test]
fn every_isa_on_edge_shapes() {
    // Deterministic sweep of the shapes that stress block pairing and tails: 1..=5 and 63..=66
    // blocks, ragged cols around them, every token count 1..=9 (token tiles of 4 plus
    // remainders), 1/2/3 threads. Prints which ISAs ran (visible with --nocapture).
    let tested: Vec<&str> = isas().iter().map(|i| i.name()).collect();
    eprintln!("every_isa_on_edge_shapes: testing {tested:?}");
    let mut seed = 11;
    for blocks in [1usize, 2, 3, 4, 5, 63, 64, 65, 66] {
        for cols in [blocks * 128 - 127, blocks * 128 - 1, blocks * 128] {
            for tokens in 1..=9 {
                seed += 1;
                let (w, x) = random_case(5, cols, tokens, seed);
                check_all(&w, &x, tokens).unwrap();
            }
        }
    }
}

#[test]
fn runs_of_rows() {
    // A task finishes its rows in runs of up to 64 (`TernaryTiles::run_t`). Row counts that make
    // one-thread chunks hold several runs, a ragged last run and rows outside the kernel's
    // tiles; zero, block-aligned and ragged widths; one token (decode), whole token tiles and
    // ragged ones (a prompt whose last tile holds one token takes the one-token tiles).
    let mut seed = 101;
    for rows in [63, 65, 130, 259, 1003] {
        for cols in [0, 128, 300] {
            for tokens in [1, 2, 5, 8, 9] {
                seed += 1;
                let (w, x) = random_case(rows, cols, tokens, seed);
                check_all(&w, &x, tokens).unwrap();
            }
        }
    }
}

#[test]
fn batches_of_token_blocks() {
    // Batches of 16 and more tokens take AMX's tile driver where the CPU has it (Isa::Amx):
    // panels of 32 or 64 rows with a ragged last one, blocks of 16 tokens with a ragged last
    // one, several token groups (8 blocks a task), padded columns, a matrix of one row.
    // Every other ISA runs the same cases.
    let mut seed = 501;
    for (rows, cols, tokens) in [
        (1, 128, 8),
        (17, 300, 16),
        (63, 2560, 17),
        (65, 128, 33),
        (130, 384, 150),
        (700, 256, 129),
    ] {
        seed += 1;
        let (w, x) = random_case(rows, cols, tokens, seed);
        check_all(&w, &x, tokens).unwrap();
    }
}

#[test]
fn isa_names_round_trip() {
    for isa in Isa::ALL {
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
        assert_eq!(Isa::from_name(&isa.name().to_uppercase()), Some(isa));
    }
    assert_eq!(Isa::from_name("neon"), Some(Isa::Neon));
    assert_eq!(Isa::from_name(" NeonDot "), Some(Isa::NeonDotprod));
    assert_eq!(Isa::from_name("sse2"), None);
    assert!(Isa::Scalar.is_supported());
    // VNNI implies the AVX2 kernels it shares the rest of the work with; likewise dotprod and
    // the NEON kernels.
    assert!(!Isa::Avx512Vnni.is_supported() || Isa::Avx2.is_supported());
    // AMX runs the AVX-512 kernels for everything but batched ternary matmuls.
    assert!(!Isa::Amx.is_supported() || Isa::Avx512Vnni.is_supported());
    // Both AVX-512 forms need the same features.
    assert_eq!(
        Isa::Avx512Vnni.is_supported(),
        Isa::Avx512Vnni256.is_supported()
    );
    assert!(!Isa::NeonDotprod.is_supported() || Isa::Neon.is_supported());
    // One architecture's ISAs at most.
    assert!(!(Isa::Avx2.is_supported() && Isa::Neon.is_supported()));
    #[cfg(target_arch = "aarch64")]
    assert!(Isa::Neon.is_supported(), "every aarch64 Linux CPU has NEON");
    // scripts/test-wasm.sh builds with +simd128, so there the SIMD128 kernels are under test.
    #[cfg(target_arch = "wasm32")]
    assert!(
        Isa::Simd128.is_supported(),
        "wasm32 test build lacks +simd128"
    );
    // Without overrides the dispatch takes the best supported ISA.
    if std::env::var_os("BITNET_ISA").is_none() && std::env::var_os("BITNET_FORCE_SCALAR").is_none()
    {
        let avx512 = if bitnet_kernels::splits_512bit_vectors() {
            Isa::Avx512Vnni256
        } else {
            Isa::Avx512Vnni
        };
        let best = [
            Isa::Amx,
            avx512,
            Isa::Avx2,
            Isa::NeonDotprod,
            Isa::Neon,
            Isa::Simd128,
            Isa::Scalar,
        ]
        .into_iter()
        .find(|i| i.is_supported());
        assert_eq!(Some(detected_isa()), best);
    }
}

/// `quantize_produced` (each row produced and quantized in one pass) equals producing every row
/// first and quantizing them after, on every pool: the produced rows, codes, scales and sums.
/// 1, 15 and 40 tokens: inline, and the parallel pass from `PAR_ROWS` rows on.
#[test]
fn quantize_produced_equals_produce_then_quantize() {
    let cols = 300;
    let mut rng = Rng(11);
    for tokens in [1, 15, PAR_ROWS, 40] {
        let src: Vec<f32> = (0..tokens * cols).map(|_| rng.f32() * 3.0).collect();
        let produce = |t: usize, row: &mut [f32]| {
            for (k, v) in row.iter_mut().enumerate() {
                *v = src[t * cols + k] * (t + 1) as f32 - 0.5;
            }
        };
        let mut want_x = vec![0.0f32; tokens * cols];
        for (t, row) in want_x.chunks_exact_mut(cols).enumerate() {
            produce(t, row);
        }
        let mut want = QuantizedActivations::new();
        want.quantize(&want_x, tokens, cols);
        for pool in pools() {
            let (mut x, mut got) = (vec![f32::NAN; tokens * cols], QuantizedActivations::new());
            pool.install(|| got.quantize_produced(&mut x, tokens, cols, produce));
            assert_eq!(x, want_x, "{tokens} tokens");
            assert_eq!(got.scales(), want.scales());
            assert_eq!(got.sums(), want.sums());
            assert!((0..tokens).all(|t| got.q(t) == want.q(t)));
        }
    }
}
