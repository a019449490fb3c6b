//! The `bitnet` binary end to end, run from the workspace root like the README's commands:
//! greedy output equals the reference continuations for every model form, the tokenizer and
//! inspector work, conversion round-trips, exit codes follow main.rs (1 generic, 2 usage,
//! 3 bad model file, 4 input that does not fit), and settings combine as
//! defaults < TOML file < BITNET_* environment < flags.

#[path = "../../bitnet-models/tests/common/mod.rs"]
mod common;

use bitnet_tokenizers::Tokenizer;
use common::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Paths as a user would type them in the workspace root.
const DEFAULT_MODEL: &str = "models/bitnet-b1.58-kjv-i2_s.gguf";
const HF_DIR: &str = "../shared/models/bitnet-b1.58-kjv";
const SHARED_GGUF: &str = "../shared/models/bitnet-b1.58-kjv/gguf/bitnet-b1.58-kjv-i2_s.gguf";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The binary, in the workspace root, with no BITNET_* variable leaking in from outside.
fn bitnet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    c.current_dir(workspace_root());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BITNET_") {
            c.env_remove(k);
        }
    }
    c
}

fn output(mut c: Command) -> Out {
    let o = c.output().expect("bitnet runs");
    Out {
        // A signal (no code) is reported as -1, which no assertion accepts.
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8(o.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn run<S: AsRef<OsStr>>(args: &[S]) -> Out {
    let mut c = bitnet();
    c.args(args);
    output(c)
}

fn run_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Out {
    let mut c = bitnet();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    output(c)
}

fn ok(o: Out) -> Out {
    assert_eq!(o.code, 0, "{o:?}");
    o
}

fn greedy_text(prompt: &str) -> String {
    ref_prompt(prompt)["greedy_text"]
        .as_str()
        .unwrap()
        .to_string()
}

fn hf_tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_hf_dir(&kjv_dir()).unwrap())
}

/// What `run --no-echo` prints for the first `n` reference greedy tokens of "In the beginning".
fn greedy_prefix(n: usize) -> String {
    let ids = ids_of(&ref_prompt("in_the_beginning")["greedy_new_token_ids"]);
    format!("{}\n", hf_tokenizer().decode(&ids[..n], true).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Output

#[test]
fn run_default_model_prints_reference_greedy_text() {
    let o = ok(run(&["run", "--greedy", "-n", "32", "-q", "--no-echo"]));
    assert_eq!(o.stdout, format!("{}\n", greedy_text("in_the_beginning")));
    assert!(o.stderr.is_empty(), "-q prints nothing on stderr: {o:?}");
}

/// End to end through every kernel family this CPU runs (forced with BITNET_ISA), 1-3 threads,
/// both thread pools and both weight placements: the 32-token greedy continuation must stay the
/// transformers reference's.
#[test]
fn reference_greedy_text_with_every_isa_thread_count_and_pool() {
    let want = format!("{}\n", greedy_text("in_the_beginning"));
    for isa in bitnet_kernels::Isa::ALL
        .into_iter()
        .filter(|i| i.is_supported())
    {
        for threads in ["1", "2", "3"] {
            for (pool, mmap) in [("spin", "0"), ("rayon", "1")] {
                let env = [
                    ("BITNET_ISA", isa.name()),
                    ("BITNET_POOL", pool),
                    ("BITNET_MMAP", mmap),
                ];
                let o = ok(run_env(
                    &[
                        "run",
                        "--greedy",
                        "-n",
                        "32",
                        "-q",
                        "--no-echo",
                        "-t",
                        threads,
                    ],
                    &env,
                ));
                assert_eq!(o.stdout, want, "{env:?} threads={threads}");
            }
        }
    }
}

#[test]
fn run_echoes_the_prompt_and_reports_on_stderr() {
    let o = ok(run(&[
        "run",
        "--greedy",
        "-n",
        "32",
        "-p",
        "In the beginning",
    ]));
    assert_eq!(
        o.stdout,
        format!("In the beginning{}\n", greedy_text("in_the_beginning"))
    );
    for part in [
        "loaded",
        "bitnet-b1.58-kjv-i2_s.gguf (built in)",
        "bitnet-b1.58",
        "generation: 32 tokens",
    ] {
        assert!(o.stderr.contains(part), "stderr lacks {part:?}: {o:?}");
    }
}

#[test]
fn run_hf_folder_and_shared_gguf() {
    for model in [HF_DIR, SHARED_GGUF] {
        for (name, prompt) in [
            ("jesus_said", "And Jesus said unto him"),
            ("in_the_beginning", "In the beginning"),
            ("bos_only", ""),
        ] {
            let o = ok(run(&[
                "run",
                "-m",
                model,
                "-p",
                prompt,
                "--greedy",
                "-n",
                "32",
                "-q",
                "--no-echo",
            ]));
            assert_eq!(
                o.stdout,
                format!("{}\n", greedy_text(name)),
                "{model} {name}"
            );
        }
    }
}

#[test]
fn run_with_chat_template() {
    for model in [DEFAULT_MODEL, HF_DIR] {
        let o = ok(run(&[
            "run",
            "-m",
            model,
            "--chat-template",
            "-p",
            "Who is the Lord?",
            "--greedy",
            "-n",
            "32",
            "-q",
            "--no-echo",
        ]));
        assert_eq!(o.stdout, format!("{}\n", greedy_text("chat")), "{model}");
    }
    // With echo, the rendered template is echoed as llama-cli echoes it: without its special
    // tokens.
    let o = ok(run(&[
        "run",
        "--chat-template",
        "-p",
        "Who is the Lord?",
        "--greedy",
        "-n",
        "32",
        "-q",
    ]));
    let chat = ref_prompt("chat");
    let echo = hf_tokenizer()
        .decode(&ids_of(&chat["token_ids"]), true)
        .unwrap();
    assert_eq!(o.stdout, format!("{echo}{}\n", greedy_text("chat")));
}

#[test]
fn run_with_prompt_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("prompt.txt");
    std::fs::write(&f, "And Jesus said unto him").unwrap();
    let o = ok(run(&[
        OsStr::new("run"),
        OsStr::new("-f"),
        f.as_os_str(),
        OsStr::new("--greedy"),
        OsStr::new("-n"),
        OsStr::new("32"),
        OsStr::new("-q"),
        OsStr::new("--no-echo"),
    ]));
    assert_eq!(o.stdout, format!("{}\n", greedy_text("jesus_said")));
}

#[test]
fn tokenize_prints_reference_ids() {
    let want = ids_of(&ref_prompt("in_the_beginning")["token_ids"]);
    for model in [DEFAULT_MODEL, HF_DIR, SHARED_GGUF] {
        let o = ok(run(&["tokenize", "-m", model, "--ids", "In the beginning"]));
        assert_eq!(
            o.stdout,
            format!("{}\n", serde_json::to_string(&want).unwrap())
        );
        let o = ok(run(&[
            "tokenize",
            "-m",
            model,
            "--ids",
            "--no-bos",
            "In the beginning",
        ]));
        assert_eq!(
            o.stdout,
            format!("{}\n", serde_json::to_string(&want[1..]).unwrap())
        );
    }
    // Without --ids: one "id -> piece" line per token.
    let o = ok(run(&["tokenize", "In the beginning"]));
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{o:?}");
    assert!(lines[0].trim_start().starts_with("0 -> ") && lines[0].contains("<|begin_of_text|>"));
    assert!(lines[3].contains("2112") && lines[3].contains("beginning"));
    // The chat prompt: special tokens in the text are single ids.
    let chat = ref_prompt("chat");
    let o = ok(run(&[
        "tokenize",
        "--ids",
        "--no-bos",
        chat["text"].as_str().unwrap(),
    ]));
    let got: Vec<u32> = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(got, ids_of(&chat["token_ids"]));
}

#[test]
fn inspect_gguf_and_hf_folder() {
    let o = ok(run(&["inspect", SHARED_GGUF]));
    for part in [
        "GGUF version 3",
        "general.architecture = \"bitnet-b1.58\"",
        "bitnet-b1.58.block_count = U32(6)",
        "tokenizer.ggml.tokens = [",
        "blk.0.attn_q.weight",
        "I2_S",
        "token_embd.weight",
        "model: ModelConfig",
        "hidden_size: 512",
    ] {
        assert!(
            o.stdout.contains(part),
            "inspect GGUF lacks {part:?}: {o:?}"
        );
    }
    let o = ok(run(&["inspect", "--no-tensors", DEFAULT_MODEL]));
    assert!(!o.stdout.contains("blk.0.attn_q.weight"), "{o:?}");
    assert!(o.stdout.contains("num_layers: 6"), "{o:?}");

    let o = ok(run(&["inspect", HF_DIR]));
    for part in [
        "Hugging Face folder",
        "model: ModelConfig",
        "intermediate_size: 1536",
        "tensors (68)",
        "model.layers.5.mlp.down_proj.weight",
        "BF16",
    ] {
        assert!(o.stdout.contains(part), "inspect HF lacks {part:?}: {o:?}");
    }
}

#[test]
fn convert_then_run_gives_the_same_greedy_text() {
    let dir = tempfile::tempdir().unwrap();
    for ty in ["tq2_0", "tq1_0", "i2_s"] {
        let out = dir.path().join(format!("kjv-{ty}.gguf"));
        let o = run(&[
            OsStr::new("convert"),
            OsStr::new(DEFAULT_MODEL),
            out.as_os_str(),
            OsStr::new("--type"),
            OsStr::new(ty),
        ]);
        assert_eq!(o.code, 0, "{ty}: {o:?}");
        assert!(o.stderr.contains("wrote"), "{o:?}");
        let o = ok(run(&[
            OsStr::new("run"),
            OsStr::new("-m"),
            out.as_os_str(),
            OsStr::new("--greedy"),
            OsStr::new("-n"),
            OsStr::new("32"),
            OsStr::new("-q"),
            OsStr::new("--no-echo"),
        ]));
        assert_eq!(
            o.stdout,
            format!("{}\n", greedy_text("in_the_beginning")),
            "{ty}"
        );
        let o = ok(run(&[OsStr::new("inspect"), out.as_os_str()]));
        let ty_name = ty.to_ascii_uppercase();
        assert!(
            o.stdout.contains("blk.0.attn_q.weight") && o.stdout.contains(&ty_name),
            "{ty}: {o:?}"
        );
    }
}

#[test]
fn converting_the_hf_folder_reproduces_the_committed_default_model() {
    // The README's command: bitnet convert ../shared/models/bitnet-b1.58-kjv models/...gguf.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bitnet-b1.58-kjv-i2_s.gguf");
    ok(run(&[
        OsStr::new("convert"),
        OsStr::new(HF_DIR),
        out.as_os_str(),
        OsStr::new("--type"),
        OsStr::new("i2_s"),
    ]));
    let a = std::fs::read(&out).unwrap();
    let b = std::fs::read(workspace_root().join(DEFAULT_MODEL)).unwrap();
    assert!(a == b, "converted file differs from {DEFAULT_MODEL}");
}

#[test]
fn run_packed_hf_layout() {
    let dir = tempfile::tempdir().unwrap();
    write_packed_dir(dir.path(), ScaleType::F32);
    let o = ok(run(&[
        OsStr::new("run"),
        OsStr::new("-m"),
        dir.path().as_os_str(),
        OsStr::new("-p"),
        OsStr::new("And Jesus said unto him"),
        OsStr::new("--greedy"),
        OsStr::new("-n"),
        OsStr::new("32"),
        OsStr::new("-q"),
        OsStr::new("--no-echo"),
    ]));
    assert_eq!(o.stdout, format!("{}\n", greedy_text("jesus_said")));
}

// ---------------------------------------------------------------------------------------------
// Exit codes

fn assert_exit(o: &Out, code: i32, stderr_parts: &[&str]) {
    assert_eq!(o.code, code, "{o:?}");
    for p in stderr_parts {
        assert!(o.stderr.contains(p), "stderr should mention {p:?}: {o:?}");
    }
    assert!(!o.stderr.contains("panicked"), "{o:?}");
}

#[test]
fn nonexistent_model_is_exit_3_naming_the_path() {
    let o = run(&["run", "-m", "no/such/model.gguf", "-q"]);
    assert_exit(&o, 3, &["no/such/model.gguf"]);
    let o = run(&["tokenize", "-m", "no/such/model.gguf", "hi"]);
    assert_exit(&o, 3, &["no/such/model.gguf"]);
    let o = run(&["inspect", "no/such/model.gguf"]);
    assert_exit(&o, 3, &["no/such/model.gguf"]);
    let o = run(&[
        "convert",
        "no/such/dir",
        "target/bitnet-cli-test-never-written.gguf",
    ]);
    assert_exit(&o, 3, &["no/such/dir"]);
}

#[test]
fn truncated_and_garbage_files_are_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(workspace_root().join(DEFAULT_MODEL)).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"no model here, just text.\n".repeat(50)).unwrap();
    // Right magic, nonsense after it.
    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"GGUF? no. just text.\n".repeat(50)).unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    for (file, msg) in [
        (&truncated, "does not fit"),
        (&garbage, "not a GGUF file"),
        (&fake, "unsupported GGUF version"),
        (&empty, "truncated"),
    ] {
        let name = file.file_name().unwrap().to_str().unwrap();
        let mut c = bitnet();
        c.args(["run", "-q", "-m"]).arg(file);
        assert_exit(&output(c), 3, &[msg, name]);
        let mut c = bitnet();
        c.args(["tokenize", "hi", "-m"]).arg(file);
        assert_exit(&output(c), 3, &[msg]);
        let mut c = bitnet();
        c.arg("inspect").arg(file);
        assert_exit(&output(c), 3, &[msg, name]);
        let mut c = bitnet();
        c.arg("convert").arg(file).arg(dir.path().join("out.gguf"));
        assert_exit(&output(c), 3, &[msg, name]);
    }
    // A broken HF folder too.
    let bad = dir.path().join("hf");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("config.json"), "{ not json").unwrap();
    let mut c = bitnet();
    c.args(["run", "-q", "-m"]).arg(&bad);
    assert_exit(&output(c), 3, &["config.json"]);
}

