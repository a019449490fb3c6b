//! GGUF model "llama" (SentencePiece with scores): the rebuilt tokenizer agrees
//! with a direct transcription of llama.cpp's SPM algorithm on a small vocabulary.

use bitnet_tokenizers::{token_type, GgufVocab, Tokenizer};
use proptest::prelude::*;

const PIECES: &[&str] = &[
    "▁", "a", "b", "c", "d", "e", "t", "h", "\n", "▁a", "▁b", "▁t", "ab", "bc", "cd", "de", "th",
    "he", "aa", "▁ab", "abc", "bcd", "▁abc", "the", "▁the", "▁th", "ed", "▁d", "dd", "▁▁", "▁\n",
    "cab", "▁c",
];

/// `<unk>`, `<s>`, `</s>`, 256 byte tokens, then the pieces with distinct scores
/// that do not follow id order (so ranking by score is really exercised).
fn vocab() -> GgufVocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![
        token_type::UNKNOWN,
        token_type::CONTROL,
        token_type::CONTROL,
    ];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(token_type::BYTE);
        scores.push(0.0);
    }
    for (i, p) in PIECES.iter().enumerate() {
        tokens.push((*p).to_string());
        types.push(token_type::NORMAL);
        // Deterministic scrambled scores, all distinct.
        scores.push(-(((i * 37) % PIECES.len()) as f32));
    }
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

/// llama.cpp `llm_tokenizer_spm_session::tokenize` for text without special
/// tokens: space prefix, spaces to `▁`, then repeatedly merge the adjacent pair
/// whose concatenation is a token with the best score (leftmost on ties), and
/// emit unknown symbols as byte tokens.
fn llama_cpp_spm(v: &GgufVocab, text: &str) -> Vec<u32> {
    if text.is_empty() {
        return Vec::new();
    }
    let lookup = |s: &str| v.tokens.iter().position(|t| t == s);
    let scores = v.scores.as_deref().expect("scores");
    let escaped = format!(" {text}").replace(' ', "▁");
    let mut symbols: Vec<String> = escaped.chars().map(String::from).collect();
    loop {
        let mut best: Option<(f32, usize)> = None;
        for i in 0..symbols.len().saturating_sub(1) {
            if let Some(id) = lookup(&format!("{}{}", symbols[i], symbols[i + 1])) {
                if best.is_none_or(|(s, _)| scores[id] > s) {
                    best = Some((scores[id], i));
                }
            }
        }
        let Some((_, i)) = best else { break };
        let right = symbols.remove(i + 1);
        symbols[i].push_str(&right);
    }
    let mut out = Vec::new();
    for s in symbols {
        match lookup(&s) {
            Some(id) => out.push(id as u32),
            None => {
                for b in s.bytes() {
                    out.push(lookup(&format!("<0x{b:02X}>")).expect("byte token") as u32);
                }
            }
        }
    }
    out
}

#[test]
fn fixed_examples() {
    let v = vocab();
    let tok = Tokenizer::from_gguf_vocab(&v).expect("builds");
    assert!(tok.add_bos_default());
    for text in [
        "the cab",
        "abcd de",
        "a",
        "  two spaces",
        "é unknown",
        "x",
        "line\nnext",
        "\n",
    ] {
        assert_eq!(
            tok.encode(text, false).expect("encode"),
            llama_cpp_spm(&v, text),
            "{text:?}"
        );
        let ids = tok.encode(text, true).expect("encode");
        assert_eq!(ids[0], 1);
        assert_eq!(tok.decode(&ids, true).expect("decode"), text, "{text:?}");
    }
    // A space prefix goes before every text segment, also after a special token.
    let ids = tok.encode("ab<s>ab", false).expect("encode");
    let ab = llama_cpp_spm(&v, "ab");
    assert_eq!(ids, [ab.clone(), vec![1], ab].concat());
}

#[test]
fn streaming_matches_decode() {
    let tok = Tokenizer::from_gguf_vocab(&vocab()).expect("builds");
    for text in ["the cab é 🙂 中", " leading", "abc\n\nde"] {
        let ids = tok.encode(text, true).expect("encode");
        let mut dec = tok.stream_decoder();
        let chunks: Vec<String> = ids.iter().map(|&id| dec.push(id).expect("push")).collect();
        let tail = dec.finish().expect("finish");
        assert_eq!(
            chunks.concat() + &tail,
            tok.decode(&ids, true).expect("decode")
        );
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    }
}

/// Logprobs report each token's bytes: `▁the` is " the" even though decoding it alone gives
/// "the" (the decoder strips the space that starts a text), byte tokens are their byte, and
/// the bytes of a continuation concatenate to its text.
#[test]
fn token_bytes_keep_the_word_space() {
    let tok = Tokenizer::from_gguf_vocab(&vocab()).expect("builds");
    let id = |s: &str| tok.token_to_id(s).expect("in vocab");
    assert_eq!(tok.token_bytes(id("▁the")).expect("token"), b" the");
    assert_eq!(tok.token_bytes(id("▁▁")).expect("token"), b"  ");
    assert_eq!(tok.token_bytes(id("the")).expect("token"), b"the");
    assert_eq!(tok.token_bytes(id("<0xC3>")).expect("token"), [0xC3]);
    assert_eq!(tok.token_bytes(id("<s>")).expect("token"), b"<s>");
    for text in [
        "the cab",
        "abcd de",
        "  two spaces",
        "é unknown 🙂",
        "line\nnext",
    ] {
        let ids = tok.encode(text, false).expect("encode");
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| tok.token_bytes(id).expect("token"))
            .collect();
        // SentencePiece writes a space before the text; decoding strips it again.
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            format!(" {}", tok.decode(&ids, false).expect("decode")),
            "{text:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn matches_llama_cpp_algorithm(text in "[abcdeth \n]{0,24}") {
        let v = vocab();
        let tok = Tokenizer::from_gguf_vocab(&v).expect("builds");
        prop_assert_eq!(tok.encode(&text, false).expect("encode"), llama_cpp_spm(&v, &text));
    }
}
