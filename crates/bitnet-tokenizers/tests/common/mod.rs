//! Shared helpers for the integration tests: the KJV model folder and the two
//! ways of building its tokenizer.
#![allow(dead_code)]

use std::path::PathBuf;

use bitnet_tokenizers::{GgufVocab, Tokenizer};

/// The shared KJV model folder (tokenizer.json, tokenizer_config.json, ...).
pub fn kjv_dir() -> PathBuf {
    PathBuf::from("/work/shared/models/bitnet-b1.58-kjv")
}

/// The tokenizer as loaded from tokenizer.json (HF `tokenizers` itself).
pub fn hf() -> Tokenizer {
    Tokenizer::from_hf_dir(&kjv_dir()).expect("KJV tokenizer.json loads")
}

/// The tokenizer rebuilt from the GGUF form of the same folder.
pub fn gguf() -> Tokenizer {
    Tokenizer::from_gguf_vocab(&gguf_vocab()).expect("GGUF vocab builds")
}

pub fn gguf_vocab() -> GgufVocab {
    GgufVocab::from_hf_dir(&kjv_dir()).expect("KJV folder converts to GGUF form")
}

/// A fresh empty directory under the system temp dir.
pub fn empty_temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bitnet-tokenizers-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Text exercising the corners of byte-level BPE and the Llama 3 regex.
pub const TRICKY: &[&str] = &[
    "",
    " ",
    "a",
    "In the beginning God created the heaven and the earth.",
    "Hello, world! How's it going? I'LL SEE YOU'RE fine; we'd've, they'Ve",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D",
    "1234567 12 123 1234 0.5 3,141,592 ١٢٣ ①②③",
    "   leading and trailing spaces   ",
    "tabs\tand\t\ttabs \t mixed",
    "line one\nline two\r\nline three\r\n\r\n\n\nend\n",
    "trailing newline\n",
    "\n",
    "\r\n",
    "  \n  \n",
    "multiple     spaces     between",
    "中文字符测试：你好，世界！",
    "日本語のテキストとカタカナ",
    "한국어 텍스트",
    "café naïve résumé façade Ångström",
    "e\u{301} a\u{308} combining marks: n\u{303} o\u{302}\u{323}",
    "עברית ושלום مرحبا بالعالم",
    "Ελληνικά и русский текст",
    "emoji 🙂😀🎉 flags 🇺🇸🇯🇵",
    "family 👨‍👩‍👧‍👦 and 🧑🏽‍💻 ZWJ sequences 🏳️‍🌈",
    "skin tones 👍🏻👍🏿",
    "<|begin_of_text|>User: Who is the Lord?<|eot_id|>Assistant: ",
    "special in the middle<|eot_id|>and<|end_of_text|>again",
    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "almost special <|eot_id| and <eot_id|> and <|unknown|>",
    "<|begin_of_text|><|begin_of_text|>",
    "punctuation!!! ??? ... --- ((( ))) [[[ ]]] {{{ }}} ### @@@ $$$",
    "URL: https://example.com/path?q=1&r=2#frag",
    "code: fn main() { println!(\"{}\", x + 1); }",
    "\u{0}\u{1}\u{7f} control chars \u{85}\u{a0}\u{2028}\u{feff}",
    "non-breaking\u{a0}space and\u{2003}em space",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 mathematical 𝐀𝐁𝐂 and ſ long s 'ſ",
];
