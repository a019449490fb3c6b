//! Reading what the user types: line editing and history on a terminal (rustyline), plain
//! lines from a pipe or file; lines joined into multi-line messages; `/` commands.

use anyhow::Result;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{
    Cmd, ConditionalEventHandler, Config, Editor, Event, EventContext, EventHandler, KeyEvent,
    Movement, RepeatCount,
};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// What one read gave.
pub enum Read {
    Line(String),
    /// Ctrl-C at the terminal's prompt with nothing typed.
    Interrupted,
    /// Ctrl-D, or the end of the piped input.
    Eof,
    /// A line that could not be used (said on stderr); read the next one.
    Skipped,
}

pub enum Reader {
    Terminal {
        editor: Box<Editor<Helper, DefaultHistory>>,
        history_file: Option<PathBuf>,
    },
    Plain(std::io::Stdin),
}

/// Shows the styled prompt (rustyline uses it only through a highlighter) and completes
/// command names with Tab.
pub struct Helper;

const COMMANDS: [&str; 7] = [
    "/help", "/reset", "/save ", "/exit", "/quit", "/bye", "/clear",
];

impl rustyline::completion::Completer for Helper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let typed = line.get(..pos).unwrap_or(line);
        if !typed.starts_with('/') || typed.contains(char::is_whitespace) {
            return Ok((0, Vec::new()));
        }
        let found = COMMANDS.iter().filter(|c| c.starts_with(typed));
        Ok((0, found.map(|c| c.to_string()).collect()))
    }
}
impl rustyline::hint::Hinter for Helper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Helper {}
impl rustyline::validate::Validator for Helper {}
impl rustyline::Helper for Helper {}

/// Ctrl-C with text on the line clears the line, as in a shell; on an empty line it is
/// rustyline's interrupt, which ends the chat.
struct CtrlC;

impl ConditionalEventHandler for CtrlC {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext) -> Option<Cmd> {
        (!ctx.line().is_empty()).then_some(Cmd::Kill(Movement::WholeLine))
    }
}

impl Reader {
    /// Line editing when stdin is a terminal; otherwise (and where the terminal cannot be
    /// driven) plain lines, so scripts see exactly what they send.
    pub fn new(history: bool) -> Reader {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Reader::Plain(stdin);
        }
        let config = || -> rustyline::Result<Config> {
            Ok(Config::builder()
                .max_history_size(1000)?
                .history_ignore_dups(true)?
                .auto_add_history(false)
                .build())
        };
        let mut editor = match config().and_then(Editor::with_config) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("warning: no line editing ({e}); reading plain lines");
                return Reader::Plain(stdin);
            }
        };
        editor.set_helper(Some(Helper));
        editor.bind_sequence(
            KeyEvent::ctrl('C'),
            EventHandler::Conditional(Box::new(CtrlC)),
        );
        let mut history_file = history.then(history_path).flatten();
        if let Some(p) = history_file.clone() {
            // A missing file is the first run. Something other than a file there (a FIFO
            // would block the chat on open) or an unreadable one is worth a word, not an end.
            match std::fs::metadata(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(m) if m.is_file() => {
                    if let Err(e) = editor.load_history(&p) {
                        eprintln!("warning: cannot read the chat history {}: {e}", p.display());
                    }
                }
                _ => {
                    eprintln!(
                        "warning: {} is not a readable file; chat history kept in memory",
                        p.display()
                    );
                    history_file = None;
                }
            }
        }
        Reader::Terminal {
            editor: Box::new(editor),
            history_file,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Reader::Terminal { .. })
    }

    /// Reads one line; `prompt` is shown as is, `styled` (same width) on a colour terminal.
    pub fn read(&mut self, prompt: &str, styled: &str) -> Result<Read> {
        match self {
            Reader::Terminal { editor, .. } => match editor.readline(&(prompt, styled)) {
                Ok(l) => Ok(Read::Line(l)),
                Err(ReadlineError::Interrupted) => Ok(Read::Interrupted),
                Err(ReadlineError::Eof) => Ok(Read::Eof),
                Err(e) => Err(e.into()),
            },
            Reader::Plain(stdin) => {
                let mut out = std::io::stdout();
                write!(out, "{styled}")?;
                out.flush()?;
                let mut raw = Vec::new();
                if stdin.lock().read_until(b'\n', &mut raw)? == 0 {
                    return Ok(Read::Eof);
                }
                match String::from_utf8(raw) {
                    Ok(mut l) => {
                        let end = l.trim_end_matches(['\n', '\r']).len();
                        l.truncate(end);
                        Ok(Read::Line(l))
                    }
                    Err(e) => {
                        // Say where the bad bytes came from and keep the conversation going.
                        eprintln!(
                            "stdin: this line is not valid UTF-8 (invalid byte at offset {}); line ignored",
                            e.utf8_error().valid_up_to()
                        );
                        Ok(Read::Skipped)
                    }
                }
            }
        }
    }

    /// Remembers a sent message or command for the up arrow (and the history file).
    pub fn remember(&mut self, entry: &str) {
        if let Reader::Terminal {
            editor,
            history_file,
        } = self
        {
            if matches!(editor.add_history_entry(entry), Ok(true)) {
                if let Some(p) = history_file.as_ref() {
                    // Appended at once: a chat ended by a second Ctrl-C keeps its lines too.
                    if let Err(e) = editor.append_history(p) {
                        eprintln!(
                            "warning: cannot write the chat history {}: {e}; keeping it in memory",
                            p.display()
                        );
                        *history_file = None;
                    }
                }
            }
        }
    }
}

