//! `bitnet pull / list / rm` and `-m hf://...` / `--hf-repo` end to end against the fake Hub
//! (bitnet-hub's tests/support/fake_hub.rs) serving the real shared KJV model, and the built-in
//! default model from other directories and from a copy of the binary elsewhere. Every command
//! runs in a temporary directory with its own HF cache, so nothing is read from the repository
//! by relative path. Reference: ../shared/models/bitnet-b1.58-kjv/reference/reference.json
//! (greedy text compared exactly, as its README advises).

#[path = "../../bitnet-models/tests/common/mod.rs"]
mod common;
#[path = "../../bitnet-hub/tests/support/fake_hub.rs"]
mod fake_hub;

use common::{kjv_dir, kjv_gguf, ref_prompt};
use fake_hub::{FakeHub, Repo, RepoFile, COMMIT};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GGUF_REPO: &str = "kjv/bitnet-b1.58-kjv-GGUF";
const GGUF_NAME: &str = "bitnet-b1.58-kjv-i2_s.gguf";
const FOLDER_REPO: &str = "kjv/bitnet-b1.58-kjv";

fn greedy(name: &str) -> String {
    format!("{}\n", ref_prompt(name)["greedy_text"].as_str().unwrap())
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn repos() -> Vec<Repo> {
    let kjv = kjv_dir();
    let gguf = Repo {
        id: GGUF_REPO.into(),
        commit: COMMIT.into(),
        files: vec![
            RepoFile::new("README.md", b"# KJV\n".to_vec(), false),
            RepoFile::new(GGUF_NAME, read(kjv_gguf()), true),
            // Preferred after I2_S only: if it were picked, loading it would fail.
            RepoFile::new("bitnet-b1.58-kjv-f16.gguf", b"not a gguf".to_vec(), true),
        ],
        token: None,
    };
    let mut folder_files: Vec<RepoFile> = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .iter()
    .map(|f| RepoFile::new(f, read(kjv.join(f)), false))
    .collect();
    folder_files.push(RepoFile::new(
        "model.safetensors",
        read(kjv.join("model.safetensors")),
        true,
    ));
    folder_files.push(RepoFile::new(
        "README.md",
        read(kjv.join("README.md")),
        false,
    ));
    let folder = Repo {
        id: FOLDER_REPO.into(),
        commit: "fedcba9876543210fedcba9876543210fedcba98".into(),
        files: folder_files,
        token: None,
    };
    let private = Repo {
        id: "kjv/private".into(),
        commit: COMMIT.into(),
        files: vec![RepoFile::new(GGUF_NAME, read(kjv_gguf()), true)],
        token: Some("hf_right".into()),
    };
    vec![gguf, folder, private]
}

struct Env {
    hub: FakeHub,
    home: tempfile::TempDir,
    cwd: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            hub: FakeHub::start(repos()),
            home: tempfile::tempdir().unwrap(),
            cwd: tempfile::tempdir().unwrap(),
        }
    }

    fn cache(&self) -> PathBuf {
        self.home.path().join("hf/hub")
    }

    /// `bitnet` in an empty directory, pointed at the fake Hub and a private cache, with no
    /// BITNET_* or HF_* variable leaking in.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bitnet"));
        c.current_dir(self.cwd.path()).args(args);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("BITNET_") || k.starts_with("HF_") || k == "XDG_CACHE_HOME" {
                c.env_remove(k);
            }
        }
        c.env("HOME", self.home.path())
            .env("HF_HOME", self.home.path().join("hf"))
            .env("HF_ENDPOINT", &self.hub.url)
            .env("HF_HUB_DOWNLOAD_TIMEOUT", "10")
            // ureq honours HTTP(S)_PROXY: the fake Hub is reached directly whatever the machine's.
            .env("NO_PROXY", "127.0.0.1,localhost");
        c
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.cmd(args);
        c.envs(env.iter().copied());
        c.output().expect("bitnet runs")
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn show(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        code(o),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert_eq!(code(&o), 0, "{}", show(&o));
    String::from_utf8(o.stdout).unwrap()
}

const GREEDY: &[&str] = &[
    "--greedy",
    "-n",
    "32",
    "-q",
    "--no-echo",
    "-p",
    "In the beginning",
];

fn with<'a>(head: &[&'a str]) -> Vec<&'a str> {
    let mut v = head.to_vec();
    v.extend_from_slice(GREEDY);
    v
}

