//! The C API from C: the library this build made is installed under a scratch prefix by
//! scripts/install-capi.sh, C programs are compiled against it with the machine's gcc through
//! the installed pkg-config file, and run.
//!
//! - examples/c/generate.c must print the greedy continuations of the shared KJV model's
//!   reference (transformers, reference/reference.json): token ids exact, text exact (the
//!   tolerance the model's README gives for greedy output), through every way in (a path, a
//!   buffer in memory, the chat template, a hand-written eval + sample loop, the static
//!   library).
//! - tests/c/bad_input.c checks error codes and messages for bad input of every kind.
//! - Under valgrind both must show no invalid access and no definite leak.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn workspace_root() -> PathBuf {
    crate_dir().join("../..")
}

fn kjv_gguf() -> PathBuf {
    workspace_root().join("../shared/models/bitnet-b1.58-kjv/gguf/bitnet-b1.58-kjv-i2_s.gguf")
}

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Where cargo put the cdylib and staticlib of this build (target/<profile>/), found from
/// this test executable's path (target/<profile>/deps/c_api-<hash>).
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    for dir in [deps.parent().expect("profile dir"), deps] {
        if dir.join("libbitnet_ffi.so").is_file() && dir.join("libbitnet_ffi.a").is_file() {
            return dir.to_path_buf();
        }
    }
    panic!("libbitnet_ffi.so / .a not found next to {}", exe.display());
}

/// The install prefix, made once per test process with the project's install script.
fn prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let prefix = scratch().join("prefix");
        let out = Command::new("bash")
            .arg(workspace_root().join("scripts/install-capi.sh"))
            .arg(&prefix)
            .arg(build_dir())
            .output()
            .expect("run scripts/install-capi.sh");
        assert!(
            out.status.success(),
            "install-capi.sh failed: {}",
            text(&out.stderr)
        );
        prefix
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn pkg_config(args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("bitnet")
        .env("PKG_CONFIG_PATH", prefix().join("lib/pkgconfig"))
        .output()
        .expect("pkg-config (scripts/setup-capi.sh installs it)");
    assert!(
        out.status.success(),
        "pkg-config {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Compiles one C file with warnings as errors; `static_lib` links libbitnet_ffi.a instead of
/// the shared library.
fn compile(source: &str, name: &str, static_lib: bool) -> PathBuf {
    let out_path = scratch().join(name);
    let mut cmd = Command::new("gcc");
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg(crate_dir().join(source))
        .arg("-o")
        .arg(&out_path)
        .args(pkg_config(&["--cflags"]));
    if static_lib {
        // The .pc file's own flags, with the library itself taken from the archive.
        for flag in pkg_config(&["--static", "--libs"]) {
            cmd.arg(if flag == "-lbitnet_ffi" {
                "-l:libbitnet_ffi.a".into()
            } else {
                flag
            });
        }
    } else {
        cmd.args(pkg_config(&["--libs"]));
        cmd.arg(format!("-Wl,-rpath,{}", prefix().join("lib").display()));
    }
    cmd.arg("-lm");
    let out = cmd.output().expect("gcc");
    assert!(out.status.success(), "gcc {source}: {}", text(&out.stderr));
    out_path
}

fn generate_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile("examples/c/generate.c", "generate", false))
}

fn bad_input_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile("tests/c/bad_input.c", "bad_input", false))
}

struct RefPrompt {
    name: String,
    token_ids: Vec<u32>,
    greedy_new: Vec<u32>,
    greedy_text: String,
}

fn reference() -> Vec<RefPrompt> {
    let path = workspace_root().join("../shared/models/bitnet-b1.58-kjv/reference/reference.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("reference.json"))
        .expect("reference.json parses");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    v["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| RefPrompt {
            name: p["name"].as_str().expect("name").into(),
            token_ids: ids(&p["token_ids"]),
            greedy_new: ids(&p["greedy_new_token_ids"]),
            greedy_text: p["greedy_text"].as_str().expect("greedy_text").into(),
        })
        .collect()
}

fn prompt(name: &str) -> RefPrompt {
    reference()
        .into_iter()
        .find(|p| p.name == name)
        .expect("reference prompt")
}

