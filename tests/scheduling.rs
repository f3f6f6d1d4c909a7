//! The `rr` and `fair` policies, the quantum timers and the live commands, on
//! real KVM. Correctness with slack; precision is `matrix-tui bench`'s job.

mod common;

use std::time::Duration;

use matrix_tui::config::TimerKind;
use matrix_tui::config::{Policy, RunConfig};
use matrix_tui::event::{Command, Event, VmState};
use matrix_tui::sched::Step;
use matrix_tui::vm::kick::monotonic_ns;
use matrix_tui::vm::{KickTarget, quantum_timer};

/// Units of ticker work in a run's report (one HC_print32bit per unit).
fn units(outcome: &common::Outcome, vm: usize) -> u64 {
    outcome.report.vms[vm].exits.total
}

#[test]
fn rr_preempts_guests_that_never_exit_and_both_progress() {
    for timer in [TimerKind::Posix, TimerKind::Timerfd] {
        let mut config = RunConfig::new(vec![common::builtin("a", "spin"), common::builtin("b", "spin")]);
        config.policy = Policy::Rr;
        config.timer = timer;
        let outcome = common::run_config(config, Duration::from_secs(1));
        for vm in &outcome.report.vms {
            assert_eq!(vm.state, "running");
            assert!(vm.preemptions > 100, "{timer:?}: {} was preempted {} times", vm.name, vm.preemptions);
            // Charged time, not KVM_RUN wall time: on a busy machine the host
            // deschedules the core thread inside KVM_RUN, which is nobody's CPU.
            assert!((vm.charged_share - 0.5).abs() < 0.05, "{timer:?}: {} got {}", vm.name, vm.charged_share);
        }
        assert_eq!(outcome.report.policy, "rr");
        assert_eq!(outcome.report.timer.as_deref(), Some(timer.name()));
        assert!(outcome.report.preempt_overrun_us.is_some_and(|p| p.samples > 100));
        // Spinners use their whole slices, so most deadlines are the ones
        // armed while the slice before was running.
        let ahead = outcome.report.deadlines_armed_ahead_pct.expect("timed slices");
        assert!(ahead > 50.0, "{timer:?}: only {ahead:.1} % of deadlines were armed ahead");
    }
}

#[test]
fn deadline_compensation_brings_the_median_overrun_down() {
    let run = |compensate: bool| {
        let mut config = RunConfig::new(vec![common::builtin("a", "spin"), common::builtin("b", "spin")]);
        config.policy = Policy::Rr;
        config.compensate = compensate;
        let report = common::run_config(config, Duration::from_millis(700)).report;
        (report.preempt_overrun_us.expect("slices were preempted"), report.kick_lead_us)
    };
    let (without, no_lead) = run(false);
    let (with, lead) = run(true);
    assert_eq!(no_lead, None);
    assert!(lead.is_some_and(|lead| lead > 0.0), "a lead was measured: {lead:?}");
    assert!(with.samples > 100 && without.samples > 100);
    assert!(with.p50 < without.p50, "with compensation {with:?}, without {without:?}");
}

#[test]
fn fair_70_30_tickers_do_70_30_of_the_work() {
    let vms = vec![common::weighted("neo", "ticker", 70.0, &[]), common::weighted("morpheus", "ticker", 30.0, &[])];
    let outcome = common::run_config(RunConfig::new(vms), Duration::from_secs(3));
    let report = &outcome.report.vms[0];
    // The charged shares are what the policy steers: close to the weights
    // however busy the host is.
    assert!((report.charged_share - 0.7).abs() < 0.02, "Neo's charged share {}", report.charged_share);
    assert!((report.target_share - 0.7).abs() < 1e-9);
    // The work done follows, loosely: on a busy host the time the core
    // thread waited for a CPU is estimated, not measured slice by slice.
    let (neo, morpheus) = (units(&outcome, 0), units(&outcome, 1));
    let work_share = neo as f64 / (neo + morpheus) as f64;
    assert!((work_share - 0.7).abs() < 0.06, "Neo did {work_share:.4} of the work ({neo} vs {morpheus} units)");
    assert!(report.preemptions > 0 && report.cpu_ns > 0);
}

