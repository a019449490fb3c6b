//! Types shared by every bitnet-rs crate.
//!
//! [`Storage`] lets a tensor point straight into a memory-mapped model file (zero-copy) or own
//! its bytes after a repack, without the consumer (kernels, model) caring which.

use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// A read-only byte range that is either memory-mapped or owned.
///
/// Cloning is cheap (an `Arc` bump); slicing never copies.
#[derive(Clone)]
pub struct Storage {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    offset: usize,
    len: usize,
}

impl Storage {
    /// Takes ownership of a byte vector.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Storage {
            owner: Arc::new(bytes),
            offset: 0,
            len,
        }
    }

    /// Memory-maps a whole file read-only.
    pub fn map_file(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is read-only; like every mmap-based loader (llama.cpp, candle) we rely on
        // the file not being truncated while the model is loaded.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let len = map.len();
        Ok(Storage {
            owner: Arc::new(map),
            offset: 0,
            len,
        })
    }

    /// A sub-range of this storage, or `None` if it falls outside.
    pub fn slice(&self, offset: usize, len: usize) -> Option<Storage> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(Storage {
            owner: Arc::clone(&self.owner),
            offset: self.offset + offset,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.offset..self.offset + self.len]
    }
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Storage {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Storage({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_bytes_and_reject_out_of_range() {
        let s = Storage::from_vec((0u8..10).collect());
        let t = s.slice(2, 5).unwrap();
        assert_eq!(&*t, &[2, 3, 4, 5, 6]);
        let u = t.slice(1, 2).unwrap();
        assert_eq!(&*u, &[3, 4]);
        assert!(t.slice(4, 2).is_none());
        assert!(s.slice(usize::MAX, 2).is_none());
    }
}
