//! Seeing what happens, on real KVM: console times are exit times, the exit
//! trace holds every exit and slice as they were, and step mode stops a VM
//! after each exit.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use matrix_tui::config::{Policy, RunConfig};
use serde_json::Value;

/// The lines of a JSON Lines trace.
fn read_trace(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the trace was written");
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
}

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["type"] == kind).collect()
}

#[test]
fn ticker_lines_are_stamped_with_the_exits_that_printed_them() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("ticker.jsonl");
    let output = common::binary()
        .args(["run", "--headless", "--timestamps", "--vm", "t=ticker", "--args", "t=200", "--duration", "1s"])
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stamps: Vec<u64> = stdout
        .lines()
        .map(|line| {
            let (stamp, _) = line.split_once(' ').unwrap();
            let (seconds, micros) = stamp.split_once('.').unwrap();
            seconds.parse::<u64>().unwrap() * 1_000_000 + micros.parse::<u64>().unwrap()
        })
        .collect();
    assert!(stamps.len() > 50, "the ticker printed {} lines", stamps.len());
    // A unit of 200 iterations is tens of microseconds of guest time (here
    // about 0.25 ms): consecutive lines are that far apart, not batched
    // within microseconds of each other.
    let gaps: Vec<u64> = stamps.windows(2).map(|pair| pair[1] - pair[0]).collect();
    let tight = gaps.iter().filter(|&&gap| gap < 20).count();
    assert!(tight * 100 <= gaps.len() * 3, "{tight} of {} gaps under 20 us: {gaps:?}", gaps.len());
    // Every line's time is the time of the HC_print32bit exit that ended it.
    let lines = read_trace(&trace);
    let prints: Vec<u64> = of_type(&lines, "exit")
        .iter()
        .filter(|exit| exit["hypercall"] == "HC_print32bit")
        .map(|exit| exit["t_ns"].as_u64().unwrap() / 1000)
        .collect();
    assert_eq!(stamps, prints[..stamps.len()]);
}

#[test]
fn the_trace_of_part1_holds_its_29_exits_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("part1.jsonl");
    let output = common::binary().args(["run", "--json", "--vm", "part1", "--trace"]).arg(&trace).output().unwrap();
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let lines = read_trace(&trace);
    assert_eq!(lines[0]["type"], "start");
    assert_eq!(lines[0]["vms"], serde_json::json!(["part1"]));
    let exits = of_type(&lines, "exit");
    assert_eq!(exits.len(), 29);
    let numbers: Vec<u64> = exits.iter().map(|exit| exit["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=29).collect::<Vec<u64>>());
    let calls: Vec<&str> = exits.iter().map(|exit| exit["hypercall"].as_str().unwrap_or("-")).collect();
    let mut expected = vec!["HC_print8bit"; 11];
    expected.extend([
        "HC_print32bit",
        "HC_print32bit",
        "HC_numExits",
        "HC_printStr",
        "HC_numExits",
        "HC_print32bit",
        "HC_print32bit",
        "HC_numExitsByType",
        "HC_gvaToHva",
        "HC_gvaToHva",
        "HC_print32bit",
        "HC_gvaToHva",
        "HC_gvaToHva",
        "HC_print32bit",
        "HC_numExitsByType",
        "HC_printStr",
        "HC_printStr",
        "-",
    ]);
    assert_eq!(calls, expected);
    let text: String = exits[..11].iter().map(|exit| exit["text"].as_str().unwrap()).collect();
    assert_eq!(text, "Hello 695!\n");
    assert_eq!(exits[11]["value"], 2048);
    assert_eq!(exits[12]["value"], 4_294_967_295u64);
    assert_eq!((exits[13]["kind"].as_str(), exits[13]["result"].as_u64()), (Some("io_in"), Some(14)));
    assert_eq!(exits[14]["text"], "CS695 Assignment 2\n");
    assert_eq!(exits[15]["result"], 16);
    assert_eq!(exits[18]["result"], 0x1000);
    assert_eq!(exits[18]["text"], "IO in: 3\nIO out: 16\n");
    assert_eq!(exits[19]["value"], 1024);
    assert_eq!((exits[22]["value"].as_u64(), exits[22]["result"].as_u64()), (Some(0xffff_ffff), Some(0)));
    assert_eq!(exits[26]["text"], "IO in: 3\nIO out: 16\n");
    assert_eq!(exits[28]["kind"], "hlt");
    assert_eq!(exits[0]["decoded"], "io_out 0xe9 HC_print8bit('H')");
    let rips: Vec<u64> = exits.iter().map(|exit| exit["rip"].as_u64().unwrap()).collect();
    assert!(rips.iter().all(|&rip| rip > 0x10000), "{rips:?}");
    assert!(rips[..11].windows(2).all(|pair| pair[0] < pair[1]), "the print loop moves on: {rips:?}");
    let times: Vec<u64> = exits.iter().map(|exit| exit["t_ns"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|pair| pair[0] < pair[1]), "{times:?}");
    let slices = of_type(&lines, "slice");
    assert_eq!(slices.last().unwrap()["end"], "halt");
    let end = lines.last().unwrap();
    assert_eq!((end["type"].as_str(), end["dropped"].as_u64()), (Some("end"), Some(0)));
    assert_eq!(end["records"].as_u64().unwrap() as usize, lines.len() - 2);
    assert_eq!(report["trace"]["dropped"], 0);
}

/// Runs `config` with a trace and returns the trace's lines and the report.
fn traced(mut config: RunConfig, limit: Duration) -> (Vec<Value>, matrix_tui::report::RunReport) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    config.trace = Some(path.clone());
    let outcome = common::run_config(config, limit);
    (read_trace(&path), outcome.report)
}

