//! `invoker call`: a client for a running invoker, so a user can try a function from a shell.

use std::time::Duration;

use anyhow::Context as _;
use tonic::Code;

use crate::cli::CallArgs;
use crate::protocol::proto::function::Message;
use crate::protocol::proto::function::message::HeaderValue;
use crate::protocol::proto::function::message_function_client::MessageFunctionClient;

/// Sends the messages of `args` in one `MessageFunction/Call`, prints each reply to stdout,
/// and returns the gRPC status code the call ended with.
pub fn call(args: CallArgs) -> anyhow::Result<Code> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: CallArgs) -> anyhow::Result<Code> {
    let mut headers = Vec::new();
    if let Some(ct) = &args.content_type {
        headers.push(("Content-Type".to_owned(), ct.clone()));
    }
    if let Some(accept) = &args.accept {
        headers.push(("Accept".to_owned(), accept.clone()));
    }
    for h in &args.headers {
        let (name, value) = h
            .split_once('=')
            .or_else(|| h.split_once(':'))
            .with_context(|| format!("header '{h}' is not NAME=VALUE"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let messages: Vec<Message> = args
        .payloads
        .iter()
        .map(|payload| {
            let mut map = std::collections::HashMap::<String, HeaderValue>::new();
            for (name, value) in &headers {
                map.entry(name.clone())
                    .or_default()
                    .values
                    .push(value.clone());
            }
            Message {
                payload: payload.clone().into_bytes().into(),
                headers: map,
            }
        })
        .collect();

    let endpoint = format!("http://{}", args.address);
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .with_context(|| format!("'{}' is not a HOST:PORT address", args.address))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    let channel = match channel {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("invoker: cannot connect to {}: {e}", args.address);
            return Ok(Code::Unavailable);
        }
    };
    let mut client = MessageFunctionClient::new(channel);
    let mut replies = match client.call(futures_util::stream::iter(messages)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(report(&status)),
    };
    loop {
        match replies.message().await {
            Ok(Some(reply)) => print_reply(&reply, args.show_headers),
            Ok(None) => return Ok(Code::Ok),
            Err(status) => return Ok(report(&status)),
        }
    }
}

fn print_reply(reply: &Message, show_headers: bool) {
    if show_headers {
        let mut names: Vec<_> = reply.headers.keys().collect();
        names.sort();
        for name in names {
            for value in &reply.headers[name].values {
                println!("{name}: {value}");
            }
        }
    }
    println!("{}", String::from_utf8_lossy(&reply.payload));
}

fn report(status: &tonic::Status) -> Code {
    eprintln!(
        "invoker: the call ended with {:?}: {}",
        status.code(),
        status.message()
    );
    status.code()
}
