//! Hostile text input to the `bitnet` binary (issue 13, items 1, 2, 4 and 9): chat templates
//! that panicked, hung or aborted, a vocabulary built to make merge reconstruction quadratic,
//! prompts far too large for the context, and a tokenizer that does not match the embedding.
//!
//! Every case runs the binary under a 4 GB address-space limit (`ulimit -v`) and a generous
//! hang guard, and asserts the documented exit code (3 invalid model file, 4 input that does
//! not fit), a message naming the problem, no panic and no signal. The hostile GGUF files are
//! the default model with its tokenizer metadata rewritten, generated here.

use bitnet_gguf::{GgufFile, GgufWriter, MetadataValue};
use bitnet_models::gguf_load::{vocab_from_gguf, vocab_to_metadata};
use bitnet_tokenizers::{token_type, GgufVocab};
#[path = "support/run.rs"]
mod run;

use run::Out;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/bitnet-b1.58-kjv-i2_s.gguf"
);
/// Address space allowed to the binary, in KiB (as `ulimit -v` takes it).
const MEMORY_LIMIT_KIB: u64 = 4_000_000;
/// Far beyond any of these runs (each takes well under a second when it works): only a hang
/// gets here.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// Runs `bitnet args...` under the memory limit, feeding `stdin`, killing it at the hang guard.
fn bitnet(args: &[&str], stdin: &[u8]) -> Out {
    run::finish(
        run::command(args, Some(MEMORY_LIMIT_KIB)),
        Some(stdin),
        HANG_GUARD,
    )
}

/// The exit code, every part in stderr, no panic, no signal (a signal leaves no code).
fn assert_exit(o: &Out, code: i32, stderr_parts: &[&str]) {
    assert_eq!(o.code, Some(code), "{o:?}");
    for p in stderr_parts {
        assert!(o.stderr.contains(p), "stderr should mention {p:?}: {o:?}");
    }
    assert!(!o.stderr.contains("panicked"), "{o:?}");
}

/// The default model with its tokenizer replaced by `edit(vocab)`.
fn model_with_vocab(dir: &Path, name: &str, edit: impl FnOnce(&mut GgufVocab)) -> PathBuf {
    let f = GgufFile::open(Path::new(DEFAULT_MODEL)).expect("default model");
    let mut vocab = vocab_from_gguf(&f).expect("default vocab");
    edit(&mut vocab);
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if !k.starts_with("tokenizer.") {
            w.add_metadata(k.clone(), v.clone()).expect("metadata");
        }
    }
    for (k, v) in vocab_to_metadata(&vocab) {
        w.add_metadata(k, v).expect("tokenizer metadata");
    }
    for t in f.tensors() {
        w.add_tensor_storage(t.name.clone(), t.dims.clone(), t.ty, f.tensor_data(t))
            .expect("tensor");
    }
    let path = dir.join(name);
    w.write_file(&path).expect("write");
    path
}

fn model_with_template(dir: &Path, name: &str, template: &str) -> PathBuf {
    model_with_vocab(dir, name, |v| v.chat_template = Some(template.into()))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

// ---- 1. chat templates ----

/// (file name, template, what the error says)
const TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "tojson-indent-2-63.gguf",
        "{{ messages | tojson(indent=9223372036854775808) }}",
        "tojson",
    ),
    (
        "tojson-indent-1e9.gguf",
        "{{ messages | tojson(indent=1e9) }}",
        "tojson",
    ),
    (
        "nested-ranges.gguf",
        "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}\
         {% endfor %}{% endfor %}{% endfor %}",
        "fuel",
    ),
    (
        "string-doubling.gguf",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}\
         {% endfor %}{{ ns.s }}",
        "fuel",
    ),
    (
        "85-mb-render.gguf",
        "{% for i in range(100000) %}{{ 'x' * 850 }}{% endfor %}",
        "renders more than",
    ),
];

