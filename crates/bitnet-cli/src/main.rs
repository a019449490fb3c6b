//! `bitnet`: the command-line front end. Each subcommand is a thin shell over the library API.

mod args;
mod bench;
mod builtin_model;
mod chat;
mod convert;
mod fixture;
mod hub;
mod inspect;
mod membw;
mod perplexity;
mod progress;
mod run;
mod serve;
mod sigbus;
mod tokenize;
mod validate;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "bitnet", version, about = "Run BitNet b1.58 (ternary) language models on the CPU or an NVIDIA GPU", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt; text streams to stdout, timings go to stderr
    Run(run::RunArgs),
    /// Interactive chat using the model's chat template, keeping the history
    Chat(chat::ChatArgs),
    /// Show the metadata and tensor table of a GGUF file or Hugging Face folder
    Inspect(inspect::InspectArgs),
    /// Print the token ids (and pieces) of a text
    Tokenize(tokenize::TokenizeArgs),
    /// Convert a model (GGUF or HF folder) to GGUF with I2_S, TQ2_0, TQ1_0, F16 or F32 ternary weights
    Convert(convert::ConvertArgs),
    /// Measure prompt processing and generation speed (llama-bench style: pp512, tg128)
    Bench(bench::BenchArgs),
    /// Perplexity of a text file
    Perplexity(perplexity::PerplexityArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat and text completions, streaming, metrics)
    Serve(serve::ServeArgs),
    /// Write a random-weight model with real shapes (e.g. 2B4T) as GGUF, for benchmarks
    Fixture(fixture::FixtureArgs),
    /// Download a model from the Hugging Face Hub into its cache; prints the local path
    #[command(visible_alias = "download")]
    Pull(hub::PullArgs),
    /// Models in the Hugging Face cache, with their sizes
    List(hub::ListArgs),
    /// Remove a model from the Hugging Face cache
    Rm(hub::RmArgs),
}

/// Exit codes: 1 generic failure, 2 bad usage (clap, and setting values `validate` refuses),
/// 3 unreadable or invalid model file
/// (its chat template included), 4 input that does not fit (prompt longer than the
/// context, bad token ids, a text with nothing to score); from the Hub
/// (`bitnet_hub::HubError::exit_code`): 5 not found (or not cached while HF_HUB_OFFLINE is set),
/// 6 unauthorized, 7 rate limited, 8 checksum mismatch, 9 disk full. A SIGBUS from a truncated
/// mapping exits 3 from its handler (`sigbus`).
fn exit_code(e: &anyhow::Error) -> u8 {
    use bitnet_inference::EngineError;
    for cause in e.chain() {
        if cause.downcast_ref::<validate::UsageError>().is_some() {
            return 2;
        }
        if let Some(he) = cause.downcast_ref::<bitnet_hub::HubError>() {
            return he.exit_code();
        }
        if let Some(ee) = cause.downcast_ref::<EngineError>() {
            return match ee {
                EngineError::Model(_) => 3,
                EngineError::Tokenizer(t) => tokenizer_exit_code(t),
                EngineError::PromptTooLong { .. }
                | EngineError::BadToken { .. }
                | EngineError::EmptyPrompt
                | EngineError::BadInput(_) => 4,
                _ => 1,
            };
        }
        if let Some(se) = cause.downcast_ref::<bitnet_inference::SubmitError>() {
            use bitnet_inference::SubmitError;
            return match se {
                SubmitError::PromptTooLong { .. }
                | SubmitError::BadToken { .. }
                | SubmitError::EmptyPrompt => 4,
                _ => 1,
            };
        }
        if let Some(t) = cause.downcast_ref::<bitnet_tokenizers::TokenizerError>() {
            return tokenizer_exit_code(t);
        }
        if cause.downcast_ref::<bitnet_models::ModelError>().is_some()
            || cause.downcast_ref::<bitnet_gguf::GgufError>().is_some()
        {
            return 3;
        }
    }
    1
}

fn tokenizer_exit_code(e: &bitnet_tokenizers::TokenizerError) -> u8 {
    use bitnet_tokenizers::TokenizerError;
    match e {
        TokenizerError::InputTooLarge(_) => 4,
        TokenizerError::InvalidTemplate(_) => 3,
        _ => 1,
    }
}

/// llama.cpp's multi-letter single-dash flags that mean the same here, with their long forms.
/// clap's short flags are one letter (it would read `-sys` as `-s ys`), so these are rewritten
/// before it parses. `-fa` (flash attention) is not among them: there is no such switch here.
const LLAMA_SPELLINGS: &[(&str, &str)] = &[
    ("-sys", "--system-prompt"),
    ("-cnv", "--conversation"),
    ("-ngl", "--n-gpu-layers"),
];

/// `argv` with [`LLAMA_SPELLINGS`] replaced (also as `-ngl=N`), up to a `--` that ends the flags.
fn llama_spellings(argv: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut flags_done = false;
    argv.into_iter()
        .map(|arg| {
            if flags_done {
                return arg;
            }
            if arg == "--" {
                flags_done = true;
                return arg;
            }
            let Some(text) = arg.to_str() else {
                return arg;
            };
            for (short, long) in LLAMA_SPELLINGS {
                if text == *short {
                    return OsString::from(*long);
                }
                if let Some(value) = text.strip_prefix(short).and_then(|r| r.strip_prefix('=')) {
                    return OsString::from(format!("{long}={value}"));
                }
            }
            arg
        })
        .collect()
}

