//! The continuous-batching scheduler on the committed default model: concurrent requests get
//! exactly what each gets alone (and what `Session::generate` and the transformers reference
//! give), through chunked prompts, preemption, the prefix cache, cancellation and a full queue.

mod common;

use bitnet_inference::{
    Event, FinishReason, GenerateOptions, Request, RequestHandle, SamplingParams, Scheduler,
    SchedulerOptions, SubmitError, Usage,
};
use common::*;
use std::time::{Duration, Instant};

struct Outcome {
    ids: Vec<u32>,
    text: String,
    finish: FinishReason,
    usage: Usage,
}

fn collect(mut h: RequestHandle) -> Outcome {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match h.next_blocking().expect("a Done event ends every request") {
            Event::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            Event::Done {
                text: t,
                finish,
                usage,
            } => {
                text.push_str(&t);
                return Outcome {
                    ids,
                    text,
                    finish,
                    usage,
                };
            }
            Event::Error(e) => panic!("request failed: {e}"),
        }
    }
}

/// Polls until `f` holds (bounded: 20 s).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_greedy_requests_equal_the_reference_and_running_alone() {
    let r = reference();
    let e = engine();
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    // Every reference prompt twice over, plus variants, all at once: 16 requests.
    let mut prompts: Vec<(Vec<u32>, usize)> = Vec::new();
    for p in r.prompts.iter().cycle().take(16) {
        let n = 8 + prompts.len() % 5 * 6;
        prompts.push((p.token_ids.clone(), n.min(p.greedy_new.len())));
    }
    let handles: Vec<_> = prompts
        .iter()
        .map(|(ids, n)| sched.submit(Request::new(ids.clone(), greedy(*n))).unwrap())
        .collect();
    let outs: Vec<Outcome> = handles.into_iter().map(collect).collect();
    for ((ids, n), out) in prompts.iter().zip(&outs) {
        let p = r.prompts.iter().find(|p| &p.token_ids == ids).unwrap();
        assert_eq!(out.ids, p.greedy_new[..*n], "prompt {}", p.name);
        assert_eq!(out.finish, FinishReason::Length);
        assert_eq!(out.usage.completion_tokens, *n);
        assert_eq!(out.usage.prompt_tokens, ids.len());
        // Alone through the scheduler and through a Session: the same text.
        let alone = collect(sched.submit(Request::new(ids.clone(), greedy(*n))).unwrap());
        assert_eq!(alone.text, out.text);
        let g = e
            .session(None)
            .unwrap()
            .generate(ids, &greedy(*n), |_| true)
            .unwrap();
        assert_eq!(g.text, out.text);
        assert_eq!(g.tokens, out.ids);
    }
    eventually("all retired", || {
        let s = sched.stats();
        s.running == 0 && s.kv_blocks_used == 0 && s.requests_finished == 32
    });
}

/// Tiny token budgets and a KV cache that holds only a few sequences force chunked prompts,
/// waiting for blocks and preemption with recomputation; seeded sampling must still give the
/// same tokens as a request running alone.
#[test]
fn a_cache_sized_by_kv_tokens_for_runs_every_sequence_together() {
    // `bitnet bench --parallel K` sizes its cache so: K one-token prompts submitted at once then
    // decode in the same steps, about N steps for N tokens each (with K x (N + 1) positions the
    // scheduler ran about half of them at a time: ~2N steps).
    let (k, n) = (16, 40);
    let ctx = n + 1;
    let sched = Scheduler::start(
        engine(),
        SchedulerOptions {
            max_sequences: k,
            ctx_size: Some(ctx),
            kv_tokens: SchedulerOptions::kv_tokens_for(k, ctx),
            max_queue: k,
            ..SchedulerOptions::default()
        },
    )
    .unwrap();
    let handles: Vec<_> = (0..k)
        .map(|_| sched.submit(Request::new(vec![1], greedy(n))).unwrap())
        .collect();
    for h in handles {
        assert_eq!(collect(h).ids.len(), n);
    }
    let steps = sched.stats().steps;
    // Requests that arrive after the first step join one step late; none waits for another.
    assert!(
        steps < (n + k / 2) as u64,
        "{k} x {n} tokens took {steps} steps"
    );
    assert_eq!(SchedulerOptions::kv_tokens_for(usize::MAX, 2), None);
}

