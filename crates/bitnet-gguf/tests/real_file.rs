//! Reading (and rewriting) the bitnet.cpp-written reference model.

mod common;

use bitnet_gguf::{GgmlType, GgufFile, GgufWriter, ValueType};

#[test]
fn reads_bitnet_cpp_i2s_file() {
    let Some(path) = common::reference_file() else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();

    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.architecture(), Some("bitnet-b1.58"));
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.file_size(), std::fs::metadata(&path).unwrap().len());

    assert_eq!(
        f.get("bitnet-b1.58.block_count").and_then(|v| v.as_u64()),
        Some(6)
    );
    assert_eq!(
        f.get("bitnet-b1.58.embedding_length")
            .and_then(|v| v.as_u64()),
        Some(512)
    );
    assert_eq!(
        f.get("general.file_type").and_then(|v| v.as_u64()),
        Some(40)
    );
    let eps = f
        .get("bitnet-b1.58.attention.layer_norm_rms_epsilon")
        .and_then(|v| v.as_f64())
        .unwrap();
    assert!((eps - 1e-5).abs() < 1e-10);
    let tokens = f.get("tokenizer.ggml.tokens").unwrap();
    assert!(matches!(
        tokens,
        bitnet_gguf::MetadataValue::Array {
            elem: ValueType::String,
            ..
        }
    ));
    let tokens = tokens.as_string_array().unwrap();
    assert_eq!(tokens.len(), 4096);
    assert_eq!(tokens[0], "<|begin_of_text|>");
    assert_eq!(
        f.get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool()),
        Some(true)
    );
    assert!(f.get("no.such.key").is_none());
    assert_eq!(
        f.metadata().first().map(|(k, _)| k.as_str()),
        Some("general.architecture")
    );

    let i2s: Vec<_> = f
        .tensors()
        .iter()
        .filter(|t| t.ty == GgmlType::I2S)
        .collect();
    assert_eq!(i2s.len(), 6 * 7);
    for t in &i2s {
        assert_eq!(t.dims.len(), 2, "{}", t.name);
        assert_eq!(t.n_bytes, t.n_elements() / 4 + 32, "{}", t.name);
    }
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.ty, q.dims.as_slice(), q.n_bytes),
        (GgmlType::I2S, &[512u64, 512][..], 512 * 512 / 4 + 32)
    );
    let down = f.tensor("blk.5.ffn_down.weight").unwrap();
    assert_eq!(down.dims, [1536, 512]);

    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.ty, GgmlType::F16);
    assert_eq!(embd.dims, [512, 4096]);
    assert_eq!(embd.n_bytes, 512 * 4096 * 2);
    assert_eq!(f.tensor("output_norm.weight").unwrap().ty, GgmlType::F32);
    assert!(
        f.tensor("output.weight").is_none(),
        "the head is tied to token_embd"
    );

    // Zero-copy slices at the right place: the I2_S scale tail holds a positive finite f32.
    let data = f.tensor_data(q);
    assert_eq!(data.len() as u64, q.n_bytes);
    let start = (f.data_offset() + q.offset) as usize;
    assert_eq!(&data[..], &f.storage()[start..start + data.len()]);
    let scale = f32::from_le_bytes(data[512 * 512 / 4..][..4].try_into().unwrap());
    assert!(scale.is_finite() && scale > 0.0, "scale {scale}");
    for t in f.tensors() {
        assert_eq!(t.offset % 32, 0);
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
    }
}

/// Rewriting through the writer reproduces the metadata and every tensor's bytes, and in fact
/// the whole file byte for byte: our layout is the one bitnet.cpp's writer produced.
#[test]
fn rewrite_reference_file_round_trips() {
    let Some(path) = common::reference_file() else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add_metadata(k.clone(), v.clone()).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor_storage(t.name.clone(), t.dims.clone(), t.ty, f.tensor_data(t))
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("bitnet-gguf-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("rewritten.gguf");
    w.write_file(&out).unwrap();

    let g = GgufFile::open(&out).unwrap();
    assert!(common::same_metadata(f.metadata(), g.metadata()));
    assert_eq!(f.tensors().len(), g.tensors().len());
    for (a, b) in f.tensors().iter().zip(g.tensors()) {
        assert_eq!(
            (&a.name, &a.dims, a.ty, a.offset, a.n_bytes),
            (&b.name, &b.dims, b.ty, b.offset, b.n_bytes)
        );
        assert_eq!(&f.tensor_data(a)[..], &g.tensor_data(b)[..], "{}", a.name);
    }
    assert_eq!(g.data_offset(), f.data_offset());
    let original = std::fs::read(&path).unwrap();
    let rewritten = std::fs::read(&out).unwrap();
    assert!(
        original == rewritten,
        "rewritten file differs from the bitnet.cpp original"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
