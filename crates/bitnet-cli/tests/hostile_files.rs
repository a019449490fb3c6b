//! Hostile input to the `bitnet` binary (issue 13): crafted model files, special files where
//! files are expected, settings that cannot fit. Every case runs under `ulimit -v 4000000`
//! (4 GB of address space) and a watchdog that kills a hung process, and must end with the
//! documented exit code (1 failure, 2 bad usage, 3 bad model file, 4 input that does not fit),
//! a message that names the problem, no panic, and no death by signal.
//!
//! The files are generated here from the default model (rewritten with `bitnet-gguf`), never
//! committed.

#[path = "../../bitnet-models/tests/common/mod.rs"]
mod common;
#[path = "support/run.rs"]
mod run;

use bitnet_gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue, Storage};
use common::*;
use run::Out;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEFAULT_MODEL: &str = "models/bitnet-b1.58-kjv-i2_s.gguf";
/// The address-space limit every case runs under, in KiB (`ulimit -v`).
const ULIMIT_V_KIB: u64 = 4_000_000;
/// A watchdog, not a speed test: only a hang comes anywhere near it.
const HANG: Duration = Duration::from_secs(180);

/// `bitnet ARGS` under the memory limit, from the workspace root, with no BITNET_* variable
/// from outside.
fn bitnet<S: AsRef<OsStr>>(args: &[S]) -> Command {
    run::command(args, Some(ULIMIT_V_KIB))
}

/// Runs `c`, feeding `stdin`, killing it if it outlives [`HANG`].
fn finish(c: Command, stdin: Option<&[u8]>) -> Out {
    run::finish(c, stdin, HANG)
}

fn wait(child: std::process::Child) -> Out {
    run::wait(child, HANG)
}

fn run<S: AsRef<OsStr>>(args: &[S]) -> Out {
    finish(bitnet(args), None)
}

/// The exit code, each part in stderr, and none of the signs of a crash.
#[track_caller]
fn expect(o: &Out, code: i32, parts: &[&str]) {
    assert_eq!(o.code, Some(code), "{o:?}");
    for p in parts {
        assert!(o.stderr.contains(p), "stderr should mention {p:?}: {o:?}");
    }
    for crash in ["panicked", "memory allocation", "RUST_BACKTRACE", "SIGSEGV"] {
        assert!(!o.stderr.contains(crash), "{crash}: {o:?}");
    }
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(ok.success(), "mkfifo {}", path.display());
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

// ---------------------------------------------------------------------------------------------
// Rewritten model files

/// The default model taken apart, to be changed and written again.
struct Parts {
    meta: Vec<(String, MetadataValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Storage)>,
}

impl Parts {
    fn default_model() -> Parts {
        let f = GgufFile::open(&workspace_root().join(DEFAULT_MODEL)).expect("default model");
        Parts {
            meta: f.metadata().to_vec(),
            tensors: f
                .tensors()
                .iter()
                .map(|t| (t.name.clone(), t.dims.clone(), t.ty, f.tensor_data(t)))
                .collect(),
        }
    }

    fn set(&mut self, key: &str, v: MetadataValue) -> &mut Self {
        let slot = self.meta.iter_mut().find(|(k, _)| k == key);
        slot.unwrap_or_else(|| panic!("no key {key}")).1 = v;
        self
    }

    fn patch(&mut self, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        let t = self.tensors.iter_mut().find(|t| t.0 == name).unwrap();
        let mut bytes = t.3.to_vec();
        edit(&mut bytes);
        t.3 = Storage::from_vec(bytes);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.add_metadata(k.clone(), v.clone()).unwrap();
        }
        for (n, d, ty, data) in &self.tensors {
            w.add_tensor_storage(n.clone(), d.clone(), *ty, data.clone())
                .unwrap();
        }
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        out
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.bytes()).unwrap();
        path
    }
}

fn arch_key(k: &str) -> String {
    let f = GgufFile::open(&workspace_root().join(DEFAULT_MODEL)).unwrap();
    format!("{}.{k}", f.architecture().unwrap())
}

