//! `convert` streams: its files are byte for byte what the in-memory writer made before it
//! streamed, its progress bar appears only on a terminal; and `inspect --json` reports the KJV
//! model as it is. (Its peak memory: tests/convert_memory.rs.)

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HF_DIR: &str = "../shared/models/bitnet-b1.58-kjv";
const SHARED_GGUF: &str = "../shared/models/bitnet-b1.58-kjv/gguf/bitnet-b1.58-kjv-i2_s.gguf";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary in the workspace root (where the paths above hold), no BITNET_* leaking in.
fn bitnet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    c.current_dir(root());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BITNET_") {
            c.env_remove(k);
        }
    }
    c
}

fn ok(c: &mut Command) -> std::process::Output {
    let o = c.output().expect("bitnet runs");
    assert!(
        o.status.success(),
        "{c:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of what `bitnet convert` wrote before it streamed (commit 2bcee8c: the whole model
/// loaded, every output tensor built in memory, then written), for each source, ternary type
/// and embedding type. The streamed files must not differ by one byte.
#[test]
fn streamed_files_are_identical_to_the_in_memory_writer_s() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            HF_DIR,
            "i2_s",
            "f16",
            "fb5b3cb57ebe894ec7d6e5025ea406ce37107dfca9be78d3e4085b864da078de",
        ),
        (
            HF_DIR,
            "tq2_0",
            "f16",
            "5d7b955ba4d4c5550600e4d1c827e7980990bc45d017e0bf0d4e4b45b41d2c74",
        ),
        (
            HF_DIR,
            "tq1_0",
            "f16",
            "20a35e3f4da5f23deed08ecf75ed8555d717e85faa217b34454f9908daa30c13",
        ),
        (
            HF_DIR,
            "f16",
            "f16",
            "df7cbbb890c62f32e3c1e208e7e7b16528c126040907e1ca3af4e5aa9c6e9f80",
        ),
        (
            HF_DIR,
            "f32",
            "f16",
            "d750a2d0d481ccb3e556f70bc42132de2a509c91881062973ddaeb027b1032d2",
        ),
        (
            HF_DIR,
            "i2_s",
            "f32",
            "7ba0abd6b3189667fe7a9f91b8eb2adaa35dcb39fab2af615478fb3c11d76fa5",
        ),
        (
            HF_DIR,
            "i2_s",
            "bf16",
            "506c80bb41bf168785800db89706a4d4ecd3640367d97e69058cda9b7204b495",
        ),
        (
            HF_DIR,
            "i2_s",
            "q8_0",
            "f0cc38db00a74f23c712298bf9c26bd5aff9adbfd48bfff0533aa6aafe8ea980",
        ),
        (
            HF_DIR,
            "i2_s",
            "q6_k",
            "fa0b4cef5c9a3e045c45cb9412efffde7bee75776df8fc741e1ecf610df15999",
        ),
        (
            SHARED_GGUF,
            "i2_s",
            "f16",
            "7c3ce324edc4804db9ea82f90b697fde68dfb999312591a84e64ac0bcd936f89",
        ),
        (
            SHARED_GGUF,
            "tq2_0",
            "f16",
            "a0154f955a6051c9da7ad00fff0802086b5758a3779f342be7af849c18f93a8c",
        ),
        (
            SHARED_GGUF,
            "tq1_0",
            "f16",
            "cea6ab737a4b2e71e1e13afdfd2ed92fd237deaca42bb5cd78749d57b456bda3",
        ),
        (
            SHARED_GGUF,
            "f16",
            "f16",
            "3b385e0e69aa6895f5b795fb2eb19f90a0fce45929d6b46f8176886df3def2aa",
        ),
        (
            SHARED_GGUF,
            "f32",
            "f16",
            "753f6d046a57e305c3103ff4da817c344c1853272b01c85c65614fdb219c90c1",
        ),
        (
            SHARED_GGUF,
            "i2_s",
            "f32",
            "7f3ed3a8ff0063fa8192bcdadccd37b163abc234ed4e13ab0e22280fa7122d95",
        ),
        (
            SHARED_GGUF,
            "i2_s",
            "bf16",
            "3182cb4bd924bb7ba44d9791e4da135a1bcb8df00b1cd1782f7725451b0377a0",
        ),
        (
            SHARED_GGUF,
            "i2_s",
            "q8_0",
            "a3f94dc4d813e50218ee2a9a26af9274392297cb50652bbe3fd96aeca7c607f5",
        ),
        (
            SHARED_GGUF,
            "i2_s",
            "q6_k",
            "48f8bfca6e51911c893725f1909b34d3434ecaf956d8b55d69b92e31b9555b1b",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    for &(src, ty, embed, want) in cases {
        ok(bitnet()
            .args(["convert", src])
            .arg(&out)
            .args(["--type", ty, "--embed", embed, "-q"]));
        assert_eq!(sha256(&out), want, "{src} --type {ty} --embed {embed}");
    }
    // A TQ2_0 source with a Q8_0 embedding (its blocks are copied, not re-quantized), then
    // that file converted again. general.name comes from the input's name: keep "a".
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    ok(bitnet()
        .args(["convert", SHARED_GGUF])
        .arg(&a)
        .args(["--type", "tq2_0", "--embed", "q8_0", "-q"]));
    assert_eq!(
        sha256(&a),
        "15feba5c66a224fb035f3fdab61ac48b95f5f2b3d4ae71b3176e2768323267f2"
    );
    ok(bitnet()
        .arg("convert")
        .arg(&a)
        .arg(&b)
        .args(["--type", "tq1_0", "--embed", "q8_0", "-q"]));
    assert_eq!(
        sha256(&b),
        "5ff0f6d1b596a5cc294bc46f8aa46b6ec1cb11e9ed74712f34840dd4162071e9"
    );
}

/// Piped, stderr carries no bar (no carriage returns or escape sequences); on a terminal
/// (`script` gives the command a pseudo-terminal) the bar is drawn.
#[test]
fn progress_bar_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let o = ok(bitnet().args(["convert", HF_DIR]).arg(&out));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    assert!(stderr.starts_with("wrote "), "{stderr:?}");
    let o = ok(bitnet()
        .args(["inspect", "--no-tensors", SHARED_GGUF])
        .stderr(Stdio::piped()));
    assert!(o.stderr.is_empty());

    // util-linux `script` (Debian's essential bsdutils): -q quiet, -e child's exit code,
    // -c the command; the typescript goes to /dev/null, the terminal's output to stdout.
    let bin = env!("CARGO_BIN_EXE_bitnet");
    let cmd = format!(
        "{bin} convert {HF_DIR} {} --type tq2_0",
        dir.path().join("tty.gguf").display()
    );
    let o = ok(Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(root())
        .stdin(Stdio::null()));
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(tty.contains("converting ["), "{tty:?}");
    assert!(tty.contains("MiB"), "{tty:?}");
    assert!(tty.contains("wrote "), "{tty:?}");
    // `-q` turns it off there too.
    let o = ok(Command::new("script")
        .args(["-qec", &format!("{cmd} -q"), "/dev/null"])
        .current_dir(root())
        .stdin(Stdio::null()));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("converting"));
}

