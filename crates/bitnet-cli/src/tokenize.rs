use crate::args::{resolve, ModelArgs};
use anyhow::Result;
use clap::Args;
use std::io::Write;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to tokenize
    text: String,
    /// Do not prepend the BOS token
    #[arg(long)]
    no_bos: bool,
    /// Print only the ids, as a JSON array
    #[arg(long)]
    ids: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let s = resolve(&a.model, None)?;
    // Only the tokenizer is needed, but loading the model validates the file as a whole.
    let model = crate::load_model(&s, bitnet_models::Placement::Mapped)?;
    let tok = &model.tokenizer;
    let ids = tok.encode(&a.text, !a.no_bos && tok.add_bos_default())?;
    let out = &mut std::io::stdout().lock();
    if a.ids {
        writeln!(out, "{}", serde_json::to_string(&ids)?)?;
        return Ok(());
    }
    for id in ids {
        let piece = tok.decode(&[id], false)?;
        writeln!(out, "{id:>8} -> {:?}", piece)?;
    }
    Ok(())
}
