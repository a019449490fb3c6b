//! The in-memory model: packed ternary matrices, dense embeddings/head, f32 norm vectors.
//!
//! Both file loaders (GGUF, Hugging Face) implement [`TensorSource`]; [`ModelWeights::build`]
//! asks it for every tensor by role, so the shape checks and the model layout live in one place.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use bitnet_common::ArenaBuilder;
use bitnet_quantization::{DenseMatrix, TernaryMatrix};

/// A tensor's role in the model, independent of how a file names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    TokenEmbd,
    OutputNorm,
    Output,
    AttnNorm(usize),
    AttnQ(usize),
    AttnK(usize),
    AttnV(usize),
    AttnOutput(usize),
    AttnSubNorm(usize),
    FfnNorm(usize),
    FfnGate(usize),
    FfnUp(usize),
    FfnDown(usize),
    FfnSubNorm(usize),
}

impl Role {
    /// llama.cpp / bitnet.cpp tensor name.
    pub fn gguf_name(self) -> String {
        match self {
            Role::TokenEmbd => "token_embd.weight".into(),
            Role::OutputNorm => "output_norm.weight".into(),
            Role::Output => "output.weight".into(),
            Role::AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            Role::AttnQ(l) => format!("blk.{l}.attn_q.weight"),
            Role::AttnK(l) => format!("blk.{l}.attn_k.weight"),
            Role::AttnV(l) => format!("blk.{l}.attn_v.weight"),
            Role::AttnOutput(l) => format!("blk.{l}.attn_output.weight"),
            Role::AttnSubNorm(l) => format!("blk.{l}.attn_sub_norm.weight"),
            Role::FfnNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            Role::FfnGate(l) => format!("blk.{l}.ffn_gate.weight"),
            Role::FfnUp(l) => format!("blk.{l}.ffn_up.weight"),
            Role::FfnDown(l) => format!("blk.{l}.ffn_down.weight"),
            Role::FfnSubNorm(l) => format!("blk.{l}.ffn_sub_norm.weight"),
        }
    }

    /// Hugging Face names, transformers' `BitNetForCausalLM` first, then the 1bitLLM names.
    pub fn hf_names(self) -> Vec<String> {
        let p = |l: usize| format!("model.layers.{l}");
        match self {
            Role::TokenEmbd => vec!["model.embed_tokens.weight".into()],
            Role::OutputNorm => vec!["model.norm.weight".into()],
            Role::Output => vec!["lm_head.weight".into()],
            Role::AttnNorm(l) => vec![format!("{}.input_layernorm.weight", p(l))],
            Role::AttnQ(l) => vec![format!("{}.self_attn.q_proj.weight", p(l))],
            Role::AttnK(l) => vec![format!("{}.self_attn.k_proj.weight", p(l))],
            Role::AttnV(l) => vec![format!("{}.self_attn.v_proj.weight", p(l))],
            Role::AttnOutput(l) => vec![format!("{}.self_attn.o_proj.weight", p(l))],
            Role::AttnSubNorm(l) => vec![
                format!("{}.self_attn.attn_sub_norm.weight", p(l)),
                format!("{}.self_attn.inner_attn_ln.weight", p(l)),
            ],
            Role::FfnNorm(l) => vec![format!("{}.post_attention_layernorm.weight", p(l))],
            Role::FfnGate(l) => vec![format!("{}.mlp.gate_proj.weight", p(l))],
            Role::FfnUp(l) => vec![format!("{}.mlp.up_proj.weight", p(l))],
            Role::FfnDown(l) => vec![format!("{}.mlp.down_proj.weight", p(l))],
            Role::FfnSubNorm(l) => vec![
                format!("{}.mlp.ffn_sub_norm.weight", p(l)),
                format!("{}.mlp.ffn_layernorm.weight", p(l)),
            ],
        }
    }
}

/// What a file loader provides. `rows x cols` is the PyTorch `[out_features, in_features]` shape.
pub trait TensorSource {
    /// The name the file gives the tensor of `role`, for messages.
    fn tensor_name(&self, role: Role) -> String {
        role.gguf_name()
    }
    fn has(&self, role: Role) -> bool;
    fn dense(&self, role: Role, rows: usize, cols: usize) -> Result<DenseMatrix>;
    fn vector(&self, role: Role, len: usize) -> Result<Vec<f32>>;
    fn ternary(&self, role: Role, rows: usize, cols: usize) -> Result<TernaryMatrix>;
}

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: TernaryMatrix,
    pub wk: TernaryMatrix,
    pub wv: TernaryMatrix,
    pub wo: TernaryMatrix,
    pub attn_sub_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: TernaryMatrix,
    pub w_up: TernaryMatrix,
    pub w_down: TernaryMatrix,
    pub ffn_sub_norm: Vec<f32>,
}

