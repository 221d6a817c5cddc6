//! Progress on stderr for CLI operations that can take a while, shown only
//! to a person at a terminal: a line rewritten in place a few times a
//! second, cleared when the work ends. Pipes, files and journald get
//! nothing from here; the command's own summary line (stdout) is always
//! printed.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the progress line is redrawn.
const REDRAW: Duration = Duration::from_millis(250);

/// Runs `work` and, when stderr is a terminal, shows `label` with what
/// `done` reports (e.g. "1200 of 5000 resolved") and the elapsed time
/// until `work` finishes.
pub async fn while_running<T>(
    label: &str,
    work: impl Future<Output = T>,
    mut done: impl FnMut() -> String,
) -> T {
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let started = Instant::now();
    let draw = |status: &str| {
        let mut err = std::io::stderr().lock();
        // \r and "erase to end of line": the line is redrawn in place.
        let _ = write!(
            err,
            "\r\x1b[K{label}: {status} ({}s)",
            started.elapsed().as_secs()
        );
        let _ = err.flush();
    };
    draw(&done());
    tokio::pin!(work);
    let mut ticks = tokio::time::interval(REDRAW);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = ticks.tick() => draw(&done()),
        }
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
    out
}
