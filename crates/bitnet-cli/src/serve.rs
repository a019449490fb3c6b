//! `bitnet serve`: the OpenAI-compatible server (crate `bitnet-server`) over a continuous-
//! batching scheduler, configured from the same settings as `run`.

use crate::args::{resolve, ModelArgs};
use anyhow::{Context, Result};
use bitnet_inference::{Scheduler, SchedulerOptions};
use bitnet_server::ServerConfig;
use clap::Args;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (all interfaces: 0.0.0.0)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stderr)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* and /metrics
    #[arg(long, env = "BITNET_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Sequences decoded together (the -c context is per sequence)
    #[arg(long = "parallel", visible_alias = "np", default_value_t = 16)]
    parallel: usize,
    /// KV cache positions shared by all sequences [default: parallel x ctx-size, at most 64Ki]
    #[arg(long = "kv-tokens")]
    kv_tokens: Option<usize>,
    /// Requests that may wait for a sequence; more get 503 with Retry-After
    #[arg(long = "max-queue", default_value_t = 256)]
    max_queue: usize,
    /// Do not reuse the KV cache of shared prompt prefixes
    #[arg(long = "no-prefix-cache")]
    no_prefix_cache: bool,
    /// Model name in /v1/models and the `model` field [default: the model file's stem]
    #[arg(long = "model-alias")]
    model_alias: Option<String>,
    /// Largest request body in bytes (413 above)
    #[arg(long = "max-body-bytes", default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds a client may take to send a request's headers, then its body, and to take more
    /// of a response it has stopped reading (its connection is closed then)
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Seconds in-flight requests may run after SIGTERM/SIGINT before they are cancelled
    #[arg(long = "shutdown-timeout", default_value_t = 30)]
    shutdown_timeout: u64,
    /// Connections served at once; more wait in the listen backlog until one closes
    #[arg(long = "max-connections", default_value_t = 1024)]
    max_connections: usize,
    /// A web origin whose pages may call the API from a browser (CORS), e.g.
    /// https://chat.example; `*` for any; repeat for several [default: none]
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origin: Vec<String>,
    /// No load report on stderr
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let s = resolve(&a.model, None)?;
    // The server reports accept failures, shutdown progress and the like through `tracing`.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if a.quiet {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        })
        .try_init();
    crate::validate::positive("--parallel", a.parallel)?;
    crate::validate::positive("--max-queue", a.max_queue)?;
    crate::validate::positive("--max-connections", a.max_connections)?;
    bitnet_server::check_cors_origins(&a.cors_origin)
        .map_err(|e| crate::validate::usage(format!("--cors-origin: {e}")))?;
    let engine = crate::load_engine(&s, a.quiet)?;
    if let Some(c) = s.ctx_size {
        crate::warn_long_context(&engine, c);
    }
    let alias = a
        .model_alias
        .clone()
        .unwrap_or_else(|| match s.model.as_deref() {
            // A checkpoint pulled from the Hub sits in snapshots/<commit>: name it by repository.
            Some(p) => crate::hub::repo_of_snapshot(p)
                .or_else(|| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "bitnet".into()),
            None => crate::builtin_model::ALIAS.into(),
        });
    let scheduler = Scheduler::start(
        engine,
        SchedulerOptions {
            max_sequences: a.parallel,
            ctx_size: s.ctx_size,
            kv_tokens: a.kv_tokens,
            max_batch_tokens: s.batch_size_or_default(),
            max_queue: a.max_queue,
            prefix_cache: !a.no_prefix_cache,
        },
    )?;
    let stats = scheduler.stats();
    if !a.quiet {
        eprintln!(
            "{} sequences of up to {} tokens, KV cache {} blocks of {} positions, queue {}",
            a.parallel,
            scheduler.ctx_size(),
            stats.kv_blocks_total,
            stats.kv_block_tokens,
            a.max_queue
        );
    }
    let config = ServerConfig {
        model_alias: alias,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: a.max_body_bytes,
        read_timeout: Duration::from_secs(a.timeout.max(1)),
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        max_connections: a.max_connections,
        cors_origins: a.cors_origin.clone(),
        // The settings file's and BITNET_* variables' sampling keys (as `run` reads them) are
        // the defaults of requests that leave those fields out.
        defaults: bitnet_server::RequestDefaults {
            sampling: s.sampling.clone(),
            max_tokens: s.max_tokens,
        },
    };
    let scheduler = Arc::new(scheduler);
    // The engine computes on its own threads; the runtime only moves bytes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("listening on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        // Scripts starting the server with --port 0 read the address from this line.
        let mut err = std::io::stderr().lock();
        writeln!(err, "listening on http://{addr}")?;
        err.flush()?;
        drop(err);
        bitnet_server::serve(listener, config, scheduler, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    if !a.quiet {
        eprintln!("server stopped");
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("shutting down: finishing requests in flight");
}
