//! An 8-bit (ggml Q8_0) embedding: export writes llama.cpp's `quantize_row_q8_0_ref` blocks,
//! the loader maps them zero-copy as `DenseType::Q8_0`, and re-export copies them unchanged.

mod common;

use bitnet_models::export::{write_gguf, DenseFormat, ExportOptions, TernaryFormat};
use bitnet_quantization::q8_0;
use bitnet_quantization::DenseType;
use common::*;

fn opts(dense: DenseFormat) -> ExportOptions {
    ExportOptions {
        ternary: TernaryFormat::Tq2_0,
        dense,
        name: "kjv".into(),
    }
}

#[test]
fn q8_0_embedding_round_trip() {
    assert_eq!(DenseFormat::parse("q8_0"), Some(DenseFormat::Q8_0));
    let hf = bitnet_models::load(&kjv_dir(), None).unwrap();
    let e = &hf.weights.token_embd;
    let mut all = vec![0f32; e.rows() * e.cols()];
    for (r, row) in all.chunks_mut(e.cols()).enumerate() {
        e.dequantize_row(r, row);
    }
    let want = q8_0::encode(&all).unwrap();

    let dir = tempdir();
    let a = dir.path().join("a.gguf");
    write_gguf(
        &hf.weights,
        hf.vocab.as_ref().unwrap(),
        &opts(DenseFormat::Q8_0),
        &a,
    )
    .unwrap();
    let m = bitnet_models::load(&a, None).unwrap();
    let q = &m.weights.token_embd;
    assert_eq!(q.ty(), DenseType::Q8_0);
    assert_eq!((q.rows(), q.cols()), (e.rows(), e.cols()));
    assert_eq!(&q.data()[..], &want[..]);
    // Lookup dequantizes.
    let mut row = vec![0f32; q.cols()];
    q.dequantize_row(7, &mut row);
    let dec = q8_0::decode(&want, all.len()).unwrap();
    assert_eq!(row, dec[7 * q.cols()..][..q.cols()]);

    // Q8_0 -> Q8_0 copies the blocks; Q8_0 -> F16 rounds the dequantized values to f16.
    let b = dir.path().join("b.gguf");
    write_gguf(
        &m.weights,
        m.vocab.as_ref().unwrap(),
        &opts(DenseFormat::Q8_0),
        &b,
    )
    .unwrap();
    let m2 = bitnet_models::load(&b, None).unwrap();
    assert_eq!(&m2.weights.token_embd.data()[..], &want[..]);
    let c = dir.path().join("c.gguf");
    write_gguf(
        &m.weights,
        m.vocab.as_ref().unwrap(),
        &opts(DenseFormat::F16),
        &c,
    )
    .unwrap();
    let m3 = bitnet_models::load(&c, None).unwrap();
    assert_eq!(m3.weights.token_embd.ty(), DenseType::F16);
    m3.weights.token_embd.dequantize_row(7, &mut row);
    let want16 = bitnet_quantization::float::f32_to_f16_bytes(&dec[7 * q.cols()..][..q.cols()]);
    let mut back = vec![0f32; q.cols()];
    bitnet_quantization::float::f16_to_f32(&want16, &mut back);
    assert_eq!(row, back);
}
