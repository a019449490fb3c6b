//! What a quantized embedding / LM head (8-bit Q8_0, 6.5625-bit Q6_K) costs in quality on the
//! shared KJV model: the HF checkpoint is exported with the same I2_S ternary layers, once with an
//! F16 head and once per quantized head, and the engines are compared on validation perplexity,
//! the KL divergence of their next-token distributions, and greedy continuations.
//!
//! `cargo test --release -p bitnet-cli --test quantized_head -- --nocapture` prints the numbers.

#[path = "../../bitnet-models/tests/common/mod.rs"]
mod common;

use bitnet_inference::{argmax, perplexity, Engine, EngineOptions, Logits};
use bitnet_kernels::DenseType;
use bitnet_models::export::{write_gguf, DenseFormat, ExportOptions, TernaryFormat};
use common::*;
use std::path::Path;

fn export(dir: &Path, dense: DenseFormat) -> Engine {
    let model = bitnet_models::load(&kjv_dir(), None).expect("KJV model loads");
    let path = dir.join(format!("kjv-{dense:?}.gguf"));
    let opts = ExportOptions {
        ternary: TernaryFormat::I2S,
        dense,
        name: "kjv".into(),
    };
    write_gguf(&model.weights, model.vocab.as_ref().unwrap(), &opts, &path).unwrap();
    let engine = Engine::load(
        &path,
        &EngineOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let want = match dense {
        DenseFormat::Q8_0 => DenseType::Q8_0,
        DenseFormat::Q6_K => DenseType::Q6_K,
        _ => DenseType::F16,
    };
    assert_eq!(engine.model().weights.token_embd.ty(), want);
    engine
}

/// KL(p || q) per position, `p` the F16 head's distribution.
fn kl_rows(p: &[f32], q: &[f32], vocab: usize, out: &mut Vec<f64>) {
    for (a, b) in p.chunks_exact(vocab).zip(q.chunks_exact(vocab)) {
        out.push(perplexity::kl_divergence(a, b));
    }
}

fn greedy(engine: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = engine.session(None).unwrap();
    let mut logits = s.eval(prompt, Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let id = argmax(&logits);
        out.push(id);
        logits = s.eval(&[id], Logits::Last).unwrap();
    }
    out
}

/// The limits a quantized head must stay within, against the F16 head.
struct Limits {
    /// |relative change| of the validation perplexity.
    perplexity: f64,
    /// Mean and largest KL(F16 || quantized) per position, nats.
    mean_kl: f64,
    max_kl: f64,
    /// Reference prompts whose greedy continuation may differ from the F16 head's.
    greedy_diffs: usize,
}

#[test]
fn q8_0_head_costs_little_quality() {
    head_costs_little_quality(
        DenseFormat::Q8_0,
        Limits {
            perplexity: 0.005,
            mean_kl: 1e-3,
            max_kl: 0.03,
            greedy_diffs: 0,
        },
    );
}

/// Measured: perplexity +0.044%, mean KL 6.4e-4 nats (max 1.2e-2), and the 32-token greedy
/// continuation of `bos_only` drifts from the F16 head's (the other three are unchanged).
#[test]
fn q6_k_head_costs_little_quality() {
    head_costs_little_quality(
        DenseFormat::Q6_K,
        Limits {
            perplexity: 0.005,
            mean_kl: 2e-3,
            max_kl: 0.05,
            greedy_diffs: 1,
        },
    );
}

fn head_costs_little_quality(fmt: DenseFormat, limits: Limits) {
    let dir = tempdir();
    let f16 = export(dir.path(), DenseFormat::F16);
    let qh = export(dir.path(), fmt);
    let vocab = f16.config().vocab_size;
    let val = std::fs::read_to_string(kjv_dir().join("data/val.txt")).unwrap();

    // Perplexity and KL over the validation text, measured the way the reference measures
    // perplexity (line-packed chunks of 256 tokens).
    let d = perplexity::divergence(&qh, &f16, &val, 256).unwrap();
    let rel = d.ppl.perplexity() / d.base.perplexity() - 1.0;
    println!(
        "val perplexity over {} tokens: F16 head {:.4}, {fmt:?} head {:.4} ({:+.4}%); KL mean \
         {:.3e} nats, max {:.3e}; top-1 agreement {:.2}%",
        d.ppl.tokens,
        d.base.perplexity(),
        d.ppl.perplexity(),
        rel * 100.0,
        d.kl_mean,
        d.kl_max,
        100.0 * d.top1_agree
    );
    assert!(
        rel.abs() < limits.perplexity,
        "{fmt:?} head changes perplexity by {rel}"
    );
    assert!(d.kl_mean < limits.mean_kl, "mean KL {}", d.kl_mean);
    assert!(d.kl_max < limits.max_kl, "max KL {}", d.kl_max);

    // KL at every position of the reference prompts too (the chat template, BOS only).
    let mut kl = Vec::new();
    let prompts = reference_json()["prompts"].as_array().unwrap();
    let mut s16 = f16.session(None).unwrap();
    let mut sq = qh.session(None).unwrap();
    for p in prompts {
        let ids = ids_of(&p["token_ids"]);
        s16.reset();
        sq.reset();
        let a = s16.eval(&ids, Logits::All).unwrap();
        let b = sq.eval(&ids, Logits::All).unwrap();
        kl_rows(&a, &b, vocab, &mut kl);
    }
    let max = kl.iter().cloned().fold(0f64, f64::max);
    println!("KL(F16 || {fmt:?}) on the reference prompts: max {max:.3e} nats");
    assert!(max < limits.max_kl, "max KL on the prompts {max}");

    // Greedy continuations of the reference prompts.
    let mut diffs = 0;
    for p in prompts {
        let ids = ids_of(&p["token_ids"]);
        let want = ids_of(&p["greedy_new_token_ids"]);
        let a = greedy(&f16, &ids, want.len());
        let b = greedy(&qh, &ids, want.len());
        println!(
            "{}: F16 head {} reference, {fmt:?} head {} F16",
            p["name"],
            if a == want { "==" } else { "!=" },
            if a == b { "==" } else { "!=" }
        );
        diffs += usize::from(a != b);
    }
    assert!(
        diffs <= limits.greedy_diffs,
        "{fmt:?}: {diffs} greedy continuations differ from the F16 head's"
    );
}
