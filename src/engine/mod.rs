//! The engine: runs one call of the function in the shape the function has, whatever protocol
//! the call came in on, and maps every failure to the gRPC status of SPEC §6.
//!
//! - request/reply: an *at-most-one* stream: the first message is decoded and the function
//!   invoked once; a second message ends the call with FAILED_PRECONDITION. A function with
//!   no input runs once when the call opens.
//! - streaming: the function is opened once per call over the call's input stream; its output
//!   is polled only as fast as the caller reads it (backpressure), and inputs are pulled from
//!   the transport only when the function asks for them. No task, no channel, no buffer.
//! - supplier (streaming with no input): runs from call open until the caller half-closes
//!   (with [`Engine::supply`], for `invoker run`: until its output ends).

use std::borrow::Cow;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use tonic::Status;

use crate::function::{
    BoxInput, CallContext, Function, FunctionError, Headers, InputMessage, OutputMessage,
    OutputStream, Shape, Text,
};
use crate::negotiate::{self, Chosen};
use crate::stats::Stats;
use pool::Pool;

mod invoke;
pub mod pool;

pub use crate::function::CallMeta;
pub use invoke::{INVOKE_DEFAULT_CONTENT_TYPE, Signal};

/// The media type of a Call message without Content-Type (SPEC §5).
pub const CALL_DEFAULT_CONTENT_TYPE: &str = "text/plain";

/// A message on its way in, whatever the protocol.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    /// The payload.
    pub payload: Bytes,
    /// The message's headers, as (name, value) pairs.
    pub headers: Headers,
}

impl Inbound {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The Accept header: its values joined into one list, since a message may carry several.
    pub fn accept(&self) -> Option<Cow<'_, str>> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Accept"))
            .map(|(_, v)| &**v);
        let first = values.next()?;
        match values.next() {
            None => Some(Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = format!("{first}, {second}");
                for v in values {
                    joined.push_str(", ");
                    joined.push_str(v);
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}

/// The first value of a header, by case-insensitive name.
pub fn header<'a>(headers: &'a [(Text, Text)], name: &str) -> Option<&'a str> {
    header_text(headers, name).map(|v| &**v)
}

/// The first value of a header, by case-insensitive name, as text to keep (a clone of it is
/// not a copy when it is short).
fn header_text<'a>(headers: &'a [(Text, Text)], name: &str) -> Option<&'a Text> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A message on its way out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbound {
    /// The payload.
    pub payload: Bytes,
    /// The concrete media type chosen for it.
    pub content_type: Arc<str>,
    /// Other headers: the echoed correlationId and those the function set.
    pub headers: Headers,
}

/// The error statuses of SPEC §6.
pub mod errors {
    use tonic::Status;

    use crate::function::FunctionError;
    use crate::negotiate::NegotiationError;

    /// Unsupported Media Type or Not Acceptable.
    pub fn negotiation(e: NegotiationError) -> Status {
        Status::invalid_argument(e.to_string())
    }

    /// A riff-rpc protocol violation.
    pub fn protocol_violation(detail: impl std::fmt::Display) -> Status {
        Status::invalid_argument(format!("Invoker: Protocol Violation: {detail}"))
    }

    /// The function failed.
    pub fn function(e: FunctionError) -> Status {
        match e {
            FunctionError::Failed(message) => Status::unknown(message),
            FunctionError::BadInput(message) => Status::invalid_argument(message),
            e @ FunctionError::Panicked(_) => Status::internal(e.to_string()),
            e @ FunctionError::Abi(_) => Status::internal(e.to_string()),
        }
    }

    /// A message to a streaming function whose output has already ended.
    pub fn unread() -> Status {
        Status::failed_precondition(
            "Invoker: the function's output has ended; it takes no more messages: half-close the call",
        )
    }

    /// The call's deadline had passed when it arrived: nothing ran.
    pub fn deadline_exceeded_before_start() -> Status {
        Status::deadline_exceeded("Invoker: the call's deadline had passed when it arrived")
    }