#[test]
fn prompt_longer_than_the_context_is_exit_4() {
    let o = run(&[
        "run",
        "-c",
        "8",
        "-q",
        "--no-echo",
        "-p",
        "And Jesus said unto him, I am not worthy to eat",
    ]);
    assert_exit(&o, 4, &["context", "13 tokens", "8"]);
    // A prompt and generation that fit exactly still run.
    let o = ok(run(&[
        "run",
        "-c",
        "8",
        "-q",
        "--no-echo",
        "--greedy",
        "-n",
        "4",
    ]));
    assert_eq!(o.stdout, greedy_prefix(4));
    // Asking for more than fits stops when the cache is full: 4 prompt tokens in a context of 8
    // leave room to evaluate 4 generated tokens, and the 5th is sampled from the last logits.
    let o = ok(run(&[
        "run",
        "-c",
        "8",
        "--no-echo",
        "--greedy",
        "-n",
        "10",
    ]));
    assert_eq!(o.stdout, greedy_prefix(5));
    assert!(o.stderr.contains("finish: ContextFull"), "{o:?}");
}

#[test]
fn bad_flags_are_exit_2() {
    for args in [
        &["run", "--no-such-flag"][..],
        &["run", "-n", "many"],
        &["run", "--temp"],
        &["frobnicate"],
        &[],
        &["run", "-p", "x", "-f", "y"],
        &["tokenize"],
    ] {
        let o = run(args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(!o.stderr.is_empty(), "{args:?}: usage error explained");
    }
}

#[test]
fn bad_environment_variable_is_exit_1_naming_it() {
    let o = run_env(&["run", "-q"], &[("BITNET_THREADS", "lots")]);
    assert_exit(&o, 1, &["BITNET_THREADS", "lots"]);
    let o = run_env(&["run", "-q"], &[("BITNET_TEMPERATURE", "hot")]);
    assert_exit(&o, 1, &["BITNET_TEMPERATURE"]);
}

#[test]
fn bad_settings_are_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let unknown_key = dir.path().join("unknown.toml");
    std::fs::write(&unknown_key, "max_tokenz = 3\n").unwrap();
    let mut c = bitnet();
    c.args(["run", "-q", "--config"]).arg(&unknown_key);
    assert_exit(&output(c), 1, &["unknown.toml", "max_tokenz"]);

    let mut c = bitnet();
    c.args(["run", "-q", "--config"])
        .arg(dir.path().join("missing.toml"));
    assert_exit(&output(c), 1, &["missing.toml"]);

    // An out-of-range value is a usage error, found before the model loads (hostile_files.rs
    // has the rest of these).
    let o = run(&["run", "-q", "--top-p", "7"]);
    assert_exit(&o, 2, &["top_p"]);
    let o = run(&[
        "convert",
        DEFAULT_MODEL,
        "target/bitnet-cli-test-never-written.gguf",
        "--type",
        "q4_0",
    ]);
    assert_exit(&o, 1, &["unknown --type q4_0"]);
}

