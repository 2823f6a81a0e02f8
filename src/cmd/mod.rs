//! The subcommands, one file each: what `main` dispatches to.

pub mod admin;
pub mod bench;
pub mod call;
pub mod run;
pub mod scaffold;
pub mod serve;

/// Installs the fatal-signal handler (see `function::install_crash_handler`), its line in the
/// log's format. A failure is logged: the invoker serves without it.
fn install_crash_handler() {
    if let Err(e) = crate::function::install_crash_handler(crate::logging::json()) {
        tracing::warn!(
            "cannot install the fatal-signal handler ({e}): a crash will leave no line in the log"
        );
    }
}