#[test]
fn hostile_chat_templates_are_exit_3_at_chat_and_harmless_without() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, template, why) in TEMPLATES {
        let m = model_with_template(dir.path(), name, template);
        // `chat` refuses before the first prompt.
        let o = bitnet(&["chat", "-q", "-m", s(&m)], b"hi\n/exit\n");
        assert_exit(&o, 3, &["invalid chat template", why]);
        assert!(!o.stdout.contains('>'), "{name}: no prompt shown: {o:?}");
        // So does `run --chat-template`.
        let o = bitnet(
            &[
                "run",
                "-q",
                "--chat-template",
                "-n",
                "1",
                "-p",
                "hi",
                "-m",
                s(&m),
            ],
            b"",
        );
        assert_exit(&o, 3, &["invalid chat template", why]);
        // Without the template the model runs, with a warning said at load.
        let o = bitnet(&["run", "-q", "-n", "2", "-p", "In the", "-m", s(&m)], b"");
        assert_exit(&o, 0, &["warning", "chat template", why]);
    }
}

#[test]
fn template_that_hangs_only_on_later_turns_fails_at_that_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model_with_template(
        dir.path(),
        "later-turns.gguf",
        "{% if messages | length > 2 %}{% for a in range(100000) %}{% for b in range(100000) %}\
         {% endfor %}{% endfor %}{% endif %}{{ bos_token }}User: {{ messages[-1].content }}<|eot_id|>Assistant: ",
    );
    let o = bitnet(
        &["chat", "-q", "--temp", "0", "-n", "4", "-m", s(&m)],
        b"In the beginning\nAnd then\n",
    );
    assert_exit(&o, 3, &["invalid chat template", "fuel"]);
    // The first turn was answered.
    assert!(o.stdout.matches('>').count() >= 2, "{o:?}");
}

// ---- 2. SentencePiece merges ----

#[test]
fn vocabulary_of_every_split_of_a_long_run_is_exit_3() {
    // Issue 13: a 17 MB GGUF whose SentencePiece vocabulary holds every 'a' * 1..n needed
    // 3.9 GB to rebuild merges. 3 specials + 256 bytes + 3837 runs = the model's 4096 rows.
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model_with_vocab(dir.path(), "every-split.gguf", |v| {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut types = vec![
            token_type::UNKNOWN,
            token_type::CONTROL,
            token_type::CONTROL,
        ];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        types.extend([token_type::BYTE; 256]);
        for n in 1..=3837 {
            tokens.push("a".repeat(n));
            types.push(token_type::NORMAL);
        }
        *v = GgufVocab {
            model: "llama".into(),
            scores: Some((0..tokens.len()).map(|i| -(i as f32)).collect()),
            tokens,
            token_types: Some(types),
            bos_id: Some(1),
            eos_id: Some(2),
            ..GgufVocab::default()
        };
    });
    // 16 MB in all: 7 MB of vocabulary on the 9 MB model.
    assert!(std::fs::metadata(&m).expect("written").len() > 15 << 20);
    for args in [
        &["run", "-q", "-n", "1", "-m", s(&m)][..],
        &["tokenize", "-m", s(&m), "aaaa"][..],
    ] {
        let o = bitnet(args, b"");
        assert_exit(&o, 3, &["merges", "every-split.gguf"]);
    }
}

// ---- 4. prompts too large for the context ----

#[test]
fn prompt_files_too_large_for_the_context_are_exit_4_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Issue 13: 50 MB took 6 GB and 28 s to tokenize (and aborted under 4 GB).
    let big = dir.path().join("50mb.txt");
    let mut f = std::fs::File::create(&big).expect("create");
    let line = "In the beginning God created the heaven and the earth.\n".repeat(1000);
    while f.metadata().expect("size").len() < 50 << 20 {
        f.write_all(line.as_bytes()).expect("write");
    }
    drop(f);
    for args in [
        &["run", "-q", "-n", "1", "-f", s(&big)][..],
        &["run", "-q", "-n", "1", "--chat-template", "-f", s(&big)][..],
        // A file with no end reads no further than the bound.
        &["run", "-q", "-n", "1", "-f", "/dev/zero"][..],
    ] {
        let o = bitnet(args, b"");
        assert_exit(&o, 4, &["too large for the context", "1024 tokens"]);
        assert!(o.stdout.is_empty(), "nothing echoed: {o:?}");
    }
    // A prompt on the command line, against a small context.
    let prompt = "In the beginning ".repeat(5000);
    let o = bitnet(&["run", "-q", "-n", "1", "-c", "32", "-p", &prompt], b"");
    assert_exit(&o, 4, &["too large for the context", "32 tokens"]);
}