/// `run`, `inspect` and `convert` name the file in their load errors; `tokenize` does not (its
/// `bitnet_models::load(..)?` has no `loading <path>` context), so a corrupt file gives e.g.
/// "error: GGUF file truncated: reading magic at offset 0 ..." with no hint which file.
#[test]
fn tokenize_load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"no model here").unwrap();
    let mut c = bitnet();
    c.args(["tokenize", "hi", "-m"]).arg(&garbage);
    assert_exit(&output(c), 3, &["garbage.gguf"]);
}

/// std::env::vars() panics on a variable that is not valid Unicode; any such variable in the
/// environment (not only BITNET_*) must not crash the CLI.
#[test]
fn non_unicode_environment_variable_does_not_crash() {
    use std::os::unix::ffi::OsStrExt;
    let mut c = bitnet();
    c.args(["run", "--greedy", "-n", "3", "-q", "--no-echo"])
        .env("SOME_UNRELATED_VAR", OsStr::from_bytes(b"caf\xe9"));
    let o = output(c);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, greedy_prefix(3));
}

// ---------------------------------------------------------------------------------------------
// Settings precedence: defaults < TOML file < environment < flags

fn settings_file(dir: &Path) -> PathBuf {
    let f = dir.join("settings.toml");
    std::fs::write(&f, "max_tokens = 3\n\n[sampling]\ntemperature = 0\n").unwrap();
    f
}

