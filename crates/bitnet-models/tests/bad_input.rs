//! Broken model files are errors with a clear message, never panics: GGUF files whose tensors
//! disagree with their metadata, unknown architectures, missing or absurd metadata, invalid
//! ternary data, truncated files; Hugging Face folders with missing, malformed or inconsistent
//! files; and paths that do not exist.
//!
//! The broken GGUF files are rewritten from the shared bitnet.cpp I2_S file (or our own TQ2_0
//! conversion of it) with `GgufWriter`, changing one thing each.

mod common;

use bitnet_common::Storage;
use bitnet_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetadataValue};
use bitnet_models::{LoadedModel, ModelError};
use bitnet_tokenizers::TokenizerError;
use common::*;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `bitnet_models::load` that must fail: returns the error, and turns a panic or a success into
/// a test failure that says which.
fn load_err_with(path: &Path, tokenizer_dir: Option<&Path>) -> ModelError {
    match catch_unwind(AssertUnwindSafe(|| {
        bitnet_models::load(path, tokenizer_dir)
    })) {
        Err(_) => panic!(
            "loading {} panicked instead of returning an error",
            path.display()
        ),
        Ok(Ok(_)) => panic!("{} loaded, but it is broken", path.display()),
        Ok(Err(e)) => e,
    }
}

fn load_err(path: &Path) -> ModelError {
    load_err_with(path, None)
}

