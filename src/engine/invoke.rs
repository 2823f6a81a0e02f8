//! Calls with numbered inputs and outputs: a start [`Frame`] naming what each output accepts,
//! then data frames for numbered inputs; results for numbered outputs. riff's
//! `streaming.Riff/Invoke` (SPEC §2.2) is this model on the wire; `server::riff` converts its
//! signals to [`Frame`]s, and nothing here knows the protocol's messages.
//!
//! - request/reply functions are mapped over every data frame;
//! - streaming functions get one input stream per input, demultiplexed from the frames by
//!   `argIndex` through small bounded queues, and their outputs are polled round-robin; the
//!   call completes when the last output completes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use tonic::Status;

use super::message::outbound;
use super::streaming::Shared;
use super::{Call, Engine, Inbound, Outbound, status};
use crate::function::{InputMessage, OutputStream, Shape};
use crate::negotiate::{self, Chosen};

/// The media type of an InputFrame without contentType (SPEC §2.2).
pub const FRAME_DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// How many frames may wait for an input the function is not reading yet; past that, reading
/// from the transport pauses until it catches up (backpressure instead of unbounded buffers).
const QUEUE_LIMIT: usize = 64;

/// A frame of a call with numbered inputs and outputs (riff's InputSignal, as the engine sees it).
#[derive(Debug)]
pub enum Frame {
    /// A StartFrame: the Accept-style list of each output.
    Start {
        /// One entry per output.
        expected_content_types: Vec<String>,
    },
    /// A data frame for input `arg_index`; its contentType is in the headers as Content-Type.
    Data {
        /// The input it is for.
        arg_index: i32,
        /// The message.
        message: Inbound,
    },
    /// An InputSignal with no frame set.
    Empty,
}

/// What the inbound side of an Invoke call yields.
pub type FrameInput = BoxStream<'static, Result<Frame, Status>>;

/// What the outbound side of an Invoke call yields: (resultIndex, message).
pub type FrameStream = BoxStream<'static, Result<(usize, Outbound), Status>>;

fn fail(status: Status) -> FrameStream {
    stream::once(async move { Err(status) }).boxed()
}

impl Engine {
    /// Runs one `streaming.Riff/Invoke` call.
    pub fn invoke(&self, inbound: FrameInput, meta: super::CallMeta) -> FrameStream {
        let engine = self.for_call(meta);
        let opened = async move {
            let mut inbound = inbound;
            let expected = match inbound.next().await {
                None => return stream::empty().boxed(),
                Some(Err(status)) => return fail(status),
                Some(Ok(Frame::Start {
                    expected_content_types,
                })) => expected_content_types,
                Some(Ok(_)) => {
                    return fail(status::protocol_violation(
                        "the first frame must be a StartFrame",
                    ));
                }
            };
            let info = engine.inner.function.info();
            // riff's HTTP adapter always expects one output: a request/reply function without
            // output answers each frame with an empty one (SPEC §2.2).
            if info.shape == Shape::RequestReply && info.outputs.is_empty() && expected.len() == 1 {
                let content_type = empty_frame_type(&expected[0]);
                return engine.map_frames(inbound, None, Some(content_type));
            }
            if expected.len() != info.outputs.len() {
                return fail(status::protocol_violation(format!(
                    "the StartFrame expects {} outputs, but '{}' has {}",
                    expected.len(),
                    info.name,
                    info.outputs.len()
                )));
            }
            let mut chosen = Vec::with_capacity(expected.len());
            for (accept, port) in expected.iter().zip(&info.outputs) {
                match negotiate::accept(Some(accept), &port.media_types) {
                    Ok(c) => chosen.push(c),
                    Err(e) => return fail(status::negotiation(e)),
                }
            }
            match info.shape {
                Shape::RequestReply => engine.map_frames(inbound, chosen.pop(), None),
                // A function taking `&Context` and inputs opens at the first data frame (or
                // half-close), so that its context holds that frame's headers.
                Shape::Streaming if info.uses_context && !info.inputs.is_empty() => {
                    match inbound.next().await.transpose() {
                        Err(status) => fail(status),
                        Ok(first) => engine.invoke_streaming(inbound, chosen, Some(first)),
                    }
                }
                Shape::Streaming => engine.invoke_streaming(inbound, chosen, None),
            }
        };
        stream::once(opened).flatten().boxed()
    }
}

