//! Flags llama.cpp users already type (`-ngl`, `-sys`, `-cnv`, `-i`, `-r`, `-s`, `--no-mmap`),
//! flags that used to be accepted and then ignored, and help texts whose defaults come from
//! `bitnet_inference::settings`. Every child runs under a kill timer.

use bitnet_inference::settings::{DEFAULT_BATCH_SIZE, DEFAULT_CHAT_MAX_TOKENS, DEFAULT_MAX_TOKENS};
#[path = "support/run.rs"]
mod run;

use run::{workspace_root, Out};
use std::time::Duration;

const HF_DIR: &str = "../shared/models/bitnet-b1.58-kjv";
const HANG_GUARD: Duration = Duration::from_secs(300);

/// `bitnet ARGS` in the workspace root with `stdin` piped in and no BITNET_* variable from
/// outside, killed (and the test failed) if it outlives [`HANG_GUARD`].
fn bitnet_with(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Out {
    let mut c = run::command(args, None);
    for (k, v) in env {
        c.env(k, v);
    }
    run::finish(c, Some(stdin), HANG_GUARD)
}

fn bitnet(args: &[&str]) -> Out {
    bitnet_with(args, b"", &[])
}

#[track_caller]
fn expect(o: &Out, code: i32, stderr_parts: &[&str]) {
    assert_eq!(o.code, Some(code), "{o:?}");
    for p in stderr_parts {
        assert!(o.stderr.contains(p), "stderr should mention {p:?}: {o:?}");
    }
    assert!(!o.stderr.contains("panicked"), "{o:?}");
}

#[track_caller]
fn ok(o: Out) -> Out {
    expect(&o, 0, &[]);
    o
}

/// A usage error found before the model loads: exit 2, nothing on stdout.
#[track_caller]
fn usage_error(args: &[&str], stderr_parts: &[&str]) {
    let o = bitnet(args);
    expect(&o, 2, stderr_parts);
    assert!(o.stdout.is_empty(), "{args:?}: {o:?}");
    assert!(!o.stderr.contains("loaded "), "{args:?}: {o:?}");
}

const GREEDY: &[&str] = &["--greedy", "-q", "--no-echo"];

fn run_greedy(extra: &[&str]) -> String {
    let mut args = vec!["run"];
    args.extend_from_slice(GREEDY);
    args.extend_from_slice(extra);
    ok(bitnet(&args)).stdout
}

// ---- -ngl, --device ----

/// Every command that runs the model, with what it needs besides the device flags.
const MODEL_COMMANDS: [&[&str]; 5] = [
    &["run", "-n", "1"],
    &["chat"],
    &["bench", "-r", "1", "-p", "0", "-n", "1"],
    &["perplexity", "-f", "x.txt"],
    &["serve"],
];

fn with<'a>(cmd: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    cmd.iter().chain(extra).copied().collect()
}

/// A device this build cannot drive: exit 1 with the reason, before the model loads, nothing on
/// stdout.
#[cfg(not(feature = "cuda"))]
#[track_caller]
fn no_cuda(o: &Out) {
    expect(
        o,
        1,
        &["cuda:0", "built without CUDA support", "feature `cuda`"],
    );
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(!o.stderr.contains("loaded "), "{o:?}");
}

#[test]
fn ngl_zero_runs_on_the_cpu_and_more_asks_for_the_gpu() {
    let base = run_greedy(&["-n", "4"]);
    assert_eq!(run_greedy(&["-n", "4", "-ngl", "0"]), base);
    assert_eq!(run_greedy(&["-n", "4", "--n-gpu-layers", "0"]), base);
    // --device wins over -ngl.
    assert_eq!(
        run_greedy(&["-n", "4", "-ngl", "99", "--device", "cpu"]),
        base
    );
    #[cfg(not(feature = "cuda"))]
    for args in [
        &["run", "-ngl", "99"][..],
        &["run", "-ngl=1"],
        &["run", "--n-gpu-layers", "1"],
        &["chat", "-ngl", "33"],
        &["bench", "-ngl", "99"],
        &["perplexity", "-f", "x.txt", "-ngl", "1"],
        &["serve", "-ngl", "1"],
    ] {
        no_cuda(&bitnet(args));
    }
}

