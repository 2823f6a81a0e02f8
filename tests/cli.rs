//! Start-up errors of `invoker serve`: one clear line and a non-zero exit, never a panic.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// `invoker serve` with `FUNCTION_URI=uri`, which must refuse to start: its exit code and the
/// last line on stderr. An invoker that serves instead is stopped and fails the test.
fn serve(uri: &str) -> (Option<i32>, String) {
    serve_with(uri, &["--port", "0"])
}

/// `invoker serve ARGS` with `FUNCTION_URI=uri`, which must refuse to start, as `serve`.
fn serve_with(uri: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .arg("serve")
        .args(args)
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--function-uri <URI>"), "{stderr}");
    assert!(
        stderr.contains(
            "tip: set the environment variable FUNCTION_URI, or pass --function-uri (file:///abs/path/libname.so?handler=name)"
        ),
        "{stderr}"
    );
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

    let out = run(&["--accept", "image/png", "Ada"]);
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

#[test]
fn invoker_call_invoke_expects_one_output_of_any_type_by_default() {
    let daemon = common::Daemon::start(&common::uri("streams", Some("running_average")));
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["call", "--invoke", "--address", &daemon.addr, "2", "4", "9"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n3\n5\n");
}

fn scratch(name: &str) -> common::Scratch {
    common::scratch("cli", name)
}

#[test]
fn a_library_whose_dependency_is_missing_says_so() {
    // libneeds.so is a shared library linked against libmissingdep.so, which is then deleted:
    // the loader's reason is the missing dependency, and the crate type is not to blame.
    let dir = scratch("missing-dep");
    let gcc = |args: &[&str]| {
        let out = Command::new("gcc")
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("gcc");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(dir.join("dep.c"), "int dep(void) { return 1; }\n").unwrap();
    std::fs::write(
        dir.join("needs.c"),
        "int dep(void);\nint needs(void) { return dep(); }\n",
    )
    .unwrap();
    gcc(&["-shared", "-fPIC", "-o", "libmissingdep.so", "dep.c"]);
    gcc(&[
        "-shared",
        "-fPIC",
        "-o",
        "libneeds.so",
        "needs.c",
        "-L.",
        "-lmissingdep",
    ]);
    std::fs::remove_file(dir.join("libmissingdep.so")).unwrap();
    let path = dir.join("libneeds.so");
    let (code, line) = serve(path.to_str().unwrap());
    assert_eq!(code, Some(1));
    assert_eq!(
        line,
        format!(
            "invoker: cannot load function library {}: libmissingdep.so: cannot open shared object file: No such file or directory; install the library it depends on, or build the function without that dependency",
            path.display()
        )
    );
}

#[test]
fn a_file_that_is_not_a_library_blames_the_crate_type() {
    let dir = scratch("not-a-library");
    let path = dir.join("libtext.so");
    std::fs::write(&path, "just some text\n").unwrap();
    let (code, line) = serve(path.to_str().unwrap());
    assert_eq!(code, Some(1));
    assert!(
        line.starts_with(&format!(
            "invoker: {} is not a loadable shared library (",
            path.display()
        )),
        "{line}"
    );
    assert!(
        line.ends_with("): build the function crate with crate-type = [\"cdylib\"]"),
        "{line}"
    );
    assert!(
        !line.contains("dlopen failed)"),
        "the loader's reason: {line}"
    );
}

#[test]
fn a_port_in_use_says_how_to_choose_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let uri = common::uri("greeter", Some("hello"));
    let (code, line) = serve_with(&uri, &["--port", &port]);
    assert_eq!(code, Some(1));
    assert_eq!(
        line,
        format!(
            "invoker: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98); choose another port with --port or GRPC_PORT (0 picks a free one)"
        )
    );
    let (code, line) = serve_with(&uri, &["--port", "0", "--metrics-port", &port]);
    assert_eq!(code, Some(1));
    assert_eq!(
        line,
        format!(
            "invoker: cannot listen for /metrics on 127.0.0.1:{port}: Address already in use (os error 98); choose another port with --metrics-port or METRICS_PORT (0 picks a free one)"
        )
    );
}

#[test]
fn an_unknown_log_format_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["serve", "--port", "0"])
        .env("FUNCTION_URI", "/nowhere/libx.so")
        .env("LOG_FORMAT", "xml")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "invoker: LOG_FORMAT 'xml' is not a log format: set it to text or json\n"
    );
}

#[test]
fn help_names_the_log_settings_and_version_the_abi() {
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("RUST_LOG    the log filter, such as info or invoker=debug [default: info]"),
        "{help}"
    );
    assert!(
        help.contains("LOG_FORMAT  text, or json for one JSON object per line [default: text]"),
        "{help}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("invoker {} (ABI version 1)\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn invoker_call_without_a_server_says_why() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["call", "--address", &address, "World"])
        .env_remove("INVOKER_ADDRESS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(14), "UNAVAILABLE is code 14");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("invoker: cannot connect to {address}: Connection refused\n")
    );

    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["call", "World"])
        .env("INVOKER_ADDRESS", format!("http://{address}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "invoker: 'http://{address}' is not a HOST:PORT address: give --address (or INVOKER_ADDRESS) without the scheme, as {address}\n"
        )
    );
}
