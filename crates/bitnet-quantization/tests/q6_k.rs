//! ggml `Q6_K`: bytes equal to llama.cpp's reference quantizer on fixed inputs, decode equal to
//! its `dequantize_row_q6_K`, the Q8_K activation quantizer equal to `quantize_row_q8_K_ref`,
//! round-trip error bounds, and the all-zero / constant / bad-length cases.

use bitnet_quantization::q6_k::{self, BLOCK_BYTES, QK_K};
use bitnet_quantization::QuantError;
use half::f16;
use proptest::prelude::*;

#[path = "common/q6k_inputs.rs"]
mod q6k_inputs;
use q6k_inputs::{ka_weights, Lcg};

// ---------------------------------------------------------------------------------------------
// Known answers from ggml itself.
//
// Produced by a throwaway C program (not kept) that pasted, unchanged, `nearest_int`,
// `make_qx_quants`, `quantize_row_q6_K_ref`, `dequantize_row_q6_K` and `quantize_row_q8_K_ref`
// from llama.cpp's ggml/src/ggml-quants.c at commit 01243c587feceaa5d6a6c2305535ef2f549c48b8,
// with ggml's software FP16 conversions (ggml-cpu-impl.h), built with
// `gcc 12.2 -O2 -std=c11 -ffp-contract=off` on x86-64 and fed the inputs below. (A
// `-march=native` build, where GCC may fuse `iscale * x + 12582912.f` into an FMA, changes one
// byte of block 4: see the q6_k module docs.)

/// `quantize_row_q6_K_ref` of the eight [`ka_weights`] blocks, 210 bytes each in hex.
const KA_BLOCKS: [&str; 8] = [
    concat!(
        "df48f0ed03c832745129101b56766f0f965d333eb54ddf5d2b11bad9c1ce6117ab01c70d52201872a261",
        "36e80416017556f8f531fdef86d16883c65814ca491764be5dac814c6d4ff0840679ae937205d50821b4",
        "f6d5121e0e84425c40958f06adfb22ef49901dd598da67dfbdbf8cf60888af5c702c8d89ebe61fcd35a0",
        "dd0588c17ab6c841236690025d2966ff889fa8ee6541dfa3bf52b711f5f21f14900bba99f9d5e4822b12",
        "de0b4946bb11ab66eaa44072a34068631c052d1d3f9578c4846e7b857c86808384868677847a6c7cd280",
    ),
    concat!(
        "96d578485c60617babfb2816591e0b7ed4b8b8358b0ea4b418a51be380055a6fe58c61eba013179fb85f",
        "5a01ae08cf6f56f8044d375009931ea5099448ff12814f87cf02223769ef4d06911407b01c1b5d62135f",
        "a3ef7b4ed5954569a060ce4098a58c0f1766c020ba3690d5ff6890756afb0a71937e6c94bcb54bf3f472",
        "a3b95fd6aa017d3f3c5774cbd0527bccd234b53e66a8b0a385aa9073ca7d6c8594b54d652ad815510265",
        "5d03c001ae009005cb9807a49da3538fe7c2fef1599097b80000000000000001010204090edd44807197",
    ),
    concat!(
        "96935667f06ccf727428e986f9b5f8a657a5ba4b2525b53395826b1a3f4a8cf7599c78f1b63ea86820db",
        "b8799515d1f800000000000000000000000000000000060e0e0206040c0806030700080406050a42d3dd",
        "934b8a1818531abd157d72b9b5b5956585b595b555d5e5e5853555152250d750409f5d50207f58a02300",
        "ef0e202a8f0b42cac8c9deb9a4b28f9d2c6f81b193a2902082b3b2b3b2b1a0a1928320e2a061e02120e1",
        "0323202222e161e2a91281a261d38630a21e96a0e0d2af690202fe00fe02fec002fe01ff8002fe02008e",
    ),
    concat!(
        "5e6cfd0b9b6fa8000db401dfe752c8e519c50b00020061126370e37de4da039bba1a0ffa960bd094c37f",
        "f589c13e701426e5a089322dbd8800fc1bddcdc6a9474d8aeffdb7400f6fae6536fc03d6203b56f0c03e",
        "64afe970b77ab4a51769db0a76bf58806ab7c287f078a630f92d088b00fe3bc2f3515f1f6608b0de33df",
        "8fbf875d35a2682d300c380d09b30a636302a0a5b1b550ec1c6c3cff5596282e8049f471ab31b02c40c6",
        "01b750f2f06e2d3e8c082497ec0bbd66ec14b059501d020c797b788a808c9388728a86888588877b0800",
    ),
    concat!(
        "2b2e60f451d2aacf00e6ed48499057408cb619480448cb4eba5c195f156780d6d80172b2c10e8c84a400",
        "089bc70ff1e04911633e7984abc54105385cf4f81055890b4ba854192950cf2ac80f21784a07bc5b174a",
        "66aff6e0861369e659c63455a26f114229ddbf018bff22effff508c7d6622afbf37dea05f16841e8cdd3",
        "a1b8ee2123b4547810c982ab04b103fc149999412999c95825baf03b34dd6c0f3020c68c1582463ae161",
        "d330d16a4c6ef95710a67be284fa9924130f58e121a1226c8f77827b858c78857e8a7c86768080730000",
    ),
    concat!(
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    ),
    concat!(
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000808080808080808080808080808080800008",
    ),
    concat!(
        "0055aaff4499ee3388dd2277cc1166bb00bb6611cc7722dd8833ee9944ffaa550055aaff4499ee3388dd",
        "2277cc1166bbeecc3311ff6644bb9900eecc331188660055aaff4499ee3388dd2277cc1166bb00bb6611",
        "cc7722dd8833ee9944ffaa550055aaff4499ee3388dd2277cc1166bbeecc3311ff6644bb9900eecc3311",
        "886688228822dd77dd88228877dd7722882233882288dd77dd22882277dd77cc228888228822dd77dd88",
        "228877dd7722882233882288dd77dd22882277dd77cc2288807f8073807f8073807f8073807f80730094",
    ),
];

