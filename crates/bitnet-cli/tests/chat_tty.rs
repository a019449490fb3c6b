//! `bitnet chat` as a person uses it (issue 12, item 3): on a pseudo-terminal, with line
//! editing, history, colours and Ctrl-C; from a pipe, plain text; and a conversation that
//! outgrows its context. Every child runs under a deadline and is killed when a test ends.
//!
//! The pseudo-terminal is opened with libc's `openpty` (already a dependency) rather than a
//! pty crate: the child only needs the terminal as its stdin/stdout and controlling tty.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Long enough for a loaded CI machine; a passing run takes seconds.
const DEADLINE: Duration = Duration::from_secs(120);

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary in the workspace root with a clean environment for what chat reads: no
/// BITNET_* settings, history under `state`, a terminal type rustyline can drive.
fn bitnet(args: &[&str], state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    c.current_dir(workspace_root()).args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BITNET_") {
            c.env_remove(k);
        }
    }
    c.env("XDG_STATE_HOME", state)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR");
    c
}

/// Bytes a reader thread collects.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn collect(&self, mut from: impl Read + Send + 'static) {
        let sink = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // A pty master reads EIO once the child side is closed: that is the end too.
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.0.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
    }

    fn text(&self) -> String {
        self.text_from(0)
    }

    fn text_from(&self, from: usize) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()[from..]).into_owned()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Terminal output as a person reads it: escape sequences and carriage returns removed.