fn load_ok(path: &Path, tokenizer_dir: Option<&Path>) -> LoadedModel {
    bitnet_models::load(path, tokenizer_dir)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn assert_msg(e: &ModelError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(
            msg.contains(p),
            "error message {msg:?} should mention {p:?} ({e:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF rewriting

const ARCH: &str = "bitnet-b1.58";

/// A GGUF file taken apart: edit the metadata and tensors, then write it again.
struct Parts {
    meta: Vec<(String, MetadataValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Storage)>,
}

impl Parts {
    fn of(path: &Path) -> Parts {
        Parts::of_file(&GgufFile::open(path).expect("source GGUF opens"))
    }

    fn of_file(f: &GgufFile) -> Parts {
        Parts {
            meta: f.metadata().to_vec(),
            tensors: f
                .tensors()
                .iter()
                .map(|t| (t.name.clone(), t.dims.clone(), t.ty, f.tensor_data(t)))
                .collect(),
        }
    }

    fn kjv() -> Parts {
        Parts::of(&kjv_gguf())
    }

    fn set(&mut self, key: &str, v: MetadataValue) -> &mut Self {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) => *old = v,
            None => self.meta.push((key.into(), v)),
        }
        self
    }

    fn remove(&mut self, key: &str) -> &mut Self {
        let n = self.meta.len();
        self.meta.retain(|(k, _)| k != key);
        assert_eq!(self.meta.len() + 1, n, "{key} was present");
        self
    }

    fn tensor(&mut self, name: &str) -> &mut (String, Vec<u64>, GgmlType, Storage) {
        self.tensors
            .iter_mut()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// Replaces a tensor's bytes with `edit` applied to a copy of them.
    fn patch(&mut self, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        let t = self.tensor(name);
        let mut bytes = t.3.to_vec();
        edit(&mut bytes);
        t.3 = Storage::from_vec(bytes);
        self
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.add_metadata(k.clone(), v.clone()).expect("metadata");
        }
        for (name, dims, ty, data) in &self.tensors {
            w.add_tensor_storage(name.clone(), dims.clone(), *ty, data.clone())
                .expect("tensor");
        }
        let path = dir.join(name);
        w.write_file(&path).expect("write GGUF");
        path
    }

    /// Writes the file and returns the error loading it gives.
    fn load_err(&self) -> ModelError {
        let dir = tempdir();
        load_err(&self.write(dir.path(), "broken.gguf"))
    }
}

fn key(k: &str) -> String {
    format!("{ARCH}.{k}")
}

#[test]
fn rewritten_gguf_without_changes_loads() {
    // The harness itself: an unchanged rewrite is a valid model.
    let dir = tempdir();
    let path = Parts::kjv().write(dir.path(), "same.gguf");
    let m = load_ok(&path, None);
    assert_eq!(m.weights.layers.len(), 6);
}

#[test]
fn tensor_shape_disagreeing_with_metadata() {
    // attn_k is [512 in, 128 out]; swapped it has the same byte size but the wrong shape.
    let mut p = Parts::kjv();
    p.tensor("blk.0.attn_k.weight").1 = vec![128, 512];
    let e = p.load_err();
    assert!(
        matches!(&e, ModelError::Shape { name, found, expected }
            if name == "blk.0.attn_k.weight" && found == &[128, 512] && expected == &[512, 128]),
        "{e:?}"
    );
    assert_msg(&e, &["blk.0.attn_k.weight", "shape"]);

    // A norm of the wrong length.
    let mut p = Parts::kjv();
    let t = p.tensor("blk.5.ffn_sub_norm.weight");
    t.1 = vec![1024];
    t.3 = t.3.slice(0, 4096).unwrap();
    let e = p.load_err();
    assert!(matches!(e, ModelError::Shape { .. }), "{e:?}");
    assert_msg(&e, &["blk.5.ffn_sub_norm.weight"]);

    // embedding_length says 256 while the tensors are 512 wide (and everything else consistent).
    let mut p = Parts::kjv();
    p.set(&key("embedding_length"), MetadataValue::U32(256));
    let e = p.load_err();
    assert!(matches!(e, ModelError::Shape { .. }), "{e:?}");
    assert_msg(&e, &["token_embd.weight"]);
}

#[test]
fn block_count_larger_than_the_tensors_present() {
    let mut p = Parts::kjv();
    p.set(&key("block_count"), MetadataValue::U32(7));
    let e = p.load_err();
    assert!(
        matches!(&e, ModelError::MissingTensor(n) if n == "blk.6.attn_norm.weight"),
        "{e:?}"
    );
    assert_msg(&e, &["missing tensor", "blk.6.attn_norm.weight"]);

    // Same when one tensor of an existing layer is absent.
    let mut p = Parts::kjv();
    p.tensors.retain(|t| t.0 != "blk.3.ffn_down.weight");
    let e = p.load_err();
    assert!(
        matches!(&e, ModelError::MissingTensor(n) if n == "blk.3.ffn_down.weight"),
        "{e:?}"
    );
}

#[test]
fn unknown_architecture() {
    for arch in ["llama", "gpt2", ""] {
        let mut p = Parts::kjv();
        p.set("general.architecture", MetadataValue::String(arch.into()));
        let e = p.load_err();
        assert!(
            matches!(&e, ModelError::UnsupportedArch(a) if a == arch),
            "{e:?}"
        );
        assert_msg(&e, &["unsupported architecture", "bitnet-b1.58"]);
    }
    // Not a string at all: reported as missing, not as a panic.
    let mut p = Parts::kjv();
    p.set("general.architecture", MetadataValue::U32(7));
    assert_msg(&p.load_err(), &["general.architecture"]);
}

#[test]
fn missing_required_metadata() {
    for k in [
        "embedding_length",
        "feed_forward_length",
        "block_count",
        "context_length",
        "attention.head_count",
    ] {
        let mut p = Parts::kjv();
        p.remove(&key(k));
        let e = p.load_err();
        assert!(matches!(e, ModelError::Config(_)), "{k}: {e:?}");
        assert_msg(&e, &["missing metadata key", &key(k)]);
    }
    let mut p = Parts::kjv();
    p.remove("general.architecture");
    let e = p.load_err();
    assert!(matches!(e, ModelError::Config(_)), "{e:?}");
    assert_msg(&e, &["general.architecture"]);
}

#[test]
fn absurd_metadata_values() {
    type Case = (&'static str, MetadataValue, &'static [&'static str]);
    let cases: Vec<Case> = vec![
        (
            "embedding_length",
            MetadataValue::U64(1 << 40),
            &["hidden_size", "1099511627776", "out of range"],
        ),
        (
            "attention.head_count",
            MetadataValue::U32(0),
            &["num_attention_heads = 0", "out of range"],
        ),
        (
            "attention.head_count_kv",
            MetadataValue::U32(3),
            &[
                "num_attention_heads (8)",
                "multiple",
                "num_key_value_heads (3)",
            ],
        ),
        (
            "attention.head_count_kv",
            MetadataValue::U32(0),
            &["num_key_value_heads = 0"],
        ),
        (
            "attention.head_count_kv",
            MetadataValue::I32(-2),
            &["head_count_kv", "not a valid count"],
        ),
        (
            "block_count",
            MetadataValue::U64(u64::MAX),
            &["num_hidden_layers", "out of range"],
        ),
        (
            "feed_forward_length",
            MetadataValue::String("1536".into()),
            &["feed_forward_length", "not a valid count"],
        ),
        (
            "context_length",
            MetadataValue::U32(0),
            &["max_position_embeddings = 0"],
        ),
        (
            "vocab_size",
            MetadataValue::U64(1 << 30),
            &["vocab_size", "out of range"],
        ),
        (
            "rope.dimension_count",
            MetadataValue::U32(63),
            &["head_dim (63)", "even"],
        ),
        (
            "rope.freq_base",
            MetadataValue::F32(f32::NAN),
            &["rope_theta"],
        ),
        ("rope.freq_base", MetadataValue::F32(-1.0), &["rope_theta"]),
        // Scaled RoPE is not applied, so a file asking for it is refused (llama.cpp reads a
        // missing type as linear: a factor other than 1 alone is a scaling too).
        (
            "rope.scaling.type",
            MetadataValue::String("yarn".into()),
            &["rope.scaling.type", "RoPE scaling 'yarn'", "not supported"],
        ),
        (
            "rope.scaling.factor",
            MetadataValue::F32(4.0),
            &["RoPE scaling 'linear', factor 4"],
        ),
        (
            "rope.scaling.type",
            MetadataValue::U32(1),
            &["rope.scaling.type", "not a string"],
        ),
        (
            "attention.layer_norm_rms_epsilon",
            MetadataValue::F32(-1e-5),
            &["rms_norm_eps"],
        ),
        (
            "attention.layer_norm_rms_epsilon",
            MetadataValue::String("tiny".into()),
            &["layer_norm_rms_epsilon", "not a number"],
        ),
    ];
    for (k, v, parts) in cases {
        let mut p = Parts::kjv();
        p.set(&key(k), v.clone());
        let e = p.load_err();
        assert!(matches!(e, ModelError::Config(_)), "{k} = {v:?}: {e:?}");
        assert_msg(&e, parts);
    }
}

#[test]
fn absurd_tokenizer_metadata() {
    let mut p = Parts::kjv();
    p.set("tokenizer.ggml.bos_token_id", MetadataValue::U32(99_999));
    let e = p.load_err();
    assert!(matches!(e, ModelError::Tokenizer(_)), "{e:?}");
    assert_msg(&e, &["bos_token_id", "99999"]);

    let mut p = Parts::kjv();
    p.set("tokenizer.ggml.tokens", MetadataValue::U32(1));
    let e = p.load_err();
    assert_msg(&e, &["tokenizer.ggml.tokens", "not an array of strings"]);

    let mut p = Parts::kjv();
    p.set(
        "tokenizer.ggml.model",
        MetadataValue::String("klingon".into()),
    );
    let e = p.load_err();
    assert!(matches!(e, ModelError::Tokenizer(_)), "{e:?}");
    assert_msg(&e, &["klingon"]);
}

#[test]
fn i2s_data_with_code_3() {
    // Code 3 (binary 11) is not a ternary value; bitnet.cpp would read it as +2.
    for (tensor, at_end) in [
        ("blk.0.attn_q.weight", false),
        ("blk.5.ffn_down.weight", true),
    ] {
        let mut p = Parts::kjv();
        p.patch(tensor, |b| {
            // The codes are followed by the 32-byte scale tail.
            let i = if at_end { b.len() - 33 } else { 0 };
            b[i] = 0xff;
        });
        let e = p.load_err();
        // Named: a codec error alone does not say which tensor it is about.
        assert!(
            matches!(&e, ModelError::BadTensor { name, .. } if name == tensor),
            "{tensor}: {e:?}"
        );
        assert_msg(&e, &[tensor, "code 3"]);
    }
}

#[test]
fn i2s_scale_that_is_not_finite() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut p = Parts::kjv();
        p.patch("blk.1.attn_v.weight", |b| {
            let at = b.len() - 32;
            b[at..at + 4].copy_from_slice(&bad.to_le_bytes());
        });
        let e = p.load_err();
        assert!(matches!(e, ModelError::BadTensor { .. }), "{e:?}");
        assert_msg(&e, &["blk.1.attn_v.weight", "I2_S scale"]);
    }
}

/// Our TQ2_0 conversion of the KJV model (one f16 scale per 256-weight block, all equal),
/// built in memory once.
fn tq2_parts() -> Parts {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| {
        let m = load_ok(&kjv_gguf(), None);
        let opts = bitnet_models::export::ExportOptions {
            ternary: bitnet_models::export::TernaryFormat::Tq2_0,
            dense: bitnet_models::export::DenseFormat::F16,
            name: "kjv-tq2".into(),
        };
        let w = bitnet_models::export::to_gguf(&m.weights, m.vocab.as_ref().unwrap(), &opts)
            .expect("export TQ2_0");
        let mut out = Vec::new();
        w.write_to(&mut out).expect("serialize");
        out
    });
    Parts::of_file(&GgufFile::from_storage(Storage::from_vec(bytes.clone())).expect("parses"))
}

