//! `matrix-tui bench --quick --json` produces a complete, sane report. It
//! checks shape and consistency, never timings.

mod common;

use serde_json::Value;

fn number(report: &Value, path: &[&str]) -> f64 {
    let value = path.iter().try_fold(report, |value, key| value.get(key)).unwrap_or_else(|| panic!("no {path:?}"));
    value.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number: {value}"))
}

fn assert_percentiles(report: &Value, path: &[&str]) {
    let samples = number(report, &[path, &["samples"]].concat());
    let (p50, p99) = (number(report, &[path, &["p50"]].concat()), number(report, &[path, &["p99"]].concat()));
    assert!(samples > 0.0, "{path:?}: no samples");
    assert!(p50 > 0.0 && p50 <= p99, "{path:?}: p50 {p50} p99 {p99}");
}

#[test]
fn quick_bench_reports_every_figure() {
    let output = common::binary().args(["bench", "--quick", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert!(report["machine"]["kernel"].is_string() && report["machine"]["cpus"].as_u64() > Some(0));
    assert_percentiles(&report, &["exit_roundtrip_ns"]);
    assert!(number(&report, &["calibration", "loop_iterations_per_ms"]) > 0.0);
    for mode in ["real", "protected", "paged32", "long"] {
        let figure = &report["setup_by_mode_us"][mode];
        // A mode this host's KVM refuses says so instead of a figure.
        if figure["refused"].is_null() {
            assert_percentiles(&report, &["setup_by_mode_us", mode]);
        }
    }
    assert_percentiles(&report, &["interrupts", "injection_to_handler_us"]);
    assert_percentiles(&report, &["interrupts", "wake_lateness_beside_2_spinners_us"]);
    assert!(number(&report, &["interrupts", "sleepers_256_cpu_pct"]) > 0.0);
    // The C program's figure is there wherever gcc is, and the ratio is of the two p99s.
    let c_p99 = number(&report, &["interrupts", "c_lapic_to_handler_us", "p99"]);
    let ours_p99 = number(&report, &["interrupts", "injection_to_handler_us", "p99"]);
    assert!((number(&report, &["interrupts", "ratio_p99"]) - ours_p99 / c_p99).abs() < 1e-9);
    assert_percentiles(&report, &["real_vs_long_exit_ns", "real"]);
    assert_percentiles(&report, &["real_vs_long_exit_ns", "long"]);
    let ratio = number(&report, &["real_vs_long_exit_ns", "ratio_p50"]);
    let (real, long) = (
        number(&report, &["real_vs_long_exit_ns", "real", "p50"]),
        number(&report, &["real_vs_long_exit_ns", "long", "p50"]),
    );
    assert!((ratio - real / long).abs() < 1e-9, "the ratio is of the two medians shown");
    for call in ["print8bit", "print32bit", "numExits", "printStr64", "numExitsByType", "gvaToHva"] {
        assert_percentiles(&report, &["hypercall_ns", call]);
    }
    for timer in ["posix", "posix_uncompensated", "timerfd", "timerfd_uncompensated"] {
        let path = ["preempt_overrun_us", timer];
        // Compensated slices end at their deadline or before it: a median of 0 is the point.
        assert!(number(&report, &[&path[..], &["samples"]].concat()) > 0.0, "{path:?}: no samples");
        let (p50, p99) =
            (number(&report, &[&path[..], &["p50"]].concat()), number(&report, &[&path[..], &["p99"]].concat()));
        assert!((0.0..=p99).contains(&p50), "{path:?}: p50 {p50} p99 {p99}");
        assert!(
            number(&report, &["preempt_overrun_us", timer, "max"])
                >= number(&report, &["preempt_overrun_us", timer, "p99"])
        );
    }
    assert_percentiles(&report, &["c_baseline", "exit_roundtrip_ns"]);
    assert_percentiles(&report, &["c_baseline", "preempt_overrun_us"]);
    assert!(number(&report, &["c_baseline", "exit_roundtrip_ratio_p50"]) > 0.0);
    for key in ["share_error_pp", "share_error_pp_accounting"] {
        for window in ["w20ms", "w100ms", "w1s"] {
            let (max, mean) = (number(&report, &[key, window, "max"]), number(&report, &[key, window, "mean"]));
            let p99 = number(&report, &[key, window, "p99"]);
            assert!(mean >= 0.0 && mean <= max && max <= 100.0, "{key}.{window}: max {max} mean {mean}");
            assert!(p99 >= 0.0 && p99 <= max, "{key}.{window}: p99 {p99} max {max}");
            assert!(number(&report, &[key, window, "windows"]) > 0.0);
        }
    }
    let work_share = number(&report, &["share_error_pp", "params", "overall_work_share"]);
    assert!(work_share > 0.5 && work_share < 0.9, "the 70 VM did {work_share} of the work");
    for quantum in ["q100us", "q1ms", "q10ms"] {
        let pct = number(&report, &["overhead_pct", quantum]);
        assert!((0.0..100.0).contains(&pct), "{quantum}: {pct}");
    }
    let (off, on) = (&report["trace_cost"]["outside_kvm_run_pct_off"], &report["trace_cost"]["outside_kvm_run_pct_on"]);
    assert!(off.as_array().is_some_and(|rounds| !rounds.is_empty()), "{off} {on}");
    assert_eq!(off.as_array().map(Vec::len), on.as_array().map(Vec::len), "rounds alternate");
    assert!(number(&report, &["trace_cost", "records"]) > 0.0, "the traced rounds wrote records");
    assert!(number(&report, &["trace_cost", "cost_pp"]).is_finite());
    for (key, vms, window_s) in [("scale", 256.0, 1.0), ("scale_1024", 1024.0, 4.0)] {
        assert_eq!(number(&report, &[key, "vms"]), vms);
        assert_eq!(number(&report, &[key, "window_s"]), window_s);
        assert!(number(&report, &[key, "startup_ms"]) > 0.0 && number(&report, &[key, "rss_mib"]) > 0.0);
        assert!((0.0..=100.0).contains(&number(&report, &[key, "outside_kvm_run_pct"])));
        assert!((0.0..=100.0).contains(&number(&report, &[key, "share_error_rel_pct_charged"])), "{key}");
    }
    assert!(number(&report, &["console_flood", "bytes_per_s"]) > 0.0);
    // The large save: it took steps, and its written pages are what the process grew by.
    assert!(number(&report, &["large_save", "steps"]) > 1.0);
    assert!(number(&report, &["large_save", "written_mib"]) > 200.0);
    assert!(number(&report, &["large_save", "rss_growth_over_written"]) > 0.5);
    // Two cores where the host has two CPUs: both runs did work, and each
    // share comparison has ours and CFS's errors for every window.
    if report["cores"]["skipped"].is_null() {
        assert!(number(&report, &["cores", "work", "units_one_core"]) > 0.0);
        assert!(number(&report, &["cores", "work", "ratio"]) > 0.0);
        for key in ["share_70_30", "share_2_1_1"] {
            for window in ["w100ms", "w1s"] {
                assert!(number(&report, &["cores", key, "ours_pp", window, "windows"]) > 0.0, "{key} {window}");
                assert!(number(&report, &["cores", key, "cfs_pp", window, "windows"]) > 0.0, "{key} {window}");
            }
        }
        assert!(report["cores"]["params"].is_object());
    }
    let ui = number(&report, &["ui_cpu_pct", "pct"]);
    assert!(ui > 0.0 && ui < 100.0, "the UI thread used {ui} % of a core");
    let targets = report["targets"].as_object().unwrap();
    assert!(targets.len() >= 7, "{targets:?}");
    for (name, check) in targets {
        assert!(check["met"].is_boolean() && check["value"].is_number(), "{name}: {check}");
    }
    // Every figure states its parameters.
    for key in [
        "exit_roundtrip_ns",
        "preempt_overrun_us",
        "share_error_pp",
        "overhead_pct",
        "trace_cost",
        "scale",
        "scale_1024",
        "console_flood",
        "large_save",
    ] {
        assert!(report[key]["params"].is_object(), "{key} has no params");
    }
}

#[test]
fn bench_can_run_one_measurement() {
    let output = common::binary().args(["bench", "--quick", "--json", "--only", "exit"]).output().unwrap();
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_percentiles(&report, &["exit_roundtrip_ns"]);
    assert!(report.get("share_error_pp").is_none());
    let bad = common::binary().args(["bench", "--only", "everything"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