/// Byte offset, in a GGUF file's bytes, of the (type id, data offset) fields of `tensor`'s info.
fn tensor_info_fields(bytes: &[u8], tensor: &str) -> usize {
    let mut needle = (tensor.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(tensor.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("tensor info {tensor}"));
    let dims_at = at + needle.len();
    let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    dims_at + 4 + 8 * n_dims
}

#[test]
fn kv_cache_beyond_memory_is_refused_before_allocating() {
    // 7,000,000 positions of this model's f16 cache are about 20 GiB: more than the 4 GB
    // address space, however much RAM the machine has.
    let o = run(&["run", "-q", "-n", "1", "-c", "7000000"]);
    expect(
        &o,
        1,
        &[
            "KV cache of 7000000 positions",
            "GiB",
            "ulimit -v",
            "--ctx-size",
        ],
    );
    assert!(o.stdout.is_empty(), "{o:?}");
    // The same from the model's metadata: a trained context of 7,000,000 is the default.
    let dir = tempdir();
    let mut m = Parts::default_model();
    m.set(&arch_key("context_length"), MetadataValue::U32(7_000_000));
    let path = m.write(dir.path(), "long-context.gguf");
    let o = run(&["run", "-q", "-n", "1", "-m", p(&path)]);
    expect(&o, 1, &["KV cache of 7000000 positions", "ulimit -v"]);
    // `chat` and `serve` open their caches the same way.
    let o = run(&["chat", "-q", "-c", "7000000"]);
    expect(&o, 1, &["KV cache of 7000000 positions"]);
    let o = run(&["serve", "-q", "--port", "0", "-c", "7000000"]);
    expect(&o, 1, &["KV cache of 7000000 positions"]);
}

#[test]
fn context_above_the_trained_one_warns() {
    let o = run(&["run", "-n", "2", "--greedy", "-c", "2048"]);
    expect(
        &o,
        0,
        &["warning: context 2048 is above the 1024 positions"],
    );
    let o = run(&["run", "-n", "2", "--greedy", "-c", "1024"]);
    expect(&o, 0, &[]);
    assert!(!o.stderr.contains("warning"), "{o:?}");
}

#[test]
fn outputs_that_are_not_regular_files_are_never_replaced() {
    let dir = tempdir();
    let fifo = dir.path().join("out.gguf");
    mkfifo(&fifo);
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.path().join("link.gguf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for (out, what) in [(&fifo, "a FIFO"), (&link, "a symlink")] {
        let o = run(&["convert", DEFAULT_MODEL, p(out)]);
        expect(&o, 1, &[p(out), what, "not a regular file"]);
        let o = run(&["fixture", p(out), "--layers", "1"]);
        expect(&o, 1, &[p(out), what]);
    }
    for dev in ["/dev/null", "/dev/full"] {
        let o = run(&["convert", DEFAULT_MODEL, dev]);
        expect(&o, 1, &[dev, "a character device"]);
    }
    let ft = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&ft),
        "the FIFO is still a FIFO"
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    // A regular file is replaced whole; nothing else is left in the folder.
    let out = dir.path().join("ok.gguf");
    std::fs::write(&out, "old").unwrap();
    expect(&run(&["convert", DEFAULT_MODEL, p(&out)]), 0, &[]);
    assert!(GgufFile::open(&out).is_ok());
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["link.gguf", "ok.gguf", "out.gguf", "precious.txt"]);
}

