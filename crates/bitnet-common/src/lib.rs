//! Types shared by every bitnet-rs crate.
//!
//! [`Storage`] lets a tensor point straight into a memory-mapped model file (zero-copy), own its
//! bytes after a repack, or live in an [`ArenaBuilder`] arena of huge pages, without the consumer
//! (kernels, model) caring which.

mod file;
pub use file::{
    describe_file_type, open_regular, open_stream, read_regular, read_regular_to_string,
};

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
    /// A read-only file mapping (pages belong to the page cache).
    Mapped(Arc<memmap2::Mmap>),
    Owned(Arc<Vec<u8>>),
    /// Anonymous memory from an [`ArenaBuilder`]; only the Storage's own range may be read.
    Arena(Arc<memmap2::MmapRaw>),
}

/// Huge-page size the arena aligns to (x86-64 and the common aarch64 configuration).
const HUGE_PAGE: usize = 2 << 20;

/// Alignment of every slice pushed into an arena: a cache line, and a whole 512-bit vector.
pub const ARENA_ALIGN: usize = 64;

/// Collects tensors into one block of anonymous memory that is advised to use transparent huge
/// pages (Linux `MADV_HUGEPAGE`); each push returns a read-only [`Storage`] of its bytes.
///
/// Why: decoding streams every weight once per token. From a file mapping (4 KiB pages) that is
/// one TLB miss per 4 KiB, ~300,000 per token for a 2B model, and the page walks compete with the
/// weight reads for memory bandwidth; with 2 MiB pages they all but vanish.
///
/// Soundness: the block is only ever written in its unused tail (`used..capacity`), and a
/// [`Storage`] is only ever handed out for a range below `used`, so no byte is written after a
/// reference to it exists; slices are built per range, never over the whole block.
pub struct ArenaBuilder {
    map: Arc<memmap2::MmapRaw>,
    start: usize,
    used: usize,
    capacity: usize,
}

impl ArenaBuilder {
    /// Reserves `capacity` bytes (see [`Self::capacity_for`]). Pages are only committed as they
    /// are written.
    pub fn new(capacity: usize) -> std::io::Result<Self> {
        let too_big = || std::io::Error::other("arena size overflows");
        let len = capacity.checked_add(HUGE_PAGE).ok_or_else(too_big)?;
        let map = memmap2::MmapOptions::new().len(len.max(1)).map_anon()?;
        // Start on a huge-page boundary: the kernel only backs aligned 2 MiB ranges with huge pages.
        let start = map.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
        #[cfg(target_os = "linux")]
        {
            // A hint: without THP (or with it disabled) the arena still works with small pages.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        Ok(ArenaBuilder {
            map: Arc::new(memmap2::MmapRaw::from(map)),
            start,
            used: 0,
            capacity,
        })
    }

    /// Bytes needed to push slices of these lengths.
    pub fn capacity_for(lens: impl IntoIterator<Item = usize>) -> Option<usize> {
        lens.into_iter().try_fold(0usize, |acc, l| {
            acc.div_ceil(ARENA_ALIGN)
                .checked_mul(ARENA_ALIGN)?
                .checked_add(l)
        })
    }

    /// Reserves the next `len` bytes (at an [`ARENA_ALIGN`] boundary); returns their offset.
    fn reserve(&mut self, len: usize) -> std::io::Result<usize> {
        let off = self.used.div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
        off.checked_add(len)
            .filter(|&e| e <= self.capacity)
            .map(|_| off)
            .ok_or_else(|| std::io::Error::other("arena capacity exceeded"))
    }

    fn storage(&self, off: usize, len: usize) -> Storage {
        Storage {
            owner: Owner::Arena(self.map.clone()),
            offset: self.start + off,
            len,
        }
    }

    /// Copies `bytes` in.
    pub fn push(&mut self, bytes: &[u8]) -> std::io::Result<Storage> {
        self.push_with(bytes.len(), |buf| buf.copy_from_slice(bytes))
    }

    /// Appends `len` bytes that `fill` writes (they start out zeroed).
    pub fn push_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> std::io::Result<Storage> {
        let off = self.reserve(len)?;
        // SAFETY: `start + capacity <= map.len()` (new() mapped capacity + HUGE_PAGE bytes and
        // start <= HUGE_PAGE) and `off + len <= capacity` (reserve); the range lies at or above
        // `used`, where no Storage points yet (type-level comment). Fresh anonymous memory is
        // zeroed.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(self.start + off), len)
        };
        fill(buf);
        self.used = off + len;
        Ok(self.storage(off, len))
    }

    /// Moves `data` in: copies it piece by piece, releasing the file pages of each piece once
    /// copied ([`Storage::release_pages`]), so moving a mapped tensor never holds both copies
    /// resident (an owned source is freed when the caller drops it).
    pub fn push_storage(&mut self, data: &Storage) -> std::io::Result<Storage> {
        const PIECE: usize = 16 << 20;
        self.push_with(data.len(), |buf| {
            for (i, dst) in buf.chunks_mut(PIECE).enumerate() {
                let at = i * PIECE;
                dst.copy_from_slice(&data[at..at + dst.len()]);
                if let Some(piece) = data.slice(at, dst.len()) {
                    piece.release_pages();
                }
            }
        })
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

    /// Memory-maps a whole regular file read-only (FIFOs and devices are refused: see
    /// [`open_regular`]).
    pub fn map_file(path: &Path) -> std::io::Result<Self> {
        let file = open_regular(path)?;
        // SAFETY: the map is read-only; like every mmap-based loader (llama.cpp, candle) we rely on
        // the file not being truncated while the model is loaded (if it is, reading the lost
        // pages raises SIGBUS, which the `bitnet` binary reports as such).
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

    /// Whether the bytes live in an arena ([`ArenaBuilder`]).
    pub fn is_in_arena(&self) -> bool {
        matches!(self.owner, Owner::Arena(_))
    }

    /// Whether the bytes live in a file mapping (zero-copy) rather than owned memory.
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
        match &self.owner {
            Owner::Mapped(m) => &m[self.offset..self.offset + self.len],
            Owner::Owned(v) => &v[self.offset..self.offset + self.len],
            // SAFETY: ArenaBuilder made this range (in bounds of the map) and never writes to it
            // again; the Arc keeps the map alive as long as this Storage.
            Owner::Arena(m) => unsafe {
                std::slice::from_raw_parts(m.as_ptr().add(self.offset), self.len)
            },
        }
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

    #[test]
    fn arena_slices_hold_what_was_pushed() {
        let parts: Vec<Vec<u8>> = vec![vec![1; 3], vec![], (0..200).map(|i| i as u8).collect()];
        let cap = ArenaBuilder::capacity_for(parts.iter().map(Vec::len)).unwrap();
        let mut b = ArenaBuilder::new(cap).unwrap();
        // The last part goes in through push_storage (the path mapped tensors take).
        let mut got: Vec<Storage> = parts[..2].iter().map(|p| b.push(p).unwrap()).collect();
        got.push(
            b.push_storage(&Storage::from_vec(parts[2].clone()))
                .unwrap(),
        );
        assert!(b.push(&[0; 1]).is_err(), "capacity is exact");
        assert!(b.push_with(1, |_| {}).is_err());
        drop(b);
        for (p, s) in parts.iter().zip(&got) {
            assert_eq!(&**s, &p[..]);
            assert!(s.is_in_arena() && !s.is_mapped());
            assert_eq!(s.as_ptr() as usize % ARENA_ALIGN, 0);
        }
        let sub = got[2].slice(10, 5).unwrap();
        assert_eq!(&*sub, &parts[2][10..15]);
    }
}
