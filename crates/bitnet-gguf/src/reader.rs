//! GGUF parsing. Every length and count comes from untrusted bytes, so each is checked against
//! the bytes actually left before anything is allocated: a hostile header can make us fail, but
//! not panic, loop for long, or allocate more than a small multiple of the file size (and, for
//! metadata arrays, whose elements can take one byte of file and 32 of memory, more than
//! `MAX_METADATA_ITEMS` elements).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use bitnet_common::Storage;

use crate::types::{GgmlType, MetadataValue, TensorInfo, ValueType, MAX_DIMS};
use crate::{GgufError, Result};

pub(crate) const MAGIC: [u8; 4] = *b"GGUF";
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";
/// Arrays of arrays are legal GGUF (the Python writer emits them) but nothing real nests deeply;
/// the limit keeps recursion, and so stack use, bounded.
pub const MAX_ARRAY_DEPTH: usize = 16;
/// Smallest possible metadata entry: u64 key length, u32 value type, one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest possible tensor info: u64 name length, u32 n_dims, u32 type, u64 offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// The most array elements a file's metadata may hold, all arrays (nested ones too) together.
/// A decoded element is a 32-byte [`MetadataValue`] however few bytes it took in the file (one
/// for `u8`), so this, not the file size, bounds the memory of a hostile `u8` array: 512 MiB at
/// most. Real files stay far below: 2B4T's tokenizer has ~410K items, a 256K vocabulary with
/// scores, types and merges under 2M.
pub const MAX_METADATA_ITEMS: u64 = 1 << 24;
/// Largest alignment we accept; llama.cpp stores it as u32, and anything bigger is nonsense.
pub(crate) const MAX_ALIGNMENT: u64 = 1 << 31;

/// Checks an alignment value; shared with the writer so both accept the same set.
pub(crate) fn check_alignment(value: i128) -> Result<u64> {
    match u64::try_from(value) {
        Ok(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
        _ => Err(GgufError::BadAlignment { value }),
    }
}

/// Reads `general.alignment` from a metadata value (any integer type, as long as it is valid).
pub(crate) fn alignment_from_value(value: &MetadataValue) -> Result<u64> {
    let as_int = match *value {
        MetadataValue::U64(v) => Some(i128::from(v)),
        _ => value.as_i64().map(i128::from),
    };
    match as_int {
        Some(v) => check_alignment(v),
        None => Err(GgufError::BadMetadataType {
            key: ALIGNMENT_KEY.to_owned(),
            expected: "an integer",
            found: value.value_type(),
        }),
    }
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements decoded so far (against MAX_METADATA_ITEMS).
    items: u64,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let bytes = usize::try_from(n)
            .ok()
            .and_then(|n| rest.get(..n))
            .ok_or_else(|| GgufError::Truncated {
                what: what.to_owned(),
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
            })?;
        self.pos += bytes.len();
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes (no terminator).
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let start = self.offset();
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                what: what.to_owned(),
                offset: start,
            }),
        }
    }

    /// Reads a count of items and rejects it unless the remaining bytes could hold that many
    /// items of `min_size` bytes each; afterwards `count` is safe to reserve.
    fn count(&mut self, min_size: u64, what: &str) -> Result<usize> {
        let offset = self.offset();
        let count = self.u64(what)?;
        let available = self.remaining();
        let max = available / min_size;
        if count > max {
            return Err(GgufError::TooLarge {
                what: what.to_owned(),
                offset,
                count,
                available,
                max,
            });
        }
        // count <= remaining bytes, which is a usize.
        Ok(count as usize)
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let offset = self.offset();
        let id = self.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            what: what.to_owned(),
            id,
            offset,
        })
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<MetadataValue> {
        use MetadataValue as V;
        Ok(match ty {
            ValueType::U8 => V::U8(u8::from_le_bytes(self.array("u8 value")?)),
            ValueType::I8 => V::I8(i8::from_le_bytes(self.array("i8 value")?)),
            ValueType::U16 => V::U16(u16::from_le_bytes(self.array("u16 value")?)),
            ValueType::I16 => V::I16(i16::from_le_bytes(self.array("i16 value")?)),
            ValueType::U32 => V::U32(u32::from_le_bytes(self.array("u32 value")?)),
            ValueType::I32 => V::I32(i32::from_le_bytes(self.array("i32 value")?)),
            ValueType::F32 => V::F32(f32::from_le_bytes(self.array("f32 value")?)),
            // llama.cpp reads any nonzero byte as true; so do we.
            ValueType::Bool => V::Bool(self.array::<1>("bool value")? != [0]),
            ValueType::String => V::String(self.string("string value")?),
            ValueType::U64 => V::U64(u64::from_le_bytes(self.array("u64 value")?)),
            ValueType::I64 => V::I64(i64::from_le_bytes(self.array("i64 value")?)),
            ValueType::F64 => V::F64(f64::from_le_bytes(self.array("f64 value")?)),
            ValueType::Array => {
                let offset = self.offset();
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep {
                        what: "array".to_owned(),
                        offset,
                        max: MAX_ARRAY_DEPTH,
                    });
                }
                let elem = self.value_type("array element type")?;
                let count = self.count(elem.min_encoded_size(), "array length")?;
                self.items = self.items.saturating_add(count as u64);
                if self.items > MAX_METADATA_ITEMS {
                    return Err(GgufError::TooManyItems {
                        what: "array length".to_owned(),
                        offset,
                        count: count as u64,
                        max: MAX_METADATA_ITEMS,
                    });
                }
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                V::Array { elem, items }
            }
        })
    }
}