#[test]
fn fair_gives_any_number_of_vms_their_weights() {
    let weights = [1.0, 2.0, 3.0, 4.0];
    let vms = weights.iter().enumerate().map(|(i, &w)| common::weighted(&format!("t{i}"), "ticker", w, &[])).collect();
    let outcome = common::run_config(RunConfig::new(vms), Duration::from_secs(3));
    let total: u64 = (0..4).map(|vm| units(&outcome, vm)).sum();
    for (vm, weight) in weights.iter().enumerate() {
        let charged = outcome.report.vms[vm].charged_share;
        assert!((charged - weight / 10.0).abs() < 0.02, "VM {vm}: charged {charged:.4}, weight {weight}/10");
        let share = units(&outcome, vm) as f64 / total as f64;
        assert!((share - weight / 10.0).abs() < 0.05, "VM {vm}: {share:.4} of the work, weight {weight}/10");
    }
}

#[test]
fn a_weight_change_shows_in_the_shares_within_200ms() {
    let vms = vec![common::weighted("a", "ticker", 70.0, &[100]), common::weighted("b", "ticker", 30.0, &[100])];
    let core = common::start(RunConfig::new(vms));
    let mut events = Vec::new();
    let before = common::sample_after(&core, &mut events, Duration::from_millis(600));
    let after = common::sample_after(&core, &mut events, Duration::from_millis(1100));
    let shares = common::shares_between(&before, &after);
    assert!((shares[0] - 0.7).abs() < 0.03, "before the change: {shares:?}");

    let changed_at = core.started().elapsed();
    core.send(Command::SetWeight { vm: 0, weight: 25.0 });
    core.send(Command::SetWeight { vm: 1, weight: 75.0 });
    let start = common::sample_after(&core, &mut events, changed_at + Duration::from_millis(200));
    let end = common::sample_after(&core, &mut events, changed_at + Duration::from_millis(700));
    let shares = common::shares_between(&start, &end);
    assert!((shares[0] - 0.25).abs() < 0.03, "from 200 ms after the change: {shares:?}");
    let outcome = common::quit(core, events);
    assert!(outcome.events.iter().any(|e| matches!(e, Event::Settings(s) if s.weights == [25.0, 75.0])));
    assert_eq!(outcome.report.vms[1].weight, 75.0);
}

#[test]
fn pause_resume_and_restart() {
    let vms = vec![common::weighted("a", "ticker", 1.0, &[100]), common::weighted("b", "ticker", 1.0, &[100])];
    let core = common::start(RunConfig::new(vms));
    let mut events = Vec::new();
    common::sample_after(&core, &mut events, Duration::from_millis(300));

    core.send(Command::Pause(0));
    common::wait_for(&core, &mut events, |e| matches!(e, Event::State { vm: 0, state: VmState::Paused }).then_some(()));
    let paused_at = core.started().elapsed();
    let first = common::sample_after(&core, &mut events, paused_at + Duration::from_millis(50));
    let second = common::sample_after(&core, &mut events, paused_at + Duration::from_millis(450));
    assert_eq!(first[0].counters, second[0].counters, "a paused VM does not run");
    assert!(second[1].cpu_ns > first[1].cpu_ns);
    assert!(common::shares_between(&first, &second)[1] > 0.99);

    core.send(Command::Resume(0));
    common::wait_for(&core, &mut events, |e| {
        matches!(e, Event::State { vm: 0, state: VmState::Running }).then_some(())
    });
    let resumed_at = core.started().elapsed();
    let third = common::sample_after(&core, &mut events, resumed_at + Duration::from_millis(300));
    assert!(third[0].counters.exits.total() > second[0].counters.exits.total(), "a resumed VM runs again");

    let exits_before_restart = third[1].counters.exits.total();
    core.send(Command::Restart(1));
    common::wait_for(&core, &mut events, |e| {
        matches!(e, Event::State { vm: 1, state: VmState::Running }).then_some(())
    });
    let restarted_at = core.started().elapsed();
    let fourth = common::sample_after(&core, &mut events, restarted_at + Duration::from_millis(10));
    assert!(fourth[1].counters.exits.total() < exits_before_restart, "counters start again from zero");
    let outcome = common::quit(core, events);
    let console = outcome.console(1);
    let (old_life, new_life) = console.split_once("[matrix] VM restarted\n").expect("a restart note");
    assert!(old_life.starts_with("1\n2\n3\n"));
    assert!(new_life.starts_with("1\n2\n3\n"), "the ticker counts from 1 again: {:?}", &new_life[..20]);
}