fn inspect_json(args: &[&str]) -> serde_json::Value {
    let o = ok(bitnet().arg("inspect").arg("--json").args(args));
    serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON")
}

#[test]
fn inspect_json_reports_the_kjv_model() {
    let g = inspect_json(&[SHARED_GGUF]);
    assert_eq!(g["format"], "gguf");
    assert_eq!(g["gguf"]["version"], 3);
    assert_eq!(g["gguf"]["alignment"], 32);
    let size = std::fs::metadata(root().join(SHARED_GGUF)).unwrap().len();
    assert_eq!(g["file_bytes"], size);
    let m = &g["model"];
    assert_eq!(m["architecture"], "bitnet-b1.58");
    assert_eq!(m["layers"], 6);
    assert_eq!(m["heads"], 8);
    assert_eq!(m["kv_heads"], 2);
    assert_eq!(m["hidden_size"], 512);
    assert_eq!(m["intermediate_size"], 1536);
    assert_eq!(m["vocab_size"], 4096);
    assert_eq!(m["context_length"], 1024);
    assert_eq!(m["rms_norm_eps"], 1e-5);
    assert_eq!(m["file_type"]["id"], 40);
    assert_eq!(m["file_type"]["name"], "I2_S");
    let meta = g["metadata"].as_array().unwrap();
    let key = |k: &str| {
        meta.iter()
            .find(|e| e["key"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    assert_eq!(key("general.architecture")["value"], "bitnet-b1.58");
    assert_eq!(key("bitnet-b1.58.block_count")["type"], "u32");
    let tokens = key("tokenizer.ggml.tokens");
    assert_eq!(tokens["type"], "array");
    assert_eq!(tokens["value"]["type"], "string");
    assert_eq!(tokens["value"]["len"], 4096);
    assert_eq!(tokens["value"]["items"].as_array().unwrap().len(), 8);
    let tensors = g["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 2 + 11 * 6);
    assert_eq!(g["tensor_count"], tensors.len());
    let q = tensors
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q["type"], "I2_S");
    assert_eq!(q["shape"], serde_json::json!([512, 512]));
    // bitnet.cpp's I2_S size: 2 bits per weight and a 32-byte tail with the scale.
    assert_eq!(q["bytes"], 512 * 512 / 4 + 32);
    // Offsets are data-section relative and every tensor lies inside the file.
    let data_offset = g["gguf"]["data_offset"].as_u64().unwrap();
    let mut bytes = 0;
    for t in tensors {
        let end = data_offset + t["offset"].as_u64().unwrap() + t["bytes"].as_u64().unwrap();
        assert!(end <= size, "{t}");
        bytes += t["bytes"].as_u64().unwrap();
    }
    assert_eq!(g["tensor_bytes"], bytes);
    // The parameter count counts weights, not stored bytes: the same as the HF folder's.
    let h = inspect_json(&[HF_DIR]);
    assert_eq!(h["format"], "hf");
    assert_eq!(h["model"]["parameters"], m["parameters"]);
    assert_eq!(h["model"]["layers"], 6);
    assert_eq!(h["model"]["file_type"]["name"], "BF16");
    let ht = h["tensors"].as_array().unwrap();
    assert_eq!(ht.len(), 68);
    assert_eq!(h["tensor_count"], 68);
    // Every bf16 master weight is one parameter.
    let elements: u64 = ht
        .iter()
        .map(|t| {
            t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product::<u64>()
        })
        .sum();
    assert_eq!(h["model"]["parameters"], elements);
    let embed = ht
        .iter()
        .find(|t| t["name"] == "model.embed_tokens.weight")
        .unwrap();
    assert_eq!(embed["shape"], serde_json::json!([4096, 512]));
    assert_eq!(embed["type"], "BF16");
    assert_eq!(embed["bytes"], 4096 * 512 * 2);
    assert_eq!(embed["file"], "model.safetensors");

    // --full lists whole arrays; --no-tensors leaves the table out.
    let full = inspect_json(&["--full", "--no-tensors", SHARED_GGUF]);
    let meta = full["metadata"].as_array().unwrap();
    let tokens = meta
        .iter()
        .find(|e| e["key"] == "tokenizer.ggml.tokens")
        .unwrap();
    assert_eq!(tokens["value"]["items"].as_array().unwrap().len(), 4096);
    assert!(full.get("tensors").is_none());
    assert_eq!(full["tensor_count"], 68);
}
