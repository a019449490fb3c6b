//! Round trips and hand-computed byte fixtures for every codec.

use bitnet_quantization::{hf_packed, i2s, q8_0, tq1_0, tq2_0, QuantError};
use half::f16;
use proptest::prelude::*;

/// 256 codes, zero except a few chosen so every fixture byte below can be derived by hand.
fn fixture_codes() -> Vec<i8> {
    let mut c = vec![0i8; 256];
    c[0] = 1;
    c[33] = -1;
    c[127] = 1;
    c[128] = -1;
    c[200] = -1;
    c[255] = 1;
    c
}

#[test]
fn tq2_0_fixture_by_hand() {
    // Two blocks: the fixture, then an all-zero block (d = 0, as llama.cpp gives for absmax 0).
    let mut codes = fixture_codes();
    codes.extend([0i8; 256]);
    let b = tq2_0::encode(&codes, 0.25).unwrap();
    assert_eq!(b.len(), 132);
    // Zero weights are code 1 in every 2-bit field -> 0x55. Element e of half h sits in byte
    // 32h + (e % 32) at bits 2 * (e / 32), LSB-first.
    let mut expect = [0x55u8; 64];
    expect[0] = 0x56; // e0: bits 1:0 = 2
    expect[1] = 0x51; // e33: byte 1, bits 3:2 = 0
    expect[31] = 0x95; // e127: byte 31, bits 7:6 = 2
    expect[32] = 0x54; // e128: half 1 byte 0, bits 1:0 = 0
    expect[40] = 0x45; // e200: half 1 offset 72 -> byte 32+8, bits 5:4 = 0
    expect[63] = 0x95; // e255: half 1 byte 31, bits 7:6 = 2
    assert_eq!(&b[..64], &expect);
    assert_eq!(&b[64..66], &[0x00, 0x34]); // f16 0.25
    assert!(b[66..130].iter().all(|&x| x == 0x55));
    assert_eq!(&b[130..132], &[0, 0]);

    let (dc, ds) = tq2_0::decode(&b, 512).unwrap();
    assert_eq!(dc, codes);
    assert_eq!(ds, vec![0.25, 0.0]);
}

#[test]
fn tq1_0_fixture_by_hand() {
    let mut codes = fixture_codes();
    codes.extend([0i8; 256]);
    let b = tq1_0::encode(&codes, 0.25).unwrap();
    assert_eq!(b.len(), 108);
    // Five zero trits: 11111_3 = 121, stored as ceil(121 * 256 / 243) = 128. Four zero trits
    // in qh: 1111_3 = 40, shifted one trit up = 120 -> ceil(120 * 256 / 243) = 127.
    let mut qs = [128u8; 48];
    // qs[0]: e0 is trit 0 (weight 81) = 2 and e128 = 0 + 32*4 is trit 4 (weight 1) = 0:
    // 121 + 81 - 1 = 201 -> ceil(201*256/243) = ceil(211.7..) = 212.
    qs[0] = 212;
    qs[1] = 100; // e33 = trit 1 of byte 1 (weight 27) = 0: 94 -> 100
    qs[31] = 131; // e127 = 31 + 32*3: trit 3 (weight 3) = 2: 124 -> 131
    qs[40] = 118; // e200 = 160 + 8 + 16*2: byte 40, trit 2 (weight 9) = 0: 112 -> 118
    let mut qh = [127u8; 4];
    qh[3] = 130; // e255 = 240 + 3 + 4*3: qh[3], last of 4 trits = 2: (40+1)*3 = 123 -> 130
    assert_eq!(&b[..48], &qs);
    assert_eq!(&b[48..52], &qh);
    assert_eq!(&b[52..54], &[0x00, 0x34]);
    assert!(b[54..102].iter().all(|&x| x == 128));
    assert!(b[102..106].iter().all(|&x| x == 127));
    assert_eq!(&b[106..108], &[0, 0]);

    let (dc, ds) = tq1_0::decode(&b, 512).unwrap();
    assert_eq!(dc, codes);
    assert_eq!(ds, vec![0.25, 0.0]);
}

#[test]
fn block_structs_match_bytes() {
    let b = tq2_0::encode(&fixture_codes(), 0.25).unwrap();
    let blk = tq2_0::BlockTq2_0::from_bytes(b[..66].try_into().unwrap());
    assert_eq!(blk.d, f16::from_f32(0.25));
    assert_eq!(blk.to_bytes().as_slice(), &b[..]);
    let b = tq1_0::encode(&fixture_codes(), 0.25).unwrap();
    let blk = tq1_0::BlockTq1_0::from_bytes(b[..54].try_into().unwrap());
    assert_eq!(blk.qh, [127, 127, 127, 130]);
    assert_eq!(blk.to_bytes().as_slice(), &b[..]);
}

#[test]
fn ternary_block_errors() {
    assert!(matches!(
        tq2_0::encode(&[0; 100], 1.0),
        Err(QuantError::NotMultiple { .. })
    ));
    assert!(matches!(
        tq1_0::encode(&[0; 256], f32::NAN),
        Err(QuantError::InvalidScale(_))
    ));
    let mut c = vec![0i8; 256];
    c[7] = 2;
    assert_eq!(
        tq2_0::encode(&c, 1.0),
        Err(QuantError::InvalidCode { index: 7, code: 2 })
    );
    assert!(matches!(
        tq2_0::decode(&[0; 65], 256),
        Err(QuantError::Length { .. })
    ));
    assert!(matches!(
        tq1_0::decode(&[0; 54], 512),
        Err(QuantError::Length { .. })
    ));
    let mut b = tq2_0::encode(&[0; 256], 1.0).unwrap();
    b[3] = 0xff;
    assert_eq!(
        tq2_0::decode(&b, 256).map(|_| ()),
        Err(QuantError::InvalidPackedCode { index: 3 })
    );
}