impl LayerWeights {
    /// The seven ternary matrices with their roles, in file order.
    pub fn ternaries(&self, l: usize) -> [(Role, &TernaryMatrix); 7] {
        [
            (Role::AttnQ(l), &self.wq),
            (Role::AttnK(l), &self.wk),
            (Role::AttnV(l), &self.wv),
            (Role::AttnOutput(l), &self.wo),
            (Role::FfnGate(l), &self.w_gate),
            (Role::FfnUp(l), &self.w_up),
            (Role::FfnDown(l), &self.w_down),
        ]
    }

    /// The four norm vectors with their roles.
    pub fn norms(&self, l: usize) -> [(Role, &[f32]); 4] {
        [
            (Role::AttnNorm(l), &self.attn_norm[..]),
            (Role::AttnSubNorm(l), &self.attn_sub_norm[..]),
            (Role::FfnNorm(l), &self.ffn_norm[..]),
            (Role::FfnSubNorm(l), &self.ffn_sub_norm[..]),
        ]
    }
}

/// Codec and kernel errors ("2-bit code 3 at element 7") know nothing of tensors; a load error
/// must say which tensor it is about.
pub(crate) fn name_tensor(e: ModelError, src: &dyn TensorSource, role: Role) -> ModelError {
    match e {
        ModelError::Quant(_) | ModelError::Matrix(_) => ModelError::BadTensor {
            name: src.tensor_name(role),
            message: e.to_string(),
        },
        other => other,
    }
}

/// Where the matrices that decoding streams live once loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Where the loader left them: in the file mapping when the file's layout is the kernels'
    /// (zero-copy, fast start, page cache shared between processes), else in owned memory.
    #[default]
    Mapped,
    /// Copied into one huge-page arena ([`ArenaBuilder`] says why): faster decoding.
    Arena,
}

fn arena_err(e: std::io::Error) -> ModelError {
    ModelError::Other(format!("weight arena: {e}"))
}

