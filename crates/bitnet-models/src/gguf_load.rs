//! Loading GGUF files written by bitnet.cpp, llama.cpp or our own converter.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::weights::{ternarize_dense, ModelWeights, Placement, Role, TensorSource};
use bitnet_common::Storage;
use bitnet_gguf::{GgmlType, GgufFile, MetadataValue, TensorInfo};
use bitnet_quantization as quant;
use bitnet_quantization::{DenseMatrix, DenseType, TernaryMatrix};
use bitnet_tokenizers::GgufVocab;

pub struct GgufSource<'a> {
    pub file: &'a GgufFile,
}

impl GgufSource<'_> {
    fn info(&self, role: Role) -> Result<&TensorInfo> {
        let name = role.gguf_name();
        self.file
            .tensor(&name)
            .ok_or(ModelError::MissingTensor(name))
    }

    fn check_shape(info: &TensorInfo, rows: usize, cols: usize) -> Result<()> {
        // GGUF lists dims innermost first: [cols, rows].
        let expected = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        let mut found = info.dims.clone();
        while found.len() > expected.len() && found.last() == Some(&1) {
            found.pop();
        }
        if found != expected {
            return Err(ModelError::Shape {
                name: info.name.clone(),
                found: info.dims.clone(),
                expected,
            });
        }
        Ok(())
    }

    fn to_f32(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let data = self.file.tensor_data(info);
        let n = usize::try_from(info.n_elements())
            .map_err(|_| ModelError::Other(format!("tensor {} too large", info.name)))?;
        let mut out = vec![0f32; n];
        match info.ty {
            GgmlType::F32 => crate::weights::f32_from_le_bytes(&data, &mut out),
            GgmlType::F16 => quant::float::f16_to_f32(&data, &mut out),
            GgmlType::BF16 => quant::float::bf16_to_f32(&data, &mut out),
            GgmlType::Q8_0 => out = quant::q8_0::decode(&data, n)?,
            GgmlType::Q6K => out = quant::q6_k::decode(&data, n)?,
            ty => {
                return Err(ModelError::UnsupportedTensorType {
                    name: info.name.clone(),
                    ty: ty.name().to_string(),
                })
            }
        }
        Ok(out)
    }

    /// The optional per-tensor `*.scale` multiplier llama.cpp's `bitnet` graph applies.
    fn extra_scale(&self, role: Role) -> Result<f32> {
        let name = role.gguf_name().replace(".weight", ".scale");
        match self.file.tensor(&name) {
            None => Ok(1.0),
            Some(info) => {
                let v = self.to_f32(info)?;
                match v.as_slice() {
                    [s] => {
                        crate::finite::check_scale(&name, *s)?;
                        Ok(*s)
                    }
                    _ => Err(ModelError::BadTensor {
                        name,
                        message: "expected one scale value".into(),
                    }),
                }
            }
        }
    }
}

