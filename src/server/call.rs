//! `function.MessageFunction/Call`: riff 0.0.x messages ⇄ the engine.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::drain::Calls;
use super::wire::Message;
use crate::engine::{Inbound, Outbound};
use crate::live::Live;

/// The `function.MessageFunction` server, generated over the engine-shaped [`Message`]
/// instead of the generated message type, with the codec that answers a malformed message
/// `INVALID_ARGUMENT` (`server::codec`).
mod generated {
    include!(concat!(env!("OUT_DIR"), "/server/function.rs"));
}

use generated::message_function_server::MessageFunction;
pub use generated::message_function_server::MessageFunctionServer;

/// The `MessageFunction` service.
#[derive(Debug, Clone)]
pub struct CallService {
    live: Arc<Live>,
    calls: Arc<Calls>,
}

impl CallService {
    /// A service running calls on the function `live` serves, tracked by `calls`.
    pub fn new(live: Arc<Live>, calls: Arc<Calls>) -> Self {
        CallService { live, calls }
    }
}

/// A Call message as the engine's inbound message: the wire type already holds header pairs.
pub fn inbound(message: Message) -> Inbound {
    let (payload, headers) = message.into_parts();
    Inbound { payload, headers }
}

/// The engine's outbound message as a Call message: Content-Type first, then the rest.
pub fn message(out: Outbound) -> Message {
    let content_type = (!out.content_type.is_empty()).then_some(out.content_type);
    Message::new(out.payload, content_type, out.headers)
}

type CallStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

#[tonic::async_trait]
impl MessageFunction for CallService {
    type CallStream = CallStream;

    async fn call(
        &self,
        request: Request<Streaming<Message>>,
    ) -> Result<Response<CallStream>, Status> {
        let (guard, meta) = self.calls.admit(&request)?;
        let engine = self.live.engine();
        let stats = engine.stats().clone();
        let (mut received, mut sent) = (stats.received_by_call(), stats.sent_by_call());
        let inbound = request
            .into_inner()
            .map(move |m| {
                received.inc();
                m.map(inbound)
            })
            .boxed();
        let outbound = engine.call(inbound, meta.clone()).map(move |r| {
            r.map(|out| {
                sent.inc();
                message(out)
            })
        });
        Ok(Response::new(guard.wrap(outbound, &meta, stats)))
    }
}
