//! The key/value cache, paged: storage for a number of blocks of [`KV_BLOCK`] positions, one
//! buffer per layer for keys and one for values. A sequence owns a block table (block ids in
//! position order), so many sequences share one cache, memory goes where the tokens are, and
//! blocks holding a common prefix can be shared (`crate::blocks`). Inside a block the layout is
//! `[position][kv_head * head_dim]`, so a new token's K/V is one contiguous write and attention
//! reads a block's rows with one strided call.
//!
//! F16 (llama.cpp's and bitnet.cpp's default) halves the cache and the bytes attention reads per
//! generated token; F32 keeps the forward pass bit-for-bit the reference's float math.

use bitnet_backend::{KvType, KV_BLOCK};
use bitnet_kernels::ops;
use half::f16;
use half::slice::HalfFloatSliceExt;

/// One layer's keys or values. F16 is stored as raw `u16` so the zeroed allocation comes from
/// `calloc` (untouched pages cost no memory until a block is written).
pub(crate) enum Buf {
    F16(Vec<u16>),
    F32(Vec<f32>),
}

impl Buf {
    fn new(ty: KvType, n: usize) -> Buf {
        match ty {
            KvType::F16 => Buf::F16(vec![0u16; n]),
            KvType::F32 => Buf::F32(vec![0.0; n]),
        }
    }

    fn f16(b: &[u16]) -> &[f16] {
        bytemuck::cast_slice(b)
    }

    /// Stores `src` at element offset `at`.
    pub(crate) fn write(&mut self, at: usize, src: &[f32]) {
        let row = at..at + src.len();
        match self {
            Buf::F16(b) => RowMut::F16(&mut b[row]),
            Buf::F32(b) => RowMut::F32(&mut b[row]),
        }
        .write(src)
    }

    /// The rows of `len` elements at offsets `starts` (pairwise disjoint, as the slots of one
    /// step are), each writable on its own, in the order of `starts`; `None` if two overlap or
    /// one runs past the end.
    pub(crate) fn rows_mut(&mut self, starts: &[usize], len: usize) -> Option<Vec<RowMut<'_>>> {
        match self {
            Buf::F16(b) => Some(
                disjoint(b, starts, len)?
                    .into_iter()
                    .map(RowMut::F16)
                    .collect(),
            ),
            Buf::F32(b) => Some(
                disjoint(b, starts, len)?
                    .into_iter()
                    .map(RowMut::F32)
                    .collect(),
            ),
        }
    }

    /// `out[p] = dot(q, row p)` for the rows of `q.len()` values at element offsets
    /// `at + p * stride`, read in place.
    pub(crate) fn dots(&self, at: usize, stride: usize, q: &[f32], out: &mut [f32]) {
        match self {
            Buf::F16(b) => ops::dots_f16(q, &Self::f16(b)[at..], stride, out),
            Buf::F32(b) => {
                for (p, o) in out.iter_mut().enumerate() {
                    *o = ops::dot(q, &b[at + p * stride..][..q.len()]);
                }
            }
        }
    }

    /// `y += alphas[p] * row p` over the same rows as [`Self::dots`], in row order (so splitting
    /// the rows over several calls gives the same sums).
    pub(crate) fn axpys(&self, at: usize, stride: usize, alphas: &[f32], y: &mut [f32]) {
        match self {
            Buf::F16(b) => ops::axpys_f16(alphas, &Self::f16(b)[at..], stride, y),
            Buf::F32(b) => {
                for (p, &a) in alphas.iter().enumerate() {
                    ops::axpy(a, &b[at + p * stride..][..y.len()], y);
                }
            }
        }
    }

    /// [`Self::dots`] for a group of queries over the same rows (query `j` at `qs[j * n..][..n]`,
    /// its scores at `out[j * out_stride..][..rows_n]`): an f16 row is widened once for several
    /// queries where the CPU allows; every score has the bits of its own [`Self::dots`] call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dots_group(
        &self,
        at: usize,
        stride: usize,
        qs: &[f32],
        n: usize,
        rows_n: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        match self {
            Buf::F16(b) => {
                ops::dots_f16_group(qs, n, &Self::f16(b)[at..], stride, rows_n, out, out_stride)
            }
            Buf::F32(_) => {
                debug_assert!(n > 0 && qs.len().is_multiple_of(n));
                for (j, q) in qs.chunks_exact(n).enumerate() {
                    self.dots(at, stride, q, &mut out[j * out_stride..][..rows_n]);
                }
            }
        }
    }

    /// [`Self::axpys`] for a group of queries over the same rows: `ys[j * n..][..n] +=
    /// alphas[j * a_stride + p] * row p` in row order, each output with the bits of its own
    /// [`Self::axpys`] call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn axpys_group(
        &self,
        at: usize,
        stride: usize,
        alphas: &[f32],
        a_stride: usize,
        rows_n: usize,
        ys: &mut [f32],
        n: usize,
    ) {
        match self {
            Buf::F16(b) => {
                ops::axpys_f16_group(alphas, a_stride, rows_n, &Self::f16(b)[at..], stride, ys, n)
            }
            Buf::F32(_) => {
                debug_assert!(n > 0 && ys.len().is_multiple_of(n));
                for (j, y) in ys.chunks_exact_mut(n).enumerate() {
                    self.axpys(at, stride, &alphas[j * a_stride..][..rows_n], y);
                }
            }
        }
    }
}