#[test]
fn tq2_0_tensor_with_differing_block_scales() {
    let dir = tempdir();
    let ok = tq2_parts().write(dir.path(), "ok.gguf");
    load_ok(&ok, None);

    let mut p = tq2_parts();
    assert_eq!(p.tensor("blk.0.attn_q.weight").2, GgmlType::TQ2_0);
    p.patch("blk.0.attn_q.weight", |b| {
        // Block 1's f16 `d` (bytes 64..66 of each 66-byte block), doubled.
        let at = 66 + 64;
        let d = half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
        b[at..at + 2].copy_from_slice(&half::f16::from_f32(2.0 * d).to_le_bytes());
    });
    let e = p.load_err();
    assert!(
        matches!(&e, ModelError::BadTensor { name, .. } if name == "blk.0.attn_q.weight"),
        "{e:?}"
    );
    assert_msg(&e, &["blk.0.attn_q.weight", "block 1", "per-block scales"]);
}

#[test]
fn truncated_gguf_files() {
    let bytes = std::fs::read(kjv_gguf()).unwrap();
    let f = GgufFile::open(&kjv_gguf()).unwrap();
    let data_start = f.data_offset() as usize;
    let data_end = data_start
        + f.tensors()
            .iter()
            .map(|t| (t.offset + t.n_bytes) as usize)
            .max()
            .unwrap();
    let dir = tempdir();
    let cuts = [
        0,
        1,
        4,
        8,
        16,
        23,
        24,
        100,
        5_000,
        data_start / 2,
        data_start - 1,
        data_start,
        data_start + 1,
        (data_start + data_end) / 2,
        data_end - 1,
    ];
    for cut in cuts {
        let path = dir.path().join(format!("cut-{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = load_err(&path);
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                ModelError::Gguf(
                    GgufError::Truncated { .. }
                        | GgufError::TooLarge { .. }
                        | GgufError::TensorOutOfBounds { .. }
                )
            ),
            "cut at {cut}: {e:?}"
        );
        assert!(
            msg.contains("truncated") || msg.contains("does not fit") || msg.contains("bytes left"),
            "cut at {cut}: {msg}"
        );
    }
}

