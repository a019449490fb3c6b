//! The engine API on the committed default model: streaming, stop strings, context limits,
//! seeded sampling and KV-cache reuse across turns. Expected texts come from the transformers
//! reference (shared/models/bitnet-b1.58-kjv/reference/reference.json).

mod common;

use bitnet_inference::{
    generate_stream, Engine, EngineError, EngineOptions, FinishReason, GenerateOptions, Logits,
    SamplingParams, StreamEvent,
};
use common::*;
use futures::StreamExt;

#[test]
fn async_stream_yields_the_reference_text() {
    let r = reference();
    let p = &r.prompts[0];
    let e = engine();
    let ids = e.tokenizer().encode(&p.text, true).unwrap();
    let stream = generate_stream(e.session(Some(64)).unwrap(), ids, greedy(32));
    let events: Vec<_> = futures::executor::block_on(stream.collect::<Vec<_>>());
    let mut text = String::new();
    let mut done = None;
    for ev in events {
        match ev.unwrap() {
            StreamEvent::Text(t) => text.push_str(&t),
            StreamEvent::Done(g) => done = Some(g),
        }
    }
    let g = done.expect("a Done event ends the stream");
    assert_eq!(text, p.greedy_text);
    assert_eq!(g.text, p.greedy_text);
    assert_eq!(g.tokens, p.greedy_new);
    assert_eq!(g.finish, FinishReason::Length);
}

#[test]
fn stop_strings_cut_the_output_before_the_match() {
    let r = reference();
    let p = &r.prompts[0];
    let e = engine();
    let ids = e.tokenizer().encode(&p.text, true).unwrap();
    let mut opts = greedy(32);
    opts.stop = vec!["LORD's".into()];
    let mut streamed = String::new();
    let g = e.session(Some(64)).unwrap().generate(&ids, &opts, |t| {
        streamed.push_str(t);
        true
    });
    let g = g.unwrap();
    let expected = &p.greedy_text[..p.greedy_text.find("LORD's").unwrap()];
    assert_eq!(g.text, expected);
    assert_eq!(streamed, expected);
    assert_eq!(g.finish, FinishReason::StopString);
}

