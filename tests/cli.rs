//! Start-up errors of `invoker serve`: one clear line and a non-zero exit, never a panic.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// `invoker serve` with `FUNCTION_URI=uri`, which must refuse to start: its exit code and the
/// last line on stderr. An invoker that serves instead is stopped and fails the test.
fn serve(uri: &str) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["serve", "--port", "0"])
        .env("FUNCTION_URI", uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    if !first.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{uri} is served: {first}");
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), last)
}

#[test]
fn a_scheme_other_than_file() {
    let (code, line) = serve("http://example.com/libgreeter.so");
    assert_eq!(code, Some(1));
    assert_eq!(
        line,
        "invoker: FUNCTION_URI 'http://example.com/libgreeter.so' has scheme 'http'; only file:// URIs and plain paths are supported"
    );
}

#[test]
fn a_handler_given_twice_or_a_fragment_is_refused() {
    let greeter = common::uri("greeter", Some("hello"));
    let (code, line) = serve(&format!("{greeter}&handler=double"));
    assert_eq!(code, Some(1));
    assert_eq!(
        line,
        format!(
            "invoker: FUNCTION_URI '{greeter}&handler=double' names the handler more than once; give ?handler=name once"
        )
    );
    for uri in [format!("{greeter}#double"), format!("{greeter}#")] {
        let (code, line) = serve(&uri);
        assert_eq!(code, Some(1), "{uri}");
        assert_eq!(
            line,
            format!(
                "invoker: FUNCTION_URI '{uri}' has a #fragment, which is not supported; a '#' in a file name is written %23 in a file:// URI"
            )
        );
    }
}

#[test]
fn a_missing_file() {
    let (code, line) = serve("file:///nowhere/libx.so");
    assert_eq!(code, Some(1));
    assert_eq!(
        line,
        "invoker: function library /nowhere/libx.so does not exist: check FUNCTION_URI"
    );
}

#[test]
fn an_unknown_handler_lists_the_handlers() {
    let (code, line) = serve(&common::uri("greeter", Some("bye")));
    assert_eq!(code, Some(1));
    assert!(
        line.ends_with("has no function 'bye'; it exports: double, greet_json, hello"),
        "{line}"
    );
}

#[test]
fn several_functions_need_a_handler() {
    let (code, line) = serve(&common::uri("greeter", None));
    assert_eq!(code, Some(1));
    assert!(
        line.contains(
            "exports several functions (double, greet_json, hello): choose one with ?handler=NAME"
        ),
        "{line}"
    );
}

#[test]
fn an_abi_mismatch_names_both_versions() {
    let (code, line) = serve(&common::uri("abi-mismatch", None));
    assert_eq!(code, Some(1));
    assert!(
        line.contains(
            "was built for invoker ABI version 99, but this invoker speaks ABI version 1"
        ),
        "{line}"
    );
}

#[test]
fn no_function_uri_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .arg("serve")
        .env_remove("FUNCTION_URI")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--function-uri <URI>"));
}

#[test]
fn invoker_call_prints_replies_and_exits_with_the_grpc_code() {
    let daemon = common::Daemon::start(&common::uri("greeter", Some("hello")));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_invoker"))
            .args(["call", "--address", &daemon.addr])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["World"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello World\n");

    let out = run(&["--show-headers", "-H", "correlationId=abc", "Ada"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Content-Type: text/plain\ncorrelationId: abc\nHello Ada\n"
    );

    let out = run(&["Riff"]);
    assert_eq!(out.status.code(), Some(2), "UNKNOWN is code 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown: error condition"));

    let out = run(&["--accept", "application/json", "Ada"]);
    assert_eq!(out.status.code(), Some(3), "INVALID_ARGUMENT is code 3");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invoker: Not Acceptable"));
}

#[test]
fn invoker_call_speaks_invoke_too() {
    let daemon = common::Daemon::start(&common::uri("streams", Some("partition")));
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["call", "--invoke", "--address", &daemon.addr])
        .args([
            "--accept",
            "text/plain",
            "--accept",
            "application/json",
            "--content-type",
            "text/plain",
        ])
        .args(["--show-headers", "1", "2"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("resultIndex: 1\nContent-Type: application/json\n1\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("resultIndex: 0\nContent-Type: text/plain\n2\n"),
        "{stdout}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args([
            "call",
            "--invoke",
            "--address",
            &daemon.addr,
            "--accept",
            "text/plain",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "one expected type for two outputs"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invoker: Protocol Violation"));
}
