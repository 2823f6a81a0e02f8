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

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tonic::Status;

use crate::function::{CallContext, Function, FunctionError, Headers, Shape};
use crate::negotiate::Chosen;
use crate::stats::Stats;
use blocking::Blocking;
use pool::Pool;

mod blocking;
mod invoke;
mod message;
pub mod pool;
mod request_reply;
pub mod status;
mod streaming;

pub use crate::function::CallMeta;
pub use blocking::runtime;
pub use invoke::{FRAME_DEFAULT_CONTENT_TYPE, Frame};
pub use message::{Inbound, Outbound};

/// The media type of a Call message without Content-Type (SPEC §5).
pub const CALL_DEFAULT_CONTENT_TYPE: &str = "text/plain";

/// Runs calls of one function: what every call shares. Cloning it costs a reference count.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// One call being run: the engine's shared state and the call's own [`CallMeta`]. Made once
/// per call (two reference counts); the request/reply, streaming and Invoke machinery are its
/// methods (`request_reply`, `streaming`, `invoke`).
#[derive(Debug, Clone)]
pub(crate) struct Call {
    inner: Arc<Inner>,
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
        }
    }

    /// The engine's side of one call.
    fn for_call(&self, meta: CallMeta) -> Call {
        Call {
            inner: self.inner.clone(),
            meta,
        }
    }

    /// The counters this engine reports to.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// The function this engine runs.
    pub fn function(&self) -> &Function {
        &self.inner.function
    }

    /// Runs one invocation of a stateful function for `invoker statefun`: `message` is the
    /// invocation's value (its `media_type` the index of its typename among the function's
    /// message types), `stateful` its StateFun context. The same path as a request/reply
    /// call's (inline or on a function thread); a failure is the status the batch fails with.
    pub async fn invoke_stateful(
        &self,
        meta: CallMeta,
        message: crate::function::InputMessage,
        stateful: crate::function::Stateful,
    ) -> Result<(), Status> {
        self.for_call(meta).invoke_stateful(message, stateful).await
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
}

impl Call {
    /// The Content-Type of output `port` as `chosen`: shared, unless the Accept range that
    /// chose it added parameters.
    pub(crate) fn content_type(&self, port: usize, chosen: &Chosen) -> Arc<str> {
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

    /// Counts the function's failure and maps it to its status.
    pub(crate) fn failed(&self, e: FunctionError) -> Status {
        self.inner.stats.function_failed(&e);
        status::function(e)
    }

    /// The function's `&Context` for this call, holding `headers`.
    pub(crate) fn context(&self, headers: Headers) -> CallContext {
        CallContext {
            function_name: self.inner.function_name.clone(),
            instance_id: self.inner.instance_id.clone(),
            call: self.meta.clone(),
            headers,
            config: self.inner.config.clone(),
            metrics: Some(self.inner.stats.clone()),
            stateful: None,
        }
    }
}
