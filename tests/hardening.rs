//! What an attacker or an unlucky operator can do to a running invoker, through the real
//! binary: other local users, clients that give up, never read or open too much, and functions
//! that block.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Daemon, call, lib, msg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("invoker-hardening-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Calls until the function answers `World` with `expected` (a reload has taken effect).
async fn wait_for_reply(daemon: &Daemon, expected: &str) {
    let mut client = daemon.client().await;
    let waited = tokio::time::timeout(common::HANG, async {
        loop {
            let outcome = call(&mut client, vec![msg("World", &[])]).await;
            if outcome.texts() == [expected] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    if waited.await.is_err() {
        panic!("never answered {expected}:\n{}", daemon.stderr());
    }
}

#[tokio::test]
async fn another_user_cannot_plant_files_where_a_reload_loads_from() {
    let dir = scratch("plant");
    let function = dir.join("libfunction.so");
    std::fs::copy(lib("rot13"), &function).unwrap();
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let daemon = Daemon::start_with(
        function.to_str().unwrap(),
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    // Whoever can write to TMPDIR pre-creates the paths a load could use: by process id and
    // attempt number, symlinks to a file the daemon may write, and FIFOs.
    let trap = tmp.join(format!("invoker-{}", daemon.child.id()));
    std::fs::create_dir_all(&trap).unwrap();
    for attempt in 1..=8 {
        let planted = trap.join(format!("{attempt}-libfunction.so"));
        if attempt % 2 == 0 {
            std::os::unix::fs::symlink(&victim, &planted).unwrap();
        } else {
            nix::unistd::mkfifo(&planted, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        }
    }
    let planted_before = listing(&trap);

    for (library, reply) in [("version2", "v2:World"), ("rot13", "Jbeyq")] {
        std::fs::copy(lib(library), &function).unwrap();
        kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGHUP).unwrap();
        wait_for_reply(&daemon, reply).await;
    }
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious",
        "a reload wrote through a planted symlink"
    );
    assert_eq!(
        listing(&trap),
        planted_before,
        "a reload touched the planted paths"
    );
    assert_eq!(
        listing(&tmp),
        ["invoker-".to_owned() + &daemon.child.id().to_string()]
    );
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_function_uri_that_is_not_a_regular_file_is_refused() {
    let dir = scratch("fifo");
    let fifo = dir.join("libfunction.so");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["serve", "--port", "0"])
        .env("FUNCTION_URI", &fifo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read function library {}: it is not a regular file",
            fifo.display()
        )),
        "{stderr}"
    );
}
