//! The HTTP layer against a scripted backend on 127.0.0.1: statuses, error bodies, limits,
//! cancellation and shutdown, including the paths the real engine cannot be made to take.

use crate::server::{serve, ServerConfig};
use crate::testing::{Mock, Script};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: SocketAddr,
    mock: Arc<Mock>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(script: Script, config: ServerConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mock = Mock::new(script);
        let (tx, rx) = oneshot::channel::<()>();
        let backend = mock.clone();
        let task = tokio::spawn(async move {
            serve(listener, config, backend, async {
                let _ = rx.await;
            })
            .await
        });
        Server {
            addr,
            mock,
            stop: Some(tx),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = client()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let v = r.json().await.unwrap_or(Value::Null);
        (status, headers, v)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops in time")
            .unwrap()
            .unwrap();
    }

    /// Waits (bounded) until the backend holds `n` live requests.
    async fn wait_live(&self, n: usize) {
        let t = Instant::now();
        while self.mock.live.load(Ordering::SeqCst) != n {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "live requests stayed at {} (want {n})",
                self.mock.live.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Server {
    /// A series' value in /metrics (0 if absent). The scrape is itself in flight.
    async fn metric(&self, series: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (bounded) until a series in /metrics has the value `want`.
    async fn wait_metric(&self, series: &str, want: f64) {
        let t = Instant::now();
        loop {
            let v = self.metric(series).await;
            if v == want {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{series} stayed at {v} (want {want})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn config() -> ServerConfig {
    ServerConfig {
        model_alias: "kjv".into(),
        read_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(2),
        max_body_bytes: 64 << 10,
        ..Default::default()
    }
}

fn assert_error(v: &Value, kind: &str) {
    let e = &v["error"];
    assert_eq!(e["type"], kind, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

/// Sends raw bytes and returns the status line and the whole response.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_frees_its_slot() {
    let s = Server::start(
        Script::Flood,
        ServerConfig {
            max_connections: 1,
            ..config()
        },
    )
    .await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = sock.connect(s.addr).await.unwrap();
    let body = json!({"prompt": "And God said", "max_tokens": 8, "stream": true}).to_string();
    c.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The stream never ends and the client reads no more: once the socket buffers are full
    // (~3 MB here) the server's writes stall, and after the timeout (2 s) it closes the
    // connection, which drops the request. Before, both stayed until the client left.
    s.wait_live(1).await;
    let t = Instant::now();
    while s.mock.live.load(Ordering::SeqCst) != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the request of a client that stopped reading stayed live"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The one connection slot serves the next client.
    *s.mock.script.lock().unwrap() = Script::Echo;
    let (st, _, v) = s
        .post(
            "/v1/completions",
            json!({"prompt": "And God said", "max_tokens": 2}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    drop(c);
    s.stop().await;
}

#[tokio::test]
async fn browsers_of_the_allowed_origins_may_call_the_api() {
    let origin = "https://chat.example";
    let s = Server::start(
        Script::Echo,
        ServerConfig {
            api_key: Some("k".into()),
            cors_origins: vec![origin.into()],
            ..config()
        },
    )
    .await;
    // The preflight carries no key and is answered; the request that follows still needs one.
    let pre = |from: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, s.url("/v1/chat/completions"))
            .header("origin", from)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let r = pre(origin).await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], origin);
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    let r = pre("https://elsewhere.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let post = |key: Option<&str>| {
        let mut b = client()
            .post(s.url("/v1/completions"))
            .header("origin", origin)
            .json(&json!({"prompt": "And God said", "max_tokens": 2}));
        if let Some(k) = key {
            b = b.bearer_auth(k);
        }
        b.send()
    };
    let r = post(Some("k")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], origin);
    // A refusal carries the header too, so the page can read why.
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], origin);
    s.stop().await;

    // Off by default: no header, and a preflight is a method this route does not have.
    let s = Server::start(Script::Echo, config()).await;
    let r = client()
        .request(reqwest::Method::OPTIONS, s.url("/v1/completions"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    s.stop().await;
    // An origin that cannot be a header value is refused before the server listens.
    assert!(crate::routes::check_cors_origins(&["https://a\nb".into()]).is_err());
}

#[tokio::test]
async fn completions_chat_and_models() {
    let s = Server::start(Script::Echo, config()).await;
    let (st, _, v) = s
        .post(
            "/v1/completions",
            json!({"model": "kjv", "prompt": "And God said", "max_tokens": 3, "n": 2, "seed": 5, "echo": true}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["index"], 1);
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("And God said"));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 6);
    let seeds: Vec<_> = s
        .mock
        .submitted
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.options.sampling.seed)
        .collect();
    assert_eq!(seeds, [Some(5), Some(6)]);

    let (st, _, v) = s
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 2,
                "logprobs": true, "top_logprobs": 2}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    let prompt = s.mock.submitted.lock().unwrap()[2].prompt.clone();
    let text = crate::testing::tokenizer().decode(&prompt, false).unwrap();
    assert!(
        text.contains("Hi"),
        "the chat template was applied: {text:?}"
    );

    let r = client().get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "kjv");
    let r = client().get(s.url("/v1/models/kjv")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(s.url("/v1/models/gpt-4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client().get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn error_statuses() {
    let s = Server::start(Script::Echo, config()).await;
    let (st, _, v) = s
        .post("/v1/completions", json!({"model": "gpt-4", "prompt": "x"}))
        .await;
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    let (st, _, v) = s.post("/v1/nothing", json!({})).await;
    assert_eq!(st, 404);
    assert_error(&v, "invalid_request_error");
    let r = client().get(s.url("/v1/completions")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_error(&r.json().await.unwrap(), "invalid_request_error");
    let (st, _, v) = s
        .post(
            "/v1/completions",
            json!({"prompt": "x", "temperature": "hot"}),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["param"], "temperature");
    let (st, _, v) = s
        .post("/v1/completions", json!({"prompt": "x", "max_tokens": -3}))
        .await;
    assert_eq!(
        (st, v["error"]["param"].as_str()),
        (400, Some("max_tokens"))
    );
    let (st, _, v) = s
        .post(
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 1u64 << 40}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["param"].as_str()),
        (400, Some("max_tokens"))
    );
    let (st, _, v) = s.post("/v1/completions", json!({"prompt": ""})).await;
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("prompt")));
    let (st, _, v) = s
        .post("/v1/completions", json!({"prompt": [99999999]}))
        .await;
    assert_eq!(st, 400, "{v}");
    // Longer than the mock's context of 64 tokens.
    let (st, _, v) = s
        .post("/v1/completions", json!({"prompt": "word ".repeat(200)}))
        .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // Over 64 * 256 bytes: refused before tokenizing, still a 400.
    let (st, _, v) = s
        .post("/v1/completions", json!({"prompt": "a".repeat(20_000)}))
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("context_length_exceeded"))
    );
    // Over the body limit of 64 KiB.
    let (st, _, v) = s
        .post("/v1/completions", json!({"prompt": "a".repeat(70_000)}))
        .await;
    assert_eq!(st, 413);
    assert_error(&v, "invalid_request_error");

    for body in [
        &b"{\"prompt\": \"x\""[..],
        b"not json",
        b"",
        b"[1,2]",
        b"{\"prompt\": \"x\"} trailing",
        b"{\"prompt\": \"\xff\xfe\"}",
    ] {
        let r = client()
            .post(s.url("/v1/completions"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body:?}");
        assert_error(&r.json().await.unwrap(), "invalid_request_error");
    }
    s.stop().await;
}

#[tokio::test]
async fn oversized_body_without_length_and_chunked() {
    let s = Server::start(Script::Echo, config()).await;
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(100_000));
    // Chunked, so the limit is found while reading rather than from Content-Length.
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let resp = raw(s.addr, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    s.stop().await;
}

#[tokio::test]
async fn api_key_is_required_when_set() {
    let s = Server::start(
        Script::Echo,
        ServerConfig {
            api_key: Some("s3cret".into()),
            ..config()
        },
    )
    .await;
    let r = client().get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
    let r = client()
        .post(s.url("/v1/completions"))
        .bearer_auth("wrong")
        .json(&json!({"prompt": "x", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(s.url("/v1/completions"))
        .bearer_auth("s3cret")
        .json(&json!({"prompt": "x", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Health stays open for load balancers.
    let r = client().get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn chat_page_is_served_without_a_key() {
    let s = Server::start(
        Script::Echo,
        ServerConfig {
            api_key: Some("s3cret".into()),
            ..config()
        },
    )
    .await;
    for (path, ty, marker) in [
        ("/", "text/html; charset=utf-8", "<script src=\"chat.js\""),
        (
            "/chat.js",
            "text/javascript; charset=utf-8",
            "v1/chat/completions",
        ),
        ("/chat.css", "text/css; charset=utf-8", ".msg"),
    ] {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ty, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(r.text().await.unwrap().contains(marker), "{path}");
    }
    // HEAD works like GET; other methods do not.
    let r = client().head(s.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().post(s.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // The page is open; what it calls is not.
    let r = client().get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let text = client()
        .get(s.url("/metrics"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("bitnet_requests_total{endpoint=\"/\",status=\"200\"} 4"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn queue_full_is_503_with_retry_after() {
    let s = Server::start(Script::Full, config()).await;
    let (st, h, v) = s.post("/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(st, 503);
    assert_eq!(h["retry-after"], "1");
    assert_error(&v, "server_error");
    let r = client().get(s.url("/metrics")).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#"bitnet_requests_total{endpoint="/v1/completions",status="503"} 1"#),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn engine_error_fails_only_that_request() {
    let s = Server::start(Script::FailAfterOne, config()).await;
    let (st, _, v) = s
        .post("/v1/completions", json!({"prompt": "x", "max_tokens": 4}))
        .await;
    assert_eq!(st, 500);
    assert_error(&v, "server_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("kaboom"));
    // Streaming: the error arrives as a data chunk (OpenAI's clients raise on it).
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let last: Value = serde_json::from_str(datas.last().unwrap()).unwrap();
    assert_error(&last, "server_error");
    *s.mock.script.lock().unwrap() = Script::Echo;
    let (st, _, _) = s
        .post("/v1/completions", json!({"prompt": "x", "max_tokens": 2}))
        .await;
    assert_eq!(st, 200);
    s.wait_live(0).await;
    s.stop().await;
}

#[tokio::test]
async fn streaming_framing() {
    let s = Server::start(Script::Echo, config()).await;
    let r = client()
        .post(s.url("/v1/completions"))
        .json(
            &json!({"prompt": "In the beginning", "max_tokens": 3, "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    // Every event is one `data:` line followed by a blank line.
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(
        events
            .iter()
            .all(|e| e.starts_with("data: ") && !e.contains('\n')),
        "{text}"
    );
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e[6..]).unwrap())
        .collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    let finish: Vec<_> = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"].is_string())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "length");
    s.stop().await;
}

#[tokio::test]
async fn vanished_clients_cancel_their_requests() {
    let s = Server::start(Script::Hang, config()).await;
    // Non-streaming: the handler future is dropped with the connection.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let body = r#"{"prompt": "x", "n": 3}"#;
    c.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.wait_live(3).await;
    drop(c);
    s.wait_live(0).await;

    // Streaming: the body stream is dropped when the connection goes.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "x"}], "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.wait_live(1).await;
    drop(r);
    s.wait_live(0).await;
    let text = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("bitnet_requests_cancelled_total 2"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn slow_body_times_out() {
    let s = Server::start(Script::Echo, config()).await;
    let t = Instant::now();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut out = Vec::new();
    // One byte a second; the server's read timeout is 2 s.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if c.write_all(b" ").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut out)).await;
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(t.elapsed() < Duration::from_secs(6));

    // Headers that never end are cut off too (hyper's header timeout).
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(6), c.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "the connection was not closed");
    s.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_then_cancels() {
    let s = Server::start(Script::Hang, config()).await;
    let url = s.url("/v1/completions");
    let pending = tokio::spawn(async move {
        client()
            .post(url)
            .json(&json!({"prompt": "x"}))
            .send()
            .await
    });
    s.wait_live(1).await;
    let mock = s.mock.clone();
    let addr = s.addr;
    let t = Instant::now();
    s.stop().await;
    // The shutdown timeout is 2 s: the hanging request held it that long, then was cut.
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(mock.live.load(Ordering::SeqCst), 0);
    let _ = pending.await;
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn requests_are_in_flight_until_their_response_ends_and_vanished_ones_count_499() {
    const IN_FLIGHT: &str = "bitnet_requests_in_flight";
    const DROPPED: &str = r#"bitnet_requests_total{endpoint="/v1/completions",status="499"}"#;
    const CHAT_DROPPED: &str =
        r#"bitnet_requests_total{endpoint="/v1/chat/completions",status="499"}"#;
    const CHAT_OK: &str = r#"bitnet_requests_total{endpoint="/v1/chat/completions",status="200"}"#;
    let s = Server::start(Script::Hang, config()).await;
    // Only the scrape itself.
    let idle = s.metric(IN_FLIGHT).await;
    assert_eq!(idle, 1.0);

    // Non-streaming clients that hang up: the handler (and the middleware) is dropped.
    for _ in 0..3 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let body = r#"{"prompt": "x"}"#;
        c.write_all(
            format!(
                "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        s.wait_live(1).await;
        assert_eq!(s.metric(IN_FLIGHT).await, idle + 1.0);
        drop(c);
        s.wait_live(0).await;
    }
    s.wait_metric(IN_FLIGHT, idle).await;
    s.wait_metric(DROPPED, 3.0).await;

    // A stream is in flight while its body runs, not only until its headers are sent.
    let body = json!({"messages": [{"role": "user", "content": "x"}], "stream": true});
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.wait_live(1).await;
    assert_eq!(s.metric(IN_FLIGHT).await, idle + 1.0);
    assert_eq!(s.metric(CHAT_OK).await, 0.0);
    drop(r);
    s.wait_live(0).await;
    s.wait_metric(IN_FLIGHT, idle).await;
    s.wait_metric(CHAT_DROPPED, 1.0).await;
    assert_eq!(s.metric(CHAT_OK).await, 0.0);

    // A stream read to its end is a 200.
    *s.mock.script.lock().unwrap() = Script::Echo;
    let text = client()
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "x"}], "stream": true, "max_tokens": 2}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    s.wait_metric(CHAT_OK, 1.0).await;
    s.wait_metric(IN_FLIGHT, idle).await;
    assert_eq!(s.metric(CHAT_DROPPED).await, 1.0);
    s.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let s = Server::start(
        Script::Hang,
        ServerConfig {
            max_connections: 2,
            ..config()
        },
    )
    .await;
    // Two requests that never finish hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let body = r#"{"prompt": "x"}"#;
        c.write_all(
            format!(
                "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        held.push(c);
    }
    s.wait_live(2).await;
    // A third client waits in the backlog...
    let mut third = TcpStream::connect(s.addr).await.unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let early = tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut out)).await;
    assert!(early.is_err() && out.is_empty(), "served beyond the cap");
    // ...and is served once a slot frees.
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut out))
        .await
        .expect("served after a slot freed")
        .unwrap();
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    drop(held);
    s.wait_live(0).await;
    s.stop().await;
}