/// A parsed GGUF file. Metadata and tensor infos are decoded up front; tensor data stays in the
/// (usually memory-mapped) storage and is handed out as zero-copy slices.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetadataValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Memory-maps and parses a file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let storage = Storage::map_file(path).map_err(|e| match e.kind() {
            // Already "<path> is a FIFO, not a regular file".
            std::io::ErrorKind::InvalidInput => e,
            kind => std::io::Error::new(kind, format!("cannot map {}: {e}", path.display())),
        })?;
        GgufFile::from_storage(storage)
    }

    /// Parses and validates a whole file: header, metadata, tensor infos, and that every tensor
    /// lies, aligned, inside the data section.
    pub fn from_storage(storage: Storage) -> Result<GgufFile> {
        let mut cur = Cursor {
            buf: storage.as_bytes(),
            pos: 0,
            items: 0,
        };

        let magic = cur.array::<4>("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = cur.u32("version")?;
        match version {
            2 | 3 => {}
            // A big-endian file (written by gguf-py with --bigendian) has its version byte-swapped.
            v if v & 0xffff == 0 && (1..=3).contains(&v.swap_bytes()) => {
                return Err(GgufError::BigEndian { version: v })
            }
            // v1 used u32 counts and lengths; nothing current writes it.
            v => return Err(GgufError::UnsupportedVersion { version: v }),
        }
        let n_tensors_offset = cur.offset();
        let n_tensors = cur.u64("tensor count")?;
        let n_kv = cur.count(MIN_KV_BYTES, "metadata entry count")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut key_index = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = cur.string("metadata key")?;
            let value = read_kv_value(&mut cur)
                .map_err(|e| e.in_context(&format!("metadata key {key:?}")))?;
            if key_index.contains_key(&key) {
                return Err(GgufError::DuplicateKey { key });
            }
            key_index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }

        let alignment = match key_index.get(ALIGNMENT_KEY).and_then(|&i| metadata.get(i)) {
            Some((_, value)) => alignment_from_value(value)?,
            None => DEFAULT_ALIGNMENT,
        };

        // The tensor count is checked only now, against the bytes left after the metadata.
        let available = cur.remaining();
        let max = available / MIN_TENSOR_INFO_BYTES;
        if n_tensors > max {
            return Err(GgufError::TooLarge {
                what: "tensor count".to_owned(),
                offset: n_tensors_offset,
                count: n_tensors,
                available,
                max,
            });
        }
        let n_tensors = n_tensors as usize; // <= remaining bytes, a usize
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let info = read_tensor_info(&mut cur)?;
            if tensor_index.contains_key(&info.name) {
                return Err(GgufError::DuplicateTensor { name: info.name });
            }
            tensor_index.insert(info.name.clone(), tensors.len());
            tensors.push(info);
        }

        let header_end = cur.offset();
        let file_size = storage.len() as u64;
        let data_offset = align_up(header_end, alignment).ok_or_else(|| GgufError::Truncated {
            what: "alignment padding before tensor data".to_owned(),
            offset: header_end,
            needed: alignment,
            available: cur.remaining(),
        })?;
        if !tensors.is_empty() && data_offset > file_size {
            return Err(GgufError::Truncated {
                what: "alignment padding before tensor data".to_owned(),
                offset: header_end,
                needed: data_offset - header_end,
                available: cur.remaining(),
            });
        }
        let data_size = file_size.saturating_sub(data_offset);
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor {
                    tensor: t.name.clone(),
                    offset: t.offset,
                    alignment,
                });
            }
            if t.offset
                .checked_add(t.n_bytes)
                .is_none_or(|end| end > data_size)
            {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: t.name.clone(),
                    offset: t.offset,
                    size: t.n_bytes,
                    data_size,
                });
            }
        }

        check_no_overlap(&tensors)?;

        Ok(GgufFile {
            storage,
            version,
            alignment,
            data_offset,
            metadata,
            key_index,
            tensors,
            tensor_index,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section (end of the tensor infos, rounded up to the
    /// alignment).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.key_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture")
            .and_then(MetadataValue::as_str)
    }

    /// Tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// The tensor's bytes, without copying.
    ///
    /// # Panics
    /// If `info` did not come from this file and lies outside it (a caller bug; infos from
    /// this file were bounds-checked when it was opened).
    pub fn tensor_data(&self, info: &TensorInfo) -> Storage {
        let range = self.data_offset.checked_add(info.offset).and_then(|start| {
            Some((
                usize::try_from(start).ok()?,
                usize::try_from(info.n_bytes).ok()?,
            ))
        });
        match range.and_then(|(start, len)| self.storage.slice(start, len)) {
            Some(s) => s,
            None => panic!(
                "tensor_data: TensorInfo {:?} does not belong to this GGUF file",
                info.name
            ),
        }
    }

    /// The whole file.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn file_size(&self) -> u64 {
        self.storage.len() as u64
    }
}

