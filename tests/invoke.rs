//! `streaming.Riff/Invoke` through the real `invoker` binary and a real gRPC client.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{Daemon, uri};
use invoker::proto::streaming::riff_client::RiffClient;
use invoker::proto::streaming::{
    InputFrame, InputSignal, OutputFrame, StartFrame, input_signal, output_signal,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

fn start(expected: &[&str]) -> InputSignal {
    InputSignal {
        frame: Some(input_signal::Frame::Start(StartFrame {
            expected_content_types: expected.iter().map(|s| s.to_string()).collect(),
            input_names: vec![],
            output_names: vec![],
        })),
    }
}

fn data(payload: &str, content_type: &str, arg_index: i32) -> InputSignal {
    InputSignal {
        frame: Some(input_signal::Frame::Data(InputFrame {
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            content_type: content_type.to_owned(),
            headers: BTreeMap::new(),
            arg_index,
        })),
    }
}

fn text(payload: &str) -> InputSignal {
    data(payload, "text/plain", 0)
}

#[derive(Debug)]
struct Outcome {
    frames: Vec<OutputFrame>,
    status: tonic::Status,
}

impl Outcome {
    fn code(&self) -> Code {
        self.status.code()
    }
    /// (resultIndex, payload) of each frame.
    fn results(&self) -> Vec<(i32, String)> {
        self.frames
            .iter()
            .map(|f| {
                (
                    f.result_index,
                    String::from_utf8_lossy(&f.payload).into_owned(),
                )
            })
            .collect()
    }
    fn assert_error(&self, code: Code, prefix: &str) {
        assert_eq!(self.code(), code, "{self:?}");
        assert!(
            self.status.message().starts_with(prefix),
            "expected {prefix:?}: {self:?}"
        );
    }
}

async fn client(daemon: &Daemon) -> RiffClient<Channel> {
    RiffClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap()
}

async fn collect(
    mut replies: tonic::Streaming<invoker::proto::streaming::OutputSignal>,
) -> Outcome {
    let mut frames = Vec::new();
    loop {
        match replies.message().await {
            Ok(Some(signal)) => match signal.frame {
                Some(output_signal::Frame::Data(frame)) => frames.push(frame),
                None => panic!("an OutputSignal without a frame"),
            },
            Ok(None) => {
                return Outcome {
                    frames,
                    status: tonic::Status::ok(""),
                };
            }
            Err(status) => return Outcome { frames, status },
        }
    }
}

/// Sends `signals`, half-closes, and collects everything until the call ends (a call that
/// has not ended after `common::HANG` fails the test).
async fn invoke(daemon: &Daemon, signals: Vec<InputSignal>) -> Outcome {
    let mut client = client(daemon).await;
    let called = async move {
        match client.invoke(futures_util::stream::iter(signals)).await {
            Ok(response) => collect(response.into_inner()).await,
            Err(status) => Outcome {
                frames: vec![],
                status,
            },
        }
    };
    tokio::time::timeout(common::HANG, called)
        .await
        .expect("the call hung")
}

#[tokio::test]
async fn an_empty_content_type_is_octet_stream_whatever_the_frame_headers_say() {
    // An i64 is not read from application/octet-stream.
    let daemon = Daemon::start(&uri("greeter", Some("double")));
    let mut frame = data("21", "", 0);
    if let Some(input_signal::Frame::Data(data)) = &mut frame.frame {
        data.headers
            .insert("content-type".to_owned(), "text/plain".to_owned());
    }
    let out = invoke(&daemon, vec![start(&["text/plain"]), frame]).await;
    out.assert_error(Code::InvalidArgument, "Invoker: Unsupported Media Type");
    assert!(
        out.status.message().contains("application/octet-stream"),
        "{out:?}"
    );
    // With the frame's own contentType, the same message is fine.
    let out = invoke(&daemon, vec![start(&["text/plain"]), text("21")]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, "42".to_owned())]);
}