#[test]
fn a_halted_vm_can_be_restarted_and_runs_its_image_again() {
    let mut config = RunConfig::new(vec![common::builtin("p", "part1"), common::builtin("s", "spin")]);
    config.stay_open = true;
    let core = common::start(config);
    let mut events = Vec::new();
    common::wait_for(&core, &mut events, |e| {
        matches!(e, Event::State { vm: 0, state: VmState::Halted { .. } }).then_some(())
    });
    core.send(Command::Restart(0));
    common::wait_for(&core, &mut events, |e| {
        matches!(e, Event::State { vm: 0, state: VmState::Halted { .. } }).then_some(())
    });
    let outcome = common::quit(core, events);
    let console = outcome.console(0);
    let (first, second) = console.split_once("[matrix] VM restarted\n").unwrap();
    common::assert_part1_console(first);
    common::assert_part1_console(second);
    // The report's console history keeps both lives too.
    let history = &outcome.report.vms[0].console;
    let (first, second) = history.split_once("[matrix] VM restarted\n").expect("both lives in the report");
    common::assert_part1_console(first);
    common::assert_part1_console(second);
}

#[test]
fn policy_and_quantum_change_while_running() {
    let vms = vec![common::builtin("a", "spin"), common::builtin("b", "spin")];
    let core = common::start(RunConfig::new(vms).with_policy(Policy::Io));
    let mut events = Vec::new();
    core.send(Command::SetPolicy(Policy::Rr));
    core.send(Command::SetQuantum(Duration::from_millis(2)));
    common::wait_for(&core, &mut events, |e| match e {
        Event::Settings(s) if s.policy == Policy::Rr && s.quantum == Duration::from_millis(2) => Some(()),
        _ => None,
    });
    let changed_at = core.started().elapsed();
    let first = common::sample_after(&core, &mut events, changed_at + Duration::from_millis(100));
    let second = common::sample_after(&core, &mut events, changed_at + Duration::from_millis(600));
    let shares = common::shares_between(&first, &second);
    assert!((shares[0] - 0.5).abs() < 0.05, "under rr two spinners share: {shares:?}");
    core.send(Command::SetQuantum(Duration::from_secs(60)));
    let outcome = common::quit(core, events);
    assert_eq!(outcome.report.quantum_us, Some(1_000_000), "the quantum is clamped to 1 s");
}

#[test]
fn a_stale_timer_kick_does_not_cut_the_next_slice() {
    let mut vm = common::runtime("spin", &[]);
    let kick = KickTarget::new();
    let _attached = kick.attach();
    let mut timer = quantum_timer::create(TimerKind::Posix, &kick).unwrap();
    // The previous slice's timer fires 2 ms into this 30 ms slice.
    let start = monotonic_ns();
    let deadline = start + 30_000_000;
    kick.set_deadline(deadline);
    timer.arm(start + 2_000_000, 0);
    let mut stale_interrupts = 0;
    let mut charged = 0;
    loop {
        let (step, span, _) = vm.step(&kick, 0, false, u64::MAX);
        charged += span.charged_until(deadline);
        assert_eq!(step, Step::Interrupted, "spin only stops for signals");
        if span.exited_ns >= deadline {
            break;
        }
        stale_interrupts += 1;
        assert!(stale_interrupts < 10, "KVM_RUN keeps returning early: immediate_exit stuck");
        if stale_interrupts == 1 {
            // Now the real timer for this slice.
            timer.arm(deadline, 0);
        }
    }
    assert_eq!(stale_interrupts, 1, "the stale signal costs one re-entry");
    assert!(charged > 29_000_000, "the slice ran to its deadline: {charged} ns in KVM_RUN");
}

#[test]
fn a_flooding_guest_with_a_stalled_front_end_keeps_memory_flat() {
    let vms = vec![common::builtin("chatty", "chatty"), common::builtin("t", "ticker")];
    let core = common::start(RunConfig::new(vms));
    // Nobody reads events for 3 s: the channel fills and the core must coalesce.
    let early_kib = common::rss_at(&core, Duration::from_secs(1));
    let late_kib = common::rss_at(&core, Duration::from_secs(3));
    assert!(early_kib > 0, "RSS could be read from /proc");
    let outcome = common::quit(core, Vec::new());
    assert!(late_kib < early_kib + 5 * 1024, "RSS grew from {early_kib} KiB to {late_kib} KiB");
    let dropped: u64 = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Console(batch) => {
                Some(batch.pieces().filter(|piece| piece.vm == 0).map(|piece| piece.dropped).sum::<u64>())
            }
            _ => None,
        })
        .sum();
    // The channel holds 128 console events (a flush every 10 ms, some 5 KiB
    // each from chatty here) before the core's backlog (256 KiB a VM) must
    // fill: a flood past 1 MiB in the stall has to be cut by dropping (an
    // idle host gives chatty about 1.5 MiB in it). A host too busy to give
    // chatty that much proves nothing either way about dropping; the
    // memory bound above holds regardless.
    let report = &outcome.report.vms[0];
    let printed = report.console_cut_bytes + report.console.len() as u64 + report.console_dropped + dropped;
    if printed > 1 << 20 {
        assert!(dropped + report.console_dropped > 0, "the flood ({printed} bytes) was bounded by dropping");
    }
    assert!(outcome.report.vms[1].exits.total > 100, "the ticker kept running beside the flood");
}

