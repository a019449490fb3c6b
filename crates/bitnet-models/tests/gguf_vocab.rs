//! The vocabulary embedded in the shared bitnet.cpp GGUF (read by `vocab_from_gguf`) builds a
//! tokenizer that agrees with Hugging Face `tokenizers` on the folder's tokenizer.json: same
//! ids on hard text and on every validation line, same special tokens, same chat template.

mod common;

use bitnet_gguf::GgufFile;
use bitnet_models::gguf_load::vocab_from_gguf;
use bitnet_tokenizers::{ChatMessage, GgufVocab, Tokenizer};
use common::*;
use std::sync::OnceLock;

fn gguf_vocab() -> &'static GgufVocab {
    static V: OnceLock<GgufVocab> = OnceLock::new();
    V.get_or_init(|| {
        let file = GgufFile::open(&kjv_gguf()).expect("shared GGUF opens");
        vocab_from_gguf(&file).expect("GGUF has a tokenizer")
    })
}

struct Toks {
    hf: Tokenizer,
    gg: Tokenizer,
}

fn toks() -> &'static Toks {
    static T: OnceLock<Toks> = OnceLock::new();
    T.get_or_init(|| Toks {
        hf: Tokenizer::from_hf_dir(&kjv_dir()).expect("tokenizer.json loads"),
        gg: Tokenizer::from_gguf_vocab(gguf_vocab()).expect("GGUF vocab builds"),
    })
}

/// Same ids from both tokenizers, with and without BOS; the same ids as HF `tokenizers`' own
/// pipeline (`encode(text, add_special_tokens)`); and a lossless decode.
fn assert_same(text: &str) {
    let Toks { hf, gg } = toks();
    for add_bos in [false, true] {
        let a = hf.encode(text, add_bos).expect("hf encode");
        let b = gg.encode(text, add_bos).expect("gguf encode");
        assert_eq!(a, b, "ids differ for {text:?} (add_bos {add_bos})");
    }
    // HF's post-processor (TemplateProcessing) prepends BOS unconditionally; ours does not
    // double it when the text starts with it, so compare the two only where they agree.
    let ours = gg.encode(text, true).expect("encode");
    if !text.starts_with("<|begin_of_text|>") {
        let theirs = hf.backend().encode(text, true).expect("tokenizers encode");
        assert_eq!(
            ours,
            theirs.get_ids(),
            "vs tokenizers pipeline for {text:?}"
        );
    }
    let ids = gg.encode(text, false).expect("encode");
    assert_eq!(gg.decode(&ids, false).expect("decode"), text, "round trip");
}

const TRICKY: &[&str] = &[
    "",
    " ",
    "  ",
    "a",
    "In the beginning God created the heaven and the earth.",
    // contractions, both cases (the regex is case-insensitive for them)
    "I'm sure you're right; he'll say we'd've, they've, it's, don't. I'M YOU'RE HE'LL IT'S DON'T",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D ''s",
    // digits: the regex splits runs into groups of up to three
    "1 12 123 1234 12345 1234567890 3.14159 1,000,000 2024-11-25 0x1F ١٢٣٤ ①②③ ½",
    "Genesis 1:1, Revelation 22:21",
    // whitespace runs and line endings
    "   leading and trailing spaces   ",
    "multiple     spaces     between",
    "tabs\tand\t\ttabs \t mixed\t",
    "line one\nline two\r\nline three\r\n\r\n\n\nend\n",
    "\n",
    "\r\n",
    "\r",
    "\n\n\n",
    " \n \n ",
    "\t\n\r\n \u{b}\u{c}",
    "word\r\nword\rword\n\nword",
    // Unicode
    "中文字符测试：你好，世界！",
    "日本語のテキストとカタカナ",
    "한국어 텍스트",
    "café naïve résumé façade Ångström",
    "e\u{301} a\u{308} combining: n\u{303} o\u{302}\u{323}",
    "עברית ושלום مرحبا بالعالم",
    "Ελληνικά и русский текст",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐀𝐁𝐂 ſ",
    "\u{0}\u{1}\u{7f} controls \u{85}\u{a0}\u{2028}\u{feff}",
    "non-breaking\u{a0}space and\u{2003}em space",
    // emoji, including ZWJ sequences, skin tones, flags and variation selectors
    "emoji 🙂😀🎉",
    "family 👨‍👩‍👧‍👦 and 🧑🏽‍💻 and 🏳️‍🌈",
    "👍🏻👍🏿 🇺🇸🇯🇵 ❤️ ☺︎",
    // special tokens written in the text
    "<|begin_of_text|>User: Who is the Lord?<|eot_id|>Assistant: ",
    "special in the middle<|eot_id|>and<|end_of_text|>again",
    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<|eot_id|><|eot_id|>",
    "almost special <|eot_id| and <eot_id|> and <|unknown|> and < |eot_id|>",
    "<|begin_of_text|><|begin_of_text|>",
    // punctuation and code
    "punctuation!!! ??? ... --- ((( ))) [[[ ]]] {{{ }}} ### @@@ $$$",
    "URL: https://example.com/path?q=1&r=2#frag",
    "code: fn main() { println!(\"{}\", x + 1); }",
    "And he said, Lo, I come: to do thy will, O God.",
];

