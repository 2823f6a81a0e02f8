//! `invoker run`: a function run locally, with no gRPC and no platform (like Pulsar's
//! localrun without its broker). Messages come from stdin, one per line; results go to stdout,
//! one per line, as they are produced; errors go to stderr.
//!
//! It drives the same engine as the server, so negotiation, decoding and errors are exactly
//! what a gRPC caller would get: a request/reply function is one call per line, a streaming
//! function one call over all the lines (its outputs appear as the lines arrive), and a
//! supplier runs until it ends or Ctrl-C.
//!
//! A StateFun library (one with a stateful function, and no handler or a stateful one named)
//! runs as an in-memory StateFun instead (`statefun`).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncBufReadExt;
use tonic::Status;

mod statefun;

use super::Exit;
use crate::cli::RunArgs;
use crate::engine::pool::{Limits as PoolLimits, Pool};
use crate::engine::{CallMeta, Engine, Inbound, Outbound};
use crate::function::Library;
use crate::function::Shape;
use crate::function::uri::FunctionUri;
use crate::live::{Live, LiveError, Named};
use crate::stats::Stats;

/// `invoker run`: the exit code is 0, or the gRPC code of the first call that failed (3 for a
/// `--ndjson` line that is not a message, which is skipped).
pub fn run(args: RunArgs) -> anyhow::Result<Exit> {
    super::install_crash_handler();
    let uri = FunctionUri::parse(&args.function_uri)?;
    let config = args.config.load()?;
    let library = Library::load(&uri.path).map_err(|error| LiveError::Load {
        error,
        named: Named::Uri,
    })?;
    if statefun::serves(&library, uri.handler.as_deref()) {
        return statefun::run(library, &uri, config, &args);
    }
    if args.time_scale.is_some() {
        anyhow::bail!(
            "--time-scale is for a StateFun library (the in-memory StateFun); {} has no stateful function",
            uri.path.display()
        );
    }
    let stats = Arc::new(Stats::new());
    let live = Live::start_loaded(
        library,
        &uri.path,
        uri.handler.as_deref(),
        Named::Uri,
        &format!("local-{}", std::process::id()),
        config,
        stats.clone(),
        Arc::new(Pool::new(PoolLimits::default_for_this_machine(), stats)),
    )?;
    let runtime = crate::engine::runtime().context("cannot start the async runtime")?;
    let engine = live.engine();
    let code = runtime.block_on(async {
        tokio::select! {
            code = drive(engine, &args) => code,
            _ = tokio::signal::ctrl_c() => Ok(Exit::SUCCESS),
        }
    });
    live.shutdown();
    crate::function::flush_panic_log();
    code
}

/// The exit code of a run with a bad `--ndjson` line: `INVALID_ARGUMENT`, as for bad input.
const BAD_LINE: tonic::Code = tonic::Code::InvalidArgument;

/// The exit code of the run: the first failure's (a failed call, a bad line), else 0.
#[derive(Debug, Default)]
struct FirstFailure(AtomicU8);

impl FirstFailure {
    fn record(&self, exit: Exit) {
        if exit != Exit::SUCCESS {
            let _ = self
                .0
                .compare_exchange(0, exit.code(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn code(&self) -> Exit {
        Exit(self.0.load(Ordering::Relaxed))
    }
}

/// The messages on stdin, one per line, with `content_type` unless they have their own. A line that is not a message (`--ndjson`) is reported
/// on stderr with its number and skipped, and makes the run's exit code [`BAD_LINE`] unless
/// something failed before it.
fn stdin_messages(
    args: &RunArgs,
    content_type: Option<String>,
    failure: Arc<FirstFailure>,
) -> impl Stream<Item = anyhow::Result<Inbound>> + Send + 'static {
    let lines = tokio_stream::wrappers::LinesStream::new(
        tokio::io::BufReader::new(tokio::io::stdin()).lines(),
    );
    let ndjson = args.ndjson;
    let accept = args.accept.clone();
    let mut number = 0u64;
    lines.filter_map(move |line| {
        number += 1;
        let message = match line.context("cannot read stdin") {
            Err(e) => Some(Err(e)),
            Ok(line) => match message(line, ndjson, content_type.as_deref(), accept.as_deref()) {
                Ok(message) => Some(Ok(message)),
                Err(why) => {
                    eprintln!("invoker: line {number} skipped: {why}");
                    failure.record(Exit::from(BAD_LINE));
                    None
                }
            },
        };
        std::future::ready(message)
    })
}

/// One line of stdin as a message, with the `--content-type` and `--accept` of the command
/// line unless it has its own; an error says why a `--ndjson` line is not a message.
fn message(
    line: String,
    ndjson: bool,
    content_type: Option<&str>,
    accept: Option<&str>,
) -> anyhow::Result<Inbound> {
    let mut message = if ndjson {
        ndjson_message(&line)?
    } else {
        Inbound {
            payload: Bytes::from(line),
            headers: Vec::new(),
        }
    };
    if let Some(ct) = content_type
        && message.header("Content-Type").is_none()
    {
        message.headers.push(("Content-Type".into(), ct.into()));
    }
    if let Some(accept) = accept
        && message.header("Accept").is_none()
    {
        message.headers.push(("Accept".into(), accept.into()));
    }
    Ok(message)
}

/// One NDJSON line: `{"payload": ..., "headers": {"name": "value" or ["v1", "v2"]}}`. A string
/// payload is sent as it is; any other JSON value as its JSON text.
fn ndjson_message(line: &str) -> anyhow::Result<Inbound> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        // The error's position is in this one line.
        let why = e
            .to_string()
            .replacen(" at line 1 column ", " at column ", 1);
        anyhow::anyhow!("not JSON: {why}")
    })?;
    let serde_json::Value::Object(mut object) = value else {
        anyhow::bail!("expected a JSON object with \"payload\" and \"headers\"");
    };
    let payload = match object.remove("payload") {
        None | Some(serde_json::Value::Null) => Bytes::new(),
        Some(serde_json::Value::String(s)) => Bytes::from(s),
        Some(other) => Bytes::from(other.to_string()),
    };
    let mut headers = Vec::new();
    match object.remove("headers") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(map)) => {
            for (name, value) in map {
                match value {
                    serde_json::Value::String(v) => headers.push((name.into(), v.into())),
                    serde_json::Value::Array(values) => {
                        for v in values {
                            let v = v
                                .as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string());
                            headers.push((name.as_str().into(), v.into()));
                        }
                    }
                    other => headers.push((name.into(), other.to_string().into())),
                }
            }
        }
        Some(_) => anyhow::bail!("\"headers\" must be an object of names and values"),
    }
    if let Some(unknown) = object.keys().next() {
        anyhow::bail!("unknown field \"{unknown}\" (expected \"payload\" and \"headers\")");
    }
    Ok(Inbound { payload, headers })
}