impl Call {
    /// A request/reply function applied to every data frame, in order.
    ///
    /// A function without input is called once per data frame on input 0 (its payload is not
    /// read), or once at half-close when no data frame came. `empty_reply` is set when the
    /// function has no output but the StartFrame expects one: each call is then answered with
    /// an empty frame of that contentType.
    fn map_frames(
        &self,
        inbound: FrameInput,
        chosen: Option<Chosen>,
        empty_reply: Option<Arc<str>>,
    ) -> FrameStream {
        let takes_input = !self.inner.function.info().inputs.is_empty();
        let called = Arc::new(AtomicBool::new(false));
        let call = {
            let engine = self.clone();
            let called = called.clone();
            move |message: Option<Inbound>| {
                let engine = engine.clone();
                let chosen = chosen.clone();
                let empty_reply = empty_reply.clone();
                called.store(true, Ordering::Relaxed);
                async move {
                    let out = engine
                        .invoke_once(message, FRAME_DEFAULT_CONTENT_TYPE, chosen)
                        .await?;
                    Ok(match (out, empty_reply) {
                        (None, Some(content_type)) => Some(Outbound {
                            payload: Default::default(),
                            content_type,
                            headers: Vec::new(),
                        }),
                        (out, _) => out,
                    })
                }
            }
        };
        let per_frame = {
            let call = call.clone();
            inbound.then(move |signal| {
                let call = call.clone();
                async move {
                    match signal? {
                        Frame::Data {
                            arg_index: 0,
                            message,
                        } => call(takes_input.then_some(message)).await,
                        other => Err(violation(&other, usize::from(takes_input))),
                    }
                }
            })
        };
        // A function without input that no frame called runs once at half-close.
        let at_end = stream::once(async move {
            if takes_input || called.load(Ordering::Relaxed) {
                return Ok(None);
            }
            call(None).await
        });
        let frames = per_frame
            .chain(at_end)
            .filter_map(|r| async move { r.transpose() });
        stop_after_error(frames.map(|r| r.map(|out| (0, out)))).boxed()
    }

    /// A streaming function: inputs demultiplexed from the frames, outputs merged.
    ///
    /// `first` is set when the call's first signal after the StartFrame was read before the
    /// function opens (None inside: the client half-closed): a data frame's headers are then
    /// the context's, and the frame goes to its input's queue.
    fn invoke_streaming(
        &self,
        inbound: FrameInput,
        chosen: Vec<Chosen>,
        first: Option<Option<Frame>>,
    ) -> FrameStream {
        let info = self.inner.function.info();
        let shared = Arc::new(Shared::new(self.inner.stats.clone()));
        let inputs = info.inputs.len();
        let (demux, supplier_inbound) = if inputs == 0 {
            (None, Some(inbound))
        } else {
            let demux = Arc::new(Mutex::new(Demux {
                inbound,
                queues: (0..inputs).map(|_| VecDeque::new()).collect(),
                wakers: vec![None; inputs],
                input_types: info.inputs.iter().map(|p| p.media_types.clone()).collect(),
                ended: false,
                shared: shared.clone(),
            }));
            (Some(demux), None)
        };
        let mut headers = Vec::new();
        if let (Some(first), Some(demux)) = (first, &demux) {
            let mut demux = crate::sync::lock(demux);
            match first {
                None => demux.ended = true,
                Some(signal) => {
                    if let Frame::Data { message, .. } = &signal {
                        headers = message.headers.clone();
                    }
                    if let Err(status) = demux.route(signal) {
                        return fail(status);
                    }
                }
            }
        }
        let input_streams = (0..inputs)
            .filter_map(|index| {
                let demux = demux.clone()?;
                Some(Box::pin(DemuxInput { demux, index }) as crate::function::BoxInput)
            })
            .collect();
        let ctx = self.context(headers);
        let opened = self.inner.function.open(&ctx, input_streams);
        let outputs = match opened {
            Ok(outputs) => outputs,
            Err(e) => return fail(self.failed(e)),
        };
        let content_types = chosen
            .iter()
            .enumerate()
            .map(|(port, c)| self.content_type(port, c))
            .collect();
        Box::pin(Merged {
            outputs: outputs.into_iter().map(Some).collect(),
            chosen,
            content_types,
            next: 0,
            shared,
            supplier_inbound,
            done: false,
        })
    }
}

/// The contentType of the empty frames that answer a function without output: `text/plain` or
/// `application/octet-stream` as the StartFrame's Accept list prefers, else none.
fn empty_frame_type(accept: &str) -> Arc<str> {
    const EMPTY_TYPES: [&str; 2] = ["text/plain", FRAME_DEFAULT_CONTENT_TYPE];
    negotiate::accept(Some(accept), &EMPTY_TYPES).map_or_else(
        |_| Arc::from(""),
        |c| Arc::from(c.content_type(&EMPTY_TYPES)),
    )
}

/// The error for a signal that is not a data frame for a valid input.
fn violation(signal: &Frame, inputs: usize) -> Status {
    match signal {
        Frame::Start { .. } => status::protocol_violation("a second StartFrame"),
        Frame::Empty => status::protocol_violation("an InputSignal with no frame"),
        Frame::Data { arg_index, .. } => status::protocol_violation(format!(
            "argIndex {arg_index} is out of range: the function has {inputs} input(s)"
        )),
    }
}

