//! `streaming.Riff/Invoke`: riff 0.4+ signals ⇄ the engine.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::drain::Calls;
use crate::engine::{FRAME_DEFAULT_CONTENT_TYPE, Frame, Inbound, Outbound};
use crate::function::{Headers, Text};
use crate::live::Live;
use crate::proto::streaming::{
    InputSignal, OutputFrame, OutputSignal, input_signal, output_signal,
};

/// The `streaming.Riff` server, with the codec that answers a malformed message
/// `INVALID_ARGUMENT` (`server::codec`).
mod generated {
    include!(concat!(env!("OUT_DIR"), "/server/streaming.rs"));
}

use generated::riff_server::Riff;
pub use generated::riff_server::RiffServer;

/// The `Riff` service.
#[derive(Debug, Clone)]
pub struct RiffService {
    live: Arc<Live>,
    calls: Arc<Calls>,
}

impl RiffService {
    /// A service running calls on the function `live` serves, tracked by `calls`.
    pub fn new(live: Arc<Live>, calls: Arc<Calls>) -> Self {
        RiffService { live, calls }
    }
}

/// An InputSignal as the engine's signal. The frame's contentType (empty means
/// `application/octet-stream`, SPEC §2.2) becomes the message's one Content-Type header; a
/// `content-type` in the frame's headers map does not override it.
pub fn signal(input: InputSignal) -> Frame {
    match input.frame {
        Some(input_signal::Frame::Start(start)) => Frame::Start {
            expected_content_types: start.expected_content_types,
        },
        Some(input_signal::Frame::Data(frame)) => {
            let mut headers: Headers = Vec::with_capacity(frame.headers.len() + 1);
            let content_type = if frame.content_type.is_empty() {
                Text::const_new(FRAME_DEFAULT_CONTENT_TYPE)
            } else {
                frame.content_type.into()
            };
            headers.push((Text::const_new("Content-Type"), content_type));
            headers.extend(
                frame
                    .headers
                    .into_iter()
                    .filter(|(name, _)| !name.eq_ignore_ascii_case("Content-Type"))
                    .map(|(name, value)| (name.into(), value.into())),
            );
            Frame::Data {
                arg_index: frame.arg_index,
                message: Inbound {
                    payload: frame.payload,
                    headers,
                },
            }
        }
        None => Frame::Empty,
    }
}

/// An output message of output `index` as an OutputSignal. Repeated header names are joined
/// with ", " (the frame's headers are a plain map).
pub fn output(index: usize, out: Outbound) -> OutputSignal {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in out.headers {
        headers
            .entry(name.into())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into());
    }
    OutputSignal {
        frame: Some(output_signal::Frame::Data(OutputFrame {
            payload: out.payload,
            content_type: out.content_type.to_string(),
            headers,
            result_index: index as i32,
        })),
    }
}

type InvokeStream = Pin<Box<dyn Stream<Item = Result<OutputSignal, Status>> + Send>>;

#[tonic::async_trait]
impl Riff for RiffService {
    type InvokeStream = InvokeStream;

    async fn invoke(
        &self,
        request: Request<Streaming<InputSignal>>,
    ) -> Result<Response<InvokeStream>, Status> {
        let (guard, meta) = self.calls.admit(&request)?;
        let engine = self.live.engine();
        let stats = engine.stats().clone();
        let (mut received, mut sent) = (stats.received_by_call(), stats.sent_by_call());
        let inbound = request
            .into_inner()
            .map(move |s| {
                let signal = s.map(signal);
                if let Ok(Frame::Data { .. }) = &signal {
                    received.inc();
                }
                signal
            })
            .boxed();
        let outbound = engine.invoke(inbound, meta.clone()).map(move |r| {
            r.map(|(index, out)| {
                sent.inc();
                output(index, out)
            })
        });
        Ok(Response::new(guard.wrap(outbound, &meta, stats)))
    }
}