/// What riff's HTTP adapter sends: a body without Content-Type arrives as
/// application/octet-stream, which a `String` takes when it is valid UTF-8; and JSON strings
/// both ways (SPEC §5).
#[tokio::test]
async fn a_string_function_takes_utf8_octet_streams_and_json_strings() {
    let daemon = Daemon::start(&uri("greeter", Some("hello")));
    let out = invoke(&daemon, vec![start(&["text/plain"]), data("Ada", "", 0)]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, "Hello Ada".to_owned())]);
    assert_eq!(out.frames[0].content_type, "text/plain");
    let out = invoke(
        &daemon,
        vec![
            start(&["application/json"]),
            data("\"Ada\"", "application/json", 0),
            data("Bob", "application/octet-stream", 0),
        ],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(
        out.results(),
        [
            (0, "\"Hello Ada\"".to_owned()),
            (0, "\"Hello Bob\"".to_owned())
        ]
    );
    assert!(
        out.frames
            .iter()
            .all(|f| f.content_type == "application/json")
    );
    // */* picks the function's own preference, text/plain.
    let out = invoke(
        &daemon,
        vec![start(&["*/*"]), data("\"Ada\"", "application/json", 0)],
    )
    .await;
    assert_eq!(out.results(), [(0, "Hello Ada".to_owned())]);
    assert_eq!(out.frames[0].content_type, "text/plain");
    // JSON that is not a string, and octet-stream that is not UTF-8, are bad inputs.
    let out = invoke(
        &daemon,
        vec![
            start(&["text/plain"]),
            data("{\"name\":\"Ada\"}", "application/json", 0),
        ],
    )
    .await;
    out.assert_error(Code::InvalidArgument, "Invoker: Bad Input Signal");
    let mut frame = data("", "", 0);
    if let Some(input_signal::Frame::Data(data)) = &mut frame.frame {
        data.payload = Bytes::from_static(&[0xc3, 0x28]);
    }
    let out = invoke(&daemon, vec![start(&["text/plain"]), frame]).await;
    out.assert_error(Code::InvalidArgument, "Invoker: Bad Input Signal");
}

#[tokio::test]
async fn a_streaming_function_over_invoke() {
    let daemon = Daemon::start(&uri("streams", Some("running_average")));
    let out = invoke(
        &daemon,
        vec![start(&["text/plain"]), text("1"), text("2"), text("6")],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(
        out.results(),
        [(0, "1".into()), (0, "1.5".into()), (0, "3".into())]
    );
    assert!(out.frames.iter().all(|f| f.content_type == "text/plain"));
    // Per-output negotiation from expectedContentTypes, parameters kept.
    let out = invoke(
        &daemon,
        vec![start(&["application/json; charset=utf-8"]), text("2")],
    )
    .await;
    assert_eq!(out.results(), [(0, "2.0".into())]);
    assert_eq!(
        out.frames[0].content_type,
        "application/json; charset=utf-8"
    );
    // An empty contentType is application/octet-stream, which f64 does not accept.
    let out = invoke(&daemon, vec![start(&["text/plain"]), data("1", "", 0)]).await;
    out.assert_error(Code::InvalidArgument, "Invoker: Unsupported Media Type");
    // No acceptable output type.
    let out = invoke(&daemon, vec![start(&["image/png"]), text("1")]).await;
    out.assert_error(Code::InvalidArgument, "Invoker: Not Acceptable");
    // A payload that does not decode.
    let out = invoke(&daemon, vec![start(&["text/plain"]), text("1"), text("x")]).await;
    assert_eq!(out.results(), [(0, "1".into())]);
    out.assert_error(Code::InvalidArgument, "Invoker: Bad Input Signal");
    // Half-close before anything: an empty, successful call.
    let out = invoke(&daemon, vec![]).await;
    assert_eq!((out.code(), out.frames.len()), (Code::Ok, 0));
}

#[tokio::test]
async fn a_streaming_function_with_context_sees_the_first_frames_headers() {
    let daemon = Daemon::start(&uri("context", Some("tagged")));
    // What riff's HTTP adapter sends: the HTTP request's headers, named as Go writes them
    // (`Correlationid`), with its own `X-Http-*` ones; one expected type; one frame.
    let frame = |payload: &str, headers: &[(&str, &str)]| InputSignal {
        frame: Some(input_signal::Frame::Data(InputFrame {
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            content_type: "text/plain".to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            arg_index: 0,
        })),
    };
    let first = frame("a", &[("Correlationid", "r-1"), ("X-Http-Method", "POST")]);
    let second = frame("b", &[("Correlationid", "r-2")]);
    let out = invoke(&daemon, vec![start(&["*/*"]), first, second]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, "r-1: a".into()), (0, "r-1: b".into())]);
    // A first frame that breaks the protocol fails the call before the function opens.
    let out = invoke(&daemon, vec![start(&["*/*"]), data("a", "text/plain", 1)]).await;
    out.assert_error(Code::InvalidArgument, "Invoker: Protocol Violation");
    // No data frame: the function opens at half-close, with no headers.
    let daemon = Daemon::start(&uri("probe", Some("ctx_echo")));
    let out = invoke(&daemon, vec![start(&["text/plain"])]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, "ctx_echo".into())]);
}