#[test]
fn run_from_the_hub_gives_the_reference_text_then_list_offline_and_rm() {
    let e = Env::new();
    let uri = format!("hf://{GGUF_REPO}");
    let out = ok(e.run(&with(&["run", "-m", &uri]), &[]));
    assert_eq!(out, greedy("in_the_beginning"));
    let sha = fake_hub::hex(&<sha2::Sha256 as sha2::Digest>::digest(read(kjv_gguf())));
    assert_eq!(e.hub.body_gets(&sha).len(), 1);
    assert!(
        e.hub.body_gets("f16.gguf").is_empty(),
        "only the I2_S file is fetched"
    );

    // llama.cpp's spelling, and BITNET_MODEL, find it in the cache: nothing downloaded again.
    let out = ok(e.run(&with(&["run", "--hf-repo", GGUF_REPO]), &[]));
    assert_eq!(out, greedy("in_the_beginning"));
    let out = ok(e.run(&with(&["run"]), &[("BITNET_MODEL", &uri)]));
    assert_eq!(out, greedy("in_the_beginning"));
    let out = ok(e.run(
        &with(&["run", "--hf-repo", GGUF_REPO, "--hf-file", "i2_s"]),
        &[],
    ));
    assert_eq!(out, greedy("in_the_beginning"));
    assert_eq!(e.hub.body_gets(&sha).len(), 1);

    let listed = ok(e.run(&["list"], &[]));
    assert!(listed.contains(GGUF_REPO), "{listed}");
    // 8,929,728 bytes.
    assert!(listed.contains("8.5 MiB"), "{listed}");
    assert!(listed.contains("main@0123456"), "{listed}");

    let requests = e.hub.log().len();
    let out = ok(e.run(&with(&["run", "-m", &uri]), &[("HF_HUB_OFFLINE", "1")]));
    assert_eq!(out, greedy("in_the_beginning"));
    assert_eq!(e.hub.log().len(), requests, "offline asks nothing");

    let o = e.run(&["rm", GGUF_REPO], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("8.5 MiB freed"),
        "{}",
        show(&o)
    );
    assert!(!e
        .cache()
        .join("models--kjv--bitnet-b1.58-kjv-GGUF")
        .exists());
    let o = e.run(&with(&["run", "-m", &uri]), &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(code(&o), 5, "{}", show(&o));
    let o = e.run(&["rm", GGUF_REPO], &[]);
    assert_eq!(code(&o), 5, "{}", show(&o));
}

#[test]
fn pull_prints_the_path_and_a_checkpoint_folder_runs_too() {
    let e = Env::new();
    let o = e.run(&["pull", FOLDER_REPO], &[]);
    let path = ok(o);
    let path = Path::new(path.trim_end());
    assert_eq!(
        path,
        e.cache().join(
            "models--kjv--bitnet-b1.58-kjv/snapshots/fedcba9876543210fedcba9876543210fedcba98"
        )
    );
    assert!(path.join("model.safetensors").is_file());
    assert!(
        !path.join("README.md").exists(),
        "only what the model needs"
    );
    // `download` is the same command (the name other tools use), and a second pull of a cached
    // snapshot prints the same path.
    let again = ok(e.run(&["download", FOLDER_REPO], &[]));
    assert_eq!(Path::new(again.trim_end()), path);
    let out = ok(e.run(
        &[
            "run",
            "-m",
            &format!("hf://{FOLDER_REPO}"),
            "--greedy",
            "-n",
            "32",
            "-q",
            "--no-echo",
            "-p",
            "And Jesus said unto him",
        ],
        &[],
    ));
    assert_eq!(out, greedy("jesus_said"));
    // inspect takes hf:// too.
    let out = ok(e.run(
        &["inspect", "--no-tensors", &format!("hf://{GGUF_REPO}")],
        &[],
    ));
    assert!(out.contains("bitnet-b1.58"), "{out}");
}

#[test]
fn hub_failures_exit_with_their_own_codes() {
    let e = Env::new();
    let q4 = format!("{GGUF_REPO}:q4_k_m");
    // (arguments, environment, exit code, what stderr must mention)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["pull", "kjv/nope"], vec![], 5, "not found"),
        (vec!["pull", "kjv/private"], vec![], 6, "HF_TOKEN"),
        (
            vec!["pull", "kjv/private"],
            vec![("HF_TOKEN", "hf_wrong")],
            6,
            "refused",
        ),
        (vec!["pull", &q4], vec![], 5, "q4_k_m"),
        (vec!["pull", "not-a-repo"], vec![], 2, "owner/name"),
        (vec!["run", "--hf-file", "x.gguf"], vec![], 2, "--hf-repo"),
    ];
    for (args, env, want, says) in &cases {
        let o = e.run(args, env);
        assert_eq!(code(&o), *want, "{args:?}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(says),
            "{args:?} should mention {says:?}: {}",
            show(&o)
        );
    }
    let o = e.run(&["pull", "-q", "kjv/private"], &[("HF_TOKEN", "hf_right")]);
    assert!(ok(o).trim_end().ends_with(GGUF_NAME));

    // Busy: two 429s with BITNET_HUB_MAX_RETRIES=1 give up with 7; two 500s with 1.
    e.hub.faults(|f| f.api_script.extend([(429, Some("0")); 2]));
    let o = e.run(&["pull", GGUF_REPO], &[("BITNET_HUB_MAX_RETRIES", "1")]);
    assert_eq!(code(&o), 7, "{}", show(&o));
    e.hub.faults(|f| f.api_script.extend([(500, None); 2]));
    let o = e.run(&["pull", GGUF_REPO], &[("BITNET_HUB_MAX_RETRIES", "1")]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("server error 500"),
        "{}",
        show(&o)
    );

    // Corrupt: 8, and nothing left where the model would be.
    e.hub.faults(|f| f.corrupt = true);
    let o = e.run(&with(&["run", "-m", &format!("hf://{GGUF_REPO}")]), &[]);
    assert_eq!(code(&o), 8, "{}", show(&o));
    let repo = e.cache().join("models--kjv--bitnet-b1.58-kjv-GGUF");
    assert!(!repo.join("snapshots").join(COMMIT).join(GGUF_NAME).exists());
    let blobs: Vec<_> = std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .flatten()
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
}

