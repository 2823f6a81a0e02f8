//! The call's `Context`, user configuration and lifecycle hooks, in one library.
//!
//! - `describe`: returns everything its `Context` knows about the call, logs through the
//!   invoker and records a custom metric.
//! - `tagged`: a streaming function whose `Context` holds the headers of the call's first
//!   message: it tags every item with that message's `correlationId`.
//! - `slow`: a stream that answers once and then waits forever, to show deadlines; it says on
//!   stderr when the invoker releases it.
//! - `until_cancelled`: a request/reply function that waits (up to the number of milliseconds
//!   it is given) until its call is cancelled, and logs what it saw.
//! - an init hook that reads the configuration (`fail_init` makes it fail; `shutdown_file`
//!   names a file the shutdown hook writes to), and that shutdown hook.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use invoker_sdk::stream::{self, Stream, StreamExt};
use invoker_sdk::{Config, Context, Input, Json};
use serde::Serialize;

/// Where the shutdown hook reports that it ran, from the `shutdown_file` configuration.
static SHUTDOWN_FILE: OnceLock<String> = OnceLock::new();

/// Everything a function can learn from its `Context`.
#[derive(Debug, Serialize)]
pub struct Description {
    /// The function's name.
    pub function: String,
    /// The invoker instance.
    pub instance: String,
    /// The message's `correlationId`, if any.
    pub correlation_id: Option<String>,
    /// The message's headers (the first value of each).
    pub headers: BTreeMap<String, String>,
    /// The `greeting` user configuration value.
    pub greeting: Option<String>,
    /// The `farewell` user configuration value.
    pub farewell: Option<String>,
    /// Milliseconds left until the call's deadline, if it has one.
    pub deadline_ms: Option<u64>,
    /// Whether the call is cancelled.
    pub cancelled: bool,
    /// The input.
    pub input: String,
}

/// Describes the call it runs in.
#[invoker_sdk::function]
pub fn describe(ctx: &Context, input: String) -> Json<Description> {
    ctx.log_info(&format!("describing {input}"));
    ctx.record_metric("described", 1.0);
    let mut headers = BTreeMap::new();
    for (name, value) in ctx.headers().iter() {
        headers
            .entry(name.to_owned())
            .or_insert_with(|| value.to_owned());
    }
    Json(Description {
        function: ctx.function_name().to_owned(),
        instance: ctx.instance_id().to_owned(),
        correlation_id: ctx.correlation_id().map(str::to_owned),
        headers,
        greeting: ctx.config("greeting").map(str::to_owned),
        farewell: ctx.config("farewell").map(str::to_owned),
        deadline_ms: ctx.deadline().map(|d| d.as_millis() as u64),
        cancelled: ctx.is_cancelled(),
        input,
    })
}

/// Tags every item with the call's `correlationId`: a streaming function's context holds the
/// headers of the call's first message (on Invoke, its first data frame), read here before the
/// stream is returned.
#[invoker_sdk::function]
pub fn tagged(ctx: &Context, lines: Input<String>) -> impl Stream<Item = String> {
    let tag = ctx
        .correlation_id()
        .unwrap_or("no correlationId")
        .to_owned();
    lines.map(move |line| format!("{tag}: {line}"))
}

/// Echoes its first input, then waits forever: only a deadline or the caller ends it.
#[invoker_sdk::function]
pub fn slow(inputs: Input<String>) -> impl Stream<Item = String> {
    let released = Released;
    inputs.take(1).chain(stream::pending()).map(move |item| {
        let _kept_with_the_stream = &released;
        item
    })
}

/// Says on stderr when the stream that owns it is released.
struct Released;

impl Drop for Released {
    fn drop(&mut self) {
        eprintln!("slow: stream released");
    }
}

/// Waits up to `millis` for the call to be cancelled (its deadline passing, the caller going
/// away), checking every 10 ms, and logs whether it was.
#[invoker_sdk::function]
pub fn until_cancelled(ctx: &Context, millis: u64) -> String {
    let started = std::time::Instant::now();
    while !ctx.is_cancelled() && started.elapsed().as_millis() < u128::from(millis) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let seen = if ctx.is_cancelled() {
        "saw the call cancelled"
    } else {
        "was not cancelled"
    };
    ctx.log_info(&format!("until_cancelled: {seen}"));
    seen.to_owned()
}

/// Reads the configuration once, when the invoker loads the library.
#[invoker_sdk::init]
pub fn setup(config: &Config) -> Result<(), String> {
    if let Some(reason) = config.get("fail_init") {
        return Err(format!("init failed: {reason}"));
    }
    if let Some(path) = config.get("shutdown_file") {
        SHUTDOWN_FILE.get_or_init(|| path.to_owned());
    }
    Ok(())
}

/// Runs when the invoker exits: reports that it ran, when asked to.
#[invoker_sdk::shutdown]
pub fn teardown() {
    if let Some(path) = SHUTDOWN_FILE.get()
        && let Err(e) = std::fs::write(path, "shutdown hook ran\n")
    {
        eprintln!("context: cannot write {path}: {e}");
    }
}
