use crate::args::{resolve_source, ModelSourceArgs};
use anyhow::{Context, Result};
use bitnet_tokenizers::TokenizerError;
use clap::Args;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

/// The most text tokenize reads: tokenizing costs about 120 bytes of memory per byte of text,
/// so this bounds it near 2 GiB whatever is piped in.
const MAX_TEXT_BYTES: usize = 16 << 20;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    model: ModelSourceArgs,
    /// Text to tokenize; `-` reads stdin, as does no text with stdin piped
    text: Option<String>,
    /// The text, as llama-tokenize's -p
    #[arg(short, long = "prompt", conflicts_with = "text")]
    prompt: Option<String>,
    /// Read the text from a file (`-` for stdin)
    #[arg(short, long, conflicts_with_all = ["text", "prompt"])]
    file: Option<PathBuf>,
    /// Read the text from stdin (llama-tokenize's --stdin)
    #[arg(long, conflicts_with_all = ["text", "prompt", "file"])]
    stdin: bool,
    /// Do not prepend the BOS token
    #[arg(long)]
    no_bos: bool,
    /// Print only the ids, as a JSON array
    #[arg(long)]
    ids: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    // The text before the model: a missing file or an empty pipe costs no load.
    let text = text_of(&a)?;
    let s = resolve_source(&a.model)?;
    // Only the tokenizer is needed, but loading the model validates the file as a whole.
    let model = crate::load_model(&s, bitnet_models::Placement::Mapped)?;
    let tok = &model.tokenizer;
    let ids = tok.encode(&text, !a.no_bos && tok.add_bos_default())?;
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

fn text_of(a: &TokenizeArgs) -> Result<String> {
    let stdin_named =
        a.stdin || a.text.as_deref() == Some("-") || a.file.as_deref() == Some(Path::new("-"));
    if let Some(t) = a.text.as_ref().filter(|t| *t != "-").or(a.prompt.as_ref()) {
        return Ok(t.clone());
    }
    if let Some(f) = a.file.as_ref().filter(|f| f.as_os_str() != "-") {
        let file = std::fs::File::open(f).with_context(|| format!("reading {}", f.display()))?;
        return read_text(file, &f.display().to_string());
    }
    let stdin = std::io::stdin();
    if !stdin_named && stdin.is_terminal() {
        return Err(crate::validate::usage(
            "no text to tokenize: give it as an argument, with -f FILE, or on stdin (-)",
        ));
    }
    let text = read_text(stdin.lock(), "stdin")?;
    // Nothing piped and nothing asked for: a forgotten argument, not an empty text.
    if text.is_empty() && !stdin_named {
        return Err(crate::validate::usage(
            "no text to tokenize: give it as an argument, with -f FILE, or on stdin (-)",
        ));
    }
    Ok(text)
}

/// At most [`MAX_TEXT_BYTES`] of UTF-8 text from `r`; more is refused (exit code 4) without
/// reading past the limit.
fn read_text(r: impl Read, what: &str) -> Result<String> {
    let mut bytes = Vec::new();
    r.take(MAX_TEXT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {what}"))?;
    if bytes.len() > MAX_TEXT_BYTES {
        return Err(TokenizerError::InputTooLarge(format!(
            "{what} holds more than {MAX_TEXT_BYTES} bytes, the most tokenize reads"
        ))
        .into());
    }
    String::from_utf8(bytes).with_context(|| format!("{what} is not UTF-8 text"))
}
