//! Ternary weights on the GPU and the int8 activations they multiply.

use crate::compile::TERNARY;
use crate::device::Gpu;
use crate::error::{CudaError, Result};
use bitnet_kernels::TernaryMatrix;
use cudarc::driver::{CudaSlice, CudaViewMut, LaunchConfig, PushKernelArg};

/// Rows per thread block of the matmul (one warp each).
const WARPS: u32 = 4;
/// Token tiles the matmul kernel is instantiated for, largest first; a batch is cut into
/// them so the weights are read once per 8 tokens.
const TILES: [usize; 4] = [8, 4, 2, 1];
/// Threads per token of the quantization kernel.
const QUANT_THREADS: u32 = 256;
/// `Auto`'s split by matrix size (measured on an H200: docs/cuda.md): at one token the skinny
/// tensor-core kernel runs on matrices of this many rows or more and the `dp4a` kernel below.
const SKINNY_MIN_ROWS: usize = 8192;
/// The K split of the tensor-core kernels (Hopper on: the blocks of a thread-block cluster
/// each take a slice of K and add their partial sums through distributed shared memory, see
/// `cluster_sync` in ternary.cu): K is cut in 2, 4 or 8 until a matmul has this many blocks
/// per SM by default ([`Gpu::set_split_k`]), each slice keeping at least
/// [`SPLIT_MIN_KBLOCKS`] I2_S blocks (of 128 weights each).
pub(crate) const SPLIT_BLOCKS_PER_SM: u32 = 2;
const SPLIT_MIN_KBLOCKS: usize = 2;

/// A ternary matrix resident on the GPU, in the I2_S row layout of [`TernaryMatrix`] (its
/// 32-bit words are dp4a operands as they are: see `kernels/ternary.cu`), with a scale per
/// row, so that matrices multiplying the same activations (q/k/v, gate/up) can be stacked
/// into one and run as one kernel.
pub struct GpuTernaryMatrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_bytes: usize,
    pub(crate) data: CudaSlice<u8>,
    pub(crate) scales: CudaSlice<f32>,
}

impl GpuTernaryMatrix {
    pub fn upload(gpu: &Gpu, w: &TernaryMatrix) -> Result<Self> {
        Self::upload_stacked(gpu, &[w])
    }

