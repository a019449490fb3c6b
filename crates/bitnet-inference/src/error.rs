#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] bitnet_models::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] bitnet_tokenizers::TokenizerError),
    #[error("the prompt has {prompt} tokens but the context holds {ctx}; use a larger --ctx-size or a shorter prompt")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the context of {ctx} tokens is full")]
    ContextFull { ctx: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    /// Input that cannot be used as it is (an empty text to score, a line longer than the
    /// context).
    #[error("{0}")]
    BadInput(String),
    /// A result that is NaN or infinite: the model's numbers are broken, whatever it prints.
    #[error("{what} is {value}: the model computes non-finite numbers")]
    NotFinite { what: &'static str, value: f64 },
    #[error("invalid setting: {0}")]
    Settings(String),
    #[error("thread pool: {0}")]
    ThreadPool(String),
    /// The device cannot be used (no driver or GPU, a build without its support), cannot run
    /// this model or setting, or failed while running (out of device memory, a launch error).
    #[error(transparent)]
    Backend(#[from] bitnet_backend::BackendError),
}

pub type Result<T> = std::result::Result<T, EngineError>;
