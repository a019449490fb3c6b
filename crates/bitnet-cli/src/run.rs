use crate::args::{resolve, ModelArgs, SamplingArgs};
use anyhow::{Context, Result};
use bitnet_inference::{
    Event, GenerateOptions, KvCache, Request, Scheduler, SchedulerOptions, Timings,
};
use bitnet_tokenizers::{ChatMessage, TokenizerError};
use clap::Args;
use std::io::{Read, Write};
use std::path::Path;

/// The prompt when neither -p nor -f gives one.
const DEFAULT_PROMPT: &str = "In the beginning";

/// The spellings of the conversation switch that `main` drops when it hands a `run` command
/// line to `chat` (`-cnv` is rewritten to `--conversation` before parsing).
pub const CONVERSATION_FLAGS: &[&str] = &["--conversation", "--interactive", "-i"];

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The prompt (or use --file) [default: "In the beginning"]
    #[arg(short, long)]
    prompt: Option<String>,
    /// Read the prompt from a file instead
    #[arg(short, long, conflicts_with = "prompt")]
    file: Option<std::path::PathBuf>,
    /// Wrap the prompt as a user message in the model's chat template
    #[arg(long)]
    chat_template: bool,
    /// With --chat-template: a system message before the prompt (llama.cpp's -sys)
    #[arg(long = "system-prompt", value_name = "TEXT")]
    system_prompt: Option<String>,
    /// Chat instead: run as `bitnet chat` with the same flags (llama.cpp's -cnv and -i)
    #[arg(short = 'i', long = "conversation", visible_alias = "interactive")]
    conversation: bool,
    /// Greedy decoding (same as --temp 0)
    #[arg(long, conflicts_with = "temperature")]
    greedy: bool,
    /// Stop before this string (repeatable; llama.cpp's -r/--reverse-prompt)
    #[arg(short = 'r', long = "stop", visible_alias = "reverse-prompt")]
    stop: Vec<String>,
    /// Do not prepend the BOS token (a chat template writes its own)
    #[arg(long, conflicts_with = "chat_template")]
    no_bos: bool,
    /// Keep generating past end-of-sequence tokens
    #[arg(long)]
    ignore_eos: bool,
    /// Do not echo the prompt before the generated text
    #[arg(long)]
    no_echo: bool,
    /// No load/timing report on stderr
    #[arg(short, long)]
    quiet: bool,
}

impl RunArgs {
    pub fn conversation(&self) -> bool {
        self.conversation
    }