#[test]
fn garbage_and_empty_files() {
    let dir = tempdir();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(
        &garbage,
        b"this is not a model file, just some text\n".repeat(100),
    )
    .unwrap();
    let e = load_err(&garbage);
    assert!(
        matches!(e, ModelError::Gguf(GgufError::BadMagic { .. })),
        "{e:?}"
    );
    assert_msg(&e, &["not a GGUF file"]);

    // A safetensors file given as if it were GGUF.
    let e = load_err(&kjv_dir().join("model.safetensors"));
    assert!(
        matches!(e, ModelError::Gguf(GgufError::BadMagic { .. })),
        "{e:?}"
    );
}

#[test]
fn gguf_without_tokenizer_metadata() {
    let mut p = Parts::kjv();
    p.meta.retain(|(k, _)| !k.starts_with("tokenizer."));
    let dir = tempdir();
    let path = p.write(dir.path(), "no-tokenizer.gguf");
    let e = load_err(&path);
    assert!(matches!(e, ModelError::Config(_)), "{e:?}");
    assert_msg(&e, &["tokenizer"]);
    // With a tokenizer folder given instead, it loads.
    let m = load_ok(&path, Some(&kjv_dir()));
    assert_eq!(
        m.tokenizer.encode("In the beginning", true).unwrap(),
        [0, 1145, 263, 2112]
    );
    // A tokenizer folder that has no tokenizer.json is an error naming the file.
    let empty = tempdir();
    let e = load_err_with(&path, Some(empty.path()));
    assert!(
        matches!(e, ModelError::Tokenizer(TokenizerError::Missing(_))),
        "{e:?}"
    );
    assert_msg(&e, &["tokenizer.json"]);
}

