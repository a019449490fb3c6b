//! Tokenizers for bitnet-rs.
//!
//! One [`Tokenizer`] type, built either from a Hugging Face folder
//! (`tokenizer.json` and friends, [`Tokenizer::from_hf_dir`]) or from the
//! `tokenizer.ggml.*` metadata of a GGUF file ([`GgufVocab`],
//! [`Tokenizer::from_gguf_vocab`]). Both routes run the Hugging Face `tokenizers`
//! engine, so a GGUF vocabulary tokenizes exactly like the tokenizer.json it was
//! converted from. On top of that: BOS/EOS/stop-id bookkeeping, chat templates
//! (minijinja) and a streaming detokenizer that never splits a UTF-8 character.
//!
//! This crate does not parse GGUF: the model loader copies the metadata into
//! [`GgufVocab`].

mod byte_level;
mod capped;
mod chat;
mod error;
mod gguf_build;
mod gguf_vocab;
mod hf_files;
mod input_bound;
mod pretokenizer;
mod specials;
mod stream;
mod tojson;
mod tokenizer;

pub use chat::{render_chat_template, ChatMessage};
pub use error::TokenizerError;
pub use gguf_vocab::{token_type, GgufVocab};
pub use stream::StreamDecoder;
pub use tokenizer::Tokenizer;
