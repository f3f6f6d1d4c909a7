//! VMs with several vCPUs, on real KVM: every vCPU starts at the entry with
//! its own stack and identity, siblings wake each other with IPIs, hlt ends
//! a vCPU or puts it to sleep as the rules say, a crash ends the whole VM
//! naming its vCPU, bad IPIs and yields are refused with a note, and a VM's
//! weight is shared by its vCPUs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{builtin, matrix, report, run, run_config, vm};
use matrix_tui::config::{Policy, RunConfig, VmConfig};
use matrix_tui::report::VmReport;

/// A VM of `vcpus` vCPUs running the flat long-mode `code` (at 0x10000).
fn flat(name: &str, code: &[u8], vcpus: u32) -> VmConfig {
    let mut vm = VmConfig::new(name, "flat", Arc::from(code));
    vm.vcpus = vcpus;
    vm
}

/// Every line of a VM's console that vCPU `index` printed, without its label.
fn lines_of(report: &VmReport, index: usize) -> Vec<String> {
    let label = format!("cpu{index}: ");
    report.console.lines().filter_map(|line| line.strip_prefix(&label)).map(str::to_string).collect()
}

#[test]
fn each_vcpu_starts_at_the_entry_with_its_own_stack_and_apic_id() {
    // cpuid(1).ebx >> 24 (the initial APIC id), then rsp, each printed; hlt.
    let code = [
        0xB8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0x0F, 0xA2, // cpuid
        0xC1, 0xEB, 0x18, // shr ebx, 24
        0x89, 0xD8, // mov eax, ebx
        0xE7, 0xEA, // out 0xEA, eax (HC_print32bit)
        0x89, 0xE0, // mov eax, esp
        0xE7, 0xEA, // out 0xEA, eax
        0xE5, 0xF2, // in eax, 0xF2 (HC_vcpuId)
        0xE7, 0xEA, // out 0xEA, eax
        0xE5, 0xF3, // in eax, 0xF3 (HC_vcpuCount)
        0xE7, 0xEA, // out 0xEA, eax
        0xF4, // hlt
    ];
    let outcome = run(vec![flat("who", &code, 3)], Policy::Fair, Duration::from_secs(20));
    let who = &outcome.report.vms[0];
    assert_eq!(who.state, "halted", "{}", who.console);
    for index in 0..3 {
        let top = (2 << 20) - index * 16 * 1024;
        let expected = [index.to_string(), top.to_string(), index.to_string(), "3".to_string()];
        assert_eq!(lines_of(who, index), expected, "vCPU {index}:\n{}", who.console);
    }
    assert_eq!(who.vcpus.len(), 3);
    assert!(who.vcpus.iter().all(|vcpu| vcpu.state == "halted" && vcpu.exits == 7), "{:?}", who.vcpus);
    assert_eq!(who.vcpus.iter().map(|vcpu| vcpu.exits).sum::<u64>(), who.exits.total);
}

#[test]
fn pair_takes_turns_woken_by_ipis_under_every_policy() {
    for policy in [Policy::Io, Policy::Rr, Policy::Fair] {
        let mut pair = builtin("pair", "pair");
        (pair.vcpus, pair.args) = (3, vec![2_000, 4]);
        let outcome = run(vec![pair], policy, Duration::from_secs(30));
        let pair = &outcome.report.vms[0];
        assert_eq!(pair.state, "halted", "{policy:?}: {}", pair.console);
        // Turns in order: cpu0 1, cpu1 1, cpu2 1, cpu0 2, ...
        let expected: Vec<String> =
            (1..=4).flat_map(|turn| (0..3).map(move |index| format!("cpu{index}: {turn}"))).collect();
        let printed: Vec<&str> = pair.console.lines().filter(|line| line.starts_with("cpu")).collect();
        assert_eq!(printed, expected, "{policy:?}");
        // Each hand-over but the very last is an IPI to a vCPU asleep in hlt.
        assert_eq!(pair.vcpus.iter().map(|vcpu| vcpu.ipis).sum::<u64>(), 4 * 3 - 1, "{policy:?}");
        assert_eq!(pair.faults, 0, "{policy:?}");
    }
}

