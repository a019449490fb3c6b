//! BitNet b1.58 model files.
//!
//! [`load`] opens a GGUF file (bitnet.cpp's I2_S, llama.cpp's TQ1_0/TQ2_0, F16/F32/BF16) or a
//! Hugging Face checkpoint folder and returns packed ternary weights plus the tokenizer.
//! I2_S weights whose rows are a multiple of 128 stay in the memory map (zero-copy); everything
//! else is repacked once into the kernel layout. [`export`] writes any loaded model back as GGUF.

pub mod config;
pub mod error;
pub mod export;
pub mod finite;
pub mod fixture;
pub mod gguf_load;
pub mod hf_load;
pub mod vocab_fit;
pub mod weights;

pub use config::{Activation, Arch, ModelConfig};
pub use error::{ModelError, Result};
pub use weights::{LayerWeights, ModelWeights, Placement, Role};

use bitnet_gguf::GgufFile;
use bitnet_tokenizers::{GgufVocab, Tokenizer};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    Gguf,
    HfFolder,
}

/// A model ready for the engine.
pub struct LoadedModel {
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
    /// The tokenizer in GGUF form, kept so the model can be re-exported.
    pub vocab: Option<GgufVocab>,
    pub path: PathBuf,
    pub format: SourceFormat,
    /// Size of the model file(s) on disk.
    pub file_bytes: u64,
}

/// Loads a GGUF file or a Hugging Face folder. `tokenizer_dir` overrides where the tokenizer
/// comes from (a folder with `tokenizer.json`); by default GGUF files use their embedded vocab
/// and folders their own `tokenizer.json`. Weights stay in the file mapping where their layout
/// allows ([`Placement::Mapped`]); the engine loads with [`load_with`] and [`Placement::Arena`].
pub fn load(path: &Path, tokenizer_dir: Option<&Path>) -> Result<LoadedModel> {
    load_with(path, tokenizer_dir, Placement::Mapped)
}

/// [`load`] with the weights placed as `placement` says.
pub fn load_with(
    path: &Path,
    tokenizer_dir: Option<&Path>,
    placement: Placement,
) -> Result<LoadedModel> {
    if path.is_dir() {
        let ckpt = hf_load::HfCheckpoint::open(path)?;
        let weights = ckpt.load_weights(placement)?;
        let tok_dir = tokenizer_dir.unwrap_or(path);
        let tokenizer = Tokenizer::from_hf_dir(tok_dir)?;
        vocab_fit::check_vocab_fits(tokenizer.vocab_size(), weights.config.vocab_size)?;
        let vocab = GgufVocab::from_hf_dir(tok_dir).ok();
        return Ok(LoadedModel {
            weights,
            tokenizer,
            vocab,
            path: path.to_path_buf(),
            format: SourceFormat::HfFolder,
            file_bytes: ckpt.file_bytes,
        });
    }
    if !path.exists() {
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    let file = GgufFile::open(path)?;
    from_gguf(file, path.to_path_buf(), tokenizer_dir, placement)
}

/// Loads a GGUF model held in memory (the C API's and the browser's way in: no file to map).
/// The tokenizer is the one embedded in the GGUF. `name` stands in for the path in messages.
pub fn load_gguf_bytes(bytes: Vec<u8>, name: &str, placement: Placement) -> Result<LoadedModel> {
    let file = GgufFile::from_storage(bitnet_common::Storage::from_vec(bytes))?;
    from_gguf(file, PathBuf::from(name), None, placement)
}

fn from_gguf(
    file: GgufFile,
    path: PathBuf,
    tokenizer_dir: Option<&Path>,
    placement: Placement,
) -> Result<LoadedModel> {
    let weights = gguf_load::load_weights(&file, placement)?;
    let (tokenizer, vocab) = match tokenizer_dir {
        Some(dir) => (
            Tokenizer::from_hf_dir(dir)?,
            GgufVocab::from_hf_dir(dir).ok(),
        ),
        None => {
            let vocab = gguf_load::vocab_from_gguf(&file)?;
            (Tokenizer::from_gguf_vocab(&vocab)?, Some(vocab))
        }
    };
    vocab_fit::check_vocab_fits(tokenizer.vocab_size(), weights.config.vocab_size)?;
    Ok(LoadedModel {
        weights,
        tokenizer,
        vocab,
        path,
        format: SourceFormat::Gguf,
        file_bytes: file.file_size(),
    })
}