#[test]
fn device_flag_and_variable_pick_the_backend() {
    let base = run_greedy(&["-n", "4"]);
    assert_eq!(run_greedy(&["-n", "4", "--device", "cpu"]), base);
    let mut args = vec!["run"];
    args.extend_from_slice(GREEDY);
    args.extend_from_slice(&["-n", "4"]);
    let o = ok(bitnet_with(&args, b"", &[("BITNET_DEVICE", "cpu")]));
    assert_eq!(o.stdout, base);
    // The flag beats the variable; a bad variable is a settings error like any BITNET_* one.
    args.extend_from_slice(&["--device", "cpu"]);
    assert_eq!(
        ok(bitnet_with(&args, b"", &[("BITNET_DEVICE", "cuda")])).stdout,
        base
    );
    let o = bitnet_with(&["run", "-n", "1"], b"", &[("BITNET_DEVICE", "tpu")]);
    expect(
        &o,
        1,
        &["BITNET_DEVICE=tpu", "expected cpu, cuda or cuda:N"],
    );
    for cmd in MODEL_COMMANDS {
        usage_error(
            &with(cmd, &["--device", "bogus"]),
            &["--device", "expected cpu, cuda or cuda:N"],
        );
        usage_error(&with(cmd, &["--device", "cuda:x"]), &["ordinal"]);
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_in_a_build_without_it_is_refused_not_run_on_the_cpu() {
    for cmd in MODEL_COMMANDS {
        no_cuda(&bitnet(&with(cmd, &["--device", "cuda"])));
    }
    let o = bitnet(&["run", "--device", "cuda:3", "-n", "1"]);
    expect(&o, 1, &["cuda:3", "built without CUDA support"]);
    no_cuda(&bitnet_with(
        &["run", "-n", "1"],
        b"",
        &[("BITNET_DEVICE", "cuda")],
    ));
}

/// With the CUDA backend built in (the default), a GPU that is not there is an error naming
/// the device and the reason, exit 1, nothing generated: never a silent run on the CPU. Ordinal
/// 7 is absent both where no driver is installed (CI: "no NVIDIA driver library") and on a
/// one-GPU machine ("GPU 7 requested, 1 present").
#[cfg(feature = "cuda")]
#[test]
fn cuda_without_that_gpu_is_refused_not_run_on_the_cpu() {
    for cmd in [
        &["run", "-n", "1"][..],
        &["chat"],
        &["bench", "-r", "1", "-p", "0", "-n", "1"],
        &["serve"],
    ] {
        let o = bitnet(&with(cmd, &["--device", "cuda:7"]));
        expect(&o, 1, &["device cuda:7"]);
        assert!(o.stdout.is_empty(), "{o:?}");
    }
    let o = bitnet_with(&["run", "-n", "1"], b"", &[("BITNET_DEVICE", "cuda:7")]);
    expect(&o, 1, &["device cuda:7"]);
    assert!(o.stdout.is_empty(), "{o:?}");
}

#[test]
fn rewriting_stops_at_the_end_of_flags() {
    // After `--`, `-sys` is a value (here a positional text), not the system-prompt flag.
    let o = ok(bitnet(&["tokenize", "--ids", "--no-bos", "--", "-sys"]));
    let direct = ok(bitnet(&["tokenize", "--ids", "--no-bos", "--prompt=-sys"]));
    assert_eq!(o.stdout, direct.stdout);
}

// ---- -sys, -cnv, -i, -r ----

fn chat_answer(stdout: &str) -> String {
    // "> " answer "\n> " for one turn and /exit.
    stdout
        .strip_prefix("> ")
        .and_then(|s| s.strip_suffix("> "))
        .unwrap_or_else(|| panic!("one answered turn: {stdout:?}"))
        .trim_end_matches('\n')
        .to_string()
}

#[test]
fn system_prompt_in_run_and_chat() {
    let with = |flag: &str| {
        run_greedy(&[
            "--chat-template",
            flag,
            "You speak as the King James Bible.",
            "-p",
            "Who is the Lord?",
            "-n",
            "12",
        ])
    };
    let sys = with("-sys");
    assert_eq!(with("--system-prompt"), sys);
    let plain = run_greedy(&["--chat-template", "-p", "Who is the Lord?", "-n", "12"]);
    // The system message is rendered into the prompt: the continuation sees it.
    let echoed = ok(bitnet(&[
        "run",
        "--greedy",
        "-q",
        "--chat-template",
        "-sys",
        "You speak as the King James Bible.",
        "-p",
        "Who is the Lord?",
        "-n",
        "1",
    ]))
    .stdout;
    assert!(
        echoed.contains("You speak as the King James Bible."),
        "{echoed:?}"
    );
    // chat -sys answers the first turn exactly as run renders the same two messages.
    for flag in ["-sys", "--system-prompt", "--system"] {
        let o = ok(bitnet_with(
            &[
                "chat",
                "-q",
                "--temp",
                "0",
                "-n",
                "12",
                flag,
                "You speak as the King James Bible.",
            ],
            b"Who is the Lord?\n/exit\n",
            &[],
        ));
        assert_eq!(chat_answer(&o.stdout), sys.trim_end_matches('\n'), "{flag}");
    }
    let o = ok(bitnet_with(
        &["chat", "-q", "--temp", "0", "-n", "12"],
        b"Who is the Lord?\n/exit\n",
        &[],
    ));
    assert_eq!(chat_answer(&o.stdout), plain.trim_end_matches('\n'));
    // Without a chat template there is nowhere to put a system message.
    usage_error(&["run", "-sys", "x"], &["--chat-template"]);
}

#[test]
fn cnv_and_i_make_run_a_chat() {
    let input = b"Who is the Lord?\n/exit\n";
    let chat = ok(bitnet_with(
        &["chat", "-q", "--temp", "0", "-n", "6"],
        input,
        &[],
    ));
    for flag in ["-cnv", "-i", "--conversation", "--interactive"] {
        let o = ok(bitnet_with(
            &["run", flag, "-q", "--temp", "0", "-n", "6"],
            input,
            &[],
        ));
        assert_eq!(o.stdout, chat.stdout, "{flag}");
        // ... and `chat` itself takes them too (as a no-op), as llama-cli users type them.
        let o = ok(bitnet_with(
            &["chat", flag, "-q", "--temp", "0", "-n", "6"],
            input,
            &[],
        ));
        assert_eq!(o.stdout, chat.stdout, "chat {flag}");
    }
    // A prompt given up front would be dropped by the chat: refused.
    usage_error(&["run", "-cnv", "-p", "hi"], &["-cnv", "-p"]);
    // run-only flags are checked by chat's parser, not ignored.
    let o = bitnet(&["run", "-i", "--no-echo"]);
    expect(&o, 2, &["bitnet chat", "--no-echo"]);
}

#[test]
fn reverse_prompt_stops_run_and_returns_the_turn_in_chat() {
    let full = run_greedy(&["-n", "24"]);
    // A word well inside the continuation; everything before its first occurrence is kept.
    let word = full
        .split_whitespace()
        .nth(4)
        .expect("a few words")
        .to_string();
    let cut = &full[..full.find(&word).unwrap()];
    for flag in ["-r", "--reverse-prompt", "--stop"] {
        let o = run_greedy(&["-n", "24", flag, &word]);
        assert_eq!(o, format!("{cut}\n"), "{flag} {word:?}");
    }
    let input = b"Who is the Lord?\nWho is the Lord?\n/exit\n";
    let args = ["chat", "-q", "--temp", "0", "-n", "24"];
    let full = ok(bitnet_with(&args, input, &[])).stdout;
    let first = full[2..].split("\n> ").next().unwrap().to_string();
    let word = first.split_whitespace().nth(2).expect("words").to_string();
    let mut with_r = args.to_vec();
    with_r.extend(["-r", &word]);
    let o = ok(bitnet_with(&with_r, input, &[]));
    // Stopped before the word, and the next turn was still read and answered.
    let answers: Vec<&str> = o.stdout[2..].split("\n> ").collect();
    assert_eq!(answers.len(), 3, "{o:?}");
    assert_eq!(answers[0], &first[..first.find(&word).unwrap()], "{o:?}");
}

// ---- -s, --no-mmap ----

#[test]
fn short_seed_and_no_mmap() {
    let sampled = |flag: &str, seed: &str| {
        ok(bitnet(&[
            "run",
            "-q",
            "--no-echo",
            "--temp",
            "1.2",
            "-n",
            "12",
            flag,
            seed,
        ]))
        .stdout
    };
    let a = sampled("-s", "7");
    assert_eq!(sampled("--seed", "7"), a);
    assert_eq!(sampled("-s", "7"), a);
    let base = run_greedy(&["-n", "8"]);
    assert_eq!(run_greedy(&["-n", "8", "--no-mmap"]), base);
    // --no-mmap beats BITNET_MMAP=1 (and runs the same).
    let mut args = vec!["run", "-n", "8", "--no-mmap"];
    args.extend_from_slice(GREEDY);
    let o = ok(bitnet_with(&args, b"", &[("BITNET_MMAP", "1")]));
    assert_eq!(o.stdout, base);
    usage_error(&["run", "--mmap", "--no-mmap"], &["--no-mmap"]);
}

// ---- perplexity -c ----

#[test]
fn perplexity_ctx_size_is_the_context_per_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(workspace_root().join(HF_DIR).join("data/val.txt")).unwrap();
    // Verses that fit a context of 64 with BOS (~3.5 bytes a token): a longer line is
    // refused under -c 64 (below), where `--chunk 63` alone gives it a context of its own.
    let short: Vec<&str> = text.lines().filter(|l| l.len() <= 150).take(40).collect();
    let f = dir.path().join("val40.txt");
    std::fs::write(&f, short.join("\n")).unwrap();
    let f = f.to_str().unwrap();
    let ppl = |extra: &[&str]| {
        let mut args = vec!["perplexity", "-f", f];
        args.extend_from_slice(extra);
        ok(bitnet(&args)).stdout
    };
    let c64 = ppl(&["-c", "64"]);
    assert_eq!(c64, ppl(&["--chunk", "63"]));
    assert_eq!(c64, ppl(&["--ctx-size", "64", "--chunk", "63"]));
    assert_ne!(c64, ppl(&[]), "-c changes the chunks");
    let chunks = |s: &str| -> usize { s.split_whitespace().nth(1).unwrap().parse().unwrap() };
    assert!(chunks(&c64) > chunks(&ppl(&[])), "{c64}");
    usage_error(&["perplexity", "-f", f, "-c", "1"], &["--ctx-size 1"]);
    let long = dir.path().join("long.txt");
    std::fs::write(
        &long,
        format!("{}\n{}", short[0], "and the LORD said ".repeat(30)),
    )
    .unwrap();
    let long = long.to_str().unwrap();
    ok(bitnet(&["perplexity", "-f", long, "--chunk", "63"]));
    expect(
        &bitnet(&["perplexity", "-f", long, "-c", "64"]),
        4,
        &["line 2 has", "context of 64 (--ctx-size)"],
    );
    usage_error(
        &["perplexity", "-f", f, "-c", "64", "--chunk", "64"],
        &["--chunk 64", "--ctx-size 64"],
    );
}

// ---- bench ----

fn bench_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["bench", "--json", "-r", "1"];
    all.extend_from_slice(args);
    ok(bitnet(&all))
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

#[test]
fn bench_takes_llama_bench_lists_and_times_every_decode_step() {
    let rows = bench_json(&["-t", "1,2", "-p", "8,16", "-n", "2"]);
    let got: Vec<(u64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["threads"].as_u64().unwrap(),
                r["test"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = [1, 2]
        .into_iter()
        .flat_map(|t| ["pp8", "pp16", "tg2"].map(|test| (t, test.to_string())))
        .collect();
    assert_eq!(got, want);
    // tg1 times one forward pass of a real model: no step, no 18,867,924 t/s. A decode step of
    // even this 9 MB model reads megabytes, far more than a microsecond's work.
    let rows = bench_json(&["-t", "1", "-p", "0", "-n", "1"]);
    assert_eq!(rows.len(), 1);
    let tps = rows[0]["tps_mean"].as_f64().unwrap();
    assert!(tps.is_finite() && tps > 0.0 && tps < 1e6, "{rows:?}");
    // -b reaches the engine (a bad one is refused like run's); -c is not a bench flag.
    let rows = bench_json(&["-t", "1", "-b", "4", "-p", "16", "-n", "0"]);
    assert_eq!(rows[0]["test"], "pp16");
    usage_error(&["bench", "-b", "0"], &["batch size"]);
    usage_error(&["bench", "-c", "64"], &["-c"]);
    usage_error(&["bench", "--membw-mib", "64"], &["--membw"]);
}

#[test]
fn bench_depth_runs_each_test_after_that_many_cached_tokens() {
    let rows = bench_json(&["-t", "1", "-p", "4", "-n", "2", "-d", "0,40"]);
    let got: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            let test = r["test"].as_str().unwrap().to_string();
            (test, r["n_depth"].as_u64().unwrap())
        })
        .collect();
    let want = [("pp4", 0), ("tg2", 0), ("pp4 @ d40", 40), ("tg2 @ d40", 40)];
    let want: Vec<(String, u64)> = want.map(|(t, d)| (t.to_string(), d)).into();
    assert_eq!(got, want);
    // A depth that cannot be a context is an error before anything is allocated for it.
    let o = bitnet(&[
        "bench",
        "-r",
        "1",
        "-p",
        "0",
        "-n",
        "4",
        "-d",
        "18446744073709551615",
    ]);
    expect(&o, 1, &["overflow a context"]);
}

#[test]
fn bench_parallel_beyond_any_kv_cache_is_an_error() {
    // --parallel K sizes a scheduler (and K prompts): a K no KV cache can hold is refused
    // before anything is made for it, whether K x positions overflows or only exceeds the cap.
    for (k, msg) in [
        ("18446744073709551615", "overflow a KV cache"),
        ("100000000", "more than the limit of"),
    ] {
        let o = bitnet(&["bench", "-r", "1", "-p", "0", "-n", "3", "--parallel", k]);
        expect(&o, 1, &[msg]);
    }
}

// ---- tokenize ----

#[test]
fn tokenize_reads_files_and_stdin_and_lists_only_its_flags() {
    let help = ok(bitnet(&["tokenize", "--help"])).stdout;
    for flag in [
        "--threads",
        "--ctx-size",
        "--batch-size",
        "--kv-type",
        "--mmap",
    ] {
        assert!(!help.contains(flag), "tokenize --help lists {flag}: {help}");
    }
    usage_error(&["tokenize", "-t", "1", "hi"], &["-t"]);
    usage_error(&["tokenize", "-c", "8", "hi"], &["-c"]);
    let text = "In the beginning God created";
    let want = ok(bitnet(&["tokenize", "--ids", text])).stdout;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.txt");
    std::fs::write(&f, text).unwrap();
    let f = f.to_str().unwrap();
    assert_eq!(ok(bitnet(&["tokenize", "--ids", "-f", f])).stdout, want);
    assert_eq!(ok(bitnet(&["tokenize", "--ids", "-p", text])).stdout, want);
    for args in [
        &["tokenize", "--ids"][..],
        &["tokenize", "--ids", "-"],
        &["tokenize", "--ids", "--stdin"],
        &["tokenize", "--ids", "-f", "-"],
    ] {
        let o = ok(bitnet_with(args, text.as_bytes(), &[]));
        assert_eq!(o.stdout, want, "{args:?}");
    }
    // Nothing to read and nothing named: a forgotten argument.
    usage_error(&["tokenize"], &["no text"]);
    expect(
        &bitnet(&["tokenize", "-f", "no-such-file.txt"]),
        1,
        &["no-such-file.txt"],
    );
}

// ---- run --chat-template echo ----

#[test]
fn chat_template_echo_has_no_special_tokens() {
    let o = ok(bitnet(&[
        "run",
        "--chat-template",
        "-p",
        "Who is the Lord?",
        "--greedy",
        "-n",
        "8",
        "-q",
    ]));
    let answer = run_greedy(&["--chat-template", "-p", "Who is the Lord?", "-n", "8"]);
    assert!(!o.stdout.contains("<|"), "{o:?}");
    assert!(o.stdout.contains("Who is the Lord?"), "{o:?}");
    assert!(o.stdout.ends_with(&answer), "{o:?}");
    usage_error(&["run", "--chat-template", "--no-bos"], &["--no-bos"]);
    // --greedy would silently override the temperature.
    usage_error(&["run", "--greedy", "--temp", "0.7"], &["--greedy"]);
}

// ---- convert and model paths ----

#[test]
fn convert_refuses_outputs_named_for_other_formats() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["out.safetensors", "OUT.SafeTensors", "out.bin"] {
        let out = dir.path().join(name);
        usage_error(
            &[
                "convert",
                "models/bitnet-b1.58-kjv-i2_s.gguf",
                out.to_str().unwrap(),
            ],
            &["GGUF only"],
        );
        assert!(!out.exists(), "{name} written");
    }
}

