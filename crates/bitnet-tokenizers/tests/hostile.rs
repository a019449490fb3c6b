//! Hostile input (issue 13): chat templates that would panic, hang or exhaust memory, a
//! SentencePiece vocabulary built to make merge reconstruction quadratic, and prompts too large
//! for any context. Each must end in a clear error, fast and small. (The cases run under a
//! memory limit as CLI commands in bitnet-cli's tests/hostile_text.rs.)

mod common;

use bitnet_tokenizers::{token_type, ChatMessage, GgufVocab, Tokenizer, TokenizerError};

fn with_template(template: &str) -> Tokenizer {
    let v = GgufVocab {
        chat_template: Some(template.into()),
        ..common::gguf_vocab()
    };
    Tokenizer::from_gguf_vocab(&v).expect("a bad template does not stop the tokenizer loading")
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", text)]
}

/// Templates from issue 13, each refused when the tokenizer loads (it cannot render even a
/// one-message chat) and again, without running, when used.
const REFUSED_AT_LOAD: &[(&str, &str, &str)] = &[
    (
        "tojson indent 2^63 (was: panic, capacity overflow)",
        "{{ messages | tojson(indent=9223372036854775808) }}",
        "tojson",
    ),
    (
        "tojson indent 1e9 (was: abort, out of memory)",
        "{{ messages | tojson(indent=1000000000) }}",
        "tojson",
    ),
    (
        "three nested range(100000) loops (was: a hang)",
        "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}\
         {% endfor %}{% endfor %}{% endfor %}",
        "fuel",
    ),
    (
        "string doubling (was: abort, out of memory)",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}\
         {% endfor %}{{ ns.s }}",
        "fuel",
    ),
    (
        "an 85 MB render (was: abort, out of memory)",
        "{% for i in range(100000) %}{{ 'x' * 850 }}{% endfor %}",
        "renders more than",
    ),
    (
        "tojson of a list nested 100,000 deep (stack)",
        "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}\
         {% endfor %}{{ ns.x | tojson }}",
        "",
    ),
    (
        "a repeated string as large as minijinja allows, doubled",
        "{% set s = 'x' * 100000000 %}{{ s ~ s }}",
        "fuel",
    ),
    (
        "a lazily repeated list formatted by ~ (was: 25 s per 10^8 items, OOM when nested)",
        "{{ (['x'] * 100000000) ~ '' }}",
        "formats more than",
    ),
    (
        "nested lazy repetition formatted by ~ (was: abort, out of memory)",
        "{{ ([['x'] * 100000000] * 100000000) ~ '' }}",
        "formats more than",
    ),
    (
        "nested lazy repetition joined",
        "{{ [[['x'] * 100000000] * 100000000] | join }}",
        "formats more than",
    ),
    (
        "nested lazy repetition through format",
        "{{ '%s' | format([['x'] * 100000000] * 100000000) }}",
        "formats more than",
    ),
    (
        "nested lazy repetition through a string filter",
        "{{ ([['x'] * 100000000] * 100000000) | lower }}",
        "formats more than",
    ),
    (
        "a large string repeated lazily, emitted",
        "{% set s = 'x' * 1000000 %}{{ [s] * 100000000 }}",
        "",
    ),
    ("does not compile", "{% for m in messages %}", "syntax"),
];

#[test]
fn hostile_templates_are_refused_at_load_and_at_use() {
    for (what, template, needle) in REFUSED_AT_LOAD {
        let tok = with_template(template);
        let why = tok
            .chat_template_error()
            .unwrap_or_else(|| panic!("{what}: accepted at load"));
        assert!(why.contains(needle), "{what}: {why}");
        let err = tok
            .apply_chat_template(&user("hi"), true)
            .expect_err("refused");
        assert!(
            matches!(err, TokenizerError::InvalidTemplate(_)),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains("invalid chat template"), "{err}");
    }
}

