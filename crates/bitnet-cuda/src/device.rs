//! Opening a GPU: driver presence first, so a machine without one gets an error and not the
//! panic a missing library would raise inside the bindings.

use crate::compile::KernelCache;
use crate::error::{CudaError, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, DevicePtrMut};
use std::sync::Arc;

/// What `bitnet` prints about the GPU it runs on.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for Hopper.
    pub compute_capability: (i32, i32),
    pub total_mem: usize,
}

/// One GPU: its context, the stream every kernel of this crate runs on, and the compiled
/// kernels.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    /// Shared by every stream of the GPU ([`Gpu::with_new_stream`]): kernels compile once.
    pub(crate) kernels: Arc<KernelCache>,
    pub(crate) ternary_kernel: crate::ternary::TernaryKernel,
    /// Blocks per SM the K split of the tensor-core kernels aims for (0: none).
    pub(crate) split_k: u32,
    /// Streaming multiprocessors: the fused decode matmul runs a block per SM at most.
    pub(crate) sm_count: u32,
    /// Shared memory a block may opt in to (the persistent decode kernel, the heads), and an
    /// SM's whole (the Q8_0 head's tile choice).
    pub(crate) smem_per_block: usize,
    pub(crate) smem_per_sm: usize,
    info: GpuInfo,
}

