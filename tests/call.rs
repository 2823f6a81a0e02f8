//! `function.MessageFunction/Call` through the real `invoker` binary and a real gRPC client.

mod common;

use std::time::Duration;

use common::{Daemon, call, header, msg, uri};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn one(daemon: &Daemon, payload: &str, headers: &[(&str, &str)]) -> common::Outcome {
    let mut client = daemon.client().await;
    call(&mut client, vec![msg(payload, headers)]).await
}

fn assert_status(outcome: &common::Outcome, code: Code, prefix: &str) {
    assert_eq!(outcome.code(), code, "{outcome:?}");
    assert!(
        outcome.status.message().starts_with(prefix),
        "expected a message starting with {prefix:?}, got {:?}",
        outcome.status.message()
    );
}

#[tokio::test]
async fn hello_replies_with_text_and_echoes_the_correlation_id() {
    let daemon = Daemon::start(&uri("greeter", Some("hello")));
    let out = one(
        &daemon,
        "World",
        &[("Content-Type", "text/plain"), ("correlationId", "c-1")],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.texts(), ["Hello World"]);
    assert_eq!(header(&out.messages[0], "Content-Type"), Some("text/plain"));
    assert_eq!(header(&out.messages[0], "correlationId"), Some("c-1"));
}

#[tokio::test]
async fn a_missing_content_type_means_text_and_charset_utf8_is_accepted() {
    let daemon = Daemon::start(&uri("greeter", Some("hello")));
    assert_eq!(one(&daemon, "Ada", &[]).await.texts(), ["Hello Ada"]);
    let out = one(
        &daemon,
        "Ada",
        &[("content-type", "text/plain; charset=UTF-8")],
    )
    .await;
    assert_eq!(out.texts(), ["Hello Ada"]);
    let out = one(
        &daemon,
        "Ada",
        &[("Content-Type", "text/plain; charset=iso-8859-1")],
    )
    .await;
    assert_status(
        &out,
        Code::InvalidArgument,
        "Invoker: Unsupported Media Type",
    );
}

/// SPEC §5: `String` speaks `text/plain` first and a JSON string second, as riff's Go and node
/// invokers do, and takes `application/octet-stream` that is valid UTF-8.
#[tokio::test]
async fn a_string_function_speaks_json_strings_and_utf8_octet_streams() {
    let hello = Daemon::start(&uri("greeter", Some("hello")));
    let json = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let out = one(&hello, "\"Ada\"", &json).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.texts(), ["\"Hello Ada\""]);
    assert_eq!(
        header(&out.messages[0], "Content-Type"),
        Some("application/json")
    );
    // JSON in, text out (no Accept: the function's preference, text/plain), and escapes.
    let out = one(
        &hello,
        "\"A\\\"d\\u00e1\"",
        &[("Content-Type", "application/json")],
    )
    .await;
    assert_eq!(out.texts(), ["Hello A\"d\u{e1}"]);
    assert_eq!(header(&out.messages[0], "Content-Type"), Some("text/plain"));
    // Text in, a JSON string out, with the escapes JSON needs.
    let out = one(&hello, "A\"da", &[("Accept", "application/json")]).await;
    assert_eq!(out.texts(), ["\"Hello A\\\"da\""]);
    // */* and a tie both go to the function's own preference: text/plain.
    for accept in ["*/*", "application/json, text/plain"] {
        let out = one(&hello, "Ada", &[("Accept", accept)]).await;
        assert_eq!(out.texts(), ["Hello Ada"], "{accept}");
        assert_eq!(
            header(&out.messages[0], "Content-Type"),
            Some("text/plain"),
            "{accept}"
        );
    }
    // JSON that is not a string is a bad input, as is JSON that is not JSON.
    for bad in ["{}", "42", "Ada"] {
        let out = one(&hello, bad, &[("Content-Type", "application/json")]).await;
        assert_status(&out, Code::InvalidArgument, "Invoker: Bad Input Signal");
    }
    // application/octet-stream that is valid UTF-8 is text.
    let out = one(
        &hello,
        "Ada",
        &[("Content-Type", "application/octet-stream")],
    )
    .await;
    assert_eq!(out.texts(), ["Hello Ada"]);
    assert_eq!(header(&out.messages[0], "Content-Type"), Some("text/plain"));
    let mut client = hello.client().await;
    let mut bad = msg("", &[("Content-Type", "application/octet-stream")]);
    bad.payload = bytes::Bytes::from_static(&[0xff, 0xfe]);
    let out = call(&mut client, vec![bad]).await;
    assert_status(&out, Code::InvalidArgument, "Invoker: Bad Input Signal");
}