/// An arena large enough for every ternary matrix and the head of `c`. The head's element type is
/// not known yet, so its room is reserved for f32: unused address space costs no memory.
fn new_arena(c: &ModelConfig) -> Result<ArenaBuilder> {
    let (h, ffn, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
    let packed =
        |rows: usize, cols: usize| rows.checked_mul(bitnet_quantization::i2s::packed_len(cols));
    let layer = [
        packed(q, h),
        packed(kv, h),
        packed(kv, h),
        packed(h, q),
        packed(ffn, h),
        packed(ffn, h),
        packed(h, ffn),
    ];
    let head = c.vocab_size.checked_mul(h).and_then(|n| n.checked_mul(4));
    let lens: Option<Vec<usize>> = (0..c.num_layers)
        .flat_map(|_| layer)
        .chain(std::iter::once(head))
        .collect();
    let cap = lens
        .and_then(ArenaBuilder::capacity_for)
        .ok_or_else(|| ModelError::Other("weight arena size overflows".into()))?;
    ArenaBuilder::new(cap).map_err(arena_err)
}

#[derive(Clone, Debug)]
pub struct ModelWeights {
    pub config: ModelConfig,
    pub token_embd: DenseMatrix,
    pub output_norm: Vec<f32>,
    /// `None` when the head is tied to the token embedding.
    pub output: Option<DenseMatrix>,
    pub layers: Vec<LayerWeights>,
}

impl ModelWeights {
    /// Builds the model with every tensor where the source put it (see [`Self::build_placed`]).
    pub fn build(config: ModelConfig, src: &dyn TensorSource) -> Result<ModelWeights> {
        Self::build_placed(config, src, Placement::Mapped)
    }

    /// Builds the model, asking `src` for every tensor by role; with [`Placement::Arena`] each
    /// matrix a decode step streams is moved into the arena as soon as it is loaded, so a
    /// repacked copy is freed before the next one is made and peak memory stays about one model.
    pub fn build_placed(
        config: ModelConfig,
        src: &dyn TensorSource,
        placement: Placement,
    ) -> Result<ModelWeights> {
        let c = &config;
        let (h, ffn, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        // Every float is checked once here, whichever file format it came from.
        let dense = |role: Role, rows: usize, cols: usize| -> Result<DenseMatrix> {
            let m = src
                .dense(role, rows, cols)
                .map_err(|e| name_tensor(e, src, role))?;
            crate::finite::check_dense(&src.tensor_name(role), &m)?;
            Ok(m)
        };
        let vector = |role: Role, len: usize| -> Result<Vec<f32>> {
            let v = src
                .vector(role, len)
                .map_err(|e| name_tensor(e, src, role))?;
            crate::finite::check_values(&src.tensor_name(role), &v)?;
            Ok(v)
        };
        let mut token_embd = dense(Role::TokenEmbd, c.vocab_size, h)?;
        let mut output = if src.has(Role::Output) {
            Some(dense(Role::Output, c.vocab_size, h)?)
        } else if c.tie_word_embeddings {
            None
        } else {
            return Err(ModelError::MissingTensor(
                "output / lm_head (config says the head is not tied)".into(),
            ));
        };
        let output_norm = vector(Role::OutputNorm, h)?;
        let mut arena = match placement {
            Placement::Mapped => None,
            Placement::Arena => Some(new_arena(c)?),
        };
        let mut ternary = |role: Role, rows: usize, cols: usize| -> Result<TernaryMatrix> {
            let m = src
                .ternary(role, rows, cols)
                .map_err(|e| name_tensor(e, src, role))?;
            crate::finite::check_scale(&src.tensor_name(role), m.scale())?;
            match arena.as_mut() {
                // Replacing the matrix drops a repacked (owned) source right away.
                Some(a) => Ok(m.with_data(a.push_storage(m.data()).map_err(arena_err)?)?),
                None => Ok(m),
            }
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            layers.push(LayerWeights {
                attn_norm: vector(Role::AttnNorm(l), h)?,
                wq: ternary(Role::AttnQ(l), q, h)?,
                wk: ternary(Role::AttnK(l), kv, h)?,
                wv: ternary(Role::AttnV(l), kv, h)?,
                wo: ternary(Role::AttnOutput(l), h, q)?,
                attn_sub_norm: vector(Role::AttnSubNorm(l), q)?,
                ffn_norm: vector(Role::FfnNorm(l), h)?,
                w_gate: ternary(Role::FfnGate(l), ffn, h)?,
                w_up: ternary(Role::FfnUp(l), ffn, h)?,
                w_down: ternary(Role::FfnDown(l), h, ffn)?,
                ffn_sub_norm: vector(Role::FfnSubNorm(l), ffn)?,
            });
        }
        if let Some(a) = arena.as_mut() {
            // An untied model's token_embd stays where it is: decoding reads one row of it.
            let head = output.as_mut().unwrap_or(&mut token_embd);
            let data = a.push_storage(head.data()).map_err(arena_err)?;
            *head = DenseMatrix::new(head.rows(), head.cols(), head.ty(), data)?;
        }
        Ok(ModelWeights {
            config,
            token_embd,
            output_norm,
            output,
            layers,
        })
    }

    pub fn lm_head(&self) -> &DenseMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Weight bytes one decode step reads from memory: every ternary matrix, the head, the norms
    /// (the embedding row of the new token and the KV cache are left out: under 0.5% at 2B4T
    /// sizes and short contexts). Dividing the memory bandwidth by this gives the decode limit.
    pub fn decode_bytes_per_token(&self) -> usize {
        // An untied model reads `output` as its head and only one row of `token_embd`.
        self.nbytes() - self.output.as_ref().map_or(0, |_| self.token_embd.nbytes())
    }

    /// Bytes the weights occupy (mapped or owned), for memory reports.
    pub fn nbytes(&self) -> usize {
        let norms: usize = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(l, w)| w.norms(l).map(|(_, v)| v.len() * 4))
            .sum();
        let ternary: usize = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(l, w)| w.ternaries(l).map(|(_, m)| m.nbytes()))
            .sum();
        self.token_embd.nbytes()
            + self.output.as_ref().map_or(0, |o| o.nbytes())
            + self.output_norm.len() * 4
            + norms
            + ternary
    }
}

/// A loaded model is a source too, so that writing it ([`crate::export`]) and converting a file
/// share one path. Matrices come back as cheap clones (their bytes are shared).
impl TensorSource for ModelWeights {
    fn has(&self, role: Role) -> bool {
        match role {
            Role::TokenEmbd | Role::OutputNorm => true,
            Role::Output => self.output.is_some(),
            Role::AttnNorm(l)
            | Role::AttnQ(l)
            | Role::AttnK(l)
            | Role::AttnV(l)
            | Role::AttnOutput(l)
            | Role::AttnSubNorm(l)
            | Role::FfnNorm(l)
            | Role::FfnGate(l)
            | Role::FfnUp(l)
            | Role::FfnDown(l)
            | Role::FfnSubNorm(l) => l < self.layers.len(),
        }
    }

