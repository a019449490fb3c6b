//! Builds a tokenizer from the `tokenizer.*` metadata of arbitrary GGUF bytes, as the model
//! loader does, then uses it: encode (bounded and not), decode, stream, chat template. A vocab
//! the builder accepts must tokenize self-consistently; one it cannot afford must be refused
//! (issue 13: merges of a vocabulary of every 'a' * n needed 3.9 GB), never panic.
#![no_main]

use bitnet_gguf::{GgufFile, Storage};
use bitnet_models::gguf_load::vocab_from_gguf;
use bitnet_tokenizers::{ChatMessage, Tokenizer};
use libfuzzer_sys::fuzz_target;

const TEXTS: &[&str] = &["In the beginning", " a  b\n\tc", "é😀<s></s>", ""];

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_storage(Storage::from_vec(data.to_vec())) else {
        return;
    };
    let Ok(vocab) = vocab_from_gguf(&file) else {
        return;
    };
    let Ok(tok) = Tokenizer::from_gguf_vocab(&vocab) else {
        return;
    };
    let n = tok.vocab_size();
    for text in TEXTS {
        let Ok(ids) = tok.encode(text, false) else {
            continue;
        };
        assert!(ids.iter().all(|&id| (id as usize) < n), "{ids:?} vs {n}");
        // The byte bound never refuses what fits.
        assert!(tok.encode_within(text, false, ids.len().max(1)).is_ok());
        let text = tok.decode(&ids, false).expect("ids from encode decode");
        let mut stream = tok.stream_decoder_with(false);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id).expect("stream decode"));
        }
        streamed.push_str(&stream.finish().expect("stream finish"));
        assert_eq!(streamed, text);
    }
    if tok.chat_template().is_some() {
        let _ = tok.encode_chat_within(&[ChatMessage::new("user", "hi")], true, 64);
    }
});