    /// The call was cancelled before the function started.
    pub fn cancelled() -> Status {
        Status::cancelled("Invoker: the call was cancelled before the function started")
    }

    /// The invoker is draining.
    pub fn draining() -> Status {
        Status::unavailable("Invoker: shutting down; retry on another instance")
    }

    /// The drain's grace period ran out with the call still in flight.
    pub fn grace_over() -> Status {
        Status::unavailable(
            "Invoker: shutting down: the call did not finish within the drain grace period",
        )
    }

    /// The call's deadline (its grpc-timeout) passed.
    pub fn deadline_exceeded() -> Status {
        Status::deadline_exceeded("Invoker: the call's deadline passed; the function was stopped")
    }
}

/// Whether the runtime runs without tokio's LIFO slot (built with `--cfg tokio_unstable`, as
/// `.cargo/config.toml` sets): a task in a worker's LIFO slot cannot be stolen by another
/// worker, so a call blocking inline would stall it. Built without it, no call runs inline.
pub const INLINE_IS_SAFE: bool = cfg!(tokio_unstable);

/// The async runtime of the server: one worker more than the machine has CPUs (a call blocked
/// inline holds one), without tokio's LIFO slot where the build allows (see
/// [`INLINE_IS_SAFE`]).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(cpus + 1).enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Whether a request/reply function's calls may run inline on an async worker thread.
///
/// Calling a function inline costs nothing, while handing the call to a function thread costs
/// two thread wake-ups (a third of the server's CPU per call for a fast function, see
/// BENCHMARKS.md); but only a function thread keeps a blocking function from holding a worker.
/// So calls go to the function threads until [`Blocking::FAST_CALLS`] calls in a row each
/// took less than [`Blocking::THRESHOLD`]; then they run inline, until
/// [`Blocking::SLOW_CALLS`] calls within [`Blocking::FAST_CALLS`] take longer, which sends the
/// function back to the threads for the next streak. One slow call alone does not: on a busy
/// machine a thread preempted by the OS mid-call looks slow too. A function that blocks often
/// never earns a streak; one that is fast for a long time and then blocks holds one worker for
/// two of its calls.
///
/// Inline calls are safe for the rest of the server only because the runtime runs without
/// tokio's LIFO slot ([`INLINE_IS_SAFE`]): every task queued on a worker held by a blocked call
/// can be stolen by the others, and the runtime has a worker more than the machine has CPUs.
/// At most one call runs inline at a time (others meanwhile go to the threads), none does when
/// the runtime has a single worker, and an inline call holds a place under
/// `--max-concurrency` like any other.
#[derive(Debug, Default)]
pub struct Blocking {
    fast_calls: AtomicU32,
    /// Slow calls since the window began, and calls in the window, while inline.
    slow_in_window: AtomicU32,
    window: AtomicU32,
    /// Set while a call runs inline.
    inline_busy: AtomicBool,
    /// Set once the function has been seen to block, for a single info log.
    seen_blocking: AtomicBool,
}

/// Clears [`Blocking::inline_busy`] when the inline call is over.
struct InlineCall<'a>(&'a Blocking);

impl Drop for InlineCall<'_> {
    fn drop(&mut self) {
        self.0.inline_busy.store(false, Ordering::Release);
    }
}

impl Blocking {
    /// A call at least this long counts as blocking.
    pub const THRESHOLD: Duration = Duration::from_millis(1);
    /// How many fast calls in a row let a function run inline (and the window, in calls, in
    /// which slow calls are counted).
    pub const FAST_CALLS: u32 = 64;
    /// How many slow calls within the window send an inline function back to the pool.
    pub const SLOW_CALLS: u32 = 2;