    fn dense(&self, role: Role, rows: usize, cols: usize) -> Result<DenseMatrix> {
        let m = match role {
            Role::TokenEmbd => Some(&self.token_embd),
            Role::Output => self.output.as_ref(),
            _ => None,
        }
        .ok_or_else(|| ModelError::MissingTensor(role.gguf_name()))?;
        check_held_shape(role, (m.rows(), m.cols()), (rows, cols))?;
        Ok(m.clone())
    }

    fn vector(&self, role: Role, len: usize) -> Result<Vec<f32>> {
        let layer = |l: usize| self.layers.get(l);
        let v = match role {
            Role::OutputNorm => Some(&self.output_norm),
            Role::AttnNorm(l) => layer(l).map(|w| &w.attn_norm),
            Role::AttnSubNorm(l) => layer(l).map(|w| &w.attn_sub_norm),
            Role::FfnNorm(l) => layer(l).map(|w| &w.ffn_norm),
            Role::FfnSubNorm(l) => layer(l).map(|w| &w.ffn_sub_norm),
            _ => None,
        }
        .ok_or_else(|| ModelError::MissingTensor(role.gguf_name()))?;
        check_held_shape(role, (1, v.len()), (1, len))?;
        Ok(v.clone())
    }

    fn ternary(&self, role: Role, rows: usize, cols: usize) -> Result<TernaryMatrix> {
        let layer = |l: usize| self.layers.get(l);
        let m = match role {
            Role::AttnQ(l) => layer(l).map(|w| &w.wq),
            Role::AttnK(l) => layer(l).map(|w| &w.wk),
            Role::AttnV(l) => layer(l).map(|w| &w.wv),
            Role::AttnOutput(l) => layer(l).map(|w| &w.wo),
            Role::FfnGate(l) => layer(l).map(|w| &w.w_gate),
            Role::FfnUp(l) => layer(l).map(|w| &w.w_up),
            Role::FfnDown(l) => layer(l).map(|w| &w.w_down),
            _ => None,
        }
        .ok_or_else(|| ModelError::MissingTensor(role.gguf_name()))?;
        check_held_shape(role, (m.rows(), m.cols()), (rows, cols))?;
        Ok(m.clone())
    }
}

fn check_held_shape(role: Role, found: (usize, usize), expected: (usize, usize)) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    let dims = |(r, c): (usize, usize)| {
        if r == 1 {
            vec![c as u64]
        } else {
            vec![c as u64, r as u64]
        }
    };
    Err(ModelError::Shape {
        name: role.gguf_name(),
        found: dims(found),
        expected: dims(expected),
    })
}

/// Little-endian f32 bytes to values (tensor data need not be 4-byte aligned).
pub fn f32_from_le_bytes(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Turns dense weights into ternary codes and a per-tensor scale.
///
/// Files that already hold ternary values times one scale (llama.cpp's F16/F32 BitNet
/// conversions) must keep that scale: re-running absmean on them would shrink it by the
/// fraction of non-zero weights. Master weights get transformers' absmean quantization.
pub fn ternarize_dense(w: &[f32]) -> (Vec<i8>, f32) {
    let mut level = 0.0f32;
    let already_ternary = w.iter().all(|&x| {
        let a = x.abs();
        if a == 0.0 {
            return true;
        }
        if level == 0.0 {
            level = a;
        }
        a == level
    });
    if already_ternary && level > 0.0 {
        let codes = w
            .iter()
            .map(|&x| {
                if x > 0.0 {
                    1
                } else if x < 0.0 {
                    -1
                } else {
                    0
                }
            })
            .collect();
        return (codes, level);
    }
    bitnet_quantization::ternarize_absmean(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_ternarized_weights_keep_their_scale() {
        let (c, s) = ternarize_dense(&[0.5, 0.0, -0.5, 0.5]);
        assert_eq!(c, vec![1, 0, -1, 1]);
        assert_eq!(s, 0.5);
        // Master weights: absmean, as transformers does.
        let (c, s) = ternarize_dense(&[0.1, -0.4, 0.02, 0.3]);
        assert!((s - 0.205).abs() < 1e-6);
        assert_eq!(c, vec![0, -1, 0, 1]);
    }
}
