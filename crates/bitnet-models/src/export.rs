//! Writing a loaded model as GGUF, in the layouts bitnet.cpp and llama.cpp read.

use crate::error::{ModelError, Result};
use crate::gguf_load::vocab_to_metadata;
use crate::weights::{ModelWeights, Role};
use bitnet_gguf::{GgmlType, GgufWriter, MetadataValue};
use bitnet_kernels::{DenseMatrix, DenseType, TernaryMatrix};
use bitnet_quantization as quant;
use bitnet_tokenizers::GgufVocab;
use std::path::Path;

/// How the ternary matrices are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TernaryFormat {
    /// bitnet.cpp's I2_S: 2 bits per weight, one f32 scale per tensor.
    I2S,
    /// llama.cpp's TQ2_0: 2.06 bits per weight, f16 scale per 256 weights.
    Tq2_0,
    /// llama.cpp's TQ1_0: 1.69 bits per weight (base-3 packing), f16 scale per 256 weights.
    Tq1_0,
    /// Ternary values times the scale, as F16 (what llama.cpp's converter writes for `--outtype f16`).
    F16,
    F32,
}

impl TernaryFormat {
    pub fn parse(s: &str) -> Option<TernaryFormat> {
        match s.to_ascii_lowercase().as_str() {
            "i2_s" | "i2s" => Some(TernaryFormat::I2S),
            "tq2_0" | "tq2" => Some(TernaryFormat::Tq2_0),
            "tq1_0" | "tq1" => Some(TernaryFormat::Tq1_0),
            "f16" => Some(TernaryFormat::F16),
            "f32" => Some(TernaryFormat::F32),
            _ => None,
        }
    }

    fn ggml_type(self) -> GgmlType {
        match self {
            TernaryFormat::I2S => GgmlType::I2S,
            TernaryFormat::Tq2_0 => GgmlType::TQ2_0,
            TernaryFormat::Tq1_0 => GgmlType::TQ1_0,
            TernaryFormat::F16 => GgmlType::F16,
            TernaryFormat::F32 => GgmlType::F32,
        }
    }

    /// llama.cpp's `llama_ftype` value for `general.file_type` (40 is bitnet.cpp's I2_S).
    fn file_type(self) -> u32 {
        match self {
            TernaryFormat::I2S => 40,
            TernaryFormat::Tq2_0 => 37,
            TernaryFormat::Tq1_0 => 36,
            TernaryFormat::F16 => 1,
            TernaryFormat::F32 => 0,
        }
    }
}

/// How the embedding (and an untied head) is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseFormat {
    F16,
    F32,
    BF16,
    /// ggml `Q8_0` (34 bytes per 32 weights), llama.cpp's `quantize_row_q8_0_ref`; the row
    /// length must be a multiple of 32.
    Q8_0,
    /// ggml `Q6_K` (210 bytes per 256 weights, 6.5625 bits), llama.cpp's
    /// `quantize_row_q6_K_ref`; the row length must be a multiple of 256.
    #[allow(non_camel_case_types)]
    Q6_K,
}

impl DenseFormat {
    pub fn parse(s: &str) -> Option<DenseFormat> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(DenseFormat::F16),
            "f32" => Some(DenseFormat::F32),
            "bf16" => Some(DenseFormat::BF16),
            "q8_0" | "q8" => Some(DenseFormat::Q8_0),
            "q6_k" | "q6k" => Some(DenseFormat::Q6_K),
            _ => None,
        }
    }

    /// Elements per block of the format (the row length must be a multiple of it).
    pub fn block_size(self) -> usize {
        self.dense_type().block_size()
    }

    /// The kernel type a matrix stored in this format loads as.
    fn dense_type(self) -> DenseType {
        match self {
            DenseFormat::F16 => DenseType::F16,
            DenseFormat::F32 => DenseType::F32,
            DenseFormat::BF16 => DenseType::BF16,
            DenseFormat::Q8_0 => DenseType::Q8_0,
            DenseFormat::Q6_K => DenseType::Q6_K,
        }
    }
}

pub struct ExportOptions {
    pub ternary: TernaryFormat,
    pub dense: DenseFormat,
    pub name: String,
}

fn ternary_bytes(m: &TernaryMatrix, fmt: TernaryFormat) -> Result<Vec<u8>> {
    let mut codes = Vec::with_capacity(m.rows() * m.cols());
    for r in 0..m.rows() {
        codes.extend(m.codes_row(r));
    }
    let s = m.scale();
    Ok(match fmt {
        TernaryFormat::I2S => quant::i2s::encode(&codes, s),
        TernaryFormat::Tq2_0 => quant::tq2_0::encode(&codes, s)?,
        TernaryFormat::Tq1_0 => quant::tq1_0::encode(&codes, s)?,
        TernaryFormat::F16 | TernaryFormat::F32 => {
            let v: Vec<f32> = codes.iter().map(|&c| c as f32 * s).collect();
            float_bytes(
                &v,
                if fmt == TernaryFormat::F16 {
                    DenseFormat::F16
                } else {
                    DenseFormat::F32
                },
            )
        }
    })
}

/// Float formats only (the block formats go through [`dense_bytes`]).
fn float_bytes(v: &[f32], fmt: DenseFormat) -> Vec<u8> {
    match fmt {
        DenseFormat::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DenseFormat::F16 => quant::float::f32_to_f16_bytes(v),
        DenseFormat::BF16 => quant::float::f32_to_bf16_bytes(v),
        DenseFormat::Q8_0 | DenseFormat::Q6_K => {
            unreachable!("float_bytes is for float formats")
        }
    }
}