fn run_with_config(file: &Path, extra: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = bitnet();
    c.args(["run", "-q", "--no-echo", "--config"])
        .arg(file)
        .args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    ok(output(c))
}

#[test]
fn config_file_sets_max_tokens_and_temperature() {
    let dir = tempfile::tempdir().unwrap();
    let f = settings_file(dir.path());
    // temperature = 0 comes only from the file (the default is 0.8), so the greedy text shows
    // the file was read; max_tokens = 3 gives exactly three tokens.
    assert_eq!(run_with_config(&f, &[], &[]).stdout, greedy_prefix(3));
    // BITNET_CONFIG names the same file.
    let o = ok(run_env(
        &["run", "-q", "--no-echo"],
        &[("BITNET_CONFIG", f.to_str().unwrap())],
    ));
    assert_eq!(o.stdout, greedy_prefix(3));
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let dir = tempfile::tempdir().unwrap();
    let f = settings_file(dir.path());
    let env = [("BITNET_MAX_TOKENS", "5")];
    assert_eq!(run_with_config(&f, &[], &env).stdout, greedy_prefix(5));
    assert_eq!(
        run_with_config(&f, &["-n", "2"], &env).stdout,
        greedy_prefix(2)
    );
    assert_eq!(
        run_with_config(&f, &["-n", "2"], &[]).stdout,
        greedy_prefix(2)
    );
    // The file's temperature still applies under an env override of another key, and a
    // flag beats the environment for the same key.
    let o = run_with_config(
        &f,
        &["--temp", "0", "-n", "4"],
        &[("BITNET_TEMPERATURE", "1.5"), ("BITNET_MAX_TOKENS", "9")],
    );
    assert_eq!(o.stdout, greedy_prefix(4));
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let args = [
        "run",
        "-q",
        "--no-echo",
        "-n",
        "12",
        "--temp",
        "0.9",
        "--seed",
        "1234",
    ];
    let a = ok(run(&args));
    let b = ok(run(&args));
    assert_eq!(a.stdout, b.stdout);
    let c = ok(run_env(
        &["run", "-q", "--no-echo", "-n", "12", "--temp", "0.9"],
        &[("BITNET_SEED", "1234")],
    ));
    assert_eq!(a.stdout, c.stdout, "BITNET_SEED is the same seed");
}

