use anyhow::{Context, Result};
use bitnet_gguf::{GgufFile, MetadataValue};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// GGUF file, Hugging Face folder, or hf://owner/name[@revision][:FILE]
    path: PathBuf,
    /// Print whole metadata arrays instead of their first elements
    #[arg(long)]
    full: bool,
    /// Skip the tensor table
    #[arg(long)]
    no_tensors: bool,
}

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
                items.len().min(8)
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
