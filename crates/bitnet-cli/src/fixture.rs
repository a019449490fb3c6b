use anyhow::{anyhow, Result};
use bitnet_models::export::{write_gguf, DenseFormat, ExportOptions, TernaryFormat};
use bitnet_models::{fixture, Arch};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FixtureArgs {
    /// Output GGUF file
    output: PathBuf,
    /// Shapes: 2b4t (microsoft/bitnet-b1.58-2B-4T)
    #[arg(long, default_value = "2b4t")]
    shape: String,
    /// GGUF architecture: bitnet (llama.cpp, loads in mainline llama.cpp) or bitnet-b1.58 (bitnet.cpp)
    #[arg(long, default_value = "bitnet")]
    arch: String,
    /// Ternary format: i2_s, tq2_0, tq1_0
    #[arg(long = "type", default_value = "tq2_0")]
    ty: String,
    /// Embedding / head format: f16, bf16, f32, q8_0, q6_k
    #[arg(long, default_value = "f16")]
    embed: String,
    /// Override the number of layers (smaller files for quick checks)
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Writes a model with real shapes and random ternary weights, for benchmarks.
pub fn run(a: FixtureArgs) -> Result<()> {
    let arch = Arch::from_gguf_name(&a.arch)?;
    let mut config = match a.shape.as_str() {
        "2b4t" => fixture::config_2b4t(arch),
        other => return Err(anyhow!("unknown --shape {other} (2b4t)")),
    };
    if let Some(l) = a.layers {
        config.num_layers = l;
    }
    let ternary = TernaryFormat::parse(&a.ty).ok_or_else(|| anyhow!("unknown --type {}", a.ty))?;
    let dense = DenseFormat::parse(&a.embed)
        .ok_or_else(|| anyhow!("unknown --embed {} (f16, bf16, f32, q8_0, q6_k)", a.embed))?;
    bitnet_gguf::check_output_path(&a.output)?;
    let weights = fixture::random_weights(&config, a.seed)?;
    let vocab = fixture::synthetic_vocab(config.vocab_size);
    let opts = ExportOptions {
        ternary,
        dense,
        name: format!("random-{}", a.shape),
    };
    write_gguf(&weights, &vocab, &opts, &a.output).map_err(crate::output_error)?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