#[test]
fn a_template_that_explodes_only_on_longer_chats_fails_when_it_does() {
    // Harmless on the one-message chat checked at load, a hang on two messages.
    let tok = with_template(
        "{% if messages | length > 1 %}{% for a in range(100000) %}{% for b in range(100000) %}\
         {% endfor %}{% endfor %}{% endif %}{{ messages[0].content }}",
    );
    assert_eq!(tok.chat_template_error(), None);
    assert_eq!(
        tok.apply_chat_template(&user("hi"), false).ok().as_deref(),
        Some("hi")
    );
    let two = [
        ChatMessage::new("user", "a"),
        ChatMessage::new("assistant", "b"),
    ];
    let err = tok
        .apply_chat_template(&two, true)
        .expect_err("out of fuel");
    assert!(
        matches!(&err, TokenizerError::InvalidTemplate(m) if m.contains("fuel")),
        "{err:?}"
    );
}

#[test]
fn raise_exception_is_not_mistaken_for_a_bad_template() {
    // Templates that refuse some conversations must still load (Gemma refuses system roles).
    let tok = with_template(
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}\
         {% endif %}{{ messages[0].content }}",
    );
    assert_eq!(tok.chat_template_error(), None);
    let err = tok
        .apply_chat_template(&[ChatMessage::new("system", "x")], true)
        .expect_err("raises");
    assert!(
        matches!(&err, TokenizerError::Template(m) if m.contains("System role not supported")),
        "{err:?}"
    );
}

#[test]
fn limits_grow_with_the_conversation() {
    // A template that copies each message a few times and pretty-prints the chat must work
    // for large inputs: limits scale with the input, they are not a fixed cap.
    let tok = with_template(
        "{% for m in messages %}[{{ m.role }}] {{ m.content }} {{ m.content | upper }}{% endfor %}\
         {{ messages | tojson(indent=2) }}",
    );
    assert_eq!(tok.chat_template_error(), None);
    let big = "In the beginning God created the heaven and the earth. ".repeat(40_000);
    let chat: Vec<ChatMessage> = (0..3)
        .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, &big))
        .collect();
    let out = tok.apply_chat_template(&chat, true).expect("renders");
    assert!(out.len() > 3 * 3 * big.len(), "{}", out.len());
    // Many short messages too.
    let many: Vec<ChatMessage> = (0..5000)
        .map(|i| ChatMessage::new("user", i.to_string()))
        .collect();
    tok.apply_chat_template(&many, true).expect("renders");
}

#[test]
fn a_chat_too_large_to_render_is_input_too_large_not_a_bad_template() {
    // The KJV template on a 50 MB message: past the most fuel any render gets, which is the
    // input's fault. With a context, it is refused before rendering.
    let tok = common::gguf();
    let chat = user(&"In the beginning ".repeat(3 << 20));
    let err = tok.apply_chat_template(&chat, true).expect_err("too large");
    assert!(matches!(err, TokenizerError::InputTooLarge(_)), "{err:?}");
    let err = tok
        .apply_chat_template_within(&chat, true, 1024)
        .expect_err("too large");
    assert!(
        matches!(&err, TokenizerError::InputTooLarge(m) if m.contains("1024 tokens")),
        "{err:?}"
    );
}

#[test]
fn tojson_still_matches_python_json_dumps() {
    let tok = with_template("{{ messages | tojson(indent=4, sort_keys=true) }}");
    assert_eq!(
        tok.apply_chat_template(&user("é\"<"), false)
            .expect("renders"),
        "[\n    {\n        \"content\": \"é\\\"<\",\n        \"role\": \"user\"\n    }\n]"
    );
}

// ---- prompts too large for the context ----