/// Prints one output message; false when stdout is gone (a closed pipe ends the run).
fn print(out: &Outbound, ndjson: bool) -> bool {
    let mut stdout = std::io::stdout().lock();
    let written = if ndjson {
        let mut headers = serde_json::Map::new();
        if !out.content_type.is_empty() {
            headers.insert("Content-Type".into(), (*out.content_type).into());
        }
        for (name, value) in &out.headers {
            headers.insert(name.to_string(), (**value).into());
        }
        let line = serde_json::json!({
            "payload": String::from_utf8_lossy(&out.payload),
            "headers": headers,
        });
        writeln!(stdout, "{line}")
    } else {
        stdout
            .write_all(&out.payload)
            .and_then(|()| stdout.write_all(b"\n"))
    };
    written.and_then(|()| stdout.flush()).is_ok()
}

/// Reports a failed call on stderr; returns its exit code (the gRPC code, at least 1).
fn report(status: &Status) -> Exit {
    eprintln!("invoker: {:?}: {}", status.code(), status.message());
    match Exit::from(status.code()) {
        Exit::SUCCESS => Exit::FAILURE,
        exit => exit,
    }
}

/// Prints a call's outputs as they come; returns the exit code of the call.
async fn print_call(mut outputs: crate::engine::OutboundStream, ndjson: bool) -> Exit {
    while let Some(item) = outputs.next().await {
        match item {
            Ok(out) => {
                if !print(&out, ndjson) {
                    return Exit::SUCCESS;
                }
            }
            Err(status) => return report(&status),
        }
    }
    Exit::SUCCESS
}

async fn drive(engine: Engine, args: &RunArgs) -> anyhow::Result<Exit> {
    let info = engine.function().info();
    let failure = Arc::new(FirstFailure::default());
    // Without --content-type, lines are in the function's preferred input type: a function
    // that takes only JSON takes JSON lines, one that takes text takes them as text.
    let content_type = args.content_type.clone().or_else(|| {
        info.inputs
            .first()
            .and_then(|port| port.media_types.first().cloned())
    });
    let mut messages = Box::pin(stdin_messages(args, content_type, failure.clone()));
    match (info.shape, info.inputs.is_empty()) {
        // One call per line; a failed call (or a bad line) is reported and the others go on.
        (Shape::RequestReply, false) => {
            while let Some(message) = messages.next().await {
                let message = message?;
                let call = engine.call(
                    futures_util::stream::iter([Ok(message)]).boxed(),
                    CallMeta::new(None),
                );
                failure.record(print_call(call, args.ndjson).await);
            }
            Ok(failure.code())
        }
        // Runs once; stdin is not read.
        (Shape::RequestReply, true) => {
            let call = engine.call(futures_util::stream::empty().boxed(), CallMeta::new(None));
            Ok(print_call(call, args.ndjson).await)
        }
        // A supplier: runs until it ends or Ctrl-C.
        (Shape::Streaming, true) => {
            let call = engine.supply(CallMeta::new(None));
            Ok(print_call(call, args.ndjson).await)
        }
        // One call over all the lines, printing outputs as they come.
        (Shape::Streaming, false) => {
            let (failed_tx, mut failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
            let mut failed_tx = Some(failed_tx);
            let inbound = messages
                .take_while(move |m| {
                    let ok = m.is_ok();
                    if let Err(e) = m
                        && let Some(tx) = failed_tx.take()
                    {
                        let _ = tx.send(anyhow::anyhow!("{e:#}"));
                    }
                    std::future::ready(ok)
                })
                .filter_map(|m| std::future::ready(m.ok().map(Ok)))
                .boxed();
            let code = print_call(engine.call(inbound, CallMeta::new(None)), args.ndjson).await;
            if let Ok(e) = failed_rx.try_recv() {
                return Err(e);
            }
            failure.record(code);
            Ok(failure.code())
        }
    }
}