#[test]
fn context_limits_are_clear_errors_or_finish_reasons() {
    let e = engine();
    let ids = e
        .tokenizer()
        .encode("In the beginning God created the heaven", true)
        .unwrap();
    let mut s = e.session(Some(4)).unwrap();
    match s.generate(&ids, &greedy(4), |_| true) {
        Err(EngineError::PromptTooLong { prompt, ctx }) => {
            assert_eq!((prompt, ctx), (ids.len(), 4))
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    let mut s = e.session(Some(ids.len() + 3)).unwrap();
    let g = s.generate(&ids, &greedy(100), |_| true).unwrap();
    assert_eq!(g.finish, FinishReason::ContextFull);
    assert_eq!(s.tokens().len(), ids.len() + 3);
    assert!(matches!(
        s.eval(&[5000], Logits::Last),
        Err(EngineError::BadToken { id: 5000, .. })
    ));
    assert!(matches!(
        s.generate(&[], &greedy(1), |_| true),
        Err(EngineError::EmptyPrompt)
    ));
    // A cache beyond any limit is refused before it is allocated, naming the size and the
    // model's trained context (the memory limits themselves: bitnet-cli's hostile_files.rs
    // under `ulimit -v`).
    let too_many = bitnet_inference::MAX_KV_POSITIONS + 1;
    for err in [
        e.session(Some(too_many)).err(),
        bitnet_inference::Scheduler::start(
            e.clone(),
            bitnet_inference::SchedulerOptions {
                ctx_size: Some(too_many),
                ..Default::default()
            },
        )
        .err(),
    ] {
        let msg = err.expect("refused").to_string();
        assert!(
            msg.contains(&format!("KV cache of {too_many} positions"))
                && msg.contains("trained on 1024"),
            "{msg}"
        );
    }
}

#[test]
fn perplexity_refuses_empty_text_and_chunks_beyond_the_context() {
    use bitnet_inference::perplexity::{divergence, line_packed, line_packed_with_progress};
    let e = engine();
    match line_packed(&e, "", 256) {
        Err(EngineError::BadInput(m)) => assert!(m.contains("nothing to score"), "{m}"),
        other => panic!("expected BadInput, got {other:?}"),
    }
    assert!(matches!(
        divergence(&e, &e, "", 256),
        Err(EngineError::BadInput(_))
    ));
    for chunk in [0, 1024, 5000] {
        let err = line_packed(&e, "In the beginning\n", chunk).unwrap_err();
        assert!(matches!(err, EngineError::Settings(_)), "{chunk}: {err}");
    }
    let long = "and the LORD said ".repeat(400);
    let err = line_packed(&e, &long, 256).unwrap_err();
    assert!(
        err.to_string().contains("line 1 has") && err.to_string().contains("trained context"),
        "{err}"
    );
    line_packed(&e, "In the beginning\n", 1023).unwrap();
    // A line longer than the chunk gets a chunk of its own, but never more than the caller's
    // context (`perplexity -c 64`).
    let mid = "and the LORD said ".repeat(20);
    let whole = line_packed_with_progress(&e, &mid, 16, None, &mut |_, _| {}).unwrap();
    assert_eq!(whole.chunks, 1);
    let err = line_packed_with_progress(&e, &mid, 16, Some(64), &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("--ctx-size"), "{err}");
    line_packed_with_progress(&e, &mid, 16, Some(whole.tokens + 1), &mut |_, _| {}).unwrap();
}

#[test]
fn seeded_sampling_is_reproducible() {
    let e = engine();
    let ids = e.tokenizer().encode("And God said", true).unwrap();
    let run = |seed| {
        let opts = GenerateOptions {
            max_tokens: 24,
            sampling: SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..Default::default()
            },
            ignore_eos: true,
            ..Default::default()
        };
        e.session(Some(64))
            .unwrap()
            .generate(&ids, &opts, |_| true)
            .unwrap()
            .tokens
    };
    assert_eq!(run(7), run(7));
    assert_ne!(
        run(7),
        run(8),
        "different seeds should give different samples"
    );
}

#[test]
fn cached_prefix_reuse_gives_the_same_logits_as_a_fresh_session() {
    let r = reference();
    let e = engine();
    let p = &r.prompts[1];
    let ids = e.tokenizer().encode(&p.text, true).unwrap();
    // First turn generates; the second prompt extends the first prompt plus its answer, as chat does.
    let mut s = e.session(Some(128)).unwrap();
    let first = s.generate(&ids, &greedy(8), |_| true).unwrap();
    let mut turn2 = ids.clone();
    turn2.extend(&first.tokens);
    turn2.extend(e.tokenizer().encode(" and he said", false).unwrap());
    let reused = s.generate(&turn2, &greedy(8), |_| true).unwrap();
    let fresh = e
        .session(Some(128))
        .unwrap()
        .generate(&turn2, &greedy(8), |_| true)
        .unwrap();
    assert_eq!(reused.tokens, fresh.tokens);
    assert!(
        reused.timings.prompt_tokens < turn2.len(),
        "the cached prefix was not reused"
    );
    // Batched prompt processing (batch 3) equals one big batch.
    let small = Engine::load(
        &workspace_root().join("models/bitnet-b1.58-kjv-i2_s.gguf"),
        &EngineOptions {
            threads: Some(1),
            batch_size: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let a = small
        .session(Some(64))
        .unwrap()
        .eval(&turn2, Logits::All)
        .unwrap();
    let b = e
        .session(Some(64))
        .unwrap()
        .eval(&turn2, Logits::All)
        .unwrap();
    assert!(
        max_abs_diff(&a, &b) < 1e-4,
        "batching changed logits by {}",
        max_abs_diff(&a, &b)
    );
}

/// The huge-page arena (default) and the file mapping (`mmap: true`) hold the same bytes, so the
/// logits must be bit-identical; the arena copy must also not be zero-copy any more.
#[test]
fn arena_and_mapped_weights_give_identical_logits() {
    let path = workspace_root().join("models/bitnet-b1.58-kjv-i2_s.gguf");
    let load = |mmap: bool| {
        Engine::load(
            &path,
            &EngineOptions {
                threads: Some(2),
                mmap,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let (arena, mapped) = (load(false), load(true));
    let w = &arena.model().weights;
    assert!(w.layers[0].wq.data().is_in_arena() && w.lm_head().data().is_in_arena());
    assert!(mapped.model().weights.layers[0].wq.data().is_mapped());
    let ids = arena
        .tokenizer()
        .encode("In the beginning God", true)
        .unwrap();
    let logits = |e: &Engine| {
        e.session(Some(32))
            .unwrap()
            .eval(&ids, Logits::All)
            .unwrap()
    };
    assert_eq!(logits(&arena), logits(&mapped));
}

/// A model loaded from bytes in memory (the C API's and the browser's way in) is the same model:
/// bit-identical logits to the file on disk, both with the mapped and the arena placement; and a
/// corrupt buffer is a model error, not a panic.
#[test]
fn model_from_bytes_gives_identical_logits() {
    let path = workspace_root().join("models/bitnet-b1.58-kjv-i2_s.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let from_file = engine();
    let ids = from_file
        .tokenizer()
        .encode("In the beginning God", true)
        .unwrap();
    let logits = |e: &Engine| {
        e.session(Some(32))
            .unwrap()
            .eval(&ids, Logits::All)
            .unwrap()
    };
    let want = logits(&from_file);
    for mmap in [false, true] {
        let opts = EngineOptions {
            threads: Some(2),
            mmap,
            ..Default::default()
        };
        let e = Engine::load_bytes(bytes.clone(), "kjv.gguf", &opts).unwrap();
        assert_eq!(logits(&e), want, "mmap={mmap}");
    }
    let cut = bytes[..bytes.len() / 2].to_vec();
    let Err(err) = Engine::load_bytes(cut, "half.gguf", &EngineOptions::default()) else {
        panic!("half a model file loaded");
    };
    assert!(
        matches!(err, bitnet_inference::EngineError::Model(_)),
        "{err}"
    );
}