impl Gpu {
    /// Opens GPU `ordinal` (`--device cuda:N`).
    pub fn open(ordinal: usize) -> Result<Gpu> {
        // The bindings panic on a missing library or symbol; check first, and keep any panic
        // from an old driver lacking a CUDA 13 entry point inside this call.
        // SAFETY: only tries to dlopen the candidate library names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "no NVIDIA driver library (libcuda.so) could be loaded".into(),
            ));
        }
        // SAFETY: as above.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "the NVRTC runtime compiler (libnvrtc.so from a CUDA 13 toolkit or the \
                 nvidia-cuda-nvrtc wheel) could not be loaded; add its folder to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        std::panic::catch_unwind(|| Self::open_unchecked(ordinal)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            Err(CudaError::Unavailable(format!(
                "the CUDA driver is too old or incomplete: {msg}"
            )))
        })
    }

    fn open_unchecked(ordinal: usize) -> Result<Gpu> {
        let count = CudaContext::device_count()
            .map_err(|e| CudaError::Unavailable(format!("no CUDA device: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::Unavailable(format!(
                "GPU {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream of our own: the legacy default stream cannot be captured into a CUDA
        // graph. With a single stream, cudarc's per-buffer events (for ordering across
        // streams) are pure overhead, and would be captured into graphs too.
        // SAFETY: every buffer of this crate is used on this one stream only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let info = GpuInfo {
            ordinal,
            name: ctx.name()?,
            compute_capability: ctx.compute_capability()?,
            total_mem: ctx.total_mem()?,
        };
        let kernels = Arc::new(KernelCache::new(ctx.clone(), info.compute_capability));
        let sm_count = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        use cudarc::driver::sys::CUdevice_attribute as A;
        let smem_per_block =
            ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let smem_per_sm =
            ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?;
        Ok(Gpu {
            ctx,
            stream,
            kernels,
            ternary_kernel: match std::env::var("BITNET_CUDA_TERNARY") {
                Ok(v) => v.parse()?,
                Err(_) => Default::default(),
            },
            split_k: match std::env::var("BITNET_CUDA_SPLIT_K") {
                Ok(v) => v.parse().map_err(|_| {
                    CudaError::Unsupported(format!(
                        "BITNET_CUDA_SPLIT_K={v:?}: expected the whole number of blocks per SM \
                         the K split aims for (0: no split)"
                    ))
                })?,
                Err(_) => crate::ternary::SPLIT_BLOCKS_PER_SM,
            },
            sm_count: u32::try_from(sm_count).unwrap_or(1).max(1),
            smem_per_block: usize::try_from(smem_per_block).unwrap_or(0),
            smem_per_sm: usize::try_from(smem_per_sm).unwrap_or(0),
            info,
        })
    }

    /// The same GPU with a stream of its own: each backend context queues (and captures) its
    /// kernels on its own stream, so contexts used from different threads neither serialize
    /// nor end up in each other's CUDA graphs. Buffers made on another stream must be complete
    /// (synchronized) before this one reads them: event tracking is off.
    pub fn with_new_stream(&self) -> Result<Gpu> {
        Ok(Gpu {
            ctx: self.ctx.clone(),
            stream: self.ctx.new_stream()?,
            kernels: self.kernels.clone(),
            ternary_kernel: self.ternary_kernel,
            split_k: self.split_k,
            sm_count: self.sm_count,
            smem_per_block: self.smem_per_block,
            smem_per_sm: self.smem_per_sm,
            info: self.info.clone(),
        })
    }

    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }

    /// Copies `src` into the start of `dst` (which must hold `src.len()` values) on this GPU's
    /// stream without waiting for it to land: a copy from pageable memory returns once the
    /// source is staged, so `src` may change afterwards, and the kernels queued after it on
    /// the stream see the data; cudarc's `memcpy_htod` would also wait for the copy, a stall in
    /// front of every step.
    pub(crate) fn copy_in_async(&self, dst: &mut CudaSlice<u32>, src: &[u32]) -> Result<()> {
        if dst.len() < src.len() {
            return Err(CudaError::Shape(format!(
                "a copy of {} words into {}",
                src.len(),
                dst.len()
            )));
        }
        let (ptr, _record) = dst.device_ptr_mut(&self.stream);
        // SAFETY: `dst` holds at least src.len() words (checked); see above for the ordering.
        unsafe { cudarc::driver::result::memcpy_htod_async(ptr, src, self.stream.cu_stream()) }?;
        Ok(())
    }

    /// Waits for every kernel queued so far (timings, copies back).
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// The stream kernels run on (for benchmarks that record events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

/// Page-locked host memory that results come back through (logits, token ids, top-k
/// candidates), as llama.cpp's output buffer is on a GPU. A copy into pageable memory goes
/// through the driver's own staging buffer in pieces, each waited for; into page-locked memory
/// it is one DMA. Measured before this (H100, 2026-12-07): a 2B4T decode step that copied its
/// row of logits back (128,256 floats, 513 KB) took ~100-130 us longer than one that copied
/// only the argmax. Grows to the largest copy asked of it (a power of two), up to
/// [`Self::MAX_BYTES`]; larger copies (a long prompt's logits at every position) stay pageable.
pub(crate) struct HostStage<T> {
    buf: Option<cudarc::driver::PinnedHostSlice<T>>,
}

impl<T> Default for HostStage<T> {
    fn default() -> Self {
        HostStage { buf: None }
    }
}

impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy> HostStage<T> {
    /// Page-locked memory is a scarce, unswappable resource, kept by its context until the
    /// context goes: 130 logit rows of a 128k vocabulary (a decode step of 64 sequences takes
    /// 32.8 MB) fit, a whole perplexity window's need not.
    const MAX_BYTES: usize = 64 << 20;

    /// `src`'s values on the host, once the work queued before the copy is done. Where no
    /// page-locked memory can be had (the driver refuses it), through pageable memory as before.
    pub(crate) fn read(&mut self, gpu: &Gpu, src: &CudaView<'_, T>) -> Result<Vec<T>> {
        let queued = self.queue(gpu, src)?;
        gpu.stream.synchronize()?;
        // SAFETY: the stream was synchronized after the copy was queued, and nothing else was
        // queued into this stage since.
        unsafe { self.take(queued) }
    }

    /// Queues the copy of `src` behind the work before it, for [`Self::take`] once the caller
    /// has synchronized the stream: several results (top-k's ids and values) then come back
    /// with one wait, not one each. Into page-locked memory the copy is asynchronous, and with
    /// event tracking off (`Gpu::open`) nothing but that synchronization waits for it. Copies
    /// that cannot go through the stage are done at once, through pageable memory.
    pub(crate) fn queue(&mut self, gpu: &Gpu, src: &CudaView<'_, T>) -> Result<Queued<T>> {
        let n = src.len();
        let size = std::mem::size_of::<T>().max(1);
        if n == 0 || n.saturating_mul(size) > Self::MAX_BYTES {
            return Ok(Queued::Done(gpu.stream.clone_dtoh(src)?));
        }
        if self.buf.as_ref().is_none_or(|b| b.len() < n) {
            // The old buffer goes first. Its drop waits for no copy (cudarc's event for it is
            // never recorded): a copy queued into it whose caller returned early on an error
            // must land before the memory is freed.
            if self.buf.is_some() {
                gpu.stream.synchronize()?;
            }
            self.buf = None;
            let len = n.next_power_of_two().min(Self::MAX_BYTES / size);
            // Flags 0: not write-combined (cudarc's `alloc_pinned` default), which the host
            // reads slowly.
            // SAFETY: cuMemHostAlloc's memory is uninitialised; it is zeroed below before any
            // slice of it is made.
            self.buf = match unsafe { gpu.ctx.alloc_pinned_with_flags::<T>(len, 0) } {
                Ok(mut b) => {
                    // SAFETY: `len` values of `T` were just allocated there, and all zero bits
                    // is a valid `T` (`ValidAsZeroBits`).
                    unsafe { std::ptr::write_bytes(b.as_mut_ptr()?, 0, len) };
                    Some(b)
                }
                Err(_) => None,
            };
        }
        let Some(buf) = &mut self.buf else {
            return Ok(Queued::Done(gpu.stream.clone_dtoh(src)?));
        };
        // cudarc copies as many values as the destination holds: give it exactly `n`.
        gpu.stream.memcpy_dtoh(src, &mut buf.as_mut_slice()?[..n])?;
        Ok(Queued::Staged(n))
    }

    /// The values of a [`Self::queue`]d copy.
    ///
    /// # Safety
    /// The stream was synchronized after the copy was queued, and nothing else was queued into
    /// this stage in between: otherwise the copy may still be writing the memory read here.
    pub(crate) unsafe fn take(&mut self, queued: Queued<T>) -> Result<Vec<T>> {
        match queued {
            Queued::Done(v) => Ok(v),
            Queued::Staged(n) => match &mut self.buf {
                Some(buf) => Ok(buf.as_mut_slice()?[..n].to_vec()),
                None => Err(CudaError::Shape("a staged copy without its stage".into())),
            },
        }
    }
}

/// A copy [`HostStage::queue`] started: its first `n` staged values, or values already back.
pub(crate) enum Queued<T> {
    Staged(usize),
    Done(Vec<T>),
}
