//! The accept loop: HTTP/1.1 connections with a header-read timeout, and a graceful shutdown
//! that stops accepting, lets in-flight requests finish for a bounded time, then cancels
//! them.

use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::params::Endpoint;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The model's name in `/v1/models`; requests naming another model get 404.
    pub model_alias: String,
    /// Bearer token required on `/v1/*` and `/metrics`; `None`: open.
    pub api_key: Option<String>,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers, then its body, and to take
    /// more of a response once the socket's buffers are full (a client that stopped reading).
    pub read_timeout: Duration,
    /// How long in-flight requests may run on after a shutdown signal before they are
    /// cancelled.
    pub shutdown_timeout: Duration,
    /// Most connections served at once. Beyond it the server stops accepting until one
    /// closes: newcomers wait in the kernel's listen backlog (and, past that, are refused by
    /// the kernel), rather than being accepted and closed with no response, which clients
    /// cannot tell from a crash and retry at once. Bounds the file descriptors and the
    /// per-connection buffers a flood of clients can take.
    pub max_connections: usize,
    /// Sampling values and `max_tokens` for requests that leave them out.
    pub defaults: crate::params::RequestDefaults,
    /// Web origins (`https://app.example`, or `*` for any) whose pages may call the API from a
    /// browser (CORS: preflights answered, `Access-Control-Allow-Origin` on responses). Empty:
    /// none beyond this server's own page, as browsers default to.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_alias: "bitnet".into(),
            api_key: None,
            max_body_bytes: 4 << 20,
            read_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 1024,
            defaults: Default::default(),
            cors_origins: Vec::new(),
        }
    }
}

/// The state every handler shares.
pub struct App {
    pub config: ServerConfig,
    pub backend: Arc<dyn Backend>,
    pub metrics: Metrics,
    pub shutting_down: AtomicBool,
    /// Unix time the server started (`created` of the model card).
    pub started: u64,
    ids: AtomicU64,
    id_key: RandomState,
}

impl App {
    pub fn new(config: ServerConfig, backend: Arc<dyn Backend>) -> App {
        App {
            config,
            backend,
            metrics: Metrics::default(),
            shutting_down: AtomicBool::new(false),
            started: unix_now(),
            ids: AtomicU64::new(0),
            id_key: RandomState::new(),
        }
    }

    /// A response id unique to this process and not guessable from the previous one.
    pub fn next_id(&self, endpoint: Endpoint) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        format!("{prefix}-{:016x}{n:x}", self.id_key.hash_one(n))
    }
}

/// Whether a server on `addr` with `config` serves anyone who can reach it: not bound to
/// loopback, and no API key.
pub fn open_to_others(addr: SocketAddr, config: &ServerConfig) -> bool {
    !addr.ip().is_loopback() && config.api_key.is_none()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves on `listener` until `shutdown` completes, then shuts down gracefully and calls
/// [`Backend::shutdown`]. Returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        if open_to_others(addr, &config) {
            tracing::warn!(
                "listening on {addr}, which is not a loopback address, without an API key: \
                 anyone who can reach it can use the model (set an API key to require one)"
            );
        }
    }
    let app = Arc::new(App::new(config, backend));
    // A configuration the router cannot be built from (a CORS origin that is no header value)
    // is the caller's error, before anything is served.
    let router = crate::routes::router(app.clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let slots = Arc::new(Semaphore::new(app.config.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Accept only with a free slot. Both waits are cancel-safe: when another branch
        // wins, no connection is lost.
        let next = async {
            let slot = slots.clone().acquire_owned().await;
            (slot, listener.accept().await)
        };
        tokio::select! {
            (slot, accepted) = next => {
                // The semaphore is never closed.
                let Ok(slot) = slot else { continue };
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors or a connection reset before accept: the
                        // listener itself is fine, so wait a little and go on.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(router.clone());
                let mut closing = closing_rx.clone();
                let read_timeout = app.config.read_timeout;
                conns.spawn(async move {
                    let _slot = slot;
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(read_timeout);
                    // A client that stops reading a response would otherwise hold its slot
                    // and the unsent rest (megabytes with n > 1 and logprobs) forever: a write
                    // that makes no progress for the timeout fails and closes the connection.
                    // Only blocked writes count, so an idle stream (its keep-alive comments
                    // taken) or a slow reader that keeps up is never cut.
                    let mut io = tokio_io_timeout::TimeoutStream::new(stream);
                    io.set_write_timeout(Some(read_timeout));
                    let conn = builder.serve_connection(TokioIo::new(Box::pin(io)), svc);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!("connection ended: {e}");
                            }
                            return;
                        }
                        _ = closing.wait_for(|c| *c) => {}
                    }
                    // Finish the request in flight, then close (idle connections close now).
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            // Reap finished connections so the set does not grow with every client.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    app.shutting_down.store(true, Ordering::Relaxed);
    let _ = closing_tx.send(true);
    tracing::info!(
        "shutting down: waiting up to {:?} for {} connection(s)",
        app.config.shutdown_timeout,
        conns.len()
    );
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(app.config.shutdown_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout: cancelling {} connection(s)", conns.len());
        // Running requests end with an error event, which their handlers send on; give
        // them a moment to do so before the connections are cut.
        stop_backend(&app).await;
        let drain = async { while conns.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    stop_backend(&app).await;
    Ok(())
}

/// [`Backend::shutdown`] may wait for the engine's thread: off the async workers.
async fn stop_backend(app: &Arc<App>) {
    let backend = app.backend.clone();
    let _ = tokio::task::spawn_blocking(move || backend.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_a_key_only_beyond_loopback() {
        let open = ServerConfig::default();
        let keyed = ServerConfig {
            api_key: Some("k".into()),
            ..Default::default()
        };
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lan: SocketAddr = "192.168.1.2:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(open_to_others(any, &open));
        assert!(open_to_others(lan, &open));
        assert!(!open_to_others(local, &open));
        assert!(!open_to_others(local6, &open));
        assert!(!open_to_others(any, &keyed));
    }
}
