//! Streaming functions over a Call: the function is opened once per call over the call's
//! input stream; its output is polled only as fast as the caller reads it (backpressure), and
//! inputs are pulled from the transport only when the function asks for them. No task, no
//! channel, no buffer.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt, stream};
use tonic::Status;

use super::message::outbound;
use super::{
    CALL_DEFAULT_CONTENT_TYPE, Call, Inbound, InboundStream, Outbound, OutboundStream, status,
};
use crate::function::{BoxInput, CallMeta, FunctionError, Headers, InputMessage, OutputStream};
use crate::negotiate::{self, Chosen};
use crate::stats::Stats;
use crate::sync::lock;

impl Call {
    /// A streaming function over a Call: one input stream, one output stream.
    /// `ends_with_output`: a supplier's call ends with its output, not at half-close.
    ///
    /// A function that takes `&Context` and an input opens at the call's first message (or
    /// its half-close), so that its context holds that message's headers; any other opens
    /// when the call does. A supplier's context has no headers: it reads no message.
    pub(crate) fn streaming(
        &self,
        inbound: InboundStream,
        ends_with_output: bool,
    ) -> OutboundStream {
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
            meta: self.meta.clone(),
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
    pub(crate) fn open(
        &self,
        headers: Headers,
        inputs: Vec<BoxInput>,
    ) -> Result<OutputStream, Status> {
        let ctx = self.context(headers);
        match self.inner.function.open(&ctx, inputs) {
            Ok(mut outputs) => Ok(outputs.remove(0)),
            Err(e) => Err(self.failed(e)),
        }
    }
}

/// What the input and output sides of a streaming call share.
pub(crate) struct Shared {
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
    pub(crate) fn new(stats: Arc<Stats>) -> Shared {
        Shared {
            stats,
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            chosen: OnceLock::new(),
            leftover: Mutex::new(None),
        }
    }

    fn leave(&self, leftover: Leftover) {
        *lock(&self.leftover) = Some(leftover);
    }

    fn take_leftover(&self) -> Option<Leftover> {
        lock(&self.leftover).take()
    }

    /// Counts the function's failure and maps it to its status.
    pub(crate) fn function_failed(&self, e: FunctionError) -> Status {
        self.stats.function_failed(&e);
        status::function(e)
    }

    pub(crate) fn fail(&self, status: Status) {
        lock(&self.failure).get_or_insert(status);
        self.failed.store(true, Ordering::Release);
    }

    pub(crate) fn take_failure(&self) -> Option<Status> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        let taken = lock(&self.failure).take();
        Some(taken.unwrap_or_else(|| Status::internal("Invoker: the call failed")))
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub(crate) fn decided(&self) -> Option<usize> {
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
                        .map_err(status::negotiation)?;
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
                .map_err(status::negotiation)?;
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
    engine: Call,
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
    /// The call, which a worker process's function marks when it leaves inputs unread.
    meta: CallMeta,
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
        if self.meta.input_left_unread() {
            // A worker's function left messages it was sent ahead unread: as `Unread` below.
            return self.finish(Some(Err(status::unread())));
        }
        let rest = match self.supplier_inbound.take() {
            Some(_) if self.ends_with_output => None,
            Some(inbound) => Some(inbound),
            None => match self.shared.take_leftover() {
                Some(Leftover::Open(inbound)) => Some(inbound),
                Some(Leftover::Unread) => return self.finish(Some(Err(status::unread()))),
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
            Poll::Ready(Some(Ok(_))) => self.finish(Some(Err(status::unread()))),
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