#[test]
fn nonexistent_path() {
    let p = Path::new("/nonexistent/dir/model-that-is-not-here.gguf");
    let e = load_err(p);
    assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
    assert_msg(&e, &["model-that-is-not-here.gguf"]);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders

#[test]
fn folder_with_config_but_no_safetensors() {
    let dir = tempdir();
    write_json(&dir.path().join("config.json"), &kjv_config());
    copy_tokenizer_files(dir.path());
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Other(_)), "{e:?}");
    assert_msg(&e, &["no *.safetensors files"]);
}

#[test]
fn folder_without_config() {
    let dir = tempdir();
    std::os::unix::fs::symlink(
        kjv_dir().join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
    assert_msg(&e, &["config.json"]);
}

/// A folder of symlinks to the shared model with config.json replaced by `text`.
fn with_config_text(text: &str) -> tempfile::TempDir {
    let dir = tempdir();
    linked_kjv_dir(dir.path());
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    dir
}

fn with_config(edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let mut c = kjv_config();
    edit(&mut c);
    with_config_text(&serde_json::to_string(&c).unwrap())
}

#[test]
fn symlinked_folder_loads() {
    // The harness for the folder cases below.
    let dir = tempdir();
    linked_kjv_dir(dir.path());
    load_ok(dir.path(), None);
}

#[test]
fn malformed_config_json() {
    for text in [
        "",
        "{",
        "not json at all",
        "[1, 2, 3]",
        "{\"hidden_size\": \"big\", \"model_type\": \"bitnet\"}",
    ] {
        let dir = with_config_text(text);
        let e = load_err(dir.path());
        assert!(matches!(e, ModelError::Config(_)), "{text:?}: {e:?}");
        assert_msg(&e, &["config.json"]);
    }
    let dir = with_config(|c| {
        c["model_type"] = "llama".into();
        c["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    });
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::UnsupportedArch(_)), "{e:?}");
    assert_msg(&e, &["llama"]);
    let dir = with_config(|c| c["hidden_act"] = "gelu".into());
    assert_msg(&load_err(dir.path()), &["hidden_act", "gelu"]);
    let dir = with_config(|c| c["num_key_value_heads"] = 3.into());
    assert_msg(&load_err(dir.path()), &["multiple"]);
}

#[test]
fn config_sizes_disagreeing_with_the_tensors() {
    type Edit = fn(&mut Value);
    let cases: [(Edit, &str); 5] = [
        (
            |c| c["hidden_size"] = 256.into(),
            "model.embed_tokens.weight",
        ),
        (
            |c| c["vocab_size"] = 4000.into(),
            "model.embed_tokens.weight",
        ),
        (
            |c| c["intermediate_size"] = 1024.into(),
            "model.layers.0.mlp.gate_proj.weight",
        ),
        (
            |c| c["num_key_value_heads"] = 4.into(),
            "model.layers.0.self_attn.k_proj.weight",
        ),
        (
            |c| c["head_dim"] = 32.into(),
            "model.layers.0.self_attn.q_proj.weight",
        ),
    ];
    for (edit, tensor) in cases {
        let dir = with_config(edit);
        let e = load_err(dir.path());
        assert!(
            matches!(&e, ModelError::Shape { name, .. } if name == tensor),
            "{tensor}: {e:?}"
        );
        assert_msg(&e, &[tensor, "shape"]);
    }
    let dir = with_config(|c| c["num_hidden_layers"] = 7.into());
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::MissingTensor(_)), "{e:?}");
    assert_msg(&e, &["model.layers.6.input_layernorm.weight"]);
    let dir = with_config(|c| c["tie_word_embeddings"] = false.into());
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::MissingTensor(_)), "{e:?}");
    assert_msg(&e, &["lm_head", "not tied"]);
}

