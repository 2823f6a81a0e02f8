//! The `invoker` binary: parse the command line, hand over to the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use invoker::cli::{Cli, Command};

/// jemalloc, with a background thread that returns freed pages to the system within seconds:
/// glibc's malloc kept the memory of a burst of 50 000 streams resident after they closed
/// (BENCHMARKS.md, "Memory after a burst"). Function libraries keep their own allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e).exit());
    if let Err(e) = invoker::logging::init() {
        eprintln!("invoker: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Serve(args) => invoker::cmd::serve::serve(args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => invoker::cmd::run::run(args).map(ExitCode::from),
        Command::Init(args) => invoker::cmd::scaffold::init(invoker::cmd::scaffold::InitOptions {
            name: args.name,
            invoker: args.invoker,
            handler: args.handler,
            dir: args.dir,
            sdk_path: args.sdk_path,
            image: args.image,
            dry_run: args.dry_run,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Apply(args) => {
            invoker::cmd::scaffold::apply(&args.file, args.dry_run).map(|()| ExitCode::SUCCESS)
        }
        Command::Call(args) => {
            invoker::cmd::call::call(args).map(|code| ExitCode::from(code as u8))
        }
        Command::Status(args) => {
            invoker::cmd::admin::status(&args.admin_socket).map(|code| ExitCode::from(code as u8))
        }
        Command::Reload(args) => invoker::cmd::admin::reload(
            &args.admin_socket,
            args.library.as_deref(),
            args.handler.as_deref(),
        )
        .map(|code| ExitCode::from(code as u8)),
        Command::Bench(args) => invoker::cmd::bench::bench(args).map(|()| ExitCode::SUCCESS),
        Command::ReferenceEcho(args) => {
            invoker::cmd::bench::reference_echo(&args.host, args.port).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("invoker: {e:#}");
            ExitCode::FAILURE
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
