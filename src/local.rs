//! `invoker run`: a function run locally, with no gRPC and no platform (like Pulsar's
//! localrun without its broker). Messages come from stdin, one per line; results go to stdout,
//! one per line, as they are produced; errors go to stderr.
//!
//! It drives the same engine as the server, so negotiation, decoding and errors are exactly
//! what a gRPC caller would get: a request/reply function is one call per line, a streaming
//! function one call over all the lines (its outputs appear as the lines arrive), and a
//! supplier runs until it ends or Ctrl-C.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncBufReadExt;
use tonic::Status;

use crate::cli::RunArgs;
use crate::engine::pool::{Limits as PoolLimits, Pool};
use crate::engine::{CallMeta, Engine, Inbound, Outbound};
use crate::function::Shape;
use crate::function::uri::FunctionUri;
use crate::live::Live;
use crate::stats::Stats;

/// `invoker run`: the exit code is 0, or the gRPC code of the first call that failed.
pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    crate::logging::install_crash_handler();
    let uri = FunctionUri::parse(&args.function_uri)?;
    let config = crate::config::load(args.config.as_deref(), args.function_config.as_deref())?;
    let stats = Arc::new(Stats::new());
    let live = Live::start(
        &uri.path,
        uri.handler.as_deref(),
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
            _ = tokio::signal::ctrl_c() => Ok(0),
        }
    });
    live.shutdown();
    crate::function::flush_panic_log();
    code
}

/// The messages on stdin, one per line.
fn stdin_messages(args: &RunArgs) -> impl Stream<Item = anyhow::Result<Inbound>> + Send + 'static {
    let lines = tokio_stream::wrappers::LinesStream::new(
        tokio::io::BufReader::new(tokio::io::stdin()).lines(),
    );
    let ndjson = args.ndjson;
    let content_type = args.content_type.clone();
    let accept = args.accept.clone();
    lines.map(move |line| {
        let line = line.context("cannot read stdin")?;
        let mut message = if ndjson {
            ndjson_message(&line)?
        } else {
            Inbound {
                payload: Bytes::from(line),
                headers: Vec::new(),
            }
        };
        let has = |m: &Inbound, name: &str| m.header(name).is_some();
        if let Some(ct) = &content_type
            && !has(&message, "Content-Type")
        {
            message
                .headers
                .push(("Content-Type".into(), ct.as_str().into()));
        }
        if let Some(accept) = &accept
            && !has(&message, "Accept")
        {
            message
                .headers
                .push(("Accept".into(), accept.as_str().into()));
        }
        Ok(message)
    })
}

/// One NDJSON line: `{"payload": ..., "headers": {"name": "value" or ["v1", "v2"]}}`. A string
/// payload is sent as it is; any other JSON value as its JSON text.
fn ndjson_message(line: &str) -> anyhow::Result<Inbound> {
    let value: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("not a JSON object: {line}"))?;
    let serde_json::Value::Object(mut object) = value else {
        anyhow::bail!("expected a JSON object with \"payload\" and \"headers\": {line}");
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
        Some(_) => anyhow::bail!("\"headers\" must be an object of names and values: {line}"),
    }
    if let Some(unknown) = object.keys().next() {
        anyhow::bail!("unknown field \"{unknown}\" (expected \"payload\" and \"headers\"): {line}");
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
fn report(status: &Status) -> u8 {
    eprintln!("invoker: {:?}: {}", status.code(), status.message());
    (status.code() as u8).max(1)
}

/// Prints a call's outputs as they come; returns the exit code of the call.
async fn print_call(mut outputs: crate::engine::OutboundStream, ndjson: bool) -> u8 {
    while let Some(item) = outputs.next().await {
        match item {
            Ok(out) => {
                if !print(&out, ndjson) {
                    return 0;
                }
            }
            Err(status) => return report(&status),
        }
    }
    0
}

async fn drive(engine: Engine, args: &RunArgs) -> anyhow::Result<u8> {
    let info = engine.function().info();
    let mut messages = Box::pin(stdin_messages(args));
    match (info.shape, info.inputs.is_empty()) {
        // One call per line; a failed call is reported and the others go on.
        (Shape::RequestReply, false) => {
            let mut first_failure = 0;
            while let Some(message) = messages.next().await {
                let message = message?;
                let call = engine.call(
                    futures_util::stream::iter([Ok(message)]).boxed(),
                    CallMeta::new(None),
                );
                let code = print_call(call, args.ndjson).await;
                if first_failure == 0 {
                    first_failure = code;
                }
            }
            Ok(first_failure)
        }
        // Runs once; stdin is not read.
        (Shape::RequestReply, true) => {
            let call = engine.call(futures_util::stream::empty().boxed(), CallMeta::new(None));
            Ok(print_call(call, args.ndjson).await)
        }
        // A supplier: runs until it ends or Ctrl-C.
        (Shape::Streaming, true) => {
            let call = engine.call(futures_util::stream::pending().boxed(), CallMeta::new(None));
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
            Ok(code)
        }
    }
}
