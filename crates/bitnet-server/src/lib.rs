//! An OpenAI-compatible HTTP server over the bitnet-rs scheduler: `POST /v1/chat/completions`,
//! `POST /v1/completions` (streaming or not), `GET /v1/models`, `GET /health`, `GET /metrics`,
//! and a chat page at `GET /`.
//!
//! ```no_run
//! # async fn f(scheduler: std::sync::Arc<bitnet_inference::Scheduler>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! bitnet_server::serve(listener, bitnet_server::ServerConfig::default(), scheduler, shutdown).await
//! # }
//! ```

pub mod api;
mod auth;
mod backend;
mod errors;
mod generate;
#[cfg(test)]
mod http_tests;
mod metrics;
pub mod openai;
mod page;
mod params;
mod routes;
mod server;
#[cfg(test)]
mod testing;

pub use backend::{Backend, EventStream};
pub use errors::ApiError;
pub use params::{RequestDefaults, MAX_CHOICES, MAX_STOP, MAX_STOP_BYTES};
pub use routes::check_cors_origins;
pub use server::{serve, ServerConfig};