    /// Whether the next call may run inline; if so, the returned guard marks it running.
    fn try_inline(&self) -> Option<InlineCall<'_>> {
        if !INLINE_IS_SAFE
            || self.fast_calls.load(Ordering::Relaxed) < Self::FAST_CALLS
            || self.inline_busy.swap(true, Ordering::Acquire)
        {
            return None;
        }
        let call = InlineCall(self);
        let workers = tokio::runtime::Handle::try_current()
            .map_or(1, |handle| handle.metrics().num_workers());
        (workers > 1).then_some(call)
    }

    /// Records a call's duration; true when this is the first call seen to block.
    fn record(&self, took: Duration, inline: bool) -> bool {
        if inline && self.window.fetch_add(1, Ordering::Relaxed) + 1 >= Self::FAST_CALLS {
            self.window.store(0, Ordering::Relaxed);
            self.slow_in_window.store(0, Ordering::Relaxed);
        }
        if took >= Self::THRESHOLD {
            let back_to_pool = !inline
                || self.slow_in_window.fetch_add(1, Ordering::Relaxed) + 1 >= Self::SLOW_CALLS;
            if back_to_pool {
                self.fast_calls.store(0, Ordering::Relaxed);
                self.slow_in_window.store(0, Ordering::Relaxed);
                return !self.seen_blocking.swap(true, Ordering::Relaxed);
            }
            return false;
        }
        if self.fast_calls.load(Ordering::Relaxed) < Self::FAST_CALLS {
            self.fast_calls.fetch_add(1, Ordering::Relaxed);
        }
        false
    }
}

/// Runs calls of one function. Cloning it (once per call) costs two reference counts.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    /// The call this copy of the engine runs (see [`Engine::call`]).
    meta: CallMeta,
}

/// What every call of the function shares.
#[derive(Debug)]
struct Inner {
    function: Function,
    /// Where request/reply calls run.
    pool: Arc<Pool>,
    /// Whether calls may run inline.
    blocking: Blocking,
    instance_id: Arc<str>,
    function_name: Arc<str>,
    config: Arc<HashMap<String, String>>,
    stats: Arc<Stats>,
    /// Each output's media types as Content-Type values, shared by every reply that has no
    /// Accept parameters to add.
    output_types: Vec<Vec<Arc<str>>>,
}

/// What the inbound side of a call yields.
pub type InboundStream = BoxStream<'static, Result<Inbound, Status>>;

/// What the outbound side of a call yields.
pub type OutboundStream = BoxStream<'static, Result<Outbound, Status>>;

impl Engine {
    /// An engine for `function`.
    pub fn new(
        function: Function,
        instance_id: &str,
        config: Arc<HashMap<String, String>>,
        stats: Arc<Stats>,
        pool: Arc<Pool>,
    ) -> Self {
        let output_types = function
            .info()
            .outputs
            .iter()
            .map(|port| {
                port.media_types
                    .iter()
                    .map(|t| Arc::from(t.as_str()))
                    .collect()
            })
            .collect();
        Engine {
            inner: Arc::new(Inner {
                function_name: function.info().name.as_str().into(),
                function,
                pool,
                blocking: Blocking::default(),
                instance_id: instance_id.into(),
                config,
                stats,
                output_types,
            }),
            meta: CallMeta::default(),
        }
    }

    /// A copy of the engine for one call.
    fn for_call(&self, meta: CallMeta) -> Engine {
        Engine {
            inner: self.inner.clone(),
            meta,
        }
    }

    /// The Content-Type of output `port` as `chosen`: shared, unless the Accept range that
    /// chose it added parameters.
    fn content_type(&self, port: usize, chosen: &Chosen) -> Arc<str> {
        match self
            .inner
            .output_types
            .get(port)
            .and_then(|t| t.get(chosen.index))
        {
            Some(shared) if chosen.params.is_empty() => shared.clone(),
            _ => Arc::from(
                chosen.content_type(&self.inner.function.info().outputs[port].media_types),
            ),
        }
    }

    /// The counters this engine reports to.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// Counts the function's failure and maps it to its status.
    fn failed(&self, e: FunctionError) -> Status {
        self.inner.stats.function_failed(&e);
        errors::function(e)
    }

    /// The function this engine runs.
    pub fn function(&self) -> &Function {
        &self.inner.function
    }

    fn context(&self, headers: Headers) -> CallContext {
        CallContext {
            function_name: self.inner.function_name.clone(),
            instance_id: self.inner.instance_id.clone(),
            call: self.meta.clone(),
            headers,
            config: self.inner.config.clone(),
            metrics: Some(self.inner.stats.clone()),
        }
    }