#[test]
fn folder_without_tokenizer_json() {
    let dir = tempdir();
    linked_kjv_dir(dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, ModelError::Tokenizer(TokenizerError::Missing(_))),
        "{e:?}"
    );
    assert_msg(&e, &["tokenizer file not found", "tokenizer.json"]);
}

#[test]
fn broken_safetensors_files() {
    let full = std::fs::read(kjv_dir().join("model.safetensors")).unwrap();
    for (label, bytes) in [
        ("empty", Vec::new()),
        ("garbage", b"garbage that is not safetensors".to_vec()),
        ("header only", full[..1000].to_vec()),
        ("truncated data", full[..full.len() / 2].to_vec()),
    ] {
        let dir = tempdir();
        linked_kjv_dir(dir.path());
        let st = dir.path().join("model.safetensors");
        std::fs::remove_file(&st).unwrap();
        std::fs::write(&st, &bytes).unwrap();
        let e = load_err(dir.path());
        assert!(
            matches!(e, ModelError::SafeTensors { .. }),
            "{label}: {e:?}"
        );
        assert_msg(&e, &["safetensors error", "model.safetensors"]);
    }
}

// Shards

fn sharded_dir() -> tempfile::TempDir {
    let dir = tempdir();
    write_sharded_dir(dir.path(), kjv_tensors(), 2);
    dir
}

fn edit_index(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let p = dir.join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    write_json(&p, &v);
}

#[test]
fn index_naming_a_missing_shard() {
    let dir = sharded_dir();
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
    assert_msg(&e, &["model-00002-of-00002.safetensors"]);
}

#[test]
fn malformed_index() {
    let dir = sharded_dir();
    std::fs::write(dir.path().join("model.safetensors.index.json"), "{ nope").unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Config(_)), "{e:?}");
    assert_msg(&e, &["model.safetensors.index.json"]);

    let dir = sharded_dir();
    edit_index(dir.path(), |v| {
        v.as_object_mut().unwrap().remove("weight_map");
    });
    assert_msg(&load_err(dir.path()), &["no weight_map"]);

    let dir = sharded_dir();
    edit_index(dir.path(), |v| {
        v["weight_map"]["model.norm.weight"] = 7.into()
    });
    assert_msg(
        &load_err(dir.path()),
        &["weight_map values must be file names"],
    );

    // A shard path that would escape the folder is refused, not opened.
    for evil in [
        "../model.safetensors",
        "/etc/passwd",
        "..",
        "sub\\x.safetensors",
    ] {
        let dir = sharded_dir();
        edit_index(dir.path(), |v| {
            v["weight_map"]["model.norm.weight"] = evil.into()
        });
        let e = load_err(dir.path());
        assert!(matches!(e, ModelError::Config(_)), "{evil}: {e:?}");
        assert_msg(&e, &["bad shard name"]);
    }
    // An empty name or "." names the folder itself: an error, not a crash.
    for odd in ["", "."] {
        let dir = sharded_dir();
        edit_index(dir.path(), |v| {
            v["weight_map"]["model.norm.weight"] = odd.into()
        });
        load_err(dir.path());
    }
}

#[test]
fn tensor_in_two_shards() {
    let dir = sharded_dir();
    // Without the index every *.safetensors is read; a full copy duplicates every tensor.
    std::fs::remove_file(dir.path().join("model.safetensors.index.json")).unwrap();
    std::os::unix::fs::symlink(
        kjv_dir().join("model.safetensors"),
        dir.path().join("model-extra.safetensors"),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::SafeTensors { .. }), "{e:?}");
    assert_msg(&e, &["appears in more than one shard"]);
}

// Packed (2B4T) layout

fn packed_f32() -> &'static Tensors {
    static T: OnceLock<Tensors> = OnceLock::new();
    T.get_or_init(|| packed_tensors(kjv_tensors(), ScaleType::F32))
}

fn packed_dir_with(edit: impl FnOnce(&mut Tensors)) -> tempfile::TempDir {
    let mut t = packed_f32().clone();
    edit(&mut t);
    let dir = tempdir();
    write_hf_dir(dir.path(), &t, &offline_config());
    dir
}

const Q0: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn packed_weight_without_its_scale() {
    let dir = packed_dir_with(|t| {
        t.remove(&format!("{Q0}_scale"));
    });
    let e = load_err(dir.path());
    assert!(
        matches!(&e, ModelError::MissingTensor(n) if n == &format!("{Q0}_scale")),
        "{e:?}"
    );
}

