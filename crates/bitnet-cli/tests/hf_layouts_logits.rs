//! End to end through `bitnet_inference`: the packed (2B4T) and sharded Hugging Face layouts
//! of the shared KJV model give the reference logits and greedy continuations. The layouts are
//! written by the helpers of bitnet-models' tests (`hf_layouts.rs` there checks the weights).
//!
//! The engine reproduces reference.json to about 1e-5 on the bf16 folder, so the final logits
//! are held to 1e-3 here; layouts with bit-identical weights must also give bit-identical logits.
//! A BF16 `weight_scale` rounds each layer's scale by up to 2^-9 relative, which moves the logits
//! by a few hundredths: that variant gets the README's 0.15 and exact greedy tokens.

#[path = "../../bitnet-models/tests/common/mod.rs"]
mod common;

use bitnet_inference::{Engine, EngineOptions, GenerateOptions, KvType, Logits, SamplingParams};
use common::*;
use std::path::Path;
use std::sync::OnceLock;

const TIGHT: f32 = 1e-3;
const BF16_SCALE_TOL: f32 = 0.15;
/// Greedy steps whose reference margin is below this may flip under the BF16 scale's rounding
/// (bos_only step 29 has a margin of 0.009).
const NEAR_TIE: f32 = 0.05;

fn engine(path: &Path) -> Engine {
    Engine::load(
        path,
        &EngineOptions {
            threads: Some(2),
            // f32 K/V: the comparison is against the reference's float32 math.
            kv_type: KvType::F32,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

struct PromptResult {
    name: String,
    logits: Vec<f32>,
}

/// Every reference prompt: ids, final logits (within `tol`), argmax and the 32 greedy tokens.
/// The greedy comparison stops at the first step whose reference top-1/top-2 margin is below
/// `near_tie` (0: compare all 32 tokens and the text).
fn check(label: &str, engine: &Engine, tol: f32, near_tie: f32) -> Vec<PromptResult> {
    let tok = engine.tokenizer();
    let mut out = Vec::new();
    for p in reference_json()["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let text = p["text"].as_str().unwrap();
        let ids = tok.encode(text, name != "chat").unwrap();
        assert_eq!(ids, ids_of(&p["token_ids"]), "{label}/{name}: ids");
        let mut s = engine.session(Some(64)).unwrap();
        let logits = s.eval(&ids, Logits::Last).unwrap();
        let want = floats_of(&p["final_logits"]);
        assert_eq!(logits.len(), want.len());
        let d = logits
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{label}/{name}: final logits max |diff| {d:.6}");
        assert!(
            d <= tol,
            "{label}/{name}: final logits differ by {d} > {tol}"
        );
        assert_eq!(
            bitnet_inference::argmax(&logits),
            p["final_argmax"].as_u64().unwrap() as u32,
            "{label}/{name}: argmax"
        );
        let greedy = ids_of(&p["greedy_new_token_ids"]);
        let mut s = engine.session(Some(64)).unwrap();
        let opts = GenerateOptions {
            max_tokens: greedy.len(),
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..Default::default()
        };
        let g = s.generate(&ids, &opts, |_| true).unwrap();
        let margins = floats_of(&p["greedy_top1_minus_top2_margins"]);
        let upto = margins
            .iter()
            .position(|&m| m < near_tie)
            .unwrap_or(greedy.len());
        assert_eq!(
            g.tokens[..upto],
            greedy[..upto],
            "{label}/{name}: greedy tokens"
        );
        if upto == greedy.len() {
            assert_eq!(g.tokens, greedy, "{label}/{name}: greedy tokens");
            assert_eq!(
                g.text,
                p["greedy_text"].as_str().unwrap(),
                "{label}/{name}: greedy text"
            );
        } else {
            println!("{label}/{name}: greedy compared up to the near-tie at step {upto}");
        }
        out.push(PromptResult {
            name: name.into(),
            logits,
        });
    }
    out
}

/// The bf16 folder itself, the baseline the other layouts are compared with bit for bit.
fn baseline() -> &'static Vec<PromptResult> {
    static B: OnceLock<Vec<PromptResult>> = OnceLock::new();
    B.get_or_init(|| check("hf-bf16", &engine(&kjv_dir()), TIGHT, 0.0))
}

fn assert_bit_identical(label: &str, got: &[PromptResult]) {
    for (a, b) in baseline().iter().zip(got) {
        assert_eq!(a.name, b.name);
        assert!(
            a.logits
                .iter()
                .zip(&b.logits)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{label}/{}: logits differ from the bf16 folder's although the weights are identical",
            a.name
        );
    }
}

#[test]
fn packed_layout_with_f32_scale_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    write_packed_dir(dir.path(), ScaleType::F32);
    let got = check("packed-f32", &engine(dir.path()), TIGHT, 0.0);
    assert_bit_identical("packed-f32", &got);
}

#[test]
fn packed_layout_with_bf16_scale_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    write_packed_dir(dir.path(), ScaleType::BF16);
    check("packed-bf16", &engine(dir.path()), BF16_SCALE_TOL, NEAR_TIE);
}

#[test]
fn sharded_checkpoint_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded_dir(dir.path(), kjv_tensors(), 2);
    let got = check("sharded", &engine(dir.path()), TIGHT, 0.0);
    assert_bit_identical("sharded", &got);
}

#[test]
fn sharded_packed_checkpoint_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    let packed = packed_tensors(kjv_tensors(), ScaleType::F32);
    write_sharded_dir_with(dir.path(), &packed, 2, |n| {
        usize::from(n.ends_with("_scale"))
    });
    write_json(&dir.path().join("config.json"), &offline_config());
    let got = check("sharded-packed", &engine(dir.path()), TIGHT, 0.0);
    assert_bit_identical("sharded-packed", &got);
}
