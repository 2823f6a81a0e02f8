//! Every environment variable the invoker reads outside its command line, typed, in one place.
//! (The command line's own variables, `FUNCTION_URI`, `GRPC_PORT` and the rest, are clap's:
//! see `cli`.)

use std::ffi::OsString;
use std::path::PathBuf;

/// A variable's value, unless unset or empty.
fn non_empty(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The formats of `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

/// `LOG_FORMAT`: `text` (also when unset or empty) or `json`, in any case; anything else is
/// an error that names the variable.
pub fn log_format() -> anyhow::Result<LogFormat> {
    let Some(value) = std::env::var_os("LOG_FORMAT") else {
        return Ok(LogFormat::Text);
    };
    let value = value.to_string_lossy();
    match value.to_ascii_lowercase().as_str() {
        "" | "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => anyhow::bail!("LOG_FORMAT '{value}' is not a log format: set it to text or json"),
    }
}

/// `HOSTNAME`: the pod's name under Kubernetes.
pub fn hostname() -> Option<String> {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty())
}

/// `TMPDIR` (else `/tmp`): where private copies of libraries and configuration go.
pub fn temp_dir() -> PathBuf {
    std::env::temp_dir()
}

/// Where installed invokers live: `$INVOKER_HOME/invokers`, else
/// `$XDG_CONFIG_HOME/invoker/invokers`, else `$HOME/.config/invoker/invokers`.
pub fn registry_dir() -> anyhow::Result<PathBuf> {
    let home = if let Some(home) = non_empty("INVOKER_HOME") {
        PathBuf::from(home)
    } else if let Some(config) = non_empty("XDG_CONFIG_HOME") {
        PathBuf::from(config).join("invoker")
    } else if let Some(home) = non_empty("HOME") {
        PathBuf::from(home).join(".config").join("invoker")
    } else {
        anyhow::bail!("set INVOKER_HOME (or HOME) to say where installed invokers live");
    };
    Ok(home.join("invokers"))
}
