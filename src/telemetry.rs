//! Logs: JSON lines by default (`RELAY_LOG_FORMAT=text` for people), levels by `RUST_LOG`.
//!
//! Nothing here redacts: the types do. Secrets have no `Display`, tokens
//! display redacted, and bodies are never logged.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    // A second init (tests build several apps in one process) keeps the first.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