#[test]
fn bad_ipis_and_yields_are_refused_with_a_note_and_the_vm_runs_on() {
    let code = [
        0xB8, 0x01, 0x00, 0x10, 0x00, // mov eax, 0x00100001: vCPU 1, vector 0x10 (below 32)
        0xE7, 0xF4, // out 0xF4, eax (HC_ipi)
        0xB8, 0x09, 0x00, 0x40, 0x00, // mov eax, 0x00400009: vCPU 9, vector 0x40
        0xE7, 0xF4, // out 0xF4, eax
        0xE5, 0xF2, // in eax, 0xF2 (own index)
        0xE7, 0xF5, // out 0xF5, eax (HC_yieldTo itself)
        0xB8, 0x07, 0x00, 0x00, 0x00, // mov eax, 7
        0xE7, 0xF5, // out 0xF5, eax (HC_yieldTo vCPU 7)
        0xB8, 0x2A, 0x00, 0x00, 0x00, // mov eax, 42
        0xE7, 0xEA, // out 0xEA, eax
        0xF4, // hlt
    ];
    let mut neighbour = builtin("t", "ticker");
    neighbour.args = vec![200];
    let mut config = RunConfig::new(vec![flat("bad", &code, 2), neighbour]);
    config.policy = Policy::Fair;
    let outcome = run_config(config, Duration::from_millis(1500));
    let bad = &outcome.report.vms[0];
    assert_eq!(bad.state, "halted", "{}", bad.console);
    assert_eq!(bad.faults, 4, "two refused IPIs on each vCPU:\n{}", bad.console);
    for index in 0..2 {
        assert_eq!(lines_of(bad, index), ["42"], "each vCPU ran on to its end:\n{}", bad.console);
        for says in [
            format!("HC_ipi(vCPU 1, vector 16) from vCPU {index} refused: vector 16 is below 32"),
            format!("HC_ipi(vCPU 9, vector 64) from vCPU {index} refused: the VM has 2 vCPUs (0 to 1)"),
            format!("HC_yieldTo({index}) from vCPU {index} ignored: it is the caller"),
            format!("HC_yieldTo(7) from vCPU {index} ignored: the VM has 2 vCPUs"),
        ] {
            assert!(bad.console.contains(&says), "missing {says:?} in:\n{}", bad.console);
        }
    }
    let ticker = &outcome.report.vms[1];
    assert!(ticker.exits.total > 0 && ticker.crash_reason.is_none(), "the neighbour runs on");
}

#[test]
fn vcpus_that_all_wait_for_an_interrupt_nobody_can_send_end_the_vm() {
    let code = [0xFB, 0xF4, 0xEB, 0xFC]; // sti; hlt; jmp back
    let outcome = run(vec![flat("waits", &code, 2)], Policy::Fair, Duration::from_secs(10));
    let waits = &outcome.report.vms[0];
    assert_eq!(waits.state, "halted", "{}", waits.console);
    assert!(
        waits.console.contains("2 of its vCPUs wait in hlt for an interrupt and no sibling runs to send one"),
        "{}",
        waits.console
    );
}

#[test]
fn one_vcpus_crash_ends_the_whole_vm_and_names_the_vcpu() {
    let code = [
        0xE5, 0xF2, // in eax, 0xF2
        0x85, 0xC0, // test eax, eax
        0x74, 0x02, // jz +2 (vCPU 0 halts)
        0x0F, 0x0B, // ud2 (no IDT: a triple fault)
        0xF4, // hlt
    ];
    let outcome = run(vec![flat("dies", &code, 2)], Policy::Fair, Duration::from_secs(10));
    let dies = &outcome.report.vms[0];
    assert_eq!(dies.state, "crashed");
    assert_eq!(dies.crash_reason.as_deref(), Some("vCPU 1: triple fault (KVM_EXIT_SHUTDOWN)"));
}

