use crate::args::{resolve, ModelArgs, ModelSourceArgs, PlacementArgs};
use anyhow::Result;
use bitnet_inference::{
    Engine, EngineOptions, Event, GenerateOptions, Logits, Request, Rng, SamplingParams, Scheduler,
    SchedulerOptions,
};
use clap::Args;
use std::io::Write;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelSourceArgs,
    #[command(flatten)]
    placement: PlacementArgs,
    /// Thread counts to measure, comma-separated, as llama-bench's -t [env: BITNET_THREADS]
    /// [default: physical cores]
    #[arg(
        short = 't',
        long = "threads",
        alias = "threads-list",
        value_delimiter = ','
    )]
    threads_list: Vec<usize>,
    #[arg(short = 'b', long = "batch-size", help = crate::args::help::bench_batch_size())]
    batch_size: Option<usize>,
    #[arg(
        long = "kv-type",
        value_parser = crate::args::parse_kv_type,
        help = crate::args::help::kv_type()
    )]
    kv_type: Option<bitnet_inference::KvType>,
    /// Prompt lengths to measure (pp); comma-separated, 0 to skip
    #[arg(
        short = 'p',
        long = "n-prompt",
        default_value = "512",
        value_delimiter = ','
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths to measure (tg); comma-separated, 0 to skip
    #[arg(
        short = 'n',
        long = "n-gen",
        default_value = "128",
        value_delimiter = ','
    )]
    n_gen: Vec<usize>,
    /// Context depths (llama-bench's -d): each pp and tg test also runs after this many
    /// tokens are already in the cache (untimed), reported as `pp512 @ d4096`; 0 is the empty
    /// cache. Comma-separated. The --parallel tests start from empty caches
    #[arg(
        short = 'd',
        long = "n-depth",
        default_value = "0",
        value_delimiter = ','
    )]
    n_depth: Vec<usize>,
    /// Also measure aggregate generation with this many sequences decoding together through
    /// the continuous-batching scheduler (as `bitnet serve` runs them): test `tgN xK` is K
    /// requests of a one-token prompt and N tokens each, submitted at once; t/s counts every
    /// generated token of all K over the wall time. Comma-separated
    #[arg(long = "parallel", value_delimiter = ',')]
    parallel: Vec<usize>,
    /// Repetitions of each test
    #[arg(short, long, default_value_t = 3)]
    repetitions: usize,
    /// Print one JSON object per result instead of the table
    #[arg(long)]
    json: bool,
    /// Also measure the memory read bandwidth with each thread count and report the decode
    /// limit it implies (bandwidth / weight bytes read per token) and the share tg reaches
    #[arg(long)]
    membw: bool,
    /// Buffer the bandwidth probe streams, in MiB: several times the last-level cache
    #[arg(long, default_value_t = 2048, requires = "membw")]
    membw_mib: usize,
    /// Also print where each test's time goes, stage by stage of the forward pass (timing
    /// every stage adds a little overhead, so the t/s of a profiled run reads slightly low)
    #[arg(long)]
    profile: bool,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// Peak resident memory of this process, from /proc (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Like llama-bench: pp N evaluates N random tokens as one prompt (from an empty cache) in