/// What generate.c printed: the streamed text, the prompt ids and the generated ids.
struct Run {
    text: String,
    prompt: Vec<u32>,
    generated: Vec<u32>,
}

fn parse_ids(stderr: &str, key: &str) -> Vec<u32> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line in: {stderr}"));
    line.split_whitespace()
        .map(|t| t.parse().expect("token id"))
        .collect()
}

fn run_generate(exe: &Path, prompt_text: &str, n: usize, flags: &[&str]) -> Run {
    let out = Command::new(exe)
        .arg(kjv_gguf())
        .arg(prompt_text)
        .arg(n.to_string())
        .args(flags)
        .output()
        .expect("run generate");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "generate {flags:?} failed: {stderr}");
    Run {
        text: text(&out.stdout),
        prompt: parse_ids(&stderr, "prompt:"),
        generated: parse_ids(&stderr, "generated:"),
    }
}

fn assert_reference(run: &Run, r: &RefPrompt, how: &str) {
    assert_eq!(run.prompt, r.token_ids, "{how}/{}: prompt ids", r.name);
    assert_eq!(run.generated, r.greedy_new, "{how}/{}: greedy ids", r.name);
    assert_eq!(run.text, r.greedy_text, "{how}/{}: greedy text", r.name);
}

#[test]
fn c_example_prints_the_reference_greedy_continuations() {
    let exe = generate_exe();
    for (name, text, flags) in [
        ("in_the_beginning", "In the beginning", &[][..]),
        ("jesus_said", "And Jesus said unto him", &["--buffer"][..]),
        ("chat", "Who is the Lord?", &["--chat"][..]),
        ("bos_only", "", &["--manual"][..]),
        (
            "in_the_beginning",
            "In the beginning",
            &["--manual", "--buffer"][..],
        ),
    ] {
        let r = prompt(name);
        let run = run_generate(exe, text, r.greedy_new.len(), flags);
        assert_reference(&run, &r, &format!("{flags:?}"));
    }
}

#[test]
fn static_library_gives_the_same_tokens() {
    let exe = compile("examples/c/generate.c", "generate-static", true);
    let r = prompt("in_the_beginning");
    let run = run_generate(&exe, "In the beginning", r.greedy_new.len(), &[]);
    assert_reference(&run, &r, "static");
}

#[test]
fn c_bad_input_gets_error_codes_not_crashes() {
    let out = Command::new(bad_input_exe())
        .arg(kjv_gguf())
        .arg(scratch())
        .output()
        .expect("run bad_input");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "bad_input failed ({}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
}

/// Runs `exe args` under valgrind with the settings the C tests need: every memory error
/// and every definite leak fails the run (exit code 99).
fn valgrind<S: AsRef<std::ffi::OsStr>>(exe: &Path, args: impl IntoIterator<Item = S>) -> Output {
    Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
            "--quiet",
        ])
        .arg(exe)
        .args(args)
        .output()
        .expect("valgrind (scripts/setup-capi.sh installs it)")
}

#[test]
#[ignore = "needs valgrind (scripts/setup-capi.sh; scripts/test.sh runs it)"]
fn c_programs_are_clean_under_valgrind() {
    // Short generations on one thread: valgrind runs the program tens of times slower and
    // serialises threads anyway.
    let r = prompt("in_the_beginning");
    let model = kjv_gguf().into_os_string();
    for flags in [
        &["--threads", "1"][..],
        &["--threads", "1", "--manual", "--buffer"][..],
    ] {
        let mut args = vec![model.clone(), "In the beginning".into(), "6".into()];
        args.extend(flags.iter().map(Into::into));
        let out = valgrind(generate_exe(), args);
        let stderr = text(&out.stderr);
        assert!(
            out.status.success(),
            "generate {flags:?} under valgrind: {stderr}"
        );
        assert_eq!(
            parse_ids(&stderr, "generated:"),
            r.greedy_new[..6],
            "{flags:?}"
        );
    }
    let out = valgrind(bad_input_exe(), [model, scratch().into_os_string()]);
    assert!(
        out.status.success(),
        "bad_input under valgrind ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}