    /// Runs one `MessageFunction/Call`: messages in, messages out, in the function's shape.
    pub fn call(&self, inbound: InboundStream, meta: CallMeta) -> OutboundStream {
        self.call_ending(inbound, meta, false)
    }

    /// Runs a call with no caller to half-close it (`invoker run`): a supplier's call ends when
    /// the function's output ends, instead of when the caller half-closes. Otherwise as
    /// [`Engine::call`] with no input.
    pub fn supply(&self, meta: CallMeta) -> OutboundStream {
        self.call_ending(stream::pending().boxed(), meta, true)
    }

    fn call_ending(
        &self,
        inbound: InboundStream,
        meta: CallMeta,
        ends_with_output: bool,
    ) -> OutboundStream {
        let engine = self.for_call(meta);
        let info = engine.inner.function.info();
        match info.shape {
            Shape::RequestReply => engine.at_most_one(inbound),
            Shape::Streaming if info.inputs.len() > 1 || info.outputs.len() != 1 => {
                let status = Status::failed_precondition(format!(
                    "Invoker: '{}' has {} inputs and {} outputs; a Call carries one of each: use streaming.Riff/Invoke",
                    info.name,
                    info.inputs.len(),
                    info.outputs.len()
                ));
                stream::once(async move { Err(status) }).boxed()
            }
            Shape::Streaming => engine.streaming(inbound, ends_with_output),
        }
    }

    /// Chooses a request/reply function's output type for an Accept (None: no output).
    fn choose_output(&self, accept: Option<&str>) -> Result<Option<Chosen>, Status> {
        match self.inner.function.info().outputs.first() {
            Some(port) => negotiate::accept(accept, &port.media_types)
                .map(Some)
                .map_err(errors::negotiation),
            None => Ok(None),
        }
    }

    /// Invokes a request/reply function on one message (or none), encoding its output as
    /// `chosen`. Returns the output, if any, with the correlationId echoed.
    ///
    /// `default_content_type` is the protocol's media type for a message without one.
    pub async fn invoke_once(
        &self,
        message: Option<Inbound>,
        default_content_type: &str,
        chosen: Option<Chosen>,
    ) -> Result<Option<Outbound>, Status> {
        let info = self.inner.function.info();
        let correlation = message
            .as_ref()
            .and_then(|m| header_text(&m.headers, "correlationId"))
            .cloned();
        let input = match (message, info.inputs.first()) {
            (Some(message), Some(port)) => {
                let media_type = negotiate::content_type(
                    message.header("Content-Type"),
                    default_content_type,
                    &port.media_types,
                )
                .map_err(errors::negotiation)?;
                Some(InputMessage {
                    payload: message.payload,
                    headers: message.headers,
                    media_type,
                })
            }
            _ => None,
        };
        let headers = match (&input, info.uses_context) {
            (Some(input), true) => input.headers.clone(),
            _ => Vec::new(),
        };
        let ctx = self.context(headers);
        let index = chosen.as_ref().map_or(0, |c| c.index);
        let function = self.inner.function.clone();
        let inline = self
            .inner
            .blocking
            .try_inline()
            .and_then(|call| Some((call, self.inner.pool.try_inline()?)));
        let ran_inline = inline.is_some();
        let (output, took) = if let Some(_inline) = inline {
            let started = Instant::now();
            let output = function.invoke(&ctx, input.as_ref(), index);
            (output, started.elapsed())
        } else {
            let meta = self.meta.clone();
            let (done, result) = tokio::sync::oneshot::channel();
            // On a function thread: the function may block (see `pool`).
            self.inner.pool.submit(
                self.meta.clone(),
                Box::new(move || {
                    // A caller that gave up while the call waited for a thread: do not start it.
                    if done.is_closed() || meta.is_cancelled() {
                        return;
                    }
                    if meta.deadline().is_some_and(|d| Instant::now() >= d) {
                        let _ = done.send(None);
                        return;
                    }
                    // Times the function itself, not the hand-off.
                    let started = Instant::now();
                    let output = function.invoke(&ctx, input.as_ref(), index);
                    let _ = done.send(Some((output, started.elapsed())));
                }),
            )?;
            match result.await {
                Ok(Some(done)) => done,
                Ok(None) => return Err(errors::deadline_exceeded()),
                Err(_) => return Err(errors::cancelled()),
            }
        };
        if self.inner.blocking.record(took, ran_inline) {
            tracing::info!(
                function = %info.name,
                "a call took over 1 ms: the function's calls run on function threads until it is fast again"
            );
        }
        let output = output.map_err(|e| self.failed(e))?;
        Ok(output.map(|out| {
            let content_type = chosen.map_or_else(|| Arc::from(""), |c| self.content_type(0, &c));
            outbound(out, content_type, correlation)
        }))
    }