#[test]
fn model_from_environment_and_flag_precedence() {
    let o = run_env(
        &["run", "--greedy", "-n", "32", "-q", "--no-echo"],
        &[("BITNET_MODEL", HF_DIR)],
    );
    assert_eq!(
        ok(o).stdout,
        format!("{}\n", greedy_text("in_the_beginning"))
    );
    let env = [("BITNET_MODEL", "no/such/env-model.gguf")];
    assert_exit(
        &run_env(&["run", "-q", "-n", "1"], &env),
        3,
        &["no/such/env-model.gguf"],
    );
    ok(run_env(
        &["run", "-q", "-n", "1", "-m", DEFAULT_MODEL],
        &env,
    ));
}

/// The default model rewritten without its `tokenizer.*` metadata.
fn gguf_without_tokenizer(dir: &Path) -> PathBuf {
    use bitnet_gguf::{GgufFile, GgufWriter};
    let f = GgufFile::open(&workspace_root().join(DEFAULT_MODEL)).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if !k.starts_with("tokenizer.") {
            w.add_metadata(k.clone(), v.clone()).unwrap();
        }
    }
    for t in f.tensors() {
        w.add_tensor_storage(t.name.clone(), t.dims.clone(), t.ty, f.tensor_data(t))
            .unwrap();
    }
    let path = dir.join("no-tokenizer.gguf");
    w.write_file(&path).unwrap();
    path
}

