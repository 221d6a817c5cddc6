//! Logging: one tracing subscriber for the whole process, text or JSON;
//! and the `/metrics` exposition ([`expose`]).
//!
//! `RUST_LOG` wins over the configured level so an operator can turn up
//! one module's logging without touching the config file.

pub mod expose;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Safe to call more than once (tests start
/// several nodes in one process): later calls are no-ops.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into journald or a
    // log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // An already-installed subscriber is fine; anything else is not fatal
    // either: the node runs, it just logs through whatever is installed.
    drop(result);
}
