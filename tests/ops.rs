//! Production operation through the real binary: status, /metrics, deadlines, hot reload
//! (admin socket and SIGHUP), user config, lifecycle hooks, JSON logs.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Daemon, call, lib, msg, status, uri, wait_for_calls_in_flight, wait_for_log};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn scratch(name: &str) -> common::Scratch {
    common::scratch("ops", name)
}

/// Runs `invoker ARGS`; returns (exit code, stdout, stderr).
fn invoker(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(args)
        .output()
        .expect("run invoker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn signal(daemon: &Daemon, signal: Signal) {
    kill(Pid::from_raw(daemon.child.id() as i32), signal).unwrap();
}

/// GET http://addr/metrics over a plain HTTP/1.1 connection; returns (status line, body).
fn get_metrics(addr: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// Checks Prometheus/OpenMetrics text line by line; returns each sample's name (with labels)
/// and value.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    assert!(text.ends_with("# EOF\n"), "no # EOF terminator:\n{text}");
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split_whitespace().next().unwrap_or_default();
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "bad comment line: {line}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in: {line}"
        );
        if name.contains('{') {
            assert!(name.ends_with('}'), "unterminated labels in: {line}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        samples.push((name.to_owned(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], name: &str) -> Option<f64> {
    samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

#[tokio::test]
async fn status_counts_what_the_test_sent() {
    let dir = scratch("status");
    let socket = dir.join("admin.sock");
    let daemon = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    let mut client = daemon.client().await;
    for name in ["Ada", "Grace", "Barbara"] {
        let outcome = call(&mut client, vec![msg(name, &[])]).await;
        assert_eq!(outcome.code(), tonic::Code::Ok);
    }
    let failed = call(&mut client, vec![msg("Riff", &[])]).await;
    assert_eq!(failed.code(), tonic::Code::Unknown);

    let status = status(&socket);
    assert_eq!(status["state"], "SERVING");
    assert_eq!(status["function"], "hello");
    assert_eq!(status["generation"], 1);
    assert_eq!(status["messages_received"], 4);
    assert_eq!(status["messages_sent"], 3);
    assert_eq!(status["user_errors"], 1);
    assert_eq!(status["panics"], 0);
    assert_eq!(status["calls"], 4);
    assert_eq!(status["calls_in_flight"], 0);
    assert!(
        status["average_call_millis"].as_f64().unwrap() > 0.0,
        "{status}"
    );
    let errors = status["recent_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{status}");
    assert_eq!(errors[0]["message"], "error condition");
    assert!(errors[0]["unix_millis"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(
        status["library"]
            .as_str()
            .unwrap()
            .ends_with("libgreeter.so")
    );
    assert_eq!(status["library_version"], "greeter 0.1.0");
}

#[tokio::test]
async fn custom_metric_names_are_capped_at_a_thousand() {
    let dir = scratch("metric-cap");
    let socket = dir.join("admin.sock");
    let daemon = Daemon::start_with(
        &uri("probe", Some("many_metrics")),
        &[
            ("METRICS_PORT", "0"),
            ("ADMIN_SOCKET", socket.to_str().unwrap()),
        ],
    );
    let mut client = daemon.client().await;
    // 1 005 names, then the first three again, then 1 005 again.
    for n in ["1005", "3", "1005"] {
        let outcome = call(&mut client, vec![msg(n, &[])]).await;
        assert_eq!(outcome.code(), tonic::Code::Ok, "{:?}", outcome.status);
    }
    let addr = daemon.metrics.clone().unwrap();
    let (_, body) = tokio::task::spawn_blocking(move || get_metrics(&addr))
        .await
        .unwrap();
    let samples = parse_prometheus(&body);
    let custom: Vec<_> = samples
        .iter()
        .filter(|(name, _)| name.starts_with("invoker_function_metric_total{"))
        .collect();
    assert_eq!(custom.len(), 1000, "{body}");
    let value = |i: usize| {
        sample(
            &samples,
            &format!("invoker_function_metric_total{{name=\"probe.m{i}\"}}"),
        )
    };
    assert_eq!(value(0), Some(3.0), "a kept name goes on counting");
    assert_eq!(value(999), Some(2.0));
    assert_eq!(value(1000), None, "the 1 001st name is dropped");
    let status = tokio::task::spawn_blocking(move || status(&socket))
        .await
        .unwrap();
    let names = status["custom_metrics"].as_object().unwrap();
    assert_eq!(names.len(), 1000, "{status}");
    assert_eq!(names["probe.m2"], 3.0, "{status}");
    assert!(!names.contains_key("probe.m1004"), "{status}");
    // One warning, however many names were dropped.
    let warned = "the function recorded more than 1000 custom metric names: metrics with new names are dropped";
    wait_for_log(&daemon, warned).await;
    assert_eq!(
        daemon.stderr().matches(warned).count(),
        1,
        "{}",
        daemon.stderr()
    );
    assert!(
        daemon.stderr().contains("probe.m1000"),
        "{}",
        daemon.stderr()
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let daemon = Daemon::start_with(&uri("shapes", Some("panics")), &[("METRICS_PORT", "0")]);
    let mut client = daemon.client().await;
    for text in ["one", "two"] {
        let outcome = call(&mut client, vec![msg(text, &[])]).await;
        assert_eq!(outcome.code(), tonic::Code::Internal);
    }
    let addr = daemon
        .metrics
        .clone()
        .expect("the daemon printed its metrics address");
    let (status_line, body) = tokio::task::spawn_blocking(move || get_metrics(&addr))
        .await
        .unwrap();
    assert!(status_line.contains(" 200 "), "{status_line}");
    let samples = parse_prometheus(&body);
    assert_eq!(
        sample(&samples, "invoker_messages_received_total"),
        Some(2.0)
    );
    assert_eq!(sample(&samples, "invoker_function_panics_total"), Some(2.0));
    assert_eq!(sample(&samples, "invoker_messages_sent_total"), Some(0.0));
    assert_eq!(sample(&samples, "invoker_calls_total"), Some(2.0));
    assert_eq!(
        sample(&samples, "invoker_call_duration_seconds_count"),
        Some(2.0)
    );
    assert_eq!(sample(&samples, "invoker_function_generation"), Some(1.0));
    // And the reference parser of the format (Python's prometheus_client) reads it all.
    let parsed = parse_openmetrics_in_python(&body);
    assert_eq!(parsed["invoker_messages_received_total"], 2.0, "{parsed}");
    assert_eq!(parsed["invoker_function_panics_total"], 2.0, "{parsed}");
    assert_eq!(
        parsed["invoker_call_duration_seconds_count"], 2.0,
        "{parsed}"
    );
}

/// Parses OpenMetrics text with prometheus_client's parser (in the virtualenv scripts/test
/// sets up); returns each sample's value by name (labelled samples keep their first value).
fn parse_openmetrics_in_python(body: &str) -> serde_json::Value {
    let python = common::tools::python(&["prometheus_client"]);
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.setdefault(s.name, s.value)
print(json.dumps(samples))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run scripts/test, which sets up .venv",
                python.display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client cannot parse /metrics:\n{}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn a_deadline_cancels_a_slow_call() {
    let daemon = Daemon::start(&uri("streams", Some("ticker")));
    let mut client = daemon.client().await;
    let mut request = tonic::Request::new(futures_util::stream::pending());
    request.set_timeout(Duration::from_millis(300));
    let mut replies = client
        .call(request)
        .await
        .expect("the call opens")
        .into_inner();
    let mut ticks = 0;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match replies.message().await {
                Ok(Some(_)) => ticks += 1,
                Ok(None) => panic!("the ticker ended without a status after {ticks} ticks"),
                Err(status) => break status,
            }
        }
    });
    let status = ended.await.expect("the deadline ended the call");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().starts_with("Invoker:"), "{status:?}");
    assert!(ticks > 0, "no tick before the deadline");
    // The server goes on serving.
    let mut request = tonic::Request::new(futures_util::stream::pending());
    request.set_timeout(Duration::from_millis(50));
    let replies = client.call(request).await.expect("the call opens");
    let mut replies = replies.into_inner();
    while let Ok(Some(_)) = replies.message().await {}
}

#[tokio::test]
async fn reload_under_load_fails_no_call() {
    let dir = scratch("reload");
    let socket = dir.join("admin.sock");
    let daemon = Daemon::start_with(
        &uri("rot13", None),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    let channel = daemon.channel().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (old, new) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut client =
            invoker::proto::function::message_function_client::MessageFunctionClient::new(
                channel.clone(),
            );
        let (stop, old, new) = (stop.clone(), old.clone(), new.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let outcome = call(&mut client, vec![msg("World", &[])]).await;
                assert_eq!(outcome.code(), tonic::Code::Ok, "{:?}", outcome.status);
                match outcome.texts().as_slice() {
                    [reply] if reply == "Jbeyq" => old.fetch_add(1, Ordering::Relaxed),
                    [reply] if reply == "Hello World" => new.fetch_add(1, Ordering::Relaxed),
                    other => panic!("a reply from neither version: {other:?}"),
                };
            }
        }));
    }
    while old.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let greeter = lib("greeter");
    let (socket_arg, greeter_arg) = (
        socket.to_str().unwrap().to_owned(),
        greeter.to_str().unwrap().to_owned(),
    );
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        invoker(&[
            "reload",
            "--admin-socket",
            &socket_arg,
            "--handler",
            "hello",
            &greeter_arg,
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "reload failed: {err}");
    assert!(out.contains("serving 'hello'"), "{out}");
    assert!(out.contains("generation 2"), "{out}");
    let after = new.load(Ordering::Relaxed);
    while new.load(Ordering::Relaxed) < after + 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("every call of this client succeeded");
    }
    let status = tokio::task::spawn_blocking(move || status(&socket))
        .await
        .unwrap();
    assert_eq!(status["function"], "hello");
    assert_eq!(status["generation"], 2);
    assert_eq!(status["user_errors"], 0);
}

