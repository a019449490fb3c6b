//! The non-ternary ops of the forward pass as GPU kernels (`kernels/forward.cu`): each one a
//! method of [`Gpu`] on device buffers, used by [`crate::CudaContext`] and tested one by one
//! against the CPU code in `tests/cuda_forward.rs`.

use crate::compile::FORWARD;
use crate::device::Gpu;
use crate::error::{CudaError, Result};
use crate::ternary::{GpuActivations, GpuTernaryMatrix};
use bitnet_backend::KV_BLOCK;
use bitnet_kernels::{DenseMatrix, DenseType};
use cudarc::driver::{CudaFunction, CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

/// A null device pointer for the kernels' optional outputs.
const NULL: u64 = 0;
/// Threads of a norm block (one block per token): as many as can be, since a decode step's
/// norm is one block whose memory latency is split over them. Batches too: 256 threads each
/// playing four of the 1024 (the same bits) took 13.8 us a norm at 64 tokens on the H200
/// against 8.1 (`ncu`, 2026-12-04), each thread's loads one latency after another.
const NORM_THREADS: u32 = 1024;
/// Norm rows live in shared memory; beyond the 48 KiB a block gets by default the kernel is
/// given more, up to this.
const MAX_NORM_SMEM: usize = 200 * 1024;
/// Threads of a batched attention block (one block per query head and token).
pub(crate) const ATTN_THREADS: u32 = 256;
/// Threads of a decode step's attention block (one block per query head): a warp per position
/// at a time, so that the step's few blocks keep many key and value loads in flight. The
/// attention kernel gives the same bits for any thread count (`attend` in forward.cu).
pub(crate) const DECODE_ATTN_THREADS: u32 = 1024;
/// The partial outputs of attention: one per virtual warp (`ATT_VW` in forward.cu).
const ATTN_PARTIALS: usize = 32;
/// Positions of an attention chunk (`ATT_CHUNK` in forward.cu): a head's softmax is computed
/// chunk by chunk and the chunks folded in order, so that a long sequence's chunks can run on
/// blocks of their own (flash decoding) with the bits of one block running them in turn.
pub(crate) const ATT_CHUNK: usize = 256;
/// Head rows per block (a warp each).
const HEAD_WARPS: u32 = 8;
/// Blocks an SM of the one-token Q8_0 head (its `__launch_bounds__(256, 4)`).
const HEAD_Q8_BLOCKS_PER_SM: u32 = 4;
/// `HEAD_KB` of forward.cu: `head_q8_0` holds a lane's activation blocks in registers (and
/// double-buffers its rows) for rows of at most `32 * HEAD_KB` blocks.
const HEAD_KB: usize = 4;
/// Tokens per warp of the many-row Q6_K and dense head kernels (`HEAD_T` in forward.cu).
const HEAD_TOKENS: u32 = 8;
/// Tokens per block of the Q8_0 tensor-core head (`HMMA_TOKENS` in forward.cu; 4 warps of 16
/// tokens each).
const HMMA_TOKENS: usize = 64;
/// Up to this many tokens its `_few` kernels run instead: 16 tokens a block, the 4 warps
/// splitting the sum over the columns, not the tokens (which would leave 3 warps idle).
const HMMA_FEW_TOKENS: usize = 16;
/// The activation rings of that head's 4 warps: `HMMA_STAGES` (8) slots of `HMMA_SLOT` (640)
/// bytes each (forward.cu).
const HMMA_RING: usize = 4 * 8 * 640;
/// Shared memory the driver reserves per block (for the tile choice: two 32-row blocks an SM).
const SMEM_RESERVED_PER_BLOCK: usize = 1024;
/// The largest head dimension the attention kernel handles (`MAX_HD` in forward.cu).
pub const MAX_HEAD_DIM: usize = 256;
/// Batch tokens (query rows) of a flash-attention tile (`FLASH_ROWS` in forward.cu).
pub const FLASH_TILE: usize = 64;
/// Key positions of a flash-attention chunk in shared memory (`FLASH_KEYS`).
const FLASH_KEYS: usize = 64;
/// Threads of a flash-attention block: 4 warps of 16 query rows (`FLASH_THREADS`).
const FLASH_THREADS: u32 = 128;

pub(crate) fn cfg(grid: (u32, u32), block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

fn shape(msg: String) -> CudaError {
    CudaError::Shape(msg)
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape(format!("{what} {v} exceeds i32")))
}

/// A dense matrix (token embedding, LM head) resident on the GPU in its file type (F32, F16,
/// BF16, Q8_0 or Q6_K: every [`DenseType`]).
pub struct GpuDense {
    rows: usize,
    cols: usize,
    ty: DenseType,
    row_bytes: usize,
    data: CudaSlice<u8>,
}

impl GpuDense {
    /// `what` names the tensor in the error for a shape its type cannot hold.
    pub fn upload(gpu: &Gpu, m: &DenseMatrix, what: &str) -> Result<Self> {
        // The match is exhaustive so that a new dense type cannot reach the kernels unread.
        let row_bytes = match m.ty() {
            DenseType::F32
            | DenseType::F16
            | DenseType::BF16
            | DenseType::Q8_0
            | DenseType::Q6_K => m
                .ty()
                .row_bytes(m.cols())
                .ok_or_else(|| shape(format!("{what}: {} columns of {:?}", m.cols(), m.ty())))?,
        };
        i32_of(m.rows(), "dense rows")?;
        i32_of(m.cols(), "dense columns")?;
        Ok(GpuDense {
            rows: m.rows(),
            cols: m.cols(),
            ty: m.ty(),
            row_bytes,
            data: gpu.stream.clone_htod(m.data().as_bytes())?,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn ty(&self) -> DenseType {
        self.ty
    }

    pub fn nbytes(&self) -> usize {
        self.data.len()
    }

    /// The type code of forward.cu (`TY_*`; Q6_K has kernels of its own).
    fn code(&self) -> i32 {
        match self.ty {
            DenseType::F32 => 0,
            DenseType::F16 => 1,
            DenseType::BF16 => 2,
            DenseType::Q8_0 => 3,
            DenseType::Q6_K => 4,
        }
    }

    /// The activation blocks a quantized head's rows are dotted with: Q8_0 heads take Q8_0
    /// (32 values a scale), Q6_K heads Q8_K (256 values a scale); `None` for float heads.
    fn act_block(&self) -> Option<(usize, &'static str)> {
        match self.ty {
            DenseType::Q8_0 => Some((32, "quantize_q8_0")),
            DenseType::Q6_K => Some((256, "quantize_q8_k")),
            _ => None,
        }
    }
}

/// What a norm normalizes: the row itself, or the gated FFN activation of a row holding the
/// gate outputs then the up outputs (`intermediate_size` each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormInput {
    Plain,
    /// `relu(gate)^2 * up` (BitNet b1.58).
    Relu2Gate,
    /// `silu(gate) * up`.
    SiluGate,
}

impl NormInput {
    pub(crate) fn mode(self) -> i32 {
        match self {
            NormInput::Plain => 0,
            NormInput::Relu2Gate => 1,
            NormInput::SiluGate => 2,
        }
    }

    /// Input floats per row for `cols` outputs.
    fn width(self, cols: usize) -> usize {
        match self {
            NormInput::Plain => cols,
            _ => 2 * cols,
        }
    }
}

/// Where the tokens of a batch sit in the paged KV cache (`[block][row][kv_dim]` per layer,
/// [`bitnet_backend::KV_BLOCK`] rows a block): device arrays, one entry per token (`pos`,
/// `slot`, `table`) plus the batch's block tables (`blocks`). Token t is at position `pos[t]`
/// of its sequence, its new key and value go to cache row `slot[t]`, and position p of its
/// sequence is row `p % KV_BLOCK` of block `blocks[table[t] + p / KV_BLOCK]`. The kernels
/// cannot report an error: the caller checks that every row and block lies inside the caches.
#[derive(Clone, Copy)]
pub struct PagedBatch<'a> {
    pub pos: &'a CudaView<'a, u32>,
    pub slot: &'a CudaView<'a, u32>,
    pub table: &'a CudaView<'a, u32>,
    pub blocks: &'a CudaView<'a, u32>,
}

impl<'a> PagedBatch<'a> {
    /// Positions, cache rows, table offsets and block tables, in that order.
    pub fn of(v: &'a [CudaView<'a, u32>; 4]) -> Self {
        PagedBatch {
            pos: &v[0],
            slot: &v[1],
            table: &v[2],
            blocks: &v[3],
        }
    }

    fn check(&self, tokens: usize) -> Result<()> {
        if self.pos.len() < tokens || self.slot.len() < tokens || self.table.len() < tokens {
            return Err(shape(format!(
                "paged batch: {} / {} / {} entries for {tokens} tokens",
                self.pos.len(),
                self.slot.len(),
                self.table.len()
            )));
        }
        Ok(())
    }
}

/// Attention shapes: query heads, key/value heads, head dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnDims {
    fn check(&self) -> Result<()> {
        if self.heads == 0
            || self.kv_heads == 0
            || !self.heads.is_multiple_of(self.kv_heads)
            || self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
            || self.head_dim > MAX_HEAD_DIM
        {
            return Err(CudaError::Unsupported(format!(
                "attention with {} heads, {} KV heads of dimension {} (the GPU kernel needs \
                 heads a multiple of KV heads and an even head dimension up to {MAX_HEAD_DIM})",
                self.heads, self.kv_heads, self.head_dim
            )));
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Floats per token of the stacked q | k | v output.
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    /// Dynamic shared memory of the attention kernel for sequences of up to `ctx` positions.
    /// (q, and the new key and value of the fused decode kernel, the running output and a
    /// chunk's max and sum, then a chunk's scores, the warps' partial outputs and the
    /// sequence's block ids.)
    pub(crate) fn attn_smem(&self, ctx: usize) -> usize {
        4 * (self.attn_smem_fixed() + ctx.div_ceil(KV_BLOCK))
    }

    /// The floats of [`Self::attn_smem`] before the block ids (`AttnSmem` in forward.cu).
    fn attn_smem_fixed(&self) -> usize {
        4 * self.head_dim + 2 + ATT_CHUNK + ATTN_PARTIALS * self.head_dim
    }

    /// Dynamic shared memory of the flash attention kernel: keys and values of FLASH_KEYS
    /// positions, double-buffered, as f16 rows padded by 8 halves.
    pub(crate) fn flash_smem(&self) -> usize {
        2 * 2 * FLASH_KEYS * (self.head_dim + 8) * 2
    }

    /// Whether [`Gpu::attention_flash`] takes these shapes: a head dimension of 64 or 128 (its
    /// two instantiations) and its shared memory within the attention kernels' limit.
    pub fn flash_fits(&self) -> bool {
        self.check().is_ok()
            && matches!(self.head_dim, 64 | 128)
            && self.flash_smem() <= MAX_ATTN_SMEM
    }

    /// The longest sequence the attention kernel takes (its block ids live in shared
    /// memory).
    pub fn max_attn_len(&self) -> usize {
        // A block id per KV_BLOCK positions in what is left.
        (MAX_ATTN_SMEM / 4).saturating_sub(self.attn_smem_fixed()) * KV_BLOCK
    }
}

/// The records of attention split over blocks (forward.cu's `attend` in split mode): per query
/// head, a record of `head_dim + 2` floats for each chunk of [`ATT_CHUNK`] positions up to the
/// context, and a counter that the last of the head's blocks to finish finds and zeroes.
pub struct AttnSplit {
    rec: CudaSlice<f32>,
    tick: CudaSlice<u32>,
}

impl AttnSplit {
    fn records(dims: AttnDims, ctx: usize) -> usize {
        dims.heads * ctx.div_ceil(ATT_CHUNK) * (dims.head_dim + 2)
    }

    /// Records for one token's heads over up to `ctx` positions.
    pub fn new(gpu: &Gpu, dims: AttnDims, ctx: usize) -> Result<AttnSplit> {
        Ok(AttnSplit {
            rec: gpu.stream.alloc_zeros(Self::records(dims, ctx).max(1))?,
            tick: gpu.stream.alloc_zeros(dims.heads.max(1))?,
        })
    }

    /// Whether these records cover `ctx` positions of these heads.
    pub fn fits(&self, dims: AttnDims, ctx: usize) -> bool {
        self.rec.len() >= Self::records(dims, ctx) && self.tick.len() >= dims.heads
    }

    pub(crate) fn check(&self, dims: AttnDims, ctx: usize) -> Result<()> {
        if self.fits(dims, ctx) {
            return Ok(());
        }
        Err(shape(format!(
            "attention split records: {} floats for {} heads over {ctx} positions",
            self.rec.len(),
            dims.heads
        )))
    }

    pub(crate) fn args(&mut self) -> (&mut CudaSlice<f32>, &mut CudaSlice<u32>) {
        (&mut self.rec, &mut self.tick)
    }
}

/// Appends the flash-attention tiles of a chunk of `len` consecutive batch tokens of one
/// sequence, starting at batch token `first`: (first token, token count) pairs of at most
/// [`FLASH_TILE`] tokens, cut from the chunk's start. A chunk of one token gets none (the
/// per-query kernel runs it: see `skip_runs` of [`Gpu::attention`]).
pub fn push_flash_tiles(tiles: &mut Vec<u32>, first: usize, len: usize) {
    if len < 2 {
        return;
    }
    for at in (0..len).step_by(FLASH_TILE) {
        tiles.extend([(first + at) as u32, (len - at).min(FLASH_TILE) as u32]);
    }
}

impl Gpu {
    /// Kernel `name` of forward.cu, allowed `smem` bytes of dynamic shared memory: beyond the
    /// 48 KiB a launch gets by default, a kernel must opt in.
    fn forward_kernel(&self, name: &str, smem: usize) -> Result<CudaFunction> {
        use cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_SMEM;
        let f = self.kernels.function(FORWARD, name)?;
        // Only ever raised: a captured graph may launch this kernel with more shared memory than
        // the launch at hand (graphs of several score capacities are kept).
        if smem > 48 * 1024 && f.get_attribute(MAX_SMEM)? < smem as i32 {
            f.set_attribute(MAX_SMEM, smem as i32)?;
        }
        Ok(f)
    }

    /// `x[t] = table row tokens[t]` for `tokens.len()` tokens, exactly as
    /// `DenseMatrix::row_f32`. The ids must be below `table.rows()` (the caller checks them:
    /// the kernel cannot report an error).
    pub fn embed(
        &self,
        table: &GpuDense,
        tokens: &CudaView<'_, u32>,
        x: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let n = tokens.len();
        if x.len() < n * table.cols {
            return Err(shape(format!(
                "embed: {} floats for {n} rows of {}",
                x.len(),
                table.cols
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let q6k = table.ty == DenseType::Q6_K;
        let name = if q6k { "embed_rows_q6_k" } else { "embed_rows" };
        let f = self.kernels.function(FORWARD, name)?;
        let (ty, row_bytes, cols) = (table.code(), table.row_bytes as i64, table.cols as i32);
        let mut l = self.stream.launch_builder(&f);
        l.arg(&table.data);
        if !q6k {
            l.arg(&ty);
        }
        l.arg(&row_bytes).arg(&cols).arg(tokens).arg(x);
        // SAFETY: arguments match the kernel; n rows of `cols` floats fit in x (checked).
        unsafe { l.launch(cfg((n as u32, 1), 256, 0)) }?;
        Ok(())
    }

    /// Per token: `y = (w * v) * r` with `r = 1 / sqrt(mean(v^2) + eps)` (`ops::rms_norm`
    /// computes `w * (v * r)`) over the row's input `v` (see [`NormInput`]; rows `in_stride`
    /// floats apart, `w.len()` outputs), written to `y` if given and quantized to int8 into `a`
    /// if given (exactly as `QuantizedActivations::quantize` of that `y`; the products are
    /// grouped and the sum of squares summed in another order than on the CPU, so `y` agrees
    /// to float rounding).
    #[allow(clippy::too_many_arguments)]
    pub fn norm_quantize(
        &self,
        x: &CudaView<'_, f32>,
        tokens: usize,
        in_stride: usize,
        input: NormInput,
        w: &CudaSlice<f32>,
        eps: f32,
        y: Option<&mut CudaViewMut<'_, f32>>,
        a: Option<&mut GpuActivations>,
    ) -> Result<()> {
        let cols = w.len();
        let need = tokens.saturating_sub(1) * in_stride + input.width(cols);
        if in_stride < input.width(cols) || (tokens > 0 && x.len() < need) {
            return Err(shape(format!(
                "norm: {} floats for {tokens} rows of stride {in_stride}, {cols} columns",
                x.len()
            )));
        }
        if y.as_ref().is_some_and(|y| y.len() < tokens * cols) {
            return Err(shape(format!(
                "norm: output too small for {tokens} x {cols}"
            )));
        }
        if let Some(a) = a.as_ref() {
            if a.cols != cols || a.tokens != tokens {
                return Err(shape(format!(
                    "norm: {} x {} activations for {tokens} x {cols}",
                    a.tokens, a.cols
                )));
            }
        }
        if tokens == 0 {
            return Ok(());
        }
        // (whole groups of four: norm_quant_row stores 16 bytes at a time)
        let smem = 4 * cols.div_ceil(4) * 4;
        if smem > MAX_NORM_SMEM {
            return Err(CudaError::Unsupported(format!(
                "a norm over {cols} values (the kernel keeps a row in {} KiB of shared memory)",
                MAX_NORM_SMEM / 1024
            )));
        }
        let f = self.forward_kernel("norm_quant", smem)?;
        let (in_stride, cols_i, mode) = (i32_of(in_stride, "stride")?, cols as i32, input.mode());
        let qstride = a.as_ref().map_or(0, |a| a.stride as i32);
        let mut l = self.stream.launch_builder(&f);
        l.arg(x)
            .arg(&in_stride)
            .arg(&cols_i)
            .arg(&mode)
            .arg(w)
            .arg(&eps);
        match y {
            Some(y) => l.arg(y),
            None => l.arg(&NULL),
        };
        match a {
            Some(a) => l
                .arg(&mut a.q)
                .arg(&qstride)
                .arg(&mut a.scales)
                .arg(&mut a.sums),
            None => l.arg(&NULL).arg(&qstride).arg(&NULL).arg(&NULL),
        };
        // SAFETY: arguments match the kernel; every buffer holds `tokens` rows (checked); the
        // shared memory holds a row.
        unsafe { l.launch(cfg((tokens as u32, 1), NORM_THREADS, smem as u32)) }?;
        Ok(())
    }

    /// One token's [`Self::norm_quantize`] (no `y`) and [`Gpu::ternary_matmul`] (or
    /// [`Gpu::ternary_matmul_accumulate`]) of its int8 values by `w`, as one kernel: the same
    /// bits as the two calls (the norm runs with the same block size), without the serial
    /// single-block norm kernel between two matmuls that a decode step paid per norm.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_ternary_matmul(
        &self,
        x: &CudaView<'_, f32>,
        input: NormInput,
        norm_w: &CudaSlice<f32>,
        eps: f32,
        w: &GpuTernaryMatrix,
        out: &mut CudaViewMut<'_, f32>,
        accumulate: bool,
    ) -> Result<()> {
        let cols = norm_w.len();
        if w.cols != cols || x.len() < input.width(cols) || out.len() != w.rows {
            return Err(shape(format!(
                "fused norm + matmul: {} x {} weights, {} input floats for {cols} columns, {} \
                 outputs",
                w.rows,
                w.cols,
                x.len(),
                out.len()
            )));
        }
        if w.rows == 0 {
            return Ok(());
        }
        let stride = cols.div_ceil(128) * 128;
        let smem = 4 * cols.div_ceil(4) * 4 + stride;
        if smem > MAX_NORM_SMEM {
            return Err(CudaError::Unsupported(format!(
                "a norm over {cols} values (the kernel keeps a row in {} KiB of shared memory)",
                MAX_NORM_SMEM / 1024
            )));
        }
        let f = self.forward_kernel("norm_ternary_t1", smem)?;
        let warps = NORM_THREADS / 32;
        let blocks = (w.rows as u32).div_ceil(warps).min(self.sm_count);
        let (cols_i, mode, rows, row_bytes, stride) = (
            i32_of(cols, "columns")?,
            input.mode(),
            w.rows as i32,
            w.row_bytes as i32,
            stride as i32,
        );
        let accumulate = i32::from(accumulate);
        let mut l = self.stream.launch_builder(&f);
        l.arg(x)
            .arg(&cols_i)
            .arg(&mode)
            .arg(norm_w)
            .arg(&eps)
            .arg(&w.data)
            .arg(&rows)
            .arg(&row_bytes)
            .arg(&stride)
            .arg(&w.scales)
            .arg(out)
            .arg(&accumulate);
        // SAFETY: arguments match the kernel; x holds the input row, out a value per weight
        // row (checked); the shared memory holds the row and its int8 values.
        unsafe { l.launch(cfg((blocks, 1), NORM_THREADS, smem as u32)) }?;
        Ok(())
    }

    /// RoPE at positions `batch.pos[t]` on the q and k heads of `tokens` rows of stacked
    /// q | k | v (`dims.qkv_dim()` floats each): q rotated in place, k rotated and v copied
    /// into the paged f16 caches at rows `batch.slot[t]` (as f16 bits).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv(
        &self,
        qkv: &mut CudaViewMut<'_, f32>,
        tokens: usize,
        dims: AttnDims,
        inv_freq: &CudaSlice<f32>,
        batch: &PagedBatch<'_>,
        k_cache: &mut CudaSlice<u16>,
        v_cache: &mut CudaSlice<u16>,
    ) -> Result<()> {
        dims.check()?;
        batch.check(tokens)?;
        if qkv.len() < tokens * dims.qkv_dim() || inv_freq.len() < dims.head_dim / 2 {
            return Err(shape(format!(
                "rope: {} floats for {tokens} x {}",
                qkv.len(),
                dims.qkv_dim()
            )));
        }
        if tokens == 0 {
            return Ok(());
        }
        let f = self.kernels.function(FORWARD, "rope_kv")?;
        let (nh, nkv, hd) = (
            dims.heads as i32,
            dims.kv_heads as i32,
            dims.head_dim as i32,
        );
        let threads = (dims.head_dim as u32 / 2).div_ceil(32) * 32;
        let mut l = self.stream.launch_builder(&f);
        l.arg(qkv)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(inv_freq)
            .arg(batch.pos)
            .arg(batch.slot)
            .arg(k_cache)
            .arg(v_cache);
        let grid = (tokens as u32, (dims.heads + dims.kv_heads) as u32);
        // SAFETY: arguments match the kernel; buffer sizes checked above and by the caller.
        unsafe { l.launch(cfg(grid, threads, 0)) }?;
        Ok(())
    }

    /// Causal attention of `tokens` query rows (the q part of stacked q | k | v rows) over the
    /// paged f16 caches, token t seeing positions `0..=batch.pos[t]` of its own sequence;
    /// `out` is `[token][q_dim]`. `ctx` bounds every `pos[t] + 1` (the kernel keeps that
    /// many positions' block ids in shared memory). With `skip_runs`, only the tokens without
    /// a neighbour of the same table offset (`batch.table[t +- 1]`) are computed, the others'
    /// rows of `out` are left as they are: those are [`Self::attention_flash`]'s.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        qkv: &CudaView<'_, f32>,
        tokens: usize,
        dims: AttnDims,
        ctx: usize,
        batch: &PagedBatch<'_>,
        k_cache: &CudaSlice<u16>,
        v_cache: &CudaSlice<u16>,
        out: &mut CudaViewMut<'_, f32>,
        skip_runs: bool,
    ) -> Result<()> {
        dims.check()?;
        batch.check(tokens)?;
        if qkv.len() < tokens * dims.qkv_dim()
            || out.len() < tokens * dims.q_dim()
            || k_cache.len() != v_cache.len()
        {
            return Err(shape(format!(
                "attention: buffers too small for {tokens} tokens, {ctx} positions"
            )));
        }
        if tokens == 0 {
            return Ok(());
        }
        // Batches whose sequences fit one chunk take the build without the loop over chunks
        // (fewer registers; the same bits).
        let name = if ctx <= ATT_CHUNK {
            "attention"
        } else {
            "attention_chunks"
        };
        let (f, smem) = self.attention_kernel(name, dims, ctx)?;
        let stride = dims.qkv_dim() as i32;
        let (nh, nkv, hd, ctx_i) = (
            dims.heads as i32,
            dims.kv_heads as i32,
            dims.head_dim as i32,
            i32_of(ctx, "context")?,
        );
        let scale = 1.0 / (dims.head_dim as f32).sqrt();
        let skip = i32::from(skip_runs);
        let mut l = self.stream.launch_builder(&f);
        l.arg(qkv)
            .arg(&stride)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&ctx_i)
            .arg(batch.pos)
            .arg(batch.table)
            .arg(batch.blocks)
            .arg(k_cache)
            .arg(v_cache)
            .arg(&scale)
            .arg(out)
            .arg(&skip);
        let grid = (dims.heads as u32, tokens as u32);
        // SAFETY: arguments match the kernel; shared memory holds q, the running output, a
        // chunk's scores, the warps' partial outputs and the block ids; buffers checked above;
        // positions checked by the caller.
        unsafe { l.launch(cfg(grid, ATTN_THREADS, smem as u32)) }?;
        Ok(())
    }

    /// [`Self::attention`] of the tokens in `tiles` on the tensor cores (f16 q and softmax
    /// weights, f32 sums: agrees with the per-query kernel to rounding, not bit for bit).
    /// `tiles` holds (first token, token count) pairs as [`push_flash_tiles`] makes them: a
    /// tile's tokens belong to one sequence, at consecutive positions. Each tile's rows of
    /// `out` are written, no other. A row's result depends on its own q and position only,
    /// not on how its sequence was cut into tiles nor on the rest of the batch.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_flash(
        &self,
        qkv: &CudaView<'_, f32>,
        tokens: usize,
        dims: AttnDims,
        batch: &PagedBatch<'_>,
        tiles: &CudaView<'_, u32>,
        k_cache: &CudaSlice<u16>,
        v_cache: &CudaSlice<u16>,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        dims.check()?;
        batch.check(tokens)?;
        if !dims.flash_fits() {
            return Err(CudaError::Unsupported(format!(
                "flash attention with head dimension {} (the kernel takes 64 and 128)",
                dims.head_dim
            )));
        }
        if qkv.len() < tokens * dims.qkv_dim()
            || out.len() < tokens * dims.q_dim()
            || k_cache.len() != v_cache.len()
        {
            return Err(shape(format!(
                "flash attention: buffers too small for {tokens} tokens"
            )));
        }
        let ntiles = tiles.len() / 2;
        if !tiles.len().is_multiple_of(2) || ntiles > 65535 {
            return Err(shape(format!(
                "flash attention: {} tile words (pairs, at most 65535)",
                tiles.len()
            )));
        }
        if ntiles == 0 {
            return Ok(());
        }
        let name = if dims.head_dim == 64 {
            "attention_flash_hd64"
        } else {
            "attention_flash_hd128"
        };
        let smem = dims.flash_smem();
        let f = self.forward_kernel(name, smem)?;
        let stride = dims.qkv_dim() as i32;
        let (nh, nkv) = (dims.heads as i32, dims.kv_heads as i32);
        let scale = 1.0 / (dims.head_dim as f32).sqrt();
        let mut l = self.stream.launch_builder(&f);
        l.arg(qkv)
            .arg(&stride)
            .arg(&nh)
            .arg(&nkv)
            .arg(batch.pos)
            .arg(batch.table)
            .arg(batch.blocks)
            .arg(tiles)
            .arg(k_cache)
            .arg(v_cache)
            .arg(&scale)
            .arg(out);
        let grid = (dims.heads as u32, ntiles as u32);
        // SAFETY: arguments match the kernel; shared memory holds the double-buffered key and
        // value chunks; buffers checked above; the tiles' tokens, positions and block tables
        // checked by the caller.
        unsafe { l.launch(cfg(grid, FLASH_THREADS, smem as u32)) }?;
        Ok(())
    }

    /// An attention kernel and its dynamic shared memory for `ctx` positions (their block ids
    /// are kept there), with the opt-in above 48 KiB; a context that cannot fit is refused.
    fn attention_kernel(
        &self,
        name: &str,
        dims: AttnDims,
        ctx: usize,
    ) -> Result<(CudaFunction, usize)> {
        let smem = dims.attn_smem(ctx);
        if smem > MAX_ATTN_SMEM {
            return Err(CudaError::Unsupported(format!(
                "a context of {ctx} positions (this attention kernel keeps a sequence's block \
                 ids in shared memory: {} KiB of at most {} KiB)",
                smem / 1024,
                MAX_ATTN_SMEM / 1024
            )));
        }
        // Builds for head dimensions 64 and 128 need no bounds checks and issue their loads a
        // round ahead; the same bits as the general one.
        let fit = match dims.head_dim {
            64 => "_hd64",
            128 => "_hd128",
            _ => "",
        };
        let f = self.forward_kernel(&format!("{name}{fit}"), smem)?;
        Ok((f, smem))
    }

    /// One token's [`Self::rope_kv`] and [`Self::attention`] as one kernel (the same bits):
    /// token 0 of `batch`, whose block table must start at `batch.blocks[0]` (`table` is not
    /// read) and `batch.blocks` hold at least `ctx / KV_BLOCK` entries (the kernel loads them
    /// all without waiting for the position). A block per head and chunk of [`ATT_CHUNK`]
    /// positions, the chunks' records in `split`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_attention(
        &self,
        qkv: &CudaView<'_, f32>,
        dims: AttnDims,
        ctx: usize,
        inv_freq: &CudaSlice<f32>,
        batch: &PagedBatch<'_>,
        k_cache: &mut CudaSlice<u16>,
        v_cache: &mut CudaSlice<u16>,
        out: &mut CudaViewMut<'_, f32>,
        split: &mut AttnSplit,
    ) -> Result<()> {
        dims.check()?;
        batch.check(1)?;
        split.check(dims, ctx)?;
        if batch.blocks.len() < ctx / KV_BLOCK {
            return Err(shape(format!(
                "rope + attention: {} block ids for {ctx} positions",
                batch.blocks.len()
            )));
        }
        if qkv.len() < dims.qkv_dim()
            || out.len() < dims.q_dim()
            || inv_freq.len() < dims.head_dim / 2
            || k_cache.len() != v_cache.len()
        {
            return Err(shape(format!(
                "rope + attention: buffers too small for one token, {ctx} positions"
            )));
        }
        let (f, smem) = self.attention_kernel("rope_attention", dims, ctx)?;
        let (nh, nkv, hd, ctx_i) = (
            dims.heads as i32,
            dims.kv_heads as i32,
            dims.head_dim as i32,
            i32_of(ctx, "context")?,
        );
        let scale = 1.0 / (dims.head_dim as f32).sqrt();
        let mut l = self.stream.launch_builder(&f);
        l.arg(qkv)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&ctx_i)
            .arg(inv_freq)
            .arg(batch.pos)
            .arg(batch.slot)
            .arg(batch.blocks)
            .arg(k_cache)
            .arg(v_cache)
            .arg(&scale)
            .arg(out)
            .arg(&mut split.rec)
            .arg(&mut split.tick);
        let chunks = u32::try_from(ctx.div_ceil(ATT_CHUNK))
            .map_err(|_| shape(format!("rope + attention over {ctx} positions")))?;
        // SAFETY: arguments match the kernel; shared memory holds q, the new k and v, the
        // running output, a chunk's scores, the warps' partial outputs and the block ids;
        // buffers and the split records checked above; the position checked by the caller.
        unsafe {
            l.launch(cfg(
                (dims.heads as u32, chunks),
                DECODE_ATTN_THREADS,
                smem as u32,
            ))
        }?;
        Ok(())
    }

    /// `logits[r] = dot(head row r, x)` for one token: F32/F16/BF16 rows dotted in f32 (sums
    /// in another order than on the CPU); Q8_0 and Q6_K rows against `x` quantized to Q8_0 /
    /// Q8_K blocks (into `q8`, `d8`: `cols` codes and `cols / 32` scales are enough for both)
    /// as the CPU's `DenseMatrix::matmul` does, with exact integer block dots. The Q6_K head
    /// also combines them in the CPU's order: the CPU's bits for the same `x`.
    pub fn head(
        &self,
        m: &GpuDense,
        x: &CudaView<'_, f32>,
        q8: &mut CudaSlice<i8>,
        d8: &mut CudaSlice<f32>,
        logits: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        if x.len() < m.cols || logits.len() < m.rows {
            return Err(shape(format!(
                "head: {} inputs, {} outputs for {} x {}",
                x.len(),
                logits.len(),
                m.rows,
                m.cols
            )));
        }
        let (rows, cols) = (m.rows as i32, m.cols as i32);
        let grid = ((m.rows as u32).div_ceil(HEAD_WARPS), 1);
        if self.quantize_head_input(m, x, 1, q8, d8)? {
            let name = match m.ty {
                DenseType::Q6_K => "head_q6_k",
                _ => "head_q8_0",
            };
            // head_q8_0 stages each warp's row in shared memory when rows are whole 16-byte
            // words and fit, in two slots a warp where those fit (the next row streams in while
            // one is multiplied); the kernel reads the size it was given.
            let staged = HEAD_WARPS as usize * m.row_bytes;
            let smem = match m.ty {
                DenseType::Q8_0 if m.row_bytes.is_multiple_of(16) => {
                    // Two slots only where the kernel uses them (activations held in
                    // registers: at most 32 * HEAD_KB blocks a row) and its blocks still fit
                    // an SM together.
                    let blocks = HEAD_Q8_BLOCKS_PER_SM as usize;
                    if m.cols / 32 <= 32 * HEAD_KB
                        && blocks * (2 * staged + SMEM_RESERVED_PER_BLOCK) <= self.smem_per_sm
                        && 2 * staged <= self.smem_per_block
                    {
                        2 * staged
                    } else if staged <= self.smem_per_block {
                        staged
                    } else {
                        0
                    }
                }
                _ => 0,
            };
            // head_q8_0's warps loop over rows a grid of warps apart and keep their
            // activations in registers: a few blocks an SM (its launch bounds) load them once.
            let grid = match m.ty {
                DenseType::Q6_K => grid,
                _ => (grid.0.min(self.sm_count * HEAD_Q8_BLOCKS_PER_SM), 1),
            };
            let f = self.forward_kernel(name, smem)?;
            let mut l = self.stream.launch_builder(&f);
            l.arg(&m.data)
                .arg(&rows)
                .arg(&cols)
                .arg(&*q8)
                .arg(&*d8)
                .arg(logits);
            // SAFETY: arguments match; a warp per row inside `rows` (checked; head_q8_0's
            // warps step through rows by the grid's warp count); the shared memory holds a
            // row per warp where the kernel stages them.
            unsafe { l.launch(cfg(grid, 32 * HEAD_WARPS, smem as u32)) }?;
        } else {
            let f = self.kernels.function(FORWARD, "head_dense")?;
            let ty = m.code();
            let mut l = self.stream.launch_builder(&f);
            l.arg(&m.data)
                .arg(&ty)
                .arg(&rows)
                .arg(&cols)
                .arg(x)
                .arg(logits);
            // SAFETY: as above.
            unsafe { l.launch(cfg(grid, 32 * HEAD_WARPS, 0)) }?;
        }
        Ok(())
    }

    /// For a Q8_0 / Q6_K head, quantizes the first `tokens` rows of `x` (`m.cols()` floats
    /// each) to the head's activation blocks in `q8` / `d8` and returns true; false (nothing
    /// done) for a float head. Blocks never straddle rows (`cols` is a multiple of the block),
    /// so the rows quantize as one long row.
    fn quantize_head_input(
        &self,
        m: &GpuDense,
        x: &CudaView<'_, f32>,
        tokens: usize,
        q8: &mut CudaSlice<i8>,
        d8: &mut CudaSlice<f32>,
    ) -> Result<bool> {
        let Some((block, kernel)) = m.act_block() else {
            return Ok(false);
        };
        let n = tokens * m.cols;
        if q8.len() < n || d8.len() < n / block {
            return Err(shape(format!(
                "head: {:?} scratch of {} codes and {} scales for {tokens} x {} inputs",
                m.ty,
                q8.len(),
                d8.len(),
                m.cols
            )));
        }
        let f = self.kernels.function(FORWARD, kernel)?;
        let n_i = i32_of(n, "head inputs")?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(x).arg(&n_i).arg(&mut *q8).arg(&mut *d8);
        // A warp per block, 8 warps per CUDA block.
        let blocks = (n / block).div_ceil(8) as u32;
        // SAFETY: arguments match; n values of x (checked by the callers) and q8, n / block of
        // d8 (checked above).
        unsafe { l.launch(cfg((blocks, 1), 256, 0)) }?;
        Ok(true)
    }

    /// `out[i] = x[rows[i]]` for `rows.len()` rows of `cols` floats; the row indices (device
    /// memory) must lie inside `x` (the caller checks).
    pub fn gather_rows(
        &self,
        x: &CudaView<'_, f32>,
        cols: usize,
        rows: &CudaView<'_, u32>,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let n = rows.len();
        if out.len() < n * cols {
            return Err(shape(format!(
                "gather: {} floats for {n} rows of {cols}",
                out.len()
            )));
        }
        if n == 0 || cols == 0 {
            return Ok(());
        }
        let f = self.kernels.function(FORWARD, "gather_rows")?;
        let cols_i = i32_of(cols, "columns")?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(x).arg(&cols_i).arg(rows).arg(out);
        // SAFETY: arguments match the kernel; n rows of out (checked), source rows by the caller.
        unsafe { l.launch(cfg((n as u32, 1), 256, 0)) }?;
        Ok(())
    }

    /// [`Self::head`] for `tokens` rows of `x` (`m.cols()` floats each) into `tokens` rows of
    /// `m.rows()` logits. A Q8_0 head runs on int8 tensor cores and reads each head row once
    /// per 64 tokens (batches of up to 16: once; Q6_K and float heads: once per 8). Every row's
    /// logits are the same bits as [`Self::head`] of that row alone (the same sums in the same
    /// order), so a sequence's logits do not depend on the batch around it. `q8` / `d8` hold
    /// `tokens * cols` and `tokens * cols / 32` values for a Q8_0 head (`/ 256` is enough for a
    /// Q6_K head).
    pub fn head_rows(
        &self,
        m: &GpuDense,
        x: &CudaView<'_, f32>,
        tokens: usize,
        q8: &mut CudaSlice<i8>,
        d8: &mut CudaSlice<f32>,
        logits: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        if tokens <= 1 {
            return if tokens == 1 {
                self.head(m, x, q8, d8, logits)
            } else {
                Ok(())
            };
        }
        let n = tokens * m.cols;
        if x.len() < n || logits.len() < tokens * m.rows {
            return Err(shape(format!(
                "head: {} inputs, {} outputs for {tokens} tokens of {} x {}",
                x.len(),
                logits.len(),
                m.rows,
                m.cols
            )));
        }
        let (rows, cols, ntok) = (m.rows as i32, m.cols as i32, i32_of(tokens, "tokens")?);
        // The Q8_0 head's shared memory: its tile of rows, 16 bytes of slack, the rings.
        let hmma_smem = |tile_rows: usize| tile_rows * 34 * (m.cols / 32) + 16 + HMMA_RING;
        // Up to 8 tokens, the `_few8` kernels multiply one n tile of 8 tokens, not two.
        let few = tokens <= HMMA_FEW_TOKENS;
        // The 32-row kernel while two of its blocks fit an SM (on the H200 up to 2,784
        // columns), else the 16-row one while one block fits; wider heads run the one-token
        // kernel token by token. From the device's limits: 2B4T's 32-row tile (105 KB) is over
        // the 99 KB a block may have on sm_86 / sm_89 GPUs.
        let two_fit = 2 * (hmma_smem(32) + SMEM_RESERVED_PER_BLOCK) <= self.smem_per_sm
            && hmma_smem(32) <= self.smem_per_block;
        let (hmma_name, hmma_rows) = match (two_fit, few, tokens <= 8) {
            (true, false, _) => ("head_q8_0_mma", 32),
            (true, true, false) => ("head_q8_0_mma_few", 32),
            (true, true, true) => ("head_q8_0_mma_few8", 32),
            (false, false, _) => ("head_q8_0_mma16", 16),
            (false, true, false) => ("head_q8_0_mma16_few", 16),
            (false, true, true) => ("head_q8_0_mma16_few8", 16),
        };
        let hmma_tokens = if few { HMMA_FEW_TOKENS } else { HMMA_TOKENS };
        if m.ty == DenseType::Q8_0 && hmma_smem(hmma_rows) > self.smem_per_block {
            for t in 0..tokens {
                let mut out = logits.slice_mut(t * m.rows..(t + 1) * m.rows);
                self.head(m, &x.slice(t * m.cols..(t + 1) * m.cols), q8, d8, &mut out)?;
            }
            return Ok(());
        }
        let grid = (
            (m.rows as u32).div_ceil(HEAD_WARPS),
            (tokens as u32).div_ceil(HEAD_TOKENS),
        );
        if self.quantize_head_input(m, x, tokens, q8, d8)? {
            let (name, grid, threads, smem) = match m.ty {
                DenseType::Q6_K => ("head_q6_k_many", grid, 32 * HEAD_WARPS, 0),
                _ => (
                    hmma_name,
                    (
                        m.rows.div_ceil(hmma_rows) as u32,
                        tokens.div_ceil(hmma_tokens) as u32,
                    ),
                    128,
                    hmma_smem(hmma_rows),
                ),
            };
            let f = self.forward_kernel(name, smem)?;
            let mut l = self.stream.launch_builder(&f);
            l.arg(&m.data)
                .arg(&rows)
                .arg(&cols)
                .arg(&*q8)
                .arg(&*d8)
                .arg(&ntok)
                .arg(logits);
            // SAFETY: arguments match; every row and token tile inside the buffers (checked);
            // the Q8_0 kernel's shared memory holds its tile of rows (and its fragment reads'
            // 16 bytes past them) and its warps' activation rings.
            unsafe { l.launch(cfg(grid, threads, smem as u32)) }?;
        } else {
            let f = self.kernels.function(FORWARD, "head_dense_many")?;
            let ty = m.code();
            let mut l = self.stream.launch_builder(&f);
            l.arg(&m.data)
                .arg(&ty)
                .arg(&rows)
                .arg(&cols)
                .arg(x)
                .arg(&ntok)
                .arg(logits);
            // SAFETY: as above.
            unsafe { l.launch(cfg(grid, 32 * HEAD_WARPS, 0)) }?;
        }
        Ok(())
    }

    /// `ids[r]` = the first index of the largest of the first `n` values of row r of
    /// `logits` (rows `stride` apart; NaN never wins), for `ids.len()` rows.
    pub fn argmax_rows(
        &self,
        logits: &CudaView<'_, f32>,
        stride: usize,
        n: usize,
        ids: &mut CudaViewMut<'_, u32>,
    ) -> Result<()> {
        let rows = ids.len();
        if n > stride || logits.len() < rows.saturating_sub(1) * stride + n {
            return Err(shape(format!(
                "argmax: {} logits for {rows} rows of {n} (stride {stride})",
                logits.len()
            )));
        }
        if rows == 0 {
            return Ok(());
        }
        let f = self.kernels.function(FORWARD, "argmax_rows")?;
        let (stride, n) = (stride as i64, i32_of(n, "logits")?);
        let mut l = self.stream.launch_builder(&f);
        l.arg(logits).arg(&stride).arg(&n).arg(ids);
        // SAFETY: arguments match; one block of 1024 threads (the kernel's shared arrays) per
        // row, every row inside `logits` (checked).
        unsafe { l.launch(cfg((rows as u32, 1), 1024, 0)) }?;
        Ok(())
    }

    /// The first index of the largest of `logits` (as `bitnet_inference::argmax`) into
    /// `id[0]` and `tokens[0]`, and `pos0[0] += advance`: what the next decode step reads.
    /// `scratch` holds the per-block partial results.
    pub fn argmax_advance(
        &self,
        logits: &CudaView<'_, f32>,
        scratch: &mut ArgmaxScratch,
        id: &mut CudaSlice<u32>,
        tokens: &mut CudaSlice<u32>,
        pos0: &mut CudaSlice<i32>,
        advance: i32,
    ) -> Result<()> {
        if id.is_empty() || tokens.is_empty() || pos0.is_empty() || logits.is_empty() {
            return Err(shape("argmax: empty buffer".into()));
        }
        let n = i32_of(logits.len(), "logits")?;
        let f = self.kernels.function(FORWARD, "argmax_partial")?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(logits)
            .arg(&n)
            .arg(&mut scratch.v)
            .arg(&mut scratch.i);
        // SAFETY: arguments match; ARGMAX_BLOCKS partials of 1024 threads each.
        unsafe { l.launch(cfg((ARGMAX_BLOCKS as u32, 1), 1024, 0)) }?;
        let f = self.kernels.function(FORWARD, "argmax_advance")?;
        let parts = ARGMAX_BLOCKS as i32;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&scratch.v)
            .arg(&scratch.i)
            .arg(&parts)
            .arg(id)
            .arg(tokens)
            .arg(pos0)
            .arg(&advance);
        // SAFETY: arguments match; one block of 1024 threads (the kernel's shared arrays).
        unsafe { l.launch(cfg((1, 1), 1024, 0)) }?;
        Ok(())
    }
}

/// Blocks of the first argmax stage.
const ARGMAX_BLOCKS: usize = 64;

/// Device scratch of [`Gpu::argmax_advance`]: one partial result per block.
pub struct ArgmaxScratch {
    v: CudaSlice<f32>,
    i: CudaSlice<i32>,
}

impl ArgmaxScratch {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(ArgmaxScratch {
            v: gpu.stream.alloc_zeros(ARGMAX_BLOCKS)?,
            i: gpu.stream.alloc_zeros(ARGMAX_BLOCKS)?,
        })
    }
}

/// Shared memory one attention block may use (an H100/H200 allows 227 KiB).
const MAX_ATTN_SMEM: usize = 200 * 1024;
