//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The directory cargo builds into (target/debug or target/release).
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_invoker"))
        .parent()
        .expect("the binary has a directory")
        .to_path_buf()
}

/// Path of a workspace library, e.g. `lib("greeter")` → target/debug/libgreeter.so.
pub fn lib(name: &str) -> PathBuf {
    let path = target_dir().join(format!("lib{}.so", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` (or scripts/test) before the tests",
        path.display()
    );
    path
}
