//! A model's weights resident on the GPU ([`GpuModel`]), in the layout the kernels read; the
//! forward pass over them is [`crate::CudaContext`].

use crate::device::Gpu;
use crate::error::{CudaError, Result};
use crate::ops::{AttnDims, GpuDense};
use crate::ternary::GpuTernaryMatrix;
use bitnet_models::{ModelConfig, ModelWeights};
use cudarc::driver::CudaSlice;

pub(crate) struct GpuLayer {
    pub(crate) attn_norm: CudaSlice<f32>,
    pub(crate) qkv: GpuTernaryMatrix,
    pub(crate) wo: GpuTernaryMatrix,
    pub(crate) attn_sub_norm: CudaSlice<f32>,
    pub(crate) ffn_norm: CudaSlice<f32>,
    pub(crate) gate_up: GpuTernaryMatrix,
    pub(crate) down: GpuTernaryMatrix,
    pub(crate) ffn_sub_norm: CudaSlice<f32>,
}

/// A model's weights on the GPU: ternary matrices in their I2_S rows (q/k/v and gate/up
/// stacked), norms as f32, the head (and an untied embedding) in their file type.
pub struct GpuModel {
    pub(crate) config: ModelConfig,
    pub(crate) dims: AttnDims,
    pub(crate) layers: Vec<GpuLayer>,
    pub(crate) output_norm: CudaSlice<f32>,
    pub(crate) head: GpuDense,
    /// The token embedding when it is not the head (untied models).
    embed: Option<GpuDense>,
    /// RoPE frequencies, computed as the CPU computes them.
    pub(crate) inv_freq: CudaSlice<f32>,
    nbytes: usize,
}

impl GpuModel {
    pub fn upload(gpu: &Gpu, w: &ModelWeights) -> Result<GpuModel> {
        let c = &w.config;
        let dims = AttnDims {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        // Rejects shapes the kernels do not handle before anything is uploaded.
        if dims.heads == 0
            || dims.kv_heads == 0
            || !dims.heads.is_multiple_of(dims.kv_heads)
            || !dims.head_dim.is_multiple_of(2)
            || dims.head_dim > crate::ops::MAX_HEAD_DIM
        {
            return Err(CudaError::Unsupported(format!(
                "{} heads, {} KV heads of dimension {}",
                dims.heads, dims.kv_heads, dims.head_dim
            )));
        }
        let s = &gpu.stream;
        let mut layers = Vec::with_capacity(w.layers.len());
        for lw in &w.layers {
            layers.push(GpuLayer {
                attn_norm: s.clone_htod(&lw.attn_norm)?,
                qkv: GpuTernaryMatrix::upload_stacked(gpu, &[&lw.wq, &lw.wk, &lw.wv])?,
                wo: GpuTernaryMatrix::upload(gpu, &lw.wo)?,
                attn_sub_norm: s.clone_htod(&lw.attn_sub_norm)?,
                ffn_norm: s.clone_htod(&lw.ffn_norm)?,
                gate_up: GpuTernaryMatrix::upload_stacked(gpu, &[&lw.w_gate, &lw.w_up])?,
                down: GpuTernaryMatrix::upload(gpu, &lw.w_down)?,
                ffn_sub_norm: s.clone_htod(&lw.ffn_sub_norm)?,
            });
        }
        let head_name = if w.output.is_some() {
            "output (LM head)"
        } else {
            "token_embd (tied LM head)"
        };
        let head = GpuDense::upload(gpu, w.lm_head(), head_name)?;
        let embed = match w.output {
            Some(_) => Some(GpuDense::upload(gpu, &w.token_embd, "token_embd")?),
            None => None,
        };
        for m in std::iter::once(&head).chain(embed.as_ref()) {
            if m.cols() != c.hidden_size {
                return Err(CudaError::Shape(format!(
                    "dense matrix of {} columns for hidden size {}",
                    m.cols(),
                    c.hidden_size
                )));
            }
        }
        let inv_freq: Vec<f32> = (0..c.head_dim / 2)
            .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / c.head_dim as f32))
            .collect();
        let ternary: usize = layers
            .iter()
            .map(|l| l.qkv.nbytes() + l.wo.nbytes() + l.gate_up.nbytes() + l.down.nbytes())
            .sum();
        let nbytes = ternary + head.nbytes() + embed.as_ref().map_or(0, GpuDense::nbytes);
        Ok(GpuModel {
            config: c.clone(),
            dims,
            layers,
            output_norm: s.clone_htod(&w.output_norm)?,
            head,
            embed,
            inv_freq: s.clone_htod(&inv_freq)?,
            nbytes,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes of weights on the GPU (ternary matrices, head, untied embedding).
    pub fn nbytes(&self) -> usize {
        self.nbytes
    }

    pub(crate) fn embedding(&self) -> &GpuDense {
        self.embed.as_ref().unwrap_or(&self.head)
    }
}
