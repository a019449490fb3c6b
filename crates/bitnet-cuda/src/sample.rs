//! Sampling's top-k selection on the GPU (`penalize_logits`, then `top_k_split`, and
//! `top_k_merge` for rows of two chunks or more, in `kernels/forward.cu`): the penalties, the
//! temperature and the choice of each row's `k` best tokens run where the logits are, and only
//! `k` (id, value) pairs per row come back instead of the whole vocabulary (half a megabyte a
//! row at 128k tokens, and a 128k-element selection on the host per token). The candidates are
//! `bitnet_backend::sampling::top_k`'s bit for bit (tested in `tests/cuda_forward.rs`), so a
//! seeded sampler draws the same tokens either way.

use crate::compile::FORWARD;
use crate::device::{Gpu, HostStage};
use crate::error::{CudaError, Result};
use crate::ops::cfg;
use bitnet_backend::sampling::{best_first, TopK, MAX_TOP_K};
use cudarc::driver::{CudaSlice, CudaViewMut, PushKernelArg};

/// Threads of a `top_k_merge` block (one block per row).
const TOP_K_THREADS: u32 = 1024;
/// Ids a `top_k_split` block selects from (at least `MAX_TOP_K`; a row of one chunk takes one
/// block, straight into the results), and its threads.
const TOP_K_CHUNK: usize = 4096;
const TOP_K_SPLIT_THREADS: u32 = 256;

/// Device scratch of [`Gpu::top_k`]: the packed requests and the candidates, grown on demand.
pub struct TopKScratch {
    meta: CudaSlice<u32>,
    ids: CudaSlice<u32>,
    vals: CudaSlice<f32>,
    /// `top_k_split`'s candidates: `k` a chunk and row.
    cand_ids: CudaSlice<u32>,
    cand_vals: CudaSlice<f32>,
    host: Vec<u32>,
    /// Page-locked memory the candidates come back through.
    host_ids: HostStage<u32>,
    host_vals: HostStage<f32>,
}

impl TopKScratch {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(TopKScratch {
            meta: gpu.stream.alloc_zeros(256)?,
            ids: gpu.stream.alloc_zeros(MAX_TOP_K)?,
            vals: gpu.stream.alloc_zeros(MAX_TOP_K)?,
            cand_ids: gpu.stream.alloc_zeros(1)?,
            cand_vals: gpu.stream.alloc_zeros(1)?,
            host: Vec::new(),
            host_ids: HostStage::default(),
            host_vals: HostStage::default(),
        })
    }
}