impl fmt::Debug for GgufFile {
    // Metadata holds whole vocabularies; a derived Debug would print megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("architecture", &self.architecture())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_size", &self.file_size())
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

fn read_kv_value(cur: &mut Cursor) -> Result<MetadataValue> {
    let ty = cur.value_type("value type")?;
    cur.value(ty, 0)
}

fn read_tensor_info(cur: &mut Cursor) -> Result<TensorInfo> {
    let name = cur.string("tensor name")?;
    let (dims, type_id, offset) =
        read_tensor_fields(cur, &name).map_err(|e| e.in_context(&format!("tensor {name:?}")))?;
    let Some(ty) = GgmlType::from_id(type_id) else {
        return Err(GgufError::UnknownTensorType {
            tensor: name,
            id: type_id,
        });
    };
    let n_bytes = ty.tensor_nbytes(&dims).map_err(|e| e.for_tensor(&name))?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes,
    })
}

/// The fields after a tensor's name: dims, type id and data offset.
fn read_tensor_fields(cur: &mut Cursor, name: &str) -> Result<(Vec<u64>, u32, u64)> {
    let n_dims = cur.u32("dimension count")?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            tensor: name.to_owned(),
            n_dims,
            max: MAX_DIMS as u32,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64("dimension")?);
    }
    let type_id = cur.u32("type id")?;
    let offset = cur.u64("data offset")?;
    Ok((dims, type_id, offset))
}

/// Rejects tensors whose data ranges share a byte. No writer produces them, and an alias
/// (attn_k at attn_q's offset, or a tensor relabelled to a wider type so it reads across its
/// neighbours) would otherwise load and run on bytes meant for another tensor. Empty tensors
/// occupy nothing and may sit anywhere. Every range was bounds-checked before this is called.
fn check_no_overlap(tensors: &[TensorInfo]) -> Result<()> {
    let mut ranges: Vec<(u64, u64, usize)> = tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.n_bytes > 0)
        .map(|(i, t)| (t.offset, t.offset.saturating_add(t.n_bytes), i))
        .collect();
    ranges.sort_unstable();
    // The range reaching furthest so far: a later start below its end overlaps it.
    let mut furthest: Option<(u64, usize)> = None;
    for &(start, end, i) in &ranges {
        if let Some((reach, j)) = furthest {
            if start < reach {
                let (a, b) = (&tensors[j], &tensors[i]);
                return Err(GgufError::OverlappingTensors {
                    first: a.name.clone(),
                    first_range: (a.offset, a.offset.saturating_add(a.n_bytes)),
                    second: b.name.clone(),
                    second_range: (start, end),
                });
            }
        }
        if furthest.is_none_or(|(reach, _)| end > reach) {
            furthest = Some((end, i));
        }
    }
    Ok(())
}

/// `value` rounded up to a multiple of `alignment` (a power of two); `None` on overflow.
pub(crate) fn align_up(value: u64, alignment: u64) -> Option<u64> {
    Some(value.checked_add(alignment - 1)? & !(alignment - 1))
}