#[tokio::test]
async fn a_failed_reload_keeps_the_old_function_serving() {
    let dir = scratch("failed-reload");
    let socket = dir.join("admin.sock");
    let daemon = Daemon::start_with(
        &uri("rot13", None),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    let not_a_library = dir.join("libnot.so");
    std::fs::write(&not_a_library, "not a library").unwrap();
    let socket_arg = socket.to_str().unwrap().to_owned();
    let bad = not_a_library.to_str().unwrap().to_owned();
    let greeter = lib("greeter").to_str().unwrap().to_owned();
    let (bad_library, unknown_handler) = tokio::task::spawn_blocking(move || {
        (
            invoker(&["reload", "--admin-socket", &socket_arg, &bad]),
            invoker(&[
                "reload",
                "--admin-socket",
                &socket_arg,
                "--handler",
                "nope",
                &greeter,
            ]),
        )
    })
    .await
    .unwrap();
    assert_eq!(bad_library.0, 9, "FAILED_PRECONDITION: {bad_library:?}");
    assert!(
        bad_library.2.contains("the old function keeps serving"),
        "{bad_library:?}"
    );
    assert!(bad_library.2.contains("libnot.so"), "{bad_library:?}");
    assert_eq!(
        unknown_handler.0, 3,
        "INVALID_ARGUMENT: {unknown_handler:?}"
    );
    assert!(
        unknown_handler.2.contains("double, greet_json, hello"),
        "the error lists the handlers: {unknown_handler:?}"
    );

    let mut client = daemon.client().await;
    let outcome = call(&mut client, vec![msg("Hello World", &[])]).await;
    assert_eq!(outcome.texts(), ["Uryyb Jbeyq"]);
    let status = tokio::task::spawn_blocking(move || status(&socket))
        .await
        .unwrap();
    assert_eq!(status["generation"], 1);
}

#[tokio::test]
async fn a_failed_reload_exits_with_the_code_of_whose_fault_it_is() {
    let dir = scratch("reload-codes");
    let socket = dir.join("admin.sock");
    let _daemon = Daemon::start_with(
        &uri("rot13", None),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    let socket_arg = socket.to_str().unwrap().to_owned();
    let missing = dir.join("libmissing.so").to_str().unwrap().to_owned();
    let greeter = lib("greeter").to_str().unwrap().to_owned();
    let (missing, no_handler) = tokio::task::spawn_blocking(move || {
        (
            invoker(&["reload", "--admin-socket", &socket_arg, &missing]),
            invoker(&["reload", "--admin-socket", &socket_arg, &greeter]),
        )
    })
    .await
    .unwrap();
    // NOT_FOUND, and the advice is not about FUNCTION_URI, which the reload did not use.
    assert_eq!(missing.0, 5, "NOT_FOUND: {missing:?}");
    assert!(
        missing.2.contains("libmissing.so does not exist"),
        "{missing:?}"
    );
    assert!(!missing.2.contains("FUNCTION_URI"), "{missing:?}");
    // INVALID_ARGUMENT: the request must name one of the functions.
    assert_eq!(no_handler.0, 3, "INVALID_ARGUMENT: {no_handler:?}");
    assert!(
        no_handler.2.contains(
            "exports several functions (double, greet_json, hello): choose one with --handler NAME"
        ),
        "{no_handler:?}"
    );
}

#[tokio::test]
async fn a_reload_that_cannot_copy_the_library_is_internal() {
    let dir = scratch("reload-copy");
    let socket = dir.join("admin.sock");
    // Files may grow to about twice the served library (SIGXFSZ ignored, so a write past that
    // fails with EFBIG instead of killing the daemon): a larger library cannot be copied into
    // a memory file, and the fallback, a private directory of TMPDIR, cannot be made either.
    let size = std::fs::metadata(lib("rot13")).unwrap().len();
    let blocks = 2 * size / 512 + 1;
    let no_tmp = dir.join("no-such-dir");
    let _daemon = Daemon::start_in_shell(
        &uri("rot13", None),
        &[
            ("ADMIN_SOCKET", socket.to_str().unwrap()),
            ("TMPDIR", no_tmp.to_str().unwrap()),
        ],
        &format!("ulimit -f {blocks}\ntrap '' XFSZ"),
    );
    let big = dir.join("libbig.so");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(16 * size)
        .unwrap();
    let socket_arg = socket.to_str().unwrap().to_owned();
    let big_arg = big.to_str().unwrap().to_owned();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        invoker(&["reload", "--admin-socket", &socket_arg, &big_arg])
    })
    .await
    .unwrap();
    assert_eq!(code, 13, "INTERNAL: {err}");
    assert!(err.contains("the old function keeps serving"), "{err}");
    assert!(
        err.contains("cannot read function library") && err.contains("libbig.so"),
        "{err}"
    );
    let status = tokio::task::spawn_blocking(move || status(&socket))
        .await
        .unwrap();
    assert_eq!(status["generation"], 1);
}