#[test]
fn gguf_without_tokenizer_needs_tokenizer_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = gguf_without_tokenizer(dir.path());
    let mut c = bitnet();
    c.args(["run", "-q", "-m"]).arg(&path);
    assert_exit(&output(c), 3, &["tokenizer", "no-tokenizer.gguf"]);
    let mut c = bitnet();
    c.args([
        "run",
        "--greedy",
        "-n",
        "32",
        "-q",
        "--no-echo",
        "--tokenizer",
        HF_DIR,
        "-m",
    ])
    .arg(&path);
    assert_eq!(
        ok(output(c)).stdout,
        format!("{}\n", greedy_text("in_the_beginning"))
    );
    // BITNET_TOKENIZER works the same way.
    let mut c = bitnet();
    c.args(["tokenize", "--ids", "In the beginning", "-m"])
        .arg(&path)
        .env("BITNET_TOKENIZER", HF_DIR);
    assert_eq!(ok(output(c)).stdout, "[0,1145,263,2112]\n");
    // And `convert --tokenizer` embeds it again.
    let fixed = dir.path().join("fixed.gguf");
    let mut c = bitnet();
    c.arg("convert")
        .arg(&path)
        .arg(&fixed)
        .args(["--tokenizer", HF_DIR]);
    ok(output(c));
    let mut c = bitnet();
    c.args(["run", "--greedy", "-n", "32", "-q", "--no-echo", "-m"])
        .arg(&fixed);
    assert_eq!(
        ok(output(c)).stdout,
        format!("{}\n", greedy_text("in_the_beginning"))
    );
}

