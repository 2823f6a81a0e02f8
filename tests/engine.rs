//! The fast tier: the engine and the protocols through the server started inside the test
//! process (`invoker::server::in_process`, the wiring of `invoker serve` on a free port),
//! with real gRPC clients. What only a process shows (signals, exit codes, the log, stdout,
//! crashes) stays with the tests of the real binary (`tests/call.rs`, `tests/ops.rs`, ...).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::tier::Server;
use common::{call, header, msg, uri};
use invoker::proto::streaming::riff_client::RiffClient;
use invoker::proto::streaming::{InputFrame, InputSignal, StartFrame, input_signal, output_signal};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn one(server: &Server, payload: &str, headers: &[(&str, &str)]) -> common::Outcome {
    let mut client = server.client().await;
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

/// An Invoke data frame on input `arg_index`.
fn frame(payload: &str, content_type: &str, arg_index: i32) -> InputSignal {
    InputSignal {
        frame: Some(input_signal::Frame::Data(InputFrame {
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            content_type: content_type.to_owned(),
            headers: BTreeMap::new(),
            arg_index,
        })),
    }
}

/// One Invoke call: a StartFrame accepting `accept`, then `frames`; returns each output frame
/// as (resultIndex, contentType, payload), and how the call ended.
async fn invoke(
    server: &Server,
    accept: &[&str],
    frames: Vec<InputSignal>,
) -> (Vec<(i32, String, String)>, tonic::Status) {
    let start = InputSignal {
        frame: Some(input_signal::Frame::Start(StartFrame {
            expected_content_types: accept.iter().map(|s| s.to_string()).collect(),
            input_names: vec![],
            output_names: vec![],
        })),
    };
    let mut client = RiffClient::new(server.channel().await);
    let signals = futures_util::stream::iter(std::iter::once(start).chain(frames));
    let called = async move {
        let mut replies = match client.invoke(signals).await {
            Ok(response) => response.into_inner(),
            Err(status) => return (vec![], status),
        };
        let mut out = Vec::new();
        loop {
            match replies.message().await {
                Ok(Some(signal)) => match signal.frame {
                    Some(output_signal::Frame::Data(f)) => out.push((
                        f.result_index,
                        f.content_type,
                        String::from_utf8_lossy(&f.payload).into_owned(),
                    )),
                    None => panic!("an OutputSignal without a frame"),
                },
                Ok(None) => return (out, tonic::Status::ok("")),
                Err(status) => return (out, status),
            }
        }
    };
    tokio::time::timeout(common::HANG, called)
        .await
        .expect("the call hung")
}

/// Health's answer for the whole server.
async fn health(server: &Server) -> ServingStatus {
    let mut health = HealthClient::new(server.channel().await);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    health.check(request).await.unwrap().into_inner().status()
}

/// Waits until `server` has a call in flight (fails the test after [`common::HANG`]).
async fn a_call_in_flight(server: &Server) {
    let waited = tokio::time::timeout(common::HANG, async {
        while server.server.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.expect("the call never was in flight");
}

#[tokio::test]
async fn every_error_status() {
    let hello = Server::start(&uri("greeter", Some("hello")));
    // Unsupported Media Type.
    let out = one(
        &hello,
        "name=Ada",
        &[("Content-Type", "application/x-www-form-urlencoded")],
    )
    .await;
    assert_status(
        &out,
        Code::InvalidArgument,
        "Invoker: Unsupported Media Type",
    );
    assert!(
        out.status.message().contains("text/plain"),
        "lists what it accepts: {out:?}"
    );
    // Not Acceptable.
    let out = one(&hello, "Ada", &[("Accept", "image/png")]).await;
    assert_status(&out, Code::InvalidArgument, "Invoker: Not Acceptable");
    // The function's error.
    let out = one(&hello, "Riff", &[]).await;
    assert_status(&out, Code::Unknown, "error condition");
    assert!(out.messages.is_empty());

    // Bad input.
    let double = Server::start(&uri("greeter", Some("double")));
    let out = one(&double, "foo", &[]).await;
    assert_status(&out, Code::InvalidArgument, "Invoker: Bad Input Signal");
    let greet = Server::start(&uri("greeter", Some("greet_json")));
    let out = one(&greet, "{oops", &[("Content-Type", "application/json")]).await;
    assert_status(&out, Code::InvalidArgument, "Invoker: Bad Input Signal");

    // A second message to a request/reply function.
    let mut client = double.client().await;
    let out = call(&mut client, vec![msg("1", &[]), msg("2", &[])]).await;
    assert_eq!(out.texts(), ["2"], "the first message is answered");
    assert_status(&out, Code::FailedPrecondition, "Invoker:");

    // A panic.
    let panics = Server::start(&uri("shapes", Some("panics")));
    let out = one(&panics, "boom", &[]).await;
    assert_status(&out, Code::Internal, "Invoker: Function Panicked");
    assert!(out.status.message().contains("boom"), "{out:?}");
}

#[tokio::test]
async fn negotiation_over_accept() {
    let double = Server::start(&uri("greeter", Some("double")));
    let case = |accept: &'static str| {
        let double = &double;
        async move {
            let out = one(double, "21", &[("Accept", accept)]).await;
            assert_eq!(out.code(), Code::Ok, "{accept}: {out:?}");
            (
                header(&out.messages[0], "Content-Type").unwrap().to_owned(),
                common::text(&out.messages[0]),
            )
        }
    };
    // No Accept: the function's preferred type.
    let out = one(&double, "21", &[]).await;
    assert_eq!(header(&out.messages[0], "Content-Type"), Some("text/plain"));
    // q-values.
    assert_eq!(
        case("text/plain;q=0.5, application/json").await.0,
        "application/json"
    );
    assert_eq!(
        case("text/plain;q=0.9, application/json;q=0.8").await.0,
        "text/plain"
    );
    // Wildcards and specificity: an exact type beats */*.
    assert_eq!(case("*/*").await.0, "text/plain");
    assert_eq!(case("application/*").await.0, "application/json");
    assert_eq!(case("*/*, application/json").await.0, "application/json");
    // q=0 excludes.
    assert_eq!(case("*/*, text/plain;q=0").await.0, "application/json");
    // Parameters other than q are kept.
    assert_eq!(
        case("application/json; charset=utf-8").await,
        (
            "application/json; charset=utf-8".to_owned(),
            "42".to_owned()
        )
    );
    // Several Accept values.
    let out = one(
        &double,
        "21",
        &[("Accept", "image/png"), ("Accept", "application/json")],
    )
    .await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");

    // JSON struct output with no Accept.
    let greet = Server::start(&uri("greeter", Some("greet_json")));
    let out = one(
        &greet,
        r#"{"name":"Ada"}"#,
        &[("Content-Type", "application/json")],
    )
    .await;
    assert_eq!(out.texts(), [r#"{"greeting":"Hello Ada"}"#]);
    assert_eq!(
        header(&out.messages[0], "Content-Type"),
        Some("application/json")
    );
    // A form posted to a JSON function.
    let out = one(
        &greet,
        "name=Grace",
        &[("Content-Type", "application/x-www-form-urlencoded")],
    )
    .await;
    assert_eq!(out.texts(), [r#"{"greeting":"Hello Grace"}"#]);
}

#[tokio::test]
async fn call_and_invoke_answer_alike_on_one_server() {
    let server = Server::start(&uri("greeter", Some("hello")));
    let out = one(&server, "Ada", &[("Accept", "text/plain")]).await;
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.texts(), ["Hello Ada"]);
    assert_eq!(header(&out.messages[0], "Content-Type"), Some("text/plain"));

    let names = vec![
        frame("Ada", "text/plain", 0),
        frame("Grace", "text/plain", 0),
    ];
    let (frames, status) = invoke(&server, &["text/plain"], names).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(
        frames,
        [
            (0, "text/plain".to_owned(), "Hello Ada".to_owned()),
            (0, "text/plain".to_owned(), "Hello Grace".to_owned()),
        ]
    );
    // The function's error ends the Invoke call as it ends a Call.
    let riff = vec![frame("Riff", "text/plain", 0)];
    let (frames, status) = invoke(&server, &["text/plain"], riff).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(status.message(), "error condition");
}

#[tokio::test]
async fn a_stream_with_two_outputs_sends_each_on_its_own_result_index() {
    let server = Server::start(&uri("streams", Some("partition")));
    let numbers = (1..=6)
        .map(|n| frame(&n.to_string(), "text/plain", 0))
        .collect();
    let (frames, status) = invoke(&server, &["text/plain", "application/json"], numbers).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let on = |index: i32| {
        frames
            .iter()
            .filter(|(i, _, _)| *i == index)
            .map(|(_, content_type, payload)| (content_type.as_str(), payload.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        on(0),
        [
            ("text/plain", "2"),
            ("text/plain", "4"),
            ("text/plain", "6")
        ]
    );
    assert_eq!(
        on(1),
        [
            ("application/json", "1"),
            ("application/json", "3"),
            ("application/json", "5")
        ]
    );
}

#[tokio::test]
async fn a_call_past_its_deadline_ends_with_deadline_exceeded() {
    let server = Server::start(&uri("streams", Some("ticker")));
    let mut client = server.client().await;
    // The request stays open: the ticker ticks until the deadline.
    let (_open, rx) = tokio::sync::mpsc::channel(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.set_timeout(Duration::from_millis(300));
    let outcome = tokio::time::timeout(common::HANG, async {
        let mut replies = client.call(request).await?.into_inner();
        let mut ticks = 0;
        while replies.message().await?.is_some() {
            ticks += 1;
        }
        Ok::<_, tonic::Status>(ticks)
    })
    .await
    .expect("the call hung");
    let status = outcome.expect_err("a ticker never ends by itself");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn the_drain_refuses_new_calls_and_lets_calls_in_flight_end() {
    let server = Server::start_with(&uri("probe", Some("sleep_ms")), &["--grace-period", "30"]);
    let mut client = server.client().await;
    let channel = server.channel().await;
    let in_flight = tokio::spawn(async move { call(&mut client, vec![msg("700", &[])]).await });
    a_call_in_flight(&server).await;
    assert_eq!(health(&server).await, ServingStatus::Serving);

    server.server.drain();
    assert_eq!(health(&server).await, ServingStatus::NotServing);
    let mut late =
        invoker::proto::function::message_function_client::MessageFunctionClient::new(channel);
    let refused = call(&mut late, vec![msg("0", &[])]).await;
    assert_status(&refused, Code::Unavailable, "Invoker:");
    let out = in_flight.await.unwrap();
    assert_eq!(out.code(), Code::Ok, "{out:?}");
    assert_eq!(out.texts(), ["slept 700 ms"]);
    tokio::time::timeout(common::HANG, server.server.stopped())
        .await
        .expect("the drain did not end")
        .expect("served");
}

#[tokio::test]
async fn a_full_function_pool_refuses_with_resource_exhausted() {
    let server = Server::start_with(
        &uri("probe", Some("sleep_ms")),
        &["--max-concurrency", "1", "--max-queued", "0"],
    );
    let mut client = server.client().await;
    let running = tokio::spawn(async move { call(&mut client, vec![msg("700", &[])]).await });
    a_call_in_flight(&server).await;
    let out = one(&server, "0", &[]).await;
    assert_status(&out, Code::ResourceExhausted, "Invoker:");
    let first = running.await.unwrap();
    assert_eq!(first.texts(), ["slept 700 ms"], "{first:?}");
    // With the thread free again, calls run.
    assert_eq!(one(&server, "0", &[]).await.texts(), ["slept 0 ms"]);
}

#[tokio::test]
async fn a_library_served_twice_in_one_process_serves_both() {
    let first = Server::start(&uri("greeter", Some("hello")));
    let second = Server::start(&uri("greeter", Some("double")));
    assert_eq!(one(&first, "Ada", &[]).await.texts(), ["Hello Ada"]);
    assert_eq!(one(&second, "21", &[]).await.texts(), ["42"]);
    drop(first);
    assert_eq!(one(&second, "4", &[]).await.texts(), ["8"]);
}
