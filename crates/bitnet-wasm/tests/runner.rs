//! The Rust side of the bindings on the host, against the shared reference: the JS tests
//! (tests/wasm-js, scripts/test-wasm.sh) check the same through the built module.

use bitnet_wasm::{Request, Runner};
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn runner() -> Runner {
    let path = repo().join("models/bitnet-b1.58-kjv-i2_s.gguf");
    Runner::load(std::fs::read(path).unwrap(), "kjv").unwrap()
}

/// The transformers reference's prompt "in_the_beginning" (reference.json).
fn reference() -> serde_json::Value {
    let path = repo().join("../shared/models/bitnet-b1.58-kjv/reference/reference.json");
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "in_the_beginning")
        .unwrap()
        .clone()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn greedy(max_tokens: usize) -> Request {
    Request {
        max_tokens,
        temperature: 0.0,
        ..Request::default()
    }
}

#[test]
fn greedy_tokens_and_streamed_text_match_the_reference() {
    let r = reference();
    let m = runner();
    assert_eq!(
        m.tokenize("In the beginning", true).unwrap(),
        ids(&r["token_ids"])
    );
    let mut streamed = String::new();
    let out = m
        .generate("In the beginning", &greedy(32), |piece| {
            streamed.push_str(piece);
            true
        })
        .unwrap();
    assert_eq!(out.tokens, ids(&r["greedy_new_token_ids"]));
    assert_eq!(out.text, r["greedy_text"].as_str().unwrap());
    assert_eq!(streamed, out.text);
    assert_eq!(out.finish, "length");
    assert_eq!(out.prompt_tokens, 4);
}

#[test]
fn callback_returning_false_cancels() {
    let m = runner();
    let mut calls = 0;
    let out = m
        .generate("In the beginning", &greedy(32), |_| {
            calls += 1;
            false
        })
        .unwrap();
    assert_eq!(out.finish, "cancelled");
    assert!(out.tokens.len() < 32, "{out:?}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = runner();
    let req = Request {
        max_tokens: 16,
        temperature: 0.9,
        seed: Some(7),
        ..Request::default()
    };
    let a = m.generate("And God said", &req, |_| true).unwrap();
    let b = m.generate("And God said", &req, |_| true).unwrap();
    assert_eq!(a.tokens, b.tokens);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let e = Runner::load(b"not a gguf file".to_vec(), "junk.gguf")
        .err()
        .unwrap();
    assert!(e.to_lowercase().contains("gguf"), "{e}");
    let mut truncated = std::fs::read(repo().join("models/bitnet-b1.58-kjv-i2_s.gguf")).unwrap();
    truncated.truncate(truncated.len() / 2);
    assert!(Runner::load(truncated, "half.gguf").is_err());
    assert!(Runner::load(Vec::new(), "empty.gguf").is_err());
    let m = runner();
    let e = m
        .generate(
            "",
            &Request {
                add_bos: false,
                ..greedy(4)
            },
            |_| true,
        )
        .err()
        .unwrap();
    assert!(e.contains("empty prompt"), "{e}");
    let bad = Request {
        temperature: -1.0,
        ..greedy(4)
    };
    assert!(m.generate("In", &bad, |_| true).is_err());
}