#[test]
fn under_io_two_printing_guests_alternate_slice_by_slice() {
    let config =
        RunConfig::new(vec![common::builtin("a", "part1"), common::builtin("b", "part1")]).with_policy(Policy::Io);
    let (lines, _) = traced(config, Duration::from_secs(20));
    let slices = of_type(&lines, "slice");
    for (index, slice) in slices.iter().take(40).enumerate() {
        assert_eq!(slice["vm"], ["a", "b"][index % 2], "slice {index}: {slice}");
        assert_eq!(slice["end"], "io_switch", "slice {index}: {slice}");
        assert_eq!(slice["exits"], 1);
    }
}

#[test]
fn fair_slices_add_up_to_what_each_vm_was_charged() {
    let vms = vec![common::weighted("neo", "ticker", 70.0, &[]), common::weighted("morpheus", "ticker", 30.0, &[])];
    let (lines, report) = traced(RunConfig::new(vms), Duration::from_secs(1));
    let slices = of_type(&lines, "slice");
    assert!(slices.len() > 1000, "{} slices", slices.len());
    for vm in &report.vms {
        let charged: u64 = slices
            .iter()
            .filter(|slice| slice["vm"] == vm.name)
            .map(|slice| slice["charged_ns"].as_u64().unwrap())
            .sum();
        assert_eq!(charged, vm.charged_ns, "{}", vm.name);
    }
    let ends: Vec<&str> = slices.iter().map(|slice| slice["end"].as_str().unwrap()).collect();
    assert!(ends.iter().filter(|&&end| end == "deadline").count() * 2 > ends.len(), "mostly kicks: {ends:?}");
    assert_eq!(lines.last().unwrap()["dropped"], 0);
}

/// Runs the binary under --control with `steps` steps of the last VM of
/// `args` then `quit`, twice: for the lines it prints, and with --json for
/// the report.
fn control_session(args: &[&str], steps: usize) -> (Vec<String>, Value) {
    let lines = control_output(args, steps, false);
    let report = control_output(args, steps, true);
    (lines.lines().map(String::from).collect(), serde_json::from_str(&report).unwrap())
}

fn control_output(args: &[&str], steps: usize, json: bool) -> String {
    let mut child = common::binary()
        .args(["run", "--control"])
        .args(json.then_some("--json"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for _ in 0..steps {
        writeln!(stdin, "step {}", args.last().unwrap()).unwrap();
    }
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn three_steps_of_a_paused_part1_show_its_first_three_exits() {
    let (lines, report) = control_session(&["--vm", "part1", "--paused", "part1"], 3);
    // The three steps, then (at the end) the unfinished console line.
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[3], "part1| Hel");
    let mut rips = Vec::new();
    for (index, (line, byte)) in lines.iter().zip(["H", "e", "l"]).enumerate() {
        let prefix = format!("part1| [step] exit {}: io_out 0xe9 HC_print8bit('{byte}') rip=0x", index + 1);
        let rip = line.strip_prefix(&prefix).unwrap_or_else(|| panic!("{line:?} is not {prefix:?}..."));
        rips.push(u64::from_str_radix(rip, 16).unwrap());
    }
    assert!(rips.windows(2).all(|pair| pair[0] < pair[1]), "{rips:?}");
    let vm = &report["vms"][0];
    assert_eq!(vm["state"], "paused", "paused after the steps");
    assert_eq!(vm["exits"]["total"], 3);
    // Nothing ran meanwhile: the console holds just the three stepped bytes.
    assert_eq!(vm["console"], "Hel");
}

#[test]
fn stepping_a_guest_that_never_exits_ends_at_the_preemption() {
    let (lines, report) = control_session(&["--vm", "spin", "--paused", "spin"], 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("spin| [step] no exit: preempted after "), "{}", lines[0]);
    assert_eq!(report["vms"][0]["state"], "paused");
    assert_eq!(report["vms"][0]["exits"]["total"], 0);
}

#[test]
fn a_machine_knows_how_long_each_setup_step_took() {
    let vm = common::runtime("part1", &[]);
    let hows: Vec<&str> = vm.machine.setup.iter().map(|step| step.how).collect();
    assert_eq!(
        hows,
        [
            "mmap",
            "memory writes",
            "KVM_CREATE_VM",
            "KVM_SET_USER_MEMORY_REGION",
            "KVM_CREATE_VCPU",
            "KVM_SET_CPUID2",
            "KVM_GET_SREGS, KVM_SET_SREGS",
            "KVM_SET_REGS"
        ]
    );
    assert!(vm.machine.setup.iter().all(|step| step.ns > 0 && step.ns < 1_000_000_000), "{:?}", vm.machine.setup);
}

#[test]
fn the_guest_debug_probe_finds_what_this_host_honours() {
    let caps = matrix_tui::vm::debug_probe::probe(&common::kvm()).expect("the probe VMs set up");
    // Stepping and execution breakpoints work on every KVM these tests run on.
    eprintln!("probed: {caps:?}");
    assert!(caps.single_step && caps.hw_breakpoints, "{caps:?}");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // kvm_pvm emulates guest code: int3 is not intercepted and data
        // watchpoints never fire (seen with C probes of KVM_SET_GUEST_DEBUG).
        assert!(!caps.sw_breakpoints && !caps.hw_watchpoints, "{caps:?}");
        let strategy = caps.strategy();
        assert_eq!(strategy.breakpoints, matrix_tui::vm::guest_debug::BreakpointMethod::DebugRegisters);
        assert_eq!(strategy.watchpoints, matrix_tui::vm::guest_debug::WatchpointMethod::Stepping);
    }
}