/// One cache row, borrowed for writing ([`Buf::rows_mut`]).
pub(crate) enum RowMut<'a> {
    F16(&'a mut [u16]),
    F32(&'a mut [f32]),
}

impl RowMut<'_> {
    /// Stores `src` (the row's length); the one place a cache row is converted and written.
    pub(crate) fn write(&mut self, src: &[f32]) {
        match self {
            RowMut::F16(r) => bytemuck::cast_slice_mut::<u16, f16>(r).convert_from_f32_slice(src),
            RowMut::F32(r) => r.copy_from_slice(src),
        }
    }
}

/// `buf[s..s + len]` for every `s` in `starts`, in that order.
fn disjoint<'a, T>(buf: &'a mut [T], starts: &[usize], len: usize) -> Option<Vec<&'a mut [T]>> {
    let mut order: Vec<usize> = (0..starts.len()).collect();
    order.sort_unstable_by_key(|&i| starts[i]);
    let mut rows: Vec<Option<&'a mut [T]>> = starts.iter().map(|_| None).collect();
    let (mut rest, mut base) = (buf, 0);
    for i in order {
        let skip = starts[i].checked_sub(base)?;
        if rest.len() < skip.checked_add(len)? {
            return None;
        }
        let (row, tail) = std::mem::take(&mut rest)[skip..].split_at_mut(len);
        rows[i] = Some(row);
        (rest, base) = (tail, starts[i] + len); // no overflow: inside `buf` (checked above)
    }
    rows.into_iter().collect()
}

pub struct KvCache {
    pub(crate) k: Vec<Buf>,
    pub(crate) v: Vec<Buf>,
    kv_dim: usize,
    blocks: usize,
    ty: KvType,
}

impl KvCache {
    /// A cache of `blocks` blocks of [`KV_BLOCK`] positions.
    pub fn new(layers: usize, kv_dim: usize, blocks: usize, ty: KvType) -> KvCache {
        let per_layer = kv_dim * blocks * KV_BLOCK;
        KvCache {
            k: (0..layers).map(|_| Buf::new(ty, per_layer)).collect(),
            v: (0..layers).map(|_| Buf::new(ty, per_layer)).collect(),
            kv_dim,
            blocks,
            ty,
        }
    }

    /// Blocks needed for `tokens` positions.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(KV_BLOCK)
    }

    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Positions the cache can hold, over all sequences.
    pub fn capacity(&self) -> usize {
        self.blocks * KV_BLOCK
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    pub fn ty(&self) -> KvType {
        self.ty
    }

    /// Bytes the cache occupies once every block has been written.
    pub fn nbytes(&self) -> usize {
        Self::nbytes_for(self.k.len(), self.kv_dim, self.capacity(), self.ty)
    }

    /// Bytes a cache of `capacity` positions would occupy, for planning before allocating.
    pub fn nbytes_for(layers: usize, kv_dim: usize, capacity: usize, ty: KvType) -> usize {
        2usize
            .saturating_mul(layers)
            .saturating_mul(kv_dim)
            .saturating_mul(capacity)
            .saturating_mul(ty.size())
    }

    /// Element offset of position `pos` of a sequence whose block table is `table`.
    pub(crate) fn offset(&self, table: &[u32], pos: usize) -> usize {
        (table[pos / KV_BLOCK] as usize * KV_BLOCK + pos % KV_BLOCK) * self.kv_dim
    }
}