#[test]
fn prompts_that_cannot_fit_are_refused_before_tokenizing() {
    for tok in [common::hf(), common::gguf()] {
        let ctx = 1024;
        let limit = tok.max_input_bytes(ctx);
        // The KJV vocabulary's longest token is a few dozen bytes.
        assert!((ctx..ctx * 256).contains(&limit), "{limit}");
        // 50 MB (issue 13: 6 GB and 28 s to tokenize) is refused at once.
        let huge = "a".repeat(50 << 20);
        let err = tok.encode_within(&huge, true, ctx).expect_err("refused");
        assert!(matches!(err, TokenizerError::InputTooLarge(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("too large for the context") && msg.contains("1024 tokens"),
            "{msg}"
        );
        // One byte over the bound is refused, the bound itself is tokenized.
        let text = "a".repeat(limit);
        assert!(tok.encode_within(&text, true, ctx).is_ok());
        assert!(tok.encode_within(&format!("{text}a"), true, ctx).is_err());
        // The chat template's output is held to the same bound while it renders.
        let err = tok
            .apply_chat_template_within(&user(&text), true, ctx)
            .expect_err("refused");
        assert!(matches!(err, TokenizerError::InputTooLarge(_)), "{err:?}");
        assert!(tok.encode_chat_within(&user("hi"), true, ctx).is_ok());
    }
}

/// No prompt that fits is refused: the densest text there is (the longest token, repeated)
/// still passes the byte bound at exactly its token count.
#[test]
fn the_bound_refuses_no_prompt_that_fits() {
    for tok in [common::hf(), common::gguf(), spm_tokenizer()] {
        let vocab = tok.backend().get_vocab(true);
        let mut by_len: Vec<(&String, &u32)> = vocab.iter().collect();
        by_len.sort_by_key(|(t, id)| (std::cmp::Reverse(t.len()), **id));
        for (_, &id) in by_len.iter().take(20) {
            let piece = tok.decode(&[id], false).expect("decodes");
            if piece.is_empty() {
                continue;
            }
            let text = piece.repeat(50);
            let ids = tok.encode(&text, false).expect("encodes");
            let n = ids.len();
            assert!(
                tok.encode_within(&text, false, n).is_ok(),
                "{text:?}: {} bytes in {n} tokens refused (bound {})",
                text.len(),
                tok.max_input_bytes(n)
            );
        }
    }
}

// ---- SentencePiece merges ----

/// A "llama" vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then `pieces`.
fn spm_vocab(pieces: impl IntoIterator<Item = String>) -> GgufVocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![
        token_type::UNKNOWN,
        token_type::CONTROL,
        token_type::CONTROL,
    ];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([token_type::BYTE; 256]);
    for p in pieces {
        tokens.push(p);
        types.push(token_type::NORMAL);
    }
    let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
    GgufVocab {
        model: "llama".into(),
        tokens,
        token_types: Some(types),
        scores: Some(scores),
        bos_id: Some(1),
        eos_id: Some(2),
        ..GgufVocab::default()
    }
}

fn spm_tokenizer() -> Tokenizer {
    let pieces = [
        "▁",
        "▁the",
        "▁▁▁▁",
        "th",
        "he",
        "the",
        "e",
        "h",
        "t",
        "▁t",
        "▁th",
    ];
    Tokenizer::from_gguf_vocab(&spm_vocab(pieces.iter().map(|s| s.to_string()))).expect("builds")
}

#[test]
fn vocabulary_of_every_split_of_a_long_run_is_refused() {
    // Issue 13: every 'a' * 1..4096 is a token, so every split of every piece is a merge:
    // 3.9 GB and minutes to build from a 17 MB GGUF. Refused from the lengths alone.
    let v = spm_vocab((1..=4096).map(|n| "a".repeat(n)));
    let err = Tokenizer::from_gguf_vocab(&v).expect_err("refused");
    let msg = err.to_string();
    assert!(matches!(err, TokenizerError::InvalidVocab(_)), "{msg}");
    assert!(
        msg.contains("merges") && msg.contains("4096 bytes"),
        "{msg}"
    );
}

#[test]
fn vocabulary_with_many_merges_of_modest_pieces_still_builds() {
    // Every split valid again, but pieces of up to 100 bytes: within the budget, and the
    // merges work (one token for the longest run).
    let v = spm_vocab((1..=100).map(|n| "a".repeat(n)));
    let tok = Tokenizer::from_gguf_vocab(&v).expect("builds");
    let text = "a".repeat(100);
    let ids = tok.encode(&text, false).expect("encodes");
    // The prefix `▁` falls back to its 3 bytes; the run is one token.
    assert_eq!(ids.last(), tok.token_to_id(&text).as_ref(), "{ids:?}");
    assert_eq!(ids.len(), 4, "{ids:?}");
}
