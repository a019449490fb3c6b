//! GGUF v3 writer, laid out exactly as llama.cpp's `gguf_write_to_file`: header, metadata,
//! tensor infos, zero padding to the alignment, then each tensor's data followed by zero padding
//! to the alignment.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::Path;

use bitnet_common::Storage;

use crate::reader::{
    align_up, alignment_from_value, check_alignment, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC,
    MAX_ARRAY_DEPTH,
};
use crate::types::{GgmlType, MetadataValue};
use crate::{GgufError, Result};

const VERSION: u32 = 3;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    size: u64,
    /// `None` for a tensor declared with [`GgufWriter::add_tensor_info`]: its bytes come from
    /// the caller while the file is written ([`GgufWriter::write_streamed`]).
    data: Option<Storage>,
}

/// Builds a GGUF file (metadata, tensor infos, and tensor data or a promise of it), then writes
/// it in one go.
///
/// Everything is validated when added, so that whatever this writes, [`crate::GgufFile`] reads
/// back identically. Tensors declared without data ([`GgufWriter::add_tensor_info`]) let a large
/// file be written one tensor at a time: every offset follows from the shapes and types, so the
/// header goes out first and no tensor has to be held until the end.
pub struct GgufWriter {
    alignment: u64,
    metadata: Vec<(String, MetadataValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<PendingTensor>,
    tensor_names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// Version 3, alignment 32 (the GGUF default, so no `general.alignment` key is written).
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            key_index: HashMap::new(),
            tensors: Vec::new(),
            tensor_names: HashSet::new(),
        }
    }

    /// Sets the alignment and records it as `general.alignment` (u32): updated in place if the
    /// key exists, appended otherwise. Must be a power of two no larger than 2^31.
    pub fn set_alignment(&mut self, a: u64) -> Result<()> {
        let a = check_alignment(i128::from(a))?;
        // check_alignment caps at 2^31, so this cannot fail.
        let value = MetadataValue::U32(
            u32::try_from(a).map_err(|_| GgufError::BadAlignment { value: a.into() })?,
        );
        match self
            .key_index
            .get(ALIGNMENT_KEY)
            .and_then(|&i| self.metadata.get_mut(i))
        {
            Some((_, v)) => *v = value,
            None => {
                self.key_index
                    .insert(ALIGNMENT_KEY.to_owned(), self.metadata.len());
                self.metadata.push((ALIGNMENT_KEY.to_owned(), value));
            }
        }
        self.alignment = a;
        Ok(())
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Appends a metadata entry. Rejects duplicate keys, arrays whose items do not match their
    /// declared element type, arrays nested deeper than the reader accepts, and an invalid
    /// `general.alignment` (which also sets the alignment).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetadataValue) -> Result<()> {
        let key = key.into();
        if self.key_index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        check_value(&value, 0).map_err(|e| e.in_context(&format!("metadata key {key:?}")))?;
        if key == ALIGNMENT_KEY {
            self.alignment = alignment_from_value(&value)?;
        }
        self.key_index.insert(key.clone(), self.metadata.len());
        self.metadata.push((key, value));
        Ok(())
    }

    /// Appends a tensor; `data` must be exactly `ty.tensor_nbytes(&dims)` bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<()> {
        self.add_tensor_storage(name, dims, ty, Storage::from_vec(data))
    }

    /// Like [`GgufWriter::add_tensor`], but takes shared bytes, e.g. a slice of a memory-mapped
    /// file, so that rewriting a model does not copy its weights into memory.
    pub fn add_tensor_storage(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ty: GgmlType,
        data: Storage,
    ) -> Result<()> {
        let name = name.into();
        let size = self.check_new_tensor(&name, &dims, ty)?;
        let actual = data.len() as u64;
        if actual != size {
            return Err(GgufError::TensorSizeMismatch {
                tensor: name,
                expected: size,
                actual,
            });
        }
        self.push_tensor(name, dims, ty, size, Some(data));
        Ok(())
    }

    /// Declares a tensor whose `ty.tensor_nbytes(&dims)` bytes are handed over later, while the
    /// file is written ([`GgufWriter::write_streamed`]). Returns that size.
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ty: GgmlType,
    ) -> Result<u64> {
        let name = name.into();
        let size = self.check_new_tensor(&name, &dims, ty)?;
        self.push_tensor(name, dims, ty, size, None);
        Ok(size)
    }

    fn check_new_tensor(&self, name: &str, dims: &[u64], ty: GgmlType) -> Result<u64> {
        if self.tensor_names.contains(name) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_owned(),
            });
        }
        ty.tensor_nbytes(dims).map_err(|e| e.for_tensor(name))
    }

    fn push_tensor(
        &mut self,
        name: String,
        dims: Vec<u64>,
        ty: GgmlType,
        size: u64,
        data: Option<Storage>,
    ) {
        self.tensor_names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            dims,
            ty,
            size,
            data,
        });
    }

    /// Writes the whole file. Every tensor must have its data (none declared with
    /// [`GgufWriter::add_tensor_info`]); otherwise nothing is validated here (that happened when
    /// things were added), so the only other possible errors are I/O errors.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<()> {
        self.write_streamed(w, |_, t| {
            Err(io::Error::other(format!(
                "tensor {:?} was declared without data",
                t.name()
            )))
        })
    }

    /// Writes the header, then each tensor's data in order: the bytes given when it was added,
    /// or for a tensor declared with [`GgufWriter::add_tensor_info`] whatever `fill(index, sink)`
    /// writes into the sink, which must be exactly the declared size. Only one tensor's bytes
    /// pass through here at a time, so memory does not grow with the file.
    pub fn write_streamed<W: Write>(
        &self,
        w: &mut W,
        mut fill: impl FnMut(usize, &mut TensorSink<'_>) -> io::Result<()>,
    ) -> Result<()> {
        let header = self.header()?;
        w.write_all(&header)?;
        let mut pos = header.len() as u64;
        pos = self.pad(w, pos)?;
        for (i, t) in self.tensors.iter().enumerate() {
            match &t.data {
                Some(data) => w.write_all(data)?,
                None => {
                    let mut sink = TensorSink {
                        out: w,
                        name: &t.name,
                        size: t.size,
                        written: 0,
                    };
                    fill(i, &mut sink)?;
                    if sink.written != t.size {
                        return Err(GgufError::TensorSizeMismatch {
                            tensor: t.name.clone(),
                            expected: t.size,
                            actual: sink.written,
                        });
                    }
                }
            }
            pos += t.size;
            pos = self.pad(w, pos)?;
        }
        Ok(())
    }

    /// Writes to a temporary file beside `path`, syncs it, then renames it over `path`, so a
    /// crash or error never leaves a half-written file under the final name. A `path` that is
    /// a FIFO, device, socket or symlink is refused ([`crate::check_output_path`]).
    pub fn write_file(&self, path: &Path) -> Result<()> {
        self.write_file_streamed(path, |_, t| {
            Err(io::Error::other(format!(
                "tensor {:?} was declared without data",
                t.name()
            )))
        })
    }

    /// [`GgufWriter::write_streamed`] into `path` the way [`GgufWriter::write_file`] writes:
    /// through a temporary file renamed over `path` once complete, so an error from `fill`
    /// leaves nothing under the name.
    pub fn write_file_streamed(
        &self,
        path: &Path,
        fill: impl FnMut(usize, &mut TensorSink<'_>) -> io::Result<()>,
    ) -> Result<()> {
        crate::output::write_atomically(path, |file| {
            let mut out = io::BufWriter::with_capacity(1 << 20, file);
            self.write_streamed(&mut out, fill).map_err(|e| match e {
                GgufError::Io(e) => e,
                other => io::Error::other(other.to_string()),
            })?;
            out.flush()
        })
        .map_err(GgufError::Io)
    }

    /// Total bytes of tensor data, padding left out (what a progress report counts to).
    pub fn tensor_data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).sum()
    }

    /// Header, metadata and tensor infos, without the padding that follows them.
    fn header(&self) -> Result<Vec<u8>> {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut h, key);
            h.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut h, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(t.size)
                .and_then(|end| align_up(end, self.alignment))
                .ok_or_else(|| io::Error::other("tensor data offsets overflow u64"))?;
        }
        Ok(h)
    }

    /// Zero-fills from `pos` up to the next multiple of the alignment; returns the new position.
    fn pad<W: Write>(&self, w: &mut W, pos: u64) -> Result<u64> {
        let end = align_up(pos, self.alignment)
            .ok_or_else(|| io::Error::other("file size overflows u64"))?;
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut left = end - pos;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            w.write_all(&ZEROS[..n])?;
            left -= n as u64;
        }
        Ok(end)
    }
}