/// Little-endian bits of a NaN/inf for the tensor's type.
fn non_finite(ty: GgmlType, nan: bool) -> Vec<u8> {
    match (ty, nan) {
        (GgmlType::F32, true) => f32::NAN.to_le_bytes().to_vec(),
        (GgmlType::F32, false) => f32::INFINITY.to_le_bytes().to_vec(),
        (GgmlType::F16, true) => 0x7e00u16.to_le_bytes().to_vec(),
        (GgmlType::F16, false) => 0x7c00u16.to_le_bytes().to_vec(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_finite_values_are_exit_3_naming_the_tensor() {
    let dir = tempdir();
    for (name, nan) in [("output_norm.weight", true), ("token_embd.weight", false)] {
        let mut m = Parts::default_model();
        let ty = m.tensors.iter().find(|t| t.0 == name).unwrap().2;
        let bad = non_finite(ty, nan);
        m.patch(name, |b| b[64..64 + bad.len()].copy_from_slice(&bad));
        let path = m.write(dir.path(), "nan.gguf");
        let o = run(&["run", "-q", "-m", p(&path)]);
        expect(
            &o,
            3,
            &[name, "element", if nan { "NaN" } else { "infinity" }],
        );
        assert!(o.stdout.is_empty(), "no text from a broken model: {o:?}");
    }
    // A per-tensor `.scale` multiplier.
    let mut m = Parts::default_model();
    m.tensors.push((
        "blk.0.ffn_up.scale".into(),
        vec![1],
        GgmlType::F32,
        Storage::from_vec(f32::INFINITY.to_le_bytes().to_vec()),
    ));
    let path = m.write(dir.path(), "scale.gguf");
    expect(
        &run(&["run", "-q", "-m", p(&path)]),
        3,
        &["blk.0.ffn_up.scale", "infinity"],
    );

    // `convert` of an HF folder with an infinite bf16 weight writes nothing.
    let mut t = kjv_tensors().clone();
    let w = t.get_mut("model.layers.2.mlp.up_proj.weight").unwrap();
    w.data[200..202].copy_from_slice(&0x7f80u16.to_le_bytes());
    let hf = dir.path().join("hf");
    write_hf_dir(&hf, &t, &kjv_config());
    let out = dir.path().join("converted.gguf");
    let o = run(&["convert", p(&hf), p(&out)]);
    expect(
        &o,
        3,
        &[
            "model.layers.2.mlp.up_proj.weight",
            "element 100 of",
            "infinity",
        ],
    );
    assert!(!out.exists());
}

#[test]
fn special_files_as_inputs_fail_at_once() {
    let dir = tempdir();
    let fifo = dir.path().join("model.gguf");
    mkfifo(&fifo);
    let o = run(&["run", "-q", "-m", p(&fifo)]);
    expect(&o, 3, &["is a FIFO, not a regular file"]);
    // The reason is printed once, not once per layer of error context.
    assert_eq!(o.stderr.matches("not a regular file").count(), 1, "{o:?}");
    let o = run(&["inspect", p(&fifo)]);
    expect(&o, 3, &["is a FIFO"]);
    let o = run(&["run", "-q", "-m", "/dev/zero"]);
    expect(&o, 3, &["/dev/zero is a character device"]);
    assert!(!o.stderr.contains("truncated"), "{o:?}");
    // A regular file that cannot be mapped (procfs): the reason once, with the path.
    let o = run(&["run", "-q", "-m", "/proc/self/status"]);
    expect(&o, 3, &["cannot map /proc/self/status", "No such device"]);
    assert_eq!(o.stderr.matches("No such device").count(), 1, "{o:?}");
    let o = run(&["perplexity", "-f", p(&fifo)]);
    expect(&o, 1, &["is a FIFO"]);
    let o = run(&["run", "-q", "--config", p(&fifo)]);
    expect(&o, 1, &["is a FIFO"]);
    // A prompt file may be a pipe (`-f <(command)`): a FIFO that nobody writes reads as empty
    // instead of blocking the open forever.
    let o = run(&["run", "-q", "-n", "1", "-f", p(&fifo)]);
    assert!(o.code.is_some(), "{o:?}");
    assert!(!o.stderr.contains("panicked"), "{o:?}");
    let o = run(&["run", "-q", "-n", "1", "-f", p(dir.path())]);
    expect(&o, 1, &["is a folder"]);
    // A tokenizer folder whose tokenizer.json (or chat_template.jinja) is a FIFO.
    let tok_dir = dir.path().join("tok");
    std::fs::create_dir(&tok_dir).unwrap();
    mkfifo(&tok_dir.join("tokenizer.json"));
    let with_tokenizer = |dir: &Path| {
        run(&[
            "run",
            "-q",
            "-n",
            "1",
            "-m",
            DEFAULT_MODEL,
            "--tokenizer",
            p(dir),
        ])
    };
    let o = with_tokenizer(&tok_dir);
    expect(&o, 3, &["tokenizer.json", "is a FIFO"]);
    std::fs::remove_file(tok_dir.join("tokenizer.json")).unwrap();
    std::fs::copy(
        "../../../shared/models/bitnet-b1.58-kjv/tokenizer.json",
        tok_dir.join("tokenizer.json"),
    )
    .unwrap();
    mkfifo(&tok_dir.join("chat_template.jinja"));
    let o = with_tokenizer(&tok_dir);
    expect(&o, 3, &["chat_template.jinja", "is a FIFO"]);
}

#[test]
fn overlapping_tensors_are_exit_3_naming_both() {
    let dir = tempdir();
    let original = Parts::default_model().bytes();
    // attn_k's data offset set to attn_q's.
    let mut bytes = original.clone();
    let q = tensor_info_fields(&bytes, "blk.0.attn_q.weight") + 4;
    let k = tensor_info_fields(&bytes, "blk.0.attn_k.weight") + 4;
    let q_offset = bytes[q..q + 8].to_vec();
    bytes[k..k + 8].copy_from_slice(&q_offset);
    let path = dir.path().join("alias.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let o = run(&["run", "-q", "-m", p(&path)]);
    expect(
        &o,
        3,
        &["blk.0.attn_q.weight", "blk.0.attn_k.weight", "overlap"],
    );
    // attn_q relabelled F32: 16 times its I2_S size, reading across the tensors after it.
    let mut bytes = original;
    let q = tensor_info_fields(&bytes, "blk.0.attn_q.weight");
    bytes[q..q + 4].copy_from_slice(&0u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let o = run(&["inspect", p(&path)]);
    expect(&o, 3, &["blk.0.attn_q.weight", "overlap"]);
}

#[test]
fn perplexity_refuses_what_it_cannot_score() {
    let dir = tempdir();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let o = run(&["perplexity", "-f", p(&empty)]);
    expect(&o, 4, &["nothing to score"]);
    assert!(!o.stdout.contains("perplexity"), "{o:?}");
    let text = dir.path().join("text.txt");
    std::fs::write(
        &text,
        "In the beginning God created the heaven and the earth.\n",
    )
    .unwrap();
    // A chunk that cannot fit the model's trained context, or the one asked for.
    let o = run(&["perplexity", "-f", p(&text), "--chunk", "5000"]);
    expect(&o, 1, &["chunk of 5000 tokens", "1024"]);
    let o = run(&["perplexity", "-f", p(&text), "--chunk", "200", "-c", "100"]);
    expect(&o, 2, &["--chunk 200", "--ctx-size 100"]);
    let o = run(&["perplexity", "-f", p(&text), "--chunk", "0"]);
    expect(&o, 2, &["--chunk"]);
    // One line longer than the context (lines are never split).
    let long = dir.path().join("long.txt");
    std::fs::write(&long, "and the LORD said ".repeat(400)).unwrap();
    let o = run(&["perplexity", "-f", p(&long)]);
    expect(&o, 4, &["line 1", "context of 1024"]);
    let o = run(&["perplexity", "-f", p(&text)]);
    expect(&o, 0, &[]);
    assert!(o.stdout.contains("perplexity"), "{o:?}");
}

/// A model mapped with `--mmap` and then truncated: the next read of its pages raises SIGBUS,
/// which ends the process with a message and exit code 3 instead of a bare signal.
#[test]
fn model_truncated_under_the_mapping_is_exit_3() {
    let dir = tempdir();
    let model = dir.path().join("model.gguf");
    std::fs::copy(workspace_root().join(DEFAULT_MODEL), &model).unwrap();
    let mut c = bitnet(&[
        "chat",
        "-q",
        "--mmap",
        "--temp",
        "0",
        "-n",
        "8",
        "-m",
        p(&model),
    ]);
    c.stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // `chat` prompts once the model is mapped and its session open.
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"> ") {
        assert_eq!(stdout.read(&mut byte).unwrap(), 1, "chat ended early");
        seen.push(byte[0]);
    }
    std::fs::File::options()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Who is the Lord?\n/exit\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let o = wait(child);
    expect(&o, 3, &["model file was truncated or changed", "SIGBUS"]);
}

#[test]
fn bad_settings_are_usage_errors_before_loading() {
    for (args, parts) in [
        (&["run", "--top-p", "7"][..], &["top_p"][..]),
        (&["run", "--temp=-1"], &["temperature"]),
        (&["run", "--min-p", "2"], &["min_p"]),
        (&["run", "--repeat-penalty", "0"], &["repeat_penalty"]),
        (&["run", "-t", "0"], &["threads", "between 1 and 1024"]),
        (&["run", "-t", "100000"], &["threads", "100000", "1024"]),
        (&["run", "-b", "0"], &["batch size"]),
        (&["run", "-c", "0"], &["context size"]),
        (&["bench", "-r", "0"], &["--repetitions"]),
        (
            &["bench", "--threads-list", "2,0"],
            &["--threads-list", " 0"],
        ),
        (&["bench", "--membw", "--membw-mib", "0"], &["--membw-mib"]),
        (
            &["bench", "--membw", "--membw-mib", "100000000"],
            &["--membw-mib", "ulimit -v"],
        ),
        (&["serve", "--parallel", "0"], &["--parallel"]),
        // tokenize has no thread count to set.
        (
            &["tokenize", "-t", "0", "hi"],
            &["unexpected argument '-t'"],
        ),
    ] {
        let o = run(args);
        expect(&o, 2, parts);
        // Validated before the model was loaded: nothing was echoed or reported.
        assert!(o.stdout.is_empty(), "{args:?}: {o:?}");
        assert!(!o.stderr.contains("loaded "), "{args:?}: {o:?}");
    }
    // The same values from the environment.
    let mut c = bitnet(&["run", "-q"]);
    c.env("BITNET_TOP_P", "7");
    expect(&finish(c, None), 2, &["top_p"]);
    let mut c = bitnet(&["run", "-q"]);
    c.env("BITNET_MODEL", "");
    expect(
        &finish(c, None),
        2,
        &["model path is empty", "BITNET_MODEL"],
    );
    let mut c = bitnet(&["run", "-q"]);
    c.env("BITNET_THREADS", "0");
    expect(&finish(c, None), 2, &["threads"]);
}

#[test]
fn block_count_smaller_than_the_layers_in_the_file() {
    let dir = tempdir();
    let mut m = Parts::default_model();
    m.set(&arch_key("block_count"), MetadataValue::U32(4));
    let path = m.write(dir.path(), "fewer-layers.gguf");
    let o = run(&["run", "-q", "-m", p(&path)]);
    expect(&o, 3, &["block_count = 4", "layer 5", "fewer-layers.gguf"]);
}

#[test]
fn invalid_ternary_codes_name_the_tensor() {
    let dir = tempdir();
    let mut m = Parts::default_model();
    // 0xff: four 2-bit codes 3, which are no ternary value.
    m.patch("blk.3.ffn_gate.weight", |b| b[10] = 0xff);
    let path = m.write(dir.path(), "code3.gguf");
    let o = run(&["run", "-q", "-m", p(&path)]);
    expect(&o, 3, &["blk.3.ffn_gate.weight", "code 3"]);
}

#[test]
fn invalid_utf8_on_chat_stdin_is_named_and_skipped() {
    let c = bitnet(&["chat", "-q", "--temp", "0", "-n", "4"]);
    let o = finish(c, Some(b"caf\xe9 au lait\nWho is the Lord?\n/exit\n"));
    expect(
        &o,
        0,
        &[
            "stdin",
            "not valid UTF-8",
            "byte at offset 3",
            "line ignored",
        ],
    );
    // The next, valid line was still answered: three prompts, one answer.
    assert_eq!(o.stdout.matches("> ").count(), 3, "{o:?}");
}
