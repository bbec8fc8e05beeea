//! Smoke runs of every benchmark scenario at a tiny scale, so that each stays
//! runnable and keeps its zero-loss checks honest. The figures themselves are
//! measured with release builds (docs/benchmarks.md), not here.
//!
//! The scenarios start `jobwire serve` processes from the `jobwire` binary
//! next to `jobwire-bench` (built by the workspace's test run).

use std::path::PathBuf;
use std::process::Command;

fn bench(args: &[&str]) -> String {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_jobwire-bench"));
    let jobwire = bench.with_file_name("jobwire");
    assert!(
        jobwire.exists(),
        "{} is missing: build it with `cargo build -p jobwire-cli`",
        jobwire.display()
    );
    let output = Command::new(&bench)
        .args(args)
        .output()
        .expect("running jobwire-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "jobwire-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Every round line reports nothing lost, duplicated or out of order.
fn assert_exact(out: &str) {
    let rounds: Vec<&str> = out.lines().filter(|l| l.starts_with("rate ")).collect();
    assert!(!rounds.is_empty(), "no round reported:\n{out}");
    for round in rounds {
        assert!(
            round.contains("lost 0, duplicated 0, out of order 0"),
            "{round}"
        );
    }
}

/// `scenario` at a tiny load (20 subscribers, 5 jobs, 200 events/s for
/// `seconds`), with `extra` arguments.
fn small(scenario: &str, seconds: &str, extra: &[&str]) -> String {
    let base = [
        scenario,
        "--subscribers",
        "20",
        "--jobs",
        "5",
        "--rate",
        "200",
        "--seconds",
        seconds,
    ];
    bench(&[&base[..], extra].concat())
}

#[test]
fn fanout_over_websocket_and_sse_through_the_reporter() {
    let out = small("fanout", "1", &["--sse-percent", "50"]);
    assert_exact(&out);
    assert!(out.contains("(10 WebSocket, 10 SSE)"), "{out}");
    assert!(out.contains("latency ms: p50"), "{out}");
    assert!(out.contains("gateway 1"), "{out}");
}

#[test]
fn fanout_through_the_http_publish_path() {
    let out = small("fanout", "1", &["--publish", "http"]);
    assert_exact(&out);
}

#[test]
fn throughput_steps_write_one_csv_row_per_round() {
    let dir = std::env::temp_dir().join(format!("jobwire-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let csv = dir.join("step.csv");
    let csv_arg = csv.to_string_lossy().into_owned();
    let out = small(
        "fanout",
        "1",
        &["--step", "--max-steps", "2", "--csv", &csv_arg],
    );
    assert_exact(&out);
    assert!(out.contains("highest clean rate"), "{out}");
    let rows = std::fs::read_to_string(&csv).expect("csv");
    assert_eq!(rows.lines().count(), 3, "header and two rounds:\n{rows}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_storm_resumes_everyone() {
    let out = small("fanout", "2", &["--storm-at", "1"]);
    assert_exact(&out);
    assert!(
        out.contains("20 of 20 subscribers caught up") && out.contains("without resumed: 0"),
        "{out}"
    );
}

#[test]
fn baseline_delivers_everything_and_compares_with_the_floor() {
    let out = small("baseline", "1", &[]);
    assert_exact(&out);
    // Three runs: Redis alone, the floor server, jobwire; then the ratios.
    let rounds = out.lines().filter(|l| l.starts_with("rate ")).count();
    assert_eq!(rounds, 3, "{out}");
    assert!(out.contains("jobwire/floor: p50 "), "{out}");
}

#[test]
fn density_counts_connections_held_by_several_processes() {
    let out = bench(&[
        "idle",
        "--connections",
        "20,40",
        "--processes",
        "2",
        "--jobs",
        "5",
    ]);
    assert!(out.contains("20 idle subscribed WebSockets"), "{out}");
    assert!(out.contains("40 idle subscribed WebSockets"), "{out}");
}

#[test]
fn http_publish_measures_single_events_and_arrays_without_errors() {
    let out = bench(&[
        "http",
        "--gateways",
        "1,2",
        "--batches",
        "1,10",
        "--in-flight",
        "4",
        "--seconds",
        "1",
    ]);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| 1 |") || l.starts_with("| 2 |"))
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[9], "0", "errors in {row}");
        assert!(
            cells[3].parse::<f64>().is_ok_and(|posts| posts > 0.0),
            "{row}"
        );
    }
}
