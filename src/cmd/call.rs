//! `invoker call`: a client for a running invoker (either protocol), so a user can try a
//! function from a shell.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use tokio::io::AsyncBufReadExt as _;
use tonic::Code;

use super::Exit;
use crate::cli::CallArgs;
use crate::proto::function::Message;
use crate::proto::function::message::HeaderValue;
use crate::proto::function::message_function_client::MessageFunctionClient;
use crate::proto::streaming::riff_client::RiffClient;
use crate::proto::streaming::{
    InputFrame, InputSignal, OutputSignal, StartFrame, input_signal, output_signal,
};
use tonic::transport::Channel;

/// Sends the messages of `args` in one `MessageFunction/Call`, prints each reply to stdout,
/// and returns the gRPC status code the call ended with.
///
/// With no payloads (or `-`), the messages are the lines of stdin, each sent as it is read,
/// and replies are printed as they arrive: the call is open from the start, so a supplier's
/// output shows while stdin is open, and a streaming function answers each line as it is typed.
pub fn call(args: CallArgs) -> anyhow::Result<Exit> {
    use std::io::IsTerminal;
    let from_stdin = match args.payloads.as_slice() {
        [] => true,
        [only] => only == "-",
        _ => false,
    };
    if from_stdin && std::io::stdin().is_terminal() {
        eprintln!("invoker: sending each line of stdin as a message; Ctrl-D ends the call");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(run(args, from_stdin));
    // A read of stdin cannot be cancelled: do not wait for it when the call ended first.
    runtime.shutdown_background();
    code.map(Exit::from)
}

/// The payloads: those of the command line, or each line of stdin as it is read.
fn payloads(args: &CallArgs, from_stdin: bool) -> BoxStream<'static, String> {
    if !from_stdin {
        return futures_util::stream::iter(args.payloads.clone()).boxed();
    }
    let lines = tokio_stream::wrappers::LinesStream::new(
        tokio::io::BufReader::new(tokio::io::stdin()).lines(),
    );
    lines
        .scan((), |(), line| {
            std::future::ready(match line {
                Ok(line) => Some(line),
                Err(e) => {
                    eprintln!("invoker: cannot read messages from stdin: {e}");
                    None
                }
            })
        })
        .boxed()
}

async fn run(args: CallArgs, from_stdin: bool) -> anyhow::Result<Code> {
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
    let channel = match connect_as_asked(&args).await? {
        Ok(channel) => channel,
        Err(code) => return Ok(code),
    };
    let payloads = payloads(&args, from_stdin);
    if args.invoke {
        return invoke(channel, &args, headers, payloads).await;
    }
    let mut map = std::collections::BTreeMap::<String, HeaderValue>::new();
    for (name, value) in &headers {
        map.entry(name.clone())
            .or_default()
            .values
            .push(value.clone());
    }
    let messages = payloads.map(move |payload| Message {
        payload: payload.into_bytes().into(),
        headers: map.clone(),
    });

    let mut client = MessageFunctionClient::new(channel);
    let mut replies = match client.call(messages).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(report(&status)),
    };
    loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                if !print_reply(&reply, args.show_headers) {
                    return Ok(Code::Ok);
                }
            }
            Ok(None) => return Ok(Code::Ok),
            Err(status) => return Ok(report(&status)),
        }
    }
}

/// Connects to the Unix socket `--socket` names, or to the best live instance of
/// `--socket-dir`/`--task`, else to `--address`.
async fn connect_as_asked(args: &CallArgs) -> anyhow::Result<Result<Channel, Code>> {
    let path = match (&args.socket, &args.socket_dir, &args.task) {
        (Some(path), _, _) => path.clone(),
        (None, Some(dir), Some(task)) => match crate::server::socket::best_socket(dir, task) {
            Ok(path) => path,
            Err(e) => {
                eprintln!("invoker: {e:#}");
                return Ok(Err(Code::Unavailable));
            }
        },
        _ => return connect(&args.address).await,
    };
    let shown = path.display().to_string();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let endpoint = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5));
    match endpoint.connect_with_connector(connector).await {
        Ok(channel) => Ok(Ok(channel)),
        Err(e) => {
            eprintln!("invoker: cannot connect to {shown}: {}", root_cause(&e));
            Ok(Err(Code::Unavailable))
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
    payloads: BoxStream<'static, String>,
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
    let start = InputSignal {
        frame: Some(input_signal::Frame::Start(StartFrame {
            expected_content_types: expected,
            input_names: Vec::new(),
            output_names: Vec::new(),
        })),
    };
    let headers: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("Content-Type"))
        .collect();
    let arg_index = args.arg_index;
    let data = payloads.map(move |payload| InputSignal {
        frame: Some(input_signal::Frame::Data(InputFrame {
            payload: payload.into_bytes().into(),
            content_type: content_type.clone(),
            headers: headers.clone().into_iter().collect(),
            arg_index,
        })),
    });
    let signals = futures_util::stream::once(std::future::ready(start)).chain(data);
    let mut client = RiffClient::new(channel);
    let mut replies = match client.invoke(signals).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(report(&status)),
    };
    loop {
        match replies.message().await {
            Ok(Some(OutputSignal {
                frame: Some(output_signal::Frame::Data(frame)),
            })) => {
                let mut text = String::new();
                if args.show_headers {
                    text += &format!("resultIndex: {}\n", frame.result_index);
                    text += &format!("Content-Type: {}\n", frame.content_type);
                    let mut names: Vec<_> = frame.headers.iter().collect();
                    names.sort();
                    for (name, value) in names {
                        text += &format!("{name}: {value}\n");
                    }
                }
                if !print(text, &frame.payload) {
                    return Ok(Code::Ok);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(Code::Ok),
            Err(status) => return Ok(report(&status)),
        }
    }
}

/// Prints a reply (and its headers, with --show-headers); false when stdout is gone (a closed
/// pipe, as with `| head`, ends the call).
fn print_reply(reply: &Message, show_headers: bool) -> bool {
    let mut text = String::new();
    if show_headers {
        let mut names: Vec<_> = reply.headers.keys().collect();
        names.sort();
        for name in names {
            for value in &reply.headers[name].values {
                text += &format!("{name}: {value}\n");
            }
        }
    }
    print(text, &reply.payload)
}

/// Writes `headers`, then `payload` as a line, and flushes; false when stdout is gone.
fn print(headers: String, payload: &[u8]) -> bool {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(headers.as_bytes())
        .and_then(|()| stdout.write_all(String::from_utf8_lossy(payload).as_bytes()))
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
        .is_ok()
}

fn report(status: &tonic::Status) -> Code {
    eprintln!(
        "invoker: the call ended with {:?}: {}",
        status.code(),
        status.message()
    );
    status.code()
}
