//! `function.MessageFunction/Call`: riff 0.0.x messages ⇄ the engine.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::proto::function::Message;
use super::proto::function::message::HeaderValue;
use super::proto::function::message_function_server::MessageFunction;
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

/// A Call message as the engine's inbound message.
pub fn inbound(message: Message) -> Inbound {
    let mut headers = Vec::with_capacity(message.headers.len());
    for (name, value) in message.headers {
        let mut values = value.values;
        match values.pop() {
            // The common case, one value: move the name instead of copying it.
            Some(last) if values.is_empty() => headers.push((name, last)),
            Some(last) => {
                headers.extend(values.into_iter().map(|v| (name.clone(), v)));
                headers.push((name, last));
            }
            None => {}
        }
    }
    Inbound {
        payload: message.payload,
        headers,
    }
}

/// The engine's outbound message as a Call message: Content-Type first, then the rest.
pub fn message(out: Outbound) -> Message {
    let mut headers: BTreeMap<String, HeaderValue> = BTreeMap::new();
    if !out.content_type.is_empty() {
        headers.insert(
            "Content-Type".to_owned(),
            HeaderValue {
                values: vec![out.content_type.to_string()],
            },
        );
    }
    for (name, value) in out.headers {
        headers.entry(name).or_default().values.push(value);
    }
    Message {
        payload: out.payload,
        headers,
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