fn visible(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // A CSI sequence ends with a byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// `bitnet chat` on a pseudo-terminal (stdin, stdout and controlling tty), stderr on a pipe;
/// or all on pipes, with `master` None.
struct Tty {
    master: Option<std::fs::File>,
    /// Where on stdout the output that answers the last input starts.
    mark: usize,
    child: Child,
    out: Sink,
    err: Sink,
}

impl Tty {
    fn spawn(mut cmd: Command) -> Tty {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors into the given ints; the name and termios
        // pointers may be null, and `size` outlives the call.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // NOFLSH: without it the line discipline discards, when Ctrl-C arrives, the output the
        // master has not read yet (a pty's flush_buffer empties the master side), so text the
        // chat printed just before the key could vanish from what this test reads while the
        // chat rightly keeps it as shown. A terminal emulator reads as it comes; this reader
        // may lag on a loaded machine.
        // SAFETY: `t` is a plain C struct filled by tcgetattr before it is read; `slave` is the
        // open descriptor just returned.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(slave, &mut t), 0, "tcgetattr");
            t.c_lflag |= libc::NOFLSH;
            assert_eq!(libc::tcsetattr(slave, libc::TCSANOW, &t), 0, "tcsetattr");
        }
        // SAFETY: both descriptors were just opened and are owned by nothing else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::piped());
        // SAFETY: setsid and ioctl are async-signal-safe; nothing is allocated in the child.
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own with the pty as controlling terminal, so that Ctrl-C
                // typed into it raises SIGINT in the chat.
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("bitnet chat starts");
        // The parent's copy closed, the master reads EIO once the child is gone.
        drop(slave);
        let master = std::fs::File::from(master);
        let (out, err) = (Sink::default(), Sink::default());
        out.collect(master.try_clone().unwrap());
        err.collect(child.stderr.take().unwrap());
        Tty {
            master: Some(master),
            mark: 0,
            child,
            out,
            err,
        }
    }

    /// The same on pipes; stdin is returned to write to.
    fn piped(mut cmd: Command) -> (Tty, std::process::ChildStdin) {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bitnet chat starts");
        let (out, err) = (Sink::default(), Sink::default());
        out.collect(child.stdout.take().unwrap());
        err.collect(child.stderr.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        let t = Tty {
            master: None,
            mark: 0,
            child,
            out,
            err,
        };
        (t, stdin)
    }

    /// Output from here on answers what is sent next (waits look only at that).
    fn mark(&mut self) {
        self.mark = self.out.len();
    }

    fn send(&mut self, keys: &str) {
        self.mark();
        let master = self.master.as_mut().expect("a terminal");
        master.write_all(keys.as_bytes()).unwrap();
        master.flush().unwrap();
    }

    /// Waits until `done` holds for (stdout as shown since the mark, stderr), failing after
    /// the deadline.
    fn wait_for(&mut self, what: &str, done: impl Fn(&str, &str) -> bool) {
        let t = Instant::now();
        loop {
            let (out, err) = (visible(&self.out.text_from(self.mark)), self.err.text());
            if done(&out, &err) {
                return;
            }
            if t.elapsed() > DEADLINE {
                panic!("waited {DEADLINE:?} for {what}\n--- stdout\n{out}\n--- stderr\n{err}");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                let (out, err) = (visible(&self.out.text()), self.err.text());
                panic!("chat ended ({status}) waiting for {what}\n--- stdout\n{out}\n--- stderr\n{err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the `n`th line on stderr containing `needle`.
    fn wait_stderr(&mut self, needle: &str, n: usize) {
        self.wait_for(needle, |_, e| e.matches(needle).count() >= n);
    }

    /// Waits for the input prompt: stdout as shown since the mark ends with `> ` (a redraw
    /// of the line being edited ends with what is typed).
    fn wait_prompt(&mut self) {
        self.wait_for("the prompt", |o, _| o.ends_with("> "));
    }

    fn wait_exit(&mut self) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                t.elapsed() < DEADLINE,
                "chat did not exit\n--- stdout\n{}\n--- stderr\n{}",
                visible(&self.out.text()),
                self.err.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn messages(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("saved JSON parses");
    v.as_array()
        .expect("an array of messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const LEFT: &str = "\x1b[D";
const UP: &str = "\x1b[A";
const CTRL_C: &str = "\x03";
const CTRL_D: &str = "\x04";

/// One session through everything a person does: edit a line, watch the answer stream in
/// colour, stop it with Ctrl-C, /help (completed with Tab), /save, clear a typed line with Ctrl-C, recall a
/// message with the up arrow, /reset, and leave with Ctrl-D (exit 0), the history on disk.
#[test]
fn terminal_chat_edits_streams_stops_saves_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (first, second) = (
        dir.path().join("first.json"),
        dir.path().join("second.json"),
    );
    // A large -n and context: the greedy answer runs on until stopped.
    let mut t = Tty::spawn(bitnet(
        &[
            "chat",
            "--temp",
            "0",
            "-n",
            "100000",
            "-c",
            "4096",
            "--system",
            "Answer briefly.",
        ],
        &state,
    ));
    t.wait_prompt();
    // Line editing: the cursor moved back over "Lord?" and "the " inserted there.
    t.send(&format!("Who is Lord?{}the \r", LEFT.repeat(5)));
    t.wait_for("the answer streaming", |o, _| {
        o.split_once("Who is the Lord?\n")
            .is_some_and(|(_, answer)| answer.trim().len() > 40)
    });
    let raw = t.out.text();
    assert!(raw.contains("\x1b[36m"), "the answer is coloured: {raw:?}");
    assert!(
        raw.contains("\x1b[1;32m> "),
        "the prompt is coloured: {raw:?}"
    );
    t.send(CTRL_C);
    t.wait_stderr("Cancelled]", 1);
    t.wait_prompt();

    // Tab completes a command name.
    t.send("/he\t\r");
    t.wait_for("the help", |o, _| {
        o.contains("/save FILE") && o.ends_with("> ")
    });
    t.send(&format!("/save {}\r", first.display()));
    t.wait_stderr("[saved 3 messages", 1);
    let saved = messages(&first);
    assert_eq!(saved[0], ("system".into(), "Answer briefly.".into()));
    assert_eq!(saved[1], ("user".into(), "Who is the Lord?".into()));
    assert_eq!(saved[2].0, "assistant");
    assert!(
        // The terminal echoes ^C where the key came, maybe between two pieces of text.
        !saved[2].1.is_empty()
            && visible(&t.out.text())
                .replace("^C", "")
                .contains(&saved[2].1),
        "the stopped answer stays as shown: {saved:?}"
    );

    // Ctrl-C with text on the line clears it and the chat goes on.
    t.send("never sent");
    t.wait_for("the typed text", |o, _| o.ends_with("never sent"));
    t.send(CTRL_C);
    t.wait_prompt();
    // Three entries back: the message (then /help, /save). Sent again, its answer stopped
    // again: the KV cache after the first stop is reused without error.
    t.send(&format!("{}\r", UP.repeat(3)));
    t.wait_for("the second answer", |o, _| {
        o.split_once("Who is the Lord?\n")
            .is_some_and(|(_, answer)| answer.trim().len() > 40)
    });
    t.send(CTRL_C);
    t.wait_stderr("Cancelled]", 2);
    t.wait_prompt();
    t.send(&format!("/save {}\r", second.display()));
    t.wait_stderr("[saved 5 messages", 1);
    let saved = messages(&second);
    assert_eq!(saved[3], ("user".into(), "Who is the Lord?".into()));

    t.send("/reset\r");
    t.wait_stderr("[conversation cleared]", 1);
    t.wait_prompt();
    t.send(&format!("/save {}\r", second.display()));
    t.wait_stderr("[saved 1 message to", 1);
    assert_eq!(
        messages(&second),
        [("system".into(), "Answer briefly.".into())]
    );
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0, "{}", t.err.text());
    assert!(!t.err.text().contains("error"), "{}", t.err.text());

    let history = state.join("bitnet/chat_history");
    let lines = std::fs::read_to_string(&history).expect("history file written");
    assert!(lines.contains("Who is the Lord?"), "{lines}");
    assert!(!lines.contains("never sent"), "{lines}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&history).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "history readable by others: {mode:o}");
}

/// Ctrl-C at an empty prompt leaves with exit code 0; NO_COLOR turns colours off on a
/// terminal; --no-history writes no file.
#[test]
fn terminal_ctrl_c_at_an_empty_prompt_exits_0_and_no_color_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bitnet(
        &["chat", "--temp", "0", "-n", "8", "--no-history"],
        dir.path(),
    );
    cmd.env("NO_COLOR", "1");
    let mut t = Tty::spawn(cmd);
    t.wait_prompt();
    t.send("Who is the Lord?\r");
    t.wait_stderr("tokens/s", 1);
    t.wait_prompt();
    t.send(CTRL_C);
    assert_eq!(t.wait_exit(), 0, "{}", t.err.text());
    let raw = t.out.text();
    assert!(
        !raw.contains("\x1b[36m") && !raw.contains("\x1b[1;32m"),
        "{raw:?}"
    );
    assert!(
        !dir.path().join("bitnet").exists(),
        "--no-history wrote a history"
    );
}

/// Two Ctrl-C in a row while an answer streams end the chat with exit code 0.
#[test]
fn terminal_second_ctrl_c_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tty::spawn(bitnet(
        &["chat", "-q", "--temp", "0", "-n", "100000", "-c", "4096"],
        dir.path(),
    ));
    t.wait_prompt();
    t.send("Who is the Lord?\r");
    t.wait_for("the answer streaming", |o, _| o.len() > 60);
    t.send(CTRL_C);
    // Apart, so that the two signals are not merged into one.
    std::thread::sleep(Duration::from_millis(50));
    t.send(CTRL_C);
    assert_eq!(t.wait_exit(), 0, "{}", t.err.text());
}

/// Something other than a file where the history goes (a FIFO would block on open) is
/// named and skipped; the chat works with its history in memory.
#[test]
fn a_history_path_that_is_not_a_file_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("bitnet/chat_history");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let mut t = Tty::spawn(bitnet(
        &["chat", "-q", "--temp", "0", "-n", "4"],
        dir.path(),
    ));
    t.wait_prompt();
    t.send("Who is the Lord?\r");
    t.wait_for("the answer", |o, _| o.ends_with("> ") && o.len() > 20);
    // Recalled from the in-memory history.
    t.send(&format!("{UP}\r"));
    t.wait_for("the second answer", |o, _| {
        o.contains("Who is the Lord?\n") && o.ends_with("> ")
    });
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0);
    assert!(
        t.err.text().contains("chat history kept in memory"),
        "{}",
        t.err.text()
    );
}

/// A piped chat under a deadline: stdin written, then (stdout, stderr, exit code).
fn piped(args: &[&str], input: &str) -> (String, String, i32) {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, mut stdin) = Tty::piped(bitnet(args, dir.path()));
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let code = t.wait_exit();
    // The readers finish at EOF, just after the exit.
    std::thread::sleep(Duration::from_millis(100));
    (t.out.text(), t.err.text(), code)
}

/// From a pipe (TERM set, NO_COLOR unset): plain prompts and text, no escape codes; lines
/// joined with `\` and `"""`; `//` sends a slash; an unknown command is a hint; /save
/// refuses a device.
#[test]
fn piped_chat_is_plain_text_with_multi_line_messages_and_commands() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("chat.json");
    let input = format!(
        "Who is \\\nthe Lord?\n\"\"\"\nIn the beginning\n\nwas the Word\n\"\"\"\n//x\n/nope\n/save\n/save /dev/null\n/save {}\n/exit\n",
        save.display()
    );
    let (out, err, code) = piped(&["chat", "--temp", "0", "-n", "4"], &input);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b'), "escape codes on a pipe: {out:?}");
    // Prompts: one continuation in the first message and four in the block; a main prompt
    // before each message and command.
    assert_eq!(out.matches("... ").count(), 5, "{out:?}");
    assert_eq!(out.matches("> ").count(), 8, "{out:?}");
    assert!(err.contains("unknown command /nope; /help"), "{err}");
    assert!(err.contains("usage: /save FILE"), "{err}");
    // The safe output writer refuses a device, and the chat goes on.
    assert!(err.contains("/dev/null is a character device"), "{err}");
    let users: Vec<String> = messages(&save)
        .into_iter()
        .filter(|(r, _)| r == "user")
        .map(|(_, c)| c)
        .collect();
    assert_eq!(
        users,
        [
            "Who is \nthe Lord?",
            "In the beginning\n\nwas the Word",
            "/x"
        ]
    );
}

/// Ctrl-C (SIGINT) from outside while a piped chat answers stops the answer; the next
/// message is answered; a SIGINT while it waits for input ends it with exit code 0.
#[test]
fn sigint_stops_a_piped_answer_and_ends_an_idle_chat() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, mut stdin) = Tty::piped(bitnet(
        &["chat", "--temp", "0", "-n", "100000", "-c", "4096"],
        dir.path(),
    ));
    let pid = t.child.id() as libc::pid_t;
    let sigint = || {
        // SAFETY: kill has no memory effects; the child is ours and not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    };
    t.wait_prompt();
    t.mark();
    stdin.write_all(b"Who is the Lord?\n").unwrap();
    t.wait_for("the answer streaming", |o, _| o.len() > 40);
    sigint();
    t.wait_stderr("Cancelled]", 1);
    t.wait_prompt();
    t.mark();
    stdin.write_all(b"And who is Moses?\n").unwrap();
    t.wait_for("the second answer", |o, _| o.len() > 40);
    sigint();
    t.wait_stderr("Cancelled]", 2);
    t.wait_prompt();
    sigint();
    assert_eq!(t.wait_exit(), 0, "{}", t.err.text());
    assert!(!t.err.text().contains("error"), "{}", t.err.text());
}

/// A small context and several turns: the oldest turns leave (said once per shift on
/// stderr) and the chat goes on; an answer that reaches the end of the context stops there
/// and the next turn shifts. /save still has every message.
#[test]
fn a_full_context_drops_the_oldest_turns_and_the_chat_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("chat.json");
    let questions = [
        "Who is the Lord?",
        "And who is Moses?",
        "What did Abraham do?",
        "Where is Jerusalem?",
        "Who was David?",
        "What is the law?",
    ];
    let mut input: String = questions.iter().map(|q| format!("{q}\n")).collect();
    input.push_str(&format!("/save {}\n/exit\n", save.display()));
    let (out, err, code) = piped(
        &[
            "chat",
            "--temp",
            "0",
            "-n",
            "24",
            "-c",
            "128",
            "--system",
            "Answer briefly.",
        ],
        &input,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("[context full: dropped "), "{err}");
    assert!(!err.contains("not sent"), "{err}");
    assert_eq!(out.matches("> ").count(), questions.len() + 2, "{out}");
    let saved = messages(&save);
    assert_eq!(saved.len(), 1 + 2 * questions.len(), "{saved:?}");
    assert_eq!(saved[0].1, "Answer briefly.");
    for (i, q) in questions.iter().enumerate() {
        assert_eq!(saved[1 + 2 * i], ("user".into(), q.to_string()));
        assert!(
            !saved[2 + 2 * i].1.is_empty(),
            "answer {i} empty: {saved:?}"
        );
    }

    // Every answer runs into the end of the context; each next turn drops the one before.
    let (out, err, code) = piped(
        &["chat", "--temp", "0", "-n", "1000", "-c", "64"],
        "Who is the Lord?\nAnd who is Moses?\nWhat did Abraham do?\n/exit\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("ContextFull]").count(), 3, "{err}");
    assert_eq!(
        err.matches("[context full: dropped 1 oldest turn]").count(),
        2,
        "{err}"
    );
    assert_eq!(out.matches("> ").count(), 4, "{out}");
}