    /// A request/reply function as an at-most-one stream.
    fn at_most_one(&self, inbound: InboundStream) -> OutboundStream {
        let engine = self.clone();
        let takes_input = !self.inner.function.info().inputs.is_empty();
        stream::unfold(State::First(inbound), move |state| {
            let engine = engine.clone();
            async move {
                match state {
                    State::First(mut inbound) if takes_input => match inbound.next().await {
                        None => None,
                        Some(Err(status)) => Some((Err(status), State::Done)),
                        Some(Ok(message)) => {
                            let invoked = match engine.choose_output(message.accept().as_deref()) {
                                Ok(chosen) => {
                                    engine
                                        .invoke_once(
                                            Some(message),
                                            CALL_DEFAULT_CONTENT_TYPE,
                                            chosen,
                                        )
                                        .await
                                }
                                Err(status) => Err(status),
                            };
                            match invoked {
                                Ok(Some(out)) => Some((Ok(out), State::AwaitEnd(inbound))),
                                Ok(None) => engine.await_end(inbound).await,
                                Err(status) => Some((Err(status), State::Done)),
                            }
                        }
                    },
                    State::First(inbound) => {
                        let invoked = match engine.choose_output(None) {
                            Ok(chosen) => {
                                engine
                                    .invoke_once(None, CALL_DEFAULT_CONTENT_TYPE, chosen)
                                    .await
                            }
                            Err(status) => Err(status),
                        };
                        match invoked {
                            Ok(Some(out)) => Some((Ok(out), State::AwaitEnd(inbound))),
                            Ok(None) => engine.await_end(inbound).await,
                            Err(status) => Some((Err(status), State::Done)),
                        }
                    }
                    State::AwaitEnd(inbound) => engine.await_end(inbound).await,
                    State::Done => None,
                }
            }
        })
        .boxed()
    }

    /// After a request/reply function ran: the call ends OK at half-close; another message
    /// is an error.
    async fn await_end(
        &self,
        mut inbound: InboundStream,
    ) -> Option<(Result<Outbound, Status>, State)> {
        let info = self.inner.function.info();
        match inbound.next().await {
            None => None,
            Some(Err(status)) => Some((Err(status), State::Done)),
            Some(Ok(_)) if info.inputs.is_empty() => Some((
                Err(Status::failed_precondition(format!(
                    "Invoker: '{}' takes no input: it ran once when the call opened, and the call sent a message",
                    info.name
                ))),
                State::Done,
            )),
            Some(Ok(_)) => Some((
                Err(Status::failed_precondition(format!(
                    "Invoker: '{}' is a request/reply function: one message per call, and this call sent a second",
                    info.name
                ))),
                State::Done,
            )),
        }
    }