impl TensorSource for GgufSource<'_> {
    fn has(&self, role: Role) -> bool {
        self.file.tensor(&role.gguf_name()).is_some()
    }

    fn dense(&self, role: Role, rows: usize, cols: usize) -> Result<DenseMatrix> {
        let info = self.info(role)?;
        Self::check_shape(info, rows, cols)?;
        let data = self.file.tensor_data(info);
        let ty = match info.ty {
            GgmlType::F32 => DenseType::F32,
            GgmlType::F16 => DenseType::F16,
            GgmlType::BF16 => DenseType::BF16,
            // Read in place: the 8-bit (6.5-bit) head is what makes a Q8_0 (Q6_K) embedding
            // worth having. The GGUF reader has already checked that the row length is a whole
            // number of blocks.
            GgmlType::Q8_0 => DenseType::Q8_0,
            GgmlType::Q6K => DenseType::Q6_K,
            _ => {
                // Other quantized embeddings (Q4_0, Q4_K, ...) are widened once at load.
                let v = self.to_f32(info)?;
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                return Ok(DenseMatrix::new(
                    rows,
                    cols,
                    DenseType::F32,
                    Storage::from_vec(bytes),
                )?);
            }
        };
        Ok(DenseMatrix::new(rows, cols, ty, data)?)
    }

    fn vector(&self, role: Role, len: usize) -> Result<Vec<f32>> {
        let info = self.info(role)?;
        Self::check_shape(info, 1, len)?;
        self.to_f32(info)
    }

    fn ternary(&self, role: Role, rows: usize, cols: usize) -> Result<TernaryMatrix> {
        let info = self.info(role)?;
        Self::check_shape(info, rows, cols)?;
        let extra = self.extra_scale(role)?;
        let data = self.file.tensor_data(info);
        let n = rows * cols;
        let bad = |message: String| ModelError::BadTensor {
            name: info.name.clone(),
            message,
        };
        let (codes, scale) = match info.ty {
            GgmlType::I2S => {
                // bitnet.cpp writes whole 128-element blocks only and its scale at `n / 4`
                // (ggml_nbytes); that is where `i2s::scale` reads it only when no block is
                // partial, and a partial block would overlap the scale tail.
                if !n.is_multiple_of(quant::i2s::BLOCK) {
                    return Err(bad(format!(
                        "I2_S needs a multiple of {} elements, got {n}",
                        quant::i2s::BLOCK
                    )));
                }
                let scale = quant::i2s::scale(&data, n).map_err(|e| bad(e.to_string()))?;
                if !scale.is_finite() {
                    return Err(bad(format!("I2_S scale is {scale}")));
                }
                let m = TernaryMatrix::from_i2s(rows, cols, data.clone(), scale * extra)?;
                if !m.data().is_mapped() {
                    data.release_pages();
                }
                return Ok(m);
            }
            GgmlType::TQ1_0 | GgmlType::TQ2_0 => {
                let (codes, ds) = if info.ty == GgmlType::TQ2_0 {
                    quant::tq2_0::decode(&data, n)?
                } else {
                    quant::tq1_0::decode(&data, n)?
                };
                if let Some(b) = bitnet_quantization::finite::first_non_finite(&ds) {
                    return Err(bad(format!("the scale of block {b} is {}", ds[b])));
                }
                let scale = common_block_scale(&codes, &ds, 256).map_err(bad)?;
                (codes, scale)
            }
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let w = self.to_f32(info)?;
                crate::finite::check_values(&info.name, &w)?;
                ternarize_dense(&w)
            }
            ty => {
                return Err(ModelError::UnsupportedTensorType {
                    name: info.name.clone(),
                    ty: ty.name().into(),
                })
            }
        };
        let m = TernaryMatrix::from_codes(rows, cols, &codes, scale * extra)?;
        // The repacked copy replaces the file's bytes; keep only one of them resident.
        data.release_pages();
        Ok(m)
    }
}

/// TQ1_0/TQ2_0 carry one scale per 256-weight block; a BitNet tensor has one per tensor, so
/// every block with a non-zero weight must agree. Anything else is not a ternary BitNet weight.
fn common_block_scale(codes: &[i8], ds: &[f32], block: usize) -> std::result::Result<f32, String> {
    let mut scale: Option<f32> = None;
    for (b, &d) in ds.iter().enumerate() {
        let start = b * block;
        let end = (start + block).min(codes.len());
        if codes
            .get(start..end)
            .is_none_or(|c| c.iter().all(|&x| x == 0))
        {
            continue;
        }
        match scale {
            None => scale = Some(d),
            Some(s) if s == d => {}
            Some(s) => {
                return Err(format!(
                    "block {b} has scale {d} but earlier blocks have {s}; per-block scales are not a BitNet per-tensor scale"
                ))
            }
        }
    }
    Ok(scale.unwrap_or(0.0))
}

pub fn load_weights(file: &GgufFile, placement: Placement) -> Result<ModelWeights> {
    let config = checked_config(file)?;
    ModelWeights::build_placed(config, &GgufSource { file }, placement)
}

/// The file's configuration, once its layer count agrees with the tensors it holds.
pub fn checked_config(file: &GgufFile) -> Result<ModelConfig> {
    let config = ModelConfig::from_gguf(file)?;
    crate::config::check_layer_count(
        file.tensors().iter().map(|t| t.name.as_str()),
        "blk.",
        config.num_layers,
        "block_count",
    )?;
    Ok(config)
}

