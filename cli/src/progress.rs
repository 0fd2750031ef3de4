//! Progress on stderr for long work, shown only when stderr is a terminal
//! so that scripts and CI logs stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `total` steps labelled `what`; hidden when stderr is not a
/// terminal.
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), draw_target());
    let style = ProgressStyle::with_template(
        "{msg:>12} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {eta} left)",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// A spinner with a counter, for work of unknown length.
pub fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, draw_target());
    let style = ProgressStyle::with_template("{spinner} {msg} {human_pos} ({per_sec})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// A spinner for work done in one step, such as a large append the
/// store's writer seals, writes and makes durable: it turns on its own,
/// shows the time taken, and is cleared when dropped (on an error too).
pub fn working(what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, draw_target())
        .with_finish(indicatif::ProgressFinish::AndClear);
    let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(what.to_string());
    if !bar.is_hidden() {
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
    }
    bar
}

fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}
