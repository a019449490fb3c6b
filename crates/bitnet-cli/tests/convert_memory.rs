//! `bitnet convert` holds about one tensor at a time, not the model. Alone in its test binary:
//! a child's peak RSS as `wait4` reports it starts from the parent's high-water mark (Linux
//! carries it across fork and exec), so the parent must stay small, which a second test in the
//! same process could spoil. For the same reason the input is generated lazily, one tensor at a
//! time, never held whole here.

use bitnet_kernels::{DenseMatrix, DenseType, TernaryMatrix};
use bitnet_models::export::{write_gguf_from, DenseFormat, ExportOptions, TernaryFormat};
use bitnet_models::{fixture, Arch, ModelConfig, ModelError, Role, TensorSource};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Deterministic weights made on demand: ternary codes in a fixed pattern, a small embedding.
struct Generated;

impl TensorSource for Generated {
    fn has(&self, role: Role) -> bool {
        role != Role::Output
    }
    fn dense(&self, _: Role, rows: usize, cols: usize) -> Result<DenseMatrix, ModelError> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i % 97) as f32 - 48.0) / 1000.0)
            .collect();
        let bytes = bitnet_quantization::float::f32_to_f16_bytes(&v);
        Ok(DenseMatrix::new(
            rows,
            cols,
            DenseType::F16,
            bitnet_gguf::Storage::from_vec(bytes),
        )?)
    }
    fn vector(&self, _: Role, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(vec![1.0; len])
    }
    fn ternary(&self, _: Role, rows: usize, cols: usize) -> Result<TernaryMatrix, ModelError> {
        let codes: Vec<i8> = (0..rows * cols).map(|i| (i % 3) as i8 - 1).collect();
        Ok(TernaryMatrix::from_codes(rows, cols, &codes, 0.02)?)
    }
}

/// Runs `c` to completion (killed after `limit`) and returns its exit status and peak resident
/// set in bytes, from `wait4` on that one child.
// The child is reaped by wait4 below, which std's wait() cannot stand in for: only wait4
// returns the child's own rusage.
#[allow(clippy::zombie_processes)]
fn run_measured(c: &mut Command, limit: Duration) -> (i32, u64) {
    let child = c.spawn().expect("bitnet starts");
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value (plain integers).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own unreaped child; the pointers are to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            // Linux reports ru_maxrss in KiB.
            return (code, usage.ru_maxrss as u64 * 1024);
        }
        if start.elapsed() > limit {
            // SAFETY: signalling our own child, not yet reaped, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A ~200 MB model (64 layers of 1024/2816 in TQ2_0, an 8192 x 1024 f16 embedding) converted
/// to I2_S must peak under half its size. Holding the model, as convert did before streaming
/// (about 3x the file), cannot pass; streaming peaks near the binary itself plus one 3 MB
/// tensor and 4 MB pieces of the embedding, well under the bound.
#[test]
fn convert_peak_memory_stays_far_below_the_model_size() {
    let mut config: ModelConfig = fixture::config_2b4t(Arch::Bitnet);
    config.hidden_size = 1024;
    config.intermediate_size = 2816;
    config.num_heads = 16;
    config.num_kv_heads = 4;
    config.head_dim = 64;
    config.vocab_size = 8192;
    config.num_layers = 64;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mid.gguf");
    let opts = ExportOptions {
        ternary: TernaryFormat::Tq2_0,
        dense: DenseFormat::F16,
        name: "mid".into(),
    };
    let vocab = fixture::synthetic_vocab(config.vocab_size);
    write_gguf_from(&Generated, &config, &vocab, &opts, &input, &mut |_, _| {}).unwrap();
    let size = std::fs::metadata(&input).unwrap().len();
    assert!(size > 180 << 20, "the model is {size} bytes");
    let output = dir.path().join("out.gguf");
    let log_path = dir.path().join("stderr.txt");
    let (code, peak) = run_measured(
        Command::new(env!("CARGO_BIN_EXE_bitnet"))
            .arg("convert")
            .arg(&input)
            .arg(&output)
            .args(["--type", "i2_s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap()),
        Duration::from_secs(300),
    );
    let stderr = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(code, 0, "{stderr}");
    eprintln!(
        "convert peaked at {} MiB for a {} MiB model",
        peak >> 20,
        size >> 20
    );
    assert!(
        peak < size / 2,
        "convert peaked at {} MiB for a {} MiB model",
        peak >> 20,
        size >> 20
    );
    let f = bitnet_gguf::GgufFile::open(Path::new(&output)).unwrap();
    assert_eq!(f.tensors().len(), 2 + 11 * config.num_layers);
    let q = f.tensor("blk.63.attn_q.weight").unwrap();
    assert_eq!(q.ty, bitnet_gguf::GgmlType::I2S);
}
