//! `invoker call`: a client for a running invoker (either protocol), so a user can try a
//! function from a shell.

use std::time::Duration;

use anyhow::Context as _;
use tonic::Code;

use crate::cli::CallArgs;
use crate::protocol::proto::function::Message;
use crate::protocol::proto::function::message::HeaderValue;
use crate::protocol::proto::function::message_function_client::MessageFunctionClient;
use crate::protocol::proto::streaming::riff_client::RiffClient;
use crate::protocol::proto::streaming::{
    InputFrame, InputSignal, OutputSignal, StartFrame, input_signal, output_signal,
};
use tonic::transport::Channel;

/// Sends the messages of `args` in one `MessageFunction/Call`, prints each reply to stdout,
/// and returns the gRPC status code the call ended with.
pub fn call(mut args: CallArgs) -> anyhow::Result<Code> {
    use std::io::{BufRead, IsTerminal};
    let from_stdin = match args.payloads.as_slice() {
        [] => !std::io::stdin().is_terminal(),
        [only] => only == "-",
        _ => false,
    };
    if from_stdin {
        args.payloads = std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("cannot read messages from stdin")?;
    }
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
    if !args.invoke {
        for accept in &args.accept {
            headers.push(("Accept".to_owned(), accept.clone()));
        }
    }
    for h in &args.headers {
        let (name, value) = h
            .split_once('=')
            .or_else(|| h.split_once(':'))
            .with_context(|| format!("header '{h}' is not NAME=VALUE"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let channel = match connect(&args.address).await? {
        Ok(channel) => channel,
        Err(code) => return Ok(code),
    };
    if args.invoke {
        return invoke(channel, &args, headers).await;
    }
    let messages: Vec<Message> = args
        .payloads
        .iter()
        .map(|payload| {
            let mut map = std::collections::BTreeMap::<String, HeaderValue>::new();
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

/// Connects, or reports why not (as UNAVAILABLE): the OS's reason, such as `Connection
/// refused`, not tonic's `transport error`.
async fn connect(address: &str) -> anyhow::Result<Result<Channel, Code>> {
    if let Some(rest) = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
    {
        anyhow::bail!(
            "'{address}' is not a HOST:PORT address: give --address (or INVOKER_ADDRESS) without the scheme, as {}",
            rest.trim_end_matches('/')
        );
    }
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("'{address}' is not a HOST:PORT address"))?
        .connect_timeout(Duration::from_secs(5));
    match endpoint.connect().await {
        Ok(channel) => Ok(Ok(channel)),
        Err(e) => {
            eprintln!("invoker: cannot connect to {address}: {}", root_cause(&e));
            Ok(Err(Code::Unavailable))
        }
    }
}

/// The innermost reason of an error, with its `os error N` suffix dropped: `Connection
/// refused`, `timed out`.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// `--invoke`: a StartFrame, one data frame per payload, then the replies.
async fn invoke(
    channel: Channel,
    args: &CallArgs,
    headers: Vec<(String, String)>,
) -> anyhow::Result<Code> {
    // Payloads typed on a command line are text, as with Call (where an empty contentType
    // would mean application/octet-stream).
    let content_type = args
        .content_type
        .clone()
        .unwrap_or_else(|| "text/plain".to_owned());
    // Without --accept, the one output of most functions, in any type.
    let expected = if args.accept.is_empty() {
        vec!["*/*".to_owned()]
    } else {
        args.accept.clone()
    };
    let mut signals = vec![InputSignal {
        frame: Some(input_signal::Frame::Start(StartFrame {
            expected_content_types: expected,
            input_names: Vec::new(),
            output_names: Vec::new(),
        })),
    }];
    signals.extend(args.payloads.iter().map(|payload| {
        InputSignal {
            frame: Some(input_signal::Frame::Data(InputFrame {
                payload: payload.clone().into_bytes().into(),
                content_type: content_type.clone(),
                headers: headers
                    .iter()
                    .filter(|(n, _)| !n.eq_ignore_ascii_case("Content-Type"))
                    .cloned()
                    .collect(),
                arg_index: args.arg_index,
            })),
        }
    }));
    let mut client = RiffClient::new(channel);
    let mut replies = match client.invoke(futures_util::stream::iter(signals)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(report(&status)),
    };
    loop {
        match replies.message().await {
            Ok(Some(OutputSignal {
                frame: Some(output_signal::Frame::Data(frame)),
            })) => {
                if args.show_headers {
                    println!("resultIndex: {}", frame.result_index);
                    println!("Content-Type: {}", frame.content_type);
                    let mut names: Vec<_> = frame.headers.iter().collect();
                    names.sort();
                    for (name, value) in names {
                        println!("{name}: {value}");
                    }
                }
                println!("{}", String::from_utf8_lossy(&frame.payload));
            }
            Ok(Some(_)) => {}
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