/// `bitnet run -cnv ...` (or `-i`) as the `bitnet chat ...` it means: the subcommand renamed
/// and the conversation switch dropped; chat's own parser then checks the rest.
fn run_as_chat(argv: &[OsString]) -> anyhow::Result<chat::ChatArgs> {
    let mut chat_argv = Vec::with_capacity(argv.len());
    let mut renamed = false;
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 && !renamed && arg == "run" {
            chat_argv.push(OsString::from("chat"));
            renamed = true;
        } else if !(renamed && run::CONVERSATION_FLAGS.iter().any(|f| arg == f)) {
            chat_argv.push(arg.clone());
        }
    }
    match Cli::try_parse_from(chat_argv) {
        Ok(Cli {
            command: Command::Chat(c),
        }) => Ok(c),
        Ok(_) => anyhow::bail!("-cnv/-i: could not run this command line as `bitnet chat`"),
        Err(e) => {
            eprintln!("with -cnv/-i, `bitnet run` runs as `bitnet chat`, which takes these flags:");
            e.exit()
        }
    }
}

fn main() -> ExitCode {
    sigbus::install();
    let argv = llama_spellings(std::env::args_os());
    let cli = Cli::parse_from(&argv);
    let result = match cli.command {
        Command::Run(a) if a.conversation() => a
            .check_conversation()
            .and_then(|()| run_as_chat(&argv))
            .and_then(chat::run),
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Fixture(a) => fixture::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Pull(a) => hub::pull(a),
        Command::List(a) => hub::list(a),
        Command::Rm(a) => hub::rm(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `bitnet inspect x | head` closing the pipe early is not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// An error writing an output file. Exit code 3 is for bad model files, so an I/O error here
/// (a full disk, a refused path) is passed on as a plain failure; a tensor that cannot be
/// stored (a value that overflows the output type) stays a model error.
pub(crate) fn output_error(e: bitnet_models::ModelError) -> anyhow::Error {
    match e {
        bitnet_models::ModelError::Gguf(bitnet_gguf::GgufError::Io(io)) => io.into(),
        other => other.into(),
    }
}

/// Loads the engine the settings name, reporting what was loaded on stderr.
pub(crate) fn load_engine(
    s: &bitnet_inference::Settings,
    quiet: bool,
) -> anyhow::Result<bitnet_inference::Engine> {
    let opts = bitnet_inference::EngineOptions {
        device: s.device.unwrap_or_default(),
        threads: s.threads,
        tokenizer: s.tokenizer.clone(),
        batch_size: s.batch_size_or_default(),
        kv_type: s.kv_type.unwrap_or_default(),
        mmap: s.mmap.unwrap_or(false),
    };
    let t = std::time::Instant::now();
    let model = load_model_reporting(s, opts.placement(), quiet)?;
    let engine = bitnet_inference::Engine::from_model(model, &opts)?;
    if let Some(e) = engine.tokenizer().chat_template_error() {
        // Not fatal: only chat needs the template. Said now rather than at the first chat.
        eprintln!("warning: the model's chat template is unusable, chat will fail: {e}");
    }
    if !quiet {
        let m = engine.model();
        let c = engine.config();
        eprintln!(
            "loaded {} ({} arch, {} layers, hidden {}, vocab {}) in {:.2}s: weights {:.1} MiB, on {}",
            model_name(s),
            c.arch.gguf_name(),
            c.num_layers,
            c.hidden_size,
            c.vocab_size,
            t.elapsed().as_secs_f64(),
            m.weights.nbytes() as f64 / (1 << 20) as f64,
            engine.backend().describe(),
        );
    }
    Ok(engine)
}

/// The model the settings name, or the built-in one when they name none.
pub(crate) fn load_model(
    s: &bitnet_inference::Settings,
    placement: bitnet_models::Placement,
) -> anyhow::Result<bitnet_models::LoadedModel> {
    load_model_reporting(s, placement, false)
}

/// [`load_model`] with a progress bar (tensors loaded) unless `quiet` or stderr is not a
/// terminal.
pub(crate) fn load_model_reporting(
    s: &bitnet_inference::Settings,
    placement: bitnet_models::Placement,
    quiet: bool,
) -> anyhow::Result<bitnet_models::LoadedModel> {
    use anyhow::Context;
    match &s.model {
        Some(path) => {
            let bar = progress::bar("loading", progress::Unit::Items("tensors"), quiet);
            let model = bitnet_models::load_with_progress(
                path,
                s.tokenizer.as_deref(),
                placement,
                &mut progress::reporter(&bar),
            )
            .with_context(|| format!("loading {}", path.display()));
            bar.finish_and_clear();
            model
        }
        None => builtin_model::load(s.tokenizer.as_deref(), placement),
    }
}

pub(crate) fn model_name(s: &bitnet_inference::Settings) -> String {
    s.model
        .as_ref()
        .map_or(builtin_model::NAME.into(), |p| p.display().to_string())
}

/// A context above the one the model was trained on is allowed when asked for (`-c`), but
/// positions past it were never seen in training and quality falls off: say so.
pub(crate) fn warn_long_context(engine: &bitnet_inference::Engine, ctx: usize) {
    let trained = engine.config().max_position_embeddings;
    if ctx > trained {
        eprintln!(
            "warning: context {ctx} is above the {trained} positions the model was trained on; output past position {trained} is unreliable"
        );
    }
}

pub(crate) fn open_session(
    engine: &bitnet_inference::Engine,
    s: &bitnet_inference::Settings,
    quiet: bool,
) -> anyhow::Result<bitnet_inference::Session> {
    if let Some(c) = s.ctx_size {
        warn_long_context(engine, c);
    }
    let session = engine.session(s.ctx_size)?;
    if !quiet {
        eprintln!(
            "context {} tokens, KV cache {:.1} MiB",
            session.ctx_size(),
            session.kv_cache_bytes() as f64 / (1 << 20) as f64
        );
    }
    Ok(session)
}
