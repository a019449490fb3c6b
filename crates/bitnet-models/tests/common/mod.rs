//! Helpers shared by the bitnet-models integration tests (and, through `#[path]`, by the
//! bitnet-cli ones): paths to the shared KJV reference model, and writers that turn its bf16
//! Hugging Face checkpoint into the other layouts the loader accepts.
#![allow(dead_code)] // each test binary uses a different subset

use bitnet_quantization as quant;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shared reference model folder (see its README.md).
pub fn kjv_dir() -> PathBuf {
    workspace_root().join("../shared/models/bitnet-b1.58-kjv")
}

/// bitnet.cpp's I2_S GGUF of the same model.
pub fn kjv_gguf() -> PathBuf {
    kjv_dir().join("gguf/bitnet-b1.58-kjv-i2_s.gguf")
}

pub fn reference_json() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let path = kjv_dir().join("reference/reference.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("reference.json parses")
    })
}

/// One prompt of reference.json by name (`in_the_beginning`, `jesus_said`, `chat`, `bos_only`).
pub fn ref_prompt(name: &str) -> &'static Value {
    reference_json()["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no reference prompt {name}"))
}

pub fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

pub fn floats_of(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// A tensor held in memory, ready to be written to a safetensors file.
#[derive(Clone, Debug)]
pub struct OwnedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OwnedTensor {
    pub fn f32(shape: Vec<usize>, v: &[f32]) -> OwnedTensor {
        OwnedTensor {
            dtype: Dtype::F32,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn bf16(shape: Vec<usize>, v: &[f32]) -> OwnedTensor {
        OwnedTensor {
            dtype: Dtype::BF16,
            shape,
            data: quant::float::f32_to_bf16_bytes(v),
        }
    }

    /// The values as f32 (F32 / BF16 / F16 only).
    pub fn to_f32(&self) -> Vec<f32> {
        let n: usize = self.shape.iter().product();
        let mut out = vec![0f32; n];
        match self.dtype {
            Dtype::BF16 => quant::float::bf16_to_f32(&self.data, &mut out),
            Dtype::F16 => quant::float::f16_to_f32(&self.data, &mut out),
            Dtype::F32 => {
                for (o, b) in out.iter_mut().zip(self.data.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            other => panic!("to_f32: {other:?}"),
        }
        out
    }
}

/// Tensors by name, sorted (so shard assignment is deterministic).
pub type Tensors = BTreeMap<String, OwnedTensor>;

/// Every tensor of the shared bf16 checkpoint (read once per test binary).
pub fn kjv_tensors() -> &'static Tensors {
    static T: OnceLock<Tensors> = OnceLock::new();
    T.get_or_init(|| {
        let path = kjv_dir().join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("model.safetensors parses");
        st.tensors()
            .into_iter()
            .map(|(name, v)| {
                (
                    name,
                    OwnedTensor {
                        dtype: v.dtype(),
                        shape: v.shape().to_vec(),
                        data: v.data().to_vec(),
                    },
                )
            })
            .collect()
    })
}

/// The seven BitLinear projections of a decoder block.
pub fn is_bitlinear(name: &str) -> bool {
    const PROJ: [&str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    name.starts_with("model.layers.")
        && PROJ.iter().any(|p| name.ends_with(&format!(".{p}.weight")))
}

/// How the packed layout stores each `weight_scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleType {
    F32,
    BF16,
}

/// The packed layout of microsoft/bitnet-b1.58-2B-4T: every BitLinear weight as uint8
/// `[out/4, in]` (transformers' `pack_weights` of the absmean codes) plus `<name>_scale` =
/// absmean as a 1-element tensor; everything else unchanged.
pub fn packed_tensors(src: &Tensors, scale: ScaleType) -> Tensors {
    let mut out = Tensors::new();
    for (name, t) in src {
        if !is_bitlinear(name) {
            out.insert(name.clone(), t.clone());
            continue;
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let (codes, s) = quant::ternarize_absmean(&t.to_f32());
        let packed = quant::hf_packed::pack(&codes, rows, cols).expect("pack");
        out.insert(
            name.clone(),
            OwnedTensor {
                dtype: Dtype::U8,
                shape: vec![rows / 4, cols],
                data: packed,
            },
        );
        let st = match scale {
            ScaleType::F32 => OwnedTensor::f32(vec![1], &[s]),
            ScaleType::BF16 => OwnedTensor::bf16(vec![1], &[s]),
        };
        out.insert(format!("{name}_scale"), st);
    }
    out
}

pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a String, &'a OwnedTensor)>,
) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .into_iter()
        .map(|(n, t)| {
            (
                n.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data).expect("tensor view"),
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), path)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The shared folder's config.json, parsed.
pub fn kjv_config() -> Value {
    let text = std::fs::read_to_string(kjv_dir().join("config.json")).expect("config.json");
    serde_json::from_str(&text).expect("config.json parses")
}

/// config.json as the packed 2B4T checkpoint has it: `quantization_mode: offline`.
pub fn offline_config() -> Value {
    let mut c = kjv_config();
    c["quantization_config"]["quantization_mode"] = Value::from("offline");
    c
}

pub fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).expect("json"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

pub const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

pub fn copy_tokenizer_files(dir: &Path) {
    for f in TOKENIZER_FILES {
        std::fs::copy(kjv_dir().join(f), dir.join(f)).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
}

/// A complete single-file HF folder: `config`, `model.safetensors` and the tokenizer files.
pub fn write_hf_dir(dir: &Path, tensors: &Tensors, config: &Value) {
    std::fs::create_dir_all(dir).expect("mkdir");
    write_json(&dir.join("config.json"), config);
    write_safetensors(&dir.join("model.safetensors"), tensors);
    copy_tokenizer_files(dir);
}

/// The packed 2B4T layout of the KJV model in `dir`.
pub fn write_packed_dir(dir: &Path, scale: ScaleType) {
    write_hf_dir(
        dir,
        &packed_tensors(kjv_tensors(), scale),
        &offline_config(),
    );
}

/// The checkpoint split into `model-0000N-of-0000M.safetensors` shards (contiguous runs of the
/// sorted names) plus `model.safetensors.index.json`, as `save_pretrained` writes it.
pub fn write_sharded_dir(dir: &Path, tensors: &Tensors, shards: usize) {
    let per = tensors.len().div_ceil(shards);
    let order: HashMap<&str, usize> = tensors
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    write_sharded_dir_with(dir, tensors, shards, |n| order[n] / per);
}

/// Like [`write_sharded_dir`], with `shard_of(name)` (0-based) choosing each tensor's shard.
pub fn write_sharded_dir_with(
    dir: &Path,
    tensors: &Tensors,
    shards: usize,
    shard_of: impl Fn(&str) -> usize,
) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for i in 0..shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        let members: Vec<(&String, &OwnedTensor)> =
            tensors.iter().filter(|(n, _)| shard_of(n) == i).collect();
        assert!(!members.is_empty(), "shard {file} would be empty");
        for (n, t) in &members {
            weight_map.insert((*n).clone(), Value::from(file.clone()));
            total += t.data.len();
        }
        write_safetensors(&dir.join(&file), members);
    }
    assert_eq!(weight_map.len(), tensors.len(), "every tensor in a shard");
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    write_json(&dir.join("model.safetensors.index.json"), &index);
    write_json(&dir.join("config.json"), &kjv_config());
    copy_tokenizer_files(dir);
}

/// A folder whose files are symlinks to the shared model's (cheap; replace one to break it).
pub fn linked_kjv_dir(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for f in ["config.json", "model.safetensors"]
        .into_iter()
        .chain(TOKENIZER_FILES)
    {
        std::os::unix::fs::symlink(kjv_dir().join(f), dir.join(f)).expect("symlink");
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bitnet-models-test-")
        .tempdir()
        .expect("temp dir")
}
