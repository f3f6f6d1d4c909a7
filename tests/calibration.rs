//! Demo units sized in time: the binary measures this machine's busy loop
//! before the VMs start and sizes the built-in guests' units by it, unless
//! the user gave one.

mod common;

use serde_json::Value;

fn json_run(args: &[&str]) -> Value {
    let output = common::binary().args(["run", "--json", "--duration", "1s"]).args(args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_ticker_at_full_share_does_units_of_about_a_millisecond() {
    let report = json_run(&["--vm", "t=ticker"]);
    let calibration = &report["calibration"];
    let per_ms = calibration["loop_iterations_per_ms"].as_u64().expect("the report carries the calibration");
    assert!(per_ms > 0);
    let measured = calibration["measured_ms"].as_f64().unwrap();
    assert!(measured > 0.0 && measured < 100.0, "calibrating took {measured} ms");
    // One HC_print32bit per unit: 1 ms units make about 1000 a second of
    // the guest CPU it was charged (on a busy host it gets less than the
    // run's second); allow for the host's swings.
    let units = report["vms"][0]["exits"]["total"].as_u64().unwrap() as f64;
    let charged_s = report["vms"][0]["charged_ns"].as_f64().unwrap() / 1e9;
    // 20 units at least to judge them by (a host busy on both CPUs once gave it 0.03 s).
    assert!(charged_s > 0.02, "the ticker was charged {charged_s} s of 1 s");
    let per_s = units / charged_s;
    assert!((300.0..=3000.0).contains(&per_s), "{units} units in {charged_s:.3} s of guest CPU");
}

#[test]
fn an_explicit_unit_wins_and_needs_no_calibration() {
    // A unit of 2 iterations: each unit costs little more than its exit, on
    // any host far more units than 1 ms ones.
    let report = json_run(&["--vm", "t=ticker", "--args", "t=2"]);
    assert!(report.get("calibration").is_none(), "{}", report["calibration"]);
    let units = report["vms"][0]["exits"]["total"].as_u64().unwrap();
    assert!(units > 10_000, "units of 2 iterations, yet only {units} in 1 s");
}

#[test]
fn guests_lists_the_units_in_time() {
    let output = common::binary().arg("guests").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("loop iterations per ms of guest CPU"), "{text}");
    assert!(text.contains("ticker    a unit is 1 ms of guest CPU"), "{text}");
    assert!(text.contains("(built for x86_64-unknown-"), "{text}");
}
