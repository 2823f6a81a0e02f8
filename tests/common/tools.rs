//! The tools some tests need beyond cargo (scripts/test installs them in `.venv`). A test that
//! needs one and does not find it fails and names it: a check that did not run does not pass.

use std::path::Path;
use std::process::Command;

/// Lints a Dockerfile with hadolint, which scripts/test installs in .venv; without it the test
/// fails and says so (a Dockerfile that was not linted does not pass).
pub fn lint_dockerfile(dockerfile: &Path) {
    let hadolint = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/hadolint");
    assert!(
        hadolint.is_file(),
        "{} is missing, so the generated Dockerfile cannot be linted: run scripts/test, which \
         installs it",
        hadolint.display()
    );
    let out = Command::new(&hadolint).arg(dockerfile).output().unwrap();
    assert!(
        out.status.success(),
        "hadolint {}:\n{}{}",
        dockerfile.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python the tests run: `INVOKER_PYTHON`, else `.venv/bin/python` (scripts/test sets it
/// up). Fails the test, naming what is missing, unless it runs and imports every module of
/// `modules` (`grpc`, `prometheus_client`).
pub fn python(modules: &[&str]) -> std::path::PathBuf {
    let python = std::env::var_os("INVOKER_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let imports = format!("import {}", modules.join(", "));
    let out = Command::new(&python)
        .args(["-c", &imports])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "no Python at {} ({e}), so this test cannot run: run scripts/test, which sets up \
                 .venv, or set INVOKER_PYTHON",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "the Python at {} cannot `{imports}`, so this test cannot run: run scripts/test, which \
         installs them in .venv:\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}