#[test]
fn a_kick_after_the_vm_is_gone_is_harmless() {
    // The kick handler must never write into a vCPU mapping that was dropped
    // (a restart, the end of a run): a late timer signal used to do just that.
    let kick = KickTarget::new();
    let _attached = kick.attach();
    for guest in ["spin", "part1"] {
        let mut vm = common::runtime(guest, &[]);
        kick.set_deadline(monotonic_ns() + 2_000_000);
        let mut timer = quantum_timer::create(TimerKind::Posix, &kick).unwrap();
        timer.arm(monotonic_ns() + 2_000_000, 0);
        while vm.step(&kick, 0, false, u64::MAX).0 != Step::Interrupted {}
        drop(vm);
        // Due kicks and requests now arrive with no vCPU behind them.
        kick.set_deadline(0);
        kick.signal();
        kick.request();
        assert!(kick.take_request());
        kick.set_deadline(u64::MAX);
    }
}

#[test]
fn a_front_end_that_stops_reading_beside_busy_sleepers_keeps_memory_flat() {
    // Eight sleepers on 1 ms timers change state some 16,000 times a second;
    // nobody reads the events for 8 s (a frozen display).
    let mut vms: Vec<_> = (0..8).map(|i| common::weighted(&format!("s{i}"), "sleeper", 1.0, &[1, 1000])).collect();
    vms.push(common::builtin("t", "ticker"));
    let core = common::start(RunConfig::new(vms));
    let early_kib = common::rss_at(&core, Duration::from_secs(1));
    let late_kib = common::rss_at(&core, Duration::from_secs(8));
    let outcome = common::quit(core, Vec::new());
    assert!(late_kib < early_kib + 5 * 1024, "RSS grew from {early_kib} KiB to {late_kib} KiB");
    let injected: u64 = outcome.report.vms[..8].iter().map(|vm| vm.injected).sum();
    // Enough wakes to matter: some 3,500 a second on an idle host here (28,440 in
    // 8 s), 6,250 in all once when the host was busy compiling beside it.
    assert!(injected > 8 * 100, "the sleepers kept waking meanwhile: {injected} ticks");
    // The states that came through are each VM's newest, not a backlog.
    let states = outcome.events.iter().filter(|event| matches!(event, Event::State { .. })).count();
    assert!(states < 10_000, "{states} state events waited for the front end");
}

#[test]
fn a_busy_vm_keeps_its_share_beside_a_hundred_sleepers_on_1_ms_timers() {
    // Each wake costs a sleeper far more guest time under emulated KVM than
    // its share: they all want more than the CPU, so every VM's share is
    // 1/101. A sleeper used to fall asleep before its slice was charged and
    // to wake forgiven, and the ticker got a fraction of its share; by
    // charged time (what fair controls) it now gets its share.
    let mut vms = vec![common::builtin("t", "ticker")];
    vms.extend((0..100).map(|i| common::weighted(&format!("s{i}"), "sleeper", 1.0, &[1, 1000])));
    let core = common::start(RunConfig::new(vms));
    // Three seconds of it, its events read and dropped.
    let end = core.started() + Duration::from_secs(3);
    while core.events().recv_deadline(end).is_ok() {}
    let outcome = common::quit(core, Vec::new());
    let vms = &outcome.report.vms;
    let sleepers: Vec<u64> = vms[1..].iter().map(|vm| vm.charged_ns).collect();
    let mean = sleepers.iter().sum::<u64>() as f64 / sleepers.len() as f64;
    let ticker = vms[0].charged_ns as f64;
    assert!(ticker >= 0.8 * mean, "the ticker was charged {ticker} ns, a sleeper {mean} ns on average");
}
