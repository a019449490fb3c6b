//! A 6.5625-bit (ggml Q6_K) embedding: export writes llama.cpp's `quantize_row_q6_K_ref` blocks
//! (byte for byte what `llama-quantize` writes, in the ignored test that needs a llama.cpp build),
//! the loader maps them zero-copy as `DenseType::Q6_K`, re-export copies them unchanged, and a
//! hidden size that is not a multiple of 256 is refused with an error instead of a bad file.

mod common;

use bitnet_gguf::{GgmlType, GgufFile};
use bitnet_models::export::{write_gguf, DenseFormat, ExportOptions, TernaryFormat};
use bitnet_models::{fixture, Arch};
use bitnet_quantization::q6_k;
use bitnet_quantization::DenseType;
use common::*;
use std::path::PathBuf;
use std::process::Command;

fn opts(dense: DenseFormat) -> ExportOptions {
    ExportOptions {
        ternary: TernaryFormat::Tq2_0,
        dense,
        name: "kjv".into(),
    }
}

#[test]
fn q6_k_embedding_round_trip() {
    for name in ["q6_k", "Q6_K", "q6k"] {
        assert_eq!(DenseFormat::parse(name), Some(DenseFormat::Q6_K));
    }
    let hf = bitnet_models::load(&kjv_dir(), None).unwrap();
    let e = &hf.weights.token_embd;
    let mut all = vec![0f32; e.rows() * e.cols()];
    for (r, row) in all.chunks_mut(e.cols()).enumerate() {
        e.dequantize_row(r, row);
    }
    let want = q6_k::encode(&all).unwrap();

    let dir = tempdir();
    let a = dir.path().join("a.gguf");
    let vocab = hf.vocab.as_ref().unwrap();
    write_gguf(&hf.weights, vocab, &opts(DenseFormat::Q6_K), &a).unwrap();
    let m = bitnet_models::load(&a, None).unwrap();
    let q = &m.weights.token_embd;
    assert_eq!(q.ty(), DenseType::Q6_K);
    assert_eq!((q.rows(), q.cols()), (e.rows(), e.cols()));
    assert_eq!(q.nbytes(), e.rows() * e.cols() / 256 * 210);
    assert_eq!(&q.data()[..], &want[..]);
    // Lookup dequantizes, and stays close to the original embedding.
    let dec = q6_k::decode(&want, all.len()).unwrap();
    let mut row = vec![0f32; q.cols()];
    for r in [0, 7, e.rows() - 1] {
        q.dequantize_row(r, &mut row);
        assert_eq!(row, dec[r * q.cols()..][..q.cols()]);
        let orig = &all[r * q.cols()..][..q.cols()];
        let (err2, x2) = orig
            .iter()
            .zip(&row)
            .fold((0f64, 0f64), |(e2, x2), (&a, &b)| {
                (e2 + f64::from(a - b).powi(2), x2 + f64::from(a).powi(2))
            });
        assert!(
            err2 <= x2 * 0.03f64.powi(2),
            "row {r}: rms error {}",
            (err2 / x2).sqrt()
        );
    }

    // Q6_K -> Q6_K copies the blocks; Q6_K -> Q8_0 / F16 re-encode the dequantized values.
    let b = dir.path().join("b.gguf");
    let vocab = m.vocab.as_ref().unwrap();
    write_gguf(&m.weights, vocab, &opts(DenseFormat::Q6_K), &b).unwrap();
    let m2 = bitnet_models::load(&b, None).unwrap();
    assert_eq!(&m2.weights.token_embd.data()[..], &want[..]);
    let c = dir.path().join("c.gguf");
    write_gguf(&m.weights, vocab, &opts(DenseFormat::Q8_0), &c).unwrap();
    let m3 = bitnet_models::load(&c, None).unwrap();
    assert_eq!(m3.weights.token_embd.ty(), DenseType::Q8_0);
    let q8 = bitnet_quantization::q8_0::encode(&dec).unwrap();
    assert_eq!(&m3.weights.token_embd.data()[..], &q8[..]);
    let f = dir.path().join("f.gguf");
    write_gguf(&m.weights, vocab, &opts(DenseFormat::F16), &f).unwrap();
    let m4 = bitnet_models::load(&f, None).unwrap();
    assert_eq!(m4.weights.token_embd.ty(), DenseType::F16);
    m4.weights.token_embd.dequantize_row(7, &mut row);
    let want16 = bitnet_quantization::float::f32_to_f16_bytes(&dec[7 * q.cols()..][..q.cols()]);
    let mut back = vec![0f32; q.cols()];
    bitnet_quantization::float::f16_to_f32(&want16, &mut back);
    assert_eq!(row, back);
}