#[test]
fn a_chat_line_too_large_for_the_context_is_refused_and_the_chat_goes_on() {
    let mut input = "In the beginning ".repeat(3 << 20).into_bytes();
    input.extend_from_slice(b"\nIn the beginning\n/exit\n");
    let o = bitnet(&["chat", "-q", "--temp", "0", "-n", "4"], &input);
    assert_exit(&o, 0, &["too large for the context", "not sent"]);
    // Three prompts shown: the refused line, the next one (answered), and /exit.
    assert_eq!(o.stdout.matches("> ").count(), 3, "{o:?}");
}

// ---- 9. tokenizer against the embedding ----

#[test]
fn tokenizer_not_matching_the_embedding_is_exit_3_naming_both_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Issue 13: a 1000-token tokenizer on 4096 rows failed mid-generation after printing.
    let small = model_with_vocab(dir.path(), "1000-tokens.gguf", |v| {
        v.tokens.truncate(1000);
    });
    let large = model_with_vocab(dir.path(), "4100-tokens.gguf", |v| {
        for i in 0..4 {
            v.tokens.push(format!("extra{i}"));
        }
        if let Some(t) = v.token_types.as_mut() {
            t.extend([token_type::NORMAL; 4]);
        }
    });
    for (m, n) in [(&small, "1000"), (&large, "4100")] {
        for args in [
            &["run", "-q", "-n", "8", "-m", s(m)][..],
            &["serve", "-q", "--port", "0", "-m", s(m)][..],
        ] {
            let o = bitnet(args, b"");
            assert_exit(&o, 3, &[n, "4096", "embedding"]);
            assert!(o.stdout.is_empty(), "{o:?}");
        }
    }
    // A tokenizer a little smaller than the rows (padding) runs, and never yields ids past it.
    let padded = model_with_vocab(dir.path(), "4000-tokens.gguf", |v| {
        v.tokens.truncate(4000);
    });
    let o = bitnet(
        &[
            "run",
            "-q",
            "--temp",
            "3",
            "--top-k",
            "0",
            "--top-p",
            "1",
            "--min-p",
            "0",
            "--seed",
            "7",
            "-n",
            "300",
            "--ignore-eos",
            "-m",
            s(&padded),
        ],
        b"",
    );
    assert_exit(&o, 0, &[]);
}

#[test]
fn metadata_value_helpers_are_what_the_loader_reads() {
    // The rewriting above relies on `vocab_to_metadata` mirroring `vocab_from_gguf`; an
    // unchanged rewrite must give the same vocabulary, template included.
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model_with_vocab(dir.path(), "same.gguf", |_| {});
    let a =
        vocab_from_gguf(&GgufFile::open(Path::new(DEFAULT_MODEL)).expect("open")).expect("vocab");
    let b = vocab_from_gguf(&GgufFile::open(&m).expect("open")).expect("vocab");
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.chat_template, b.chat_template);
    assert!(matches!(
        GgufFile::open(&m)
            .expect("open")
            .get("tokenizer.ggml.model"),
        Some(MetadataValue::String(_))
    ));
}

// ---- fuzz seeds ----

/// A GGUF holding only tokenizer metadata: what the `tokenizer_gguf` fuzz target reads.
fn tokenizer_only_gguf(vocab: &GgufVocab) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in vocab_to_metadata(vocab) {
        w.add_metadata(k, v).expect("metadata");
    }
    let mut out = Vec::new();
    w.write_to(&mut out).expect("write to memory");
    out
}