/// FNV-1a (32-bit) of a byte stream: how the C program summarised long outputs.
fn fnv(bytes: impl IntoIterator<Item = u8>) -> u32 {
    bytes.into_iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn encode_matches_ggml_reference() {
    let w = ka_weights();
    let got = q6_k::encode(&w).unwrap();
    assert_eq!(got.len(), 8 * BLOCK_BYTES);
    for (i, (blk, want)) in got.chunks_exact(BLOCK_BYTES).zip(KA_BLOCKS).enumerate() {
        assert_eq!(hex(blk), want, "block {i}");
    }
    // The block-4 d really underflowed, block 3's is subnormal: the cases the inputs aim at.
    let d = |b: usize| f16::from_le_bytes([got[b * BLOCK_BYTES + 208], got[b * BLOCK_BYTES + 209]]);
    assert_eq!(d(4), f16::ZERO);
    assert!(!d(3).is_normal() && d(3) != f16::ZERO, "{}", d(3));
}

#[test]
fn decode_matches_ggml_reference() {
    let bytes: Vec<u8> = KA_BLOCKS
        .concat()
        .as_bytes()
        .chunks_exact(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
    let y = q6_k::decode(&bytes, 8 * QK_K).unwrap();
    assert_eq!(fnv(y.iter().flat_map(|v| v.to_le_bytes())), 0xc73c_3bb8);
}

#[test]
fn q8_k_matches_ggml_reference() {
    // Two activation rows of 8 blocks; the second has an all-zero block and an outlier.
    let mut g = Lcg(7);
    let mut x = vec![0.0f32; 2 * 8 * QK_K];
    for v in &mut x[..8 * QK_K] {
        *v = g.unit() * 2.0;
    }
    for v in &mut x[8 * QK_K..] {
        *v = g.unit() * 0.3;
    }
    x[8 * QK_K + 2 * QK_K..8 * QK_K + 3 * QK_K].fill(0.0);
    x[8 * QK_K + 5 * QK_K + 9] = -4.0;
    let want: [([u32; 8], u32); 2] = [
        (
            [
                0x3c80cf8d, 0xbc80be42, 0xbc80c95d, 0x3c80eb2b, 0xbc8029a9, 0x3c80d799, 0xbc80f203,
                0xbc809094,
            ],
            0x2601aab5,
        ),
        (
            [
                0x3b19b9af, 0xbb1a7bc5, 0x00000000, 0xbb1ac641, 0x3b1aad33, 0x3d010204, 0xbb19ef9e,
                0xbb1ac24b,
            ],
            0x14fb9ac0,
        ),
    ];
    for (t, (want_d, want_q)) in want.iter().enumerate() {
        let mut q = vec![0i8; 8 * QK_K];
        let mut d = [0u32; 8];
        for (b, (xb, qb)) in x[t * 8 * QK_K..][..8 * QK_K]
            .chunks_exact(QK_K)
            .zip(q.chunks_exact_mut(QK_K))
            .enumerate()
        {
            d[b] = q6_k::quantize_q8_k_block(xb, qb).to_bits();
        }
        assert_eq!(&d, want_d, "token {t} scales");
        assert_eq!(fnv(q.iter().map(|&v| v as u8)), *want_q, "token {t} codes");
    }
}

// ---------------------------------------------------------------------------------------------
// Properties.

#[test]
fn zero_and_constant_blocks() {
    let b = q6_k::encode(&[0.0; 2 * QK_K]).unwrap();
    assert_eq!(b, vec![0u8; 2 * BLOCK_BYTES]);
    assert_eq!(q6_k::decode(&b, 2 * QK_K).unwrap(), vec![0.0; 2 * QK_K]);
    // A subnormal-small block is "all zero" to ggml too (every |x| < 1e-15).
    assert_eq!(
        q6_k::encode(&[1e-16; QK_K]).unwrap(),
        vec![0u8; BLOCK_BYTES]
    );

    // A constant c: every code is 0 (c maps to -32), every scale -128, d = f16(c / 4096).
    for c in [0.5f32, -0.5, 3.0, 1e-3, -7.25] {
        let b = q6_k::encode(&[c; QK_K]).unwrap();
        let d = f16::from_f32(c / 4096.0);
        assert!(b[..192].iter().all(|&x| x == 0), "{c}");
        assert!(b[192..208].iter().all(|&x| x as i8 == -128), "{c}");
        assert_eq!(&b[208..], &d.to_le_bytes(), "{c}");
        let y = q6_k::decode(&b, QK_K).unwrap();
        let want = d.to_f32() * -128.0 * -32.0;
        assert!(y.iter().all(|&v| v == want), "{c}: {} vs {want}", y[0]);
        // f16 keeps 11 significant bits, fewer below 2^-14 (1e-3 / 4096 is subnormal, with a
        // quantum of 2^-24).
        let tol = c.abs() * 2f32.powi(-11) + 4096.0 * 2f32.powi(-25);
        assert!((want - c).abs() <= tol, "{c}: {want}");
    }
}

#[test]
fn bad_lengths_rejected() {
    assert!(matches!(
        q6_k::encode(&[0.0; 255]),
        Err(QuantError::NotMultiple { multiple: 256, .. })
    ));
    assert!(q6_k::encode(&[]).unwrap().is_empty());
    let b = vec![0u8; BLOCK_BYTES];
    assert!(q6_k::decode(&b, 512).is_err());
    assert!(q6_k::decode(&b[..209], 256).is_err());
    assert!(q6_k::decode(&b, 250).is_err());
    let mut out = vec![0.0; 255];
    assert!(q6_k::decode_into(&b, &mut out).is_err());
}

/// Non-finite input must not panic (ggml's release build does not either); the output is
/// whatever its bit tricks give, so only the length is checked.
#[test]
fn non_finite_input_does_not_panic() {
    let mut x = vec![0.25f32; 2 * QK_K];
    x[3] = f32::NAN;
    x[300] = f32::INFINITY;
    x[301] = f32::NEG_INFINITY;
    let b = q6_k::encode(&x).unwrap();
    assert_eq!(b.len(), 2 * BLOCK_BYTES);
    assert_eq!(q6_k::decode(&b, 2 * QK_K).unwrap().len(), 2 * QK_K);
    let mut q = vec![0i8; QK_K];
    q6_k::quantize_q8_k_block(&x[..QK_K], &mut q);
    q6_k::quantize_q8_k_block(&x[QK_K..], &mut q);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Round trip within the quantizer's error: per 16-weight sub-block a step is about
    /// max|x| / 32 (half a step of rounding, up to a step more where the int8 scale rounded
    /// down and a value was clamped at code 31), plus the int8 scale's rounding, which is
    /// relative to the largest sub-block scale of the whole block (max|block| / 32 / 128).
    #[test]
    fn round_trip_error_bound(
        blocks in 1usize..4,
        mags in prop::collection::vec(-8i32..4, 64),
        seed in any::<u32>(),
    ) {
        let mut g = Lcg(seed);
        let n = blocks * QK_K;
        // Sub-blocks of different magnitudes, as in real rows where a few channels dominate.
        let x: Vec<f32> = (0..n).map(|i| g.unit() * 2f32.powi(mags[i / 16 % 64])).collect();
        let b = q6_k::encode(&x).unwrap();
        prop_assert_eq!(b.len(), blocks * BLOCK_BYTES);
        let y = q6_k::decode(&b, n).unwrap();
        let amax = |s: &[f32]| s.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (mut err2, mut x2) = (0.0f64, 0.0f64);
        for (xb, yb) in x.chunks(QK_K).zip(y.chunks(QK_K)) {
            let mb = amax(xb);
            for (xs, ys) in xb.chunks(16).zip(yb.chunks(16)) {
                let tol = amax(xs) / 32.0 * 1.6 + mb / 32.0 / 128.0 * 20.0;
                for (a, c) in xs.iter().zip(ys) {
                    prop_assert!((a - c).abs() <= tol, "{} vs {} (tol {})", a, c, tol);
                    err2 += f64::from(a - c).powi(2);
                    x2 += f64::from(*a).powi(2);
                }
            }
        }
        // Uniform values in [-m, m] have rms m/sqrt(3); 6-bit rounding leaves about
        // step/sqrt(12) = m/(32 sqrt(12)): a relative rms error near 1/64.
        prop_assert!(err2 <= x2 * 0.03f64.powi(2), "relative rms {}", (err2 / x2).sqrt());
    }

    /// Decoding is total: any bytes decode without panicking to d * scale * (code - 32).
    #[test]
    fn decode_any_bytes(bytes in prop::collection::vec(any::<u8>(), BLOCK_BYTES)) {
        let y = q6_k::decode(&bytes, QK_K).unwrap();
        let blk: &[u8; BLOCK_BYTES] = bytes.as_slice().try_into().unwrap();
        let d = f16::from_le_bytes([bytes[208], bytes[209]]).to_f32();
        for (e, &v) in y.iter().enumerate() {
            let want = d * f32::from(bytes[192 + e / 16] as i8) * (f32::from(q6_k::code(blk, e)) - 32.0);
            prop_assert!(v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()));
        }
    }
}
