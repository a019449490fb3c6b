use crate::args::{resolve, ModelArgs, SamplingArgs};
use anyhow::Result;
use bitnet_inference::GenerateOptions;
use bitnet_tokenizers::ChatMessage;
use clap::Args;
use std::io::{BufRead, Write};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message to start the conversation with (llama.cpp's -sys)
    #[arg(long, visible_alias = "system-prompt")]
    system: Option<String>,
    /// End an answer before this string and give the turn back (repeatable; llama.cpp's -r)
    #[arg(short = 'r', long = "reverse-prompt", visible_alias = "stop")]
    reverse_prompt: Vec<String>,
    /// No timing report on stderr
    #[arg(short, long)]
    quiet: bool,
}

/// Reads user turns from stdin (one line each; `/reset` clears the history, `/exit` or EOF
/// quits), renders the whole history with the chat template and lets the session reuse the
/// KV cache of the unchanged prefix.
pub fn run(a: ChatArgs) -> Result<()> {
    let s = resolve(&a.model, Some(&a.sampling))?;
    let engine = crate::load_engine(&s, a.quiet)?;
    let tok = engine.tokenizer();
    if tok.chat_template().is_none() {
        anyhow::bail!("the model has no chat template; use `bitnet run` instead");
    }
    if let Some(e) = tok.chat_template_error() {
        return Err(bitnet_tokenizers::TokenizerError::InvalidTemplate(e.to_string()).into());
    }
    let mut session = crate::open_session(&engine, &s, a.quiet)?;
    let ctx = session.ctx_size();
    let opts = GenerateOptions {
        max_tokens: s.max_tokens_or(bitnet_inference::settings::DEFAULT_CHAT_MAX_TOKENS),
        sampling: s.sampling_params(),
        stop: a.reverse_prompt.clone(),
        ..Default::default()
    };
    let mut history: Vec<ChatMessage> = Vec::new();
    let reset = |h: &mut Vec<ChatMessage>| {
        h.clear();
        if let Some(sys) = &a.system {
            h.push(ChatMessage {
                role: "system".into(),
                content: sys.clone(),
            });
        }
    };
    reset(&mut history);
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut raw = Vec::new();
        if stdin.lock().read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        let line = match std::str::from_utf8(&raw) {
            Ok(l) => l.trim_end_matches(['\n', '\r']),
            Err(e) => {
                // Say where the bad bytes came from and keep the conversation going.
                eprintln!(
                    "stdin: this line is not valid UTF-8 (invalid byte at offset {}); line ignored",
                    e.valid_up_to()
                );
                continue;
            }
        };
        match line {
            "/exit" | "/quit" => break,
            "/reset" => {
                reset(&mut history);
                session.reset();
                continue;
            }
            "" => continue,
            _ => {}
        }
        history.push(ChatMessage {
            role: "user".into(),
            content: line.to_string(),
        });
        // A turn that cannot fit is refused before it is tokenized, like one that does not.
        let ids = match tok.encode_chat_within(&history, true, ctx) {
            Ok(ids) => ids,
            Err(e @ bitnet_tokenizers::TokenizerError::InputTooLarge(_)) => {
                eprintln!("{e}; type /reset to start over");
                history.pop();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let g = match session.generate(&ids, &opts, |t| {
            write!(out, "{t}").and_then(|_| out.flush()).is_ok()
        }) {
            Ok(g) => g,
            Err(e @ bitnet_inference::EngineError::PromptTooLong { .. }) => {
                eprintln!("\n{e}; type /reset to start over");
                history.pop();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        writeln!(out)?;
        if !a.quiet {
            eprintln!(
                "[{} tokens, {:.2} tokens/s, {:?}]",
                g.tokens.len(),
                g.timings.generation_tps(),
                g.finish
            );
        }
        history.push(ChatMessage {
            role: "assistant".into(),
            content: g.text.trim().to_string(),
        });
    }
    Ok(())
}
