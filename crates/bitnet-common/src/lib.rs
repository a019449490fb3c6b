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
    owner: Owner,
    offset: usize,
    len: usize,
}

#[derive(Clone)]
enum Owner {
    Mapped(Arc<memmap2::Mmap>),
    Owned(Arc<Vec<u8>>),
}

impl Owner {
    fn bytes(&self) -> &[u8] {
        match self {
            Owner::Mapped(m) => m,
            Owner::Owned(v) => v,
        }
    }
}

impl Storage {
    /// Takes ownership of a byte vector.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Storage {
            owner: Owner::Owned(Arc::new(bytes)),
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
            owner: Owner::Mapped(Arc::new(map)),
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
            owner: self.owner.clone(),
            offset: self.offset + offset,
            len,
        })
    }

    /// Tells the OS that the mapped pages of this range are not needed any more (after a
    /// tensor was repacked into owned memory), so they stop counting towards resident memory.
    /// A hint only: the bytes stay readable and are paged in again if touched.
    pub fn release_pages(&self) {
        if let Owner::Mapped(map) = &self.owner {
            // SAFETY: the map is a private read-only file mapping, for which MADV_DONTNEED only
            // drops clean pages that the kernel re-reads from the file on the next access.
            #[cfg(unix)]
            unsafe {
                let _ = map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.offset,
                    self.len,
                );
            }
            #[cfg(not(unix))]
            let _ = map;
        }
    }

    /// Whether the bytes live in a memory map (zero-copy) rather than owned memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.owner, Owner::Mapped(_))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.owner.bytes()[self.offset..self.offset + self.len]
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
        assert!(!s.is_mapped());
    }

    #[test]
    fn released_mapped_pages_read_back_the_same() {
        let path = std::env::temp_dir().join(format!("bitnet-common-{}", std::process::id()));
        let data: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let s = Storage::map_file(&path).unwrap();
        assert!(s.is_mapped());
        let part = s.slice(100, 5000).unwrap();
        part.release_pages();
        assert_eq!(&*s, &data[..]);
        std::fs::remove_file(&path).unwrap();
    }
}
