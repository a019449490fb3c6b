//! Hostile and heavy traffic against the real server: malformed requests, a trickling body,
//! clients that vanish mid-stream, 500 requests at once, 16 concurrent greedy streams that
//! must each get exactly what they get alone. Afterwards the server must be healthy and its
//! scheduler idle with every KV block back.

mod common;

use bitnet_inference::SchedulerOptions;
use bitnet_server::ServerConfig;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn healthy(s: &TestServer) {
    let r = client().get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (st, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "In the beginning", "max_tokens": 32, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["choices"][0]["text"], GREEDY_32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests() {
    let s = TestServer::start(
        SchedulerOptions {
            ctx_size: Some(256),
            ..Default::default()
        },
        ServerConfig {
            read_timeout: Duration::from_secs(2),
            max_body_bytes: 256 << 10,
            ..config()
        },
    )
    .await;
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"{\"prompt\": ".to_vec(), 400),
        (b"{\"prompt\": \"a\",}".to_vec(), 400),
        (b"null".to_vec(), 400),
        (b"{\"prompt\": 5}".to_vec(), 400),
        (b"{\"prompt\": \"a\", \"max_tokens\": \"8\"}".to_vec(), 400),
        (b"{\"prompt\": \"a\", \"max_tokens\": -1}".to_vec(), 400),
        (b"{\"prompt\": \"a\", \"max_tokens\": 1e300}".to_vec(), 400),
        (
            b"{\"prompt\": \"a\", \"max_tokens\": 99999999999999999999999}".to_vec(),
            400,
        ),
        (b"{\"prompt\": \"a\", \"n\": 1000}".to_vec(), 400),
        (b"{\"prompt\": \"a\", \"stream\": \"yes\"}".to_vec(), 400),
        (b"{\"prompt\": \"a\", \"stop\": {\"x\": 1}}".to_vec(), 400),
        (b"{\"prompt\": \"\"}".to_vec(), 400),
        (b"{\"prompt\": []}".to_vec(), 400),
        (b"{\"prompt\": \"\xc3\x28 invalid utf-8\"}".to_vec(), 400),
        (b"{\"prompt\": \"\\ud800 lone surrogate\"}".to_vec(), 400),
        (
            format!("{{\"prompt\": \"{}\"}}", "x".repeat(300 << 10)).into_bytes(),
            413,
        ),
        // Under the body limit but far over what 256 tokens can hold.
        (
            format!("{{\"prompt\": \"{}\"}}", "x".repeat(200 << 10)).into_bytes(),
            400,
        ),
    ];
    for (body, want) in cases {
        let r = client()
            .post(s.url("/v1/completions"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let preview = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        assert_eq!(r.status().as_u16(), want, "{preview}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].is_string(), "{preview}: {v}");
    }
    let (st, _) = s
        .post("/v1/chat/completions", &json!({"messages": "hello"}))
        .await;
    assert_eq!(st, 400);

    // A body sent a byte a second is cut off at the read timeout (2 s) with 408.
    let t = Instant::now();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    for b in b"{\"prompt\": \"In the beginning\"}".iter().take(8) {
        if c.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await {
            resp.extend_from_slice(&buf[..n]);
            if n == 0 || !resp.is_empty() {
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(t.elapsed() < Duration::from_secs(7), "{:?}", t.elapsed());

    healthy(&s).await;
    s.wait_idle().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_free_their_sequences() {
    let s = TestServer::default().await;
    let before = s.wait_idle().await;
    // Streams cut after their first token; each would otherwise run to the end of its context.
    let mut streams = Vec::new();
    for i in 0..6 {
        let r = client()
            .post(s.url("/v1/completions"))
            .json(
                &json!({"prompt": format!("And the {i} day"), "temperature": 0,
                "ignore_eos": true, "stream": true}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut body = r.bytes_stream();
        let first = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("a first chunk");
        assert!(first.is_some());
        streams.push(body);
    }
    // A non-streaming request whose client gives up.
    let url = s.url("/v1/completions");
    let waiting = tokio::spawn(async move {
        client()
            .post(url)
            .json(&json!({"prompt": "In the beginning", "temperature": 0, "ignore_eos": true}))
            .send()
            .await
    });
    let t = Instant::now();
    while s.scheduler.stats().running < 7 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    waiting.abort();
    drop(streams);
    let after = s.wait_idle().await;
    // The vanished requests stopped early: far fewer tokens than 7 full contexts.
    let generated = after.generated_tokens - before.generated_tokens;
    assert!(generated < 7 * 200, "{generated} tokens generated");
    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("bitnet_requests_cancelled_total 7"),
        "{metrics}"
    );
    assert!(metrics.contains("bitnet_kv_blocks_used 0"));
    healthy(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_at_once() {
    let s = TestServer::start(
        SchedulerOptions {
            ctx_size: Some(128),
            max_queue: 64,
            ..Default::default()
        },
        config(),
    )
    .await;
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (client, url) = (client.clone(), s.url("/v1/completions"));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": format!("Verse {i}"), "max_tokens": 2}))
                .send()
                .await;
            match r {
                Ok(r) => {
                    let st = r.status().as_u16();
                    let retry = r.headers().get("retry-after").is_some();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    Some((st, retry, v))
                }
                // A connection the server (or the OS backlog) closed cleanly.
                Err(e) => {
                    assert!(!e.is_timeout(), "{e}");
                    None
                }
            }
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Some((200, _, v)) => {
                assert_eq!(v["usage"]["completion_tokens"], 2);
                ok += 1;
            }
            Some((503, retry, v)) => {
                assert!(retry);
                assert_eq!(v["error"]["type"], "server_error");
                busy += 1;
            }
            Some((st, _, v)) => panic!("status {st}: {v}"),
            None => {}
        }
    }
    eprintln!("500 at once: {ok} succeeded, {busy} refused (503)");
    assert!(ok >= 64, "{ok} succeeded, {busy} refused");
    s.wait_idle().await;
    healthy(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_greedy_streams_match_their_solo_runs() {
    let s = TestServer::default().await;
    let prompts: Vec<String> = (0..16)
        .map(|i| match i {
            0 => "In the beginning".to_string(),
            i => format!("And the LORD spake unto Moses in the {i} year, saying"),
        })
        .collect();
    let body = |p: &str| {
        json!({"prompt": p, "max_tokens": 32, "temperature": 0, "stream": true,
            "stream_options": {"include_usage": true}})
    };
    let mut alone = Vec::new();
    for p in &prompts {
        let chunks = s.stream("/v1/completions", &body(p)).await;
        alone.push(streamed_texts(&chunks, false).remove(0));
    }
    assert_eq!(alone[0], GREEDY_32);
    let mut tasks = Vec::new();
    for p in &prompts {
        let (url, b) = (s.url("/v1/completions"), body(p));
        tasks.push(tokio::spawn(async move {
            let r = client().post(url).json(&b).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            let payloads: Vec<String> = text
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .map(str::to_string)
                .collect();
            assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
            streamed_texts(&payloads, false).remove(0)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), alone[i], "prompt {i}");
    }
    s.wait_idle().await;
    healthy(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish() {
    let s = TestServer::default().await;
    let addr = s.addr;
    let url = s.url("/v1/completions");
    let in_flight = tokio::spawn(async move {
        let r = client()
            .post(url)
            .json(
                &json!({"prompt": "In the beginning", "max_tokens": 200, "temperature": 0,
                "ignore_eos": true, "stream": true}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    });
    let t = Instant::now();
    while s.scheduler.stats().running == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the request never ran"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let scheduler = s.scheduler.clone();
    s.stop().await;
    // The stream ran to its end rather than being cut, and the port is closed.
    let text = in_flight.await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""));
    assert!(TcpStream::connect(addr).await.is_err());
    assert_eq!(scheduler.stats().running, 0);
}
