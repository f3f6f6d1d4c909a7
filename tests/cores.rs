//! Several cores (`--cpus N`): one thread per host CPU, each running its own
//! VMs; weights are shares of the whole machine; the front ends see one run.
//! These hold on a 2-CPU host under load: they assert on placement, charged
//! time within a core and counts, never on how much CPU the host gave.

mod common;

use std::time::Duration;

use common::{builtin, matrix, report, run_config, weighted};
use matrix_tui::config::{Policy, RunConfig};
use matrix_tui::event::{Command, Event, VmState};

/// The host's two CPUs, as this file's tests share them. The tests that
/// judge how time was split over the cores (or keep both busy with gang
/// windows) run alone; the others share. Three equal VMs once saw
/// 0.22/0.56/0.22 and no move in 2 s with other runs beside them (about 1
/// run in 6), and never alone: the claim is about the balancer, not about
/// how much CPU other tests' threads left.
static HOST_CPUS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn alone_on_the_cpus() -> std::sync::RwLockWriteGuard<'static, ()> {
    HOST_CPUS.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sharing_the_cpus() -> std::sync::RwLockReadGuard<'static, ()> {
    HOST_CPUS.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn on_cores(vms: Vec<matrix_tui::config::VmConfig>, cpus: usize) -> RunConfig {
    let mut config = RunConfig::new(vms);
    config.cpus = cpus;
    config
}

/// Each VM's core in the run's first sample: where it was placed (later
/// samples may show moves under way, which the balancer makes when a busy
/// host slows one core).
fn placed(events: &[Event]) -> Vec<usize> {
    let first = events.iter().find_map(|event| match event {
        Event::Sample { vms, .. } => Some(vms.iter().map(|vm| vm.core).collect()),
        _ => None,
    });
    first.expect("a sample")
}

#[test]
fn two_spinners_on_two_cores_run_one_on_each() {
    let _sharing = sharing_the_cpus();
    let outcome = run_config(on_cores(vec![builtin("a", "spin"), builtin("b", "spin")], 2), Duration::from_millis(600));
    let report = &outcome.report;
    assert_eq!(report.cores.len(), 2);
    assert_eq!(placed(&outcome.events), [0, 1]);
    assert_ne!(report.cores[0].host_cpu, report.cores[1].host_cpu, "each core on its own CPU");
    for vm in &report.vms {
        assert!(vm.charged_ns > 0, "{} ran", vm.name);
        assert_eq!(vm.target_share, 0.5, "a core each");
    }
    // The front end saw one run: samples of both VMs, in VM order.
    let sample = outcome.events.iter().rev().find_map(|event| match event {
        Event::Sample { vms, .. } => Some(vms.len()),
        _ => None,
    });
    assert_eq!(sample, Some(2));
}

#[test]
fn two_one_one_on_two_cores_puts_the_heavy_vm_alone() {
    let _sharing = sharing_the_cpus();
    let vms = vec![weighted("a", "spin", 2.0, &[]), weighted("b", "spin", 1.0, &[]), weighted("c", "spin", 1.0, &[])];
    let outcome = run_config(on_cores(vms, 2), Duration::from_millis(800));
    let report = &outcome.report;
    let targets: Vec<f64> = report.vms.iter().map(|vm| vm.target_share).collect();
    assert_eq!(targets, [0.5, 0.25, 0.25], "1 : 0.5 : 0.5 of a core");
    assert_eq!(placed(&outcome.events), [0, 1, 1]);
    // b and c share their core by weight (what that core's policy steers).
    let (b, c) = (report.vms[1].charged_ns as f64, report.vms[2].charged_ns as f64);
    assert!((0.6..1.6).contains(&(b / c)), "b {b} ns, c {c} ns");
}