/// batches of -b; tg N evaluates N random tokens one at a time from an empty cache, every step
/// timed (so tg1 times one decode step). Each test runs once unmeasured.
pub fn run(a: BenchArgs) -> Result<()> {
    let s = resolve(
        &ModelArgs {
            source: a.model.clone(),
            batch_size: a.batch_size,
            kv_type: a.kv_type,
            placement: a.placement.clone(),
            ..Default::default()
        },
        None,
    )?;
    crate::validate::positive("--repetitions (-r)", a.repetitions)?;
    for &t in &a.threads_list {
        crate::validate::threads("-t/--threads/--threads-list entry", t)?;
    }
    for &k in &a.parallel {
        crate::validate::positive("--parallel entry", k)?;
    }
    if a.membw {
        crate::validate::positive("--membw-mib", a.membw_mib)?;
        // The probe writes every page of its buffer: it must fit the memory now.
        let bytes = (a.membw_mib as u64).saturating_mul(1 << 20);
        if let Some(limit) = bitnet_inference::memory::MemoryRoom::current().exceeded_by(bytes) {
            return Err(crate::validate::usage(format!(
                "--membw-mib {} is more than {limit}",
                a.membw_mib
            )));
        }
    }
    let threads_list = if a.threads_list.is_empty() {
        vec![s
            .threads
            .unwrap_or_else(bitnet_inference::settings::physical_cores)]
    } else {
        a.threads_list.clone()
    };
    let opts = EngineOptions {
        device: s.device.unwrap_or_default(),
        threads: Some(threads_list[0]),
        tokenizer: s.tokenizer.clone(),
        batch_size: s.batch_size_or_default(),
        kv_type: s.kv_type.unwrap_or_default(),
        mmap: s.mmap.unwrap_or(false),
    };
    let model = crate::load_model(&s, opts.placement())?;
    let file_bytes = model.file_bytes;
    let bytes_per_token = model.weights.decode_bytes_per_token();
    let engine0 = Engine::from_model(model, &opts)?;
    let c = engine0.config().clone();
    let longest = a
        .n_prompt
        .iter()
        .chain(&a.n_gen)
        .copied()
        .max()
        .unwrap_or(1);
    let depth = a.n_depth.iter().copied().max().unwrap_or(0);
    // The session's context: sized by flags, so checked before anything is allocated by it.
    let max_len = longest
        .checked_add(depth)
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| anyhow::anyhow!("{longest} tokens at depth {depth} overflow a context"))?;
    let name = match &s.model {
        Some(path) => path
            .file_name()
            .map(|x| x.to_string_lossy().into_owned())
            .unwrap_or_default(),
        None => crate::builtin_model::NAME.to_owned(),
    };
    let out = &mut std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "model: {name} ({} arch, {} layers, hidden {}, ffn {}, vocab {}), file {:.1} MiB, kernels {:?}",
            c.arch.gguf_name(),
            c.num_layers,
            c.hidden_size,
            c.intermediate_size,
            c.vocab_size,
            file_bytes as f64 / (1 << 20) as f64,
            bitnet_kernels::detected_isa()
        )?;
        writeln!(out, "backend: {}", engine0.backend().describe())?;
        writeln!(out, "| {:>7} | {:>8} | {:>16} |", "threads", "test", "t/s")?;
        writeln!(
            out,
            "| {:>7} | {:>8} | {:>16} |",
            "------:", "-------:", "---------------:"
        )?;
    }
    let mut rng = Rng::new(1234);
    let mut tokens = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| (rng.next_u64() % c.vocab_size as u64) as u32)
            .collect()
    };
    let reps = a.repetitions.max(1);
    // The bandwidth probe allocates its own buffer: the engine's peak is taken before it.
    let mut engine_rss = None;
    bitnet_inference::profile::enable(a.profile);
    for &threads in &threads_list {
        let engine = if threads == engine0.threads() {
            engine0.clone()
        } else {
            // Same weights, new pool: the model stays mapped once.
            engine0.with_threads(threads)?
        };
        let mut session = engine.session(Some(max_len))?;
        let device = engine.device().to_string();
        let mut best_tg = None;
        // `stages` covers the timed repetitions, `evals` tokens in all.
        let mut report = |test: String,
                          depth: usize,
                          samples: Vec<f64>,
                          stages: Stages,
                          evals: usize|
         -> std::io::Result<()> {
            let (m, sd) = mean_std(&samples);
            // The bandwidth limit is for one sequence reading weights only.
            if test.starts_with("tg") && !test.contains(' ') {
                best_tg = Some((test.clone(), m));
            }
            if a.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"model": name, "device": device, "threads": threads, "test": test, "n_depth": depth, "tps_mean": m, "tps_std": sd, "samples": samples, "bytes_per_token": bytes_per_token})
                )?;
            } else {
                writeln!(
                    out,
                    "| {threads:>7} | {test:>8} | {:>16} |",
                    format!("{m:.2} ± {sd:.2}")
                )?;
            }
            if a.profile {
                print_profile(out, &test, &stages.0, evals, a.json)?;
            }
            Ok(())
        };
        for &d in &a.n_depth {
            let at = if d > 0 {
                format!(" @ d{d}")
            } else {
                String::new()
            };
            // The depth's tokens go in untimed, as one prompt (the session splits it into
            // batches).
            let fill = |session: &mut bitnet_inference::Session, toks: Vec<u32>| {
                session.reset();
                if d > 0 {
                    session.eval(&toks, Logits::None)?;
                }
                anyhow::Ok(())
            };
            for &p in a.n_prompt.iter().filter(|&&p| p > 0) {
                let (samples, stages) = repeat(reps, || {
                    fill(&mut session, tokens(d))?;
                    let toks = tokens(p);
                    bitnet_inference::profile::take();
                    let t = Instant::now();
                    session.eval(&toks, Logits::Last)?;
                    Ok(p as f64 / t.elapsed().as_secs_f64())
                })?;
                report(format!("pp{p}{at}"), d, samples, stages, reps * p)?;
            }
            for &n in a.n_gen.iter().filter(|&&n| n > 0) {
                let (samples, stages) = repeat(reps, || {
                    fill(&mut session, tokens(d))?;
                    let toks = tokens(n);
                    bitnet_inference::profile::take();
                    let t = Instant::now();
                    for &tok in &toks {
                        session.eval(&[tok], Logits::Last)?;
                    }
                    Ok(n as f64 / t.elapsed().as_secs_f64())
                })?;
                report(format!("tg{n}{at}"), d, samples, stages, reps * n)?;
            }
        }
        drop(session);
        for &k in a.parallel.iter().filter(|&&k| k > 0) {
            for &n in a.n_gen.iter().filter(|&&n| n > 0) {
                let (samples, stages) =
                    repeat(reps, || parallel_generation(&engine, k, || tokens(1), n))?;
                report(format!("tg{n} x{k}"), 0, samples, stages, reps * n * k)?;
            }
        }
        if a.membw {
            engine_rss = engine_rss.or_else(peak_rss_bytes);
            let bytes = a
                .membw_mib
                .checked_mul(1 << 20)
                .ok_or_else(|| anyhow::anyhow!("--membw-mib {} is too large", a.membw_mib))?;
            let bw = crate::membw::read_bandwidth(bytes, threads, 5).map_err(|e| {
                anyhow::anyhow!("bandwidth probe buffer of {} MiB: {e}", a.membw_mib)
            })?;
            let limit = bw / bytes_per_token.max(1) as f64;
            if a.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"model": name, "threads": threads, "test": "membw", "bytes_per_s": bw, "bytes_per_token": bytes_per_token, "limit_tps": limit})
                )?;
            } else {
                let reached = best_tg
                    .map(|(t, m)| format!("; {t} reaches {:.0}% of it", 100.0 * m / limit))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "memory read bandwidth {:.1} GB/s ({threads} threads); decode reads {:.0} MB/token -> limit {limit:.1} t/s{reached}",
                    bw / 1e9,
                    bytes_per_token as f64 / 1e6
                )?;
            }
        }
    }
    if !a.json {
        if let Some(rss) = engine_rss.or_else(peak_rss_bytes) {
            writeln!(
                out,
                "peak resident memory {:.1} MiB (model file {:.1} MiB)",
                rss as f64 / (1 << 20) as f64,
                file_bytes as f64 / (1 << 20) as f64
            )?;
        }
    }
    Ok(())
}