/// "every split of a run" in small: 3 specials, 256 bytes, then 'a' * 1..=n.
fn every_split_vocab(n: usize) -> GgufVocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![
        token_type::UNKNOWN,
        token_type::CONTROL,
        token_type::CONTROL,
    ];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([token_type::BYTE; 256]);
    tokens.extend((1..=n).map(|k| "a".repeat(k)));
    types.extend(std::iter::repeat_n(token_type::NORMAL, n));
    GgufVocab {
        model: "llama".into(),
        scores: Some((0..tokens.len()).map(|i| -(i as f32)).collect()),
        tokens,
        token_types: Some(types),
        bos_id: Some(1),
        eos_id: Some(2),
        ..GgufVocab::default()
    }
}

/// The seed corpora of the fuzz targets `chat_template` and `tokenizer_gguf` (fuzz/README.md),
/// made from this file's cases, small enough to mutate quickly. They go to
/// `$BITNET_FUZZ_SEEDS/<target>/` when that is set (fuzz/README.md shows how); either way each
/// seed is checked to reach the code it is meant for.
#[test]
fn fuzz_seeds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = std::env::var_os("BITNET_FUZZ_SEEDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let (templates, tokenizers) = (root.join("chat_template"), root.join("tokenizer_gguf"));
    std::fs::create_dir_all(&templates).expect("mkdir");
    std::fs::create_dir_all(&tokenizers).expect("mkdir");

    let kjv = vocab_from_gguf(&GgufFile::open(Path::new(DEFAULT_MODEL)).expect("open"))
        .expect("default vocab");
    let kjv_template = kjv
        .chat_template
        .clone()
        .expect("the default model has a template");
    let mut all_templates: Vec<(String, String)> = TEMPLATES
        .iter()
        .map(|(name, t, _)| (name.trim_end_matches(".gguf").to_string(), t.to_string()))
        .collect();
    all_templates.push(("kjv".into(), kjv_template));
    all_templates.push((
        "llama3-tojson".into(),
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n\
         {{ m['content'] | trim }}<|eot_id|>{% endfor %}{{ messages | tojson(indent=2) }}\
         {% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
            .into(),
    ));
    for (name, t) in &all_templates {
        let seed = format!("{t}\0Who is the Lord?\0The LORD is my shepherd.");
        std::fs::write(templates.join(name), seed).expect("write seed");
    }

    let small = bitnet_models::fixture::synthetic_vocab(300);
    let mut seeds: Vec<(String, GgufVocab)> = vec![
        ("kjv".into(), kjv),
        ("synthetic-300".into(), small.clone()),
        ("every-split-500".into(), every_split_vocab(500)),
        ("every-split-40".into(), every_split_vocab(40)),
    ];
    for (name, t) in &all_templates {
        seeds.push((
            format!("synthetic-300-{name}"),
            GgufVocab {
                chat_template: Some(t.clone()),
                ..small.clone()
            },
        ));
    }
    for (name, vocab) in &seeds {
        let bytes = tokenizer_only_gguf(vocab);
        assert!(bytes.len() < 256 << 10, "{name}: {} bytes", bytes.len());
        let file = GgufFile::from_storage(bitnet_gguf::Storage::from_vec(bytes.clone()))
            .expect("seed parses");
        let back = vocab_from_gguf(&file).expect("seed has a tokenizer");
        assert_eq!(back.tokens, vocab.tokens, "{name}");
        std::fs::write(tokenizers.join(name), bytes).expect("write seed");
    }
    // The scaled-down every-split vocabulary is still refused; the smallest still builds.
    assert!(bitnet_tokenizers::Tokenizer::from_gguf_vocab(&every_split_vocab(500)).is_err());
    assert!(bitnet_tokenizers::Tokenizer::from_gguf_vocab(&every_split_vocab(40)).is_ok());
}
