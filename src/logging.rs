//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
//! `LOG_FORMAT=json`, one JSON object per line. Each call has a span, `call`, carrying its id;
//! nothing is logged per message at info level.

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber (once; later calls do nothing). A `LOG_FORMAT` that is neither
/// `text` nor `json` is an error: logs in a format nobody asked for would go unread.
pub fn init() -> anyhow::Result<()> {
    let json = crate::env::log_format()? == crate::env::LogFormat::Json;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

/// Whether logs are JSON (`LOG_FORMAT=json`).
pub fn json() -> bool {
    matches!(crate::env::log_format(), Ok(crate::env::LogFormat::Json))
}
