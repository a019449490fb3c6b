//! KV block bookkeeping for many sequences: which blocks are free, who holds each, and the
//! prefix cache (automatic prefix caching, as vLLM does it).
//!
//! A block that a sequence has filled completely is registered under a key made of its
//! tokens and the hash of every token before it; another prompt that starts with the same
//! tokens finds the same chain of keys and takes those blocks instead of computing them again.
//! The K/V of a position depend only on the tokens up to it (every step of the forward pass is
//! per token or per sequence), so a shared block holds exactly what the new sequence would
//! compute. A released block keeps its key and its contents while nothing needs its memory:
//! freed blocks with a key are evicted least recently used first, after the never-used ones.

use bitnet_backend::KV_BLOCK;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

/// A full block's identity: the hash of all tokens before it, and its own tokens. Lookups
/// compare the tokens themselves, so only a 64-bit collision of two different histories that
/// are followed by the same block could alias.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct BlockKey {
    parent: u64,
    tokens: [u32; KV_BLOCK],
}

pub(crate) struct BlockManager {
    /// Never-used or key-less free blocks.
    free: Vec<u32>,
    refs: Vec<u32>,
    key: Vec<Option<BlockKey>>,
    cached: HashMap<BlockKey, u32>,
    /// Free blocks that still hold a cached prefix, by release time (oldest first).
    evictable: BTreeMap<u64, u32>,
    released_at: Vec<u64>,
    clock: u64,
    prefix_cache: bool,
    /// Keyed per process, so which prompts' parent hashes collide cannot be worked out offline
    /// (the attack on vLLM's prefix cache, CVE-2025-25183).
    hasher: RandomState,
}

impl BlockManager {
    pub(crate) fn new(blocks: usize, prefix_cache: bool) -> BlockManager {
        BlockManager {
            // Reversed so blocks are handed out from 0 up (denser memory use for small loads).
            free: (0..blocks as u32).rev().collect(),
            refs: vec![0; blocks],
            key: vec![None; blocks],
            cached: HashMap::new(),
            evictable: BTreeMap::new(),
            released_at: vec![0; blocks],
            clock: 0,
            prefix_cache,
            hasher: RandomState::new(),
        }
    }

    /// Keys of the full blocks of `tokens`, in order.
    pub(crate) fn chain(&self, tokens: &[u32]) -> Vec<BlockKey> {
        let mut parent: Option<BlockKey> = None;
        tokens
            .chunks_exact(KV_BLOCK)
            .map(|c| {
                let key = self.next_key(parent.as_ref(), c);
                parent = Some(key.clone());
                key
            })
            .collect()
    }

    /// The key of the full block of `tokens` after `parent` (the previous key, `None` for the
    /// first block).
    pub(crate) fn next_key(&self, parent: Option<&BlockKey>, tokens: &[u32]) -> BlockKey {
        let mut t = [0u32; KV_BLOCK];
        t.copy_from_slice(tokens);
        BlockKey {
            parent: parent.map_or(0, |p| self.hasher.hash_one(p)),
            tokens: t,
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks a sequence could get right now (free ones and evictable cached ones).
    pub(crate) fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks held by at least one sequence.
    pub(crate) fn in_use(&self) -> usize {
        self.total() - self.available()
    }

    /// A block for a sequence to write, or `None` when every block is held.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                if let Some(k) = self.key[b as usize].take() {
                    self.cached.remove(&k);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// The cached block holding `key`, now also held by the caller.
    pub(crate) fn lookup(&mut self, key: &BlockKey) -> Option<u32> {
        if !self.prefix_cache {
            return None;
        }
        let b = *self.cached.get(key)?;
        let i = b as usize;
        if self.refs[i] == 0 {
            self.evictable.remove(&self.released_at[i]);
        }
        self.refs[i] += 1;
        Some(b)
    }

    /// Records that `block` (held by the caller, completely written) holds `key`. If another
    /// block already holds it (two sequences computed the same prefix at once) the first stays.
    pub(crate) fn register(&mut self, block: u32, key: BlockKey) {
        if !self.prefix_cache || self.key[block as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(key.clone()) {
            e.insert(block);
            self.key[block as usize] = Some(key);
        }
    }

    pub(crate) fn release(&mut self, block: u32) {
        let i = block as usize;
        debug_assert!(self.refs[i] > 0, "block {block} released twice");
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] > 0 {
            return;
        }
        if self.key[i].is_some() {
            self.clock += 1;
            self.released_at[i] = self.clock;
            self.evictable.insert(self.clock, block);
        } else {
            self.free.push(block);
        }
    }

    pub(crate) fn release_all(&mut self, blocks: &mut Vec<u32>) {
        for b in blocks.drain(..) {
            self.release(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(seed: u32, n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| seed * 1000 + i).collect()
    }

    #[test]
    fn shared_prefix_blocks_are_found_and_evicted_last_used_last() {
        let mut m = BlockManager::new(4, true);
        let a = toks(1, 2 * KV_BLOCK);
        let keys = m.chain(&a);
        let b0 = m.allocate().unwrap();
        let b1 = m.allocate().unwrap();
        m.register(b0, keys[0].clone());
        m.register(b1, keys[1].clone());
        m.release(b0);
        m.release(b1);
        assert_eq!(m.in_use(), 0);
        assert_eq!(m.lookup(&keys[0]), Some(b0));
        assert_eq!(m.in_use(), 1);
        // Same second block after a different first block: a different key.
        let mut other = toks(2, KV_BLOCK);
        other.extend_from_slice(&a[KV_BLOCK..]);
        assert_eq!(m.lookup(&m.chain(&other)[1]), None);
        // Two never-used blocks go first, then the evictable b1, then nothing (b0 is held).
        let got: Vec<u32> = (0..3).map(|_| m.allocate().unwrap()).collect();
        assert!(got.contains(&b1));
        assert_eq!(m.allocate(), None);
        assert_eq!(m.lookup(&keys[1]), None, "b1 was evicted and reused");
        m.release(b0);
        assert_eq!(m.lookup(&keys[0]), Some(b0));
    }

    #[test]
    fn disabled_cache_never_shares() {
        let mut m = BlockManager::new(2, false);
        let keys = m.chain(&toks(3, KV_BLOCK));
        let b = m.allocate().unwrap();
        m.register(b, keys[0].clone());
        m.release(b);
        assert_eq!(m.lookup(&keys[0]), None);
        assert_eq!(m.available(), 2);
    }
}
