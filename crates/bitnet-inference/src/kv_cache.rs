//! The key/value cache: one contiguous buffer per layer for keys and one for values, laid out
//! `[position][kv_head * head_dim]` so a new token's K/V is one contiguous write.
//!
//! F16 (llama.cpp's and bitnet.cpp's default) halves the cache and the bytes attention reads per
//! generated token; F32 keeps the forward pass bit-for-bit the reference's float math.

use bitnet_kernels::ops;
use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    #[default]
    F16,
    F32,
}

impl KvType {
    pub fn parse(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(KvType::F16),
            "f32" => Some(KvType::F32),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

pub(crate) enum Buf {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Buf {
    fn new(ty: KvType, n: usize) -> Buf {
        match ty {
            KvType::F16 => Buf::F16(vec![f16::ZERO; n]),
            KvType::F32 => Buf::F32(vec![0.0; n]),
        }
    }

    /// Stores `src` at element offset `at`.
    pub(crate) fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            Buf::F16(b) => b[at..at + src.len()].convert_from_f32_slice(src),
            Buf::F32(b) => b[at..at + src.len()].copy_from_slice(src),
        }
    }

    /// `out[p] = dot(q, row p)` for the rows of `q.len()` values at element offsets
    /// `at + p * stride`, read in place.
    pub(crate) fn dots(&self, at: usize, stride: usize, q: &[f32], out: &mut [f32]) {
        match self {
            Buf::F16(b) => ops::dots_f16(q, &b[at..], stride, out),
            Buf::F32(b) => {
                for (p, o) in out.iter_mut().enumerate() {
                    *o = ops::dot(q, &b[at + p * stride..][..q.len()]);
                }
            }
        }
    }

    /// `y += alphas[p] * row p` over the same rows as [`Self::dots`].
    pub(crate) fn axpys(&self, at: usize, stride: usize, alphas: &[f32], y: &mut [f32]) {
        match self {
            Buf::F16(b) => ops::axpys_f16(alphas, &b[at..], stride, y),
            Buf::F32(b) => {
                for (p, &a) in alphas.iter().enumerate() {
                    ops::axpy(a, &b[at + p * stride..][..y.len()], y);
                }
            }
        }
    }
}

pub struct KvCache {
    pub(crate) k: Vec<Buf>,
    pub(crate) v: Vec<Buf>,
    kv_dim: usize,
    capacity: usize,
    ty: KvType,
}

impl KvCache {
    pub fn new(layers: usize, kv_dim: usize, capacity: usize, ty: KvType) -> KvCache {
        let per_layer = kv_dim * capacity;
        KvCache {
            k: (0..layers).map(|_| Buf::new(ty, per_layer)).collect(),
            v: (0..layers).map(|_| Buf::new(ty, per_layer)).collect(),
            kv_dim,
            capacity,
            ty,
        }
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    pub fn ty(&self) -> KvType {
        self.ty
    }

    /// Bytes the cache occupies.
    pub fn nbytes(&self) -> usize {
        Self::nbytes_for(self.k.len(), self.kv_dim, self.capacity, self.ty)
    }

    /// Bytes one cache of this shape would occupy, for planning before allocating.
    pub fn nbytes_for(layers: usize, kv_dim: usize, capacity: usize, ty: KvType) -> usize {
        2usize
            .saturating_mul(layers)
            .saturating_mul(kv_dim)
            .saturating_mul(capacity)
            .saturating_mul(ty.size())
    }
}
