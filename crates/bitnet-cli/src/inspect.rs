use anyhow::{Context, Result};
use bitnet_gguf::{GgufFile, MetadataValue};
use bitnet_models::ModelConfig;
use clap::Args;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// GGUF file, Hugging Face folder, or hf://owner/name[@revision][:FILE]
    path: PathBuf,
    /// Print whole metadata arrays (and, as text, long strings) instead of their first elements
    #[arg(long)]
    full: bool,
    /// Skip the tensor table
    #[arg(long)]
    no_tensors: bool,
    /// One JSON object on stdout instead of text (docs/inspect-json.md describes its fields)
    #[arg(long)]
    json: bool,
}

/// Array items shown unless `--full`: enough to see what a token list holds.
const ARRAY_HEAD: usize = 8;

fn show_value(v: &MetadataValue, full: bool) -> String {
    match v {
        MetadataValue::String(s) if !full && s.len() > 200 => format!(
            "{:?}... ({} bytes)",
            &s[..(0..=200)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0)],
            s.len()
        ),
        MetadataValue::String(s) => format!("{s:?}"),
        MetadataValue::Array { elem, items } => {
            let n = if full {
                items.len()
            } else {
                items.len().min(ARRAY_HEAD)
            };
            let shown: Vec<String> = items[..n].iter().map(|x| show_value(x, full)).collect();
            let more = if n < items.len() {
                format!(", ... ({} {:?} items)", items.len(), elem)
            } else {
                String::new()
            };
            format!("[{}{}]", shown.join(", "), more)
        }
        other => format!("{other:?}"),
    }
}

pub fn run(mut a: InspectArgs) -> Result<()> {
    a.path = crate::hub::local(&a.path)?;
    let out = &mut std::io::stdout().lock();
    if a.json {
        let v = if a.path.is_dir() {
            hf_json(&a)?
        } else {
            let f =
                GgufFile::open(&a.path).with_context(|| format!("reading {}", a.path.display()))?;
            gguf_json(&a, &f)
        };
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    if a.path.is_dir() {
        return inspect_hf(&a, out);
    }
    let f = GgufFile::open(&a.path).with_context(|| format!("reading {}", a.path.display()))?;
    writeln!(out, "file: {} ({} bytes)", a.path.display(), f.file_size())?;
    writeln!(
        out,
        "GGUF version {}, alignment {}, data at offset {}",
        f.version(),
        f.alignment(),
        f.data_offset()
    )?;
    writeln!(out, "\nmetadata ({} keys):", f.metadata().len())?;
    for (k, v) in f.metadata() {
        writeln!(out, "  {k} = {}", show_value(v, a.full))?;
    }
    if !a.no_tensors {
        writeln!(out, "\ntensors ({}):", f.tensors().len())?;
        writeln!(
            out,
            "  {:<40} {:>6} {:>18} {:>12} {:>12}",
            "name", "type", "dims", "bytes", "offset"
        )?;
        let mut total = 0u64;
        for t in f.tensors() {
            total += t.n_bytes;
            writeln!(
                out,
                "  {:<40} {:>6} {:>18} {:>12} {:>12}",
                t.name,
                t.ty.name(),
                format!("{:?}", t.dims),
                t.n_bytes,
                t.offset
            )?;
        }
        writeln!(out, "  total tensor bytes: {total}")?;
    }
    match bitnet_models::config::ModelConfig::from_gguf(&f) {
        Ok(c) => writeln!(out, "\nmodel: {c:?}")?,
        Err(e) => writeln!(out, "\nnot a loadable BitNet model: {e}")?,
    }
    Ok(())
}

fn inspect_hf(a: &InspectArgs, out: &mut impl Write) -> Result<()> {
    let ck = bitnet_models::hf_load::HfCheckpoint::open(&a.path)?;
    writeln!(
        out,
        "Hugging Face folder: {} ({} bytes of safetensors)",
        a.path.display(),
        ck.file_bytes
    )?;
    writeln!(out, "model: {:?}", ck.config)?;
    if !a.no_tensors {
        let mut names: Vec<&String> = ck.tensors.keys().collect();
        names.sort();
        writeln!(out, "\ntensors ({}):", names.len())?;
        for n in names {
            let t = &ck.tensors[n];
            writeln!(
                out,
                "  {:<56} {:>5} {:?}",
                n,
                format!("{:?}", t.dtype),
                t.shape
            )?;
        }
    }
    Ok(())
}

/// A metadata value as JSON: numbers, booleans and strings as themselves (a non-finite float
/// as null, which JSON cannot spell otherwise), arrays as `{"type", "len", "items"}` with only
/// the first [`ARRAY_HEAD`] items unless `full`.
fn value_json(v: &MetadataValue, full: bool) -> Value {
    use MetadataValue as M;
    match v {
        M::U8(x) => json!(x),
        M::I8(x) => json!(x),
        M::U16(x) => json!(x),
        M::I16(x) => json!(x),
        M::U32(x) => json!(x),
        M::I32(x) => json!(x),
        M::U64(x) => json!(x),
        M::I64(x) => json!(x),
        M::F32(x) => f32_json(*x),
        M::F64(x) => json!(x),
        M::Bool(x) => json!(x),
        M::String(x) => json!(x),
        M::Array { elem, items } => {
            let n = if full {
                items.len()
            } else {
                items.len().min(ARRAY_HEAD)
            };
            json!({
                "type": elem.name(),
                "len": items.len(),
                "items": items[..n].iter().map(|x| value_json(x, full)).collect::<Vec<_>>(),
            })
        }
    }
}

/// An f32 as the shortest decimal that reads back as it (1e-5, not 9.999999747378752e-06).
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .map_or(Value::Null, |v| json!(v))
}

