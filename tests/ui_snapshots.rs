//! Snapshots of the terminal UI (ratatui TestBackend): two and six VMs at
//! 80x24 and 160x48, a crashed VM, the help overlay, a terminal too small.

use std::time::Duration;

use matrix_tui::config::Policy;
use matrix_tui::console::ConsoleChunk;
use matrix_tui::event::{Event, VmSample, VmState};
use matrix_tui::stats::{ExitCounts, VmCounters};
use matrix_tui::ui::app::{Action, App, initial_settings};
use matrix_tui::ui::view;
use matrix_tui::vm::{RegisterDump, TimerKind};
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
        app.apply(Event::Console { vm, chunk: ConsoleChunk::at(&text.into_bytes(), 0), dropped: 0 });
    }
    app.apply(Event::Console {
        vm: 0,
        chunk: ConsoleChunk::at(b"[matrix] HC_printStr(0x80000000) refused\n", 0),
        dropped: 0,
    });
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
                    },
                    cpu_ns: cpu,
                    charged_ns: cpu,
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
fn two_vms_at_160x48_one_crashed() {
    let mut app = app(&["neo", "crash"], &[70.0, 30.0], &[(1, crashed())]);
    app.act(Action::SelectNext);
    insta::assert_snapshot!(render(&app, 160, 48).backend());
}

#[test]
fn six_vms_at_160x48() {
    let names = ["neo", "morpheus", "ticker-a", "ticker-b", "evil", "crash"];
    let app = app(&names, &[40.0, 20.0, 20.0, 10.0, 5.0, 5.0], &[(4, VmState::Halted), (5, crashed())]);
    insta::assert_snapshot!(render(&app, 160, 48).backend());
}

#[test]
fn six_vms_at_80x24_as_rows() {
    let names = ["neo", "morpheus", "ticker-a", "ticker-b", "evil", "crash"];
    let app = app(&names, &[40.0, 20.0, 20.0, 10.0, 5.0, 5.0], &[(3, VmState::Paused), (5, crashed())]);
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
