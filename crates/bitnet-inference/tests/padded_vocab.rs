//! A tokenizer smaller than the embedding (padded rows, issue 13 item 9): the engine never
//! samples nor reports an id past the tokenizer, and a tokenizer that does not belong to the
//! model is refused when the engine is built, naming both sizes.

use bitnet_inference::{
    Engine, EngineError, EngineOptions, Event, GenerateOptions, Request, SamplingParams, Scheduler,
    SchedulerOptions,
};
use bitnet_tokenizers::Tokenizer;
use std::path::Path;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/bitnet-b1.58-kjv-i2_s.gguf"
);

/// The KJV model (4096 rows) with its tokenizer cut to `n` tokens.
fn engine_with_tokens(n: usize) -> Result<Engine, EngineError> {
    let mut model = bitnet_models::load(Path::new(MODEL), None).expect("default model");
    let mut vocab = model.vocab.clone().expect("GGUF vocab");
    vocab.tokens.truncate(n);
    model.tokenizer = Tokenizer::from_gguf_vocab(&vocab).expect("cut tokenizer builds");
    let opts = EngineOptions {
        threads: Some(2),
        ..Default::default()
    };
    Engine::from_model(model, &opts)
}

/// Hot sampling from a prompt, so that the 96 rows past the tokenizer (2.3% of the
/// vocabulary, ordinary trained tokens of this model) would be drawn many times over.
fn hot() -> GenerateOptions {
    GenerateOptions {
        max_tokens: 300,
        sampling: SamplingParams {
            temperature: 3.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(11),
            ..SamplingParams::default()
        },
        ignore_eos: true,
        ..Default::default()
    }
}

#[test]
fn padded_rows_are_never_sampled_nor_reported() {
    let engine = engine_with_tokens(4000).expect("padding is allowed");
    assert_eq!(engine.sampled_vocab(), 4000);
    assert_eq!(engine.config().vocab_size, 4096);
    let prompt = engine
        .tokenizer()
        .encode("In the beginning", true)
        .expect("encode");

    // Session path.
    let mut session = engine.session(Some(512)).expect("session");
    let g = session
        .generate(&prompt, &hot(), |_| true)
        .expect("generates");
    assert_eq!(g.tokens.len(), 300);
    assert!(g.tokens.iter().all(|&id| id < 4000), "{:?}", g.tokens);

    // Scheduler path, with the alternatives it reports.
    let sched = Scheduler::start(
        engine.clone(),
        SchedulerOptions {
            max_sequences: 1,
            ..Default::default()
        },
    )
    .expect("scheduler");
    let mut req = Request::new(prompt, hot());
    req.logprobs = Some(20);
    let mut h = sched.submit(req).expect("submit");
    let mut n = 0;
    loop {
        match h.next_blocking() {
            Some(Event::Token { id, logprobs, .. }) => {
                n += 1;
                assert!(id < 4000, "sampled {id}");
                let lp = logprobs.expect("asked for logprobs");
                assert!(lp.top.iter().all(|&(t, _)| t < 4000), "{:?}", lp.top);
                // The distribution is over the tokenizer's ids: it still sums to 1.
                assert!(lp.logprob <= 0.0);
            }
            Some(Event::Done { .. }) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(n, 300);
}

#[test]
fn a_tokenizer_of_another_model_is_refused_with_both_sizes() {
    for n in [1000, 3583] {
        let err = engine_with_tokens(n).err().expect("refused");
        let msg = err.to_string();
        assert!(matches!(err, EngineError::Model(_)), "{msg}");
        assert!(
            msg.contains(&n.to_string()) && msg.contains("4096"),
            "{msg}"
        );
    }
}
