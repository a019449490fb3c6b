//! Ctrl-C in a chat: while an answer streams it stops that answer; otherwise (waiting for
//! input, or a second Ctrl-C before the answer stopped) it ends the chat with exit code 0.
//! At the terminal's prompt the line editor reads Ctrl-C as a key instead (raw mode), so
//! this handles the signal only outside it.

use signal_hook::consts::SIGINT;
use signal_hook::iterator::Signals;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Interrupt {
    generating: AtomicBool,
    stop: AtomicBool,
}

impl Interrupt {
    /// Takes over SIGINT. Called once the model is loaded, so that a Ctrl-C during a long
    /// load still ends the process the usual way. `colour`: stdout may be inside a coloured
    /// answer, to be reset before leaving.
    pub fn install(colour: bool) -> std::io::Result<Arc<Interrupt>> {
        let state = Arc::new(Interrupt::default());
        let mut signals = Signals::new([SIGINT])?;
        let s = state.clone();
        std::thread::Builder::new()
            .name("chat-sigint".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if s.generating.load(Ordering::SeqCst) && !s.stop.swap(true, Ordering::SeqCst) {
                        continue;
                    }
                    let mut out = std::io::stdout();
                    let reset = if colour { super::RESET } else { "" };
                    let _ = writeln!(out, "{reset}");
                    let _ = out.flush();
                    std::process::exit(0);
                }
            })?;
        Ok(state)
    }

    /// An answer starts streaming: the next Ctrl-C stops it.
    pub fn start(&self) {
        self.stop.store(false, Ordering::SeqCst);
        self.generating.store(true, Ordering::SeqCst);
    }

    /// The answer ended: Ctrl-C ends the chat again.
    pub fn finish(&self) {
        self.generating.store(false, Ordering::SeqCst);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}
