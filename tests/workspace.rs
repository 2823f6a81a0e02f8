//! What a checkout builds: the Quick start's `cargo build --release` builds the daemon, the SDK
//! and the example functions, not the libraries that exist only for the tests.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The first command of README's Quick start.
fn quick_start_build() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Quick start\n")
        .nth(1)
        .expect("README has a Quick start");
    let block = section
        .split("```sh\n")
        .nth(1)
        .expect("the Quick start has a command");
    let line = block.lines().next().unwrap();
    line.split(" && ").next().unwrap().to_owned()
}

/// The packages a plain `cargo build` builds (cargo's default members), as directories
/// relative to the checkout ("." for the daemon).
fn default_members() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = metadata["workspace_default_members"].as_array().unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| members.contains(&p["id"]))
        .map(|p| {
            let dir = Path::new(p["manifest_path"].as_str().unwrap())
                .parent()
                .unwrap();
            match dir.strip_prefix(root()).unwrap().to_str().unwrap() {
                "" => ".".to_owned(),
                relative => relative.to_owned(),
            }
        })
        .collect()
}

#[test]
fn the_quick_start_builds_the_daemon_and_the_examples_not_the_test_fixtures() {
    assert_eq!(quick_start_build(), "cargo build --release");
    let mut expected: BTreeSet<String> = [".", "crates/abi", "crates/sdk", "crates/sdk-macros"]
        .map(str::to_owned)
        .into();
    for example in std::fs::read_dir(root().join("examples")).unwrap() {
        let name = example.unwrap().file_name();
        expected.insert(format!("examples/{}", name.to_str().unwrap()));
    }
    assert_eq!(default_members(), expected);
}