#[test]
fn tq_negative_scale_flips_codes_like_llama_cpp() {
    let codes = fixture_codes();
    let neg: Vec<i8> = codes.iter().map(|c| -c).collect();
    for (enc, dec) in [
        (
            tq2_0::encode as fn(&[i8], f32) -> _,
            tq2_0::decode as fn(&[u8], usize) -> _,
        ),
        (tq1_0::encode, tq1_0::decode),
    ] {
        let b = enc(&codes, -0.5).unwrap();
        assert_eq!(b, enc(&neg, 0.5).unwrap());
        assert_eq!(dec(&b, 256).unwrap(), (neg.clone(), vec![0.5]));
    }
}

#[test]
fn tq_quantize_ref_from_floats() {
    // Non-ternary input: d = absmax, codes = round-half-away(x / d).
    let mut x = vec![0.0f32; 256];
    x[0] = -2.0;
    x[1] = 1.0; // exactly 0.5 after scaling: lroundf rounds away from zero -> +1
    x[2] = -0.9; // -0.45 -> 0
    x[3] = 1.5; // 0.75 -> 1
    for (b, (c, d)) in [
        (
            tq2_0::quantize_ref(&x).unwrap(),
            tq2_0::decode(&tq2_0::quantize_ref(&x).unwrap(), 256).unwrap(),
        ),
        (
            tq1_0::quantize_ref(&x).unwrap(),
            tq1_0::decode(&tq1_0::quantize_ref(&x).unwrap(), 256).unwrap(),
        ),
    ] {
        assert!(!b.is_empty());
        assert_eq!(&c[..4], &[-1, 1, 0, 1]);
        assert_eq!(d, vec![2.0]);
    }
}

fn codes_strategy(max: usize) -> impl Strategy<Value = Vec<i8>> {
    prop::collection::vec(-1i8..=1, 0..max)
}

proptest! {
    #[test]
    fn i2s_round_trip(codes in codes_strategy(700), scale in any::<f32>()) {
        let b = i2s::encode(&codes, scale);
        prop_assert_eq!(b.len(), i2s::nbytes(codes.len()));
        let (c, s) = i2s::decode(&b, codes.len()).unwrap();
        prop_assert_eq!(c, codes);
        prop_assert_eq!(s.to_bits(), scale.to_bits());
    }

    #[test]
    fn tq_round_trip(blocks in 1usize..4, seed in prop::collection::vec(-1i8..=1, 1024),
                     sparse in any::<bool>(), scale in 1e-4f32..1e4) {
        let n = blocks * 256;
        // `sparse` zeroes whole blocks now and then to exercise d = 0.
        let codes: Vec<i8> = seed[..n].iter().enumerate()
            .map(|(i, &c)| if sparse && (i / 256) % 2 == 1 { 0 } else { c }).collect();
        let d = f16::from_f32(scale).to_f32();
        for (bytes, decoded) in [
            { let b = tq2_0::encode(&codes, scale).unwrap(); (b.len(), tq2_0::decode(&b, n).unwrap()) },
            { let b = tq1_0::encode(&codes, scale).unwrap(); (b.len(), tq1_0::decode(&b, n).unwrap()) },
        ] {
            prop_assert!(bytes == tq2_0::nbytes(n) || bytes == tq1_0::nbytes(n));
            prop_assert_eq!(&decoded.0, &codes);
            for (bi, &bd) in decoded.1.iter().enumerate() {
                let any = codes[bi * 256..][..256].iter().any(|&c| c != 0);
                prop_assert_eq!(bd, if any { d } else { 0.0 });
            }
        }
    }

    #[test]
    fn hf_packed_round_trip(r in 0usize..9, k in 0usize..40, seed in prop::collection::vec(-1i8..=1, 36 * 40)) {
        let codes = &seed[..4 * r * k];
        let p = hf_packed::pack(codes, 4 * r, k).unwrap();
        prop_assert_eq!(p.len(), r * k);
        prop_assert_eq!(hf_packed::unpack(&p, 4 * r, k).unwrap(), codes.to_vec());
    }

    #[test]
    fn q8_0_round_trip(x in prop::collection::vec(-1e3f32..1e3, 0..4).prop_flat_map(|v| {
        prop::collection::vec(-1e3f32..1e3, 32 * v.len())
    })) {
        let b = q8_0::encode(&x).unwrap();
        let y = q8_0::decode(&b, x.len()).unwrap();
        for (blk_x, blk_y) in x.chunks(32).zip(y.chunks(32)) {
            let amax = blk_x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Half a quantization step, plus f16 rounding of d (2^-11 relative) times 127 steps.
            let tol = amax / 127.0 * (0.5 + 127.0 / 2048.0) + 1e-6;
            for (a, b) in blk_x.iter().zip(blk_y) {
                prop_assert!((a - b).abs() <= tol, "{} vs {} tol {}", a, b, tol);
            }
        }
    }
}
