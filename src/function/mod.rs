//! The function: where `FUNCTION_URI` points, loading the library, and calling into it.
//!
//! [`uri`] parses `FUNCTION_URI`; [`Library`] loads and validates a library and hands out
//! [`Function`]s; `ffi` and `crash` (the fatal-signal handler) are the only modules of the
//! daemon with `unsafe`. Everything here is safe to use from the rest of the daemon: a
//! [`Function`] can be invoked (request/reply) or opened (streaming) with owned Rust values,
//! and errors come back typed. A panic caught in the library is logged by `panics`.

pub mod channel;
#[allow(unsafe_code)]
mod crash;
#[allow(unsafe_code)]
mod ffi;
mod library;
mod load_error;
mod panics;
// The round-trip test of the boundary; its counting allocator is its only `unsafe`.
#[cfg(test)]
#[allow(unsafe_code)]
mod round_trip;
pub mod uri;
pub mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use crash::install as install_crash_handler;
pub use ffi::BoxInput;
pub use library::{Function, Library};
pub use load_error::LoadError;
pub use panics::flush as flush_panic_log;

/// Whether a function is called once per message or once per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// At most one input, at most one output, once per message.
    RequestReply,
    /// Input streams to output streams, once per call.
    Streaming,
}

/// One input or output of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// The port's name.
    pub name: String,
    /// Media type essences, in the function's preference order.
    pub media_types: Vec<String>,
}

/// What a library says about one of its functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// The handler name.
    pub name: String,
    /// Its shape.
    pub shape: Shape,
    /// Its inputs.
    pub inputs: Vec<PortInfo>,
    /// Its outputs.
    pub outputs: Vec<PortInfo>,
    /// Whether it takes the call's context.
    pub uses_context: bool,
    /// For a stateful (Flink StateFun) function: its type and value specs.
    pub stateful: Option<StatefulInfo>,
}

/// What makes a function a StateFun function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatefulInfo {
    /// Its type, `namespace/name`.
    pub function_type: String,
    /// The typenames of the messages it takes, exactly as declared (the input port's media
    /// types, which the host otherwise lower-cases).
    pub message_types: Vec<String>,
    /// Its persisted values.
    pub values: Vec<ValueSpecInfo>,
}

/// One persisted value a stateful function declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSpecInfo {
    /// The name.
    pub name: String,
    /// Its typename.
    pub typename: String,
    /// When it expires.
    pub expiration: Expiration,
}

/// When a persisted value expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiration {
    /// Never.
    Never,
    /// This many milliseconds after its last write.
    AfterWrite(u64),
    /// This many milliseconds after the function's last invocation for its address.
    AfterInvoke(u64),
}

/// A StateFun address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    /// The function type, `namespace/name`.
    pub function_type: String,
    /// The id.
    pub id: String,
}

/// A StateFun value: typename and bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypedValue {
    /// The typename, `namespace/name`.
    pub typename: String,
    /// The bytes.
    pub value: Bytes,
}

/// A message a stateful function sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Now.
    Message {
        /// Where to.
        target: Address,
        /// What.
        value: TypedValue,
    },
    /// After a delay, with an optional cancellation token (empty for none).
    Delayed {
        /// Where to.
        target: Address,
        /// What.
        value: TypedValue,
        /// The delay in milliseconds.
        delay_millis: u64,
        /// The token that can cancel it; empty for none.
        cancellation_token: String,
    },
    /// Cancel the delayed message with this token.
    Cancel {
        /// The token.
        cancellation_token: String,
    },
    /// To an egress.
    Egress {
        /// The egress, `namespace/type`.
        egress: String,
        /// What.
        value: TypedValue,
    },
}

/// One persisted value during a batch: its current value and whether the batch changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// The value's name.
    pub name: String,
    /// The value, `None` when it has none.
    pub value: Option<Bytes>,
    /// Whether an invocation of the batch wrote or removed it.
    pub changed: bool,
}

