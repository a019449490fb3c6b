//! The persistent decode step (`decode_layers` in `kernels/forward.cu`): every layer of one
//! token of one sequence in one cooperative launch, a block per SM, grid-wide barriers between
//! the five stages of a layer and the next stage's weight rows streamed into shared memory
//! while the current one computes. Same bits as the fused per-stage kernels (the same norm and
//! attention code with the same thread counts, exact integer matmuls).
//!
//! A [`PersistentStep`] belongs to one context: its descriptor table points at that context's
//! KV cache, and its barrier words must not be shared by two launches in flight.

use crate::compile::FORWARD;
use crate::device::Gpu;
use crate::error::{CudaError, Result};
use crate::model::GpuModel;
use crate::ops::{AttnSplit, NormInput, PagedBatch, ATT_CHUNK, DECODE_ATTN_THREADS};
use bitnet_models::Activation;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaSlice, CudaViewMut, DevicePtr, LaunchConfig, PushKernelArg};

/// Threads of a block: the norms must run with the fused kernels' 1024 (`NORM_THREADS`).
const THREADS: u32 = 1024;
/// Pointers per layer in the descriptor table (`DECODE_PTRS` in forward.cu).
const PTRS: usize = 14;
/// The largest head dimension the kernel takes (`DECODE_MAX_HD` in forward.cu).
const MAX_HEAD_DIM: usize = 128;
/// The most residual-stream rows one block keeps (`DECODE_OWN_ROWS` in forward.cu).
const OWN_ROWS: usize = 64;
/// The kernel for contexts of one attention chunk, and for longer ones.
const KERNEL: &str = "decode_layers";
const KERNEL_LONG: &str = "decode_layers_long";
/// Room for the kernel's static shared memory (reduction slots, the barrier base).
const STATIC_SMEM: usize = 1024;

pub(crate) struct PersistentStep {
    desc: CudaSlice<u64>,
    bar: CudaSlice<u32>,
    /// Bytes of each of the two weight buffers: a block's largest slice of any matrix with its
    /// rows' scales (`wrows` bytes), then a norm's weights.
    wbuf: usize,
    wrows: usize,
    /// Bytes of a norm row and its int8 values (the region attention shares).
    norm_region: usize,
    /// The most dynamic shared memory a block may have on this GPU.
    max_smem: usize,
    grid: u32,
    /// Block 0's clock at each stage's end and barrier exit (`BITNET_CUDA_PROFILE=1`).
    prof: Option<CudaSlice<u64>>,
}

