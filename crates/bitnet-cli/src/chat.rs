//! `bitnet chat`: a conversation with the model's chat template, as `llama-cli -cnv` or
//! `ollama run` would hold it. On a terminal: line editing and history, colours, Ctrl-C to
//! stop an answer; from a pipe: plain lines, nothing but text on stdout.

mod conversation;
mod input;
mod interrupt;

use crate::args::{resolve, ModelArgs, SamplingArgs};
use anyhow::Result;
use bitnet_inference::GenerateOptions;
use clap::Args;
use conversation::{Conversation, FitError};
use input::{Command, Multiline, Read, Reader};
use std::io::{IsTerminal, Write};
use std::path::Path;

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
    /// Keep the line history in memory only (by default, on a terminal, it is also kept in
    /// $XDG_STATE_HOME/bitnet/chat_history, else ~/.local/state/bitnet/chat_history)
    #[arg(long)]
    no_history: bool,
    /// llama-cli's -cnv / -i, taken and ignored: `chat` is always a conversation, and people
    /// type the flags they are used to
    #[arg(
        short = 'i',
        long = "conversation",
        visible_alias = "interactive",
        hide = true
    )]
    _conversation: bool,
}

const PROMPT: &str = "> ";
const MORE: &str = "... ";
const PROMPT_STYLED: &str = "\x1b[1;32m> \x1b[0m";
const MORE_STYLED: &str = "\x1b[2m... \x1b[0m";
const ANSWER: &str = "\x1b[36m";
pub(crate) const RESET: &str = "\x1b[0m";

/// Reads user messages (see `/help`), renders the conversation with the chat template and
/// lets the session reuse the KV cache of the unchanged prefix. When a turn does not fit,
/// the oldest turns leave the context (the system message stays).
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
    // Room kept for an answer when older turns must go; capped so that a huge -n still
    // leaves half the context to the conversation.
    let reserve = opts.max_tokens.min(ctx / 2);
    // https://no-color.org: set and not empty means no colour.
    let colour = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let interrupt = interrupt::Interrupt::install(colour)?;
    let mut reader = Reader::new(!a.no_history);
    if reader.is_terminal() && !a.quiet {
        eprintln!("/help lists the commands; Ctrl-C stops an answer, Ctrl-D or /exit leaves");
    }
    let mut conv = Conversation::new(a.system.clone());
    let mut multi = Multiline::default();
    let mut out = std::io::stdout();
    loop {
        let (plain, styled) = match (multi.pending(), colour) {
            (false, false) => (PROMPT, PROMPT),
            (false, true) => (PROMPT, PROMPT_STYLED),
            (true, false) => (MORE, MORE),
            (true, true) => (MORE, MORE_STYLED),
        };
        let line = match reader.read(plain, styled)? {
            Read::Line(l) => l,
            Read::Skipped => continue,
            Read::Interrupted if multi.pending() => {
                multi.clear();
                eprintln!("[message discarded]");
                continue;
            }
            Read::Interrupted | Read::Eof => {
                if reader.is_terminal() {
                    writeln!(out)?;
                }
                break;
            }
        };
        if !multi.pending() {
            if let Some(cmd) = input::command(&line) {
                reader.remember(&line);
                match cmd {
                    Command::Help => writeln!(out, "{}", input::HELP)?,
                    Command::Reset => {
                        conv.reset();
                        session.reset();
                        eprintln!("[conversation cleared]");
                    }
                    Command::Save("") => eprintln!("usage: /save FILE"),
                    Command::Save(f) => match save(Path::new(f), &conv) {
                        Ok(n) => {
                            let s = if n == 1 { "" } else { "s" };
                            eprintln!("[saved {n} message{s} to {f}]")
                        }
                        Err(e) => eprintln!("error: {e}"),
                    },
                    Command::Exit => break,
                    Command::Unknown(name) => eprintln!(
                        "unknown command /{name}; /help lists the commands (//text sends a message starting with /)"
                    ),
                }
                continue;
            }
        }
        let Some(text) = multi.push(&line) else {
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        reader.remember(&text);
        conv.push("user", input::message(text));
        let fitted = conv.fit(ctx, reserve, |m| tok.encode_chat_within(m, true, ctx));
        let ids = match fitted {
            Ok((ids, dropped)) => {
                if dropped > 0 {
                    let s = if dropped == 1 { "" } else { "s" };
                    eprintln!("[context full: dropped {dropped} oldest turn{s}]");
                }
                ids
            }
            Err(
                e @ (FitError::TooLong { .. }
                | FitError::Tokenizer(bitnet_tokenizers::TokenizerError::InputTooLarge(_))),
            ) => {
                eprintln!("{e}; message not sent");
                conv.pop();
                continue;
            }
            Err(FitError::Tokenizer(e)) => return Err(e.into()),
        };
        // What was shown is what stays in the conversation, a stopped answer included.
        let mut shown = String::new();
        if colour {
            write!(out, "{ANSWER}")?;
        }
        interrupt.start();
        let g = session.generate(&ids, &opts, |t| {
            if interrupt.stopped() {
                return false;
            }
            shown.push_str(t);
            write!(out, "{t}").and_then(|_| out.flush()).is_ok()
        });
        interrupt.finish();
        if colour {
            write!(out, "{RESET}")?;
        }
        writeln!(out)?;
        let g = g?;
        if !a.quiet {
            eprintln!(
                "[{} tokens, {:.2} tokens/s, {:?}]",
                g.tokens.len(),
                g.timings.generation_tps(),
                g.finish
            );
        }
        conv.push("assistant", shown.trim().to_string());
    }
    Ok(())
}

/// Writes the conversation since the last `/reset` (turns dropped from the context
/// included) as JSON messages, through the same safe writer as model outputs.
fn save(path: &Path, conv: &Conversation) -> std::io::Result<usize> {
    let messages = conv.transcript();
    bitnet_gguf::write_atomically(path, |f| {
        serde_json::to_writer_pretty(&mut *f, &messages)?;
        f.write_all(b"\n")
    })?;
    Ok(messages.len())
}
