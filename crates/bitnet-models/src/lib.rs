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
pub use weights::{LayerWeights, ModelWeights, Placement, Role, TensorSource};

use bitnet_gguf::GgufFile;
use bitnet_quantization::{DenseMatrix, TernaryMatrix};
use bitnet_tokenizers::{GgufVocab, Tokenizer};
use std::cell::RefCell;
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
    load_with_progress(path, tokenizer_dir, placement, &mut |_, _| {})
}

/// [`load_with`], telling `progress(done, total)` how many of the model's tensors are loaded
/// (for a progress bar: a large model takes seconds to repack).
pub fn load_with_progress(
    path: &Path,
    tokenizer_dir: Option<&Path>,
    placement: Placement,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<LoadedModel> {
    if path.is_dir() {
        let ckpt = hf_load::HfCheckpoint::open(path)?;
        let weights = ModelWeights::build_placed(
            ckpt.config.clone(),
            &Counting::new(&ckpt, &ckpt.config, progress),
            placement,
        )?;
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
    from_gguf(file, path.to_path_buf(), tokenizer_dir, placement, progress)
}

/// Loads a GGUF model held in memory (the C API's and the browser's way in: no file to map).
/// The tokenizer is the one embedded in the GGUF. `name` stands in for the path in messages.
pub fn load_gguf_bytes(bytes: Vec<u8>, name: &str, placement: Placement) -> Result<LoadedModel> {
    let file = GgufFile::from_storage(bitnet_common::Storage::from_vec(bytes))?;
    from_gguf(file, PathBuf::from(name), None, placement, &mut |_, _| {})
}

fn from_gguf(
    file: GgufFile,
    path: PathBuf,
    tokenizer_dir: Option<&Path>,
    placement: Placement,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<LoadedModel> {
    let config = gguf_load::checked_config(&file)?;
    let src = gguf_load::GgufSource { file: &file };
    let weights = ModelWeights::build_placed(
        config.clone(),
        &Counting::new(&src, &config, progress),
        placement,
    )?;
    let (tokenizer, vocab) = gguf_tokenizer(&file, tokenizer_dir)?;
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

/// The tokenizer of a GGUF model: its embedded vocabulary, or `tokenizer_dir`'s.
fn gguf_tokenizer(
    file: &GgufFile,
    tokenizer_dir: Option<&Path>,
) -> Result<(Tokenizer, Option<GgufVocab>)> {
    Ok(match tokenizer_dir {
        Some(dir) => (
            Tokenizer::from_hf_dir(dir)?,
            GgufVocab::from_hf_dir(dir).ok(),
        ),
        None => {
            let vocab = gguf_load::vocab_from_gguf(file)?;
            (Tokenizer::from_gguf_vocab(&vocab)?, Some(vocab))
        }
    })
}

/// A [`TensorSource`] that reports each tensor handed out (the loader's progress hook).
struct Counting<'a> {
    inner: &'a dyn TensorSource,
    done: std::cell::Cell<u64>,
    total: u64,
    progress: RefCell<&'a mut dyn FnMut(u64, u64)>,
}

impl<'a> Counting<'a> {
    fn new(
        inner: &'a dyn TensorSource,
        c: &ModelConfig,
        progress: &'a mut dyn FnMut(u64, u64),
    ) -> Self {
        // Embedding, final norm, head if untied, and eleven tensors per layer.
        let head = u64::from(inner.has(Role::Output));
        let total = 2 + head + 11 * c.num_layers as u64;
        progress(0, total);
        Counting {
            inner,
            done: std::cell::Cell::new(0),
            total,
            progress: RefCell::new(progress),
        }
    }

    fn tick<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_ok() {
            self.done.set(self.done.get() + 1);
            if let Ok(mut p) = self.progress.try_borrow_mut() {
                (*p)(self.done.get().min(self.total), self.total);
            }
        }
        r
    }
}

impl TensorSource for Counting<'_> {
    fn tensor_name(&self, role: Role) -> String {
        self.inner.tensor_name(role)
    }
    fn has(&self, role: Role) -> bool {
        self.inner.has(role)
    }
    fn dense(&self, role: Role, rows: usize, cols: usize) -> Result<DenseMatrix> {
        self.tick(self.inner.dense(role, rows, cols))
    }
    fn vector(&self, role: Role, len: usize) -> Result<Vec<f32>> {
        self.tick(self.inner.vector(role, len))
    }
    fn ternary(&self, role: Role, rows: usize, cols: usize) -> Result<TernaryMatrix> {
        self.tick(self.inner.ternary(role, rows, cols))
    }
}

enum Opened {
    Gguf(GgufFile),
    Hf(hf_load::HfCheckpoint),
}

/// A model file opened for reading tensor by tensor instead of loading (what [`export::convert`]
/// streams from): its configuration and tokenizer checked as [`load`] checks them, its tensors
/// still in the file mapping.
pub struct ModelSource {
    opened: Opened,
    pub config: ModelConfig,
    /// The tokenizer in GGUF form; `None` when it cannot be stored as GGUF metadata.
    pub vocab: Option<GgufVocab>,
    pub format: SourceFormat,
}

impl ModelSource {
    /// Opens a GGUF file or a Hugging Face folder; `tokenizer_dir` as in [`load`].
    pub fn open(path: &Path, tokenizer_dir: Option<&Path>) -> Result<ModelSource> {
        if path.is_dir() {
            let ckpt = hf_load::HfCheckpoint::open(path)?;
            let tok_dir = tokenizer_dir.unwrap_or(path);
            let tokenizer = Tokenizer::from_hf_dir(tok_dir)?;
            vocab_fit::check_vocab_fits(tokenizer.vocab_size(), ckpt.config.vocab_size)?;
            return Ok(ModelSource {
                config: ckpt.config.clone(),
                vocab: GgufVocab::from_hf_dir(tok_dir).ok(),
                opened: Opened::Hf(ckpt),
                format: SourceFormat::HfFolder,
            });
        }
        if !path.exists() {
            return Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
        let file = GgufFile::open(path)?;
        let config = gguf_load::checked_config(&file)?;
        let (tokenizer, vocab) = gguf_tokenizer(&file, tokenizer_dir)?;
        vocab_fit::check_vocab_fits(tokenizer.vocab_size(), config.vocab_size)?;
        Ok(ModelSource {
            opened: Opened::Gguf(file),
            config,
            vocab,
            format: SourceFormat::Gguf,
        })
    }

    /// Runs `f` with the file's tensors.
    pub fn with_tensors<R>(&self, f: impl FnOnce(&dyn TensorSource) -> R) -> R {
        match &self.opened {
            Opened::Gguf(file) => f(&gguf_load::GgufSource { file }),
            Opened::Hf(ckpt) => f(ckpt),
        }
    }
}