#[tokio::test]
async fn a_request_reply_function_is_mapped_over_every_frame() {
    let daemon = Daemon::start(&uri("greeter", Some("hello")));
    let out = invoke(
        &daemon,
        vec![start(&["text/plain"]), text("a"), text("b"), text("c")],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(
        out.results(),
        [
            (0, "Hello a".into()),
            (0, "Hello b".into()),
            (0, "Hello c".into())
        ]
    );
    // A function error mid-stream: frames already sent stay sent, nothing follows.
    let out = invoke(
        &daemon,
        vec![start(&["*/*"]), text("a"), text("Riff"), text("c")],
    )
    .await;
    assert_eq!(out.results(), [(0, "Hello a".into())]);
    out.assert_error(Code::Unknown, "error condition");
}

/// riff's HTTP adapter sends a StartFrame with one expected content type and one data frame,
/// and waits for one output frame: a function without output answers each frame with an empty
/// one; errors and panics still end the call with their status.
#[tokio::test]
async fn a_function_without_output_answers_each_frame_with_an_empty_one() {
    let validate = Daemon::start(&uri("shapes", Some("validate")));
    let out = invoke(
        &validate,
        vec![start(&["text/plain"]), data("Ada", "", 0), text("Bob")],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, String::new()), (0, String::new())]);
    assert!(out.frames.iter().all(|f| f.content_type == "text/plain"));
    assert!(out.frames.iter().all(|f| f.headers.is_empty()));
    // The contentType follows the Accept list among text/plain and octet-stream.
    let out = invoke(&validate, vec![start(&["*/*"]), text("Ada")]).await;
    assert_eq!(out.frames[0].content_type, "text/plain");
    let out = invoke(
        &validate,
        vec![start(&["application/octet-stream"]), text("Ada")],
    )
    .await;
    assert_eq!(out.frames[0].content_type, "application/octet-stream");
    // The function's error ends the call; frames already sent stay sent.
    let out = invoke(
        &validate,
        vec![
            start(&["text/plain"]),
            text("Ada"),
            text("Riff"),
            text("Bob"),
        ],
    )
    .await;
    assert_eq!(out.results(), [(0, String::new())]);
    out.assert_error(Code::Unknown, "Riff contained 'Riff'");
    // Without an expected output (the StartFrame says 0) nothing is sent.
    let out = invoke(&validate, vec![start(&[]), text("Ada")]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert!(out.frames.is_empty(), "{out:?}");
    // f(X) with a bool input, and a panic.
    let arm = Daemon::start(&uri("probe", Some("arm")));
    let out = invoke(&arm, vec![start(&["text/plain"]), text("true")]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, String::new())]);
    let panics = Daemon::start(&uri("shapes", Some("panics")));
    let out = invoke(&panics, vec![start(&["text/plain"]), text("boom")]).await;
    assert!(out.frames.is_empty(), "{out:?}");
    out.assert_error(Code::Internal, "Invoker: Function Panicked");
    // f() -> Result<(), E> (`arm` ran in another process, so `fire` is not armed): the
    // call runs, and its error is the status.
    let fire = Daemon::start(&uri("probe", Some("fire")));
    let out = invoke(&fire, vec![start(&["text/plain"]), data("", "", 0)]).await;
    assert!(out.frames.is_empty(), "{out:?}");
    out.assert_error(Code::Unknown, "not armed");
}