    /// The rows of `ws` one after another (they must have the same width): the output of a
    /// matmul holds, per token, the outputs of `ws[0]`, then of `ws[1]`, and so on.
    pub fn upload_stacked(gpu: &Gpu, ws: &[&TernaryMatrix]) -> Result<Self> {
        let first = ws
            .first()
            .ok_or_else(|| CudaError::Shape("no matrices to stack".into()))?;
        if let Some(w) = ws.iter().find(|w| w.cols() != first.cols()) {
            return Err(CudaError::Shape(format!(
                "stacked matrices of {} and {} columns",
                first.cols(),
                w.cols()
            )));
        }
        let rows: usize = ws.iter().map(|w| w.rows()).sum();
        let too_big = |what| CudaError::Shape(format!("ternary matrix {what} exceeds i32"));
        i32::try_from(rows).map_err(|_| too_big("rows"))?;
        i32::try_from(first.row_bytes()).map_err(|_| too_big("row bytes"))?;
        let mut data = Vec::with_capacity(rows * first.row_bytes());
        let mut scales = Vec::with_capacity(rows);
        for w in ws {
            data.extend_from_slice(w.data().as_bytes());
            scales.extend(std::iter::repeat_n(w.scale(), w.rows()));
        }
        Ok(GpuTernaryMatrix {
            rows,
            cols: first.cols(),
            row_bytes: first.row_bytes(),
            data: gpu.stream.clone_htod(&data)?,
            scales: gpu.stream.clone_htod(&scales)?,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn nbytes(&self) -> usize {
        self.data.len()
    }
}

/// Per-token int8 activations on the GPU: `stride`-byte rows (a multiple of 128, zero past
/// `cols`), one scale and one sum of the row's values per token, as `QuantizedActivations`.
pub struct GpuActivations {
    pub(crate) tokens: usize,
    capacity: usize,
    pub(crate) cols: usize,
    pub(crate) stride: usize,
    pub(crate) q: CudaSlice<i8>,
    pub(crate) scales: CudaSlice<f32>,
    pub(crate) sums: CudaSlice<i32>,
}

impl GpuActivations {
    pub fn new(gpu: &Gpu, tokens: usize, cols: usize) -> Result<Self> {
        let stride = cols.div_ceil(128) * 128;
        let n = tokens
            .checked_mul(stride)
            .filter(|_| i32::try_from(stride).is_ok() && i32::try_from(tokens).is_ok())
            .ok_or_else(|| CudaError::Shape(format!("{tokens} x {cols} activations")))?;
        Ok(GpuActivations {
            tokens,
            capacity: tokens,
            cols,
            stride,
            q: gpu.stream.alloc_zeros(n.max(1))?,
            scales: gpu.stream.alloc_zeros(tokens.max(1))?,
            sums: gpu.stream.alloc_zeros(tokens.max(1))?,
        })
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Uses the first `tokens` rows of the buffers (a batch smaller than they were made for).
    pub fn set_tokens(&mut self, tokens: usize) -> Result<()> {
        if tokens > self.capacity {
            return Err(CudaError::Shape(format!(
                "{tokens} tokens in activations made for {}",
                self.capacity
            )));
        }
        self.tokens = tokens;
        Ok(())
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The quantized values, scales and sums copied back (tests).
    pub fn to_host(&self, gpu: &Gpu) -> Result<(Vec<i8>, Vec<f32>, Vec<i32>)> {
        let mut q = gpu.stream.clone_dtoh(&self.q)?;
        q.truncate(self.tokens * self.stride);
        let mut scales = gpu.stream.clone_dtoh(&self.scales)?;
        scales.truncate(self.tokens);
        let mut sums = gpu.stream.clone_dtoh(&self.sums)?;
        sums.truncate(self.tokens);
        Ok((q, scales, sums))
    }

    pub fn stride(&self) -> usize {
        self.stride
    }
}

/// `ternary_matmul_{w32_}t{tile}` without formatting a string per launch.
fn dp4a_kernel_name(w32: bool, tile: usize) -> &'static str {
    const U4: [&str; 4] = [
        "ternary_matmul_t8",
        "ternary_matmul_t4",
        "ternary_matmul_t2",
        "ternary_matmul_t1",
    ];
    const W32: [&str; 4] = [
        "ternary_matmul_w32_t8",
        "ternary_matmul_w32_t4",
        "ternary_matmul_w32_t2",
        "ternary_matmul_w32_t1",
    ];
    let i = TILES.iter().position(|&t| t == tile).unwrap_or(3);
    if w32 {
        W32[i]
    } else {
        U4[i]
    }
}

/// Which kernel runs a ternary matmul ([`Gpu::set_ternary_kernel`], or the environment
/// variable `BITNET_CUDA_TERNARY` with the names of [`TernaryKernel::NAMES`]). `Auto` picks by
/// the number of tokens, as measured on an H200 (docs/cuda.md); the others exist to measure
/// and test each kernel on every shape, and all of them give the same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TernaryKernel {
    #[default]
    Auto,
    /// `dp4a`, a warp per row, 16 weight bytes per lane and step, up to 8 tokens per pass
    /// over the weights.
    Dp4a,
    /// `dp4a`, 4 weight bytes per lane and step.
    Dp4aW32,
    /// Int8 tensor cores, a block per 16 rows and up to 32 tokens, its 4 warps splitting K,
    /// weight fragments loaded straight into registers (few tokens).
    MmaSkinny,
    /// Int8 tensor cores, shared-memory tiles of 64 rows x 32 tokens.
    Mma64x32,
    /// Int8 tensor cores, tiles of 64 rows x 64 tokens.
    Mma64x64,
    /// 64 x 64 tiles, two warps per fragment tile splitting each block's k steps.
    Mma64x64K2,
    /// Int8 tensor cores, tiles of 128 rows x 16 tokens.
    Mma128x16,
}

impl TernaryKernel {
    pub const ALL: [TernaryKernel; 8] = [
        TernaryKernel::Auto,
        TernaryKernel::Dp4a,
        TernaryKernel::Dp4aW32,
        TernaryKernel::MmaSkinny,
        TernaryKernel::Mma64x32,
        TernaryKernel::Mma64x64,
        TernaryKernel::Mma64x64K2,
        TernaryKernel::Mma128x16,
    ];
    pub const NAMES: [&'static str; 8] = [
        "auto",
        "dp4a",
        "w32",
        "skinny",
        "mma64x32",
        "mma64x64",
        "mma64x64k2",
        "mma128x16",
    ];

    pub fn name(self) -> &'static str {
        let i = Self::ALL.iter().position(|&k| k == self).unwrap_or(0);
        Self::NAMES[i]
    }

    /// The mma kernel's tile: its function name, followed for tile kernels by its forms with K
    /// split in 2, 4 and 8; rows and tokens per tile, threads per block.
    fn mma(self, tokens: usize) -> Option<MmaTile> {
        let tile = |names, bm, bn, threads| {
            Some(MmaTile {
                names,
                bm,
                bn,
                threads,
            })
        };
        // A tile kernel and its K-split forms (TERNARY_MMA_SPLITS in ternary.cu).
        macro_rules! splits {
            ($name:literal) => {
                &[
                    $name,
                    concat!($name, "_s2"),
                    concat!($name, "_s4"),
                    concat!($name, "_s8"),
                ]
            };
        }
        match self {
            TernaryKernel::MmaSkinny if tokens <= 8 => tile(&["ternary_mma_n1"], 16, 8, 128),
            TernaryKernel::MmaSkinny if tokens <= 16 => tile(&["ternary_mma_n2"], 16, 16, 128),
            TernaryKernel::MmaSkinny => tile(&["ternary_mma_n4"], 16, 32, 128),
            TernaryKernel::Mma64x32 => tile(splits!("ternary_mma_64x32"), 64, 32, 128),
            TernaryKernel::Mma64x64 => tile(splits!("ternary_mma_64x64"), 64, 64, 128),
            TernaryKernel::Mma64x64K2 => tile(&["ternary_mma_64x64k2"], 64, 64, 256),
            TernaryKernel::Mma128x16 => tile(splits!("ternary_mma_128x16"), 128, 16, 128),
            _ => None,
        }
    }

    /// The kernel `Auto` runs for `tokens` tokens times `rows` rows: the fastest per token
    /// count on an H200 (docs/cuda.md). One token: per matrix in `ncu`, the skinny kernel
    /// wins on gate/up (13,824 rows) and loses on the others, whose few blocks each stream
    /// long rows. From 9 tokens on, per step of all 2B4T matrices in `cuda_bench` with K split
    /// across clusters (f023277, before the leaner stage loads; microseconds a step, graph): 16
    /// tokens 128 x 16 1,411 against the skinny kernel's 1,826; 32: 64 x 32 1,680 and 128 x 16
    /// 1,664, the same within the runs' spread (64 x 64 2,859); 64: 64 x 64 2,083 (64 x 32
    /// 2,216, skinny 3,310); 128: 64 x 64 3,056 (64 x 32 3,315). After the leaner loads
    /// (d62c3cf), `auto` 1,380 / 1,587 / 1,963 / 2,763 at 16 / 32 / 64 / 128 tokens.
    fn resolve(self, tokens: usize, rows: usize) -> TernaryKernel {
        match self {
            TernaryKernel::Auto => match tokens {
                1 if rows < SKINNY_MIN_ROWS => TernaryKernel::Dp4a,
                0..=8 => TernaryKernel::MmaSkinny,
                9..=16 => TernaryKernel::Mma128x16,
                17..=32 => TernaryKernel::Mma64x32,
                _ => TernaryKernel::Mma64x64,
            },
            forced => forced,
        }
    }
}

/// A tensor-core kernel's tile (see [`TernaryKernel::mma`]).
struct MmaTile {
    names: &'static [&'static str],
    bm: u32,
    bn: u32,
    threads: u32,
}

impl std::str::FromStr for TernaryKernel {
    type Err = CudaError;
    fn from_str(s: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .position(|&n| n == s)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| {
                CudaError::Unsupported(format!(
                    "ternary kernel {s:?}: one of {}",
                    Self::NAMES.join(", ")
                ))
            })
    }
}

