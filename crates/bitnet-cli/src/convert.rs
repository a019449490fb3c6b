use anyhow::{anyhow, Context, Result};
use bitnet_models::export::{DenseFormat, ExportOptions, TernaryFormat};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input: GGUF file, Hugging Face folder, or hf://owner/name[@revision][:FILE]
    input: PathBuf,
    /// Output GGUF file
    output: PathBuf,
    /// Ternary weight format: i2_s (bitnet.cpp), tq2_0, tq1_0 (llama.cpp), f16, f32
    #[arg(long = "type", default_value = "i2_s")]
    ty: String,
    /// Embedding / head format: f16, bf16, f32, q8_0 (8.5 bits: about half the bytes of f16),
    /// q6_k (6.56 bits, llama.cpp's k-quant head; the hidden size must be a multiple of 256)
    #[arg(long, default_value = "f16")]
    embed: String,
    /// Folder with tokenizer.json to embed instead of the input's own tokenizer
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// general.name to record
    #[arg(long)]
    name: Option<String>,
    /// No progress bar and no summary line
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(mut a: ConvertArgs) -> Result<()> {
    crate::validate::gguf_output(&a.output)?;
    a.input = crate::args::model_location(&crate::hub::local(&a.input)?)?;
    let ternary = TernaryFormat::parse(&a.ty)
        .ok_or_else(|| anyhow!("unknown --type {} (i2_s, tq2_0, tq1_0, f16, f32)", a.ty))?;
    let dense = DenseFormat::parse(&a.embed)
        .ok_or_else(|| anyhow!("unknown --embed {} (f16, bf16, f32, q8_0, q6_k)", a.embed))?;
    // Before the (long) conversion: a FIFO, device or symlink at the output is never replaced.
    bitnet_gguf::check_output_path(&a.output)?;
    // A folder's whole name ("bitnet-b1.58-kjv"), a file's name without its extension.
    let stem = if a.input.is_dir() {
        a.input.file_name()
    } else {
        a.input.file_stem()
    };
    let name = a.name.clone().unwrap_or_else(|| {
        stem.map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bitnet".into())
    });
    let opts = ExportOptions {
        ternary,
        dense,
        name,
    };
    let bar = crate::progress::bar("converting", crate::progress::Unit::Bytes, a.quiet);
    // Tensor by tensor from the input's mapping: memory stays near one tensor whatever the
    // model's size (README, "Converting").
    let written = bitnet_models::export::convert(
        &a.input,
        a.tokenizer.as_deref(),
        &opts,
        &a.output,
        &mut crate::progress::reporter(&bar),
    );
    bar.finish_and_clear();
    written
        .map_err(crate::output_error)
        .with_context(|| format!("converting {}", a.input.display()))?;
    if !a.quiet {
        let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "wrote {} ({} bytes, ternary {:?}, embeddings {:?})",
            a.output.display(),
            size,
            ternary,
            dense
        );
    }
    Ok(())
}