    /// A conversation takes its turns from the terminal: a prompt given up front would be
    /// dropped, so it is refused.
    pub fn check_conversation(&self) -> Result<()> {
        if self.prompt.is_some() || self.file.is_some() {
            return Err(crate::validate::usage(
                "-cnv/-i runs an interactive chat: type the first message at its prompt instead \
                 of -p/-f (use -sys for a system prompt)",
            ));
        }
        Ok(())
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    if a.system_prompt.is_some() && !a.chat_template {
        return Err(crate::validate::usage(
            "--system-prompt (-sys) needs --chat-template (or -cnv for a chat)",
        ));
    }
    let mut s = resolve(&a.model, Some(&a.sampling))?;
    if a.greedy {
        s.sampling.temperature = Some(0.0);
    }
    let engine = crate::load_engine(&s, a.quiet)?;
    let tok = engine.tokenizer();
    // The same request/event path as `bitnet serve`, with one sequence.
    let ctx = s
        .ctx_size
        .unwrap_or(engine.config().max_position_embeddings);
    crate::warn_long_context(&engine, ctx);
    if a.chat_template {
        if let Some(e) = tok.chat_template_error() {
            return Err(TokenizerError::InvalidTemplate(e.to_string()).into());
        }
    }
    // No more text than can fit the context is read or tokenized.
    let mut prompt = match &a.file {
        Some(f) => read_prompt(f, tok.max_input_bytes(ctx), ctx)?,
        None => a.prompt.clone().unwrap_or_else(|| DEFAULT_PROMPT.into()),
    };
    let ids = if a.chat_template {
        let mut messages = Vec::new();
        if let Some(sys) = &a.system_prompt {
            messages.push(ChatMessage {
                role: "system".into(),
                content: sys.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: prompt,
        });
        let rendered = tok.apply_chat_template_within(&messages, true, ctx)?;
        // The rendered template already carries BOS.
        let ids = tok.encode_within(&rendered, false, ctx)?;
        // Echoed as llama.cpp's llama-cli echoes it: the prompt's tokens without the special
        // ones (<|begin_of_text|>, headers' markers), which are control, not text.
        prompt = tok.decode(&ids, true)?;
        ids
    } else {
        tok.encode_within(&prompt, !a.no_bos && tok.add_bos_default(), ctx)?
    };
    let sched = Scheduler::start(
        engine.clone(),
        SchedulerOptions {
            max_sequences: 1,
            ctx_size: Some(ctx),
            kv_tokens: Some(ctx),
            max_batch_tokens: s.batch_size_or_default().max(1),
            max_queue: 1,
            prefix_cache: false,
        },
    )?;
    if !a.quiet {
        let c = engine.config();
        let kv = KvCache::nbytes_for(c.num_layers, c.kv_dim(), ctx, engine.kv_type());
        eprintln!(
            "context {ctx} tokens, KV cache {:.1} MiB",
            kv as f64 / (1 << 20) as f64
        );
    }
    let opts = GenerateOptions {
        max_tokens: s.max_tokens_or(bitnet_inference::settings::DEFAULT_MAX_TOKENS),
        sampling: s.sampling_params(),
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    // Check before echoing, so a prompt that cannot run prints nothing on stdout.
    if ids.len() > ctx {
        return Err(bitnet_inference::EngineError::PromptTooLong {
            prompt: ids.len(),
            ctx,
        }
        .into());
    }
    let mut handle = sched.submit(Request::new(ids, opts))?;
    let mut out = std::io::stdout().lock();
    if !a.no_echo {
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    let (usage, finish) = loop {
        match handle.next_blocking() {
            Some(Event::Token { text, .. }) => {
                write!(out, "{text}")?;
                out.flush()?;
            }
            Some(Event::Done {
                text,
                finish,
                usage,
            }) => {
                write!(out, "{text}")?;
                break (usage, finish);
            }
            Some(Event::Error(e)) => anyhow::bail!("generation failed: {e}"),
            None => anyhow::bail!("generation ended without a result"),
        }
    };
    writeln!(out)?;
    if !a.quiet {
        // The first token comes with the prompt; generation speed counts the ones after it.
        let t = Timings {
            prompt_tokens: usage.prompt_tokens,
            prompt_time: usage.time_to_first_token,
            generated_tokens: usage.completion_tokens.saturating_sub(1),
            generation_time: usage.total_time.saturating_sub(usage.time_to_first_token),
        };
        eprintln!(
            "prompt: {} tokens in {:.3}s ({:.2} tokens/s) | generation: {} tokens in {:.3}s ({:.2} tokens/s) | finish: {:?}",
            t.prompt_tokens,
            t.prompt_time.as_secs_f64(),
            t.prompt_tps(),
            usage.completion_tokens,
            t.generation_time.as_secs_f64(),
            t.generation_tps(),
            finish
        );
    }
    Ok(())
}

/// Reads a prompt file, refusing one of more than `limit` bytes (what `ctx` tokens can hold)
/// without reading past the limit: a huge file or `/dev/zero` costs no more than a fitting one.
fn read_prompt(path: &Path, limit: usize, ctx: usize) -> Result<String> {
    // A FIFO would block the open forever; a device never ends (`take` bounds it, but refusing
    // says what is wrong).
    let file =
        bitnet_common::open_regular(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > limit {
        return Err(TokenizerError::InputTooLarge(format!(
            "{} holds more than {limit} bytes, more text than {ctx} tokens can hold",
            path.display()
        ))
        .into());
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}
