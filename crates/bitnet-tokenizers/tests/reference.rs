//! The KJV reference prompts (reference.json) tokenize to the reference ids,
//! from tokenizer.json and from the GGUF form.

mod common;

use bitnet_tokenizers::{ChatMessage, Tokenizer};
use serde_json::Value;

struct Prompt {
    name: String,
    text: String,
    ids: Vec<u32>,
}

fn prompts() -> Vec<Prompt> {
    let path = common::kjv_dir().join("reference/reference.json");
    let json: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read reference.json")).expect("json");
    json["prompts"]
        .as_array()
        .expect("prompts array")
        .iter()
        .map(|p| Prompt {
            name: p["name"].as_str().expect("name").to_string(),
            text: p["text"].as_str().expect("text").to_string(),
            ids: p["token_ids"]
                .as_array()
                .expect("token_ids")
                .iter()
                .map(|v| u32::try_from(v.as_u64().expect("id")).expect("u32 id"))
                .collect(),
        })
        .collect()
}

fn check(tok: &Tokenizer) {
    let prompts = prompts();
    assert_eq!(prompts.len(), 4);
    for p in &prompts {
        let ids = if p.name == "chat" {
            // The chat prompt is the template's rendering, encoded without adding BOS again.
            let msgs = [ChatMessage::new("user", "Who is the Lord?")];
            let rendered = tok.apply_chat_template(&msgs, true).expect("render");
            assert_eq!(rendered, p.text);
            assert_eq!(tok.encode_chat(&msgs, true).expect("encode_chat"), p.ids);
            tok.encode(&p.text, false).expect("encode")
        } else {
            tok.encode(&p.text, true).expect("encode")
        };
        assert_eq!(ids, p.ids, "prompt {}", p.name);
        assert_eq!(
            ids.iter().filter(|&&i| i == 0).count(),
            1,
            "exactly one BOS in {}",
            p.name
        );
        // add_bos never doubles a BOS the text already starts with.
        assert_eq!(
            tok.encode(&p.text, tok.add_bos_default()).expect("encode"),
            ids,
            "prompt {}",
            p.name
        );
        assert_eq!(
            tok.decode(&ids, false)
                .expect("decode")
                .trim_start_matches("<|begin_of_text|>"),
            p.text.trim_start_matches("<|begin_of_text|>")
        );
    }
}

#[test]
fn reference_ids_from_tokenizer_json() {
    check(&common::hf());
}

#[test]
fn reference_ids_from_gguf_vocab() {
    check(&common::gguf());
}

#[test]
fn special_ids_and_flags() {
    for tok in [common::hf(), common::gguf()] {
        assert_eq!(tok.vocab_size(), 4096);
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.eos_id(), Some(1));
        assert!(tok.add_bos_default());
        assert_eq!(tok.stop_ids(), &[1, 4]);
        assert_eq!(tok.token_to_id("<|eot_id|>"), Some(4));
        assert_eq!(tok.id_to_token(263).as_deref(), Some("Ġthe"));
        assert_eq!(tok.token_to_id("Ġthe"), Some(263));
        assert_eq!(tok.id_to_token(4096), None);
        assert_eq!(tok.bos_token(), Some("<|begin_of_text|>"));
        assert_eq!(tok.eos_token(), Some("<|end_of_text|>"));
        assert!(tok
            .chat_template()
            .is_some_and(|t| t.contains("capitalize")));
    }
}

#[test]
fn tokenizer_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let tok = common::hf();
    let err = tok
        .decode(&[263, 5000], false)
        .expect_err("5000 is out of range");
    assert!(err.to_string().contains("5000"), "{err}");
}
