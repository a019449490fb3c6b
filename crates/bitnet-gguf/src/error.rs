use crate::types::{GgmlType, ValueType};

/// Everything that can go wrong reading or writing a GGUF file.
///
/// Reader errors carry the byte offset and the name of the key or tensor involved, so a corrupt
/// file can be diagnosed from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Transparent: the I/O errors raised here already name the file and what was being done,
    /// and a prefix plus `#[from]` would print the message twice in an error chain.
    #[error(transparent)]
    Io(#[from] std::io::Error),

    #[error("GGUF file truncated: reading {what} at offset {offset} needs {needed} bytes, but only {available} remain")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\" (47 47 55 46)")]
    BadMagic { found: [u8; 4] },

    #[error("big-endian GGUF files are not supported (version field reads as {version:#010x})")]
    BigEndian { version: u32 },

    #[error("unsupported GGUF version {version} (only versions 2 and 3 are supported)")]
    UnsupportedVersion { version: u32 },

    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },

    #[error("unknown metadata value type {id} in {what} at offset {offset}")]
    UnknownValueType { what: String, id: u32, offset: u64 },

    #[error("tensor {tensor:?} has unknown ggml type id {id}")]
    UnknownTensorType { tensor: String, id: u32 },

    #[error("duplicate metadata key {key:?}")]
    DuplicateKey { key: String },

    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor { name: String },

    #[error("tensor {tensor:?} (offset {offset}, {size} bytes) does not fit in the {data_size}-byte data section")]
    TensorOutOfBounds {
        tensor: String,
        offset: u64,
        size: u64,
        data_size: u64,
    },

    #[error("tensors {first:?} (data bytes {}..{}) and {second:?} (bytes {}..{}) overlap: each tensor must have its own bytes", first_range.0, first_range.1, second_range.0, second_range.1)]
    OverlappingTensors {
        first: String,
        first_range: (u64, u64),
        second: String,
        second_range: (u64, u64),
    },

    #[error("tensor {tensor:?} offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error("bad alignment {value}: must be a nonzero power of two (at most 2^31)")]
    BadAlignment { value: i128 },

    #[error("metadata key {key:?} must be {expected}, found a value of type {found}")]
    BadMetadataType {
        key: String,
        expected: &'static str,
        found: ValueType,
    },

    /// A count that cannot possibly be honoured: even at the smallest encoding per item, the bytes
    /// left in the file could not hold that many. Caught before anything is allocated.
    #[error("{what} at offset {offset} claims {count} items, but the {available} bytes left can hold at most {max}")]
    TooLarge {
        what: String,
        offset: u64,
        count: u64,
        available: u64,
        max: u64,
    },

    /// More array elements in the whole metadata than any real file has: each decoded element
    /// takes 32 bytes of memory where a `u8` takes one byte of file, so the file size alone
    /// does not bound what its arrays would cost.
    #[error("{what} at offset {offset} has {count} items, past the limit of {max} metadata array items a file")]
    TooManyItems {
        what: String,
        offset: u64,
        count: u64,
        max: u64,
    },

    #[error("tensor {tensor:?} has {n_dims} dimensions (at most {max} are supported)")]
    TooManyDims {
        tensor: String,
        n_dims: u32,
        max: u32,
    },

    #[error("tensor {tensor:?}: dims {dims:?} are invalid for type {ty}: {reason}")]
    InvalidShape {
        tensor: String,
        ty: GgmlType,
        dims: Vec<u64>,
        reason: String,
    },

    #[error("tensor {tensor:?}: data is {actual} bytes, but {expected} bytes are needed for its type and dims")]
    TensorSizeMismatch {
        tensor: String,
        expected: u64,
        actual: u64,
    },

    #[error("metadata arrays nested deeper than {max} levels (in {what} at offset {offset})")]
    NestingTooDeep {
        what: String,
        offset: u64,
        max: usize,
    },

    #[error("array {what}: declared element type {expected}, but an item has type {found}")]
    ArrayTypeMismatch {
        what: String,
        expected: ValueType,
        found: ValueType,
    },
}

impl GgufError {
    /// Names the metadata key an error happened under, so "string at offset 1234" becomes
    /// "value of metadata key \"tokenizer.ggml.tokens\"" in the message.
    pub(crate) fn in_context(mut self, context: &str) -> Self {
        match &mut self {
            GgufError::Truncated { what, .. }
            | GgufError::InvalidUtf8 { what, .. }
            | GgufError::UnknownValueType { what, .. }
            | GgufError::TooLarge { what, .. }
            | GgufError::TooManyItems { what, .. }
            | GgufError::NestingTooDeep { what, .. }
            | GgufError::ArrayTypeMismatch { what, .. } => {
                *what = format!("{what} of {context}");
            }
            _ => {}
        }
        self
    }

    /// Fills in the tensor name for shape errors raised by [`GgmlType::tensor_nbytes`], which
    /// only knows the dims.
    pub(crate) fn for_tensor(mut self, name: &str) -> Self {
        if let GgufError::InvalidShape { tensor, .. } = &mut self {
            name.clone_into(tensor);
        }
        self
    }
}