#[tokio::test]
async fn a_panic_leaves_the_server_serving() {
    let daemon = Daemon::start(&uri("shapes", Some("panics")));
    for word in ["first", "second", "third"] {
        let out = one(&daemon, word, &[]).await;
        assert_status(&out, Code::Internal, "Invoker: Function Panicked");
        assert!(out.status.message().ends_with(word), "{out:?}");
    }
    let mut health = HealthClient::new(daemon.channel().await);
    let reply = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
}

#[tokio::test]
async fn request_reply_shapes() {
    let five = Daemon::start(&uri("shapes", Some("five")));
    // A zero-input function runs once when the call opens.
    let mut client = five.client().await;
    assert_eq!(call(&mut client, vec![]).await.texts(), ["5"]);
    let out = call(&mut client, vec![msg("x", &[])]).await;
    assert_eq!(out.texts(), ["5"]);
    assert_status(&out, Code::FailedPrecondition, "Invoker:");

    let validate = Daemon::start(&uri("shapes", Some("validate")));
    let ok = one(&validate, "fine", &[]).await;
    assert_eq!((ok.code(), ok.messages.len()), (Code::Ok, 0));
    assert_status(
        &one(&validate, "Riff!", &[]).await,
        Code::Unknown,
        "Riff! contained 'Riff'",
    );

    let record = Daemon::start(&uri("shapes", Some("record")));
    let out = one(&record, "remember me", &[]).await;
    assert_eq!((out.code(), out.messages.len()), (Code::Ok, 0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        record.stderr().contains("recorded: remember me"),
        "{}",
        record.stderr()
    );

    // Half-close without a message: nothing runs, the call is OK.
    let mut client = validate.client().await;
    let out = call(&mut client, vec![]).await;
    assert_eq!((out.code(), out.messages.len()), (Code::Ok, 0));
}

#[tokio::test]
async fn function_headers_reach_the_caller() {
    let daemon = Daemon::start(&uri("probe", Some("echo_headers")));
    let out = one(&daemon, "hi", &[("user", "ada"), ("correlationId", "c-9")]).await;
    assert_eq!(out.texts(), ["hi"]);
    let m = &out.messages[0];
    assert_eq!(header(m, "x-probe"), Some("yes"));
    assert_eq!(header(m, "echo-user"), Some("ada"));
    assert_eq!(header(m, "correlationId"), Some("c-9"));
    assert_eq!(header(m, "Content-Type"), Some("text/plain"));
}

#[tokio::test]
async fn a_streaming_function_with_context_sees_the_first_messages_headers() {
    let daemon = Daemon::start(&uri("context", Some("tagged")));
    let mut client = daemon.client().await;
    // The context holds the first message's headers for the whole call; that message's
    // Accept still chooses the output type.
    let out = call(
        &mut client,
        vec![
            msg(
                "a",
                &[("correlationId", "c-7"), ("Accept", "application/json")],
            ),
            msg("b", &[("correlationId", "c-8")]),
        ],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.texts(), [r#""c-7: a""#, r#""c-7: b""#]);
    assert_eq!(
        header(&out.messages[0], "Content-Type"),
        Some("application/json")
    );
    // Interactively: the function opens when the first message comes, not before.
    let (tx, rx) = mpsc::channel(1);
    let mut replies = client
        .call(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(msg("late", &[("CorrelationID", "c-9")]))
        .await
        .unwrap();
    let reply = tokio::time::timeout(common::HANG, replies.message())
        .await
        .expect("a reply")
        .unwrap()
        .unwrap();
    assert_eq!(common::text(&reply), "c-9: late");
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    // A first message without the header: the function runs without it.
    let out = call(&mut client, vec![msg("x", &[])]).await;
    assert_eq!(out.texts(), ["no correlationId: x"]);
    // A first message the function cannot take fails the call as before.
    let out = call(
        &mut client,
        vec![msg("x", &[("Content-Type", "image/png")])],
    )
    .await;
    assert_status(
        &out,
        Code::InvalidArgument,
        "Invoker: Unsupported Media Type",
    );
    // No message at all: the function opens at half-close, with no headers.
    let daemon = Daemon::start(&uri("probe", Some("ctx_echo")));
    let mut client = daemon.client().await;
    let out = call(&mut client, vec![]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.texts(), ["ctx_echo"]);
}

#[tokio::test]
async fn order_is_kept_over_ten_thousand_streamed_messages() {
    let daemon = Daemon::start(&uri("streams", Some("running_average")));
    let mut client = daemon.client().await;
    let n = 10_000;
    let messages: Vec<_> = (1..=n).map(|i| msg(&i.to_string(), &[])).collect();
    let out = call(&mut client, messages).await;
    assert_eq!(out.code(), Code::Ok, "{:?}", out.status);
    assert_eq!(out.messages.len(), n);
    for (i, m) in out.messages.iter().enumerate() {
        // The average of 1..=k is (k + 1) / 2.
        let expected = (i as f64 + 2.0) / 2.0;
        assert_eq!(
            common::text(m).parse::<f64>().unwrap(),
            expected,
            "message {i}"
        );
    }
    assert_eq!(header(&out.messages[0], "Content-Type"), Some("text/plain"));
}

#[tokio::test]
async fn streaming_output_type_comes_from_the_first_accept() {
    let daemon = Daemon::start(&uri("streams", Some("running_average")));
    let mut client = daemon.client().await;
    let out = call(
        &mut client,
        vec![
            msg("1", &[("Accept", "application/json")]),
            msg("2", &[("Accept", "text/plain")]),
        ],
    )
    .await;
    assert_eq!(out.texts(), ["1.0", "1.5"]);
    for m in &out.messages {
        assert_eq!(header(m, "Content-Type"), Some("application/json"));
    }
    let out = call(&mut client, vec![msg("1", &[("Accept", "image/png")])]).await;
    assert_status(&out, Code::InvalidArgument, "Invoker: Not Acceptable");
    let out = call(&mut client, vec![msg("1", &[]), msg("x", &[])]).await;
    assert_eq!(out.texts(), ["1"]);
    assert_status(&out, Code::InvalidArgument, "Invoker: Bad Input Signal");
    let out = call(
        &mut client,
        vec![msg("1", &[]), msg("2", &[("Content-Type", "image/png")])],
    )
    .await;
    assert_eq!(out.texts(), ["1"]);
    assert_status(
        &out,
        Code::InvalidArgument,
        "Invoker: Unsupported Media Type",
    );
}

#[tokio::test]
async fn rle_fails_after_partial_output() {
    let daemon = Daemon::start(&uri("streams", Some("rle")));
    let mut client = daemon.client().await;
    let words = ["a", "a", "b", "c", "c", "c", "d"];
    let out = call(&mut client, words.iter().map(|w| msg(w, &[])).collect()).await;
    assert_eq!(
        out.texts(),
        [r#"{"word":"a","count":2}"#, r#"{"word":"b","count":1}"#]
    );
    assert_eq!(
        header(&out.messages[0], "Content-Type"),
        Some("application/json")
    );
    assert_status(&out, Code::Unknown, "Too many occurrences of c");
}

#[tokio::test]
async fn ticker_runs_until_the_client_half_closes() {
    let daemon = Daemon::start(&uri("streams", Some("ticker")));
    let mut client = daemon.client().await;
    let (tx, rx) = mpsc::channel(1);
    let mut replies = client
        .call(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut ticks = Vec::new();
    for _ in 0..3 {
        ticks.push(common::text(&replies.message().await.unwrap().unwrap()));
    }
    assert_eq!(ticks, ["0", "1", "2"]);
    drop(tx); // half-close
    let stopped = tokio::time::timeout(common::HANG, async {
        loop {
            match replies.message().await {
                Ok(Some(_)) => continue, // ticks already on their way
                Ok(None) => break,
                Err(status) => panic!("the call should end OK, got {status:?}"),
            }
        }
    });
    stopped
        .await
        .expect("the ticker did not stop at half-close");
    // A message to a supplier is refused, not dropped.
    let out = call(&mut client, vec![msg("x", &[])]).await;
    assert_status(&out, Code::FailedPrecondition, "Invoker:");
}

#[tokio::test]
async fn sixty_four_concurrent_calls_are_isolated() {
    let daemon = Daemon::start(&uri("greeter", Some("hello")));
    let channel = daemon.channel().await;
    let calls = (0..64).map(|i| {
        let mut client =
            invoker::proto::function::message_function_client::MessageFunctionClient::new(
                channel.clone(),
            );
        async move {
            let name = if i % 8 == 0 {
                "Riff".to_owned()
            } else {
                format!("n{i}")
            };
            let out = call(
                &mut client,
                vec![msg(&name, &[("correlationId", &i.to_string())])],
            )
            .await;
            (i, name, out)
        }
    });
    for (i, name, out) in futures_util::future::join_all(calls).await {
        if name == "Riff" {
            assert_status(&out, Code::Unknown, "error condition");
        } else {
            assert_eq!(out.code(), Code::Ok, "{out:?}");
            assert_eq!(out.texts(), [format!("Hello {name}")]);
            assert_eq!(
                header(&out.messages[0], "correlationId"),
                Some(i.to_string().as_str())
            );
        }
    }
}

#[tokio::test]
async fn a_blocking_function_does_not_stall_other_calls() {
    let daemon = Daemon::start(&uri("probe", Some("sleep_ms")));
    let channel = daemon.channel().await;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let mut client =
                invoker::proto::function::message_function_client::MessageFunctionClient::new(
                    channel.clone(),
                );
            tokio::spawn(async move { call(&mut client, vec![msg("3000", &[])]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = daemon.client().await;
    let fast = call(&mut client, vec![msg("0", &[])]).await;
    assert_eq!(fast.texts(), ["slept 0 ms"]);
    assert!(
        slow.iter().all(|task| !task.is_finished()),
        "the quick call finished while the three blocking ones still ran"
    );
    for task in slow {
        assert_eq!(task.await.unwrap().texts(), ["slept 3000 ms"]);
    }
}

#[tokio::test]
async fn a_function_that_turns_blocking_does_not_stall_other_calls() {
    let daemon = Daemon::start(&uri("probe", Some("sleep_ms")));
    let channel = daemon.channel().await;
    let mut client = daemon.client().await;
    // Fast calls first: the invoker starts running them inline on its worker threads.
    for _ in 0..200 {
        let fast = call(&mut client, vec![msg("0", &[])]).await;
        assert_eq!(fast.texts(), ["slept 0 ms"]);
    }
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let mut client =
                invoker::proto::function::message_function_client::MessageFunctionClient::new(
                    channel.clone(),
                );
            tokio::spawn(async move { call(&mut client, vec![msg("3000", &[])]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fast = call(&mut client, vec![msg("0", &[])]).await;
    assert_eq!(fast.texts(), ["slept 0 ms"]);
    assert!(
        slow.iter().all(|task| !task.is_finished()),
        "the quick call finished while the three blocking ones still ran"
    );
    for task in slow {
        assert_eq!(task.await.unwrap().texts(), ["slept 3000 ms"]);
    }
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let daemon = Daemon::start(&uri("rot13", None));
    let mut health = HealthClient::new(daemon.channel().await);
    for service in ["", "function.MessageFunction"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            reply.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let out = one(&daemon, "Hello World", &[]).await;
    assert_eq!(out.texts(), ["Uryyb Jbeyq"]);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(daemon.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"function.MessageFunction".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"streaming.Riff".to_owned()), "{names:?}");
    // The admin service is served on the Unix socket only: not advertised on this port.
    assert!(
        !names.iter().any(|name| name.starts_with("invoker.admin")),
        "{names:?}"
    );
}

fn sigterm(daemon: &Daemon) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM).unwrap();
}

#[tokio::test]
async fn sigterm_drains_a_call_in_flight() {
    let mut daemon = Daemon::start(&uri("probe", Some("sleep_ms")));
    let mut client = daemon.client().await;
    let channel = daemon.channel().await;
    let in_flight = tokio::spawn(async move { call(&mut client, vec![msg("1500", &[])]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&daemon);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While draining: health says NOT_SERVING and new calls are refused.
    let mut health = HealthClient::new(channel.clone());
    let reply = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status(), ServingStatus::NotServing);
    let mut late =
        invoker::proto::function::message_function_client::MessageFunctionClient::new(channel);
    let refused = call(&mut late, vec![msg("0", &[])]).await;
    assert_status(&refused, Code::Unavailable, "Invoker:");
    // The call in flight completes normally.
    let out = in_flight.await.unwrap();
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.texts(), ["slept 1500 ms"]);
    assert_eq!(daemon.exit_code().await, Some(0), "{}", daemon.stderr());
}

#[tokio::test]
async fn calls_still_running_after_the_grace_period_end_unavailable() {
    let mut daemon = Daemon::start_with(&uri("probe", Some("counted")), &[("GRACE_PERIOD", "0.5")]);
    let mut client = daemon.client().await;
    let (tx, rx) = mpsc::channel(1);
    let mut replies = client
        .call(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(msg("one", &[])).await.unwrap();
    assert_eq!(
        common::text(&replies.message().await.unwrap().unwrap()),
        "one"
    );
    sigterm(&daemon);
    let status = replies.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().starts_with("Invoker:"), "{status:?}");
    drop(tx);
    assert_eq!(daemon.exit_code().await, Some(0), "{}", daemon.stderr());
}

#[tokio::test]
async fn a_message_with_two_hundred_thousand_headers_is_answered() {
    // A client controls the headers: their number must not make a call slow for everyone.
    let daemon = Daemon::start(&uri("greeter", Some("hello")));
    let mut client = daemon.client().await;
    let names: Vec<String> = (0..200_000).map(|i| format!("x-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let out = call(&mut client, vec![msg("World", &headers)]).await;
    assert_eq!(out.code(), Code::Ok, "{:?}", out.status);
    assert_eq!(out.texts(), ["Hello World"]);
}

#[tokio::test]
async fn a_handler_named_with_dashes_finds_the_function_named_with_underscores() {
    // riff's default handler is the function's name, e.g. `greet-json`.
    let daemon = Daemon::start(&uri("greeter", Some("greet-json")));
    let mut client = daemon.client().await;
    let out = call(
        &mut client,
        vec![msg(
            r#"{"name":"Ada"}"#,
            &[("Content-Type", "application/json")],
        )],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{:?}", out.status);
    assert_eq!(out.texts(), [r#"{"greeting":"Hello Ada"}"#]);
}

#[tokio::test]
async fn a_streaming_call_ends_at_half_close_and_refuses_what_the_function_did_not_read() {
    let daemon = Daemon::start(&uri("probe", Some("take_two")));
    let mut client = daemon.client().await;
    // The function's output ends after two; the third message is refused, not dropped.
    let out = call(
        &mut client,
        vec![msg("a", &[]), msg("b", &[]), msg("c", &[])],
    )
    .await;
    assert_eq!(out.texts(), ["a", "b"]);
    assert_status(&out, Code::FailedPrecondition, "Invoker:");
    // Exactly what it reads: OK at half-close.
    let out = call(&mut client, vec![msg("a", &[]), msg("b", &[])]).await;
    assert_eq!(out.texts(), ["a", "b"]);
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    // After the output ended, the call stays open until half-close: a message still sent then
    // is refused.
    let (tx, rx) = mpsc::channel(1);
    let mut replies = client
        .call(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for word in ["a", "b"] {
        tx.send(msg(word, &[])).await.unwrap();
        assert_eq!(
            common::text(&replies.message().await.unwrap().unwrap()),
            word
        );
    }
    tx.send(msg("late", &[])).await.unwrap();
    let ended = tokio::time::timeout(common::HANG, replies.message())
        .await
        .expect("the call ends");
    let status = ended.expect_err("the late message is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn a_message_the_function_never_read_fails_the_call_even_when_it_was_held_back() {
    // The message with Accept decides the output type, so the engine holds it back from the
    // poll that received it; `one_look` ends its output without polling again. The call must
    // not end OK as if the message had been consumed. (Had the message not arrived by that
    // poll, it would be refused on arrival instead, with the same status: the outcome does not
    // depend on timing, only which of the two paths gives it.)
    let daemon = Daemon::start(&uri("probe", Some("one_look")));
    let mut client = daemon.client().await;
    let out = call(&mut client, vec![msg("a", &[("Accept", "text/plain")])]).await;
    assert!(out.texts().is_empty(), "{out:?}");
    assert_status(
        &out,
        Code::FailedPrecondition,
        "Invoker: the function's output has ended",
    );
}

#[tokio::test]
async fn a_caller_that_does_not_read_holds_the_function_back() {
    // Backpressure: the function's output is only pulled as the caller reads it, so a caller
    // that stops reading stops the function, and nothing buffers what it would have produced.
    let daemon = Daemon::start(&uri("probe", Some("firehose")));
    let mut client = daemon.client().await;
    let (tx, rx) = mpsc::channel::<invoker::proto::function::Message>(1);
    let mut replies = client
        .call(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = replies.message().await.unwrap().unwrap();
    assert_eq!(first.payload.len(), 1024);
    // Unbounded, the firehose would make about a million payloads in this second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(replies);
    drop(tx);
    common::wait_for_log(&daemon, "firehose: produced ").await;
    let log = daemon.stderr();
    let produced: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("firehose: produced "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the count");
    // What flow control lets through: the HTTP/2 windows and socket buffers, a few MiB.
    assert!(
        produced < 50_000,
        "{produced} KiB produced for a caller that read 1 KiB"
    );
}

/// A gRPC codec that sends and receives raw bytes, to send what is not protobuf.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(buf, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        let len = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, len)))
    }
}

/// Sends `messages` as raw gRPC frames to `method` and returns how the call ended.
async fn raw_call(daemon: &Daemon, method: &'static str, messages: Vec<&[u8]>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(daemon.channel().await);
    grpc.ready().await.expect("ready");
    let request = futures_util::stream::iter(
        messages
            .into_iter()
            .map(bytes::Bytes::copy_from_slice)
            .collect::<Vec<_>>(),
    );
    let call = async {
        let mut replies = match grpc
            .streaming(
                tonic::Request::new(request),
                tonic::codegen::http::uri::PathAndQuery::from_static(method),
                RawCodec,
            )
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => return status,
        };
        loop {
            match replies.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return tonic::Status::ok(""),
                Err(status) => return status,
            }
        }
    };
    tokio::time::timeout(common::HANG, call)
        .await
        .expect("the call hung")
}

#[tokio::test]
async fn a_message_that_is_not_protobuf_is_invalid_argument() {
    // Both methods, whichever message of the call is malformed: it is the client's fault.
    let daemon = Daemon::start(&uri("streams", Some("running_average")));
    // Field 1 (payload) says 5 bytes follow, and one does; then a field with wire type 7.
    let truncated: &[u8] = &[0x0a, 0x05, 0x31];
    let bad_wire_type: &[u8] = &[0x0f, 0x00];
    let good_call: &[u8] = &[0x0a, 0x01, 0x31]; // function.Message{payload: "1"}
    // streaming.InputSignal{start: {expectedContentTypes: ["text/plain"]}}
    let start: &[u8] = b"\x0a\x0c\x0a\x0atext/plain";
    for (method, messages) in [
        ("/function.MessageFunction/Call", vec![truncated]),
        (
            "/function.MessageFunction/Call",
            vec![good_call, bad_wire_type],
        ),
        ("/streaming.Riff/Invoke", vec![bad_wire_type]),
        ("/streaming.Riff/Invoke", vec![start, truncated]),
    ] {
        let status = raw_call(&daemon, method, messages.clone()).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{method} {messages:?}: {status:?}"
        );
        assert!(
            status
                .message()
                .starts_with("Invoker: malformed message: failed to decode Protobuf message"),
            "{method} {messages:?}: {status:?}"
        );
    }
    // The server goes on serving.
    let mut client = daemon.client().await;
    let out = call(&mut client, vec![msg("2", &[]), msg("4", &[])]).await;
    assert_eq!(out.texts(), ["2", "3"], "{:?}", out.status);
}
