//! `bitnet`: the command-line front end. Each subcommand is a thin shell over the library API.

mod args;
mod bench;
mod chat;
mod convert;
mod fixture;
mod inspect;
mod membw;
mod perplexity;
mod run;
mod serve;
mod tokenize;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "bitnet", version, about = "Run BitNet b1.58 (ternary) language models on the CPU", long_about = None)]
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
}

/// Exit codes: 1 generic failure, 2 bad usage (clap), 3 unreadable or invalid model file
/// (its chat template included), 4 input that does not fit (prompt longer than the context,
/// bad token ids).
fn exit_code(e: &anyhow::Error) -> u8 {
    use bitnet_inference::EngineError;
    for cause in e.chain() {
        if let Some(ee) = cause.downcast_ref::<EngineError>() {
            return match ee {
                EngineError::Model(_) => 3,
                EngineError::Tokenizer(t) => tokenizer_exit_code(t),
                EngineError::PromptTooLong { .. }
                | EngineError::BadToken { .. }
                | EngineError::EmptyPrompt => 4,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Fixture(a) => fixture::run(a),
        Command::Serve(a) => serve::run(a),
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

/// Loads the engine the settings name, reporting what was loaded on stderr.
pub(crate) fn load_engine(
    s: &bitnet_inference::Settings,
    quiet: bool,
) -> anyhow::Result<bitnet_inference::Engine> {
    use anyhow::Context;
    let path = s
        .model
        .clone()
        .unwrap_or_else(|| args::DEFAULT_MODEL.into());
    let opts = bitnet_inference::EngineOptions {
        threads: s.threads,
        tokenizer: s.tokenizer.clone(),
        batch_size: s.batch_size.unwrap_or(512),
        kv_type: s.kv_type.unwrap_or_default(),
        mmap: s.mmap.unwrap_or(false),
    };
    let t = std::time::Instant::now();
    let engine = bitnet_inference::Engine::load(&path, &opts)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("loading {}", path.display()))?;
    if let Some(e) = engine.tokenizer().chat_template_error() {
        // Not fatal: only chat needs the template. Said now rather than at the first chat.
        eprintln!("warning: the model's chat template is unusable, chat will fail: {e}");
    }
    if !quiet {
        let m = engine.model();
        let c = engine.config();
        eprintln!(
            "loaded {} ({} arch, {} layers, hidden {}, vocab {}) in {:.2}s: weights {:.1} MiB, {} threads, kernels {:?}",
            path.display(),
            c.arch.gguf_name(),
            c.num_layers,
            c.hidden_size,
            c.vocab_size,
            t.elapsed().as_secs_f64(),
            m.weights.nbytes() as f64 / (1 << 20) as f64,
            engine.threads(),
            bitnet_kernels::detected_isa(),
        );
    }
    Ok(engine)
}

pub(crate) fn open_session(
    engine: &bitnet_inference::Engine,
    s: &bitnet_inference::Settings,
    quiet: bool,
) -> anyhow::Result<bitnet_inference::Session> {
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