/// `$XDG_STATE_HOME/bitnet/chat_history`, else `~/.local/state/bitnet/chat_history` (where
/// shells and REPLs keep theirs), its folder created; None where there is no home.
fn history_path() -> Option<PathBuf> {
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".local/state")
        }
    };
    // Relative values are invalid per the XDG spec; a history landing in the working
    // directory would surprise.
    if !state.is_absolute() {
        return None;
    }
    let dir = state.join("bitnet");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "warning: cannot create {} ({e}); chat history kept in memory",
            dir.display()
        );
        return None;
    }
    Some(dir.join("chat_history"))
}

/// Joins lines into one message: a line ending in `\` goes on with the next (llama.cpp's
/// convention), and a line starting with `"""` opens a block that a line ending in `"""`
/// closes (Ollama's).
#[derive(Default)]
pub struct Multiline {
    lines: Vec<String>,
    open: Option<Open>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Backslash,
    Quotes,
}

impl Multiline {
    /// True while a message is partly typed (the prompt shows it).
    pub fn pending(&self) -> bool {
        self.open.is_some()
    }

    pub fn clear(&mut self) {
        *self = Multiline::default();
    }

    /// Takes one line; the whole message once it is complete.
    pub fn push(&mut self, line: &str) -> Option<String> {
        match self.open {
            None => {
                if let Some(rest) = line.strip_prefix("\"\"\"") {
                    if let Some(body) = rest.strip_suffix("\"\"\"") {
                        return Some(body.to_string());
                    }
                    if !rest.is_empty() {
                        self.lines.push(rest.to_string());
                    }
                    self.open = Some(Open::Quotes);
                    return None;
                }
                self.backslash(line)
            }
            Some(Open::Backslash) => self.backslash(line),
            Some(Open::Quotes) => match line.strip_suffix("\"\"\"") {
                Some(last) => {
                    if !last.is_empty() {
                        self.lines.push(last.to_string());
                    }
                    Some(self.take())
                }
                None => {
                    self.lines.push(line.to_string());
                    None
                }
            },
        }
    }

    fn backslash(&mut self, line: &str) -> Option<String> {
        match line.strip_suffix('\\') {
            Some(head) => {
                self.lines.push(head.to_string());
                self.open = Some(Open::Backslash);
                None
            }
            None => {
                self.lines.push(line.to_string());
                Some(self.take())
            }
        }
    }

    fn take(&mut self) -> String {
        let text = self.lines.join("\n");
        self.clear();
        text
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Help,
    Reset,
    Save(&'a str),
    Exit,
    Unknown(&'a str),
}

pub const HELP: &str = "\
commands:
  /help           this list
  /reset          forget the conversation (the --system message stays)
  /save FILE      write the conversation as JSON [{\"role\": .., \"content\": ..}, ..]
  /exit           leave (also /quit, /bye, Ctrl-D, Ctrl-C at an empty prompt)
input:
  a line ending in \\ continues on the next line; \"\"\" opens and closes a block of lines
  //text sends a message that starts with /text
  Ctrl-C while an answer streams stops it; the part shown stays in the conversation";

/// A line that is a command, or None for a message (`//x` is the message `/x`).
pub fn command(line: &str) -> Option<Command<'_>> {
    let rest = line.strip_prefix('/')?;
    if rest.starts_with('/') {
        return None;
    }
    let (name, arg) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(n, a)| (n, a.trim()));
    Some(match name {
        "help" | "?" => Command::Help,
        "reset" | "clear" => Command::Reset,
        "save" => Command::Save(arg),
        "exit" | "quit" | "bye" => Command::Exit,
        _ => Command::Unknown(name),
    })
}

/// The message a line sends: `//x` is `/x`.
pub fn message(text: String) -> String {
    match text.strip_prefix("//") {
        Some(rest) => format!("/{rest}"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Vec<Option<String>> {
        let mut m = Multiline::default();
        lines.iter().map(|l| m.push(l)).collect()
    }

    #[test]
    fn backslash_continues_the_line() {
        assert_eq!(feed(&["one"]), [Some("one".into())]);
        assert_eq!(
            feed(&["one \\", "two\\", "three"]),
            [None, None, Some("one \ntwo\nthree".into())]
        );
        // An empty continued line is an empty line of the message.
        assert_eq!(feed(&["\\", "x"]), [None, Some("\nx".into())]);
    }

    #[test]
    fn triple_quotes_make_a_block() {
        assert_eq!(
            feed(&["\"\"\"", "a \\", "", "b", "\"\"\""]),
            [None, None, None, None, Some("a \\\n\nb".into())]
        );
        assert_eq!(
            feed(&["\"\"\"first", "last\"\"\""]),
            [None, Some("first\nlast".into())]
        );
        assert_eq!(feed(&["\"\"\"one line\"\"\""]), [Some("one line".into())]);
        let mut m = Multiline::default();
        assert_eq!(m.push("\"\"\""), None);
        assert!(m.pending());
        m.clear();
        assert!(!m.pending());
        assert_eq!(m.push("fresh"), Some("fresh".into()));
    }

    #[test]
    fn commands_and_messages() {
        assert_eq!(command("/help"), Some(Command::Help));
        assert_eq!(command("/reset"), Some(Command::Reset));
        assert_eq!(command("/save  out.json "), Some(Command::Save("out.json")));
        assert_eq!(command("/save"), Some(Command::Save("")));
        assert_eq!(command("/bye"), Some(Command::Exit));
        assert_eq!(command("/nope x"), Some(Command::Unknown("nope")));
        assert_eq!(command("hello /help"), None);
        assert_eq!(command("//etc/passwd"), None);
        assert_eq!(message("//etc/passwd".into()), "/etc/passwd");
        assert_eq!(message("a // b".into()), "a // b");
    }
}