/// `bitnet chat` renders the history with the chat template; its first answer is the
/// reference chat continuation, and a second turn reuses the cached prefix without error.
#[test]
fn chat_answers_with_the_reference_continuation() {
    use std::io::Write;
    let mut c = bitnet();
    c.args(["chat", "--temp", "0", "-n", "32", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("bitnet chat starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Who is the Lord?\nAnd who is Moses?\n/exit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let turns: Vec<&str> = stdout.split("> ").collect();
    assert_eq!(
        turns.len(),
        4,
        "two answers between three prompts: {stdout:?}"
    );
    assert_eq!(turns[1], format!("{}\n", greedy_text("chat")));
    assert!(
        !turns[2].trim().is_empty(),
        "second answer is empty: {stdout:?}"
    );
}

/// `bench` measures what it says: a table row per test, the stage profile (every stage, shares
/// summing to 100%), the bandwidth line, and JSON that parses, with the same tests.
#[test]
fn bench_prints_rates_profile_and_bandwidth() {
    let o = run(&[
        "bench",
        "-m",
        SHARED_GGUF,
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--threads-list",
        "1,2",
        "--profile",
        "--membw",
        "--membw-mib",
        "16",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    for t in ["1", "2"] {
        for test in ["pp8", "tg4"] {
            let row = o
                .stdout
                .lines()
                .find(|l| l.starts_with(&format!("| {t:>7} | {test:>8} |")))
                .unwrap_or_else(|| panic!("no {t}-thread {test} row: {o:?}"));
            let rate: f64 = row
                .split('|')
                .nth(3)
                .unwrap()
                .split('±')
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(rate > 0.0, "{row}");
        }
        assert!(
            o.stdout.contains(&format!("GB/s ({t} threads)")),
            "no bandwidth line for {t} threads: {o:?}"
        );
    }
    let stages = bitnet_inference::profile::Stage::ALL;
    let blocks: Vec<&str> = o.stdout.split(" profile (").skip(1).collect();
    assert_eq!(
        blocks.len(),
        4,
        "one profile per test and thread count: {o:?}"
    );
    for b in blocks {
        let shares: f64 = stages
            .iter()
            .map(|s| {
                let line = b
                    .lines()
                    .find(|l| l.trim_start().starts_with(s.name()))
                    .unwrap_or_else(|| panic!("stage {} missing: {b}", s.name()));
                line.trim_end()
                    .trim_end_matches('%')
                    .rsplit(' ')
                    .next()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap()
            })
            .sum();
        assert!((shares - 100.0).abs() < 0.5, "shares sum to {shares}: {b}");
    }

    let o = run(&[
        "bench",
        "-m",
        SHARED_GGUF,
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--threads-list",
        "1",
        "--profile",
        "--json",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let lines: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let tests: Vec<&str> = lines.iter().filter_map(|v| v["test"].as_str()).collect();
    assert_eq!(tests, ["pp8", "pp8", "tg4", "tg4"], "{o:?}");
    assert!(lines[0]["tps_mean"].as_f64().unwrap() > 0.0);
    let prof = lines[3]["profile_us_per_token"].as_object().unwrap();
    assert_eq!(prof.len(), stages.len());
}

/// `perplexity --kl-base` against the same file: zero divergence, full agreement, and the
/// perplexity of the shared reference (44.77 by transformers on Revelation, within 0.1%).
#[test]
fn perplexity_kl_against_itself_is_zero() {
    let val = format!("{HF_DIR}/data/val.txt");
    let o = ok(run(&[
        "perplexity",
        "-m",
        SHARED_GGUF,
        "--file",
        &val,
        "--kl-base",
        SHARED_GGUF,
    ]));
    let line = o.stdout.trim();
    assert!(line.starts_with("tokens 15322 perplexity "), "{o:?}");
    let field = |key: &str| -> f64 {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key}: {line}")) + key.len()..];
        rest.split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(['%', ')'])
            .parse()
            .unwrap()
    };
    let ppl = field("perplexity ");
    assert!((ppl / 44.77 - 1.0).abs() < 1e-3, "{line}");
    assert_eq!(field("(base "), ppl, "{line}");
    assert_eq!(field("mean "), 0.0, "{line}");
    assert_eq!(field("agreement "), 100.0, "{line}");
}