fn dense_bytes(m: &DenseMatrix, fmt: DenseFormat) -> quant::Result<Vec<u8>> {
    // Blocks run along a row: the whole tensor being a multiple of the block size is not
    // enough (a 160-wide embedding with 4096 rows is 2560 Q6_K blocks, none of them a row).
    let block = fmt.block_size();
    if !m.cols().is_multiple_of(block) {
        return Err(quant::QuantError::NotMultiple {
            what: "row length (hidden size)",
            n: m.cols(),
            multiple: block,
        });
    }
    if fmt.dense_type().is_quantized() && m.ty() == fmt.dense_type() {
        // Already in this block format: copy the blocks (re-quantizing dequantized values
        // could change them).
        return Ok(m.data().to_vec());
    }
    let mut all = vec![0f32; m.rows() * m.cols()];
    for (r, row) in all.chunks_mut(m.cols()).enumerate() {
        m.row_f32(r, row);
    }
    Ok(match fmt {
        DenseFormat::Q8_0 => quant::q8_0::encode(&all)?,
        DenseFormat::Q6_K => quant::q6_k::encode(&all)?,
        _ => float_bytes(&all, fmt),
    })
}

fn dense_type(fmt: DenseFormat) -> GgmlType {
    match fmt {
        DenseFormat::F16 => GgmlType::F16,
        DenseFormat::F32 => GgmlType::F32,
        DenseFormat::BF16 => GgmlType::BF16,
        DenseFormat::Q8_0 => GgmlType::Q8_0,
        DenseFormat::Q6_K => GgmlType::Q6K,
    }
}

fn check_written(role: Role, ty: DenseType, bytes: &[u8]) -> Result<()> {
    crate::finite::check_stored(&role.gguf_name(), ty, bytes).map_err(|e| match e {
        ModelError::BadTensor { name, message } => ModelError::BadTensor {
            name,
            message: format!("{message} once stored as {ty:?} (the value does not fit the type)"),
        },
        other => other,
    })
}

/// Builds the GGUF writer for `w` with its tokenizer; [`write_gguf`] saves it.
pub fn to_gguf(w: &ModelWeights, vocab: &GgufVocab, opts: &ExportOptions) -> Result<GgufWriter> {
    let c = &w.config;
    let mut g = GgufWriter::new();
    g.add_metadata(
        "general.architecture",
        MetadataValue::String(c.arch.gguf_name().into()),
    )?;
    g.add_metadata("general.name", MetadataValue::String(opts.name.clone()))?;
    g.add_metadata(
        "general.file_type",
        MetadataValue::U32(opts.ternary.file_type()),
    )?;
    g.add_metadata("general.quantization_version", MetadataValue::U32(2))?;
    for (k, v) in c.gguf_metadata() {
        g.add_metadata(k, v)?;
    }
    for (k, v) in vocab_to_metadata(vocab) {
        g.add_metadata(k, v)?;
    }
    let dims2 = |m_rows: usize, m_cols: usize| vec![m_cols as u64, m_rows as u64];
    let add_dense = |g: &mut GgufWriter, role: Role, m: &DenseMatrix| -> Result<()> {
        let bytes = dense_bytes(m, opts.dense).map_err(|e| ModelError::BadTensor {
            name: role.gguf_name(),
            message: format!("cannot store as {:?}: {e}", opts.dense),
        })?;
        // A narrower type can overflow (an f32 value above 65504 is an f16 infinity): never
        // write a file that loading would reject.
        check_written(role, opts.dense.dense_type(), &bytes)?;
        g.add_tensor(
            role.gguf_name(),
            dims2(m.rows(), m.cols()),
            dense_type(opts.dense),
            bytes,
        )?;
        Ok(())
    };
    let add_vec = |g: &mut GgufWriter, role: Role, v: &[f32]| -> Result<()> {
        crate::finite::check_values(&role.gguf_name(), v)?;
        g.add_tensor(
            role.gguf_name(),
            vec![v.len() as u64],
            GgmlType::F32,
            float_bytes(v, DenseFormat::F32),
        )?;
        Ok(())
    };
    add_dense(&mut g, Role::TokenEmbd, &w.token_embd)?;
    add_vec(&mut g, Role::OutputNorm, &w.output_norm)?;
    if let Some(out) = &w.output {
        add_dense(&mut g, Role::Output, out)?;
    }
    for (l, layer) in w.layers.iter().enumerate() {
        for (role, v) in layer.norms(l) {
            add_vec(&mut g, role, v)?;
        }
        for (role, m) in layer.ternaries(l) {
            let bytes = ternary_bytes(m, opts.ternary).map_err(|e| ModelError::BadTensor {
                name: role.gguf_name(),
                message: format!("cannot store as {:?}: {e}", opts.ternary),
            })?;
            match opts.ternary {
                TernaryFormat::F16 => check_written(role, DenseType::F16, &bytes)?,
                TernaryFormat::F32 => check_written(role, DenseType::F32, &bytes)?,
                TernaryFormat::I2S => crate::finite::check_scale(&role.gguf_name(), m.scale())?,
                // Their per-block scales are f16.
                TernaryFormat::Tq2_0 | TernaryFormat::Tq1_0 => crate::finite::check_scale(
                    &role.gguf_name(),
                    half::f16::from_f32(m.scale()).to_f32(),
                )?,
            }
            g.add_tensor(
                role.gguf_name(),
                dims2(m.rows(), m.cols()),
                opts.ternary.ggml_type(),
                bytes,
            )?;
        }
    }
    Ok(g)
}

pub fn write_gguf(
    w: &ModelWeights,
    vocab: &GgufVocab,
    opts: &ExportOptions,
    path: &Path,
) -> Result<()> {
    to_gguf(w, vocab, opts)?.write_file(path)?;
    Ok(())
}
