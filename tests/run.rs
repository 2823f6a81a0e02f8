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
