//! The `io` policy ("one at a time") on real KVM: VMs alternate exit by exit, a
//! VM that halts or crashes leaves the rotation, and a guest that never exits is
//! still stopped when the run ends.

mod common;

use std::time::{Duration, Instant};

use matrix_tui::config::{Policy, RunConfig};
use matrix_tui::event::Command;

#[test]
fn two_printing_guests_interleave_exit_by_exit() {
    let mut config =
        RunConfig::new(vec![common::builtin("a", "part1"), common::builtin("b", "part1")]).with_policy(Policy::Io);
    config.timings = true;
    let outcome = common::run_config(config, Duration::from_secs(20));
    // Under `io` every slice lasts until the VM's next I/O exit, and the next
    // slice is the other VM's: a, b, a, b... with one I/O exit in each slice.
    let timings = &outcome.report.timings;
    let mut slices: Vec<(u64, u64, usize)> =
        (0..2).flat_map(|vm| timings[vm].slices.iter().map(move |slice| (slice.start_ns, slice.end_ns, vm))).collect();
    slices.sort();
    let order: Vec<usize> = slices.iter().map(|&(_, _, vm)| vm).take(40).collect();
    let alternating: Vec<usize> = (0..40).map(|i| i % 2).collect();
    assert_eq!(order, alternating);
    for &(start, end, vm) in &slices[..40] {
        let exits = timings[vm].io_exit_ns.iter().filter(|&&at| (start..=end).contains(&at)).count();
        assert_eq!(exits, 1, "VM {vm}'s slice {start}..{end}");
    }
    common::assert_part1_console(&outcome.console(0));
    common::assert_part1_console(&outcome.console(1));
}

#[test]
fn a_crash_leaves_the_rotation_and_the_others_finish_exactly() {
    let outcome = common::run(
        vec![common::builtin("crash", "crash"), common::builtin("part1", "part1")],
        Policy::Io,
        Duration::from_secs(20),
    );
    let crash = &outcome.report.vms[0];
    assert_eq!(crash.state, "crashed");
    assert_eq!(crash.crash_reason.as_deref(), Some("triple fault (KVM_EXIT_SHUTDOWN)"));
    assert_eq!(crash.exits.counts.shutdown, 1);
    assert!(crash.registers.is_some_and(|r| r.rip >= 0x10000), "{:?}", crash.registers);
    assert!(outcome.console(0).contains("[matrix] VM crashed: triple fault"));
    assert_eq!(outcome.report.vms[1].state, "halted");
    common::assert_part1_console(&outcome.console(1));
    assert!(outcome.report.any_crashed());
}

#[test]
fn quit_stops_a_guest_that_never_exits() {
    let core = common::start(RunConfig::new(vec![common::builtin("spin", "spin")]).with_policy(Policy::Io));
    // Give it time to be inside KVM_RUN, where only a kick can reach it (the
    // assertions hold wherever the quit finds it).
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    core.send(Command::Quit);
    let report = core.run_until(None, |_| {});
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(50), "quit took {took:?}");
    assert_eq!(report.vms[0].state, "running");
    assert!(report.vms[0].cpu_ns > 0);
}

#[test]
fn the_core_thread_is_named_matrix_core() {
    let core = common::start(RunConfig::new(vec![common::builtin("spin", "spin")]).with_policy(Policy::Io));
    // spawn returns once the core thread has attached, so its tid is known.
    let comm = std::fs::read_to_string(format!("/proc/self/task/{}/comm", core.core_tid())).unwrap();
    common::quit(core, Vec::new());
    assert_eq!(comm.trim(), "matrix-core");
}

#[test]
fn the_core_thread_runs_under_seccomp_unless_asked_not_to() {
    for confined in [true, false] {
        let mut config = matrix_tui::config::RunConfig::new(vec![common::builtin("spin", "spin")]);
        config.seccomp = confined;
        let core = matrix_tui::sched::spawn(common::kvm(), config).unwrap();
        // spawn returns once the core is set up, filter included.
        let status = std::fs::read_to_string(format!("/proc/self/task/{}/status", core.core_tid())).unwrap();
        let mode = status.lines().find(|line| line.starts_with("Seccomp:")).unwrap().to_string();
        common::quit(core, Vec::new());
        assert_eq!(mode.split_whitespace().nth(1), Some(if confined { "2" } else { "0" }), "{mode}");
    }
}
