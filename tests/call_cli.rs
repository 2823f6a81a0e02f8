//! `invoker call`, as a user types it: messages from stdin to a running invoker, replies on
//! stdout. (`tests/call.rs` is the Call protocol itself.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use common::Daemon;
use common::cli::{function, invoker, stderr, stdout, with_stdin};

#[tokio::test]
async fn call_reads_messages_from_stdin() {
    let daemon = Daemon::start(&function("streams", "running_average"));
    let addr = daemon.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        with_stdin(&["call", "--address", &addr], &[], "1\n2\n6\n")
    })
    .await
    .unwrap();
    assert_eq!(stdout(&out), "1\n1.5\n3\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// The lines of a child's stdout, as they come.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line of `lines`, or None at the end; a line not there after [`common::HANG`] fails
/// the test (it hangs).
fn next_line(lines: &std::sync::mpsc::Receiver<String>) -> Option<String> {
    match lines.recv_timeout(common::HANG) {
        Ok(line) => Some(line),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("no line in {:?}", common::HANG),
    }
}

/// Waits for a child to exit; one still running after [`common::HANG`] is killed and fails the
/// test.
fn exit_code(child: &mut std::process::Child) -> Option<i32> {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if started.elapsed() > common::HANG {
            child.kill().unwrap();
            panic!("still running after {:?}", common::HANG);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn call_sends_each_line_of_stdin_as_it_is_read() {
    let daemon = Daemon::start(&function("streams", "running_average"));
    let mut child = invoker()
        .args(["call", "--address", &daemon.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let output = lines_of(&mut child);
    // Each average is printed before the next number is even written.
    for (number, average) in [("2", "2"), ("4", "3"), ("9", "5")] {
        writeln!(input, "{number}").unwrap();
        input.flush().unwrap();
        assert_eq!(next_line(&output).as_deref(), Some(average));
    }
    drop(input);
    assert_eq!(next_line(&output), None, "nothing after the input ended");
    assert_eq!(exit_code(&mut child), Some(0));
}

#[test]
fn call_prints_a_suppliers_output_while_stdin_is_open() {
    // As `sleep 10 | invoker call`: no message, and the call ends when stdin does.
    let daemon = Daemon::start(&function("streams", "ticker"));
    let mut child = invoker()
        .args(["call", "--address", &daemon.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let input = child.stdin.take().unwrap();
    let output = lines_of(&mut child);
    let ticks: Vec<_> = (0..3).map(|_| next_line(&output)).collect();
    assert_eq!(
        ticks,
        [Some("0".into()), Some("1".into()), Some("2".into())]
    );
    drop(input);
    assert_eq!(exit_code(&mut child), Some(0));
}