#[test]
fn packed_scale_with_more_than_one_value() {
    let dir = packed_dir_with(|t| {
        t.insert(
            format!("{Q0}_scale"),
            OwnedTensor::f32(vec![2], &[0.02, 0.03]),
        );
    });
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::BadTensor { .. }), "{e:?}");
    assert_msg(&e, &["_scale", "one scale value"]);

    let dir = packed_dir_with(|t| {
        t.insert(
            format!("{Q0}_scale"),
            OwnedTensor {
                dtype: safetensors::Dtype::I32,
                shape: vec![1],
                data: vec![0; 4],
            },
        );
    });
    let e = load_err(dir.path());
    assert!(
        matches!(e, ModelError::UnsupportedTensorType { .. }),
        "{e:?}"
    );
}

#[test]
fn packed_weight_with_code_3() {
    let dir = packed_dir_with(|t| t.get_mut(Q0).unwrap().data[7] = 0xff);
    let e = load_err(dir.path());
    assert!(
        matches!(&e, ModelError::BadTensor { name, .. } if name == Q0),
        "{e:?}"
    );
    assert_msg(&e, &[Q0, "code 3"]);
}

#[test]
fn packed_weight_with_the_wrong_shape() {
    // [out/4, in] = [128, 512] stored as [256, 256]: same bytes, wrong shape.
    let dir = packed_dir_with(|t| t.get_mut(Q0).unwrap().shape = vec![256, 256]);
    let e = load_err(dir.path());
    assert!(
        matches!(&e, ModelError::Shape { name, .. } if name == Q0),
        "{e:?}"
    );
}

