//! The engine's forward pass goes through the backend seam (`bitnet_backend`): the generic
//! `run_layers` driving a CPU context gives the shared reference's logits, the same numbers as a
//! `Session`, and the CPU context refuses broken batches with an error instead of a panic.

mod common;

use bitnet_inference::{
    run_layers, BackendError, Context, Device, Engine, EngineError, EngineOptions, KvType, Logits,
    SeqChunk, KV_BLOCK,
};
use common::*;

/// Lossless file form and an f32 KV cache: the reference's float math up to summation order
/// (`reference_kjv.rs` holds the same to 0.01, measured 1e-5).
const EXACT_TOL: f32 = 0.01;

fn i2s_engine() -> Engine {
    let path = kjv_dir().join("gguf/bitnet-b1.58-kjv-i2_s.gguf");
    let opts = EngineOptions {
        threads: Some(2),
        kv_type: KvType::F32,
        ..Default::default()
    };
    Engine::load(&path, &opts).unwrap()
}

fn context(e: &Engine, blocks: usize) -> Box<dyn Context> {
    e.backend().new_context(blocks, e.kv_type(), 64).unwrap()
}

#[test]
fn run_layers_through_the_cpu_context_matches_the_reference() {
    let e = i2s_engine();
    assert_eq!(e.device(), Device::Cpu);
    assert!(e.backend().describe().starts_with("cpu: 2 threads"));
    let r = reference();
    for p in &r.prompts {
        let ids = p.token_ids.clone();
        let table: Vec<u32> = (0..ids.len().div_ceil(KV_BLOCK) as u32).collect();
        // Prompt in two passes, so the second attends over K/V the first wrote.
        let cut = ids.len() / 2;
        let mut c = context(&e, table.len());
        let first = SeqChunk {
            tokens: &ids[..cut],
            start: 0,
            blocks: &table,
            want: Logits::None,
        };
        run_layers(&mut *c, &[first]).unwrap();
        assert!(c.logits().unwrap().is_empty());
        let rest = SeqChunk {
            tokens: &ids[cut..],
            start: cut,
            blocks: &table,
            want: Logits::Last,
        };
        run_layers(&mut *c, &[rest]).unwrap();
        let logits = c.logits().unwrap();
        assert_eq!(logits.len(), c.vocab_size());
        let d = max_abs_diff(&logits, &p.final_logits);
        println!("{}: run_layers final logits max |diff| {d:.5}", p.name);
        assert!(d <= EXACT_TOL, "{}: {d} > {EXACT_TOL}", p.name);
        assert_eq!(bitnet_inference::argmax(&logits), p.final_argmax);

        // The session's path (the context's `forward`, one install for the whole pass) is the
        // same arithmetic: identical bits.
        let mut s = e.session(Some(table.len() * KV_BLOCK)).unwrap();
        s.eval(&ids[..cut], Logits::None).unwrap();
        assert_eq!(
            s.eval(&ids[cut..], Logits::Last).unwrap(),
            logits,
            "{}",
            p.name
        );

        // The backend's greedy pick is the argmax of those logits.
        let mut c = context(&e, table.len());
        let all = SeqChunk {
            tokens: &ids,
            start: 0,
            blocks: &table,
            want: Logits::Last,
        };
        let vocab = e.sampled_vocab();
        assert_eq!(
            c.forward_greedy(&[all], vocab).unwrap(),
            vec![p.final_argmax]
        );
    }
}

#[test]
fn broken_batches_are_errors_not_panics() {
    let e = engine();
    let mut c = context(&e, 2);
    let toks = [1u32, 2, 3];
    let cases: [(SeqChunk<'_>, &str); 3] = [
        (
            SeqChunk {
                tokens: &toks,
                start: KV_BLOCK,
                blocks: &[0],
                want: Logits::Last,
            },
            "blocks",
        ),
        (
            SeqChunk {
                tokens: &toks,
                start: 0,
                blocks: &[7],
                want: Logits::Last,
            },
            "outside the cache",
        ),
        (
            SeqChunk {
                tokens: &[u32::MAX],
                start: 0,
                blocks: &[0],
                want: Logits::Last,
            },
            "vocabulary",
        ),
    ];
    for (chunk, what) in cases {
        match c.forward(&[chunk]) {
            Err(BackendError::Batch(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // The context still works after refusing them.
    let ok = SeqChunk {
        tokens: &toks,
        start: 0,
        blocks: &[1],
        want: Logits::All,
    };
    assert_eq!(c.forward(&[ok]).unwrap().len(), 3 * c.vocab_size());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let path = workspace_root().join("models/bitnet-b1.58-kjv-i2_s.gguf");
    let opts = EngineOptions {
        device: Device::Cuda(1),
        ..Default::default()
    };
    let Err(e) = Engine::load(&path, &opts) else {
        panic!("a CUDA engine without CUDA support");
    };
    assert!(
        matches!(e, EngineError::Backend(BackendError::Unavailable(_))),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("cuda:1") && msg.contains("without CUDA support (cargo feature `cuda`)"),
        "{msg}"
    );
    assert!(bitnet_inference::check_device(Device::Cuda(0)).is_err());
    assert!(bitnet_inference::check_device(Device::Cpu).is_ok());
}

/// With the feature, a GPU that is not there is `Unavailable` naming the device: ordinal 7 is
/// absent where no driver is installed (CI) and on a one-GPU machine alike.
#[cfg(feature = "cuda")]
#[test]
fn cuda_without_that_gpu_is_a_clear_error() {
    let path = workspace_root().join("models/bitnet-b1.58-kjv-i2_s.gguf");
    let opts = EngineOptions {
        device: Device::Cuda(7),
        ..Default::default()
    };
    let Err(e) = Engine::load(&path, &opts) else {
        panic!("an engine on a GPU that is not there");
    };
    assert!(
        matches!(e, EngineError::Backend(BackendError::Unavailable(_))),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("device cuda:7: "), "{e}");
    assert!(bitnet_inference::check_device(Device::Cuda(0)).is_ok());
}