/// Q6_K blocks run along a row, so the hidden size must be a multiple of 256. A 160-wide model
/// (whose embedding still holds a whole number of blocks in total: 384 * 160 = 240 * 256) must be
/// refused with a message, not written as a file no loader accepts (or a panic).
#[test]
fn q6_k_needs_rows_of_whole_blocks() {
    let mut c = fixture::config_2b4t(Arch::Bitnet);
    (c.hidden_size, c.intermediate_size, c.num_layers) = (160, 64, 1);
    (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) = (5, 5, 32, 384);
    let w = fixture::random_weights(&c, 1).unwrap();
    let vocab = fixture::synthetic_vocab(c.vocab_size);
    let dir = tempdir();
    let path = dir.path().join("h160.gguf");
    // I2_S: TQ2_0's own 256-weight blocks would refuse these rows too.
    let opts = |dense| ExportOptions {
        ternary: TernaryFormat::I2S,
        ..opts(dense)
    };
    let e = write_gguf(&w, &vocab, &opts(DenseFormat::Q6_K), &path).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("token_embd.weight") && msg.contains("160 is not a multiple of 256"),
        "{msg}"
    );
    assert!(!path.exists());
    // Q8_0 blocks (32) fit the same rows.
    write_gguf(&w, &vocab, &opts(DenseFormat::Q8_0), &path).unwrap();
    let m = bitnet_models::load(&path, None).unwrap();
    assert_eq!(m.weights.token_embd.ty(), DenseType::Q8_0);
}

/// llama.cpp's own quantizer writes the same bytes. The KJV model is exported all-F32 under
/// llama.cpp's `bitnet` architecture name (mainline does not know bitnet.cpp's `bitnet-b1.58`;
/// the tensors are the same), `llama-quantize --token-embedding-type q6_k` turns its embedding
/// into Q6_K (and, as it must pick a file type, the ternary layers into TQ2_0), and that tensor's
/// 8192 blocks are compared with `q6_k::encode` of the same f32 values.
///
/// Ignored by default: it needs llama.cpp built by scripts/build-llama-cpp.sh (`LLAMA_CPP_BIN`, or
/// its default third_party/build/llama.cpp-build/bin); scripts/test.sh builds it and runs this.
#[test]
#[ignore = "needs llama.cpp's llama-quantize (scripts/build-llama-cpp.sh)"]
fn q6_k_bytes_equal_llama_quantize() {
    let bin = std::env::var_os("LLAMA_CPP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("third_party/build/llama.cpp-build/bin"));
    let quantize = bin.join("llama-quantize");
    assert!(
        quantize.exists(),
        "{}: build llama.cpp with scripts/build-llama-cpp.sh or set LLAMA_CPP_BIN",
        quantize.display()
    );
    let mut hf = bitnet_models::load(&kjv_dir(), None).unwrap();
    hf.weights.config.arch = Arch::Bitnet;
    let dir = tempdir();
    let (src, dst) = (dir.path().join("f32.gguf"), dir.path().join("q6k.gguf"));
    let f32_opts = ExportOptions {
        ternary: TernaryFormat::F32,
        dense: DenseFormat::F32,
        name: "kjv".into(),
    };
    write_gguf(&hf.weights, hf.vocab.as_ref().unwrap(), &f32_opts, &src).unwrap();
    let out = Command::new(&quantize)
        .args(["--token-embedding-type", "q6_k"])
        .arg(&src)
        .arg(&dst)
        .arg("TQ2_0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llama-quantize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = GgufFile::open(&dst).unwrap();
    let info = g.tensor("token_embd.weight").unwrap();
    assert_eq!(info.ty, GgmlType::Q6K);
    let theirs = g.tensor_data(info);

    let e = &hf.weights.token_embd;
    let mut all = vec![0f32; e.rows() * e.cols()];
    for (r, row) in all.chunks_mut(e.cols()).enumerate() {
        e.dequantize_row(r, row);
    }
    let ours = q6_k::encode(&all).unwrap();
    assert_eq!(theirs.len(), ours.len());
    let diff: Vec<usize> = (0..ours.len()).filter(|&i| theirs[i] != ours[i]).collect();
    assert!(
        diff.is_empty(),
        "{} of {} bytes differ from llama-quantize's, first at {:?}",
        diff.len(),
        ours.len(),
        &diff[..diff.len().min(8)]
    );
}
