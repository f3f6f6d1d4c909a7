//! Snapshots of the terminal UI (ratatui TestBackend): two and six VMs at
//! 80x24 and 160x48, a crashed VM, the help overlay, a terminal too small,
//! the exit inspector after steps and the schedule timeline.

use std::time::Duration;

use matrix_tui::config::Policy;
use matrix_tui::config::TimerKind;
use matrix_tui::event::{Event, StepResult, VmSample, VmState};
use matrix_tui::hypercall::Hypercall;
use matrix_tui::record::{CallRecord, ExitKind, ExitRecord, SliceEnd, SliceRecord, Snippet};
use matrix_tui::stats::{ExitCounts, VmCounters};
use matrix_tui::ui::app::{Action, App, initial_settings};
use matrix_tui::ui::lesson_panel::LessonProgress;
use matrix_tui::ui::view;
use matrix_tui::vm::RegisterDump;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

/// An app with `names` at `weights`, fed a fixed history: console lines,
/// two samples a second apart, and the given states.
fn app(names: &[&str], weights: &[f64], states: &[(usize, VmState)]) -> App {
    let settings = initial_settings(Policy::Fair, Duration::from_millis(1), TimerKind::Posix, weights.to_vec());
    let mut app = App::new(names.iter().map(|n| n.to_string()).collect(), settings);
    let total: f64 = weights.iter().sum();
    for (vm, name) in names.iter().enumerate() {
        let text: String = (1..=12).map(|i| format!("[{i:04}] {name}: line {i} of work\n")).collect();
        app.apply(Event::console(vm, &text.into_bytes(), 0, 0));
    }
    app.apply(Event::console(0, b"[matrix] HC_printStr(0x80000000) refused\n", 0, 0));
    let sample = |scale: u64| {
        weights
            .iter()
            .map(|w| {
                let cpu = (w / total * 1e9) as u64 * scale;
                VmSample {
                    counters: VmCounters {
                        exits: ExitCounts { io_out: 40 * scale, io_in: 3 * scale, ..Default::default() },
                        preemptions: 900 * scale,
                        faults: 0,
                        ..Default::default()
                    },
                    cpu_ns: cpu,
                    charged_ns: cpu,
                    vcpus: Vec::new(),
                    core: 0,
                    pin: Vec::new(),
                }
            })
            .collect::<Vec<_>>()
    };
    for second in 1..=8 {
        app.apply(Event::Sample { elapsed_ns: second * 1_000_000_000, vms: sample(second) });
    }
    for (vm, state) in states {
        app.apply(Event::State { vm: *vm, state: state.clone() });
    }
    app
}

fn crashed() -> VmState {
    VmState::Crashed {
        reason: "triple fault (KVM_EXIT_SHUTDOWN)".into(),
        registers: RegisterDump { rip: 0x1001b, rsp: 0x1ffff0, rflags: 0x10006, ..Default::default() },
    }
}

fn render(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| {
            view::draw(frame, app);
        })
        .unwrap();
    terminal
}

#[test]
fn two_vms_at_80x24() {
    let app = app(&["neo", "morpheus"], &[70.0, 30.0], &[]);
    insta::assert_snapshot!(render(&app, 80, 24).backend());
}

#[test]
fn three_vms_on_two_cores_at_160x48_show_their_core_and_the_machines_targets() {
    let mut app = app(&["a", "b", "c"], &[2.0, 1.0, 1.0], &[]);
    let mut settings = initial_settings(Policy::Fair, Duration::from_millis(1), TimerKind::Posix, vec![2.0, 1.0, 1.0]);
    settings.cpus = 2;
    app.apply(Event::Settings(settings));
    let sample = |core: usize, cpu_ns: u64| VmSample {
        counters: VmCounters::default(),
        cpu_ns,
        charged_ns: cpu_ns,
        vcpus: Vec::new(),
        core,
        pin: if core == 0 { vec![0] } else { Vec::new() },
    };
    // A second more on two cores: a has core 0, b and c share core 1 (8 s
    // on one core before, at 2:1:1).
    app.apply(Event::Sample {
        elapsed_ns: 9_000_000_000,
        vms: vec![sample(0, 5_000_000_000), sample(1, 2_500_000_000), sample(1, 2_500_000_000)],
    });
    let screen = render(&app, 160, 48);
    let text = format!("{:?}", screen.backend());
    assert!(text.contains(" a running · core0 pinned · w2 → 50% "), "{text}");
    assert!(text.contains(" c running · core1 · w1 → 25% "), "{text}");
    insta::assert_snapshot!(screen.backend());
}

