//! The tokenizer rebuilt from GGUF metadata (GgufVocab) gives the same ids as
//! tokenizer.json (HF `tokenizers`) on hard text, on every validation line and on
//! random strings; and decoding round-trips.

mod common;

use bitnet_tokenizers::{token_type, GgufVocab, Tokenizer};
use proptest::prelude::*;

fn assert_same(hf: &Tokenizer, gg: &Tokenizer, text: &str) {
    for add_bos in [false, true] {
        let a = hf.encode(text, add_bos).expect("hf encode");
        let b = gg.encode(text, add_bos).expect("gguf encode");
        assert_eq!(a, b, "ids differ for {text:?} (add_bos {add_bos})");
    }
    let ids = hf.encode(text, false).expect("encode");
    // Byte-level BPE without a normalizer is lossless.
    assert_eq!(hf.decode(&ids, false).expect("decode"), text);
    assert_eq!(gg.decode(&ids, false).expect("decode"), text);
}

#[test]
fn converted_vocab_matches_the_gguf_layout() {
    let v = common::gguf_vocab();
    assert_eq!(v.model, "gpt2");
    assert_eq!(v.pre.as_deref(), Some("llama-bpe"));
    assert_eq!(v.tokens.len(), 4096);
    assert_eq!(
        &v.tokens[..5],
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>"
        ]
    );
    let types = v.token_types.as_deref().expect("token types");
    assert_eq!(types.len(), 4096);
    assert!(types[..5].iter().all(|&t| t == token_type::CONTROL));
    assert!(types[5..].iter().all(|&t| t == token_type::NORMAL));
    assert_eq!(v.merges.len(), 3835);
    assert_eq!(v.merges[0], "t h");
    assert_eq!(v.merges[1], "Ġ th");
    assert!(v.merges.iter().all(|m| m.split(' ').count() == 2));
    assert_eq!(
        (v.bos_id, v.eos_id, v.eot_id, v.pad_id),
        (Some(0), Some(1), Some(4), None)
    );
    assert_eq!((v.add_bos, v.add_eos), (Some(true), Some(false)));
    assert!(v.scores.is_none());
    assert!(v
        .chat_template
        .as_deref()
        .is_some_and(|t| t.contains("Assistant: ")));
}

#[test]
fn tricky_text_matches() {
    let (hf, gg) = (common::hf(), common::gguf());
    for text in common::TRICKY {
        assert_same(&hf, &gg, text);
    }
}

#[test]
fn special_tokens_in_text_are_parsed() {
    let tok = common::gguf();
    let ids = tok
        .encode("a<|eot_id|>b<|end_of_text|>", false)
        .expect("encode");
    assert!(ids.contains(&4) && ids.contains(&1), "{ids:?}");
    assert_eq!(tok.decode(&ids, true).expect("decode"), "ab");
}

#[test]
fn every_validation_line_matches() {
    let (hf, gg) = (common::hf(), common::gguf());
    let val =
        std::fs::read_to_string(common::kjv_dir().join("data/val.txt")).expect("read val.txt");
    let mut lines = 0;
    for line in val.lines() {
        assert_same(&hf, &gg, line);
        lines += 1;
    }
    assert!(lines > 400);
    // And the whole file at once (newlines between verses).
    assert_same(&hf, &gg, &val);
}

/// 2B4T's official GGUF has no `tokenizer.ggml.pre`, and a converter may write
/// "default": both must still tokenize as Llama 3 for a Llama 3 vocabulary.
#[test]
fn missing_or_default_pre_uses_llama3_for_llama3_vocab() {
    let hf = common::hf();
    for pre in [
        None,
        Some("default".to_string()),
        Some("llama3".to_string()),
    ] {
        let v = GgufVocab {
            pre,
            ..common::gguf_vocab()
        };
        let gg = Tokenizer::from_gguf_vocab(&v).expect("builds");
        for text in common::TRICKY {
            assert_same(&hf, &gg, text);
        }
    }
}

#[test]
fn bad_vocab_is_a_clear_error() {
    let base = common::gguf_vocab();
    let unsupported = GgufVocab {
        model: "bert".into(),
        ..base.clone()
    };
    let err = Tokenizer::from_gguf_vocab(&unsupported)
        .expect_err("bert is unsupported")
        .to_string();
    assert!(err.contains("bert"), "{err}");

    let bad_pre = GgufVocab {
        pre: Some("klingon".into()),
        ..base.clone()
    };
    let err = Tokenizer::from_gguf_vocab(&bad_pre)
        .expect_err("unknown pre")
        .to_string();
    assert!(err.contains("klingon"), "{err}");

    let mut dup = base.clone();
    dup.tokens[10] = dup.tokens[11].clone();
    let err = Tokenizer::from_gguf_vocab(&dup)
        .expect_err("duplicate token")
        .to_string();
    assert!(err.contains("duplicate"), "{err}");

    let bad_bos = GgufVocab {
        bos_id: Some(99_999),
        ..base
    };
    let err = Tokenizer::from_gguf_vocab(&bad_bos)
        .expect_err("bos out of range")
        .to_string();
    assert!(
        err.contains("bos_token_id") && err.contains("99999"),
        "{err}"
    );
}

/// Pieces that stress the regex and the merges, glued at random.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z]{1,8}",
        "[ \t\r\n]{1,4}",
        "[0-9]{1,9}",
        Just("'s".to_string()),
        Just("'LL".to_string()),
        Just("'Re".to_string()),
        Just("<|eot_id|>".to_string()),
        Just("<|begin_of_text|>".to_string()),
        Just("<|".to_string()),
        Just("👨‍👩‍👧".to_string()),
        Just("e\u{301}".to_string()),
        "[!-/:-@\\[-`{-~]{1,3}",
        "\\PC{1,4}",
        any::<char>().prop_map(String::from),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(fragment(), 0..16).prop_map(|v| v.concat()),
        "\\PC{0,40}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_text_matches(s in text()) {
        thread_local! {
            static TOKS: (Tokenizer, Tokenizer) = (common::hf(), common::gguf());
        }
        TOKS.with(|(hf, gg)| {
            let a = hf.encode(&s, true).expect("hf encode");
            let b = gg.encode(&s, true).expect("gguf encode");
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(gg.decode(&b, false).expect("decode"), {
                // add_bos=true prepends BOS unless the text starts with it.
                if s.starts_with("<|begin_of_text|>") { s.clone() } else { format!("<|begin_of_text|>{s}") }
            });
            Ok(())
        })?;
    }
}
