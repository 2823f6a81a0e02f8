//! `function.MessageFunction/Call`: riff 0.0.x messages ⇄ the engine.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::proto::function_server::message_function_server::MessageFunction;
use super::wire::Message;
use crate::engine::{Engine, Inbound, Outbound};
use crate::server::Calls;

/// The `MessageFunction` service.
#[derive(Debug, Clone)]
pub struct CallService {
    engine: Engine,
    calls: Arc<Calls>,
}

impl CallService {
    /// A service running calls on `engine`, tracked by `calls`.
    pub fn new(engine: Engine, calls: Arc<Calls>) -> Self {
        CallService { engine, calls }
    }
}

/// A Call message as the engine's inbound message: the wire type already holds header pairs.
pub fn inbound(message: Message) -> Inbound {
    Inbound {
        payload: message.payload,
        headers: message.headers,
    }
}

/// The engine's outbound message as a Call message: Content-Type first, then the rest.
pub fn message(out: Outbound) -> Message {
    Message {
        payload: out.payload,
        content_type: (!out.content_type.is_empty()).then_some(out.content_type),
        headers: out.headers,
    }
}

type CallStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

#[tonic::async_trait]
impl MessageFunction for CallService {
    type CallStream = CallStream;

    async fn call(
        &self,
        request: Request<Streaming<Message>>,
    ) -> Result<Response<CallStream>, Status> {
        let guard = self.calls.enter()?;
        let inbound = request.into_inner().map(|m| m.map(inbound)).boxed();
        let outbound = self.engine.call(inbound).map(|r| r.map(message));
        Ok(Response::new(guard.wrap(outbound)))
    }
}
