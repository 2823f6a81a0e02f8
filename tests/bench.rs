//! `invoker bench --smoke`: the benchmark keeps compiling and working (its figures are not
//! asserted: timing belongs in BENCHMARKS.md, not in tests).

mod common;

use std::process::Command;

#[test]
fn the_benchmark_runs_and_reports_every_figure() {
    // The bench loads librot13.so, libstreams.so and libopenwhisk.so from one directory.
    let lib_dir = common::lib("rot13").parent().unwrap().to_path_buf();
    assert_eq!(common::lib("streams").parent(), Some(&*lib_dir));
    assert_eq!(common::lib("openwhisk").parent(), Some(&*lib_dir));
    assert_eq!(common::lib("statefun").parent(), Some(&*lib_dir));
    assert_eq!(common::lib("greeter").parent(), Some(&*lib_dir));
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["bench", "--smoke", "--lib-dir"])
        .arg(&lib_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    // The OpenWhisk group's table comes after the main one: OpenWhisk's /run of greet beside
    // the same greet over gRPC Call; the StateFun group's last: batches to invoker statefun
    // beside gRPC Calls of a function of the same work.
    let (main, rest) = report
        .split_once("openwhisk /run vs gRPC Call")
        .unwrap_or_else(|| panic!("no OpenWhisk table in:\n{report}"));
    let (openwhisk, statefun) = rest
        .split_once("statefun vs gRPC Call")
        .unwrap_or_else(|| panic!("no StateFun table in:\n{report}"));
    for (table, columns) in [
        (openwhisk, ["openwhisk", "grpc", "call", "ratio", "unit"]),
        (statefun, ["statefun", "grpc", "call", "ratio", "unit"]),
    ] {
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(header, columns);
    }
    for (table, figures) in [
        (
            main,
            &[
                "request/reply, 1 in flight",
                "request/reply, 64 in flight",
                "streaming, 1 stream",
                "streaming, 8 streams",
                "streaming 16 KiB, 1 stream",
                "memory per idle stream",
                "exec to first reply",
                "burst: resident before",
                "burst: resident, all open",
                "burst: resident 1 s after",
                "burst: resident 10 s after",
                "socket: request/reply, 1 in flight",
                "socket:   p99 latency, 1 in flight",
                "isolation: request/reply, 64",
                "isolation: streaming, 8",
                "isolation: memory/idle stream",
                "isolation: exec to first reply",
            ][..],
        ),
        (
            openwhisk,
            &[
                "greet, 1 in flight",
                "  p50 latency, 1 in flight",
                "  p99 latency, 1 in flight",
                "greet, 32 in flight",
                "  p50 latency, 32 in flight",
                "  p99 latency, 32 in flight",
                "server CPU per call, 32",
                "exec to first answer",
            ][..],
        ),
        (
            statefun,
            &[
                "greeter, batches of 1",
                "  p50 latency, batches of 1",
                "server CPU per inv, batch 1",
                "greeter, batches of 100",
                "server CPU per inv, batch 100",
            ][..],
        ),
    ] {
        for figure in figures {
            let line = table
                .lines()
                .find(|l| l.starts_with(figure))
                .unwrap_or_else(|| panic!("no '{figure}' in:\n{report}"));
            // After the name: invoker, reference, ratio (or n/a when the reference is 0), unit.
            let columns: Vec<&str> = line[figure.len()..].split_whitespace().collect();
            let value = |i: usize| columns.get(i).and_then(|c| c.parse::<f64>().ok());
            assert!(
                columns.len() == 4
                    && value(0).is_some_and(|v| v.is_finite() && v >= 0.0)
                    && value(1).is_some_and(|v| v.is_finite() && v >= 0.0)
                    && (value(2).is_some_and(f64::is_finite) || columns[2] == "n/a"),
                "'{line}' should carry invoker, reference, ratio and unit"
            );
        }
    }
}
