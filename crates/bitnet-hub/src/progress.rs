//! The download bar: bytes, rate and time left, drawn on stderr only when asked (the CLI asks
//! when stderr is a terminal), so logs and pipes get no control characters.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) fn bar(enabled: bool, file: &str, size: Option<u64>) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = match size {
        Some(s) => ProgressBar::with_draw_target(Some(s), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let style = ProgressStyle::with_template(
        // wide_bar takes what the terminal has left, so the line never wraps.
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(file.rsplit('/').next().unwrap_or(file).to_owned());
    bar
}
