//! `invoker statefun` (SPEC §10) against a test driver that plays the StateFun cluster: it
//! builds `ToFunction` batches and reads the `FromFunction` answers with Python's protobuf
//! runtime (tests/interop/statefun_driver.py, over the invoker's own proto/statefun/*.proto
//! compiled by grpc_tools at test time), not the server's prost types. Every rule of §10 and
//! every row of the example's table (examples/statefun); and a library built before the
//! stateful ABI still loads and serves gRPC.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

/// The Python and the directory our .proto files were compiled into, once per test binary.
fn python() -> &'static (PathBuf, PathBuf) {
    static COMPILED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let python = common::tools::python(&["grpc_tools", "google.protobuf"]);
        // Under target/ (cargo's directory for integration tests' files), not $TMPDIR: a static
        // is never dropped, so nothing would remove it from there. Regenerated on every run.
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("statefun-py");
        std::fs::create_dir_all(&out).unwrap();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new(&python)
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", root.join("proto/statefun").display()))
            .arg(format!("--python_out={}", out.display()))
            .args(["request-reply.proto", "types.proto", "kafka-egress.proto"])
            .current_dir(root.join("proto/statefun"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "grpc_tools.protoc failed on proto/statefun"
        );
        // protoc names the modules after the files: request-reply.proto → request_reply_pb2?
        // (a dash is not a module name: it keeps it), so copy to importable names.
        for (from, to) in [
            ("request-reply_pb2.py", "request_reply_pb2.py"),
            ("kafka-egress_pb2.py", "kafka_egress_pb2.py"),
        ] {
            if out.join(from).is_file() {
                std::fs::copy(out.join(from), out.join(to)).unwrap();
            }
        }
        (python, out)
    })
}

fn driver(args: &[&str], input: &[u8]) -> Vec<u8> {
    let (python, generated) = python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/statefun_driver.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(generated)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "statefun_driver.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A `ToFunction`, encoded by Python from its JSON form.
fn to_function(batch: &Value) -> Vec<u8> {
    driver(&["encode"], batch.to_string().as_bytes())
}

/// A `FromFunction`, decoded by Python into its JSON form.
fn from_function(bytes: &[u8]) -> Value {
    serde_json::from_slice(&driver(&["decode"], bytes)).unwrap()
}

/// A running `invoker statefun`, killed when dropped.
struct Endpoint {
    child: Child,
    addr: String,
}

impl Endpoint {
    fn start(library: &str, extra: &[&str]) -> Endpoint {
        let mut child = Command::new(env!("CARGO_BIN_EXE_invoker"))
            .arg("statefun")
            .args(extra)
            .env("FUNCTION_URI", common::lib(library))
            .env("STATEFUN_PORT", "0")
            .env("HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.to_owned();
                    }
                }
                _ => panic!(
                    "invoker statefun exited before listening: {:?}",
                    child.wait()
                ),
            }
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Endpoint { child, addr }
    }

    /// POSTs `body` to `path`: the status, the Content-Type and the body.
    fn post_to(&self, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let body = response[split + 4..].to_vec();
        let status = head[9..12].parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        (status, content_type, body)
    }

    /// POSTs a batch to /statefun; a 200's `FromFunction`, decoded, or the error status and
    /// text.
    fn batch(&self, batch: &Value) -> Result<Value, (u16, String)> {
        let (status, content_type, body) = self.post_to("/statefun", &to_function(batch));
        if status != 200 {
            return Err((status, String::from_utf8_lossy(&body).into_owned()));
        }
        assert_eq!(content_type, "application/octet-stream");
        Ok(from_function(&body))
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An endpoint for the example library, of the test's own (a process in a static would
/// outlive the test binary).
fn endpoint() -> Endpoint {
    Endpoint::start("statefun", &[])
}

fn address(function_type: &str, id: &str) -> Value {
    let (namespace, kind) = function_type.rsplit_once('/').unwrap();
    json!({"namespace": namespace, "type": kind, "id": id})
}

fn string(s: &str) -> Value {
    json!({"typename": "io.statefun.types/string", "string": s})
}

/// A batch for `function_type`/`id` with `state` (name → typed value, or null for a value
/// sent without `state_value`) and one invocation per argument.
fn batch(function_type: &str, id: &str, state: &[(&str, Value)], arguments: &[Value]) -> Value {
    let state: Vec<Value> = state
        .iter()
        .map(|(name, value)| match value {
            Value::Null => json!({"state_name": name}),
            value => json!({"state_name": name, "state_value": value}),
        })
        .collect();
    let invocations: Vec<Value> = arguments.iter().map(|a| json!({"argument": a})).collect();
    json!({"invocation": {
        "target": address(function_type, id),
        "state": state,
        "invocations": invocations,
    }})
}

fn result(from: &Value) -> &Value {
    let result = &from["invocation_result"];
    assert!(result.is_object(), "not an invocation result: {from}");
    result
}

/// The decoded egress values, with their egress.
fn egresses(from: &Value) -> Vec<(String, Value)> {
    result(from)["outgoing_egresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                format!(
                    "{}/{}",
                    e["egress_namespace"].as_str().unwrap(),
                    e["egress_type"].as_str().unwrap()
                ),
                e["argument"]["decoded"].clone(),
            )
        })
        .collect()
}