impl Gpu {
    /// For each of `rows.len()` rows of `logits` (`stride` values apart), the `k` best of its
    /// first `vocab` values as `bitnet_backend::sampling::top_k` selects them (penalties
    /// applied to `logits` in place, then `scaled(l, temperature)`), best first.
    pub fn top_k(
        &self,
        logits: &mut CudaViewMut<'_, f32>,
        stride: usize,
        vocab: usize,
        rows: &[TopK],
        s: &mut TopKScratch,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        let r = rows.len();
        if r == 0 {
            return Ok(Vec::new());
        }
        if vocab == 0 || vocab > stride || logits.len() < r * stride {
            return Err(CudaError::Shape(format!(
                "top-k over {vocab} of {stride} logits a row: {} logits for {r} rows",
                logits.len()
            )));
        }
        // The packed requests (layout in forward.cu, above `penalize_logits`).
        let entries: usize = rows.iter().map(|q| q.penalties.tokens.len()).sum();
        let h = &mut s.host;
        h.clear();
        h.resize(6 * r + 4 * entries, 0);
        let mut total = 0usize;
        for (i, q) in rows.iter().enumerate() {
            if q.k == 0 || q.k > MAX_TOP_K || q.temperature.is_nan() || q.temperature <= 0.0 {
                return Err(CudaError::Shape(format!(
                    "top-k request of k = {}, temperature {} (k must be 1..={MAX_TOP_K}, the \
                     temperature > 0)",
                    q.k, q.temperature
                )));
            }
            let k = q.k.min(vocab);
            h[i] = k as u32;
            h[r + i] = q.temperature.to_bits();
            h[2 * r + i] = q.penalties.repeat.to_bits();
            h[3 * r + i] = q.penalties.presence.to_bits();
            h[4 * r + i] = q.penalties.frequency.to_bits();
            h[5 * r + i] = total as u32;
            total += k;
        }
        let mut e = 6 * r;
        for (i, q) in rows.iter().enumerate() {
            for t in &q.penalties.tokens {
                h[e..e + 4].copy_from_slice(&[i as u32, t.id, t.repeat as u32, t.count]);
                e += 4;
            }
        }
        if s.meta.len() < h.len() {
            s.meta = self.stream.alloc_zeros(h.len().next_power_of_two())?;
        }
        if s.ids.len() < total {
            s.ids = self.stream.alloc_zeros(total.next_power_of_two())?;
            s.vals = self.stream.alloc_zeros(total.next_power_of_two())?;
        }
        self.copy_in_async(&mut s.meta, h)?;
        let (stride_i, vocab_i, rows_i) = (stride as i64, vocab as i32, r as i32);
        if entries > 0 {
            let f = self.kernels.function(FORWARD, "penalize_logits")?;
            let n = entries as i32;
            let mut l = self.stream.launch_builder(&f);
            l.arg(&mut *logits)
                .arg(&stride_i)
                .arg(&vocab_i)
                .arg(&s.meta)
                .arg(&rows_i)
                .arg(&n);
            let cfg = cfg(((entries as u32).div_ceil(256), 1), 256, 0);
            // SAFETY: arguments match the kernel; entries' rows and ids are checked there
            // against `rows` and `vocab`, and r rows of `stride` logits exist (checked above).
            unsafe { l.launch(cfg) }?;
        }
        // A row of two chunks or more is selected by a block a chunk, then a block a row over
        // the chunks' candidates: the same reads, spread over many more SMs (one block over a
        // 128K vocabulary took ~220 us of a sampled step at batch 1). A row of one chunk is
        // its own candidates: one block, writing the results.
        let chunks = vocab.div_ceil(TOP_K_CHUNK);
        let (out_ids, out_vals) = if chunks >= 2 {
            let cands = chunks * total;
            if s.cand_ids.len() < cands {
                s.cand_ids = self.stream.alloc_zeros(cands.next_power_of_two())?;
                s.cand_vals = self.stream.alloc_zeros(cands.next_power_of_two())?;
            }
            (&mut s.cand_ids, &mut s.cand_vals)
        } else {
            (&mut s.ids, &mut s.vals)
        };
        let chunk_i = TOP_K_CHUNK.min(vocab) as i32;
        let f = self.kernels.function(FORWARD, "top_k_split")?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&mut *logits)
            .arg(&stride_i)
            .arg(&vocab_i)
            .arg(&s.meta)
            .arg(&rows_i)
            .arg(&chunk_i)
            .arg(out_ids)
            .arg(out_vals);
        let grid = cfg((chunks as u32, r as u32), TOP_K_SPLIT_THREADS, 0);
        // SAFETY: arguments match the kernel; block (c, i) writes at most k_i pairs at
        // offset_i * chunks + c * k_i: inside the chunks * total candidates allocated above, or
        // with one chunk inside the `total` results.
        unsafe { l.launch(grid) }?;
        if chunks >= 2 {
            let chunks_i = chunks as i32;
            let f = self.kernels.function(FORWARD, "top_k_merge")?;
            let mut l = self.stream.launch_builder(&f);
            l.arg(&s.meta)
                .arg(&rows_i)
                .arg(&vocab_i)
                .arg(&chunk_i)
                .arg(&chunks_i)
                .arg(&s.cand_ids)
                .arg(&s.cand_vals)
                .arg(&mut s.ids)
                .arg(&mut s.vals);
            // SAFETY: arguments match the kernel; row i reads the candidates written above
            // and writes ids / vals[offset_i .. offset_i + k_i), inside `total`.
            unsafe { l.launch(cfg((r as u32, 1), TOP_K_THREADS, 0)) }?;
        }
        // Both copies behind the kernels, then one wait for all of it.
        let ids = s.host_ids.queue(self, &s.ids.slice(..total))?;
        let vals = match s.host_vals.queue(self, &s.vals.slice(..total)) {
            Ok(v) => v,
            Err(e) => {
                // The ids' copy may be in flight into memory that outlives this call.
                let _ = self.stream.synchronize();
                return Err(e);
            }
        };
        self.stream.synchronize()?;
        // SAFETY: the stream was synchronized after both copies were queued, each into a
        // stage of its own.
        let (ids, vals) = unsafe { (s.host_ids.take(ids)?, s.host_vals.take(vals)?) };
        let mut at = 0;
        Ok(rows
            .iter()
            .map(|q| {
                let k = q.k.min(vocab);
                let mut c: Vec<(u32, f32)> = ids[at..at + k]
                    .iter()
                    .copied()
                    .zip(vals[at..at + k].iter().copied())
                    .collect();
                at += k;
                c.sort_unstable_by(best_first);
                c
            })
            .collect())
    }
}