impl Gpu {
    /// Chooses the ternary matmul kernel (tests and benchmarks; the default is `Auto`).
    pub fn set_ternary_kernel(&mut self, k: TernaryKernel) {
        self.ternary_kernel = k;
    }

    /// Sets how many blocks per SM the K split of the tensor-core kernels aims for (0: no
    /// split; benchmarks, or `BITNET_CUDA_SPLIT_K`). Either way the results are the same bits.
    pub fn set_split_k(&mut self, blocks_per_sm: u32) {
        self.split_k = blocks_per_sm;
    }

    /// In how many pieces (1, 2, 4 or 8: the cluster sizes the kernels exist for) a
    /// tensor-core matmul of `tiles` blocks cuts K (`kblocks` I2_S blocks): the fewest that
    /// give the SMs the blocks each that [`Gpu::set_split_k`] asks for, as far as every piece
    /// keeps [`SPLIT_MIN_KBLOCKS`]. Thread-block clusters need compute capability 9.0.
    fn k_splits(&self, tiles: u32, kblocks: usize) -> usize {
        if self.info().compute_capability.0 < 9 {
            return 1;
        }
        let want = self.split_k as usize * self.sm_count as usize;
        let mut splits = 1;
        while splits < 8
            && tiles as usize * splits < want
            && kblocks >= 2 * splits * SPLIT_MIN_KBLOCKS
        {
            splits *= 2;
        }
        splits
    }