fn greets(from: &Value) -> Vec<String> {
    egresses(from)
        .into_iter()
        .map(|(egress, value)| {
            assert_eq!(egress, "example/greets");
            value.as_str().unwrap().to_owned()
        })
        .collect()
}

fn mutations(from: &Value) -> Vec<Value> {
    result(from)["state_mutations"].as_array().unwrap().clone()
}

#[test]
fn missing_state_asks_for_exactly_the_missing_specs_and_runs_nothing() {
    missing_state(&endpoint());
}

fn missing_state(endpoint: &Endpoint) {
    let from = endpoint
        .batch(&batch("example/greeter", "ann", &[], &[string("Ann")]))
        .unwrap();
    assert!(from.get("invocation_result").is_none(), "{from}");
    let missing = &from["incomplete_invocation_context"]["missing_values"];
    assert_eq!(
        missing,
        &json!([{"state_name": "seen", "type_typename": "io.statefun.types/int",
                 "expiration_spec": {"mode": "NONE", "expire_after_millis": "0"}}])
    );
    // session: AFTER_INVOKE; profile: AFTER_WRITE under the author's JSON typename.
    let from = endpoint
        .batch(&batch("example/session", "s", &[], &[string("a")]))
        .unwrap();
    assert_eq!(
        from["incomplete_invocation_context"]["missing_values"],
        json!([{"state_name": "last", "type_typename": "io.statefun.types/string",
                "expiration_spec": {"mode": "AFTER_INVOKE", "expire_after_millis": "300000"}}])
    );
    let person = json!({"typename": "example/Person", "json": {"name": "Ann", "age": 30}});
    let from = endpoint
        .batch(&batch("example/profile", "p", &[], &[person]))
        .unwrap();
    assert_eq!(
        from["incomplete_invocation_context"]["missing_values"],
        json!([{"state_name": "person", "type_typename": "example/Person",
                "expiration_spec": {"mode": "AFTER_WRITE", "expire_after_millis": "86400000"}}])
    );
}

#[test]
fn a_batch_runs_in_order_each_invocation_seeing_the_state_the_previous_left() {
    in_order(&endpoint());
}

