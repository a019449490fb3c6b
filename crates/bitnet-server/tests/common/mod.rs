//! A real server on 127.0.0.1 (ephemeral port) over the scheduler and the committed default
//! model, with 2 threads, for the integration tests.
#![allow(dead_code)]

use bitnet_inference::{Engine, EngineOptions, Scheduler, SchedulerOptions, SchedulerStats};
use bitnet_server::{serve, ServerConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What `bitnet run --greedy -n 32` prints after the prompt "In the beginning" (README).
pub const GREEDY_32: &str = " of the LORD shall be the LORD's: and the LORD shall be his people, and he shall be a great God.\nAnd he shall be a great God";

pub fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/bitnet-b1.58-kjv-i2_s.gguf")
}

pub fn engine() -> Engine {
    let opts = EngineOptions {
        threads: Some(2),
        ..Default::default()
    };
    Engine::load(&model_path(), &opts).expect("load the default model")
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub scheduler: Arc<Scheduler>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(opts: SchedulerOptions, config: ServerConfig) -> TestServer {
        let scheduler = Arc::new(Scheduler::start(engine(), opts).expect("start the scheduler"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let backend = scheduler.clone();
        let task = tokio::spawn(async move {
            serve(listener, config, backend, async {
                let _ = rx.await;
            })
            .await
        });
        TestServer {
            addr,
            scheduler,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn default() -> TestServer {
        TestServer::start(
            SchedulerOptions {
                ctx_size: Some(256),
                ..Default::default()
            },
            config(),
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = client()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a streaming request and returns the `data:` payloads.
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = client()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }

    /// Waits (bounded) until nothing runs or waits and no KV block is held by a sequence
    /// (blocks kept only for the prefix cache count as free).
    pub async fn wait_idle(&self) -> SchedulerStats {
        let t = Instant::now();
        loop {
            let s = self.scheduler.stats();
            if s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0 {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the scheduler did not go idle: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("the server stops in time")
                .unwrap()
                .unwrap();
        }
    }
}

pub fn config() -> ServerConfig {
    ServerConfig {
        model_alias: "kjv".into(),
        read_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The text of a streamed response: every choice's deltas joined, by choice index.
pub fn streamed_texts(payloads: &[String], chat: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in payloads {
        if p == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(p).unwrap();
        assert!(v.get("error").is_none(), "stream failed: {v}");
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize(i + 1, String::new());
            }
            let piece = if chat {
                c["delta"]["content"].as_str()
            } else {
                c["text"].as_str()
            };
            out[i].push_str(piece.unwrap_or(""));
        }
    }
    out
}
