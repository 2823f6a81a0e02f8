//! A streaming call in a worker, the host's side: the engine polls [`RemoteOutput`]s as it
//! polls a library's output streams, and each poll both takes the outputs the worker sent and
//! forwards the call's inputs ahead to the worker. No task: the worker sends an output only
//! against a credit, granted as the engine takes outputs (1 at first, so the output type can
//! still be chosen by the first Accept, then up to [`WINDOW`]); inputs are read from the call
//! and forwarded, in one write per poll, while fewer than `channel::INPUT_WINDOW` (and
//! `INPUT_WINDOW_BYTES`) are forwarded and not yet taken by the worker's function, which
//! returns credits (`TAKEN`) as it takes them. When the function releases an input the worker
//! says how many it took in all; any forwarded past that were never read, and the call ends
//! as in process (`CallMeta::left_input_unread`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;

use super::{Frame, MetricSink, Pending, WINDOW, Worker, Workers, code, to_host, to_worker};
use crate::function::channel::{INPUT_WINDOW, INPUT_WINDOW_BYTES, Malformed, Reader};
use crate::function::{
    BoxInput, CallContext, CallMeta, FunctionError, InputMessage, OutputMessage, OutputStream,
};
use crate::sync::lock;

/// What a stream's outputs and the worker's reader share.
pub(crate) struct Shared {
    pub(super) metrics: Option<Arc<dyn MetricSink>>,
    /// The call, marked if the function leaves forwarded inputs unread.
    call: CallMeta,
    state: Mutex<State>,
}

struct State {
    /// A crash or an error opening: every output reports it once, then ends.
    failed: Option<FunctionError>,
    outputs: Vec<Port>,
    /// The host's input streams; `None` once the function released one or it ended.
    inputs: Vec<Option<BoxInput>>,
    /// What each input port has forwarded to the worker.
    forwarded: Vec<Forwarded>,
    /// Outputs still held by the engine.
    open_outputs: usize,
}

/// An input port's inputs forwarded to the worker and not yet taken by its function.
#[derive(Default)]
struct Forwarded {
    /// Their sizes, oldest first.
    sizes: VecDeque<usize>,
    /// Their total size.
    bytes: usize,
    /// How many were forwarded in all.
    sent: u64,
}

impl Forwarded {
    /// Whether the window has room for one more.
    fn room(&self) -> bool {
        self.sizes.is_empty()
            || (self.sizes.len() < INPUT_WINDOW as usize && self.bytes < INPUT_WINDOW_BYTES)
    }

    fn taken(&mut self, n: u32) {
        for _ in 0..n {
            match self.sizes.pop_front() {
                Some(size) => self.bytes -= size,
                None => break,
            }
        }
    }
}

#[derive(Default)]
struct Port {
    queue: VecDeque<OutputMessage>,
    /// The port ended; with an error to report first.
    ended: Option<Option<FunctionError>>,
    /// Credits granted and not yet used.
    granted: u32,
    /// Whether an output has been taken (credits then come by the window).
    flowing: bool,
    /// The media type last sent with a credit.
    media_type: Option<u32>,
    waker: Option<Waker>,
    /// The failure was reported.
    reported: bool,
}

