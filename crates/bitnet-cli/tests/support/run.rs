//! Running the `bitnet` binary from the CLI tests: from the workspace root (where the default
//! model's relative path resolves), without any `BITNET_*` variable of the caller's, optionally
//! under an address-space limit, and always under a kill timer so a hang fails the test instead
//! of stalling CI.

#![allow(dead_code)] // each test binary uses its own part of this

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Out {
    /// `None`: ended by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ends of long outputs: where a failure shows.
        let tail = |s: &str| {
            let start = s.char_indices().rev().nth(2000).map_or(0, |(i, _)| i);
            s[start..].to_string()
        };
        write!(
            f,
            "exit {:?}\n--- stdout (end)\n{}\n--- stderr (end)\n{}",
            self.code,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `bitnet ARGS` ready to spawn: stdout and stderr piped, stdin empty; with `ulimit_v_kib`,
/// run through `sh` under that `ulimit -v`.
pub fn command<S: AsRef<OsStr>>(args: &[S], ulimit_v_kib: Option<u64>) -> Command {
    let mut c = match ulimit_v_kib {
        Some(kib) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_bitnet"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_bitnet")),
    };
    c.args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BITNET_") {
            c.env_remove(k);
        }
    }
    c
}

/// Spawns `c`, feeds it `stdin` (if any) and collects its output; see [`wait`].
pub fn finish(mut c: Command, stdin: Option<&[u8]>, guard: Duration) -> Out {
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().expect("bitnet starts");
    let writer = stdin.map(|bytes| {
        let mut input = child.stdin.take().expect("piped stdin");
        let data = bytes.to_vec();
        // On a thread: the child may exit (or stop reading) before taking all of it.
        std::thread::spawn(move || {
            let _ = input.write_all(&data);
        })
    });
    let out = wait(child, guard);
    if let Some(w) = writer {
        let _ = w.join();
    }
    out
}

/// Waits for `child` (stdout and stderr piped), killing it and failing the test if it outlives
/// `guard`: a watchdog for hangs, far beyond any run's normal time, never a speed test.
pub fn wait(mut child: Child, guard: Duration) -> Out {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for bitnet") {
            break s;
        }
        if start.elapsed() > guard {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bitnet still running after {guard:?}: a hang (killed)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}