/// The `tokenizer.ggml.*` keys as the tokenizer crate's plain struct.
pub fn vocab_from_gguf(file: &GgufFile) -> Result<GgufVocab> {
    let get = |k: &str| file.get(k);
    let strings = |k: &str| -> Result<Option<Vec<String>>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v
                .as_string_array()
                .map(|a| Some(a.into_iter().map(str::to_string).collect()))
                .ok_or_else(|| ModelError::Config(format!("{k} is not an array of strings"))),
        }
    };
    let id = |k: &str| -> Option<u32> {
        get(k)
            .and_then(MetadataValue::as_u64)
            .and_then(|x| u32::try_from(x).ok())
    };
    let model = get("tokenizer.ggml.model")
        .and_then(MetadataValue::as_str)
        .ok_or_else(|| {
            ModelError::Config("the GGUF file has no tokenizer (tokenizer.ggml.model)".into())
        })?
        .to_string();
    let tokens = strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| ModelError::Config("the GGUF file has no tokenizer.ggml.tokens".into()))?;
    let token_types = match get("tokenizer.ggml.token_type") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .ok_or_else(|| {
                    ModelError::Config("tokenizer.ggml.token_type is not an array".into())
                })?
                .iter()
                .map(|x| x.as_i64().and_then(|i| i32::try_from(i).ok()).unwrap_or(1))
                .collect(),
        ),
    };
    let scores = match get("tokenizer.ggml.scores") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .ok_or_else(|| ModelError::Config("tokenizer.ggml.scores is not an array".into()))?
                .iter()
                .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                .collect(),
        ),
    };
    Ok(GgufVocab {
        model,
        pre: get("tokenizer.ggml.pre")
            .and_then(MetadataValue::as_str)
            .map(str::to_string),
        tokens,
        token_types,
        merges: strings("tokenizer.ggml.merges")?.unwrap_or_default(),
        scores,
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        eot_id: id("tokenizer.ggml.eot_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        add_bos: get("tokenizer.ggml.add_bos_token").and_then(MetadataValue::as_bool),
        add_eos: get("tokenizer.ggml.add_eos_token").and_then(MetadataValue::as_bool),
        chat_template: get("tokenizer.chat_template")
            .and_then(MetadataValue::as_str)
            .map(str::to_string),
    })
}

/// The inverse of [`vocab_from_gguf`], for the writer.
pub fn vocab_to_metadata(v: &GgufVocab) -> Vec<(String, MetadataValue)> {
    use bitnet_gguf::ValueType;
    let str_array = |items: &[String]| MetadataValue::Array {
        elem: ValueType::String,
        items: items
            .iter()
            .map(|s| MetadataValue::String(s.clone()))
            .collect(),
    };
    let mut out = vec![(
        "tokenizer.ggml.model".to_string(),
        MetadataValue::String(v.model.clone()),
    )];
    if let Some(pre) = &v.pre {
        out.push((
            "tokenizer.ggml.pre".into(),
            MetadataValue::String(pre.clone()),
        ));
    }
    out.push(("tokenizer.ggml.tokens".into(), str_array(&v.tokens)));
    if let Some(tt) = &v.token_types {
        out.push((
            "tokenizer.ggml.token_type".into(),
            MetadataValue::Array {
                elem: ValueType::I32,
                items: tt.iter().map(|&t| MetadataValue::I32(t)).collect(),
            },
        ));
    }
    if let Some(sc) = &v.scores {
        out.push((
            "tokenizer.ggml.scores".into(),
            MetadataValue::Array {
                elem: ValueType::F32,
                items: sc.iter().map(|&t| MetadataValue::F32(t)).collect(),
            },
        ));
    }
    if !v.merges.is_empty() {
        out.push(("tokenizer.ggml.merges".into(), str_array(&v.merges)));
    }
    for (k, id) in [
        ("tokenizer.ggml.bos_token_id", v.bos_id),
        ("tokenizer.ggml.eos_token_id", v.eos_id),
        ("tokenizer.ggml.eot_token_id", v.eot_id),
        ("tokenizer.ggml.padding_token_id", v.pad_id),
    ] {
        if let Some(id) = id {
            out.push((k.into(), MetadataValue::U32(id)));
        }
    }
    for (k, b) in [
        ("tokenizer.ggml.add_bos_token", v.add_bos),
        ("tokenizer.ggml.add_eos_token", v.add_eos),
    ] {
        if let Some(b) = b {
            out.push((k.into(), MetadataValue::Bool(b)));
        }
    }
    if let Some(t) = &v.chat_template {
        out.push((
            "tokenizer.chat_template".into(),
            MetadataValue::String(t.clone()),
        ));
    }
    out
}