impl Shared {
    /// The worker died: every output fails with `error`.
    pub(super) fn fail(&self, error: FunctionError) {
        let wakers: Vec<Waker> = {
            let mut state = lock(&self.state);
            state.failed.get_or_insert(error);
            state
                .outputs
                .iter_mut()
                .filter_map(|p| p.waker.take())
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// A frame from the worker about this stream.
    pub(super) fn frame(&self, kind: u8, r: &mut Reader) -> Result<(), Malformed> {
        let mut state = lock(&self.state);
        let mut wake_all = false;
        let mut wake = None;
        match kind {
            to_host::OPENED => {
                let result = r.u8()?;
                if result != code::OK {
                    let error = r.error(result)?;
                    state.failed.get_or_insert(error);
                    wake_all = true;
                }
            }
            to_host::OUTPUT => {
                let port = r.u32()? as usize;
                let headers = r.headers()?;
                let payload = r.bytes()?;
                let p = state
                    .outputs
                    .get_mut(port)
                    .ok_or(Malformed("no such output"))?;
                if p.granted == 0 {
                    return Err(Malformed("an output without a credit"));
                }
                p.granted -= 1;
                p.queue.push_back(OutputMessage { payload, headers });
                wake = p.waker.take();
            }
            to_host::OUTPUT_END => {
                let port = r.u32()? as usize;
                let result = r.u8()?;
                let error = match result {
                    code::OK => None,
                    other => Some(r.error(other)?),
                };
                let p = state
                    .outputs
                    .get_mut(port)
                    .ok_or(Malformed("no such output"))?;
                p.ended = Some(error);
                wake = p.waker.take();
            }
            to_host::TAKEN => {
                let port = r.u32()? as usize;
                let n = r.u32()?;
                let forwarded = state
                    .forwarded
                    .get_mut(port)
                    .ok_or(Malformed("no such input"))?;
                forwarded.taken(n);
                wake_all = true;
            }
            to_host::RELEASED => {
                let port = r.u32()? as usize;
                let taken = r.u64()?;
                let forwarded = state
                    .forwarded
                    .get_mut(port)
                    .ok_or(Malformed("no such input"))?;
                if forwarded.sent > taken {
                    self.call.left_input_unread();
                }
                *forwarded = Forwarded::default();
                // The function released the input: so does the host, now.
                let input = state.inputs.get_mut(port).and_then(Option::take);
                drop(state);
                drop(input);
                return Ok(());
            }
            _ => return Err(Malformed("unknown stream frame")),
        }
        let wakers: Vec<Waker> = match wake_all {
            true => state
                .outputs
                .iter_mut()
                .filter_map(|p| p.waker.take())
                .collect(),
            false => Vec::new(),
        };
        drop(state);
        wake.into_iter().chain(wakers).for_each(Waker::wake);
        Ok(())
    }
}

/// Opens the streaming function in a worker (round-robin over the workers up).
pub(super) fn open(
    workers: &Workers,
    ctx: &CallContext,
    inputs: Vec<BoxInput>,
) -> Result<Vec<OutputStream>, FunctionError> {
    let set = &workers.handle.0;
    let outputs_len = set.hello.info.outputs.len();
    let inputs_len = inputs.len();
    let shared = Arc::new(Shared {
        metrics: ctx.metrics.clone(),
        call: ctx.call.clone(),
        state: Mutex::new(State {
            failed: None,
            outputs: (0..outputs_len).map(|_| Port::default()).collect(),
            inputs: inputs.into_iter().map(Some).collect(),
            forwarded: (0..inputs_len).map(|_| Forwarded::default()).collect(),
            open_outputs: outputs_len,
        }),
    });
    let call = ctx.call.id();
    let slots = lock(&set.slots).clone();
    let n = slots.len().max(1);
    let start = set
        .next_stream
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The next worker up, round-robin; one that died since it was looked at (its death
    // already failed what was pending) is passed over.
    let worker = (0..n)
        .filter_map(|i| slots.get((start + i) % n).cloned().flatten())
        .filter(|w| w.alive.load(std::sync::atomic::Ordering::Acquire))
        .find(|w| w.add_pending(call, Pending::Stream(shared.clone())));
    let Some(worker) = worker else {
        return Err(FunctionError::Crashed(
            "no worker process is up (they are restarting)".into(),
        ));
    };
    worker.send(
        Frame::new(to_worker::OPEN, call)
            .i64(ctx.deadline_millis())
            .headers(&ctx.headers)
            .u32(inputs_len as u32)
            .finish(),
    );
    Ok((0..outputs_len)
        .map(|port| {
            OutputStream::remote(RemoteOutput {
                workers: workers.clone(),
                worker: worker.clone(),
                shared: shared.clone(),
                call,
                port,
            })
        })
        .collect())
}

/// One output of a streaming call in a worker.
pub(crate) struct RemoteOutput {
    /// Keeps the worker set open while the stream lives.
    #[allow(dead_code)]
    workers: Workers,
    worker: Arc<Worker>,
    shared: Arc<Shared>,
    call: u64,
    port: usize,
}

impl RemoteOutput {
    /// Polls the next output, as `OutputStream::poll_next`.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        media_type: usize,
    ) -> Poll<Option<Result<OutputMessage, FunctionError>>> {
        let mut state = lock(&self.shared.state);
        let state = &mut *state;
        if let Some(error) = &state.failed {
            let port = &mut state.outputs[self.port];
            if port.reported {
                return Poll::Ready(None);
            }
            port.reported = true;
            return Poll::Ready(Some(Err(error.clone())));
        }
        // The output type changed (an input's Accept decided it, and the engine held that
        // input back one poll): the worker hears it before it is forwarded that input.
        let mut batch = BytesMut::new();
        let port = &mut state.outputs[self.port];
        let media_type = media_type as u32;
        if port.media_type.is_some_and(|t| t != media_type) {
            port.media_type = Some(media_type);
            batch.extend_from_slice(&credit(self.call, self.port, 0, media_type));
        }
        // Forward the call's inputs ahead, as far as the window allows, in one write.
        for (index, (input, forwarded)) in state
            .inputs
            .iter_mut()
            .zip(state.forwarded.iter_mut())
            .enumerate()
        {
            while forwarded.room() {
                let Some(stream) = input.as_mut() else {
                    break;
                };
                match stream.as_mut().poll_next(cx) {
                    Poll::Ready(Some(message)) => {
                        let frame = input_frame(self.call, index, &message);
                        forwarded.sizes.push_back(frame.len());
                        forwarded.bytes += frame.len();
                        forwarded.sent += 1;
                        batch.extend_from_slice(&frame);
                    }
                    Poll::Ready(None) => {
                        *input = None;
                        batch.extend_from_slice(
                            &Frame::new(to_worker::INPUT_END, self.call)
                                .u32(index as u32)
                                .finish(),
                        );
                    }
                    Poll::Pending => break,
                }
            }
        }
        // Then the output, with any credit it frees, all in the same write.
        let port = &mut state.outputs[self.port];
        let result = if let Some(message) = port.queue.pop_front() {
            port.flowing = true;
            let held = port.granted as usize + port.queue.len();
            if held < WINDOW as usize / 2 {
                let more = WINDOW - held as u32;
                port.granted += more;
                port.media_type = Some(media_type);
                batch.extend_from_slice(&credit(self.call, self.port, more, media_type));
            }
            Poll::Ready(Some(Ok(message)))
        } else if let Some(ended) = &mut port.ended {
            Poll::Ready(ended.take().map(Err))
        } else {
            if port.granted == 0 {
                let more = if port.flowing { WINDOW } else { 1 };
                port.granted = more;
                port.media_type = Some(media_type);
                batch.extend_from_slice(&credit(self.call, self.port, more, media_type));
            }
            port.waker = Some(cx.waker().clone());
            Poll::Pending
        };
        if !batch.is_empty() {
            self.worker.out.send(&batch);
        }
        result
    }
}

fn credit(call: u64, port: usize, n: u32, media_type: u32) -> bytes::Bytes {
    Frame::new(to_worker::CREDIT, call)
        .u32(port as u32)
        .u32(n)
        .u32(media_type)
        .finish()
}

fn input_frame(call: u64, port: usize, message: &InputMessage) -> bytes::Bytes {
    Frame::new(to_worker::INPUT, call)
        .u32(port as u32)
        .u32(message.media_type as u32)
        .headers(&message.headers)
        .bytes(&message.payload)
        .finish()
}

impl Drop for RemoteOutput {
    fn drop(&mut self) {
        self.worker.send(
            Frame::new(to_worker::CLOSE, self.call)
                .u32(self.port as u32)
                .finish(),
        );
        let inputs = {
            let mut state = lock(&self.shared.state);
            state.open_outputs = state.open_outputs.saturating_sub(1);
            if state.open_outputs > 0 {
                return;
            }
            std::mem::take(&mut state.inputs)
        };
        lock(&self.worker.pending).remove(&self.call);
        // As in process: releasing the function releases its inputs, now.
        drop(inputs);
    }
}