    /// A streaming function over a Call: one input stream, one output stream.
    /// `ends_with_output`: a supplier's call ends with its output, not at half-close.
    ///
    /// A function that takes `&Context` and an input opens at the call's first message (or
    /// its half-close), so that its context holds that message's headers; any other opens
    /// when the call does. A supplier's context has no headers: it reads no message.
    fn streaming(&self, inbound: InboundStream, ends_with_output: bool) -> OutboundStream {
        let info = self.inner.function.info();
        let shared = Arc::new(Shared::new(self.inner.stats.clone()));
        let offered: Arc<[String]> = info.outputs[0].media_types.clone().into();
        let mut input = None;
        let mut supplier_inbound = None;
        match info.inputs.first() {
            Some(port) => {
                input = Some(CallInput {
                    inbound,
                    shared: shared.clone(),
                    input_types: port.media_types.clone().into(),
                    output_types: offered.clone(),
                    held: None,
                    last_type: None,
                    ended: false,
                })
            }
            None => supplier_inbound = Some(inbound),
        }
        let mut call_output = CallOutput {
            output: None,
            opening: None,
            shared,
            offered,
            supplier_inbound,
            ends_with_output,
            content_type: None,
            rest: None,
        };
        match input {
            Some(input) if info.uses_context => {
                call_output.opening = Some(Box::new(Opening {
                    engine: self.clone(),
                    input,
                }));
            }
            input => {
                let inputs = input.map(|i| Box::pin(i) as BoxInput).into_iter().collect();
                match self.open(Vec::new(), inputs) {
                    Ok(output) => call_output.output = Some(output),
                    Err(status) => return stream::once(async move { Err(status) }).boxed(),
                }
            }
        }
        Box::pin(call_output)
    }

    /// Opens a streaming function with one output, its context holding `headers`.
    fn open(&self, headers: Headers, inputs: Vec<BoxInput>) -> Result<OutputStream, Status> {
        let ctx = self.context(headers);
        match self.inner.function.open(&ctx, inputs) {
            Ok(mut outputs) => Ok(outputs.remove(0)),
            Err(e) => Err(self.failed(e)),
        }
    }
}

/// Where an at-most-one call is.
enum State {
    /// Waiting for the first message (or, without input, about to run).
    First(InboundStream),
    /// The function ran: waiting for half-close.
    AwaitEnd(InboundStream),
    /// Finished.
    Done,
}

fn outbound(out: OutputMessage, content_type: Arc<str>, correlation: Option<Text>) -> Outbound {
    let mut headers = out.headers;
    if let Some(id) = correlation {
        headers.push((Text::const_new("correlationId"), id));
    }
    Outbound {
        payload: out.payload,
        content_type,
        headers,
    }
}

/// What the input and output sides of a streaming call share.
struct Shared {
    stats: Arc<Stats>,
    /// Set when the call must fail; the output side reports it.
    failed: AtomicBool,
    failure: Mutex<Option<Status>>,
    /// The output type, chosen once: by the first Accept, or preferred if output came first.
    chosen: OnceLock<Chosen>,
    /// What the call's input left when the function released it (written once per call).
    leftover: Mutex<Option<Leftover>>,
}

/// What is left of a streaming Call's inbound side when the function releases its input.
enum Leftover {
    /// The client half-closed, or the inbound side failed: nothing to wait for.
    Ended,
    /// A message the function never read.
    Unread,
    /// Still open: the call ends when the client half-closes.
    Open(InboundStream),
}

impl Shared {
    fn new(stats: Arc<Stats>) -> Shared {
        Shared {
            stats,
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            chosen: OnceLock::new(),
            leftover: Mutex::new(None),
        }
    }

    fn leave(&self, leftover: Leftover) {
        if let Ok(mut slot) = self.leftover.lock() {
            *slot = Some(leftover);
        }
    }

    fn take_leftover(&self) -> Option<Leftover> {
        self.leftover.lock().ok().and_then(|mut slot| slot.take())
    }

    /// Counts the function's failure and maps it to its status.
    fn function_failed(&self, e: FunctionError) -> Status {
        self.stats.function_failed(&e);
        errors::function(e)
    }

    fn fail(&self, status: Status) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(status);
        }
        self.failed.store(true, Ordering::Release);
    }

    fn take_failure(&self) -> Option<Status> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        let taken = self.failure.lock().ok().and_then(|mut slot| slot.take());
        Some(taken.unwrap_or_else(|| Status::internal("Invoker: the call failed")))
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn decided(&self) -> Option<usize> {
        self.chosen.get().map(|c| c.index)
    }
}