    /// Quantizes `a.tokens()` rows of `a.cols()` floats (`x`, row-major) into `a`,
    /// bit-identical to `QuantizedActivations::quantize`.
    pub fn quantize(&self, x: &CudaSlice<f32>, a: &mut GpuActivations) -> Result<()> {
        if x.len() != a.tokens * a.cols {
            return Err(CudaError::Shape(format!(
                "quantize: {} floats for {} x {}",
                x.len(),
                a.tokens,
                a.cols
            )));
        }
        if a.tokens == 0 {
            return Ok(());
        }
        let f = self.kernels.function(TERNARY, "quantize_rows")?;
        let (cols, stride) = (a.cols as i32, a.stride as i32);
        let cfg = LaunchConfig {
            grid_dim: (a.tokens as u32, 1, 1),
            block_dim: (QUANT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(x)
            .arg(&cols)
            .arg(&stride)
            .arg(&mut a.q)
            .arg(&mut a.scales)
            .arg(&mut a.sums);
        // SAFETY: argument types match the kernel's signature; every buffer holds what the
        // kernel indexes (checked above and by GpuActivations::new).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[t * rows + r] = (sum_k t_rk * q_tk) as f32 / s_x[t] * scale_r`, bit-identical to
    /// `bitnet_kernels::ternary_matmul` (`ternary_matmul_many` for stacked matrices).
    pub fn ternary_matmul(
        &self,
        w: &GpuTernaryMatrix,
        a: &GpuActivations,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        self.ternary_matmul_into(w, a, out, false)
    }

    /// [`Self::ternary_matmul`] adding its result to `out` (the residual add: one f32
    /// addition per value, as `x += proj` on the CPU).
    pub fn ternary_matmul_accumulate(
        &self,
        w: &GpuTernaryMatrix,
        a: &GpuActivations,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        self.ternary_matmul_into(w, a, out, true)
    }

    fn ternary_matmul_into(
        &self,
        w: &GpuTernaryMatrix,
        a: &GpuActivations,
        out: &mut CudaViewMut<'_, f32>,
        accumulate: bool,
    ) -> Result<()> {
        if a.cols != w.cols || out.len() != a.tokens * w.rows {
            return Err(CudaError::Shape(format!(
                "ternary matmul: {} x {} weights, {} x {} activations, {} outputs",
                w.rows,
                w.cols,
                a.tokens,
                a.cols,
                out.len()
            )));
        }
        if w.rows == 0 || a.tokens == 0 {
            return Ok(());
        }
        let (rows, row_bytes, stride) = (w.rows as i32, w.row_bytes as i32, a.stride as i32);
        let accumulate = i32::from(accumulate);
        let kernel = self.ternary_kernel.resolve(a.tokens, w.rows);
        if let Some(tile) = kernel.mma(a.tokens) {
            let tokens = a.tokens as i32;
            let tiles = (
                (w.rows as u32).div_ceil(tile.bm),
                (a.tokens as u32).div_ceil(tile.bn),
            );
            let splits = if tile.names.len() > 1 {
                self.k_splits(tiles.0 * tiles.1, w.row_bytes / 32)
            } else {
                1
            };
            let f = self
                .kernels
                .function(TERNARY, tile.names[splits.trailing_zeros() as usize])?;
            let cfg = LaunchConfig {
                grid_dim: (tiles.0, tiles.1, splits as u32),
                block_dim: (tile.threads, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = self.stream.launch_builder(&f);
            launch
                .arg(&w.data)
                .arg(&rows)
                .arg(&row_bytes)
                .arg(&a.q)
                .arg(&tokens)
                .arg(&stride)
                .arg(&a.sums)
                .arg(&a.scales)
                .arg(&w.scales)
                .arg(out)
                .arg(&accumulate);
            // SAFETY: argument types match the kernel; it reads `tokens` activation rows and
            // `rows` weight rows (loads past either edge are clamped to the last one) and
            // writes only `tokens * rows` outputs (all checked above); a split kernel's
            // cluster is its grid's z extent.
            unsafe { launch.launch(cfg) }?;
            return Ok(());
        }
        let w32 = kernel == TernaryKernel::Dp4aW32;
        let mut t0 = 0;
        while t0 < a.tokens {
            let tile = TILES.into_iter().find(|&t| t <= a.tokens - t0).unwrap_or(1);
            let name = dp4a_kernel_name(w32, tile);
            let cfg = LaunchConfig {
                grid_dim: ((w.rows as u32).div_ceil(WARPS), 1, 1),
                block_dim: (32 * WARPS, 1, 1),
                shared_mem_bytes: 0,
            };
            let f = self.kernels.function(TERNARY, name)?;
            let q = a.q.slice(t0 * a.stride..);
            let sums = a.sums.slice(t0..);
            let scales = a.scales.slice(t0..);
            let mut o = out.slice_mut(t0 * w.rows..);
            let mut launch = self.stream.launch_builder(&f);
            launch
                .arg(&w.data)
                .arg(&rows)
                .arg(&row_bytes)
                .arg(&q)
                .arg(&stride)
                .arg(&sums)
                .arg(&scales)
                .arg(&w.scales)
                .arg(&mut o)
                .arg(&accumulate);
            // SAFETY: argument types match the kernel; the kernel reads `tile` tokens from
            // offset t0 and writes `tile * rows` outputs, all inside the buffers (checked above).
            unsafe { launch.launch(cfg) }?;
            t0 += tile;
        }
        Ok(())
    }
}
