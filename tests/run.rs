//! `invoker run`, as a user types it: stdin lines through the function, outputs on stdout.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use common::cli::{bounded, function, invoker, stderr, stdout, with_stdin};
use common::lib;

#[test]
fn run_calls_a_request_reply_function_per_line() {
    let out = with_stdin(
        &["run", "-f", &function("greeter", "hello")],
        &[],
        "Ada\nRiff\nGrace\n",
    );
    assert_eq!(stdout(&out), "Hello Ada\nHello Grace\n");
    assert!(stderr(&out).contains("error condition"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(2), "UNKNOWN: the function failed");

    let out = with_stdin(
        &["run", "-f", lib("rot13").to_str().unwrap()],
        &[],
        "Hello World\n",
    );
    assert_eq!(stdout(&out), "Uryyb Jbeyq\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn run_negotiates_like_the_server() {
    let out = with_stdin(
        &[
            "run",
            "--function",
            &function("greeter", "greet_json"),
            "--content-type",
            "application/json",
            "--accept",
            "application/json",
        ],
        &[],
        "{\"name\":\"Ada\"}\n",
    );
    assert_eq!(stdout(&out), "{\"greeting\":\"Hello Ada\"}\n");
    assert_eq!(out.status.code(), Some(0));

    let out = with_stdin(
        &[
            "run",
            "-f",
            &function("greeter", "double"),
            "--accept",
            "text/html",
        ],
        &[],
        "21\n",
    );
    assert!(stderr(&out).contains("Not Acceptable"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(3), "INVALID_ARGUMENT");

    let out = with_stdin(
        &["run", "--ndjson", "-f", &function("greeter", "greet_json")],
        &[],
        "{\"payload\": {\"name\": \"Ada\"}, \"headers\": {\"Content-Type\": \"application/json\", \"correlationId\": \"7\"}}\n",
    );
    let line: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(line["payload"], "{\"greeting\":\"Hello Ada\"}");
    assert_eq!(line["headers"]["Content-Type"], "application/json");
    assert_eq!(line["headers"]["correlationId"], "7");
}

#[test]
fn run_sends_lines_in_the_functions_input_type() {
    // greet_json takes only JSON (or a form): lines are JSON without --content-type.
    let out = bounded(
        &["run", "-f", &function("greeter", "greet_json")],
        "{\"name\":\"Ada\"}\n{\"name\":\"Bob\"}\n",
    );
    assert_eq!(
        stdout(&out),
        "{\"greeting\":\"Hello Ada\"}\n{\"greeting\":\"Hello Bob\"}\n"
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // --content-type still wins.
    let out = bounded(
        &[
            "run",
            "-f",
            &function("greeter", "greet_json"),
            "--content-type",
            "application/x-www-form-urlencoded",
        ],
        "name=Ada\n",
    );
    assert_eq!(stdout(&out), "{\"greeting\":\"Hello Ada\"}\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn run_ndjson_reports_a_bad_line_and_goes_on() {
    let input = [
        r#"{"payload": "Ada"}"#,
        "not json",
        r#"{"payload": "Grace"}"#,
        r#"["Ada"]"#,
        r#"{"payload": "Edsger", "header": {}}"#,
        r#"{"payload": "Barbara"}"#,
    ]
    .join("\n");
    let skipped = [
        "invoker: line 2 skipped: not JSON: expected ident at column 2",
        "invoker: line 4 skipped: expected a JSON object with \"payload\" and \"headers\"",
        "invoker: line 5 skipped: unknown field \"header\" (expected \"payload\" and \"headers\")",
    ];
    // One call per line: the good lines are answered.
    let out = with_stdin(
        &["run", "--ndjson", "-f", &function("greeter", "hello")],
        &[],
        &input,
    );
    let payloads: Vec<String> = stdout(&out)
        .lines()
        .map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            line["payload"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(payloads, ["Hello Ada", "Hello Grace", "Hello Barbara"]);
    assert_eq!(stderr(&out).lines().collect::<Vec<_>>(), skipped);
    assert_eq!(out.status.code(), Some(3), "INVALID_ARGUMENT, at the end");

    // One call over the lines: the stream goes on past a bad line.
    let input = input
        .replace("Ada", "2")
        .replace("Grace", "4")
        .replace("Edsger", "0")
        .replace("Barbara", "9");
    let out = with_stdin(
        &[
            "run",
            "--ndjson",
            "-f",
            &function("streams", "running_average"),
        ],
        &[],
        &input,
    );
    let payloads: Vec<String> = stdout(&out)
        .lines()
        .map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            line["payload"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(payloads, ["2", "3", "5"]);
    assert_eq!(stderr(&out).lines().collect::<Vec<_>>(), skipped);
    assert_eq!(out.status.code(), Some(3), "INVALID_ARGUMENT, at the end");

    // A failed call before a bad line keeps its own code.
    let out = with_stdin(
        &["run", "--ndjson", "-f", &function("greeter", "hello")],
        &[],
        "{\"payload\": \"Riff\"}\nnot json\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn run_streams_outputs_as_inputs_arrive() {
    let mut child = invoker()
        .args(["run", "-f", &function("streams", "running_average")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap()).lines();
    // Each average is printed before the next number is even written.
    for (number, average) in [("2", "2"), ("4", "3"), ("9", "5")] {
        writeln!(input, "{number}").unwrap();
        input.flush().unwrap();
        let line = output.next().expect("an output line").unwrap();
        assert_eq!(line, average);
    }
    drop(input);
    assert!(output.next().is_none(), "nothing after the input ended");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn run_ends_a_stream_at_its_error() {
    let out = with_stdin(
        &["run", "-f", &function("streams", "rle")],
        &[],
        "a\na\nb\nc\nc\nc\n",
    );
    assert_eq!(
        stdout(&out),
        "{\"word\":\"a\",\"count\":2}\n{\"word\":\"b\",\"count\":1}\n"
    );
    assert!(
        stderr(&out).contains("Too many occurrences of c"),
        "{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_a_supplier_until_stopped() {
    let mut child = invoker()
        .args(["run", "-f", &function("streams", "ticker")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap()).lines();
    let ticks: Vec<String> = (0..3).map(|_| output.next().unwrap().unwrap()).collect();
    assert_eq!(ticks, ["0", "1", "2"]);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn run_a_finite_supplier_until_it_ends() {
    let out = bounded(&["run", "-f", &function("probe", "countdown")], "");
    assert_eq!(stdout(&out), "3\n2\n1\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn run_reports_a_bad_function_clearly() {
    let out = with_stdin(&["run", "-f", "/nonexistent/libnope.so"], &[], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/libnope.so"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// A StateFun library: the in-memory StateFun (SPEC §10, "Embedded default")

/// `invoker run` on libstatefun.so with `args`, stdin `input`: (egress lines, stderr, code).
fn statefun_run(args: &[&str], input: &str) -> (Vec<serde_json::Value>, String, Option<i32>) {
    let library = lib("statefun");
    let mut all = vec!["run", "-f", library.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = bounded(&all, input);
    let lines = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (lines, stderr(&out), out.status.code())
}

/// The values of egress lines to example/greets.
fn greets(lines: &[serde_json::Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| {
            assert_eq!(l["egress"], "example/greets", "{l}");
            assert_eq!(l["type"], "io.statefun.types/string", "{l}");
            l["value"].as_str().unwrap()
        })
        .collect()
}

#[test]
fn run_statefun_delivers_messages_between_functions() {
    let input = [
        r#"{"to": "example/relay/r", "value": "Ada"}"#,
        r#"{"to": "example/greeter/Ada", "value": "Ada"}"#,
        "",
        r#"{"to": "example/greeter/Bob", "value": "Bob", "type": "io.statefun.types/string"}"#,
        r#"{"to": "example/relay/r", "value": "Ada"}"#,
    ]
    .join("\n");
    let (lines, stderr, code) = statefun_run(&[], &input);
    // relay → greeter Ada: the greeter's state is per address and kept for the run.
    assert_eq!(
        greets(&lines),
        [
            "Hello Ada, visit 1",
            "Hello Ada, visit 2",
            "Hello Bob, visit 1",
            "Hello Ada, visit 3"
        ]
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn run_statefun_delivers_a_delayed_message_after_its_scaled_delay() {
    // The reminder's 60 s, scaled to 60 ms; the run waits for it after the input ends.
    let started = std::time::Instant::now();
    let (lines, stderr, code) = statefun_run(
        &["--time-scale", "0.001"],
        r#"{"to": "example/reminder/r1", "value": "set"}"#,
    );
    assert_eq!(greets(&lines), ["ping for r1"]);
    assert!(started.elapsed() >= std::time::Duration::from_millis(60));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn run_statefun_never_delivers_a_cancelled_message() {
    // Scaled to 3 s: cancelled, nothing is pending, and the run ends without waiting.
    let started = std::time::Instant::now();
    let input = [
        r#"{"to": "example/reminder/r1", "value": "set"}"#,
        r#"{"to": "example/reminder/r2", "value": "set"}"#,
        r#"{"to": "example/reminder/r1", "value": "cancel"}"#,
        r#"{"to": "example/reminder/r2", "value": "cancel"}"#,
    ]
    .join("\n");
    let (lines, stderr, code) = statefun_run(&["--time-scale", "0.05"], &input);
    assert!(lines.is_empty(), "{lines:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2500),
        "the run waited for a cancelled message"
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn run_statefun_expires_state_after_invoke() {
    // The session's 300 s after its last invocation, scaled to 1.5 s.
    let library = lib("statefun");
    let mut child = invoker()
        .args([
            "run",
            "-f",
            library.to_str().unwrap(),
            "--time-scale",
            "0.005",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut say = |s: &str| {
        writeln!(input, r#"{{"to": "example/session/s", "value": "{s}"}}"#).unwrap();
        input.flush().unwrap();
        let line: serde_json::Value =
            serde_json::from_str(&output.next().expect("an egress line").unwrap()).unwrap();
        line["value"].as_str().unwrap().to_owned()
    };
    assert_eq!(say("one"), "previous: none");
    assert_eq!(say("two"), "previous: one");
    std::thread::sleep(std::time::Duration::from_millis(2000));
    assert_eq!(say("three"), "previous: none", "expired 1.5 s after 'two'");
    assert_eq!(say("forget"), "forgotten");
    assert_eq!(say("four"), "previous: none");
    drop(input);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn run_statefun_reports_a_failed_invocation_and_goes_on() {
    let input = [
        r#"{"to": "example/profile/p", "value": {"name": "Al", "age": -1}}"#,
        r#"{"to": "example/profile/p", "value": {"name": "Al", "age": 3}}"#,
        r#"{"to": "example/nope/x", "value": "a"}"#,
        r#"{"to": "example/greeter/x", "value": 7}"#,
        r#"{"to": "example/greeter/Ada", "value": "Ada"}"#,
    ]
    .join("\n");
    let (lines, stderr, code) = statefun_run(&[], &input);
    assert_eq!(greets(&lines), ["Al is 3", "Hello Ada, visit 1"]);
    let stderr: Vec<&str> = stderr.lines().collect();
    assert_eq!(stderr.len(), 3, "{stderr:?}");
    assert_eq!(
        stderr[0],
        "invoker: line 1: example/profile/p: Unknown: negative age"
    );
    assert!(
        stderr[1].starts_with("invoker: line 3 skipped: \"example/nope/x\" is not"),
        "{stderr:?}"
    );
    assert!(
        stderr[2].starts_with("invoker: line 4 skipped: say which typename"),
        "{stderr:?}"
    );
    assert_eq!(code, Some(2), "the first failure's code: UNKNOWN");
}

#[test]
fn run_statefun_prints_kafka_records() {
    let library = lib("stateful-probe");
    let out = bounded(
        &["run", "-f", library.to_str().unwrap()],
        r#"{"to": "probe/kafka/k1", "value": "hi"}"#,
    );
    let line: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(line["egress"], "probe/kafka");
    assert_eq!(line["topic"], "greetings");
    assert_eq!(line["key"], "k1");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
