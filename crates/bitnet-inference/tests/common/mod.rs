//! Helpers shared by the integration tests: paths to the shared reference model and its
//! reference outputs (transformers 5.17, float32, eager; see shared/models/bitnet-b1.58-kjv/README.md).
#![allow(dead_code)]

use bitnet_inference::{Engine, EngineOptions, GenerateOptions, SamplingParams};
use serde_json::Value;
use std::path::PathBuf;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn kjv_dir() -> PathBuf {
    workspace_root().join("../shared/models/bitnet-b1.58-kjv")
}

pub struct RefPrompt {
    pub name: String,
    pub text: String,
    pub is_chat: bool,
    pub token_ids: Vec<u32>,
    pub final_logits: Vec<f32>,
    pub final_argmax: u32,
    pub greedy_new: Vec<u32>,
    pub greedy_text: String,
}

pub struct Reference {
    pub prompts: Vec<RefPrompt>,
    pub val_loss: f64,
    pub val_tokens: usize,
    pub weight_quant: Value,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn reference() -> Reference {
    let path = kjv_dir().join("reference/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("reference.json parses");
    let prompts = v["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| RefPrompt {
            name: p["name"].as_str().unwrap().to_string(),
            text: p["text"].as_str().unwrap().to_string(),
            is_chat: p["name"] == "chat",
            token_ids: ids(&p["token_ids"]),
            final_logits: p["final_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
            final_argmax: p["final_argmax"].as_u64().unwrap() as u32,
            greedy_new: ids(&p["greedy_new_token_ids"]),
            greedy_text: p["greedy_text"].as_str().unwrap().to_string(),
        })
        .collect();
    Reference {
        prompts,
        val_loss: v["validation"]["loss_nats_per_token"].as_f64().unwrap(),
        val_tokens: v["validation"]["tokens"].as_u64().unwrap() as usize,
        weight_quant: v["weight_quant"].clone(),
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

/// The committed default model on 2 threads.
pub fn engine() -> Engine {
    let path = workspace_root().join("models/bitnet-b1.58-kjv-i2_s.gguf");
    let opts = EngineOptions {
        threads: Some(2),
        ..Default::default()
    };
    Engine::load(&path, &opts).unwrap()
}

/// Greedy decoding of exactly `n` tokens (end-of-sequence ignored).
pub fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    }
}