/// What a batch of invocations of one address shares: its persisted values, and everything
/// its invocations sent, in order. Read by the protocol after the batch.
#[derive(Debug, Default)]
pub struct Batch {
    /// The function's values, in declaration order.
    pub cells: Vec<Cell>,
    /// What the invocations sent, in order.
    pub sent: Vec<Sent>,
    /// Bytes held by `sent` and the changed cells: at most `limit`.
    pub bytes: usize,
    /// The bound on `bytes` (the response's size, roughly).
    pub limit: usize,
}

/// The StateFun side of one invocation: its addresses and its batch.
#[derive(Debug)]
pub struct Stateful {
    /// The function's address (the batch's target).
    pub self_address: Address,
    /// The sender's, when a function sent the message.
    pub caller: Option<Address>,
    /// The batch the invocation is in.
    pub batch: Arc<std::sync::Mutex<Batch>>,
}

/// Whether `s` is `namespace/name` with both parts non-empty (a StateFun typename).
pub fn is_typename(s: &str) -> bool {
    matches!(s.rsplit_once('/'), Some((ns, name)) if !ns.is_empty() && !name.is_empty())
}

/// Header text: a name or a value. Text of up to 24 bytes (on 64-bit targets), as most header
/// names and values are, is stored inline: decoding, cloning and dropping it allocate nothing.
pub type Text = compact_str::CompactString;

/// Headers as (name, value) pairs, in order; a name may repeat.
pub type Headers = Vec<(Text, Text)>;

/// A message for the function.
#[derive(Debug, Clone, Default)]
pub struct InputMessage {
    /// The payload.
    pub payload: Bytes,
    /// Headers as (name, value) pairs.
    pub headers: Headers,
    /// Index of the payload's media type among the input port's media types.
    pub media_type: usize,
}

/// A message from the function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputMessage {
    /// The payload.
    pub payload: Bytes,
    /// Headers the function set.
    pub headers: Headers,
}

/// Why a call into the function failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    /// The function returned an error; its text.
    #[error("{0}")]
    Failed(String),
    /// The function panicked; the panic message.
    #[error("Invoker: Function Panicked: {0}")]
    Panicked(String),
    /// An input could not be decoded into the function's input type.
    #[error("{0}")]
    BadInput(String),
    /// The library broke the ABI.
    #[error("Invoker: the function library broke the ABI: {0}")]
    Abi(String),
    /// The worker process running the call died (`--isolation process`); the cause names the
    /// signal or the exit status.
    #[error("Invoker: Function Crashed: {0}")]
    Crashed(String),
}

/// One output stream of a streaming function: in this process, or in a worker process.
/// Dropping it releases the function's stream.
pub struct OutputStream(Output);

enum Output {
    Local(ffi::OutputStream),
    Remote(worker::RemoteOutput),
}

impl OutputStream {
    fn local(stream: ffi::OutputStream) -> OutputStream {
        OutputStream(Output::Local(stream))
    }

    fn remote(stream: worker::RemoteOutput) -> OutputStream {
        OutputStream(Output::Remote(stream))
    }

    /// Polls the next output, encoded as the output port's media type number `media_type`.
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
        media_type: usize,
    ) -> std::task::Poll<Option<Result<OutputMessage, FunctionError>>> {
        match &mut self.0 {
            Output::Local(stream) => stream.poll_next(cx, media_type),
            Output::Remote(stream) => stream.poll_next(cx, media_type),
        }
    }
}

/// What the protocol knows of a call before the engine runs it, shared by everything that
/// serves the call: cloning it is one reference count.
#[derive(Debug, Clone, Default)]
pub struct CallMeta(Arc<CallState>);

#[derive(Debug, Default)]
struct CallState {
    id: u64,
    deadline: Option<Instant>,
    cancelled: AtomicBool,
    /// A worker's function released an input with messages forwarded to it and never read.
    unread: AtomicBool,
    span: OnceLock<tracing::Span>,
}

impl CallMeta {
    /// A new call with a fresh id, and a deadline `timeout` from now if there is one.
    pub fn new(timeout: Option<Duration>) -> CallMeta {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        CallMeta(Arc::new(CallState {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
            cancelled: AtomicBool::new(false),
            unread: AtomicBool::new(false),
            span: OnceLock::new(),
        }))
    }

