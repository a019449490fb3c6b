//! Loading Hugging Face checkpoint folders: `config.json` plus one or more `*.safetensors`.
//!
//! Two weight layouts are accepted for every BitLinear: bf16/f16/f32 master weights (ternarized
//! at load with absmean, as transformers' online `AutoBitLinear` does) and the packed uint8
//! `[out/4, in]` layout with a multiplicative `weight_scale` (microsoft/bitnet-b1.58-2B-4T).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::weights::{ModelWeights, Placement, Role, TensorSource};
use bitnet_common::Storage;
use bitnet_quantization as quant;
use bitnet_quantization::{DenseMatrix, DenseType, TernaryMatrix};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct HfTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Storage,
    pub file: PathBuf,
}

/// Every tensor of a checkpoint folder, memory-mapped.
pub struct HfCheckpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tensors: HashMap<String, HfTensor>,
    pub file_bytes: u64,
}

impl HfCheckpoint {
    pub fn open(dir: &Path) -> Result<HfCheckpoint> {
        let config_path = dir.join("config.json");
        let text = bitnet_common::read_regular_to_string(&config_path)
            .map_err(|e| ModelError::io(&config_path, e))?;
        let config = ModelConfig::from_hf_json(&text)?;
        let mut tensors = HashMap::new();
        let mut file_bytes = 0;
        for file in safetensors_files(dir)? {
            let storage = Storage::map_file(&file).map_err(|e| ModelError::io(&file, e))?;
            file_bytes += storage.len() as u64;
            let st_err = |message: String| ModelError::SafeTensors {
                path: file.clone(),
                message,
            };
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(&storage)
                .map_err(|e| st_err(e.to_string()))?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                let data = storage
                    .slice(base + start, end.saturating_sub(start))
                    .ok_or_else(|| st_err(format!("tensor {name} lies outside the file")))?;
                if tensors.contains_key(&name) {
                    return Err(st_err(format!(
                        "tensor {name} appears in more than one shard"
                    )));
                }
                tensors.insert(
                    name,
                    HfTensor {
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        data,
                        file: file.clone(),
                    },
                );
            }
        }
        crate::config::check_layer_count(
            tensors.keys().map(String::as_str),
            "model.layers.",
            config.num_layers,
            "num_hidden_layers",
        )?;
        Ok(HfCheckpoint {
            dir: dir.to_path_buf(),
            config,
            tensors,
            file_bytes,
        })
    }

    fn find(&self, role: Role) -> Result<(String, &HfTensor)> {
        let names = role.hf_names();
        for n in &names {
            if let Some(t) = self.tensors.get(n) {
                return Ok((n.clone(), t));
            }
        }
        Err(ModelError::MissingTensor(names.join(" or ")))
    }

    pub fn load_weights(&self, placement: Placement) -> Result<ModelWeights> {
        ModelWeights::build_placed(self.config.clone(), self, placement)
    }
}

/// `model.safetensors`, or the shards named by `model.safetensors.index.json`, or failing both
/// every `*.safetensors` in the folder.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text =
            bitnet_common::read_regular_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: {e}", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config(format!("{}: no weight_map", index.display())))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for f in map.values() {
            let name = f.as_str().ok_or_else(|| {
                ModelError::Config(format!(
                    "{}: weight_map values must be file names",
                    index.display()
                ))
            })?;
            // The index names files beside it; refuse paths that would escape the folder.
            if name.contains('/') || name.contains('\\') || name == ".." {
                return Err(ModelError::Config(format!(
                    "{}: bad shard name {name}",
                    index.display()
                )));
            }
            let p = dir.join(name);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        files.sort();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Other(format!(
            "no *.safetensors files in {}",
            dir.display()
        )));
    }
    Ok(files)
}

