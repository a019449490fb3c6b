//! The one progress bar every long command draws (model load, convert, perplexity), so they all
//! look alike. Drawn on stderr only when stderr is a terminal and the command is not quiet:
//! logs and pipes get no control characters. Redrawn at most ten times a second, however often
//! the work reports.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// What a bar counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unit {
    Bytes,
    /// Whole things, named in the plural ("tensors", "chunks").
    Items(&'static str),
}

/// A bar labelled `label`; hidden when `quiet` or when stderr is not a terminal.
pub(crate) fn bar(label: &str, unit: Unit, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    // No length until the work reports one: a bar of length 0 would draw as full.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
    let counts = match unit {
        Unit::Bytes => "{bytes}/{total_bytes} {bytes_per_sec}".to_owned(),
        Unit::Items(what) => format!("{{pos}}/{{len}} {what}"),
    };
    // wide_bar takes what the terminal has left, so the line never wraps.
    let style = ProgressStyle::with_template(&format!("{{msg}} [{{wide_bar}}] {counts} {{eta}}"))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar
}

/// The callback the libraries take (`done`, `total`), moving `bar`.
pub(crate) fn reporter(bar: &ProgressBar) -> impl FnMut(u64, u64) + '_ {
    move |done, total| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    }
}
