//! The `invoker` binary: parse the command line, hand over to the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use invoker::cli::{Cli, Command};

/// jemalloc, with a background thread that returns freed pages to the system within seconds:
/// glibc's malloc kept the memory of a burst of 50 000 streams resident after they closed
/// (BENCHMARKS.md, "Memory after a burst"). Function libraries keep their own allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    invoker::logging::init();
    let result = match cli.command {
        Command::Serve(args) => invoker::run::serve(args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => invoker::local::run(args).map(ExitCode::from),
        Command::Init(args) => invoker::author::init(invoker::author::InitOptions {
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
            invoker::author::apply(&args.file, args.dry_run).map(|()| ExitCode::SUCCESS)
        }
        Command::Call(args) => invoker::client::call(args).map(|code| ExitCode::from(code as u8)),
        Command::Status(args) => {
            invoker::admin::status(&args.admin_socket).map(|code| ExitCode::from(code as u8))
        }
        Command::Reload(args) => invoker::admin::reload(
            &args.admin_socket,
            args.library.as_deref(),
            args.handler.as_deref(),
        )
        .map(|code| ExitCode::from(code as u8)),
        Command::Bench(args) => invoker::bench::bench(args).map(|()| ExitCode::SUCCESS),
        Command::ReferenceEcho(args) => {
            invoker::bench::reference_echo(&args.host, args.port).map(|()| ExitCode::SUCCESS)
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