/// Where a streamed tensor's bytes go ([`GgufWriter::write_streamed`]); refuses more than the
/// tensor's declared size.
pub struct TensorSink<'a> {
    out: &'a mut dyn Write,
    name: &'a str,
    size: u64,
    written: u64,
}

impl TensorSink<'_> {
    pub fn name(&self) -> &str {
        self.name
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size - self.written
    }
}

impl Write for TensorSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.remaining() {
            return Err(io::Error::other(format!(
                "more than the {} bytes declared for tensor {:?}",
                self.size, self.name
            )));
        }
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Rejects values the reader would refuse (or read back differently).
fn check_value(value: &MetadataValue, depth: usize) -> Result<()> {
    if let MetadataValue::Array { elem, items } = value {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                what: "array".to_owned(),
                offset: 0,
                max: MAX_ARRAY_DEPTH,
            });
        }
        for item in items {
            if item.value_type() != *elem {
                return Err(GgufError::ArrayTypeMismatch {
                    what: "array".to_owned(),
                    expected: *elem,
                    found: item.value_type(),
                });
            }
            check_value(item, depth + 1)?;
        }
    }
    Ok(())
}

fn put_string(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, value: &MetadataValue) {
    use MetadataValue as V;
    match value {
        V::U8(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::I8(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::U16(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::I16(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::U32(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::I32(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::F32(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::Bool(v) => h.push(u8::from(*v)),
        V::String(s) => put_string(h, s),
        V::U64(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::I64(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::F64(v) => h.extend_from_slice(&v.to_le_bytes()),
        V::Array { elem, items } => {
            h.extend_from_slice(&elem.id().to_le_bytes());
            h.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(h, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> GgufWriter {
        let mut g = GgufWriter::new();
        g.add_metadata("general.name", MetadataValue::String("t".into()))
            .unwrap();
        g
    }

    #[test]
    fn streamed_tensors_give_the_same_bytes_as_held_ones() {
        let a: Vec<u8> = (0..12u8).flat_map(|i| f32::from(i).to_le_bytes()).collect();
        let b: Vec<u8> = (0..5u8).flat_map(|i| f32::from(i).to_le_bytes()).collect();
        let mut held = writer();
        held.add_tensor("a", vec![3, 4], GgmlType::F32, a.clone())
            .unwrap();
        held.add_tensor("b", vec![5], GgmlType::F32, b.clone())
            .unwrap();
        let mut want = Vec::new();
        held.write_to(&mut want).unwrap();

        let mut streamed = writer();
        assert_eq!(
            streamed
                .add_tensor_info("a", vec![3, 4], GgmlType::F32)
                .unwrap(),
            48
        );
        // Held and streamed tensors mix.
        streamed
            .add_tensor("b", vec![5], GgmlType::F32, b.clone())
            .unwrap();
        assert_eq!(streamed.tensor_data_bytes(), 68);
        let mut got = Vec::new();
        let mut asked = Vec::new();
        streamed
            .write_streamed(&mut got, |i, sink| {
                asked.push((i, sink.name().to_owned()));
                // In pieces, as a converter writes rows.
                for piece in a.chunks(10) {
                    sink.write_all(piece)?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(asked, [(0, "a".to_owned())]);
        assert_eq!(got, want);
        // A declared tensor without a filler cannot be written whole.
        assert!(streamed.write_to(&mut Vec::new()).is_err());
    }

    #[test]
    fn a_streamed_tensor_of_the_wrong_size_is_refused() {
        let mut g = writer();
        g.add_tensor_info("a", vec![4], GgmlType::F32).unwrap();
        let short = g.write_streamed(&mut Vec::new(), |_, sink| sink.write_all(&[0; 12]));
        assert!(
            matches!(
                short,
                Err(GgufError::TensorSizeMismatch {
                    expected: 16,
                    actual: 12,
                    ..
                })
            ),
            "{short:?}"
        );
        let long = g.write_streamed(&mut Vec::new(), |_, sink| sink.write_all(&[0; 20]));
        assert!(long.is_err());
        // Through a file: an error from the filler leaves nothing under the name.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let e = g.write_file_streamed(&path, |_, _| Err(io::Error::other("bad tensor")));
        assert!(e.unwrap_err().to_string().contains("bad tensor"));
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        g.write_file_streamed(&path, |_, sink| sink.write_all(&[0; 16]))
            .unwrap();
        assert!(crate::GgufFile::open(&path).is_ok());
    }
}
