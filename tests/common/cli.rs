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