#[test]
fn gguf_vocab_has_the_expected_shape() {
    let v = gguf_vocab();
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
    assert!(types[..5].iter().all(|&t| t == 3), "ids 0-4 are control");
    assert!(!v.merges.is_empty());
    assert_eq!((v.bos_id, v.eos_id, v.eot_id), (Some(0), Some(1), Some(4)));
    assert_eq!(v.add_bos, Some(true));
}

#[test]
fn token_strings_match_tokenizer_json() {
    let Toks { hf, gg } = toks();
    assert_eq!(hf.vocab_size(), 4096);
    assert_eq!(gg.vocab_size(), 4096);
    for id in 0..4096u32 {
        assert_eq!(gg.id_to_token(id), hf.id_to_token(id), "token {id}");
    }
}

#[test]
fn special_ids_and_stop_ids() {
    let Toks { hf, gg } = toks();
    for (label, t) in [("hf", hf), ("gguf", gg)] {
        assert_eq!(t.bos_id(), Some(0), "{label} bos");
        assert_eq!(t.eos_id(), Some(1), "{label} eos");
        assert_eq!(t.stop_ids(), [1, 4], "{label} stop ids");
        assert!(t.add_bos_default(), "{label} adds BOS");
        assert_eq!(t.bos_token(), Some("<|begin_of_text|>"), "{label}");
        assert_eq!(t.eos_token(), Some("<|end_of_text|>"), "{label}");
    }
}

#[test]
fn tricky_text_gives_identical_ids() {
    for text in TRICKY {
        assert_same(text);
    }
    // Glued together, so pieces interact across boundaries.
    assert_same(&TRICKY.concat());
    assert_eq!(toks().gg.encode("", true).unwrap(), [0]);
    assert!(toks().gg.encode("", false).unwrap().is_empty());
}

#[test]
fn embedded_special_tokens_are_single_ids() {
    let gg = &toks().gg;
    let ids = gg.encode("a<|eot_id|>b<|end_of_text|>", false).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 4).count(), 1, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 1, "{ids:?}");
    assert_eq!(gg.decode(&ids, true).unwrap(), "ab");
    // With add_bos, text that already starts with BOS does not get a second one.
    let ids = gg.encode("<|begin_of_text|>x", true).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 0).count(), 1, "{ids:?}");
}

#[test]
fn every_validation_line_gives_identical_ids() {
    let text = std::fs::read_to_string(kjv_dir().join("data/val.txt")).expect("val.txt");
    let mut n = 0;
    for line in text.lines() {
        assert_same(line);
        assert_same(&format!("{line}\n"));
        n += 1;
    }
    assert_eq!(n, 404, "Revelation has 404 verses");
    assert_same(&text);
}

#[test]
fn reference_prompts_tokenize_to_reference_ids() {
    let gg = &toks().gg;
    for p in reference_json()["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        // The chat prompt already holds BOS (rendered template); the others get it added.
        let ids = gg.encode(text, p["name"] != "chat").unwrap();
        assert_eq!(ids, ids_of(&p["token_ids"]), "{}", p["name"]);
    }
}

#[test]
fn chat_template_is_present_and_renders_the_reference_prompt() {
    let Toks { hf, gg } = toks();
    let t = gg
        .chat_template()
        .expect("GGUF has tokenizer.chat_template");
    assert_eq!(
        Some(t),
        hf.chat_template(),
        "same template as tokenizer_config.json"
    );
    let chat = ref_prompt("chat");
    let messages: Vec<ChatMessage> = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let rendered = gg.apply_chat_template(&messages, true).unwrap();
    assert_eq!(rendered, chat["text"].as_str().unwrap());
    assert_eq!(
        gg.encode_chat(&messages, true).unwrap(),
        ids_of(&chat["token_ids"])
    );
    // Without the generation prompt, no "Assistant: " suffix.
    let no_gen = gg.apply_chat_template(&messages, false).unwrap();
    assert_eq!(no_gen, "<|begin_of_text|>User: Who is the Lord?<|eot_id|>");
}

#[test]
fn loaded_gguf_model_uses_the_embedded_vocab() {
    // `bitnet_models::load` on the GGUF picks the embedded vocabulary and keeps it for export.
    let m = bitnet_models::load(&kjv_gguf(), None).expect("loads");
    let v = m.vocab.as_ref().expect("vocab kept");
    assert_eq!(v.tokens, gguf_vocab().tokens);
    assert_eq!(v.merges, gguf_vocab().merges);
    assert_eq!(
        m.tokenizer.encode("In the beginning", true).unwrap(),
        ids_of(&ref_prompt("in_the_beginning")["token_ids"])
    );
}
