//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
//! `LOG_FORMAT=json`, one JSON object per line. Each call has a span, `call`, carrying its id;
//! nothing is logged per message at info level.

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber (once; later calls do nothing). A `LOG_FORMAT` that is neither
/// `text` nor `json` is an error: logs in a format nobody asked for would go unread.
pub fn init() -> anyhow::Result<()> {
    let json = format()? == Format::Json;
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

/// The formats of `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

/// `LOG_FORMAT`: `text` (also when unset or empty) or `json`, in any case.
fn format() -> anyhow::Result<Format> {
    let Some(value) = std::env::var_os("LOG_FORMAT") else {
        return Ok(Format::Text);
    };
    let value = value.to_string_lossy();
    match value.to_ascii_lowercase().as_str() {
        "" | "text" => Ok(Format::Text),
        "json" => Ok(Format::Json),
        _ => anyhow::bail!("LOG_FORMAT '{value}' is not a log format: set it to text or json"),
    }
}

/// Whether logs are JSON (`LOG_FORMAT=json`).
pub fn json() -> bool {
    matches!(format(), Ok(Format::Json))
}

/// Installs the fatal-signal handler (see `function::install_crash_handler`), its line in the
/// log's format. A failure is logged: the invoker serves without it.
pub fn install_crash_handler() {
    if let Err(e) = crate::function::install_crash_handler(json()) {
        tracing::warn!(
            "cannot install the fatal-signal handler ({e}): a crash will leave no line in the log"
        );
    }
}
