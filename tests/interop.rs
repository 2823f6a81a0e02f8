//! HTTP/2 interop: the real daemon driven by Python's grpcio (tests/interop/client.py), a gRPC
//! stack other than tonic. scripts/test sets up the virtualenv and exports INVOKER_PYTHON.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{Daemon, uri};
use serde_json::{Value, json};

fn python() -> PathBuf {
    common::tools::python(&["grpc"])
}

/// Runs one request through the Python client against the daemon.
fn grpcio(daemon: &Daemon, request: Value) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/client.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(["--target", &daemon.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON result")
}

fn payloads(result: &Value) -> Vec<&str> {
    result["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect()
}

#[test]
fn grpcio_calls_a_request_reply_function() {
    let daemon = Daemon::start(&uri("greeter", Some("hello")));
    let result = grpcio(
        &daemon,
        json!({"rpc": "call", "messages": [
            {"payload": "Python", "headers": {"Content-Type": ["text/plain"], "correlationId": ["py-1"]}}
        ]}),
    );
    assert_eq!(result["code"], "OK", "{result}");
    assert_eq!(payloads(&result), ["Hello Python"]);
    let headers = &result["messages"][0]["headers"];
    assert_eq!(headers["Content-Type"], json!(["text/plain"]));
    assert_eq!(headers["correlationId"], json!(["py-1"]));

    let result = grpcio(
        &daemon,
        json!({"rpc": "call", "messages": [{"payload": "Riff"}]}),
    );
    assert_eq!(
        (result["code"].as_str(), result["details"].as_str()),
        (Some("UNKNOWN"), Some("error condition"))
    );

    let result = grpcio(
        &daemon,
        json!({"rpc": "call", "messages": [{"payload": "a"}, {"payload": "b"}]}),
    );
    assert_eq!(result["code"], "FAILED_PRECONDITION", "{result}");
    assert_eq!(payloads(&result), ["Hello a"]);

    let result = grpcio(&daemon, json!({"rpc": "health", "service": ""}));
    assert_eq!(result["status"], "SERVING", "{result}");
}

#[test]
fn grpcio_streams_a_thousand_messages_in_order() {
    let daemon = Daemon::start(&uri("streams", Some("running_average")));
    let messages: Vec<Value> = (1..=1000)
        .map(|i| json!({"payload": i.to_string(), "headers": {"Accept": ["application/json"]}}))
        .collect();
    let result = grpcio(&daemon, json!({"rpc": "call", "messages": messages}));
    assert_eq!(result["code"], "OK", "{result}");
    let got = payloads(&result);
    assert_eq!(got.len(), 1000);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.parse::<f64>().unwrap(), (i as f64 + 2.0) / 2.0);
    }
    assert_eq!(
        result["messages"][0]["headers"]["Content-Type"],
        json!(["application/json"])
    );
}

#[test]
fn grpcio_invokes_over_the_riff_protocol() {
    let daemon = Daemon::start(&uri("streams", Some("partition")));
    let frames: Vec<Value> = (1..=4)
        .map(|i| json!({"payload": i.to_string(), "contentType": "text/plain", "argIndex": 0}))
        .collect();
    let result = grpcio(
        &daemon,
        json!({"rpc": "invoke", "start": {"expectedContentTypes": ["text/plain", "application/json"]}, "frames": frames}),
    );
    assert_eq!(result["code"], "OK", "{result}");
    let mut by_output: Vec<(i64, String, String)> = result["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["resultIndex"].as_i64().unwrap(),
                m["payload"].as_str().unwrap().to_owned(),
                m["contentType"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_output.sort();
    assert_eq!(
        by_output,
        [
            (0, "2".into(), "text/plain".into()),
            (0, "4".into(), "text/plain".into()),
            (1, "1".into(), "application/json".into()),
            (1, "3".into(), "application/json".into()),
        ]
    );

    let result = grpcio(
        &daemon,
        json!({"rpc": "invoke", "frames": [{"payload": "1", "contentType": "text/plain"}]}),
    );
    assert_eq!(result["code"], "INVALID_ARGUMENT", "{result}");
    assert!(
        result["details"]
            .as_str()
            .unwrap()
            .starts_with("Invoker: Protocol Violation"),
        "{result}"
    );
}
