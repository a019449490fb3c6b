use std::fmt;

use crate::{GgufError, Result};

/// ggml's `GGML_MAX_DIMS`: llama.cpp rejects tensors with more dimensions, so we do too.
pub const MAX_DIMS: usize = 4;

/// Size of the I2_S tail that follows the packed codes: the per-tensor f32 scale in the first
/// four bytes, then padding (bitnet.cpp's official files repeat the scale 8 times).
pub const I2S_TAIL_BYTES: u64 = 32;

/// Tensor element types, with the ids ggml (and bitnet.cpp's fork, for `I2S`) gives them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
    TQ1_0,
    TQ2_0,
    I2S,
}

impl GgmlType {
    /// Every supported type, in id order.
    pub const ALL: [GgmlType; 23] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::I2S,
    ];

    /// Maps a ggml type id to a type. Id 36 is read as bitnet.cpp's I2_S; mainline ggml has
    /// since reused the ids 36..39, so a file from a mainline build with those ids would be
    /// misread, but such types (MXFP4 etc.) have no use in a ternary engine.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            36 => I2S,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            I2S => 36,
        }
    }

    /// The name llama.cpp prints (upper case, as in `gguf-dump`).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            I2S => "I2_S",
        }
    }

    /// Elements per block. For I2_S this is 4 (one byte of 2-bit codes): the format has no
    /// per-block header, its codes are interleaved in groups of 128 and the tensor carries a
    /// 32-byte scale tail, so use [`GgmlType::tensor_nbytes`] for sizes.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | I8 | I16 | I32 | I64 | F64 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K | TQ1_0 | TQ2_0 => 256,
            I2S => 4,
        }
    }

    /// Bytes per block (see [`GgmlType::block_size`] for I2_S).
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 => 8,
            F64 => 8,
            BF16 => 2,
            TQ1_0 => 54,
            TQ2_0 => 66,
            I2S => 1,
        }
    }

    /// Bytes of one row of `row_len` elements (for I2_S: the packed codes only, `row_len / 4`;
    /// the scale tail belongs to the whole tensor).
    pub fn row_nbytes(self, row_len: u64) -> Result<u64> {
        self.tensor_nbytes(&[row_len]).map(|n| {
            if self == GgmlType::I2S {
                n - I2S_TAIL_BYTES
            } else {
                n
            }
        })
    }

    /// Bytes of a tensor with these dims (ggml order, `dims[0]` = row length).
    ///
    /// Errors if there are more than [`MAX_DIMS`] dims, if the element count overflows `i64`
    /// (ggml counts in `int64_t`), if the row length is not a whole number of blocks, or, for
    /// I2_S, if the element count is not a multiple of 4. I2_S is `n / 4 + 32`, as bitnet.cpp's
    /// `ggml_nbytes` computes it. No dims means a scalar (one element), as in ggml.
    pub fn tensor_nbytes(self, dims: &[u64]) -> Result<u64> {
        let invalid = |reason: &str| GgufError::InvalidShape {
            tensor: String::new(),
            ty: self,
            dims: dims.to_vec(),
            reason: reason.to_owned(),
        };
        if dims.len() > MAX_DIMS {
            return Err(invalid("more than 4 dimensions"));
        }
        let mut n_elements: u64 = 1;
        for &d in dims {
            n_elements = n_elements
                .checked_mul(d)
                .filter(|&n| i64::try_from(n).is_ok())
                .ok_or_else(|| invalid("element count overflows i64"))?;
        }
        if self == GgmlType::I2S {
            if !n_elements.is_multiple_of(4) {
                return Err(invalid("I2_S element count must be a multiple of 4"));
            }
            return Ok(n_elements / 4 + I2S_TAIL_BYTES);
        }
        let block = self.block_size() as u64;
        let row_len = dims.first().copied().unwrap_or(1);
        if row_len % block != 0 {
            return Err(invalid(&format!(
                "row length {row_len} is not a multiple of the block size {block}"
            )));
        }
        (n_elements / block)
            .checked_mul(self.block_bytes() as u64)
            .ok_or_else(|| invalid("byte size overflows u64"))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Metadata value type ids (`gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    pub fn from_id(id: u32) -> Option<ValueType> {
        usize::try_from(id)
            .ok()
            .and_then(|i| ValueType::ALL.get(i))
            .copied()
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type can occupy on disk (a string is at least its u64
    /// length, an array at least its u32 type and u64 count). Used to reject impossible counts
    /// before allocating.
    pub(crate) fn min_encoded_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value. Arrays record their element type so that empty arrays round-trip.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array {
        elem: ValueType,
        items: Vec<MetadataValue>,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetadataValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array { .. } => ValueType::Array,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type holding a non-negative value (converters disagree on u32 vs i32 vs u64
    /// for counts, so callers should not have to care).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => i64::try_from(v).ok(),
            MetadataValue::I8(v) => Some(v.into()),
            MetadataValue::I16(v) => Some(v.into()),
            MetadataValue::I32(v) => Some(v.into()),
            MetadataValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Floats, and integers converted to f64 (e.g. a `rope.freq_base` stored as u32).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            MetadataValue::U64(v) => Some(v as f64),
            MetadataValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array { items, .. } => Some(items),
            _ => None,
        }
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`); `None` for anything else.
    pub fn as_string_array(&self) -> Option<Vec<&str>> {
        match self {
            MetadataValue::Array {
                elem: ValueType::String,
                items,
            } => items.iter().map(MetadataValue::as_str).collect(),
            _ => None,
        }
    }

    /// A string array value, for writers.
    pub fn string_array<I, S>(items: I) -> MetadataValue
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MetadataValue::Array {
            elem: ValueType::String,
            items: items
                .into_iter()
                .map(|s| MetadataValue::String(s.into()))
                .collect(),
        }
    }
}

macro_rules! impl_from {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for MetadataValue {
            fn from(v: $t) -> Self {
                MetadataValue::$variant(v.into())
            }
        })*
    };
}
impl_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32, bool => Bool,
    String => String, &str => String, u64 => U64, i64 => I64, f64 => F64);

/// One entry of the tensor-info table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (innermost, contiguous).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Relative to the start of the data section ([`crate::GgufFile::data_offset`]).
    pub offset: u64,
    /// Exact size of the tensor data, from [`GgmlType::tensor_nbytes`] (without alignment padding).
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Product of the dims (1 for a scalar). Cannot overflow for infos from a [`crate::GgufFile`],
    /// which rejects element counts above `i64::MAX`; saturates otherwise.
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
}
