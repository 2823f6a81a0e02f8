//! The subcommands, one file each: what `main` dispatches to.

pub mod admin;
pub mod bench;
pub mod call;
pub mod openwhisk;
pub mod run;
pub mod scaffold;
pub mod serve;
pub mod statefun;
pub mod worker;

/// A subcommand's exit code, the one type every `cmd` entry point returns: 0, 1, or the gRPC
/// code a call or reload ended with (`invoker call`, `status`, `reload`, `run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(u8);

impl Exit {
    /// 0.
    pub const SUCCESS: Exit = Exit(0);
    /// 1: a failure with no gRPC code of its own (also what `main` exits with on an error).
    pub const FAILURE: Exit = Exit(1);

    /// The number the process exits with.
    pub const fn code(self) -> u8 {
        self.0
    }
}

impl From<tonic::Code> for Exit {
    /// The gRPC code's number (0 to 16): `OK` is 0.
    fn from(code: tonic::Code) -> Exit {
        Exit(code as u8)
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> std::process::ExitCode {
        std::process::ExitCode::from(exit.0)
    }
}

/// The worker processes to start, with `--isolation process` (`None`: in process).
fn worker_options(
    args: &crate::cli::IsolationArgs,
) -> Option<crate::function::worker::WorkerOptions> {
    if args.isolation != crate::cli::Isolation::Process {
        return None;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(crate::function::worker::WorkerOptions {
        workers: args.workers.map_or(cpus, |n| n as usize),
        memory_limit: args.worker_memory_limit,
        // This binary, as `invoker worker`.
        program: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
        monitor: Default::default(),
    })
}

/// The serving runtime (`engine::runtime`), which also serves the worker processes' channels
/// in process mode (`function::worker::serve_channels_on`): built before any function is
/// started, so that the workers' channels run on it from their first frame.
fn serving_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    let runtime = crate::engine::runtime().context("cannot start the async runtime")?;
    crate::function::worker::serve_channels_on(runtime.handle().clone());
    Ok(runtime)
}

/// Installs the fatal-signal handler (see `function::install_crash_handler`), its line in the
/// log's format. A failure is logged: the invoker serves without it.
fn install_crash_handler() {
    if let Err(e) = crate::function::install_crash_handler(crate::logging::json()) {
        tracing::warn!(
            "cannot install the fatal-signal handler ({e}): a crash will leave no line in the log"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn a_grpc_code_exits_with_its_number() {
        assert_eq!(Exit::from(tonic::Code::Ok), Exit::SUCCESS);
        assert_eq!(Exit::from(tonic::Code::InvalidArgument).code(), 3);
        assert_eq!(Exit::from(tonic::Code::FailedPrecondition).code(), 9);
        assert_eq!(Exit::from(tonic::Code::Unauthenticated).code(), 16);
    }
}