#[test]
fn commands_reach_the_core_that_runs_the_vm() {
    let _sharing = sharing_the_cpus();
    let mut config = on_cores(vec![builtin("a", "ticker"), builtin("b", "ticker")], 2);
    config.policy = Policy::Fair;
    let core = common::start(config);
    assert_eq!(core.cores(), 2);
    core.send(Command::Pause(1));
    let mut events = Vec::new();
    common::wait_for(&core, &mut events, |event| match event {
        Event::State { vm: 1, state } if state.name() == "paused" => Some(()),
        _ => None,
    });
    // Settings gather both cores' weights.
    core.send(Command::SetWeight { vm: 1, weight: 5.0 });
    let weights = common::wait_for(&core, &mut events, |event| match event {
        Event::Settings(settings) if settings.weights.get(1) == Some(&5.0) => Some(settings.clone()),
        _ => None,
    });
    assert_eq!((weights.weights.len(), weights.cpus), (2, 2));
    let report = common::quit(core, events).report;
    assert_eq!((report.vms[0].state.as_str(), report.vms[1].state.as_str()), ("running", "paused"));
}

#[test]
fn one_core_is_the_single_core_run() {
    let _sharing = sharing_the_cpus();
    let outcome = run_config(on_cores(vec![builtin("a", "ticker")], 1), Duration::from_millis(300));
    let cores = &outcome.report.cores;
    assert_eq!(cores.len(), 1);
    assert_eq!((cores[0].host_cpu, cores[0].vms.as_slice()), (None, ["a".to_string()].as_slice()));
}