#[tokio::test]
async fn sighup_reloads_the_file_function_uri_names() {
    let dir = scratch("sighup");
    let function = dir.join("libfunction.so");
    std::fs::copy(lib("rot13"), &function).unwrap();
    let socket = dir.join("admin.sock");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let daemon = Daemon::start_with(
        function.to_str().unwrap(),
        &[
            ("ADMIN_SOCKET", socket.to_str().unwrap()),
            ("TMPDIR", tmp.to_str().unwrap()),
        ],
    );
    let mut client = daemon.client().await;
    let outcome = call(&mut client, vec![msg("World", &[])]).await;
    assert_eq!(outcome.texts(), ["Jbeyq"]);

    // A library without `encode` and with several functions: the reload fails, and says so.
    std::fs::copy(lib("greeter"), &function).unwrap();
    signal(&daemon, Signal::SIGHUP);
    let mut waited = 0;
    while !daemon.stderr().contains("reload failed") {
        assert!(waited < 500, "no reload error logged:\n{}", daemon.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert!(
        daemon.stderr().contains("the old function keeps serving"),
        "{}",
        daemon.stderr()
    );
    let outcome = call(&mut client, vec![msg("World", &[])]).await;
    assert_eq!(outcome.texts(), ["Jbeyq"], "the old function still serves");

    // Another version of the same function: new calls get it.
    std::fs::copy(lib("version2"), &function).unwrap();
    signal(&daemon, Signal::SIGHUP);
    let mut waited = 0;
    loop {
        let outcome = call(&mut client, vec![msg("World", &[])]).await;
        if outcome.texts() == ["v2:World"] {
            break;
        }
        assert_eq!(outcome.texts(), ["Jbeyq"]);
        assert!(waited < 500, "SIGHUP did not reload:\n{}", daemon.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    let status = tokio::task::spawn_blocking(move || status(&socket))
        .await
        .unwrap();
    assert_eq!(status["generation"], 2);
    assert_eq!(status["function"], "encode");
    assert_eq!(status["library_version"], "version2 2.0.0");
    // The copies made for each load, failed or not, are gone, and their directory too.
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

#[tokio::test]
async fn json_logs_tag_what_a_function_logs_with_its_call() {
    let daemon = Daemon::start_with(
        &uri("shapes", Some("record")),
        &[("LOG_FORMAT", "json"), ("RUST_LOG", "info")],
    );
    let mut client = daemon.client().await;
    let outcome = call(&mut client, vec![msg("a fine day", &[])]).await;
    assert_eq!(outcome.code(), tonic::Code::Ok);
    let mut waited = 0;
    while !daemon.stderr().contains("recorded: a fine day") {
        assert!(
            waited < 500,
            "the function's log is missing:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    let logs = daemon.stderr();
    let mut lines = logs.lines().map(|line| {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"))
    });
    let recorded = lines
        .find(|l| l["fields"]["message"] == "recorded: a fine day")
        .expect("the function's log line");
    assert_eq!(recorded["level"], "INFO");
    assert_eq!(recorded["fields"]["function"], "record");
    let call_id = recorded["fields"]["call"].as_u64().expect("the call id");
    assert_eq!(recorded["span"]["name"], "call", "{recorded}");
    assert_eq!(recorded["span"]["id"].as_u64(), Some(call_id), "{recorded}");
}

#[tokio::test]
async fn the_context_example_reads_each_field() {
    let dir = scratch("context");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"greeting": "from the file", "farewell": "from the file too"}"#,
    )
    .unwrap();
    let daemon = Daemon::start_with(
        &uri("context", Some("describe")),
        &[
            ("FUNCTION_CONFIG_FILE", config.to_str().unwrap()),
            ("FUNCTION_CONFIG", r#"{"greeting": "Hi"}"#),
            ("HOSTNAME", "pod-7"),
            ("METRICS_PORT", "0"),
        ],
    );
    let mut client = daemon.client().await;
    let mut request = tonic::Request::new(futures_util::stream::iter([msg(
        "Ada",
        &[("correlationId", "c-42"), ("x-team", "blue")],
    )]));
    request.set_timeout(Duration::from_secs(60));
    let mut replies = client.call(request).await.unwrap().into_inner();
    let reply = replies.message().await.unwrap().expect("a reply");
    assert_eq!(
        common::header(&reply, "Content-Type"),
        Some("application/json")
    );
    assert_eq!(common::header(&reply, "correlationId"), Some("c-42"));
    let described: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(described["function"], "describe");
    assert!(
        described["instance"]
            .as_str()
            .unwrap()
            .starts_with("pod-7-"),
        "{described}"
    );
    assert_eq!(described["correlation_id"], "c-42");
    assert_eq!(described["headers"]["x-team"], "blue");
    assert_eq!(
        described["greeting"], "Hi",
        "FUNCTION_CONFIG overrides the file"
    );
    assert_eq!(described["farewell"], "from the file too", "{described}");
    let deadline = described["deadline_ms"].as_u64().expect("a deadline");
    assert!(deadline > 50_000 && deadline <= 60_000, "{described}");
    assert_eq!(described["cancelled"], false);
    assert_eq!(described["input"], "Ada");
    while replies.message().await.unwrap().is_some() {}

    // What it logged carries the function's name; what it recorded is a metric.
    let mut waited = 0;
    while !daemon.stderr().contains("describing Ada") {
        assert!(waited < 500, "no log:\n{}", daemon.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    let addr = daemon.metrics.clone().unwrap();
    let (_, body) = tokio::task::spawn_blocking(move || get_metrics(&addr))
        .await
        .unwrap();
    let samples = parse_prometheus(&body);
    assert_eq!(
        sample(
            &samples,
            "invoker_function_metric_total{name=\"described\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        body.contains("# TYPE invoker_function_metric counter\n"),
        "a running sum is a counter: {body}"
    );
}

#[tokio::test]
async fn a_failing_init_hook_fails_start_up_with_its_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["serve", "--port", "0"])
        .env("FUNCTION_URI", uri("context", Some("describe")))
        .env("FUNCTION_CONFIG", r#"{"fail_init": "no database"}"#)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("init hook") && stderr.contains("init failed: no database"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "the port opened although init failed"
    );
}

#[tokio::test]
async fn the_shutdown_hook_runs_after_the_drain() {
    shutdown_hook_runs_after_the_drain("shutdown", &[]).await;
}

/// In process mode each worker runs the hook, after the serving process's drain (the channels
/// run on the serving runtime, which is gone by then).
#[tokio::test]
async fn the_shutdown_hook_runs_after_the_drain_in_worker_processes() {
    shutdown_hook_runs_after_the_drain(
        "shutdown-workers",
        &[("ISOLATION", "process"), ("WORKERS", "2")],
    )
    .await;
}

async fn shutdown_hook_runs_after_the_drain(name: &str, env: &[(&str, &str)]) {
    let dir = scratch(name);
    let marker = dir.join("shutdown.txt");
    let socket = dir.join("admin.sock");
    let config = serde_json::json!({ "shutdown_file": marker }).to_string();
    let mut vars = vec![
        ("FUNCTION_CONFIG", config.as_str()),
        ("ADMIN_SOCKET", socket.to_str().unwrap()),
    ];
    vars.extend_from_slice(env);
    let mut daemon = Daemon::start_with(&uri("context", Some("until_cancelled")), &vars);
    let mut client = daemon.client().await;
    let in_flight = tokio::spawn(async move { call(&mut client, vec![msg("1500", &[])]).await });
    wait_for_calls_in_flight(&socket, 1).await;
    signal(&daemon, Signal::SIGTERM);
    // The call drains normally; the hook has not run while it was in flight.
    let outcome = in_flight.await.unwrap();
    assert_eq!(outcome.code(), tonic::Code::Ok, "{outcome:?}");
    assert_eq!(outcome.texts(), ["was not cancelled"]);
    assert!(!marker.exists(), "the shutdown hook ran before the drain");
    let code = daemon.exit_code().await;
    assert_eq!(code, Some(0), "{}", daemon.stderr());
    assert_eq!(
        std::fs::read_to_string(&marker).expect("the shutdown hook wrote its file"),
        "shutdown hook ran\n"
    );
}

#[tokio::test]
async fn a_call_blocked_in_the_function_does_not_keep_the_invoker_alive_after_the_grace() {
    let dir = scratch("blocked");
    let socket = dir.join("admin.sock");
    let mut daemon = Daemon::start_with(
        &uri("probe", Some("sleep_ms")),
        &[
            ("GRACE_PERIOD", "0.5"),
            ("ADMIN_SOCKET", socket.to_str().unwrap()),
        ],
    );
    let mut client = daemon.client().await;
    // Ten minutes: far longer than the test waits for the invoker to exit.
    let in_flight = tokio::spawn(async move { call(&mut client, vec![msg("600000", &[])]).await });
    wait_for_calls_in_flight(&socket, 1).await;
    signal(&daemon, Signal::SIGTERM);
    let outcome = in_flight.await.unwrap();
    assert_eq!(outcome.code(), tonic::Code::Unavailable, "{outcome:?}");
    assert!(
        outcome.status.message().starts_with("Invoker:"),
        "{outcome:?}"
    );
    assert_eq!(daemon.exit_code().await, Some(0), "{}", daemon.stderr());
}

#[tokio::test]
async fn a_deadline_cancels_a_running_request_reply_function() {
    let daemon = Daemon::start(&uri("context", Some("until_cancelled")));
    let mut client = daemon.client().await;
    let mut request = tonic::Request::new(futures_util::stream::iter([msg("600000", &[])]));
    request.set_timeout(Duration::from_millis(300));
    let replies = client.call(request).await;
    let status = match replies {
        Err(status) => status,
        Ok(replies) => {
            let mut replies = replies.into_inner();
            let ended = tokio::time::timeout(common::HANG, replies.message()).await;
            ended
                .expect("the deadline ended the call")
                .expect_err("the call ends with a status")
        }
    };
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    // The function, still running, sees its call cancelled (and says so in the log).
    wait_for_log(&daemon, "until_cancelled: saw the call cancelled").await;
}

#[tokio::test]
async fn a_deadline_drops_a_waiting_function() {
    let daemon = Daemon::start(&uri("context", Some("slow")));
    let mut client = daemon.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(msg("first", &[])).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.set_timeout(Duration::from_millis(300));
    let mut replies = client.call(request).await.unwrap().into_inner();
    let first = replies.message().await.unwrap().expect("the echo");
    assert_eq!(common::text(&first), "first");
    let ended = tokio::time::timeout(Duration::from_secs(30), replies.message())
        .await
        .expect("the deadline ended the call");
    let status = ended.expect_err("the call ends with a status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    // The function's stream was released at the deadline, with the caller still connected.
    wait_for_log(&daemon, "slow: stream released").await;
    drop(tx);
}

#[tokio::test]
async fn nothing_is_logged_per_message_at_info() {
    let daemon = Daemon::start_with(
        &uri("streams", Some("running_average")),
        &[("RUST_LOG", "info")],
    );
    wait_for_log(&daemon, "serving").await;
    let before = daemon.stderr();
    let mut client = daemon.client().await;
    let numbers: Vec<_> = (0..500).map(|i| msg(&i.to_string(), &[])).collect();
    let outcome = call(&mut client, numbers).await;
    assert_eq!(outcome.code(), tonic::Code::Ok, "{outcome:?}");
    assert_eq!(outcome.messages.len(), 500);
    let outcome = call(&mut client, vec![msg("x", &[])]).await;
    assert_eq!(outcome.code(), tonic::Code::InvalidArgument, "{outcome:?}");
    // The stderr reader runs on its own thread: give it what the daemon may have written.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        daemon.stderr(),
        before,
        "the daemon logged while serving 501 messages"
    );
}

#[tokio::test]
async fn a_call_in_flight_across_a_reload_finishes_on_the_old_function() {
    let dir = scratch("reload-in-flight");
    let socket = dir.join("admin.sock");
    let daemon = Daemon::start_with(
        &uri("streams", Some("running_average")),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    let mut client = daemon.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut old = client
        .call(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(msg("2", &[])).await.unwrap();
    assert_eq!(common::text(&old.message().await.unwrap().unwrap()), "2");

    let socket_arg = socket.to_str().unwrap().to_owned();
    let rot13 = lib("rot13").to_str().unwrap().to_owned();
    let reloaded = tokio::task::spawn_blocking(move || {
        invoker(&["reload", "--admin-socket", &socket_arg, &rot13])
    })
    .await
    .unwrap();
    assert_eq!(reloaded.0, 0, "{reloaded:?}");
    // New calls get the new function...
    let outcome = call(&mut client, vec![msg("World", &[])]).await;
    assert_eq!(outcome.texts(), ["Jbeyq"]);
    // ...while the call in flight goes on with the old one, to its end.
    tx.send(msg("4", &[])).await.unwrap();
    assert_eq!(common::text(&old.message().await.unwrap().unwrap()), "3");
    drop(tx);
    let end = tokio::time::timeout(common::HANG, old.message())
        .await
        .expect("the old call ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
}