#[test]
fn two_vms_at_160x48_one_crashed() {
    let mut app = app(&["neo", "crash"], &[70.0, 30.0], &[(1, crashed())]);
    app.act(Action::SelectNext);
    insta::assert_snapshot!(render(&app, 160, 48).backend());
}

#[test]
fn six_vms_at_160x48() {
    let names = ["neo", "morpheus", "ticker-a", "ticker-b", "evil", "crash"];
    let app = app(&names, &[40.0, 20.0, 20.0, 10.0, 5.0, 5.0], &[(4, halted()), (5, crashed())]);
    insta::assert_snapshot!(render(&app, 160, 48).backend());
}

#[test]
fn six_vms_at_80x24_as_rows() {
    let names = ["neo", "morpheus", "ticker-a", "ticker-b", "evil", "crash"];
    let app = app(&names, &[40.0, 20.0, 20.0, 10.0, 5.0, 5.0], &[(3, VmState::Paused), (4, halted()), (5, crashed())]);
    insta::assert_snapshot!(render(&app, 80, 24).backend());
}

#[test]
fn help_overlay_at_80x24() {
    let mut app = app(&["neo", "morpheus"], &[70.0, 30.0], &[]);
    app.act(Action::ToggleHelp);
    app.act(Action::ToggleFreeze);
    insta::assert_snapshot!(render(&app, 80, 24).backend());
}

#[test]
fn a_terminal_too_small_says_so() {
    let app = app(&["neo", "morpheus"], &[70.0, 30.0], &[]);
    insta::assert_snapshot!(render(&app, 40, 10).backend());
}

#[test]
fn tiny_and_empty_terminals_do_not_panic() {
    let app = app(&["neo", "morpheus"], &[70.0, 30.0], &[]);
    render(&app, 1, 1);
    render(&app, 0, 0);
}

/// An exit of `part1`'s print loop: HC_print8bit of `byte`, exit `number`.
fn print8(number: u64, byte: u8) -> ExitRecord {
    ExitRecord {
        t_ns: 2_000_000_000 + number * 500_000_000,
        vm: 0,
        vcpu: 0,
        number,
        kind: ExitKind::IoOut,
        port: 0xe9,
        size: 1,
        value: u32::from(byte),
        address: 0,
        call: CallRecord { hypercall: Some(Hypercall::Print8), text: Snippet::new(&[byte]), ..Default::default() },
        rip: 0x10014 + 3 * number,
        handling_ns: 1_900,
    }
}

/// `part1` paused after three steps, beside `neo`, with its inspector open.
fn stepped_app() -> App {
    let mut app = app(&["part1", "neo"], &[1.0, 70.0], &[(0, VmState::Paused)]);
    let exits: Vec<ExitRecord> = b"Hel".iter().zip(1..).map(|(&byte, number)| print8(number, byte)).collect();
    app.apply(Event::Exits { vm: 0, records: exits.clone() });
    let registers = RegisterDump {
        rip: 0x1001d,
        rsp: 0x1ffff8,
        rflags: 0x6,
        rax: 0x6c,
        rdx: 0xe9,
        cr0: 0x8005_0033,
        cr3: 0x2000,
        cr4: 0x620,
        efer: 0x500,
        ..Default::default()
    };
    app.apply(Event::Stepped { vm: 0, t_ns: exits[2].t_ns, result: StepResult::Exit(exits[2]), registers, vcpu: None });
    app.act(Action::ToggleInspector);
    app
}