fn to_f32(name: &str, t: &HfTensor) -> Result<Vec<f32>> {
    // safetensors has already checked that the byte range matches shape x dtype.
    let n: usize = t.shape.iter().product();
    let need = n.checked_mul(t.dtype.bitsize() / 8);
    if need != Some(t.data.len()) {
        return Err(ModelError::BadTensor {
            name: name.into(),
            message: format!("{} bytes for {n} {:?} values", t.data.len(), t.dtype),
        });
    }
    let mut out = vec![0f32; n];
    match t.dtype {
        Dtype::F32 => crate::weights::f32_from_le_bytes(&t.data, &mut out),
        Dtype::F16 => quant::float::f16_to_f32(&t.data, &mut out),
        Dtype::BF16 => quant::float::bf16_to_f32(&t.data, &mut out),
        other => {
            return Err(ModelError::UnsupportedTensorType {
                name: name.into(),
                ty: format!("{other:?}"),
            })
        }
    }
    Ok(out)
}

fn check_shape(name: &str, t: &HfTensor, expected: &[usize]) -> Result<()> {
    if t.shape != expected {
        return Err(ModelError::Shape {
            name: name.into(),
            found: t.shape.iter().map(|&d| d as u64).collect(),
            expected: expected.iter().map(|&d| d as u64).collect(),
        });
    }
    Ok(())
}

impl TensorSource for HfCheckpoint {
    fn tensor_name(&self, role: Role) -> String {
        match self.find(role) {
            Ok((name, _)) => name,
            Err(_) => role.hf_names().into_iter().next().unwrap_or_default(),
        }
    }

    fn has(&self, role: Role) -> bool {
        self.find(role).is_ok()
    }

    fn dense(&self, role: Role, rows: usize, cols: usize) -> Result<DenseMatrix> {
        let (name, t) = self.find(role)?;
        check_shape(&name, t, &[rows, cols])?;
        let ty = match t.dtype {
            Dtype::F32 => DenseType::F32,
            Dtype::F16 => DenseType::F16,
            Dtype::BF16 => DenseType::BF16,
            other => {
                return Err(ModelError::UnsupportedTensorType {
                    name,
                    ty: format!("{other:?}"),
                })
            }
        };
        Ok(DenseMatrix::new(rows, cols, ty, t.data.clone())?)
    }

    fn vector(&self, role: Role, len: usize) -> Result<Vec<f32>> {
        let (name, t) = self.find(role)?;
        check_shape(&name, t, &[len])?;
        to_f32(&name, t)
    }

    fn ternary(&self, role: Role, rows: usize, cols: usize) -> Result<TernaryMatrix> {
        let (name, t) = self.find(role)?;
        if t.dtype == Dtype::U8 {
            if !rows.is_multiple_of(4) {
                return Err(ModelError::BadTensor {
                    name,
                    message: format!("packed layout needs out_features ({rows}) divisible by 4"),
                });
            }
            check_shape(&name, t, &[rows / 4, cols])?;
            let codes = quant::hf_packed::unpack(&t.data, rows, cols)?;
            let scale_name = format!("{name}_scale");
            let st = self
                .tensors
                .get(&scale_name)
                .ok_or(ModelError::MissingTensor(scale_name.clone()))?;
            let scale = match to_f32(&scale_name, st)?.as_slice() {
                [s] if s.is_finite() => *s,
                [s] => {
                    return Err(ModelError::BadTensor {
                        name: scale_name,
                        message: format!("weight scale is {s}"),
                    })
                }
                other => {
                    return Err(ModelError::BadTensor {
                        name: scale_name,
                        message: format!("expected one scale value, found {}", other.len()),
                    })
                }
            };
            // AutoBitLinear (offline) multiplies by weight_scale; see shared/notes/formats.md 4.5.
            let m = TernaryMatrix::from_codes(rows, cols, &codes, scale)?;
            // The repacked copy replaces the file's bytes; keep only one of them resident.
            t.data.release_pages();
            return Ok(m);
        }
        check_shape(&name, t, &[rows, cols])?;
        let w = to_f32(&name, t)?;
        crate::finite::check_values(&name, &w)?;
        // Always absmean, even for values that already look ternary: that is what
        // transformers' online AutoBitLinear, the reference for this layout, computes.
        let (codes, scale) = quant::ternarize_absmean(&w);
        let m = TernaryMatrix::from_codes(rows, cols, &codes, scale)?;
        // The master weights are not needed after ternarization; drop their pages.
        t.data.release_pages();
        Ok(m)
    }
}
