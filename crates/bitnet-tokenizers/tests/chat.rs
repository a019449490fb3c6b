//! Chat template rendering and the error cases: no template, no tokenizer.json.

mod common;

use bitnet_tokenizers::{ChatMessage, GgufVocab, Tokenizer, TokenizerError};

#[test]
fn kjv_template_renders_like_transformers() {
    for tok in [common::hf(), common::gguf()] {
        let one = [ChatMessage::new("user", "Who is the Lord?")];
        assert_eq!(
            tok.apply_chat_template(&one, true).expect("render"),
            "<|begin_of_text|>User: Who is the Lord?<|eot_id|>Assistant: "
        );
        assert_eq!(
            tok.apply_chat_template(&one, false).expect("render"),
            "<|begin_of_text|>User: Who is the Lord?<|eot_id|>"
        );
        // Roles are capitalized, content is trimmed, BOS only before the first message.
        let conv = [
            ChatMessage::new("system", "  Answer in the style of the KJV.\n"),
            ChatMessage::new("user", "Who is the Lord?"),
            ChatMessage::new("assistant", "The LORD is my shepherd."),
            ChatMessage::new("user", "And then?"),
        ];
        assert_eq!(
            tok.apply_chat_template(&conv, true).expect("render"),
            "<|begin_of_text|>System: Answer in the style of the KJV.<|eot_id|>User: Who is the Lord?<|eot_id|>\
             Assistant: The LORD is my shepherd.<|eot_id|>User: And then?<|eot_id|>Assistant: "
        );
        // The rendered prompt is encoded without a second BOS.
        let ids = tok.encode_chat(&conv, true).expect("encode");
        assert_eq!(ids.iter().filter(|&&i| i == 0).count(), 1);
        assert_eq!(ids[0], 0);
        assert_eq!(ids.iter().filter(|&&i| i == 4).count(), 4);
    }
}

#[test]
fn chat_message_serde_round_trip() {
    let m: ChatMessage = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).expect("parse");
    assert_eq!(m, ChatMessage::new("user", "hi"));
    assert_eq!(
        serde_json::to_string(&m).expect("serialize"),
        r#"{"role":"user","content":"hi"}"#
    );
}

#[test]
fn missing_template_is_a_clear_error() {
    let v = GgufVocab {
        chat_template: None,
        ..common::gguf_vocab()
    };
    let tok = Tokenizer::from_gguf_vocab(&v).expect("builds");
    assert!(tok.chat_template().is_none());
    let err = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .expect_err("no template");
    assert!(matches!(err, TokenizerError::NoChatTemplate));
    assert!(err.to_string().contains("no chat template"), "{err}");
}

#[test]
fn template_errors_are_reported() {
    let v = GgufVocab {
        chat_template: Some("{% if messages[0].role != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}".into()),
        ..common::gguf_vocab()
    };
    let tok = Tokenizer::from_gguf_vocab(&v).expect("builds");
    let err = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .expect_err("raises");
    assert!(
        err.to_string().contains("first message must be system"),
        "{err}"
    );

    let broken = GgufVocab {
        chat_template: Some("{% for m in messages %}".into()),
        ..common::gguf_vocab()
    };
    // A template that does not compile is the model's fault, found when the tokenizer loads.
    let tok = Tokenizer::from_gguf_vocab(&broken).expect("builds");
    assert!(tok.chat_template_error().is_some());
    let err = tok
        .apply_chat_template(&[], true)
        .expect_err("syntax error");
    assert!(matches!(err, TokenizerError::InvalidTemplate(_)), "{err}");
    assert!(err.to_string().contains("syntax error"), "{err}");
}

#[test]
fn llama3_style_template_with_trim_and_strftime() {
    // Block tags on their own lines: transformers' trim_blocks/lstrip_blocks drop the
    // newline after each tag (expected output checked against Python jinja2).
    let template = "{{- bos_token }}\n{%- set date = strftime_now('%d %b %Y') %}\n{% for m in messages %}\n<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>\n{% endfor %}\n{% if add_generation_prompt %}\n<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}\n";
    let v = GgufVocab {
        chat_template: Some(template.into()),
        ..common::gguf_vocab()
    };
    let tok = Tokenizer::from_gguf_vocab(&v).expect("builds");
    let out = tok
        .apply_chat_template(&[ChatMessage::new("user", " hi ")], true)
        .expect("render");
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\n<|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn missing_tokenizer_json_names_the_path() {
    let dir = common::empty_temp_dir("missing");
    let expected = dir.join("tokenizer.json");
    for err in [
        Tokenizer::from_hf_dir(&dir).expect_err("no tokenizer.json"),
        GgufVocab::from_hf_dir(&dir).expect_err("no tokenizer.json"),
    ] {
        match &err {
            TokenizerError::Missing(p) => assert_eq!(p, &expected),
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&expected.display().to_string()),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokenizer_json_alone_is_enough() {
    // Without tokenizer_config.json / generation_config.json: BOS comes from the
    // post-processor, no EOS text, no template.
    let dir = common::empty_temp_dir("alone");
    std::fs::copy(
        common::kjv_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("copy");
    let tok = Tokenizer::from_hf_dir(&dir).expect("loads");
    assert_eq!(tok.bos_id(), Some(0));
    assert!(tok.add_bos_default());
    assert_eq!(tok.eos_id(), None);
    assert_eq!(tok.stop_ids(), &[4]);
    assert!(tok.chat_template().is_none());
    assert_eq!(
        tok.encode("In the beginning", true).expect("encode"),
        [0, 1145, 263, 2112]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_tokenizer_json_is_a_clear_error() {
    let dir = common::empty_temp_dir("corrupt");
    std::fs::write(dir.join("tokenizer.json"), "{ not json").expect("write");
    let err = Tokenizer::from_hf_dir(&dir).expect_err("bad json");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
