//! GGUF v2/v3 reading and writing for bitnet-rs.
//!
//! [`GgufFile`] parses the header, metadata and tensor infos of a (memory-mapped) file and hands
//! out tensor data as zero-copy [`Storage`] slices. It treats the file as hostile: every count,
//! length, offset and size is checked before use, so corrupt or malicious input yields a
//! [`GgufError`], never a panic, a hang or a huge allocation.
//!
//! [`GgufWriter`] writes files byte-compatible with llama.cpp's writer.
//!
//! Besides mainline ggml types this knows bitnet.cpp's `I2_S` (type id 36), whose size is
//! `n_elements / 4 + 32` bytes (2-bit codes plus a 32-byte tail holding the f32 scale).

mod error;
mod output;
mod reader;
mod types;
mod writer;

pub use bitnet_common::Storage;
pub use error::GgufError;
pub use output::{check_output_path, write_atomically};
pub use reader::{GgufFile, MAX_ARRAY_DEPTH, MAX_METADATA_ITEMS};
pub use types::{GgmlType, MetadataValue, TensorInfo, ValueType, I2S_TAIL_BYTES, MAX_DIMS};
pub use writer::{GgufWriter, TensorSink};

pub type Result<T> = std::result::Result<T, GgufError>;
