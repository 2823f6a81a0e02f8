//! `invoker bench --smoke`: the benchmark keeps compiling and working (its figures are not
//! asserted: timing belongs in BENCHMARKS.md, not in tests).

mod common;

use std::process::Command;

#[test]
fn the_benchmark_runs_and_reports_every_figure() {
    common::lib("rot13");
    common::lib("streams");
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["bench", "--smoke"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    for figure in [
        "request/reply, 1 in flight",
        "request/reply, 64 in flight",
        "streaming, 1 stream",
        "streaming, 8 streams",
        "streaming 16 KiB, 1 stream",
        "memory per idle stream",
        "exec to first reply",
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with(figure))
            .unwrap_or_else(|| panic!("no '{figure}' in:\n{report}"));
        let numbers: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(
            numbers.len() >= 3 && numbers.iter().all(|n| n.is_finite()),
            "'{line}' should carry invoker, reference and ratio"
        );
    }
}
