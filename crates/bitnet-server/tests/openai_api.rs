//! OpenAI semantics end to end on the default model: completions, chat, streaming, stop
//! strings, max_tokens, seeds, usage, n > 1, logprobs.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_semantics() {
    let s = TestServer::default().await;

    // Greedy completion: the text `bitnet run --greedy -n 32` prints.
    let (st, v) = s
        .post(
            "/v1/completions",
            &json!({"model": "kjv", "prompt": "In the beginning", "max_tokens": 32, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "kjv");
    assert_eq!(v["choices"][0]["text"], GREEDY_32);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let prompt_ids = s
        .scheduler
        .engine()
        .tokenizer()
        .encode("In the beginning", true)
        .unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], prompt_ids.len());
    assert_eq!(v["usage"]["completion_tokens"], 32);
    assert_eq!(v["usage"]["total_tokens"], prompt_ids.len() + 32);
    // Token ids as the prompt give the same.
    let (_, v2) = s
        .post(
            "/v1/completions",
            &json!({"prompt": prompt_ids, "max_tokens": 32, "temperature": 0}),
        )
        .await;
    assert_eq!(v2["choices"][0]["text"], GREEDY_32);
    // The second time, the prompt's full blocks could come from the prefix cache; the
    // count is reported either way.
    assert!(v2["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());

    // Streaming gives the same text in chunks, then usage, then [DONE].
    let chunks = s
        .stream(
            "/v1/completions",
            &json!({"prompt": "In the beginning", "max_tokens": 32, "temperature": 0,
                "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    assert_eq!(streamed_texts(&chunks, false), [GREEDY_32]);
    let usage: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 32);
    assert_eq!(usage["choices"], json!([]));

    // Stop strings: the text ends before the first match, finish_reason "stop".
    let (_, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "In the beginning", "max_tokens": 32, "temperature": 0,
                "stop": ["his people", "zzz"]}),
        )
        .await;
    let cut = &GREEDY_32[..GREEDY_32.find("his people").unwrap()];
    assert_eq!(v["choices"][0]["text"], cut);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let chunks = s
        .stream(
            "/v1/completions",
            &json!({"prompt": "In the beginning", "max_tokens": 32, "temperature": 0,
                "stop": "his people", "stream": true}),
        )
        .await;
    assert_eq!(streamed_texts(&chunks, false), [cut]);

    // max_tokens.
    let (_, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "In the beginning", "max_tokens": 3, "temperature": 0}),
        )
        .await;
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(GREEDY_32.starts_with(v["choices"][0]["text"].as_str().unwrap()));

    // Seeds: the same seed gives the same sample; n > 1 gives seed, seed + 1, ...
    let sampled = |seed: u64, n: u64| json!({"prompt": "And God said", "max_tokens": 12, "temperature": 1.0, "seed": seed, "n": n});
    let (_, a) = s.post("/v1/completions", &sampled(7, 1)).await;
    let (_, b) = s.post("/v1/completions", &sampled(7, 1)).await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let (_, many) = s.post("/v1/completions", &sampled(7, 3)).await;
    let choices = many["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    assert_eq!(choices[0]["text"], a["choices"][0]["text"]);
    let (_, eight) = s.post("/v1/completions", &sampled(8, 1)).await;
    assert_eq!(choices[1]["text"], eight["choices"][0]["text"]);
    let texts: std::collections::HashSet<_> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert!(texts.len() > 1, "three seeds, one text: {many}");
    assert_eq!(many["usage"]["completion_tokens"], 36);
    // The prompt is counted once for all choices.
    assert_eq!(many["usage"]["prompt_tokens"], a["usage"]["prompt_tokens"]);

    // Chat: rendered with the model's template; streaming and not agree under greedy.
    let msgs = json!([{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Who is the Lord?"}]);
    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": msgs, "max_completion_tokens": 12, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());
    let tok = s.scheduler.engine().tokenizer();
    let chat_ids = tok
        .encode_chat(
            &[
                bitnet_tokenizers::ChatMessage::new("system", "You are terse."),
                bitnet_tokenizers::ChatMessage::new("user", "Who is the Lord?"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], chat_ids.len());
    let chunks = s
        .stream(
            "/v1/chat/completions",
            &json!({"messages": msgs, "max_tokens": 12, "temperature": 0, "stream": true}),
        )
        .await;
    let first: Value = serde_json::from_str(&chunks[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_texts(&chunks, true), [text]);

    // Chat logprobs: greedy picks the most likely token, which heads top_logprobs.
    let (_, v) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": msgs, "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 3}),
        )
        .await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    let mut joined = Vec::new();
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], t["token"]);
        let lp = t["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0 && (lp - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(top[1]["logprob"].as_f64().unwrap() <= lp);
        joined.extend(
            t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&joined),
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // Completions logprobs, legacy shape.
    let (_, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "In the beginning", "max_tokens": 3, "temperature": 0, "logprobs": 2}),
        )
        .await;
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(lp["text_offset"][0], 0);
    // Offsets follow each token's own text, also while text is held back: "his people" is
    // the start of a stop string that never comes, so it goes out only with the next token.
    let (_, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "In the beginning", "max_tokens": 32, "temperature": 0,
                "logprobs": 0, "stop": "his people!?"}),
        )
        .await;
    assert_eq!(v["choices"][0]["text"], GREEDY_32);
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    let offsets = lp["text_offset"].as_array().unwrap();
    assert_eq!((tokens.len(), offsets.len()), (32, 32));
    let mut at = 0;
    for (t, o) in tokens.iter().zip(offsets) {
        let t = t.as_str().unwrap();
        assert_eq!(o.as_u64(), Some(at as u64), "{t:?} in {lp}");
        assert_eq!(&GREEDY_32[at..at + t.len()], t);
        at += t.len();
    }

    // Echo returns the prompt first.
    let (_, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "In the beginning", "max_tokens": 32, "temperature": 0, "echo": true}),
        )
        .await;
    assert_eq!(
        v["choices"][0]["text"],
        format!("In the beginning{GREEDY_32}")
    );

    let stats = s.wait_idle().await;
    assert!(stats.requests_finished >= 15, "{stats:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_level_errors() {
    let s = TestServer::default().await;
    // Longer than the 256-token context: 400, before anything runs.
    let (st, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "And it came to pass ".repeat(100), "max_tokens": 1}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["param"], "prompt");
    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "And it came to pass ".repeat(100)}]}),
        )
        .await;
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("messages")));
    // Token ids outside the vocabulary.
    let (st, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": [1, 4096], "max_tokens": 1}),
        )
        .await;
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("prompt")));
    // max_tokens beyond the context.
    let (st, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": 257}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["param"].as_str()),
        (400, Some("max_tokens"))
    );
    // Without max_tokens, generation runs to the end of the context (or EOS).
    let (st, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "In the beginning", "temperature": 0, "ignore_eos": true}),
        )
        .await;
    assert_eq!(st, 200);
    // The last token is sampled from the last position's logits and needs no KV slot.
    let total = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!((256..=257).contains(&total), "{total}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    s.wait_idle().await;
    s.stop().await;
}