    /// A call made elsewhere (in the serving process, for a worker process): its id and
    /// deadline as they were there.
    pub fn with_id(id: u64, deadline: Option<Instant>) -> CallMeta {
        CallMeta(Arc::new(CallState {
            id,
            deadline,
            cancelled: AtomicBool::new(false),
            unread: AtomicBool::new(false),
            span: OnceLock::new(),
        }))
    }

    /// The call's id, unique in this process: logs about the call carry it.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// When the caller stops waiting (from `grpc-timeout`).
    pub fn deadline(&self) -> Option<Instant> {
        self.0.deadline
    }

    /// Marks the call cancelled (the caller went away, or the deadline or the drain's grace
    /// passed); the function's `Context` sees it.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
    }

    /// Whether the call has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// Marks that the function released an input leaving messages it never read: in process
    /// those stay with the transport (and the engine refuses them), but a worker process is
    /// sent messages ahead of its function's reads, so it reports them back and the engine
    /// ends the call as it would have in process.
    pub fn left_input_unread(&self) {
        self.0.unread.store(true, Ordering::Release);
    }

    /// Whether [`CallMeta::left_input_unread`] was called.
    pub fn input_left_unread(&self) -> bool {
        self.0.unread.load(Ordering::Acquire)
    }

    /// The call's span, `call` with its `id`, made the first time something is logged in the
    /// call: a call that logs nothing costs no span (making one per call, with the fmt layer
    /// formatting its fields, cost a fifth of a fast function's request/reply throughput).
    pub fn span(&self) -> &tracing::Span {
        self.0
            .span
            .get_or_init(|| tracing::info_span!("call", id = self.0.id))
    }
}

/// Where a function's custom metrics (`Context::record_metric`) go: the daemon's statistics,
/// kept above this module so that the boundary knows nothing of how they are exported.
pub trait MetricSink: Send + Sync + std::fmt::Debug {
    /// Adds `value` to the metric `name`.
    fn custom_metric(&self, name: &str, value: f64);
}

/// What a function can learn about the call it runs in (its `&Context`).
#[derive(Debug, Default)]
pub struct CallContext {
    /// The function's name.
    pub function_name: Arc<str>,
    /// This invoker instance's id.
    pub instance_id: Arc<str>,
    /// The call: its id, deadline, cancellation and span.
    pub call: CallMeta,
    /// Headers of the call's (first) message.
    pub headers: Headers,
    /// User configuration.
    pub config: Arc<HashMap<String, String>>,
    /// Where custom metrics go.
    pub metrics: Option<Arc<dyn MetricSink>>,
    /// The invocation's StateFun context, for a stateful function served by `invoker
    /// statefun` (its state and messaging callbacks are lent only then).
    pub stateful: Option<Stateful>,
}

impl CallContext {
    fn deadline_millis(&self) -> i64 {
        match self.call.deadline() {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .try_into()
                .unwrap_or(i64::MAX),
            None => -1,
        }
    }

    fn is_cancelled(&self) -> bool {
        self.call.is_cancelled()
    }

    /// Logs a function's message at an ABI log level, in the call's span, tagged with the
    /// function's name and the call id.
    fn log(&self, level: u32, message: &str) {
        let level = match level {
            invoker_abi::level::ERROR => tracing::Level::ERROR,
            invoker_abi::level::WARN => tracing::Level::WARN,
            invoker_abi::level::INFO => tracing::Level::INFO,
            invoker_abi::level::DEBUG => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        };
        if level > tracing::level_filters::LevelFilter::current() {
            // Filtered out: no need to make the call's span for it.
            return;
        }
        let function = &*self.function_name;
        let call = self.call.id();
        let _in_call = self.call.span().enter();
        match level {
            tracing::Level::ERROR => tracing::error!(function, call, "{message}"),
            tracing::Level::WARN => tracing::warn!(function, call, "{message}"),
            tracing::Level::INFO => tracing::info!(function, call, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(function, call, "{message}"),
            _ => tracing::trace!(function, call, "{message}"),
        }
    }

    fn record_metric(&self, name: &str, value: f64) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let _in_call = self.call.span().enter();
            tracing::debug!(function = %self.function_name, call = self.call.id(), metric = name, value, "custom metric");
        }
        if let Some(metrics) = &self.metrics {
            metrics.custom_metric(name, value);
        }
    }
}