#[test]
fn a_pull_cut_short_is_resumed_by_the_next_process_and_draws_no_bar_when_piped() {
    let e = Env::new();
    e.hub.faults(|f| f.cut = Some((4_000_000, 1)));
    let o = e.run(&["pull", GGUF_REPO], &[("BITNET_HUB_MAX_RETRIES", "0")]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("resumes"),
        "{}",
        show(&o)
    );
    let o = e.run(&["pull", GGUF_REPO], &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let path = ok(o);
    assert_eq!(read(PathBuf::from(path.trim_end())), read(kjv_gguf()));
    let gets = e.hub.body_gets("");
    let ranges: Vec<_> = gets
        .iter()
        .filter(|g| g.role == "cdn")
        .map(|g| g.range.clone())
        .collect();
    assert_eq!(ranges, vec![None, Some("bytes=4000000-".to_owned())]);
    // stderr is a pipe here: one summary line, no bar redrawn with \r or escape sequences.
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
}

#[test]
fn concurrent_pull_processes_download_the_file_once() {
    let e = Env::new();
    e.hub.faults(|f| f.hold_until_heads = Some(2));
    let kids: Vec<_> = (0..2)
        .map(|_| {
            e.cmd(&["pull", GGUF_REPO])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<String> = kids
        .into_iter()
        .map(|k| ok(k.wait_with_output().unwrap()))
        .collect();
    assert_eq!(outs[0], outs[1]);
    assert_eq!(read(PathBuf::from(outs[0].trim_end())), read(kjv_gguf()));
    let cdn = e
        .hub
        .body_gets("")
        .into_iter()
        .filter(|g| g.role == "cdn")
        .count();
    assert_eq!(
        cdn, 1,
        "the second process waits on the lock, then finds the file"
    );
}

#[test]
fn the_built_in_model_runs_from_any_directory_and_from_a_copied_binary() {
    let e = Env::new();
    let out = ok(e.run(&with(&["run"]), &[]));
    assert_eq!(out, greedy("in_the_beginning"));
    // As after `cargo install`: the binary alone, elsewhere, run from yet another directory.
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("bitnet");
    std::fs::copy(env!("CARGO_BIN_EXE_bitnet"), &bin).unwrap();
    let o = Command::new(&bin)
        .args([
            "run",
            "--greedy",
            "-n",
            "32",
            "--no-echo",
            "-p",
            "In the beginning",
        ])
        .current_dir(e.cwd.path())
        .env_remove("BITNET_MODEL")
        .env_remove("BITNET_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(ok(o), greedy("in_the_beginning"));
    assert!(err.contains("(built in)"), "{err}");
    assert!(e.hub.log().is_empty(), "the default model needs no network");
}

#[test]
fn the_progress_bar_is_drawn_on_a_terminal() {
    let e = Env::new();
    // About a second of transfer, so the bar is drawn more than once.
    e.hub
        .faults(|f| f.trickle = Some((1 << 20, std::time::Duration::from_millis(100))));
    // util-linux `script` gives the command a pseudo-terminal and copies what it drew.
    let cmd = format!("{} pull {GGUF_REPO}", env!("CARGO_BIN_EXE_bitnet"));
    let c = e.cmd(&[]); // for its environment: script runs bitnet
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(e.cwd.path())
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .output()
        .expect("util-linux script");
    let screen = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(code(&o), 0, "{screen}");
    assert!(
        screen.contains(&format!("{GGUF_NAME} [")),
        "no bar drawn: {screen:?}"
    );
    assert!(screen.contains("MiB"), "{screen:?}");
}