fn in_order(endpoint: &Endpoint) {
    // Both forms of an empty value: no state_value, and has_value false.
    let empty_forms = [
        Value::Null,
        json!({"typename": "io.statefun.types/int", "has_value": false}),
    ];
    for empty in empty_forms {
        let from = endpoint
            .batch(&batch(
                "example/greeter",
                "ann",
                &[("seen", empty)],
                &[string("Ann"), string("Bob"), string("Cy")],
            ))
            .unwrap();
        assert_eq!(
            greets(&from),
            [
                "Hello Ann, visit 1",
                "Hello Bob, visit 2",
                "Hello Cy, visit 3"
            ]
        );
        // One mutation for the value, with its final value and declared typename.
        let mutations = mutations(&from);
        assert_eq!(mutations.len(), 1, "{mutations:?}");
        assert_eq!(mutations[0]["mutation_type"], "MODIFY");
        assert_eq!(mutations[0]["state_name"], "seen");
        assert_eq!(
            mutations[0]["state_value"]["typename"],
            "io.statefun.types/int"
        );
        assert_eq!(mutations[0]["state_value"]["has_value"], true);
        assert_eq!(mutations[0]["state_value"]["decoded"], 3);
    }
    let seen = json!({"typename": "io.statefun.types/int", "int": 41});
    let from = endpoint
        .batch(&batch(
            "example/greeter",
            "ann",
            &[("seen", seen)],
            &[string("Ann")],
        ))
        .unwrap();
    assert_eq!(greets(&from), ["Hello Ann, visit 42"]);
}

#[test]
fn relay_sends_to_the_greeter() {
    let endpoint = endpoint();
    let from = endpoint
        .batch(&batch("example/relay", "r", &[], &[string("Ann")]))
        .unwrap();
    let sent = &result(&from)["outgoing_messages"];
    assert_eq!(sent.as_array().unwrap().len(), 1, "{from}");
    assert_eq!(sent[0]["target"], address("example/greeter", "Ann"));
    assert_eq!(sent[0]["argument"]["typename"], "io.statefun.types/string");
    assert_eq!(sent[0]["argument"]["decoded"], "Ann");
    assert!(mutations(&from).is_empty());
}

#[test]
fn reminder_sends_a_delayed_message_with_a_token_and_cancels_it() {
    reminder(&endpoint());
}

