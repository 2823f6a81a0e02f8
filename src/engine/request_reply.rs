//! Request/reply functions over a Call: an at-most-one stream, the first message decoded and
//! the function invoked once, inline or on a function thread (`blocking`, `pool`).

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream;
use tonic::Status;

use super::message::{header_text, outbound};
use super::{
    CALL_DEFAULT_CONTENT_TYPE, Call, Inbound, InboundStream, Outbound, OutboundStream, status,
};
use crate::function::{CallContext, FunctionError, InputMessage, OutputMessage, Stateful};
use crate::negotiate::{self, Chosen};

impl Call {
    /// Chooses a request/reply function's output type for an Accept (None: no output).
    fn choose_output(&self, accept: Option<&str>) -> Result<Option<Chosen>, Status> {
        match self.inner.function.info().outputs.first() {
            Some(port) => negotiate::accept(accept, &port.media_types)
                .map(Some)
                .map_err(status::negotiation),
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
                .map_err(status::negotiation)?;
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
        let output = self.run(ctx, input, index).await?;
        let output = output.map_err(|e| self.failed(e))?;
        Ok(output.map(|out| {
            let content_type = chosen.map_or_else(|| Arc::from(""), |c| self.content_type(0, &c));
            outbound(out, content_type, correlation)
        }))
    }

    /// Runs the function once with `ctx` and `input`, inline or on a function thread: the one
    /// path by which every request/reply invocation reaches the library. The outer error is
    /// the engine's (the pool is full, the caller gave up); the inner one the function's.
    async fn run(
        &self,
        ctx: CallContext,
        input: Option<InputMessage>,
        index: usize,
    ) -> Result<Result<Option<OutputMessage>, FunctionError>, Status> {
        if let Some(workers) = self.inner.function.workers() {
            // In a worker process: the async runtime waits for the reply, no thread blocks.
            return Ok(match self.inner.function.check_invoke(input.as_ref()) {
                Ok(()) => workers.invoke(&ctx, input.as_ref(), index).await,
                Err(e) => Err(e),
            });
        }
        let info = self.inner.function.info();
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
                Ok(None) => return Err(status::deadline_exceeded()),
                Err(_) => return Err(status::cancelled()),
            }
        };
        if self.inner.blocking.record(took, ran_inline) {
            tracing::info!(
                function = %info.name,
                "a call took over 1 ms: the function's calls run on function threads until it is fast again"
            );
        }
        Ok(output)
    }

    /// Runs one invocation of a stateful function (`invoker statefun`): `message` is the
    /// invocation's value, its media type the index of its typename among the function's;
    /// `stateful` the invocation's StateFun context, whose batch collects what it changes and
    /// sends. A failure is the status the batch fails with.
    pub(crate) async fn invoke_stateful(
        &self,
        message: InputMessage,
        stateful: Stateful,
    ) -> Result<(), Status> {
        let mut ctx = self.context(Vec::new());
        ctx.stateful = Some(stateful);
        match self.run(ctx, Some(message), 0).await? {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
    }
    /// A request/reply function as an at-most-one stream.
    pub(crate) fn at_most_one(&self, inbound: InboundStream) -> OutboundStream {
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