#[test]
fn chunked_prompts_and_preemption_do_not_change_outputs() {
    let e = engine();
    let tok = e.tokenizer();
    let text = "And God said, Let there be light: and there was light. And God saw the light, \
                that it was good: and God divided the light from the darkness.";
    let ids = tok.encode(text, true).unwrap();
    let sampled = |seed| GenerateOptions {
        max_tokens: 40,
        sampling: SamplingParams {
            temperature: 0.9,
            seed: Some(seed),
            ..Default::default()
        },
        ignore_eos: true,
        ..Default::default()
    };
    let alone: Vec<Outcome> = {
        let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
        (0..6)
            .map(|i| collect(sched.submit(Request::new(ids.clone(), sampled(i))).unwrap()))
            .collect()
    };
    let tight = SchedulerOptions {
        max_sequences: 6,
        ctx_size: Some(128),
        // Four sequences' worth of prompt + generation: growth forces preemption.
        kv_tokens: Some(256),
        max_batch_tokens: 7,
        prefix_cache: false,
        ..Default::default()
    };
    let sched = Scheduler::start(e.clone(), tight).unwrap();
    let handles: Vec<_> = (0..6)
        .map(|i| sched.submit(Request::new(ids.clone(), sampled(i))).unwrap())
        .collect();
    for (h, a) in handles.into_iter().zip(&alone) {
        let out = collect(h);
        assert_eq!(out.ids, a.ids);
        assert_eq!(out.text, a.text);
    }
    eventually("blocks freed", || sched.stats().kv_blocks_used == 0);
    let s = sched.stats();
    assert!(
        s.preemptions > 0,
        "the test must exercise preemption: {s:?}"
    );
    assert!(s.steps > 100, "prompts went in chunks of 7: {s:?}");
}

/// With top-k off (the OpenAI API's sampling) every sampling sequence gets its whole row of
/// logits, and the rows of one step are sampled in parallel on the backend's threads: each
/// sequence must still draw exactly the tokens it draws alone.
#[test]
fn whole_row_sampling_in_a_batch_equals_running_alone() {
    let e = engine();
    let ids = e.tokenizer().encode("In the beginning", true).unwrap();
    let opts = |seed| GenerateOptions {
        max_tokens: 24,
        sampling: SamplingParams {
            temperature: 0.9,
            top_k: 0,
            top_p: 0.95,
            seed: Some(seed),
            ..Default::default()
        },
        ignore_eos: true,
        ..Default::default()
    };
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    let alone: Vec<Outcome> = (0..6)
        .map(|i| collect(sched.submit(Request::new(ids.clone(), opts(i))).unwrap()))
        .collect();
    let before = sched.stats().steps;
    let handles: Vec<_> = (0..6)
        .map(|i| sched.submit(Request::new(ids.clone(), opts(i))).unwrap())
        .collect();
    for (h, a) in handles.into_iter().zip(&alone) {
        let out = collect(h);
        assert_eq!(out.ids, a.ids);
        assert_eq!(out.text, a.text);
    }
    // Alone they took 6 x 24 steps; together most steps sampled several rows.
    let together = sched.stats().steps - before;
    assert!(
        together < 3 * 24,
        "the requests did not run together: {together} steps"
    );
    // Different seeds draw different texts (the test would be blind to a shared sampler).
    assert!(alone.iter().any(|a| a.ids != alone[0].ids));
}

#[test]
fn a_shared_prefix_is_computed_once() {
    let e = engine();
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    let tok = e.tokenizer();
    let system = "The book of the generation of Jesus Christ, the son of David, the son of \
                  Abraham. Abraham begat Isaac; and Isaac begat Jacob; and Jacob begat Judas \
                  and his brethren; And Judas begat Phares and Zara of Thamar; and Phares begat \
                  Esrom; and Esrom begat Aram; And Aram begat Aminadab; and Aminadab begat \
                  Naasson; and Naasson begat Salmon;";
    let base = tok.encode(system, true).unwrap();
    assert!(base.len() >= 64, "prompt spans two KV blocks");
    let mut a = base.clone();
    a.extend(tok.encode(" And Judas begat", false).unwrap());
    let mut b = base.clone();
    b.extend(tok.encode(" And Salmon begat", false).unwrap());
    let first = collect(sched.submit(Request::new(a.clone(), greedy(12))).unwrap());
    assert_eq!(first.usage.cached_tokens, 0);
    let second = collect(sched.submit(Request::new(b.clone(), greedy(12))).unwrap());
    let full_blocks = base.len() / 32 * 32;
    assert_eq!(second.usage.cached_tokens, full_blocks);
    assert!(sched.stats().prefix_cache_hit_tokens >= full_blocks as u64);
    // Same outputs as without any cache.
    let plain = Scheduler::start(
        e.clone(),
        SchedulerOptions {
            prefix_cache: false,
            ..Default::default()
        },
    )
    .unwrap();
    let again = collect(plain.submit(Request::new(b, greedy(12))).unwrap());
    assert_eq!(again.usage.cached_tokens, 0);
    assert_eq!(again.ids, second.ids);
    // The same prompt again hits everything but its last token's block.
    let repeat = collect(sched.submit(Request::new(a.clone(), greedy(12))).unwrap());
    assert_eq!(repeat.usage.cached_tokens, (a.len() - 1) / 32 * 32);
    assert_eq!(repeat.ids, first.ids);
}

#[test]
fn a_dropped_handle_cancels_and_frees_its_blocks() {
    let e = engine();
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    let ids = e.tokenizer().encode("In the beginning", true).unwrap();
    let mut h = sched
        .submit(Request::new(ids.clone(), greedy(100_000)))
        .unwrap();
    assert!(matches!(h.next_blocking(), Some(Event::Token { .. })));
    eventually("the sequence runs", || sched.stats().running == 1);
    assert!(sched.stats().kv_blocks_used > 0);
    drop(h);
    eventually("the blocks are freed", || {
        let s = sched.stats();
        s.running == 0 && s.kv_blocks_used == 0
    });
    // And it keeps serving.
    let out = collect(sched.submit(Request::new(ids, greedy(4))).unwrap());
    assert_eq!(out.ids.len(), 4);
}

