use std::path::PathBuf;

/// Everything that can go wrong turning a file on disk into model weights.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] bitnet_gguf::GgufError),
    #[error(transparent)]
    Quant(#[from] bitnet_quantization::QuantError),
    #[error(transparent)]
    Matrix(#[from] bitnet_quantization::MatrixError),
    #[error(transparent)]
    Tokenizer(#[from] bitnet_tokenizers::TokenizerError),
    #[error("safetensors error in {path}: {message}")]
    SafeTensors { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Config(String),
    #[error("unsupported architecture '{0}' (supported: bitnet-b1.58 / bitnet-25 (2B4T, squared ReLU), bitnet (1bitLLM family, SiLU); HF model_type bitnet)")]
    UnsupportedArch(String),
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor '{name}' has unsupported type {ty} for this role")]
    UnsupportedTensorType { name: String, ty: String },
    #[error("tensor '{name}': {message}")]
    BadTensor { name: String, message: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
