//! Random-weight models with real shapes, for benchmarks: the same file runs in every engine.

use crate::config::{Arch, ModelConfig};
use crate::error::Result;
use crate::weights::{LayerWeights, ModelWeights};
use bitnet_common::Storage;
use bitnet_quantization::{DenseMatrix, DenseType, TernaryMatrix};
use bitnet_tokenizers::GgufVocab;

/// microsoft/bitnet-b1.58-2B-4T's shapes.
pub fn config_2b4t(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        hidden_size: 2560,
        intermediate_size: 6912,
        num_layers: 30,
        num_heads: 20,
        num_kv_heads: 5,
        head_dim: 128,
        vocab_size: 128256,
        max_position_embeddings: 4096,
        rope_theta: 500000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
    }
}

/// SplitMix64: deterministic bytes without a dependency.
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Random ternary weights (about a third zeros, like trained BitNet layers), random f16
/// embeddings and norms near 1.
pub fn random_weights(config: &ModelConfig, seed: u64) -> Result<ModelWeights> {
    config.validate()?;
    let mut rng = Mix(seed);
    let c = config;
    let mut ternary = |rows: usize, cols: usize| -> Result<TernaryMatrix> {
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| (rng.next() % 3) as i8 - 1)
            .collect();
        Ok(TernaryMatrix::from_codes(rows, cols, &codes, 0.02)?)
    };
    let (h, f, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
    let mut layers = Vec::with_capacity(c.num_layers);
    for _ in 0..c.num_layers {
        layers.push(LayerWeights {
            attn_norm: vec![1.0; h],
            wq: ternary(q, h)?,
            wk: ternary(kv, h)?,
            wv: ternary(kv, h)?,
            wo: ternary(h, q)?,
            attn_sub_norm: vec![1.0; q],
            ffn_norm: vec![1.0; h],
            w_gate: ternary(f, h)?,
            w_up: ternary(f, h)?,
            w_down: ternary(h, f)?,
            ffn_sub_norm: vec![1.0; f],
        });
    }
    let mut rng = Mix(seed ^ 0xE3B0_C442);
    let embd: Vec<f32> = (0..c.vocab_size * h).map(|_| rng.unit() * 0.05).collect();
    let bytes = bitnet_quantization::float::f32_to_f16_bytes(&embd);
    let token_embd = DenseMatrix::new(c.vocab_size, h, DenseType::F16, Storage::from_vec(bytes))?;
    Ok(ModelWeights {
        config: config.clone(),
        token_embd,
        output_norm: vec![1.0; h],
        output: None,
        layers,
    })
}

/// A byte-level BPE vocabulary of the requested size that llama.cpp and our tokenizer both
/// accept: the 256 byte tokens, a few merges, then filler tokens.
pub fn synthetic_vocab(vocab_size: usize) -> GgufVocab {
    let bytes = byte_level_alphabet();
    let mut tokens: Vec<String> = bytes.clone();
    let mut merges = Vec::new();
    'outer: for a in ["t", "h", "e", "a", "Ġ"] {
        for b in ["h", "e", "t", "a", "n"] {
            if tokens.len() + 2 >= vocab_size {
                break 'outer;
            }
            let merged = format!("{a}{b}");
            if !tokens.contains(&merged) {
                merges.push(format!("{a} {b}"));
                tokens.push(merged);
            }
        }
    }
    while tokens.len() < vocab_size.saturating_sub(2) {
        tokens.push(format!("<|filler_{}|>", tokens.len()));
    }
    tokens.push("<|begin_of_text|>".into());
    tokens.push("<|end_of_text|>".into());
    tokens.truncate(vocab_size);
    let n = tokens.len();
    let mut types = vec![1i32; n];
    for t in types.iter_mut().skip(n.saturating_sub(2)) {
        *t = 3;
    }
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("llama-bpe".into()),
        tokens,
        token_types: Some(types),
        merges,
        bos_id: Some(n.saturating_sub(2) as u32),
        eos_id: Some(n.saturating_sub(1) as u32),
        add_bos: Some(true),
        ..Default::default()
    }
}

/// GPT-2's byte-to-unicode table, in byte order.
fn byte_level_alphabet() -> Vec<String> {
    let mut out = Vec::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let cp = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        out.push(char::from_u32(cp).map(String::from).unwrap_or_default());
    }
    out
}