/// A function without input runs once per data frame on input 0 (the payload is not read), or
/// once at half-close when no frame came.
#[tokio::test]
async fn a_function_without_input_runs_once_per_frame() {
    let five = Daemon::start(&uri("shapes", Some("five")));
    // What riff's HTTP adapter sends for `curl -d ''`: one frame, octet-stream.
    let out = invoke(&five, vec![start(&["text/plain"]), data("", "", 0)]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, "5".to_owned())]);
    assert_eq!(out.frames[0].content_type, "text/plain");
    let out = invoke(
        &five,
        vec![
            start(&["application/json"]),
            data("ignored", "image/png", 0),
            data("", "", 0),
        ],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, "5".to_owned()), (0, "5".to_owned())]);
    assert!(
        out.frames
            .iter()
            .all(|f| f.content_type == "application/json")
    );
    // No data frame at all: once, at half-close.
    let out = invoke(&five, vec![start(&["text/plain"])]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, "5".to_owned())]);
    // A frame for another input is still a protocol violation.
    let out = invoke(&five, vec![start(&["text/plain"]), data("", "", 1)]).await;
    out.assert_error(Code::InvalidArgument, "Invoker: Protocol Violation");
    // Errors end the call.
    let broken = Daemon::start(&uri("shapes", Some("broken")));
    let out = invoke(&broken, vec![start(&["text/plain"]), data("", "", 0)]).await;
    assert!(out.frames.is_empty(), "{out:?}");
    out.assert_error(Code::Unknown, "broken");
    // f(): neither input nor output, answered like the others.
    let nothing = Daemon::start(&uri("shapes", Some("nothing")));
    let out = invoke(&nothing, vec![start(&["text/plain"]), data("", "", 0)]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.results(), [(0, String::new())]);
    let out = invoke(&nothing, vec![start(&["text/plain"])]).await;
    assert_eq!(out.results(), [(0, String::new())]);
}

#[tokio::test]
async fn protocol_violations() {
    let daemon = Daemon::start(&uri("greeter", Some("hello")));
    let cases = [
        ("data before the StartFrame", vec![text("a")]),
        (
            "a second StartFrame",
            vec![start(&["text/plain"]), start(&["text/plain"])],
        ),
        (
            "an empty frame",
            vec![start(&["text/plain"]), InputSignal { frame: None }],
        ),
        (
            "too many outputs",
            vec![start(&["text/plain", "text/plain"]), text("a")],
        ),
        ("too few outputs", vec![start(&[]), text("a")]),
        (
            "argIndex out of range",
            vec![start(&["text/plain"]), data("a", "text/plain", 1)],
        ),
        (
            "a negative argIndex",
            vec![start(&["text/plain"]), data("a", "text/plain", -1)],
        ),
    ];
    for (what, signals) in cases {
        let out = invoke(&daemon, signals).await;
        assert_eq!(out.code(), Code::InvalidArgument, "{what}: {out:?}");
        assert!(
            out.status
                .message()
                .starts_with("Invoker: Protocol Violation"),
            "{what}: {out:?}"
        );
    }
    let streaming = Daemon::start(&uri("streams", Some("running_average")));
    let out = invoke(
        &streaming,
        vec![
            start(&["text/plain"]),
            text("1"),
            data("2", "text/plain", 3),
        ],
    )
    .await;
    out.assert_error(Code::InvalidArgument, "Invoker: Protocol Violation");
}

