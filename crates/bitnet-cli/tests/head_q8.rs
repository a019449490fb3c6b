//! What an 8-bit (Q8_0) embedding / LM head costs in quality on the shared KJV model: the HF
//! checkpoint is exported twice with the same I2_S ternary layers, once with an F16 head and
//! once with a Q8_0 head, and the two engines are compared on validation perplexity, the KL
//! divergence of their next-token distributions, and greedy continuations.
//!
//! `cargo test --release -p bitnet-cli --test head_q8 -- --nocapture` prints the numbers.

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
        _ => DenseType::F16,
    };
    assert_eq!(engine.model().weights.token_embd.ty(), want);
    engine
}

/// log-softmax in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let lse = perplexity::log_sum_exp(row);
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// KL(p || q) per position, `p` the F16 head's distribution.
fn kl_rows(p: &[f32], q: &[f32], vocab: usize, out: &mut Vec<f64>) {
    for (a, b) in p.chunks_exact(vocab).zip(q.chunks_exact(vocab)) {
        let (la, lb) = (log_softmax(a), log_softmax(b));
        out.push(la.iter().zip(&lb).map(|(x, y)| x.exp() * (x - y)).sum());
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

#[test]
fn q8_0_head_costs_little_quality() {
    let dir = tempdir();
    let f16 = export(dir.path(), DenseFormat::F16);
    let q8 = export(dir.path(), DenseFormat::Q8_0);
    let vocab = f16.config().vocab_size;
    let val = std::fs::read_to_string(kjv_dir().join("data/val.txt")).unwrap();

    // Perplexity, measured the way the reference does (line-packed chunks of 256 tokens).
    let p16 = perplexity::line_packed(&f16, &val, 256).unwrap();
    let p8 = perplexity::line_packed(&q8, &val, 256).unwrap();
    let rel = p8.perplexity() / p16.perplexity() - 1.0;
    println!(
        "val perplexity over {} tokens: F16 head {:.4}, Q8_0 head {:.4} ({:+.4}%)",
        p16.tokens,
        p16.perplexity(),
        p8.perplexity(),
        rel * 100.0
    );
    assert!(rel.abs() < 0.005, "Q8_0 head changes perplexity by {rel}");

    // KL divergence at every position of the reference prompts and of the validation text.
    let mut kl = Vec::new();
    let prompts = reference_json()["prompts"].as_array().unwrap();
    let mut s16 = f16.session(None).unwrap();
    let mut s8 = q8.session(None).unwrap();
    for p in prompts {
        let ids = ids_of(&p["token_ids"]);
        s16.reset();
        s8.reset();
        let a = s16.eval(&ids, Logits::All).unwrap();
        let b = s8.eval(&ids, Logits::All).unwrap();
        kl_rows(&a, &b, vocab, &mut kl);
    }
    let tok = f16.tokenizer();
    let bos = tok.bos_id().unwrap();
    let mut chunk = vec![bos];
    let mut flush = |chunk: &mut Vec<u32>, kl: &mut Vec<f64>| {
        s16.reset();
        s8.reset();
        let a = s16.eval(chunk, Logits::All).unwrap();
        let b = s8.eval(chunk, Logits::All).unwrap();
        kl_rows(&a, &b, vocab, kl);
        *chunk = vec![bos];
    };
    for line in val.lines() {
        let ids = tok.encode(&format!("{line}\n"), false).unwrap();
        if chunk.len() + ids.len() > 257 && chunk.len() > 1 {
            flush(&mut chunk, &mut kl);
        }
        chunk.extend(ids);
    }
    flush(&mut chunk, &mut kl);
    let mean = kl.iter().sum::<f64>() / kl.len() as f64;
    let max = kl.iter().cloned().fold(0f64, f64::max);
    println!(
        "KL(F16 || Q8_0) over {} positions: mean {mean:.3e} nats, max {max:.3e}",
        kl.len()
    );
    assert!(mean < 1e-3, "mean KL {mean}");

    // Greedy continuations of the reference prompts.
    for p in prompts {
        let ids = ids_of(&p["token_ids"]);
        let want = ids_of(&p["greedy_new_token_ids"]);
        let a = greedy(&f16, &ids, want.len());
        let b = greedy(&q8, &ids, want.len());
        println!(
            "{}: F16 head {} reference, Q8_0 head {} F16",
            p["name"],
            if a == want { "==" } else { "!=" },
            if a == b { "==" } else { "!=" }
        );
        assert_eq!(a, b, "{}: Q8_0 greedy continuation differs", p["name"]);
    }
}
