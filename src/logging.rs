//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
//! `LOG_FORMAT=json`, one JSON object per line. Each call has a span, `call`, carrying its id;
//! nothing is logged per message at info level.

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber (once; later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = json();
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
}

/// Whether logs are JSON (`LOG_FORMAT=json`).
pub fn json() -> bool {
    std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
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
