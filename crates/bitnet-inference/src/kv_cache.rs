//! The key/value cache: one contiguous f32 buffer per layer for keys and one for values,
//! laid out `[position][kv_head * head_dim]` so a new token's K/V is one contiguous write.

pub struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    kv_dim: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(layers: usize, kv_dim: usize, capacity: usize) -> KvCache {
        let per_layer = kv_dim * capacity;
        KvCache {
            k: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
            kv_dim,
            capacity,
        }
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Bytes the cache occupies.
    pub fn nbytes(&self) -> usize {
        2 * self.k.len() * self.kv_dim * self.capacity * std::mem::size_of::<f32>()
    }

    /// Bytes one cache of this shape would occupy, for planning before allocating.
    pub fn nbytes_for(layers: usize, kv_dim: usize, capacity: usize) -> usize {
        2 * layers * kv_dim * capacity * std::mem::size_of::<f32>()
    }
}
