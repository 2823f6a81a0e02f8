//! The function: where `FUNCTION_URI` points, loading the library, and calling into it.
//!
//! [`uri`] parses `FUNCTION_URI`; [`Library`] loads and validates a library and hands out
//! [`Function`]s; `ffi` is the one module of the daemon with `unsafe`. Everything here is safe
//! to use from the rest of the daemon: a [`Function`] can be invoked (request/reply) or
//! opened (streaming) with owned Rust values, and errors come back typed.

mod ffi;
mod library;
pub mod uri;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::stats::Stats;

pub use ffi::BoxInput;
pub use ffi::OutputStream;
pub use library::{Function, Library, LoadError};

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
}

/// A message for the function.
#[derive(Debug, Clone, Default)]
pub struct InputMessage {
    /// The payload.
    pub payload: Bytes,
    /// Headers as (name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// Index of the payload's media type among the input port's media types.
    pub media_type: usize,
}

/// A message from the function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputMessage {
    /// The payload.
    pub payload: Bytes,
    /// Headers the function set.
    pub headers: Vec<(String, String)>,
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
}

/// What a function can learn about the call it runs in (its `&Context`).
#[derive(Debug, Default)]
pub struct CallContext {
    /// The function's name.
    pub function_name: Arc<str>,
    /// This invoker instance's id.
    pub instance_id: Arc<str>,
    /// The call's id, unique in this process: logs from the function carry it.
    pub call_id: u64,
    /// Headers of the call's (first) message.
    pub headers: Vec<(String, String)>,
    /// User configuration.
    pub config: Arc<HashMap<String, String>>,
    /// When the call must be finished, if the caller set a deadline.
    pub deadline: Option<Instant>,
    /// Set when the caller cancels or the deadline passes.
    pub cancelled: Arc<AtomicBool>,
    /// Where custom metrics go.
    pub stats: Option<Arc<Stats>>,
}

impl CallContext {
    fn deadline_millis(&self) -> i64 {
        match self.deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .try_into()
                .unwrap_or(i64::MAX),
            None => -1,
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn record_metric(&self, name: &str, value: f64) {
        tracing::debug!(function = %self.function_name, call = self.call_id, metric = name, value, "custom metric");
        if let Some(stats) = &self.stats {
            stats.custom_metric(name, value);
        }
    }
}