#[test]
fn a_vms_weight_is_shared_by_its_vcpus() {
    // Four spinning vCPUs beside one, equal weights: the VMs get the CPU
    // evenly (charged time, what the policy steers; rr's turns are per VM
    // too), and the four share theirs.
    for policy in [Policy::Fair, Policy::Rr] {
        let mut four = builtin("four", "spin");
        four.vcpus = 4;
        let one = builtin("one", "spin");
        let mut config = RunConfig::new(vec![four, one]);
        config.policy = policy;
        let outcome = run_config(config, Duration::from_millis(1500));
        let (four, one) = (&outcome.report.vms[0], &outcome.report.vms[1]);
        let ratio = four.charged_ns as f64 / one.charged_ns as f64;
        let why = format!("{policy:?}: four vCPUs {} ns against one {} ns", four.charged_ns, one.charged_ns);
        assert!((0.8..1.25).contains(&ratio), "{why}");
        let parts: Vec<u64> = four.vcpus.iter().map(|vcpu| vcpu.charged_ns).collect();
        assert_eq!(parts.iter().sum::<u64>(), four.charged_ns, "the vCPUs' parts add up to the VM's charge");
        let quarter = four.charged_ns as f64 / 4.0;
        assert!(parts.iter().all(|&part| (part as f64 - quarter).abs() < quarter * 0.5), "{policy:?}: {parts:?}");
    }
}