#[test]
fn more_cores_than_cpus_or_none_are_refused_with_status_2() {
    let _sharing = sharing_the_cpus();
    let too_many = matrix(&["run", "--headless", "--cpus", "1024", "--vm", "a=ticker"]);
    assert_eq!(too_many.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&too_many.stderr);
    assert!(stderr.contains("--cpus 1024: this process may run on") && stderr.contains("give at most"), "{stderr}");
    let none = matrix(&["run", "--headless", "--cpus", "0", "--vm", "a=ticker"]);
    assert_eq!(none.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cores.toml");
    std::fs::write(&file, "cpus = \"two\"\n[[vm]]\nname = \"a\"\nguest = \"ticker\"\n").unwrap();
    let word = matrix(&["run", "--headless", file.to_str().unwrap()]);
    assert_eq!(word.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&word.stderr);
    assert!(stderr.contains("cores.toml:1: cpus: \"two\" is not a number of cores"), "{stderr}");
}

#[test]
fn a_scenario_asks_for_cores_and_the_json_report_has_a_row_per_core() {
    let _sharing = sharing_the_cpus();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cores.toml");
    std::fs::write(
        &file,
        "cpus = 2\nduration = \"400ms\"\n[[vm]]\nname = \"a\"\nguest = \"ticker\"\n[[vm]]\nname = \"b\"\nguest = \"ticker\"\n",
    )
    .unwrap();
    let output = matrix(&["run", "--headless", "--json", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let report = report(&output);
    let cores = report["cores"].as_array().unwrap();
    assert_eq!(cores.len(), 2);
    for (index, core) in cores.iter().enumerate() {
        assert_eq!(core["index"], index);
        assert!(core["outside_kvm_run_pct"].is_number() && core["moves"].is_u64(), "{core}");
        let busy = core["busy_pct"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&busy), "{core}");
    }
    // Every VM is on one core at the end (where, the balancer decides).
    let on_cores: usize = cores.iter().map(|core| core["vms"].as_array().map_or(0, Vec::len)).sum();
    assert_eq!(on_cores, 2, "{cores:?}");
}

#[test]
fn three_equal_vms_on_two_cores_take_turns_alone_and_share_evenly() {
    let _alone = alone_on_the_cpus();
    // No placement gives each two thirds of a core: the balancer swaps the
    // one furthest behind with the one furthest ahead. Charged shares even
    // out either way: by the swaps, or because a busy host slowed the core
    // of the one alone (then nothing needs to move). So: no VM starved, and
    // where the split came out uneven, the balancer moved VMs (the lag rule
    // itself is pinned in balance.rs; its evenness is the bench's to measure).
    let vms = vec![builtin("a", "spin"), builtin("b", "spin"), builtin("c", "spin")];
    let outcome = run_config(on_cores(vms, 2), Duration::from_millis(2000));
    let report = &outcome.report;
    let total: u64 = report.vms.iter().map(|vm| vm.charged_ns).sum();
    let shares: Vec<f64> = report.vms.iter().map(|vm| vm.charged_ns as f64 / total as f64).collect();
    assert!(shares.iter().all(|&share| share > 0.15), "{shares:?}");
    let moves: u64 = report.cores.iter().map(|core| core.moves).sum();
    if shares.iter().any(|&share| share > 0.45) {
        assert!(moves > 0, "uneven ({shares:?}) and nothing moved");
    }
}

#[test]
fn a_core_left_idle_takes_a_vm_from_the_busy_one() {
    let _sharing = sharing_the_cpus();
    // a and c start on core 0, b on core 1; b pauses: one of a and c moves over.
    let vms = vec![builtin("a", "spin"), builtin("b", "spin"), builtin("c", "spin")];
    let core = common::start(on_cores(vms, 2));
    core.send(Command::Pause(1));
    let mut events = Vec::new();
    // Samples name each VM's core: wait for a and c on different ones.
    let cores = common::wait_for(&core, &mut events, |event| match event {
        Event::Sample { vms, .. } if vms[0].core != vms[2].core => Some((vms[0].core, vms[2].core)),
        _ => None,
    });
    let report = common::quit(core, events).report;
    assert_ne!(cores.0, cores.1);
    assert_eq!(report.vms[1].state, "paused");
    assert!(report.cores.iter().map(|core| core.moves).sum::<u64>() >= 2, "{:?}", report.cores);
}

/// The next sample in which `holds` holds for its VMs.
fn sample_where(
    core: &matrix_tui::sched::CoreHandle,
    events: &mut Vec<Event>,
    holds: impl Fn(&[matrix_tui::event::VmSample]) -> bool,
) -> Vec<matrix_tui::event::VmSample> {
    common::wait_for(core, events, |event| match event {
        Event::Sample { vms, .. } if holds(vms) => Some(vms.clone()),
        _ => None,
    })
}

#[test]
fn pinned_vms_share_their_core_and_spread_again_when_unpinned() {
    let _sharing = sharing_the_cpus();
    let mut a = builtin("a", "spin");
    let mut b = builtin("b", "spin");
    (a.pin, b.pin) = (vec![0], vec![0]);
    let core = common::start(on_cores(vec![a, b], 2));
    let mut events = Vec::new();
    let pinned = sample_where(&core, &mut events, |vms| vms.iter().all(|vm| vm.core == 0));
    assert!(pinned.iter().all(|vm| vm.pin == [0]));
    // Pinned, they stay together however uneven the load: a few more samples.
    for _ in 0..3 {
        sample_where(&core, &mut events, |_| true);
    }
    sample_where(&core, &mut events, |vms| vms.iter().all(|vm| vm.core == 0));
    core.send(Command::Pin { vm: 1, cores: Vec::new() });
    let spread = sample_where(&core, &mut events, |vms| vms[0].core != vms[1].core);
    assert_eq!((spread[0].core, spread[1].pin.len()), (0, 0));
    common::quit(core, events);
}

#[test]
fn a_pin_command_moves_the_vm_at_once_and_a_core_that_does_not_exist_is_refused() {
    let _sharing = sharing_the_cpus();
    let core = common::start(on_cores(vec![builtin("a", "spin"), builtin("b", "spin")], 2));
    let mut events = Vec::new();
    core.send(Command::Pin { vm: 1, cores: vec![0] });
    sample_where(&core, &mut events, |vms| vms[1].core == 0 && vms[1].pin == [0]);
    core.send(Command::Pin { vm: 0, cores: vec![5] });
    let report = common::quit(core, events).report;
    assert!(
        report.vms[0].console.contains("pin refused: no core 5 (the run has cores 0 to 1)"),
        "{}",
        report.vms[0].console
    );
    assert!(report.cores[0].vms.contains(&"b".to_string()), "b stays where it is pinned: {:?}", report.cores);
}

#[test]
fn pins_to_cores_the_run_does_not_have_are_refused_with_status_2() {
    let _sharing = sharing_the_cpus();
    let output = matrix(&["run", "--headless", "--cpus", "2", "--vm", "a=ticker", "--pin", "a=2"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("VM 'a' is pinned to core 2, but the run has cores 0 to 1"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    for (pin, why) in [("[]", "an empty pin allows no core"), ("[-1]", "-1 is not a core"), ("[1, 1]", "named twice")] {
        let file = dir.path().join("pin.toml");
        std::fs::write(&file, format!("cpus = 2\n[[vm]]\nname = \"a\"\nguest = \"ticker\"\npin = {pin}\n")).unwrap();
        let output = matrix(&["run", "--headless", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{pin}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("pin.toml:5: pin:") && stderr.contains(why), "{pin}: {stderr}");
    }
}

#[test]
fn a_trace_of_several_cores_has_each_cores_slices_every_move_and_one_end() {
    let _sharing = sharing_the_cpus();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("cores.jsonl");
    // a and c start on core 0, b on core 1; pinning b to core 0 moves it
    // there (and the balancer may move a or c to the idle core after).
    let mut config = on_cores(vec![builtin("a", "spin"), builtin("b", "spin"), builtin("c", "spin")], 2);
    config.trace = Some(trace.clone());
    let core = common::start(config);
    let mut events = Vec::new();
    sample_where(&core, &mut events, |vms| vms[1].core == 1);
    core.send(Command::Pin { vm: 1, cores: vec![0] });
    sample_where(&core, &mut events, |vms| vms[1].core == 0);
    let report = common::quit(core, events).report;
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&trace).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines[0]["cores"], 2);
    let of = |kind: &'static str| lines.iter().filter(move |line| line["type"] == kind);
    for core in [0, 1] {
        assert!(of("slice").any(|slice| slice["core"] == core), "no slice of core {core}");
    }
    // Every move names its cores; b's from core 1 to core 0 is among them.
    let moves: Vec<&serde_json::Value> = of("moved").collect();
    assert!(moves.iter().any(|moved| moved["vm"] == "b" && moved["from"] == 1 && moved["to"] == 0), "{moves:?}");
    assert!(moves.iter().all(|moved| moved["from"] != moved["to"] && moved["t_ns"].is_u64()), "{moves:?}");
    let ends: Vec<&serde_json::Value> = of("end").collect();
    assert_eq!(ends.len(), 1);
    assert_eq!(lines.last().unwrap()["type"], "end");
    let records = ends[0]["records"].as_u64().unwrap();
    assert_eq!(records as usize, lines.len() - 2, "every record handed over is in the file");
    assert_eq!(report.trace.as_ref().map(|trace| trace.written), Some(records));
}

/// A 2-vCPU ticket lock beside a spinner on two cores under `gang`.
fn gang_beside_a_spinner() -> RunConfig {
    let mut locks = weighted("l", "locks", 1.0, &[0, 0, 1]);
    locks.vcpus = 2;
    let mut config = on_cores(vec![locks, builtin("s", "spin")], 2);
    config.policy = Policy::Gang;
    config.quantum = Duration::from_millis(5);
    config.live_records = true;
    config
}

#[test]
fn gang_runs_a_vms_vcpus_together_on_two_cores_and_never_one_alone() {
    let _alone = alone_on_the_cpus();
    let outcome = run_config(gang_beside_a_spinner(), Duration::from_millis(1200));
    let slices: Vec<matrix_tui::record::SliceRecord> = (outcome.events.iter())
        .filter_map(|event| match event {
            Event::Slices { records, .. } => Some(records.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let of = |vcpu: u16| slices.iter().filter(move |slice| slice.vm == 0 && slice.vcpu == vcpu);
    let home = of(0).next().expect("vCPU 0 ran").core;
    assert!(of(0).all(|slice| slice.core == home), "vCPU 0 runs on the VM's home core");
    assert!(of(1).all(|slice| slice.core != home), "vCPU 1 on the other core");
    // vCPU 1 runs only inside a window its sibling's home core holds open:
    // each of its slices lies within one of vCPU 0's.
    for lane in of(1) {
        let within = of(0).any(|first| first.start_ns <= lane.start_ns && lane.end_ns <= first.end_ns);
        assert!(within, "vCPU 1 ran {}..{} ns outside every window of vCPU 0", lane.start_ns, lane.end_ns);
    }
    assert!(of(1).count() > 0, "vCPU 1 was called to its core");
    // The spinner runs between the windows.
    assert!(slices.iter().any(|slice| slice.vm == 1), "the spinner ran");
    let report = &outcome.report;
    assert_eq!(report.policy, "gang");
    assert!(report.vms.iter().all(|vm| vm.charged_ns > 0), "both VMs were charged");
    // The lock's vCPUs took turns at the lock: the guest's own counts.
    assert!(report.vms[0].lock.as_ref().is_some_and(|lock| lock.sections > 0));
}

#[test]
fn gang_refuses_a_vm_with_more_vcpus_than_cores_with_status_2() {
    let _sharing = sharing_the_cpus();
    let out =
        matrix(&["run", "--headless", "--policy", "gang", "--vm", "p=pair", "--vcpus", "p=2", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("VM 'p' has 2 vCPUs, but the run has 1 core: --policy gang"), "{stderr}");
    assert!(stderr.contains("give --cpus 2 or more"), "{stderr}");
}

#[test]
fn switching_to_gang_with_too_wide_a_vm_is_refused_and_the_run_goes_on_fair() {
    let _sharing = sharing_the_cpus();
    let mut pair = builtin("p", "pair");
    pair.vcpus = 2;
    let core = common::start(RunConfig::new(vec![pair]));
    core.send(Command::SetPolicy(Policy::Gang));
    let mut events = Vec::new();
    sample_where(&core, &mut events, |_| true);
    let report = common::quit(core, events).report;
    assert_eq!(report.policy, "fair");
    let console = &report.vms[0].console;
    assert!(console.contains("policy gang refused: this VM has 2 vCPUs and the run 1 core"), "{console}");
}

#[test]
fn a_step_beside_two_gang_vms_ends_and_a_resume_after_it_holds() {
    let _alone = alone_on_the_cpus();
    // a's home core is called to b's windows as a lane: a step there must
    // not be cut short and restarted by each call (it once outlasted the
    // resume sent after it, and paused a again).
    let mut config = gang_beside_a_spinner();
    let mut pair = builtin("b", "pair");
    pair.vcpus = 2;
    config.vms.insert(1, pair);
    config.quantum = Duration::from_millis(2);
    let core = common::start(config);
    let mut events = Vec::new();
    sample_where(&core, &mut events, |_| true);
    core.send(Command::Step { vm: 0, vcpu: None });
    common::wait_for(&core, &mut events, |event| matches!(event, Event::Stepped { vm: 0, .. }).then_some(()));
    core.send(Command::Resume(0));
    let running = |event: &Event| matches!(event, Event::State { vm: 0, state: VmState::Running });
    common::wait_for(&core, &mut events, |event| running(event).then_some(()));
    let resumed = events.len();
    // Two samples later it still runs: nothing paused it again.
    sample_where(&core, &mut events, |_| true);
    sample_where(&core, &mut events, |_| true);
    let later: Vec<&Event> =
        events[resumed..].iter().filter(|event| matches!(event, Event::State { vm: 0, .. })).collect();
    assert!(later.is_empty(), "a changed state after its resume: {later:?}");
    let report = common::quit(core, events).report;
    assert!(report.vms.iter().all(|vm| vm.charged_ns > 0), "every VM ran");
}