fn reminder(endpoint: &Endpoint) {
    let from = endpoint
        .batch(&batch(
            "example/reminder",
            "r1",
            &[],
            &[string("set"), string("cancel")],
        ))
        .unwrap();
    let delayed = result(&from)["delayed_invocations"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(delayed.len(), 2, "{from}");
    assert_eq!(delayed[0]["is_cancellation_request"], false);
    assert_eq!(delayed[0]["cancellation_token"], "reminder-r1");
    assert_eq!(delayed[0]["delay_in_ms"], "60000");
    assert_eq!(delayed[0]["target"], address("example/reminder", "r1"));
    assert_eq!(delayed[0]["argument"]["decoded"], "ping");
    assert_eq!(delayed[1]["is_cancellation_request"], true);
    assert_eq!(delayed[1]["cancellation_token"], "reminder-r1");
    let from = endpoint
        .batch(&batch("example/reminder", "r1", &[], &[string("ping")]))
        .unwrap();
    assert_eq!(greets(&from), ["ping for r1"]);
}

#[test]
fn session_remembers_the_previous_string_and_forgets() {
    let endpoint = endpoint();
    let from = endpoint
        .batch(&batch(
            "example/session",
            "s",
            &[("last", Value::Null)],
            &[string("a"), string("b")],
        ))
        .unwrap();
    assert_eq!(greets(&from), ["previous: none", "previous: a"]);
    let mutations = mutations(&from);
    assert_eq!(mutations.len(), 1);
    assert_eq!(mutations[0]["mutation_type"], "MODIFY");
    assert_eq!(mutations[0]["state_value"]["decoded"], "b");
    let last = json!({"typename": "io.statefun.types/string", "string": "z"});
    let from = endpoint
        .batch(&batch(
            "example/session",
            "s",
            &[("last", last)],
            &[string("y"), string("forget")],
        ))
        .unwrap();
    assert_eq!(greets(&from), ["previous: z", "forgotten"]);
    // Set, then removed: one mutation, DELETE.
    let mutations = self::mutations(&from);
    assert_eq!(mutations.len(), 1, "{mutations:?}");
    assert_eq!(mutations[0]["mutation_type"], "DELETE");
    assert_eq!(mutations[0]["state_name"], "last");
    // An empty value sent as has_value false is no value (not an empty string).
    let empty = json!({"typename": "io.statefun.types/string", "has_value": false});
    let from = endpoint
        .batch(&batch(
            "example/session",
            "s",
            &[("last", empty)],
            &[string("x")],
        ))
        .unwrap();
    assert_eq!(greets(&from), ["previous: none"]);
}

#[test]
fn profile_stores_json_under_its_typename_and_refuses_a_negative_age() {
    let endpoint = endpoint();
    let person = json!({"typename": "example/Person", "json": {"name": "Ann", "age": 30}});
    let from = endpoint
        .batch(&batch(
            "example/profile",
            "p",
            &[("person", Value::Null)],
            std::slice::from_ref(&person),
        ))
        .unwrap();
    assert_eq!(greets(&from), ["Ann is 30"]);
    let mutations = mutations(&from);
    assert_eq!(mutations[0]["state_value"]["typename"], "example/Person");
    assert_eq!(
        mutations[0]["state_value"]["decoded"],
        json!({"name": "Ann", "age": 30})
    );
    // An error fails the whole batch: 500 with its text, nothing applies.
    let negative = json!({"typename": "example/Person", "json": {"name": "Bo", "age": -1}});
    let (status, text) = endpoint
        .batch(&batch(
            "example/profile",
            "p",
            &[("person", Value::Null)],
            &[person, negative],
        ))
        .unwrap_err();
    assert_eq!(status, 500);
    assert_eq!(text, "negative age");
}

#[test]
fn protocol_errors_are_404_and_400() {
    let endpoint = endpoint();
    let (status, text) = endpoint
        .batch(&batch("example/nobody", "x", &[], &[string("a")]))
        .unwrap_err();
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("example/nobody"), "{text}");
    let (status, _, body) = endpoint.post_to("/statefun", b"\xff\xff\xff not protobuf");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // An empty ToFunction holds no batch.
    let (status, _, _) = endpoint.post_to("/statefun", b"");
    assert_eq!(status, 400);
    // A path below /statefun (a urlPathTemplate with {function.name}) is the same endpoint.
    let body = to_function(&batch("example/relay", "r", &[], &[string("Ann")]));
    let (status, content_type, _) = endpoint.post_to("/statefun/example/relay", &body);
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/octet-stream")
    );
    let (status, _, _) = endpoint.post_to("/other", &body);
    assert_eq!(status, 404);
}

#[test]
fn a_message_of_another_type_fails_the_batch() {
    let endpoint = endpoint();
    let long = json!({"typename": "io.statefun.types/long", "long": 5});
    let (status, text) = endpoint
        .batch(&batch(
            "example/greeter",
            "g",
            &[("seen", Value::Null)],
            &[long],
        ))
        .unwrap_err();
    assert_eq!(status, 500);
    assert!(text.contains("io.statefun.types/long"), "{text}");
}

fn probe() -> Endpoint {
    Endpoint::start("stateful-probe", &["--max-request-bytes", "65536"])
}

#[test]
fn a_panic_is_500_with_its_message_and_no_mutation() {
    let probe = probe();
    let (status, text) = probe
        .batch(&batch(
            "probe/panics",
            "x",
            &[("i", Value::Null)],
            &[string("boom")],
        ))
        .unwrap_err();
    assert_eq!(status, 500);
    assert!(
        text.contains("Function Panicked") && text.contains("boom"),
        "{text}"
    );
    let (status, text) = probe
        .batch(&batch("probe/undeclared", "x", &[], &[string("a")]))
        .unwrap_err();
    assert_eq!(status, 500);
    assert!(text.contains("'i' is not declared"), "{text}");
}

#[test]
fn a_value_read_but_not_written_is_no_mutation() {
    let probe = probe();
    let five = json!({"typename": "io.statefun.types/int", "int": 5});
    let from = probe
        .batch(&batch("probe/reader", "r", &[("i", five)], &[string("a")]))
        .unwrap();
    assert_eq!(egresses(&from), [("probe/read".to_owned(), json!(5))]);
    assert!(mutations(&from).is_empty(), "{from}");
}

