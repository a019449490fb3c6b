//! Writing a model as GGUF, in the layouts bitnet.cpp and llama.cpp read.
//!
//! The file is written one tensor at a time from any [`TensorSource`] (a loaded model, or a
//! GGUF file / Hugging Face folder read lazily by [`convert`]): the header and tensor infos
//! first (every size follows from the shapes and types), then each tensor read, checked,
//! converted and written before the next is read. Dense matrices go in pieces of rows, and
//! the source's mapped pages are dropped behind them, so converting a model of any size holds
//! about one ternary matrix and a few MiB of embedding at a time.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf_load::vocab_to_metadata;
use crate::weights::{name_tensor, ModelWeights, Role, TensorSource};
use bitnet_gguf::{GgmlType, GgufError, GgufWriter, MetadataValue};
use bitnet_quantization as quant;
use bitnet_quantization::{DenseMatrix, DenseType, TernaryMatrix};
use bitnet_tokenizers::GgufVocab;
use std::io::Write;
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

/// Float formats only (the block formats go through [`encode_dense`]).
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

/// Whole rows of f32 values in `fmt`. Every format's blocks run along a row, so encoding a
/// matrix a few rows at a time gives the same bytes as encoding it whole.
fn encode_dense(v: &[f32], fmt: DenseFormat) -> quant::Result<Vec<u8>> {
    Ok(match fmt {
        DenseFormat::Q8_0 => quant::q8_0::encode(v)?,
        DenseFormat::Q6_K => quant::q6_k::encode(v)?,
        _ => float_bytes(v, fmt),
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

/// `bytes` start at block `first` (element, for float types) of a tensor of `total`.
fn check_written(
    role: Role,
    ty: DenseType,
    bytes: &[u8],
    first: usize,
    total: usize,
) -> Result<()> {
    crate::finite::check_stored_part(&role.gguf_name(), ty, bytes, first, total).map_err(
        |e| match e {
            ModelError::BadTensor { name, message } => ModelError::BadTensor {
                name,
                message: format!(
                    "{message} once stored as {ty:?} (the value does not fit the type)"
                ),
            },
            other => other,
        },
    )
}

/// f32 values converted per piece of a dense matrix: 4 MiB, whatever the matrix's size.
const DENSE_PIECE_VALUES: usize = 1 << 20;

/// One output tensor, in file order.
#[derive(Clone, Copy, Debug)]
enum Part {
    Dense(Role, usize, usize),
    Vector(Role, usize),
    Ternary(Role, usize, usize),
}

impl Part {
    fn role(self) -> Role {
        match self {
            Part::Dense(r, ..) | Part::Vector(r, _) | Part::Ternary(r, ..) => r,
        }
    }

    /// GGUF lists dims innermost first.
    fn dims(self) -> Vec<u64> {
        match self {
            Part::Dense(_, rows, cols) | Part::Ternary(_, rows, cols) => {
                vec![cols as u64, rows as u64]
            }
            Part::Vector(_, len) => vec![len as u64],
        }
    }

    fn ggml_type(self, opts: &ExportOptions) -> GgmlType {
        match self {
            Part::Dense(..) => dense_type(opts.dense),
            Part::Vector(..) => GgmlType::F32,
            Part::Ternary(..) => opts.ternary.ggml_type(),
        }
    }
}

/// The output's tensors in llama.cpp's order, refusing up front what the shapes alone rule out
/// (an untied model without a head, a row length the block format cannot hold), so that such
/// a conversion fails before anything is written.
fn plan(c: &ModelConfig, src: &dyn TensorSource, opts: &ExportOptions) -> Result<Vec<Part>> {
    let (h, ffn, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
    let mut parts = vec![
        Part::Dense(Role::TokenEmbd, c.vocab_size, h),
        Part::Vector(Role::OutputNorm, h),
    ];
    if src.has(Role::Output) {
        parts.push(Part::Dense(Role::Output, c.vocab_size, h));
    } else if !c.tie_word_embeddings {
        return Err(ModelError::MissingTensor(
            "output / lm_head (config says the head is not tied)".into(),
        ));
    }
    let block = opts.dense.block_size();
    if !h.is_multiple_of(block) {
        // Blocks run along a row: the whole tensor being a multiple of the block size is not
        // enough (a 160-wide embedding with 4096 rows is 2560 Q6_K blocks, none of them a row).
        let e = quant::QuantError::NotMultiple {
            what: "row length (hidden size)",
            n: h,
            multiple: block,
        };
        return Err(ModelError::BadTensor {
            name: Role::TokenEmbd.gguf_name(),
            message: format!("cannot store as {:?}: {e}", opts.dense),
        });
    }
    for l in 0..c.num_layers {
        parts.extend([
            Part::Vector(Role::AttnNorm(l), h),
            Part::Vector(Role::AttnSubNorm(l), q),
            Part::Vector(Role::FfnNorm(l), h),
            Part::Vector(Role::FfnSubNorm(l), ffn),
            Part::Ternary(Role::AttnQ(l), q, h),
            Part::Ternary(Role::AttnK(l), kv, h),
            Part::Ternary(Role::AttnV(l), kv, h),
            Part::Ternary(Role::AttnOutput(l), h, q),
            Part::Ternary(Role::FfnGate(l), ffn, h),
            Part::Ternary(Role::FfnUp(l), ffn, h),
            Part::Ternary(Role::FfnDown(l), h, ffn),
        ]);
    }
    Ok(parts)
}

/// Reads one tensor from `src`, checks it as loading does, converts it and hands its bytes to
/// `out` (in several pieces for a dense matrix).
fn produce(
    src: &dyn TensorSource,
    part: Part,
    opts: &ExportOptions,
    out: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let role = part.role();
    match part {
        Part::Vector(_, len) => {
            let v = src
                .vector(role, len)
                .map_err(|e| name_tensor(e, src, role))?;
            crate::finite::check_values(&src.tensor_name(role), &v)?;
            out(&float_bytes(&v, DenseFormat::F32))
        }
        Part::Ternary(_, rows, cols) => {
            let m = src
                .ternary(role, rows, cols)
                .map_err(|e| name_tensor(e, src, role))?;
            crate::finite::check_scale(&src.tensor_name(role), m.scale())?;
            let bytes = ternary_bytes(&m, opts.ternary).map_err(|e| ModelError::BadTensor {
                name: role.gguf_name(),
                message: format!("cannot store as {:?}: {e}", opts.ternary),
            })?;
            let n = rows * cols;
            match opts.ternary {
                TernaryFormat::F16 => check_written(role, DenseType::F16, &bytes, 0, n)?,
                TernaryFormat::F32 => check_written(role, DenseType::F32, &bytes, 0, n)?,
                TernaryFormat::I2S => crate::finite::check_scale(&role.gguf_name(), m.scale())?,
                // Their per-block scales are f16.
                TernaryFormat::Tq2_0 | TernaryFormat::Tq1_0 => crate::finite::check_scale(
                    &role.gguf_name(),
                    half::f16::from_f32(m.scale()).to_f32(),
                )?,
            }
            out(&bytes)?;
            // A zero-copy (mapped) matrix: its pages are not needed again.
            m.data().release_pages();
            Ok(())
        }
        Part::Dense(_, rows, cols) => {
            let m = src
                .dense(role, rows, cols)
                .map_err(|e| name_tensor(e, src, role))?;
            write_dense(&src.tensor_name(role), role, &m, opts.dense, out)
        }
    }
}

/// A dense matrix a few rows at a time: the source check loading does, the conversion, and the
/// check that the values fit the output type, each piece's mapped pages dropped once written.
fn write_dense(
    src_name: &str,
    role: Role,
    m: &DenseMatrix,
    fmt: DenseFormat,
    out: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let (rows, cols, ty) = (m.rows(), m.cols(), m.ty());
    let out_ty = fmt.dense_type();
    let in_row = ty
        .row_bytes(cols)
        .ok_or_else(|| ModelError::Other(format!("{src_name}: bad row length {cols}")))?;
    let in_blocks = cols / ty.block_size();
    let out_blocks = cols / out_ty.block_size();
    // Already in this block format: copy the blocks (re-quantizing dequantized values could
    // change them).
    let copy = out_ty.is_quantized() && ty == out_ty;
    let piece_rows = (DENSE_PIECE_VALUES / cols.max(1)).max(1);
    let mut values = Vec::new();
    for r0 in (0..rows).step_by(piece_rows) {
        let n = piece_rows.min(rows - r0);
        let piece = m.data().slice(r0 * in_row, n * in_row).ok_or_else(|| {
            ModelError::Other(format!("{src_name}: rows {r0}.. lie outside its data"))
        })?;
        crate::finite::check_stored_part(src_name, ty, &piece, r0 * in_blocks, rows * in_blocks)?;
        let converted;
        let bytes: &[u8] = if copy {
            &piece
        } else {
            values.resize(n * cols, 0f32);
            for (i, row) in values.chunks_mut(cols).enumerate() {
                m.dequantize_row(r0 + i, row);
            }
            converted = encode_dense(&values, fmt).map_err(|e| ModelError::BadTensor {
                name: role.gguf_name(),
                message: format!("cannot store as {fmt:?}: {e}"),
            })?;
            &converted
        };
        // A narrower type can overflow (an f32 value above 65504 is an f16 infinity): never
        // write a file that loading would reject.
        check_written(role, out_ty, bytes, r0 * out_blocks, rows * out_blocks)?;
        out(bytes)?;
        piece.release_pages();
    }
    Ok(())
}

/// The metadata of the output: architecture, name, file type, the model's hyperparameters and
/// its tokenizer.
fn metadata_writer(c: &ModelConfig, vocab: &GgufVocab, opts: &ExportOptions) -> Result<GgufWriter> {
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
    Ok(g)
}

/// Builds the whole GGUF file for `w` in memory (for tests and small models); [`write_gguf`]
/// streams the same bytes to a file instead.
pub fn to_gguf(w: &ModelWeights, vocab: &GgufVocab, opts: &ExportOptions) -> Result<GgufWriter> {
    let mut g = metadata_writer(&w.config, vocab, opts)?;
    for part in plan(&w.config, w, opts)? {
        let mut bytes = Vec::new();
        produce(w, part, opts, &mut |b| {
            bytes.extend_from_slice(b);
            Ok(())
        })?;
        g.add_tensor(
            part.role().gguf_name(),
            part.dims(),
            part.ggml_type(opts),
            bytes,
        )?;
    }
    Ok(g)
}

/// Writes `w` as GGUF to `path` (through a temporary file renamed into place).
pub fn write_gguf(
    w: &ModelWeights,
    vocab: &GgufVocab,
    opts: &ExportOptions,
    path: &Path,
) -> Result<()> {
    write_gguf_from(w, &w.config, vocab, opts, path, &mut |_, _| {})
}

/// Writes the model `src` provides as GGUF to `path`, one tensor at a time (see the module
/// docs), through a temporary file renamed over `path` only once complete: an error part way
/// leaves nothing under the name. `progress(done, total)` hears the tensor bytes written.
pub fn write_gguf_from(
    src: &dyn TensorSource,
    config: &ModelConfig,
    vocab: &GgufVocab,
    opts: &ExportOptions,
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let parts = plan(config, src, opts)?;
    let mut g = metadata_writer(config, vocab, opts)?;
    for part in &parts {
        g.add_tensor_info(part.role().gguf_name(), part.dims(), part.ggml_type(opts))?;
    }
    let total = g.tensor_data_bytes();
    let mut done = 0u64;
    progress(done, total);
    // The writer's callback speaks io::Error; a model error (a bad tensor) is kept here whole
    // and returned instead of its text.
    let mut failure = None;
    let written = g.write_file_streamed(path, |i, sink| {
        let part = parts
            .get(i)
            .copied()
            .ok_or_else(|| std::io::Error::other(format!("tensor {i} was not planned")))?;
        let r = produce(src, part, opts, &mut |bytes| {
            sink.write_all(bytes).map_err(GgufError::Io)?;
            done += bytes.len() as u64;
            progress(done, total);
            Ok(())
        });
        match r {
            Ok(()) => Ok(()),
            Err(ModelError::Gguf(GgufError::Io(e))) => Err(e),
            Err(e) => {
                let text = e.to_string();
                failure = Some(e);
                Err(std::io::Error::other(text))
            }
        }
    });
    match (failure, written) {
        (Some(e), _) => Err(e),
        (None, r) => Ok(r?),
    }
}

/// Converts the model at `input` (GGUF file or Hugging Face folder) to GGUF at `output` without
/// loading it: tensors are read from the file mapping one at a time ([`write_gguf_from`]).
/// The input is checked as [`crate::load`] checks it (configuration, layer count, tokenizer and
/// its fit to the embedding, every value finite). `tokenizer_dir` replaces the input's own
/// tokenizer, as in `load`.
pub fn convert(
    input: &Path,
    tokenizer_dir: Option<&Path>,
    opts: &ExportOptions,
    output: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let source = crate::ModelSource::open(input, tokenizer_dir)?;
    let vocab = source.vocab.as_ref().ok_or_else(|| {
        ModelError::Other("the input's tokenizer cannot be stored as GGUF metadata".into())
    })?;
    source.with_tensors(|src| write_gguf_from(src, &source.config, vocab, opts, output, progress))
}