/// The input stream a streaming function pulls from: the call's messages, negotiated.
struct CallInput {
    inbound: InboundStream,
    shared: Arc<Shared>,
    input_types: Arc<[String]>,
    output_types: Arc<[String]>,
    /// A message held back for one poll after it decided the output type.
    held: Option<InputMessage>,
    /// The last Content-Type seen, and the input media type it chose.
    last_type: Option<(String, usize)>,
    /// Set when the inbound side has ended (half-close) or failed.
    ended: bool,
}

impl CallInput {
    /// Negotiates a message's Content-Type and, until the output type is decided, its Accept.
    /// Returns the message for the function and whether its Accept decided the output type.
    /// (Inlined: it runs for every message of a streaming call.)
    #[inline]
    fn negotiate(&mut self, message: Inbound) -> Result<(InputMessage, bool), Status> {
        let given = message.header("Content-Type");
        let media_type = match &self.last_type {
            // A stream's messages usually share one Content-Type: negotiated once.
            Some((last, index)) if given == Some(last.as_str()) => *index,
            _ => {
                let index =
                    negotiate::content_type(given, CALL_DEFAULT_CONTENT_TYPE, &self.input_types)
                        .map_err(errors::negotiation)?;
                self.last_type = given.map(|g| (g.to_owned(), index));
                index
            }
        };
        let accept = match self.shared.decided() {
            None => message.accept(),
            Some(_) => None,
        };
        let decides = accept.is_some();
        if let Some(accept) = accept {
            let chosen = negotiate::accept(Some(&accept), &self.output_types)
                .map_err(errors::negotiation)?;
            let _ = self.shared.chosen.set(chosen);
        }
        let input = InputMessage {
            payload: message.payload,
            headers: message.headers,
            media_type,
        };
        Ok((input, decides))
    }
}

impl Drop for CallInput {
    /// Leaves the inbound side to the output side, which waits for half-close (or refuses
    /// more messages) once the function's output has ended.
    fn drop(&mut self) {
        let leftover = if self.held.is_some() {
            Leftover::Unread
        } else if self.ended {
            Leftover::Ended
        } else {
            Leftover::Open(std::mem::replace(
                &mut self.inbound,
                stream::empty().boxed(),
            ))
        };
        self.shared.leave(leftover);
    }
}

impl Stream for CallInput {
    type Item = InputMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<InputMessage>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            return Poll::Ready(Some(held));
        }
        if this.shared.failed.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let message = match this.inbound.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(status))) => {
                this.ended = true;
                this.shared.fail(status);
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(message))) => message,
        };
        let (input, decides) = match this.negotiate(message) {
            Ok(negotiated) => negotiated,
            Err(status) => {
                this.shared.fail(status);
                return Poll::Pending;
            }
        };
        if decides {
            // The function is being polled with the old output type: end this poll so the
            // next one encodes with the type this Accept chose.
            this.held = Some(input);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(input))
    }
}

/// A streaming function taking `&Context` that waits for the call's first message (or
/// half-close) to open, so that its context holds that message's headers.
struct Opening {
    engine: Engine,
    input: CallInput,
}

/// The output side of a streaming Call.
struct CallOutput {
    output: Option<OutputStream>,
    /// Set until a function waiting for the first message opens.
    opening: Option<Box<Opening>>,
    shared: Arc<Shared>,
    offered: Arc<[String]>,
    /// A supplier's call: watched for half-close, since the function does not read it.
    supplier_inbound: Option<InboundStream>,
    /// A supplier's call ends when its output ends, with no half-close (`invoker run`).
    ends_with_output: bool,
    /// The Content-Type of every output, once chosen.
    content_type: Option<Arc<str>>,
    /// After the function's output ended: the inbound side, until the client half-closes.
    rest: Option<InboundStream>,
}