#[test]
fn vcpus_out_of_range_or_not_a_number_are_refused_with_status_2() {
    for (given, says) in [
        ("p=0", "0 vCPUs: a VM has 1 to 64"),
        ("p=65", "65 vCPUs: a VM has 1 to 64"),
        ("p=two", "'two' is not a number of vCPUs"),
        ("q=2", "--vcpus names VM 'q', which is not in this run"),
    ] {
        let output = matrix(&["run", "--headless", "--vm", "p=pair", "--vcpus", given, "--duration", "1s"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "--vcpus {given}: {stderr}");
        assert!(stderr.contains(says), "--vcpus {given}: {stderr}");
    }
}

#[test]
fn the_report_lists_every_vcpu_and_the_console_says_who_printed() {
    let output = matrix(&[
        "run",
        "--headless",
        "--json",
        "--vm",
        "p=pair",
        "--vcpus",
        "p=2",
        "--args",
        "p=1000,2",
        "--vm",
        "t=ticker",
        "--duration",
        "2s",
    ]);
    let report = report(&output);
    let pair = vm(&report, "p");
    let vcpus = pair["vcpus"].as_array().expect("a vcpus list");
    assert_eq!(vcpus.len(), 2);
    for (index, vcpu) in vcpus.iter().enumerate() {
        assert_eq!(vcpu["index"], index);
        for key in ["state", "exits", "cpu_ns", "charged_ns", "share", "injected", "ipis"] {
            assert!(!vcpu[key].is_null(), "vcpus[{index}] has {key}: {vcpu}");
        }
    }
    assert_eq!(vm(&report, "t")["vcpus"].as_array().map(Vec::len), Some(1), "a VM of one vCPU lists it too");
    let console = pair["console"].as_str().unwrap();
    assert!(console.contains("cpu0: 1\ncpu1: 1\ncpu0: 2\ncpu1: 2\n"), "{console}");
}

#[test]
fn a_c_ticket_lock_that_yields_to_the_served_vcpu_does_at_least_twice_the_work_of_one_that_spins_blindly() {
    // Written against the header alone; both run side by side at equal
    // weights on one core, 4 vCPUs each, at a 5 ms quantum. The work is the
    // guests' own count of critical sections, from their lock records.
    let dir = tempfile::tempdir().unwrap();
    common::make_example("c", dir.path());
    let image = dir.path().join("ticket.elf").display().to_string();
    let output = matrix(&[
        "run",
        "--json",
        "--policy",
        "fair",
        "--quantum",
        "5ms",
        "--duration",
        "2s",
        "--vm",
        &format!("blind={image}"),
        "--vcpus",
        "blind=4",
        "--args",
        "blind=0",
        "--vm",
        &format!("yields={image}"),
        "--vcpus",
        "yields=4",
        "--args",
        "yields=1",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = report(&output);
    let lock = |name: &str| vm(&report, name)["lock"].clone();
    let (blind, yields) = (lock("blind"), lock("yields"));
    let sections = |lock: &serde_json::Value| lock["sections"].as_u64().unwrap();
    assert!(sections(&blind) > 0, "{blind}");
    assert!(sections(&yields) >= 2 * sections(&blind), "blind {blind}, yields {yields}");
    assert!(blind["waiter_preempted"].as_u64().unwrap() > 0, "{blind}");
}

#[test]
fn the_c_smp_example_adds_on_every_vcpu_and_wakes_its_siblings_with_ipis() {
    let dir = tempfile::tempdir().unwrap();
    common::make_example("c", dir.path());
    let image = dir.path().join("smp.elf");
    for vcpus in [2, 4] {
        let output = matrix(&[
            "run",
            "--headless",
            "--json",
            "--policy",
            "fair",
            "--duration",
            "1s",
            "--vm",
            &format!("smp={}", image.display()),
            "--vcpus",
            &format!("smp={vcpus}"),
            "--args",
            "smp=2000",
            "--vm",
            "spinner=spin",
        ]);
        let report = report(&output);
        let smp = vm(&report, "smp");
        assert_eq!(smp["state"], "halted", "{smp}");
        let console = smp["console"].as_str().unwrap();
        for index in 1..vcpus {
            assert!(console.contains(&format!("cpu{index}: done\n")), "{console}");
        }
        // Not one add lost.
        assert!(console.contains(&format!("cpu0: total: {}\n", 2000 * vcpus)), "{console}");
        let rows = smp["vcpus"].as_array().unwrap();
        assert_eq!(rows.len(), vcpus, "a row per vCPU");
        // vCPU 0 wakes each sibling once; it is woken at most once itself (it
        // waits only if it finished before the others).
        for row in &rows[1..] {
            assert_eq!(row["ipis"], 1, "{rows:?}");
        }
        assert!(rows[0]["ipis"].as_u64() <= Some(1), "{rows:?}");
        // The neighbour keeps its share: half while smp runs, all after.
        let spinner = vm(&report, "spinner")["charged_ns"].as_f64().unwrap();
        let smp_charged = smp["charged_ns"].as_f64().unwrap();
        assert!(spinner >= smp_charged * 0.8, "spinner {spinner} ns, smp {smp_charged} ns");
    }
}

#[test]
fn a_step_runs_one_vcpu_to_its_exit_and_says_which() {
    use matrix_tui::event::{Command, Event, StepResult};
    let mut pair = builtin("p", "pair");
    (pair.vcpus, pair.args, pair.paused) = (2, vec![500], true);
    let core = common::start(RunConfig::new(vec![pair]));
    let mut events = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..12 {
        core.send(Command::Step { vm: 0, vcpu: None });
        let (vcpu, result) = common::wait_for(&core, &mut events, |event| match event {
            Event::Stepped { vcpu, result, .. } => Some((*vcpu, *result)),
            _ => None,
        });
        let vcpu = vcpu.expect("a VM of two vCPUs names the one stepped");
        if let StepResult::Exit(exit) = &result {
            assert_eq!(exit.vcpu, vcpu, "the exit is the stepped vCPU's");
            assert!(result.describe_on(Some(vcpu)).starts_with(&format!("[step] cpu{vcpu} exit ")));
        }
        seen.push(vcpu);
    }
    common::quit(core, events);
    // Stepping goes where the VM's turn goes: both vCPUs were stepped.
    assert!(seen.contains(&0) && seen.contains(&1), "{seen:?}");
}

#[test]
fn a_step_of_a_chosen_vcpu_runs_that_vcpu_alone() {
    use matrix_tui::event::{Command, Event};
    let mut pair = builtin("p", "pair");
    (pair.vcpus, pair.args, pair.paused) = (2, vec![500], true);
    let core = common::start(RunConfig::new(vec![pair]));
    let mut events = Vec::new();
    for _ in 0..6 {
        core.send(Command::Step { vm: 0, vcpu: Some(1) });
        let vcpu = common::wait_for(&core, &mut events, |event| match event {
            Event::Stepped { vcpu, .. } => Some(*vcpu),
            _ => None,
        });
        assert_eq!(vcpu, Some(1), "the chosen vCPU is the one stepped, every time");
    }
    // No such vCPU: refused with the reason; the VM stays paused.
    core.send(Command::Step { vm: 0, vcpu: Some(2) });
    let report = common::quit(core, events).report;
    let console = &report.vms[0].console;
    assert!(console.contains("step refused: no vCPU 2 (it has 2 vCPUs, 0 to 1)"), "{console}");
    assert_eq!(report.vms[0].state, "paused");
    let vcpus = &report.vms[0].vcpus;
    assert_eq!(vcpus[0].exits, 0, "vCPU 0 never ran: {vcpus:?}");
    assert!(vcpus[1].exits >= 6, "{vcpus:?}");
}

#[test]
fn an_ipi_storm_on_a_vcpu_that_never_takes_interrupts_folds_into_one_and_the_host_runs_on() {
    // Both vCPUs raise vector 0x40 on vCPU 1 in a loop; interrupts stay off,
    // so nothing goes in: every raise after the first folds into the one waiting.
    let code = [
        0xB8, 0x01, 0x00, 0x40, 0x00, // mov eax, 0x00400001: vCPU 1, vector 0x40
        0xE7, 0xF4, // out 0xF4, eax (HC_ipi)
        0xEB, 0xF7, // jmp back to the mov
    ];
    let neighbour = builtin("t", "ticker");
    let mut config = RunConfig::new(vec![flat("storm", &code, 2), neighbour]);
    config.policy = Policy::Fair;
    let outcome = run_config(config, Duration::from_millis(1000));
    let storm = &outcome.report.vms[0];
    assert_eq!(storm.state, "running", "{}", storm.console);
    let target = &storm.vcpus[1];
    assert!(target.ipis > 100, "{:?}", storm.vcpus);
    assert_eq!(target.ipis_coalesced, target.ipis - 1, "one waits, the rest fold into it");
    assert_eq!(storm.vcpus[0].ipis, 0);
    assert_eq!(storm.faults, 0, "a storm is allowed, not refused");
    let ticker = &outcome.report.vms[1];
    assert!(ticker.exits.total > 10, "the neighbour runs on: {} exits", ticker.exits.total);
}

#[test]
fn a_directed_yield_hands_the_rest_of_the_slice_to_the_sibling() {
    // vCPU 0 yields to vCPU 1 before it prints 100; vCPU 1 prints 200. The
    // first slice is vCPU 0's (lowest index, nothing charged yet): only the
    // yield lets vCPU 1 print first.
    let code = [
        0xE5, 0xF2, // in eax, 0xF2 (HC_vcpuId)
        0x85, 0xC0, // test eax, eax
        0x75, 0x0F, // jnz vcpu1
        0xB8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0xE7, 0xF5, // out 0xF5, eax (HC_yieldTo vCPU 1)
        0xB8, 0x64, 0x00, 0x00, 0x00, // mov eax, 100
        0xE7, 0xEA, // out 0xEA, eax
        0xF4, // hlt
        0xB8, 0xC8, 0x00, 0x00, 0x00, // vcpu1: mov eax, 200
        0xE7, 0xEA, // out 0xEA, eax
        0xF4, // hlt
    ];
    let outcome = run(vec![flat("yields", &code, 2)], Policy::Fair, Duration::from_secs(10));
    let yields = &outcome.report.vms[0];
    assert_eq!(yields.state, "halted", "{}", yields.console);
    let printed: Vec<&str> = yields.console.lines().filter(|line| line.starts_with("cpu")).collect();
    assert_eq!(printed, ["cpu1: 200", "cpu0: 100"], "{}", yields.console);
    assert_eq!(yields.faults, 0);
}

#[test]
fn locks_counts_its_critical_sections_and_spins_only_when_vcpus_contend() {
    // Alone, a vCPU never waits for the lock: 0 % spinning, whatever the lock.
    for (vcpus, kind) in [(1, 1), (4, 0), (4, 1), (4, 2), (4, 3)] {
        let mut locks = builtin("l", "locks");
        (locks.vcpus, locks.args) = (vcpus, vec![20, 60, kind]);
        let outcome = run(vec![locks], Policy::Fair, Duration::from_millis(1600));
        // A VM of one vCPU prints unlabelled lines.
        let report = &outcome.report.vms[0];
        let lines = if vcpus == 1 { report.console.lines().map(str::to_string).collect() } else { lines_of(report, 0) };
        let name =
            ["test-and-set", "ticket", "paravirtual ticket, yielding", "paravirtual ticket, halting"][kind as usize];
        assert_eq!(lines[0], format!("lock: {name}"), "{lines:?}");
        let second: Vec<u64> = lines[1]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|word| !word.is_empty())
            .map(|number| number.parse().unwrap())
            .collect();
        let [sections, spinning] = second[..] else { panic!("{lines:?}") };
        assert!(sections > 0, "{lines:?}");
        if vcpus == 1 {
            assert_eq!(spinning, 0, "{lines:?}");
        } else {
            assert!(spinning <= 100, "{lines:?}");
        }
        // Its lock records agree with what it printed: the report sums them.
        let lock = report.lock.expect("locks shares its lock records");
        let by_vcpu: u64 = report.vcpus.iter().map(|vcpu| vcpu.lock.expect("a record per vCPU").sections).sum();
        assert_eq!(lock.sections, by_vcpu);
        assert!(lock.sections >= sections, "{lock:?} {lines:?}");
    }
}

#[test]
fn a_halting_paravirtual_lock_wakes_its_waiters_from_hlt_and_does_more_than_twice_a_ticket_locks_work() {
    // Its waiters sleep in hlt and the unlocker wakes the next with an IPI;
    // vCPU 0 also runs its timer, and an IPI raised while it was still
    // on its way into hlt must wake it at once, not at its next tick (a
    // second away): else the lock waits on it and does less than the ticket lock.
    let sections = |kind: u64| {
        let mut locks = builtin("l", "locks");
        (locks.vcpus, locks.args) = (4, vec![20, 60, kind]);
        let mut config = RunConfig::new(vec![locks]).with_policy(Policy::Fair);
        config.quantum = Duration::from_millis(5);
        let outcome = run_config(config, Duration::from_millis(1500));
        let vm = &outcome.report.vms[0];
        (vm.lock.expect("records").sections, vm.exits.counts.hlt)
    };
    let ((ticket, _), (halting, hlts)) = (sections(1), sections(3));
    assert!(hlts > 0, "its waiters slept in hlt");
    assert!(halting >= 2 * ticket, "halting {halting} against ticket {ticket} critical sections");
}

#[test]
fn a_quantum_that_ends_on_a_lock_waiter_or_holder_is_counted_and_traced_as_the_guests_record_says() {
    // A ticket lock of 4 vCPUs on one core at a 5 ms quantum: the vCPU whose
    // quantum ends is nearly always spinning for a ticket behind one that is
    // not running. The counts are the hypervisor's; the records the guest's.
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("locks.jsonl");
    let mut locks = builtin("ticket", "locks");
    (locks.vcpus, locks.args) = (4, vec![0, 0, 1]);
    let mut config = RunConfig::new(vec![locks]).with_policy(Policy::Fair);
    config.quantum = Duration::from_millis(5);
    config.trace = Some(trace.clone());
    let outcome = run_config(config, Duration::from_millis(1500));
    let vm = &outcome.report.vms[0];
    let lock = vm.lock.expect("locks shares its lock records");
    assert!(lock.waiter_preempted > 0, "{lock:?}");
    assert!(lock.holder_preempted + lock.waiter_preempted <= vm.preemptions, "{lock:?}, {} quanta", vm.preemptions);
    assert!(lock.spins > 0 && lock.work > 0 && lock.sections > 0, "{lock:?}");
    let text = std::fs::read_to_string(&trace).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter_map(|record| record["type"].as_str().map(str::to_string))
        .collect();
    let count = |kind: &str| kinds.iter().filter(|seen| *seen == kind).count() as u64;
    assert_eq!(count("waiter_preempted"), lock.waiter_preempted);
    assert_eq!(count("holder_preempted"), lock.holder_preempted);
    // A ticker shares no records: no lock figures at all.
    let outcome = run(vec![builtin("t", "ticker")], Policy::Fair, Duration::from_millis(300));
    assert_eq!(outcome.report.vms[0].lock, None);
}