#[test]
fn the_inspector_after_three_steps_at_80x24() {
    insta::assert_snapshot!(render(&stepped_app(), 80, 24).backend());
}

#[test]
fn the_inspector_after_three_steps_at_160x48() {
    insta::assert_snapshot!(render(&stepped_app(), 160, 48).backend());
}

/// Neo and Morpheus under fair 70/30 for 20 ms of 0.2 ms units in the lag
/// order (N M N N M ...), each ended by a kick, then the timeline shown.
fn timeline_app() -> App {
    let mut app = app(&["neo", "morpheus"], &[70.0, 30.0], &[]);
    let pattern = [0, 1, 0, 0, 1, 0, 0, 1, 0, 0];
    let start = 8_000_000_000 - 20_000_000;
    let slices = (0..100u64)
        .map(|i| SliceRecord {
            vm: pattern[i as usize % 10],
            vcpu: 0,
            start_ns: start + i * 200_000,
            end_ns: start + (i + 1) * 200_000,
            charged_ns: 195_000,
            end: SliceEnd::Deadline,
            exits: 0,
            injected: 0,
            core: 0,
            spin_pct: None,
        })
        .collect();
    app.apply(Event::Slices { records: slices, dropped: 0 });
    app.act(Action::ToggleTimeline);
    app
}

#[test]
fn the_timeline_of_fair_70_30_at_80x24() {
    insta::assert_snapshot!(render(&timeline_app(), 80, 24).backend());
}

#[test]
fn the_timeline_of_fair_70_30_at_160x48() {
    insta::assert_snapshot!(render(&timeline_app(), 160, 48).backend());
}

/// Neo and Morpheus following the `fractions` lesson, two steps ticked.
fn lesson_app() -> App {
    let mut app = app(&["neo", "morpheus"], &[70.0, 30.0], &[]);
    let lesson = matrix_tui::lesson::load("fractions").unwrap();
    let mut progress = LessonProgress::new(lesson, Vec::new());
    progress.done = 2;
    app.lesson = Some(progress);
    app
}

#[test]
fn the_lesson_panel_at_80x24() {
    insta::assert_snapshot!(render(&lesson_app(), 80, 24).backend());
}

#[test]
fn the_lesson_panel_at_160x48() {
    insta::assert_snapshot!(render(&lesson_app(), 160, 48).backend());
}

/// neo runs; debugme sits at a breakpoint with gdb connected.
fn gdb_app() -> App {
    use matrix_tui::debug::{DebugStop, DebuggerStatus};
    let mut app = app(&["neo", "debugme"], &[70.0, 30.0], &[]);
    let statuses = [
        DebuggerStatus::Listening {
            address: "127.0.0.1:1234".into(),
            serving: "breakpoints by the debug registers, watchpoints by stepping".into(),
        },
        DebuggerStatus::Connected { peer: "127.0.0.1:40108".into() },
        DebuggerStatus::Continued,
        DebuggerStatus::Stopped(DebugStop::Breakpoint { address: 0x10081 }),
    ];
    for (t, status) in statuses.into_iter().enumerate() {
        app.apply(Event::Debugger { vm: 1, t_ns: t as u64 * 1000, status });
    }
    app.apply(Event::State { vm: 1, state: VmState::Gdb { stop: DebugStop::Breakpoint { address: 0x10081 } } });
    app
}

#[test]
fn a_vm_at_a_gdb_breakpoint_at_80x24() {
    insta::assert_snapshot!(render(&gdb_app(), 80, 24).backend());
}

#[test]
fn a_vm_at_a_gdb_breakpoint_at_160x48() {
    insta::assert_snapshot!(render(&gdb_app(), 160, 48).backend());
}

/// A VM halted in long mode with 42 in rax.
fn halted() -> VmState {
    let registers =
        matrix_tui::vm::RegisterDump { rax: 42, rip: 0x10031, rsp: 0x20_0000, efer: 0x500, ..Default::default() };
    VmState::Halted { registers, t_ns: 0 }
}

