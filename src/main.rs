//! The `invoker` binary: parse the command line, hand over to the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use invoker::cli::{Cli, Command};
use invoker::cmd::{self, Exit};

/// jemalloc, with a background thread that returns freed pages to the system within seconds:
/// glibc's malloc kept the memory of a burst of 50 000 streams resident after they closed
/// (BENCHMARKS.md, "Memory after a burst"). Function libraries keep their own allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e).exit());
    if let Err(e) = invoker::logging::init() {
        eprintln!("invoker: {e:#}");
        return Exit::FAILURE.into();
    }
    let exit = match cli.command {
        Command::Serve(args) => cmd::serve::serve(args),
        Command::OpenWhisk(args) => cmd::openwhisk::openwhisk(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Init(args) => cmd::scaffold::init(args),
        Command::Apply(args) => cmd::scaffold::apply(args),
        Command::Call(args) => cmd::call::call(args),
        Command::Status(args) => cmd::admin::status(args),
        Command::Reload(args) => cmd::admin::reload(args),
        Command::Bench(args) => cmd::bench::bench(args),
        Command::Statefun(args) => cmd::statefun::statefun(args),
        Command::ReferenceEcho(args) => cmd::bench::reference_echo(args),
        Command::Worker(args) => cmd::worker::worker(args),
    };
    match exit {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("invoker: {e:#}");
            Exit::FAILURE.into()
        }
    }
}

/// A usage error, with a tip where the flag clap names is usually given as an environment
/// variable: a missing `--function-uri` is a missing `FUNCTION_URI` to most.
fn usage_error(mut e: clap::Error) -> clap::Error {
    let missing_uri = e.kind() == ErrorKind::MissingRequiredArgument
        && matches!(
            e.get(ContextKind::InvalidArg),
            Some(ContextValue::Strings(args)) if args.iter().any(|a| a.starts_with("--function-uri"))
        );
    if missing_uri {
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![
                "set the environment variable FUNCTION_URI, or pass --function-uri \
                 (file:///abs/path/libname.so?handler=name)"
                    .into(),
            ]),
        );
    }
    e
}
