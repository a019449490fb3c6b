//! StreamDecoder: chunks concatenate to `decode`, and never carry a replacement
//! character that the full text does not have (no UTF-8 character is split).

mod common;

use bitnet_tokenizers::Tokenizer;
use proptest::prelude::*;

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> (Vec<String>, String) {
    let mut dec = tok.stream_decoder_with(skip_special);
    let chunks = ids.iter().map(|&id| dec.push(id).expect("push")).collect();
    let tail = dec.finish().expect("finish");
    (chunks, tail)
}

fn check_text(tok: &Tokenizer, text: &str) {
    let ids = tok.encode(text, true).expect("encode");
    for skip_special in [false, true] {
        let (chunks, tail) = stream(tok, &ids, skip_special);
        let full = tok.decode(&ids, skip_special).expect("decode");
        assert_eq!(chunks.concat() + &tail, full, "{text:?}");
        if !full.contains('\u{FFFD}') {
            assert!(
                chunks.iter().all(|c| !c.contains('\u{FFFD}')),
                "{text:?}: {chunks:?}"
            );
            assert!(
                tail.is_empty(),
                "{text:?}: text held back until finish: {tail:?}"
            );
        }
    }
}

const SAMPLES: &[&str] = &[
    "emoji 🙂😀🎉 and 👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏿",
    "中文字符测试：你好，世界！日本語のテキスト。한국어",
    "And God said, Let there be light: and there was light.",
    "mixed: café 🙂 中 e\u{301} 𝔘𝔫𝔦\n\t end",
    "<|begin_of_text|>User: 你好<|eot_id|>Assistant: 🙂",
];

#[test]
fn chunks_concatenate_to_decode() {
    for tok in [common::hf(), common::gguf()] {
        for text in SAMPLES.iter().chain(common::TRICKY) {
            check_text(&tok, text);
        }
    }
}

#[test]
fn multibyte_characters_wait_for_their_last_byte() {
    let tok = common::hf();
    // The KJV vocabulary has no CJK merges, so each character is 3 byte tokens.
    let ids = tok.encode("世界", false).expect("encode");
    assert_eq!(ids.len(), 6, "{ids:?}");
    let (chunks, tail) = stream(&tok, &ids, true);
    assert_eq!(chunks, ["", "", "世", "", "", "界"]);
    assert_eq!(tail, "");
}

#[test]
fn default_stream_skips_special_tokens() {
    let tok = common::hf();
    let ids = tok
        .encode("<|begin_of_text|>Amen.<|eot_id|>", false)
        .expect("encode");
    let mut dec = tok.stream_decoder();
    let text: String = ids.iter().map(|&id| dec.push(id).expect("push")).collect();
    assert_eq!(text + &dec.finish().expect("finish"), "Amen.");
}

#[test]
fn incomplete_tail_is_flushed_like_decode() {
    let tok = common::hf();
    let ids = tok.encode("界", false).expect("encode");
    let cut = &ids[..ids.len() - 1];
    let (chunks, tail) = stream(&tok, cut, false);
    assert_eq!(chunks.concat(), "");
    assert_eq!(tail, tok.decode(cut, false).expect("decode"));
    assert_eq!(tail, "\u{FFFD}");
}

#[test]
fn out_of_range_id_is_an_error() {
    let tok = common::hf();
    assert!(tok.stream_decoder().push(4096).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Arbitrary id sequences, including ones that form invalid UTF-8.
    #[test]
    fn random_ids_stream_like_decode(ids in prop::collection::vec(0u32..4096, 0..40), skip in any::<bool>()) {
        thread_local! {
            static TOK: Tokenizer = common::gguf();
        }
        TOK.with(|tok| {
            let (chunks, tail) = stream(tok, &ids, skip);
            prop_assert_eq!(chunks.concat() + &tail, tok.decode(&ids, skip).expect("decode"));
            Ok(())
        })?;
    }
}

#[test]
fn token_bytes_concatenate_to_the_text() {
    for tok in [common::hf(), common::gguf()] {
        for text in SAMPLES.iter().chain(common::TRICKY) {
            let ids = tok.encode(text, false).expect("encode");
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&id| tok.token_bytes(id).expect("token"))
                .collect();
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                tok.decode(&ids, false).expect("decode"),
                "{text:?}"
            );
        }
        // A CJK character is three byte tokens here: each carries one raw byte, not U+FFFD.
        let ids = tok.encode("世", false).expect("encode");
        let parts: Vec<Vec<u8>> = ids.iter().map(|&id| tok.token_bytes(id).unwrap()).collect();
        assert_eq!(parts, [vec![0xE4], vec![0xB8], vec![0x96]]);
        assert_eq!(tok.token_bytes(u32::MAX), None);
    }
}