#[test]
fn a_file_inside_a_checkpoint_folder_loads_the_folder() {
    let folder = run_greedy(&["-n", "8", "-m", HF_DIR]);
    for file in ["model.safetensors", "config.json"] {
        let path = format!("{HF_DIR}/{file}");
        assert_eq!(run_greedy(&["-n", "8", "-m", &path]), folder, "{file}");
    }
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("model.safetensors");
    std::fs::write(&lone, b"not weights").unwrap();
    let o = bitnet(&["run", "-q", "-m", lone.to_str().unwrap()]);
    expect(&o, 3, &["model.safetensors", "no config.json"]);
}

// ---- settings ----

#[test]
fn a_config_file_error_names_its_prefix_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "max_tokenz = 3\n").unwrap();
    let o = bitnet(&["run", "-q", "--config", f.to_str().unwrap()]);
    expect(&o, 1, &["bad.toml", "max_tokenz"]);
    assert_eq!(o.stderr.matches("invalid setting").count(), 1, "{o:?}");
    assert!(!o.stderr.contains("config file:"), "{o:?}");
}

#[test]
fn help_defaults_come_from_the_settings() {
    let help = ok(bitnet(&["run", "--help"])).stdout;
    let sampling = bitnet_inference::Settings::default().sampling_params();
    for part in [
        format!("[default: {DEFAULT_BATCH_SIZE}]"),
        format!("[default: {DEFAULT_MAX_TOKENS}; chat: {DEFAULT_CHAT_MAX_TOKENS}]"),
        format!("[default: {}]", sampling.temperature),
        format!("[default: {}]", sampling.top_p),
        format!("[default: {}]", sampling.min_p),
        format!("[default: {}]", sampling.repeat_last_n),
    ] {
        assert!(
            help.contains(&part),
            "run --help should show {part}: {help}"
        );
    }
}