impl CallOutput {
    /// Opens a function that waits for the call's first message, once it has come (or the
    /// client half-closed): the context holds its headers, and it is the function's first
    /// input. The first message's Accept decides the output type before anything is polled.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let Some(opening) = self.opening.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let input = &mut opening.input;
        let headers = match input.inbound.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                input.ended = true;
                Vec::new()
            }
            Poll::Ready(Some(Err(status))) => {
                input.ended = true;
                return Poll::Ready(Err(status));
            }
            Poll::Ready(Some(Ok(message))) => {
                let headers = message.headers.clone();
                let (first, _) = input.negotiate(message)?;
                input.held = Some(first);
                headers
            }
        };
        let Opening { engine, input } = *self.opening.take().expect("checked above");
        self.output = Some(engine.open(headers, vec![Box::pin(input)])?);
        Poll::Ready(Ok(()))
    }

    fn finish(
        &mut self,
        item: Option<Result<Outbound, Status>>,
    ) -> Poll<Option<Result<Outbound, Status>>> {
        // Dropping the function's stream releases it (and its input) now.
        self.output = None;
        self.opening = None;
        self.supplier_inbound = None;
        self.rest = None;
        Poll::Ready(item)
    }

    /// The function's output ended: the call ends when the client half-closes, and a message
    /// the function did not read (or that comes after) is refused, never dropped.
    fn output_ended(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Outbound, Status>>> {
        // Releasing the function releases its input, which leaves the inbound side behind.
        self.output = None;
        let rest = match self.supplier_inbound.take() {
            Some(_) if self.ends_with_output => None,
            Some(inbound) => Some(inbound),
            None => match self.shared.take_leftover() {
                Some(Leftover::Open(inbound)) => Some(inbound),
                Some(Leftover::Unread) => return self.finish(Some(Err(errors::unread()))),
                Some(Leftover::Ended) | None => None,
            },
        };
        self.rest = rest;
        self.await_half_close(cx)
    }

    fn await_half_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Outbound, Status>>> {
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match rest.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => self.finish(None),
            Poll::Ready(Some(Err(status))) => self.finish(Some(Err(status))),
            Poll::Ready(Some(Ok(_))) => self.finish(Some(Err(errors::unread()))),
        }
    }
}

impl Stream for CallOutput {
    type Item = Result<Outbound, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.output.is_none() {
            if this.opening.is_none() {
                return this.await_half_close(cx);
            }
            match this.poll_open(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(status)) => return this.finish(Some(Err(status))),
                Poll::Ready(Ok(())) => {}
            }
        }
        if let Some(inbound) = this.supplier_inbound.as_mut() {
            match inbound.poll_next_unpin(cx) {
                Poll::Ready(None) => return this.finish(None),
                Poll::Ready(Some(Err(status))) => return this.finish(Some(Err(status))),
                Poll::Ready(Some(Ok(_))) => {
                    let status = Status::failed_precondition(
                        "Invoker: this function is a supplier and takes no input messages",
                    );
                    return this.finish(Some(Err(status)));
                }
                Poll::Pending => {}
            }
        }
        if let Some(status) = this.shared.take_failure() {
            return this.finish(Some(Err(status)));
        }
        let index = this.shared.decided().unwrap_or(0);
        let Some(output) = this.output.as_mut() else {
            return Poll::Ready(None);
        };
        match output.poll_next(cx, index) {
            Poll::Ready(Some(Ok(message))) => {
                let content_type = this.content_type.get_or_insert_with(|| {
                    // Output came before any Accept: the function's preferred type.
                    let chosen = this.shared.chosen.get_or_init(Chosen::default);
                    Arc::from(chosen.content_type(&this.offered))
                });
                let out = outbound(message, content_type.clone(), None);
                Poll::Ready(Some(Ok(out)))
            }
            Poll::Ready(Some(Err(e))) => {
                let status = this
                    .shared
                    .take_failure()
                    .unwrap_or_else(|| this.shared.function_failed(e));
                this.finish(Some(Err(status)))
            }
            Poll::Ready(None) => match this.shared.take_failure() {
                Some(status) => this.finish(Some(Err(status))),
                None => this.output_ended(cx),
            },
            Poll::Pending => match this.shared.take_failure() {
                Some(status) => this.finish(Some(Err(status))),
                None => Poll::Pending,
            },
        }
    }
}