#[tokio::test]
async fn a_fallible_stream_fails_after_partial_output() {
    let daemon = Daemon::start(&uri("streams", Some("rle")));
    let words = ["a", "b", "b", "b", "c"];
    let mut signals = vec![start(&["application/json"])];
    signals.extend(words.iter().map(|w| text(w)));
    let out = invoke(&daemon, signals).await;
    assert_eq!(out.results(), [(0, r#"{"word":"a","count":1}"#.into())]);
    out.assert_error(Code::Unknown, "Too many occurrences of b");
}

#[tokio::test]
async fn partition_has_two_outputs_each_with_its_own_type() {
    let daemon = Daemon::start(&uri("streams", Some("partition")));
    let mut signals = vec![start(&["application/json", "text/plain"])];
    signals.extend((1..=6).map(|i| text(&i.to_string())));
    let out = invoke(&daemon, signals).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    let evens: Vec<_> = out.frames.iter().filter(|f| f.result_index == 0).collect();
    let odds: Vec<_> = out.frames.iter().filter(|f| f.result_index == 1).collect();
    let payloads = |frames: &[&OutputFrame]| -> Vec<String> {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.payload).into_owned())
            .collect()
    };
    assert_eq!(payloads(&evens), ["2", "4", "6"]);
    assert_eq!(payloads(&odds), ["1", "3", "5"]);
    assert!(evens.iter().all(|f| f.content_type == "application/json"));
    assert!(odds.iter().all(|f| f.content_type == "text/plain"));
}

#[tokio::test]
async fn one_output_ends_early_and_the_call_ends_with_the_last() {
    let daemon = Daemon::start(&uri("probe", Some("head_tail")));
    let mut client = client(&daemon).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(start(&["text/plain", "text/plain"])).await.unwrap();
    tx.send(text("first")).await.unwrap();
    let mut replies = client
        .invoke(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let head = replies.message().await.unwrap().unwrap();
    let Some(output_signal::Frame::Data(head)) = head.frame else {
        panic!("no frame")
    };
    assert_eq!(
        (head.result_index, head.payload.as_ref()),
        (0, b"first".as_ref())
    );
    // The head output is complete; the tail goes on, and the call with it.
    for word in ["second", "third"] {
        tx.send(text(word)).await.unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(output_signal::Frame::Data(frame)) = reply.frame else {
            panic!("no frame")
        };
        assert_eq!(
            (frame.result_index, frame.payload.as_ref()),
            (1, word.as_bytes())
        );
    }
    drop(tx);
    let rest = collect(replies).await;
    assert_eq!((rest.code(), rest.frames.len()), (Code::Ok, 0), "{rest:?}");
}

#[tokio::test]
async fn several_inputs_are_demultiplexed_by_arg_index() {
    let daemon = Daemon::start(&uri("probe", Some("zip_greet")));
    let out = invoke(
        &daemon,
        vec![
            start(&["text/plain"]),
            data("Hello", "text/plain", 0),
            data("Hi", "text/plain", 0),
            data("Ada", "text/plain", 1),
            data("Bob", "text/plain", 1),
        ],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(
        out.results(),
        [(0, "Hello Ada".into()), (0, "Hi Bob".into())]
    );
    let out = invoke(
        &daemon,
        vec![start(&["text/plain"]), data("x", "text/plain", 2)],
    )
    .await;
    out.assert_error(Code::InvalidArgument, "Invoker: Protocol Violation");
}

#[tokio::test]
async fn call_and_invoke_share_one_port() {
    let daemon = Daemon::start(&uri("rot13", None));
    let out = invoke(&daemon, vec![start(&["text/plain"]), text("Hello World")]).await;
    assert_eq!(out.results(), [(0, "Uryyb Jbeyq".into())]);
    let mut call_client = daemon.client().await;
    let call = common::call(&mut call_client, vec![common::msg("Uryyb", &[])]).await;
    assert_eq!(call.texts(), ["Hello"]);
}