/// Runs `k` one-token requests (`prompt()` each) at once through a scheduler sized for them,
/// each generating `n` tokens (greedy, past any end-of-sequence token); returns generated
/// tokens per second over all of them. `k` comes from the command line: the scheduler checks
/// the KV cache it implies before any prompt is made.
fn parallel_generation(
    engine: &Engine,
    k: usize,
    mut prompt: impl FnMut() -> Vec<u32>,
    n: usize,
) -> Result<f64> {
    let ctx = n
        .checked_add(1)
        .ok_or_else(|| anyhow::anyhow!("tg{n} overflows a context"))?;
    // All K must decode together: with K x ctx positions only about half of them ran at a time
    // (tg32 x16: steps of 9, then of 7 tokens).
    let kv_tokens = SchedulerOptions::kv_tokens_for(k, ctx)
        .ok_or_else(|| anyhow::anyhow!("--parallel {k} x {ctx} positions overflow a KV cache"))?;
    let sched = Scheduler::start(
        engine.clone(),
        SchedulerOptions {
            max_sequences: k,
            ctx_size: Some(ctx),
            kv_tokens: Some(kv_tokens),
            max_queue: k,
            ..Default::default()
        },
    )?;
    let opts = GenerateOptions {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = (0..k).map(|_| prompt()).collect();
    bitnet_inference::profile::take();
    let t = Instant::now();
    let mut handles = Vec::with_capacity(k);
    for p in prompts {
        handles.push(sched.submit(Request::new(p, opts.clone()))?);
    }
    let mut generated = 0;
    for mut h in handles {
        loop {
            match h.next_blocking() {
                Some(Event::Token { .. }) => generated += 1,
                Some(Event::Done { .. }) | None => break,
                Some(Event::Error(e)) => anyhow::bail!("parallel generation: {e}"),
            }
        }
    }
    Ok(generated as f64 / t.elapsed().as_secs_f64())
}

/// Runs `one` (which clears the stage counters right before its timed part and returns its
/// t/s) once to warm up and `reps` times measured: the samples, and the stages of the measured
/// runs.
fn repeat(reps: usize, mut one: impl FnMut() -> Result<f64>) -> Result<(Vec<f64>, Stages)> {
    let (mut samples, mut stages) = (Vec::new(), Stages::default());
    for rep in 0..=reps {
        let tps = one()?;
        let taken = bitnet_inference::profile::take();
        if rep > 0 {
            samples.push(tps);
            stages.add(taken);
        }
    }
    Ok((samples, stages))
}

/// Stage times summed over a test's timed repetitions (not the warm-up, not the untimed
/// filling of a depth).
#[derive(Default)]
struct Stages(Vec<(bitnet_inference::profile::Stage, std::time::Duration)>);

impl Stages {
    fn add(&mut self, more: Vec<(bitnet_inference::profile::Stage, std::time::Duration)>) {
        if self.0.is_empty() {
            self.0 = more;
        } else {
            for ((_, sum), (_, d)) in self.0.iter_mut().zip(more) {
                *sum += d;
            }
        }
    }
}

/// The stage breakdown of one test: time per token over its timed repetitions, and share.
fn print_profile(
    out: &mut impl Write,
    test: &str,
    stages: &[(bitnet_inference::profile::Stage, std::time::Duration)],
    tokens: usize,
    json: bool,
) -> std::io::Result<()> {
    let total: f64 = stages.iter().map(|(_, d)| d.as_secs_f64()).sum();
    let per_tok = |d: f64| 1e6 * d / tokens.max(1) as f64;
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = stages
            .iter()
            .map(|(s, d)| (s.name().to_string(), per_tok(d.as_secs_f64()).into()))
            .collect();
        return writeln!(
            out,
            "{}",
            serde_json::json!({"test": test, "profile_us_per_token": obj})
        );
    }
    writeln!(
        out,
        "{test} profile ({:.1} us/token in the forward pass):",
        per_tok(total)
    )?;
    for (s, d) in stages {
        let d = d.as_secs_f64();
        writeln!(
            out,
            "  {:<20} {:>9.1} us/token {:>5.1}%",
            s.name(),
            per_tok(d),
            100.0 * d / total.max(f64::MIN_POSITIVE)
        )?;
    }
    Ok(())
}