/// GGUF I2_S rejects a NaN or infinite scale (`i2s_scale_that_is_not_finite`); the packed HF
/// layout should too, but loads it and the model then computes NaN logits.
#[test]
fn packed_scale_that_is_not_finite() {
    for bad in [f32::NAN, f32::INFINITY] {
        let dir = packed_dir_with(|t| {
            t.insert(format!("{Q0}_scale"), OwnedTensor::f32(vec![1], &[bad]));
        });
        let e = load_err(dir.path());
        assert_msg(&e, &["_scale"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Non-finite values, layer counts (issue 13, items 6 and 12)

/// Sets element `i` of a little-endian float tensor to `x`, in the tensor's own type.
fn put_float(bytes: &mut [u8], ty: GgmlType, i: usize, x: f32) {
    match ty {
        GgmlType::F32 => bytes[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes()),
        GgmlType::F16 => {
            bytes[2 * i..2 * i + 2].copy_from_slice(&half::f16::from_f32(x).to_le_bytes())
        }
        other => panic!("put_float: {other:?}"),
    }
}

#[test]
fn non_finite_gguf_values_are_rejected_naming_the_tensor() {
    // An F32 norm, an F16 embedding row (the tied head), each with NaN, +inf and -inf.
    for (name, at) in [("blk.2.ffn_norm.weight", 7), ("token_embd.weight", 5000)] {
        for x in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut p = Parts::kjv();
            let ty = p.tensor(name).2;
            p.patch(name, |b| put_float(b, ty, at, x));
            let e = p.load_err();
            assert!(
                matches!(&e, ModelError::BadTensor { name: n, .. } if n == name),
                "{name} {x}: {e:?}"
            );
            let what = if x.is_nan() {
                "NaN"
            } else if x > 0.0 {
                "+infinity"
            } else {
                "-infinity"
            };
            assert_msg(&e, &[name, &format!("element {at} of"), what]);
        }
    }
    // llama.cpp's per-tensor `.scale` multiplier.
    let mut p = Parts::kjv();
    p.tensors.push((
        "blk.4.attn_q.scale".into(),
        vec![1],
        GgmlType::F32,
        Storage::from_vec(f32::NAN.to_le_bytes().to_vec()),
    ));
    let e = p.load_err();
    assert_msg(&e, &["blk.4.attn_q.scale", "scale is NaN"]);
}

#[test]
fn non_finite_tq2_0_block_scale() {
    let mut p = tq2_parts();
    p.patch("blk.3.ffn_up.weight", |b| {
        b[64..66].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    });
    let e = p.load_err();
    assert_msg(&e, &["blk.3.ffn_up.weight", "scale of block 0"]);
}

/// The shared checkpoint as an HF folder with one bf16 value replaced.
fn hf_dir_with_value(name: &str, at: usize, x: f32) -> tempfile::TempDir {
    let mut t = kjv_tensors().clone();
    let tensor = t.get_mut(name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(tensor.dtype, safetensors::Dtype::BF16);
    tensor.data[2 * at..2 * at + 2].copy_from_slice(&half::bf16::from_f32(x).to_le_bytes());
    let dir = tempdir();
    write_hf_dir(dir.path(), &t, &kjv_config());
    dir
}

#[test]
fn non_finite_hf_bf16_weights_and_norms() {
    for (name, at, x) in [
        ("model.layers.1.self_attn.k_proj.weight", 100, f32::INFINITY),
        ("model.layers.0.mlp.down_proj.weight", 0, f32::NAN),
        ("model.layers.3.input_layernorm.weight", 9, f32::NAN),
        ("model.norm.weight", 511, f32::NEG_INFINITY),
        ("model.embed_tokens.weight", 12345, f32::INFINITY),
    ] {
        let dir = hf_dir_with_value(name, at, x);
        let e = load_err(dir.path());
        assert!(
            matches!(&e, ModelError::BadTensor { name: n, .. } if n == name),
            "{name}: {e:?}"
        );
        assert_msg(&e, &[name, &format!("element {at} of")]);
    }
}

#[test]
fn export_refuses_values_that_overflow_the_output_type() {
    // A finite f32 embedding value above f16's largest (65504) would be stored as infinity.
    let mut t = kjv_tensors().clone();
    let embed = t["model.embed_tokens.weight"].to_f32();
    let mut big = embed.clone();
    big[77] = 1.0e6;
    t.insert(
        "model.embed_tokens.weight".into(),
        OwnedTensor::f32(t["model.embed_tokens.weight"].shape.clone(), &big),
    );
    let dir = tempdir();
    write_hf_dir(dir.path(), &t, &kjv_config());
    let m = load_ok(dir.path(), None);
    let opts = |dense| bitnet_models::export::ExportOptions {
        ternary: bitnet_models::export::TernaryFormat::I2S,
        dense,
        name: "big".into(),
    };
    let vocab = m.vocab.as_ref().unwrap();
    let e = bitnet_models::export::to_gguf(
        &m.weights,
        vocab,
        &opts(bitnet_models::export::DenseFormat::F16),
    )
    .err()
    .expect("an f16 export of 1e6 fails");
    assert_msg(
        &e,
        &["token_embd.weight", "element 77 of", "+infinity", "F16"],
    );
    // Stored as f32 or bf16 it fits.
    bitnet_models::export::to_gguf(
        &m.weights,
        vocab,
        &opts(bitnet_models::export::DenseFormat::F32),
    )
    .expect("f32 export");
    bitnet_models::export::to_gguf(
        &m.weights,
        vocab,
        &opts(bitnet_models::export::DenseFormat::BF16),
    )
    .expect("bf16 export");
}

#[test]
fn layer_count_smaller_than_the_file_has() {
    let mut p = Parts::kjv();
    p.set(&key("block_count"), MetadataValue::U32(5));
    let e = p.load_err();
    assert!(matches!(e, ModelError::Config(_)), "{e:?}");
    assert_msg(&e, &["block_count = 5", "layer 5", "blk.5."]);

    let dir = with_config(|c| c["num_hidden_layers"] = Value::from(4));
    let e = load_err(dir.path());
    assert_msg(&e, &["num_hidden_layers = 4", "layer 5", "model.layers.5."]);
}

#[test]
fn fifo_and_device_paths_are_refused_without_blocking() {
    let dir = tempdir();
    let fifo = dir.path().join("model.gguf");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let e = load_err(&fifo);
    assert_msg(&e, &["model.gguf is a FIFO, not a regular file"]);
    let e = load_err(Path::new("/dev/zero"));
    assert_msg(&e, &["/dev/zero is a character device, not a regular file"]);
    // A FIFO config.json in a folder.
    let hf = tempdir();
    linked_kjv_dir(hf.path());
    std::fs::remove_file(hf.path().join("config.json")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(hf.path().join("config.json"))
        .status()
        .unwrap()
        .success());
    let e = load_err(hf.path());
    let chain = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("is a FIFO"), "{chain}");
}