impl PersistentStep {
    /// The step for this context's caches, or `None` where the kernel does not apply (the
    /// per-stage kernels run then): no cooperative launch, or a block's share of the largest
    /// matrix does not fit in shared memory twice over.
    pub(crate) fn new(
        gpu: &Gpu,
        m: &GpuModel,
        k: &[CudaSlice<u16>],
        v: &[CudaSlice<u16>],
    ) -> Result<Option<PersistentStep>> {
        // The occupancy query needs the context current on this thread, which may be a
        // scheduler's own thread that has launched nothing yet.
        gpu.ctx.bind_to_thread()?;
        if gpu
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)?
            == 0
        {
            return Ok(None);
        }
        let max_smem = gpu.smem_per_block;
        let grid = gpu.sm_count;
        let c = &m.config;
        let d = m.dims;
        let (h, qd, ffn) = (c.hidden_size, d.q_dim(), c.intermediate_size);
        let per = |rows: usize| rows.div_ceil(grid as usize);
        let mut wbuf = 0;
        for l in &m.layers {
            // The block's rows, then their f32 scales; gate/up's by pairs (the block's rows of
            // the gate half and the same rows of the up half).
            for (w, rows) in [
                (&l.qkv, per(l.qkv.rows)),
                (&l.wo, per(l.wo.rows)),
                (&l.gate_up, 2 * per(l.gate_up.rows / 2)),
                (&l.down, per(l.down.rows)),
            ] {
                wbuf = wbuf.max(rows * (w.row_bytes + 4));
            }
        }
        let maxcols = h.max(qd).max(ffn);
        // Then the weights of the norm in front of the matrix (at most maxcols floats).
        let wrows = wbuf.div_ceil(16) * 16;
        let wbuf = wrows + 4 * maxcols.div_ceil(4) * 4;
        let norm_region = 4 * maxcols.div_ceil(4) * 4 + maxcols.div_ceil(128) * 128;
        // The short build gives each query head a block of its own.
        if per(h) > OWN_ROWS || d.head_dim > MAX_HEAD_DIM || d.heads > grid as usize {
            return Ok(None);
        }
        if 2 * wbuf + norm_region + STATIC_SMEM > max_smem {
            return Ok(None);
        }
        let smem = 2 * wbuf + norm_region;
        for name in [KERNEL, KERNEL_LONG] {
            let f = gpu.kernels.function(FORWARD, name)?;
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                (max_smem - STATIC_SMEM) as i32,
            )?;
            if f.occupancy_max_active_blocks_per_multiprocessor(THREADS, smem, None)? < 1 {
                return Ok(None);
            }
        }
        let s = &gpu.stream;
        let mut table = Vec::with_capacity(m.layers.len() * PTRS);
        for (l, (k, v)) in m.layers.iter().zip(k.iter().zip(v)) {
            let ptr = |b: &CudaSlice<f32>| b.device_ptr(s).0;
            let bytes = |b: &CudaSlice<u8>| b.device_ptr(s).0;
            table.extend([
                ptr(&l.attn_norm),
                bytes(&l.qkv.data),
                ptr(&l.qkv.scales),
                bytes(&l.wo.data),
                ptr(&l.wo.scales),
                ptr(&l.attn_sub_norm),
                ptr(&l.ffn_norm),
                bytes(&l.gate_up.data),
                ptr(&l.gate_up.scales),
                bytes(&l.down.data),
                ptr(&l.down.scales),
                ptr(&l.ffn_sub_norm),
                k.device_ptr(s).0,
                v.device_ptr(s).0,
            ]);
        }
        Ok(Some(PersistentStep {
            desc: s.clone_htod(&table)?,
            bar: s.alloc_zeros(2)?,
            wbuf,
            wrows,
            norm_region,
            max_smem: max_smem - STATIC_SMEM,
            grid,
            prof: match std::env::var("BITNET_CUDA_PROFILE").as_deref() {
                Ok("1") => Some(s.alloc_zeros(1 + 20 * m.layers.len())?),
                _ => None,
            },
        }))
    }

    /// Dynamic shared memory for attention over `ctx` positions, or `None` when it does not
    /// fit beside the weight buffers.
    pub(crate) fn smem(&self, m: &GpuModel, ctx: usize) -> Option<usize> {
        let smem = 2 * self.wbuf + self.norm_region.max(m.dims.attn_smem(ctx));
        (smem <= self.max_smem).then_some(smem)
    }

    /// Every layer of the token in `x` (its embedding row, written before): x ends as the
    /// residual stream after the last layer, as the per-stage kernels leave it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch(
        &mut self,
        gpu: &Gpu,
        m: &GpuModel,
        ctx: usize,
        batch: &PagedBatch<'_>,
        x: &mut CudaViewMut<'_, f32>,
        qkv: &mut CudaViewMut<'_, f32>,
        attn: &mut CudaViewMut<'_, f32>,
        gate_up: &mut CudaViewMut<'_, f32>,
        split: &mut AttnSplit,
    ) -> Result<()> {
        let c = &m.config;
        let d = m.dims;
        split.check(d, ctx)?;
        let smem = self.smem(m, ctx).ok_or_else(|| {
            CudaError::Unsupported(format!(
                "the persistent decode step over {ctx} positions (shared memory)"
            ))
        })?;
        let l0 = m
            .layers
            .first()
            .ok_or_else(|| CudaError::Shape("a model without layers".into()))?;
        if x.len() < c.hidden_size
            || qkv.len() < d.qkv_dim()
            || attn.len() < d.q_dim()
            || gate_up.len() < 2 * c.intermediate_size
            || batch.blocks.len() < ctx / bitnet_backend::KV_BLOCK
            || batch.pos.is_empty()
            || batch.slot.is_empty()
        {
            return Err(CudaError::Shape(format!(
                "persistent decode step: buffers too small for one token over {ctx} positions"
            )));
        }
        let mode = match c.activation() {
            Activation::Relu2 => NormInput::Relu2Gate,
            Activation::Silu => NormInput::SiluGate,
        }
        .mode();
        let int = |v: usize| i32::try_from(v).map_err(|_| CudaError::Shape(format!("{v}")));
        let args = [
            int(m.layers.len())?,
            int(c.hidden_size)?,
            int(d.heads)?,
            int(d.kv_heads)?,
            int(d.head_dim)?,
            int(c.intermediate_size)?,
            mode,
            int(l0.qkv.row_bytes)?,
            int(l0.wo.row_bytes)?,
            int(l0.down.row_bytes)?,
            int(ctx)?,
            DECODE_ATTN_THREADS as i32,
        ];
        let (eps, scale) = (c.rms_norm_eps, 1.0 / (d.head_dim as f32).sqrt());
        let (wbuf, wrows) = (int(self.wbuf)?, int(self.wrows)?);
        // Contexts of one attention chunk take the build without the split (see forward.cu).
        let name = if ctx <= ATT_CHUNK {
            KERNEL
        } else {
            KERNEL_LONG
        };
        let f = gpu.kernels.function(FORWARD, name)?;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&self.desc);
        for a in &args {
            l.arg(a);
        }
        l.arg(&m.inv_freq)
            .arg(&eps)
            .arg(&scale)
            .arg(batch.pos)
            .arg(batch.slot)
            .arg(batch.blocks)
            .arg(x)
            .arg(qkv)
            .arg(attn)
            .arg(gate_up)
            .arg(&mut self.bar)
            .arg(&wbuf)
            .arg(&wrows);
        let (rec, tick) = split.args();
        l.arg(rec).arg(tick);
        match &mut self.prof {
            Some(p) => l.arg(p),
            None => l.arg(&0u64),
        };
        let cfg = LaunchConfig {
            grid_dim: (self.grid, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: arguments match the kernel; the descriptor table points at this model's
        // weights and this context's caches (alive as long as the context); buffers checked
        // above; the cooperative launch keeps every block resident, which the grid barrier
        // needs; the shared memory holds the two weight buffers and the larger of a norm row
        // and the attention's (checked against the GPU's limit); the split records cover ctx.
        unsafe { l.launch_cooperative(cfg) }?;
        Ok(())
    }
}

impl PersistentStep {
    /// With `BITNET_CUDA_PROFILE=1`, the last step's time per stage in microseconds, summed
    /// over the layers, as block 0 saw it (its attention work is query head 0's): for q/k/v,
    /// attention, o, gate/up and down, [waiting for the staged weights, the norm, the rest of
    /// the work, the barrier].
    pub(crate) fn profile(&self, gpu: &Gpu) -> Result<Option<[[f64; 4]; 5]>> {
        let Some(p) = &self.prof else {
            return Ok(None);
        };
        let t = gpu.stream.clone_dtoh(p)?;
        let mut out = [[0.0; 4]; 5];
        for l in 0..(t.len() - 1) / 20 {
            for (st, o) in out.iter_mut().enumerate() {
                let at = 1 + 20 * l + 4 * st;
                for (i, v) in o.iter_mut().enumerate() {
                    *v += t[at + i].saturating_sub(t[at + i - 1]) as f64 / 1e3;
                }
            }
        }
        Ok(Some(out))
    }
}