/// A pair of four vCPUs beside a ticker: two more samples, a second apart,
/// with the vCPUs' states, charged time and exits.
fn vcpus_app() -> App {
    let mut app = app(&["pair", "ticker"], &[50.0, 50.0], &[]);
    let vcpus = |second: u64| {
        let states = ["run", "wait", "sleep", "halt"];
        let shares = [300_000_000, 150_000_000, 50_000_000, 0];
        let rates = [1200, 40, 10, 0];
        (0..4)
            .map(|index| matrix_tui::event::VcpuSample {
                state: states[index],
                exits: rates[index] * second,
                charged_ns: shares[index] * second,
                lock_spins: 0,
                lock_work: 0,
            })
            .collect::<Vec<_>>()
    };
    for second in 9..=10 {
        let sample = |vm: usize| VmSample {
            counters: VmCounters::default(),
            cpu_ns: second * 500_000_000,
            charged_ns: second * 500_000_000,
            vcpus: if vm == 0 { vcpus(second) } else { Vec::new() },
            core: 0,
            pin: Vec::new(),
        };
        app.apply(Event::Sample { elapsed_ns: second * 1_000_000_000, vms: vec![sample(0), sample(1)] });
    }
    app
}

/// A ticket lock's four vCPUs beside a paravirtual lock's, two samples a
/// second apart: their lock records (critical sections, spun and worked
/// iterations) and the quanta that ended on a holder or a waiter.
fn locks_app() -> App {
    let mut app = app(&["ticket", "pv"], &[50.0, 50.0], &[]);
    // (sections, spins, work) a second, and quanta ended on a holder and a waiter a second.
    let per_second = [(170, 23_000, 6_000, 0, 280), (1_030, 8_000, 46_000, 18, 160)];
    for second in 9..=10u64 {
        let sample = |vm: usize| {
            let (sections, spins, work, holder, waiter) = per_second[vm];
            let lock = matrix_tui::stats::LockCounts {
                holder_preempted: holder * second,
                waiter_preempted: waiter * second,
                sections: sections * second,
                spins: spins * second,
                work: work * second,
            };
            let vcpus = (0..4)
                .map(|index| matrix_tui::event::VcpuSample {
                    state: "run",
                    exits: 0,
                    charged_ns: 125_000_000 * second,
                    lock_spins: spins * second / 4 + index * 1_000 * second,
                    lock_work: work * second / 4,
                })
                .collect();
            VmSample {
                counters: VmCounters { lock, ..VmCounters::default() },
                cpu_ns: second * 500_000_000,
                charged_ns: second * 500_000_000,
                vcpus,
                core: 0,
                pin: Vec::new(),
            }
        };
        app.apply(Event::Sample { elapsed_ns: second * 1_000_000_000, vms: vec![sample(0), sample(1)] });
    }
    app
}

#[test]
fn a_ticket_lock_beside_a_paravirtual_one_at_100x30() {
    insta::assert_snapshot!(render(&locks_app(), 100, 30).backend());
}

#[test]
fn a_ticket_lock_beside_a_paravirtual_one_at_80x24_leaves_out_counts_it_cannot_show_whole() {
    let screen = render(&locks_app(), 80, 24);
    let text = format!("{:?}", screen.backend());
    // The panes are 38 columns inside: the counts would not fit, so they go, not their last digits.
    assert!(text.contains("lock 170/s spin 79% ") && !text.contains("waiter 28"), "{text}");
    insta::assert_snapshot!(screen.backend());
}

#[test]
fn a_vm_of_four_vcpus_at_80x24() {
    insta::assert_snapshot!(render(&vcpus_app(), 80, 24).backend());
}

#[test]
fn a_vm_of_four_vcpus_at_160x48() {
    insta::assert_snapshot!(render(&vcpus_app(), 160, 48).backend());
}