#[test]
fn kafka_egress_records_are_statefun_producer_records() {
    let probe = probe();
    let from = probe
        .batch(&batch("probe/kafka", "k1", &[], &[string("hello")]))
        .unwrap();
    let egresses = egresses(&from);
    assert_eq!(egresses.len(), 1);
    assert_eq!(egresses[0].0, "probe/kafka");
    assert_eq!(
        egresses[0].1,
        json!({"topic": "greetings", "key": "k1", "value_as_string": "hello"})
    );
    let typename = &result(&from)["outgoing_egresses"][0]["argument"]["typename"];
    assert_eq!(
        typename,
        "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord"
    );
}

#[test]
fn every_built_in_type_is_statefuns_wrapper_and_the_caller_is_known() {
    let probe = probe();
    let state: Vec<(&str, Value)> = ["i", "l", "f", "d", "b", "s", "blob"]
        .into_iter()
        .map(|n| (n, Value::Null))
        .collect();
    let mut request = batch(
        "probe/types",
        "t",
        &state,
        &[json!({"typename": "io.statefun.types/long", "long": -7})],
    );
    request["invocation"]["invocations"][0]["caller"] = address("probe/kafka", "c");
    let from = probe.batch(&request).unwrap();
    let values: Vec<Value> = egresses(&from).into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        values,
        [
            json!(-7),
            json!(-7),
            json!(-7.0),
            json!(-7.0),
            json!(true),
            json!("-7")
        ]
    );
    let typenames: Vec<String> = result(&from)["outgoing_egresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["argument"]["typename"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        typenames,
        ["int", "long", "float", "double", "bool", "string"]
            .map(|t| format!("io.statefun.types/{t}"))
    );
    let mutations = mutations(&from);
    let named: Vec<(String, String)> = mutations
        .iter()
        .map(|m| {
            (
                m["state_name"].as_str().unwrap().to_owned(),
                m["state_value"]["typename"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(named.len(), 7);
    assert_eq!(named[6], ("blob".to_owned(), "probe/Blob".to_owned()));
    assert_eq!(mutations[6]["state_value"]["decoded"], "n=-7");
    let sent = &result(&from)["outgoing_messages"][0];
    assert_eq!(sent["target"], address("probe/kafka", "c"));
    assert_eq!(sent["argument"]["typename"], "io.statefun.types/long");
    assert_eq!(sent["argument"]["decoded"], -7);
}

#[test]
fn a_batch_that_sends_past_the_bound_fails() {
    past_the_bound(&probe());
}

fn past_the_bound(probe: &Endpoint) {
    let n = json!({"typename": "io.statefun.types/long", "long": 100});
    let (status, text) = probe
        .batch(&batch("probe/flood", "f", &[], &[n]))
        .unwrap_err();
    assert_eq!(status, 500);
    assert!(text.contains("bound on one response"), "{text}");
    let (status, _, _) = probe.post_to("/statefun", &vec![0u8; 70_000]);
    assert_eq!(status, 413);
}

/// `--isolation process`: each invocation carries its batch's state to a worker process and
/// brings back what it changed and sent.
mod in_workers {
    use super::*;

    fn start(library: &str, extra: &[&str]) -> Endpoint {
        let mut args = vec!["--isolation", "process", "--workers", "2"];
        args.extend_from_slice(extra);
        Endpoint::start(library, &args)
    }

    #[test]
    fn stateful_batches_run_in_worker_processes_as_in_process() {
        let endpoint = start("statefun", &[]);
        in_order(&endpoint);
        missing_state(&endpoint);
        reminder(&endpoint);
        past_the_bound(&start("stateful-probe", &["--max-request-bytes", "65536"]));
    }

    #[test]
    fn an_abort_fails_only_its_batch_and_the_endpoint_keeps_serving() {
        let probe = start("stateful-probe", &[]);
        let five = json!({"typename": "io.statefun.types/int", "int": 5});
        for _ in 0..2 {
            let (status, text) = probe
                .batch(&batch(
                    "probe/aborts",
                    "x",
                    &[("i", Value::Null)],
                    &[string("a")],
                ))
                .unwrap_err();
            assert_eq!(status, 500, "{text}");
            assert!(text.contains("Invoker: Function Crashed"), "{text}");
            // The next batch is served (by the other worker, or the one restarted).
            let from = probe
                .batch(&batch(
                    "probe/reader",
                    "r",
                    &[("i", five.clone())],
                    &[string("a")],
                ))
                .unwrap();
            assert_eq!(egresses(&from), [("probe/read".to_owned(), json!(5))]);
        }
    }
}

#[tokio::test]
async fn a_library_from_before_state_still_loads_and_serves_grpc() {
    let daemon = common::Daemon::start(&common::uri("v1-function", None));
    let mut client = daemon.client().await;
    let reply = client
        .call(tokio_stream::iter(vec![common::msg(
            "echo me",
            &[("Content-Type", "text/plain")],
        )]))
        .await
        .unwrap();
    let mut replies = reply.into_inner();
    let first = replies.message().await.unwrap().unwrap();
    assert_eq!(common::text(&first), "echo me");
    // It has no stateful functions: `invoker statefun` says so and exits.
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .arg("statefun")
        .env("FUNCTION_URI", common::lib("v1-function"))
        .env("STATEFUN_PORT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no stateful functions"), "{stderr}");
}

#[tokio::test]
async fn a_stateful_function_called_over_grpc_says_to_use_invoker_statefun() {
    let daemon = common::Daemon::start(&common::uri("statefun", Some("greeter")));
    let mut client = daemon.client().await;
    let outcome = client
        .call(tokio_stream::iter(vec![common::msg(
            "\n\u{3}Ann",
            &[("Content-Type", "io.statefun.types/string")],
        )]))
        .await;
    let status = match outcome {
        Ok(reply) => reply.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert!(
        status
            .message()
            .contains("serve it with `invoker statefun`"),
        "{status:?}"
    );
}

/// Writes a POST of `body` to /statefun on a kept-alive `stream` and reads its answer: the
/// status and the body.
fn post_kept_alive(stream: &mut TcpStream, body: &[u8]) -> (u16, Vec<u8>) {
    write!(
        stream,
        "POST /statefun HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..split]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if response.len() >= split + 4 + length {
                let status = head[9..12].parse().unwrap();
                return (status, response[split + 4..split + 4 + length].to_vec());
            }
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the connection closed before an answer");
        response.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn sigterm_lets_a_batch_in_flight_finish_refuses_new_ones_and_exits_0() {
    let mut probe = Endpoint::start("stateful-probe", &["--grace-period", "10"]);
    let connect = || {
        let stream = TcpStream::connect(&probe.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    };
    let slow = to_function(&batch(
        "probe/sleepy",
        "s",
        &[],
        &[json!({"typename": "io.statefun.types/long", "long": 1500})],
    ));
    let next = to_function(&batch("probe/kafka", "k", &[], &[string("hi")]));
    // A connection kept alive across the signal, proven open by a first batch.
    let mut kept = connect();
    assert_eq!(post_kept_alive(&mut kept, &next).0, 200);
    let mut in_flight = connect();
    let slow_batch = std::thread::spawn(move || post_kept_alive(&mut in_flight, &slow));
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(probe.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Draining: a new batch is refused, and the listener is closed.
    let (status, text) = post_kept_alive(&mut kept, &next);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&text));
    assert!(
        TcpStream::connect(&probe.addr).is_err(),
        "a draining endpoint still accepts connections"
    );
    // The batch in flight finishes with its answer.
    let (status, body) = slow_batch.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let from = from_function(&body);
    assert_eq!(
        egresses(&from),
        [("probe/slept".to_owned(), json!("slept"))]
    );
    // Then the process exits 0.
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(status) = probe.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "invoker statefun did not exit after the drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}