/// Ends a stream after its first error.
fn stop_after_error<T>(
    inner: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static
where
    T: Send + 'static,
{
    inner.scan(false, |failed, item| {
        let out = if *failed { None } else { Some(item) };
        if let Some(Err(_)) = &out {
            *failed = true;
        }
        std::future::ready(out)
    })
}

/// Frames demultiplexed by argIndex into one queue per input.
struct Demux {
    inbound: FrameInput,
    queues: Vec<VecDeque<InputMessage>>,
    wakers: Vec<Option<Waker>>,
    input_types: Vec<Vec<String>>,
    ended: bool,
    shared: Arc<Shared>,
}

impl Demux {
    fn wake(&mut self, index: usize) {
        if let Some(waker) = self.wakers.get_mut(index).and_then(Option::take) {
            waker.wake();
        }
    }

    fn wake_all(&mut self) {
        for index in 0..self.wakers.len() {
            self.wake(index);
        }
    }

    fn poll_input(&mut self, index: usize, cx: &mut Context<'_>) -> Poll<Option<InputMessage>> {
        loop {
            if let Some(message) = self.queues[index].pop_front() {
                return Poll::Ready(Some(message));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            if self.shared.has_failed() {
                return Poll::Pending;
            }
            if let Some(full) = self.queues.iter().position(|q| q.len() >= QUEUE_LIMIT) {
                // Another input is far behind: wait until it reads before reading more.
                self.wakers[index] = Some(cx.waker().clone());
                self.wake(full);
                return Poll::Pending;
            }
            let signal = match self.inbound.poll_next_unpin(cx) {
                Poll::Pending => {
                    self.wakers[index] = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    self.wake_all();
                    continue;
                }
                Poll::Ready(Some(Err(status))) => {
                    self.fail(status);
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(signal))) => signal,
            };
            match self.route(signal) {
                Ok(target) if target != index => self.wake(target),
                Ok(_) => {}
                Err(status) => {
                    self.fail(status);
                    return Poll::Pending;
                }
            }
        }
    }

    /// Negotiates a data frame's contentType and queues it for its input; returns the input.
    fn route(&mut self, signal: Frame) -> Result<usize, Status> {
        let inputs = self.queues.len();
        let (target, message) = match signal {
            Frame::Data { arg_index, message }
                if usize::try_from(arg_index).is_ok_and(|i| i < inputs) =>
            {
                (arg_index as usize, message)
            }
            other => return Err(violation(&other, inputs)),
        };
        let media_type = negotiate::content_type(
            message.header("Content-Type"),
            FRAME_DEFAULT_CONTENT_TYPE,
            &self.input_types[target],
        )
        .map_err(status::negotiation)?;
        self.queues[target].push_back(InputMessage {
            payload: message.payload,
            headers: message.headers,
            media_type,
        });
        Ok(target)
    }

    fn fail(&mut self, status: Status) {
        self.shared.fail(status);
        self.wake_all();
    }
}

/// One input of a streaming function, fed by the demultiplexer.
struct DemuxInput {
    demux: Arc<Mutex<Demux>>,
    index: usize,
}

impl Stream for DemuxInput {
    type Item = InputMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<InputMessage>> {
        crate::sync::lock(&self.demux).poll_input(self.index, cx)
    }
}

/// A streaming function's outputs, merged round-robin into one stream of frames.
struct Merged {
    outputs: Vec<Option<OutputStream>>,
    chosen: Vec<Chosen>,
    content_types: Vec<Arc<str>>,
    next: usize,
    shared: Arc<Shared>,
    /// A supplier's call, watched for half-close since the function does not read it.
    supplier_inbound: Option<FrameInput>,
    done: bool,
}

impl Merged {
    fn finish(
        &mut self,
        item: Option<Result<(usize, Outbound), Status>>,
    ) -> Poll<Option<Result<(usize, Outbound), Status>>> {
        self.done = true;
        self.outputs.clear();
        self.supplier_inbound = None;
        Poll::Ready(item)
    }
}

impl Stream for Merged {
    type Item = Result<(usize, Outbound), Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(inbound) = this.supplier_inbound.as_mut() {
            match inbound.poll_next_unpin(cx) {
                Poll::Ready(None) => return this.finish(None),
                Poll::Ready(Some(Err(status))) => return this.finish(Some(Err(status))),
                Poll::Ready(Some(Ok(signal))) => {
                    return this.finish(Some(Err(violation(&signal, 0))));
                }
                Poll::Pending => {}
            }
        }
        let count = this.outputs.len();
        for k in 0..count {
            if let Some(status) = this.shared.take_failure() {
                return this.finish(Some(Err(status)));
            }
            let i = (this.next + k) % count;
            let Some(output) = this.outputs[i].as_mut() else {
                continue;
            };
            match output.poll_next(cx, this.chosen[i].index) {
                Poll::Ready(Some(Ok(message))) => {
                    this.next = (i + 1) % count;
                    let out = outbound(message, this.content_types[i].clone(), None);
                    return Poll::Ready(Some(Ok((i, out))));
                }
                Poll::Ready(Some(Err(e))) => {
                    let status = this
                        .shared
                        .take_failure()
                        .unwrap_or_else(|| this.shared.function_failed(e));
                    return this.finish(Some(Err(status)));
                }
                // This output is complete; the others go on.
                Poll::Ready(None) => this.outputs[i] = None,
                Poll::Pending => {}
            }
        }
        if let Some(status) = this.shared.take_failure() {
            return this.finish(Some(Err(status)));
        }
        if this.outputs.iter().all(Option::is_none) {
            return this.finish(None);
        }
        Poll::Pending
    }
}