#[test]
fn bad_requests_are_refused_at_submission() {
    let e = engine();
    let opts = SchedulerOptions {
        max_sequences: 1,
        ctx_size: Some(64),
        max_queue: 2,
        ..Default::default()
    };
    let sched = Scheduler::start(e.clone(), opts).unwrap();
    let ok = || Request::new(vec![1, 2, 3], greedy(4));
    assert_eq!(
        sched.submit(Request::new(vec![], greedy(4))).err(),
        Some(SubmitError::EmptyPrompt)
    );
    assert_eq!(
        sched.submit(Request::new(vec![1; 65], greedy(4))).err(),
        Some(SubmitError::PromptTooLong {
            prompt: 65,
            ctx: 64
        })
    );
    let vocab = e.config().vocab_size;
    assert!(matches!(
        sched.submit(Request::new(vec![vocab as u32], greedy(4))),
        Err(SubmitError::BadToken { .. })
    ));
    let mut bad = ok();
    bad.options.sampling.temperature = -1.0;
    assert!(matches!(sched.submit(bad), Err(SubmitError::Invalid(_))));
    let mut bad = ok();
    bad.logprobs = Some(21);
    assert!(matches!(sched.submit(bad), Err(SubmitError::Invalid(_))));

    // One running (endless), two queued, the next one refused.
    let mut endless = Request::new(vec![1, 2, 3], greedy(100_000));
    endless.options.ignore_eos = true;
    let mut running = sched.submit(endless).unwrap();
    assert!(running.next_blocking().is_some());
    let queued: Vec<_> = (0..2).map(|_| sched.submit(ok()).unwrap()).collect();
    assert_eq!(sched.stats().waiting, 2);
    assert_eq!(sched.submit(ok()).err(), Some(SubmitError::QueueFull(2)));
    drop(running);
    for h in queued {
        assert_eq!(collect(h).ids.len(), 4);
    }
    // A sequence at the context limit ends with ContextFull.
    let full = collect(
        sched
            .submit(Request::new(vec![1; 60], greedy(100)))
            .unwrap(),
    );
    assert_eq!(full.finish, FinishReason::ContextFull);
    assert_eq!(full.ids.len(), 5);
    // Shutting down ends waiting and running requests with an error, then refuses new ones.
    let h = sched
        .submit(Request::new(vec![1, 2], greedy(100_000)))
        .unwrap();
    sched.shutdown();
    let events: Vec<Event> = futures::executor::block_on_stream(h).collect();
    assert!(matches!(events.last(), Some(Event::Error(_))));
    assert_eq!(sched.submit(ok()).err(), Some(SubmitError::ShuttingDown));
}

#[test]
fn logprobs_are_the_raw_distribution() {
    let e = engine();
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    let ids = e.tokenizer().encode("In the beginning", true).unwrap();
    let mut req = Request::new(ids.clone(), greedy(3));
    req.logprobs = Some(5);
    let mut h = sched.submit(req).unwrap();
    let mut s = e.session(None).unwrap();
    let mut logits = s.eval(&ids, bitnet_inference::Logits::Last).unwrap();
    for _ in 0..3 {
        let Some(Event::Token { id, logprobs, .. }) = h.next_blocking() else {
            panic!("expected a token");
        };
        let lp = logprobs.expect("asked for logprobs");
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
        assert!((lp.logprob - (logits[id as usize] - lse)).abs() < 1e-3);
        assert_eq!(lp.top.len(), 5);
        assert_eq!(lp.top[0].0, id, "greedy picks the most likely token");
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let total: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
        assert!(total <= 1.0 + 1e-4);
        logits = s.eval(&[id], bitnet_inference::Logits::Last).unwrap();
    }
}

/// A step budget below the number of sequences is raised to it: short requests submitted after
/// long ones still get their prompts in and finish long before them.
#[test]
fn decoding_sequences_take_turns_when_the_step_budget_is_small() {
    let e = engine();
    let opts = SchedulerOptions {
        max_sequences: 4,
        max_batch_tokens: 2,
        ..Default::default()
    };
    let sched = Scheduler::start(e.clone(), opts).unwrap();
    let ids = e.tokenizer().encode("In the beginning", true).unwrap();
    let long: Vec<_> = (0..2)
        .map(|_| {
            sched
                .submit(Request::new(ids.clone(), greedy(400)))
                .unwrap()
        })
        .collect();
    let short: Vec<_> = (0..2)
        .map(|_| sched.submit(Request::new(ids.clone(), greedy(5))).unwrap())
        .collect();
    for h in short {
        assert_eq!(collect(h).ids.len(), 5);
    }
    eventually("the short ones are retired", || {
        sched.stats().requests_finished >= 2
    });
    let s = sched.stats();
    assert_eq!(
        (s.requests_finished, s.running),
        (2, 2),
        "the long requests are still running"
    );
    for h in long {
        assert_eq!(collect(h).ids.len(), 400);
    }
}
