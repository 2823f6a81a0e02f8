//! Running `invoker` as a user types it, for the command tests (`tests/run.rs`,
//! `tests/call_cli.rs`, `tests/scaffold.rs`, `tests/image.rs`).

use std::io::Write;
use std::process::{Command, Output, Stdio};

use super::lib;

/// `invoker`, logging warnings and errors only.
pub fn invoker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_invoker"));
    command.env("RUST_LOG", "warn");
    command
}

/// Runs `invoker ARGS` with `stdin` as its input.
pub fn with_stdin(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = invoker()
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start invoker");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `invoker ARGS` with `stdin` as its input and waits for it to exit; one still running
/// after [`super::HANG`] is killed and fails the test (it hangs).
pub fn bounded(args: &[&str], stdin: &str) -> Output {
    let mut child = invoker()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start invoker");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    // A function that does not read stdin may exit before it is written: that is no error.
    std::thread::spawn(move || input.write_all(stdin.as_bytes()));
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > super::HANG {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "invoker {args:?} hangs; it printed {:?}, {:?}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// What a process printed on stdout, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a process printed on stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--function` for a workspace library and handler.
pub fn function(crate_name: &str, handler: &str) -> String {
    format!("{}?handler={handler}", lib(crate_name).display())
}

/// An OpenWhisk action's code as `wsk action create --docker IMAGE ACTION.zip` sends it to
/// `/init`: the library alone in a zip, in base64.
pub fn openwhisk_code(library: &std::path::Path) -> String {
    use base64::Engine as _;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file(library.file_name().unwrap().to_string_lossy(), options)
        .unwrap();
    zip.write_all(&std::fs::read(library).unwrap()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(zip.finish().unwrap().into_inner())
}

/// POSTs JSON to `path` on `addr` over HTTP/1.1 (`Connection: close`): the status and the JSON
/// body of the answer.
pub fn post_json(addr: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    use std::io::Read;
    let body = body.to_string();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(super::HANG)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (
        status.unwrap_or_else(|| panic!("no status: {answer}")),
        body,
    )
}
