//! Error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer, encoding, decoding or
/// rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required file (usually `tokenizer.json`) is not there.
    #[error("tokenizer file not found: {}", .0.display())]
    Missing(PathBuf),

    /// A file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (tokenizer.json, tokenizer_config.json, generation_config.json)
    /// is not valid JSON or does not have the expected shape.
    #[error("invalid {}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },

    /// The tokenizer kind, pre-tokenizer or feature is known but not implemented.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),

    /// The vocabulary / metadata is inconsistent (bad ids, duplicate tokens,
    /// merges naming unknown tokens, ...).
    #[error("invalid tokenizer vocabulary: {0}")]
    InvalidVocab(String),

    /// An error reported by the Hugging Face `tokenizers` library.
    #[error("tokenizer error: {0}")]
    Backend(String),

    /// A token id outside the vocabulary was passed to decode.
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    UnknownId { id: u32, vocab_size: usize },

    /// `apply_chat_template` was called but the tokenizer has no template.
    #[error(
        "this tokenizer has no chat template (tokenizer_config.json `chat_template`, \
         chat_template.jinja, or GGUF `tokenizer.chat_template`)"
    )]
    NoChatTemplate,

    /// The chat template failed to compile or render (includes `raise_exception`).
    #[error("chat template error: {0}")]
    Template(String),

    /// The chat template itself is at fault: it does not compile, or it went past the limits
    /// templates render under (work, output size), whether found when the tokenizer loaded or
    /// while rendering. It comes from the model's files, so the model is what needs fixing.
    #[error("invalid chat template: {0}")]
    InvalidTemplate(String),

    /// Text that cannot fit the context however it tokenizes, refused before tokenizing it
    /// (see [`Tokenizer::max_input_bytes`](crate::Tokenizer::max_input_bytes)).
    #[error("input too large for the context: {0}")]
    InputTooLarge(String),
}

impl TokenizerError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        TokenizerError::Backend(e.to_string())
    }
}