/// llama.cpp's `llama_ftype` names for `general.file_type` (40 is bitnet.cpp's I2_S).
fn file_type_name(id: u64) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        12 => "Q3_K_M",
        15 => "Q4_K_M",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        40 => "I2_S",
        _ => return None,
    })
}

/// Weights the configuration implies (embedding, untied head, norms, every projection), the
/// way model cards count them: a packed ternary weight counts once, not per stored byte.
fn parameter_count(c: &ModelConfig) -> u64 {
    let (h, f, q, kv) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.q_dim() as u64,
        c.kv_dim() as u64,
    );
    let v = c.vocab_size as u64;
    let head = if c.tie_word_embeddings { 0 } else { v * h };
    let layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h + q + f;
    v * h + head + h + c.num_layers as u64 * layer
}

fn model_json(c: &ModelConfig, file_type: Value) -> Value {
    json!({
        "architecture": c.arch.gguf_name(),
        "layers": c.num_layers,
        "heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "vocab_size": c.vocab_size,
        "context_length": c.max_position_embeddings,
        "rope_theta": f32_json(c.rope_theta),
        "rms_norm_eps": f32_json(c.rms_norm_eps),
        "tied_embeddings": c.tie_word_embeddings,
        "file_type": file_type,
        "parameters": parameter_count(c),
    })
}

fn gguf_json(a: &InspectArgs, f: &GgufFile) -> Value {
    let metadata: Vec<Value> = f
        .metadata()
        .iter()
        .map(|(k, v)| json!({"key": k, "type": v.value_type().name(), "value": value_json(v, a.full)}))
        .collect();
    let file_type = f
        .get("general.file_type")
        .and_then(MetadataValue::as_u64)
        .map_or(
            Value::Null,
            |id| json!({"id": id, "name": file_type_name(id)}),
        );
    let mut out = json!({
        "format": "gguf",
        "path": a.path.display().to_string(),
        "file_bytes": f.file_size(),
        "gguf": {
            "version": f.version(),
            "alignment": f.alignment(),
            "data_offset": f.data_offset(),
        },
        "metadata": metadata,
        "tensor_count": f.tensors().len(),
        "tensor_bytes": f.tensors().iter().map(|t| t.n_bytes).sum::<u64>(),
    });
    if !a.no_tensors {
        out["tensors"] = f
            .tensors()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "type": t.ty.name(),
                    "shape": t.dims,
                    "offset": t.offset,
                    "bytes": t.n_bytes,
                })
            })
            .collect();
    }
    match ModelConfig::from_gguf(f) {
        Ok(c) => out["model"] = model_json(&c, file_type),
        Err(e) => {
            out["model"] = Value::Null;
            out["model_error"] = json!(e.to_string());
        }
    }
    out
}

fn hf_json(a: &InspectArgs) -> Result<Value> {
    let ck = bitnet_models::hf_load::HfCheckpoint::open(&a.path)?;
    let mut names: Vec<&String> = ck.tensors.keys().collect();
    names.sort();
    // The stored type of the first attention projection says how the weights are kept
    // (bf16 master weights, or microsoft's packed U8 ternary layout).
    let file_type = bitnet_models::Role::AttnQ(0)
        .hf_names()
        .iter()
        .find_map(|n| ck.tensors.get(n))
        .map_or(Value::Null, |t| json!({"name": format!("{:?}", t.dtype)}));
    let mut out = json!({
        "format": "hf",
        "path": a.path.display().to_string(),
        "file_bytes": ck.file_bytes,
        "tensor_count": names.len(),
        "tensor_bytes": ck.tensors.values().map(|t| t.data.len() as u64).sum::<u64>(),
        "model": model_json(&ck.config, file_type),
    });
    if !a.no_tensors {
        out["tensors"] = names
            .iter()
            .map(|n| {
                let t = &ck.tensors[*n];
                json!({
                    "name": n,
                    "type": format!("{:?}", t.dtype),
                    // PyTorch order (outermost first), as safetensors stores it.
                    "shape": t.shape,
                    "file": t.file.file_name().map(|f| f.to_string_lossy().into_owned()),
                    "bytes": t.data.len(),
                })
            })
            .collect();
    }
    Ok(out)
}
