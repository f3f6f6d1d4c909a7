//! The terminal UI's state: what the core has told it, what the user selected,
//! and the commands the user's actions turn into. No terminal in here, so it is
//! tested as plain state.

use crate::sched::shares::pinned_machine_shares;
use std::time::Duration;

use super::inspector::Inspector;
use super::lesson_panel::{LessonProgress, LessonState};
use super::rates::RateWindow;
use super::timeline::Timeline;
pub use super::vm_view::VmView;
use crate::config::TimerKind;
use crate::config::{MAX_QUANTUM, MAX_WEIGHT, MIN_QUANTUM, MIN_WEIGHT, Policy};
use crate::debug::DebuggerStatus;
use crate::event::{Command, Event, Settings, StepResult, VmSample, VmState};

pub use super::vm_view::CONSOLE_LINES;
/// Share samples kept per VM for the sparkline (a minute at five a second).
pub const SHARE_HISTORY: usize = 300;
/// How much `+` and `-` move the selected VM's target share.
pub const SHARE_STEP: f64 = 0.05;

/// What the user can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Select the next VM.
    SelectNext,
    /// Select the previous VM.
    SelectPrevious,
    /// Select VM n.
    Select(usize),
    /// Raise the selected VM's target share.
    MoreShare,
    /// Lower it.
    LessShare,
    /// Pause or resume the selected VM.
    TogglePause,
    /// Restart the selected VM.
    Restart,
    /// Next policy.
    CyclePolicy,
    /// Call the selected VM's move off before its hand-over.
    CancelMigration,
    /// The next shorter quantum of [`QUANTUM_LADDER`].
    ShorterQuantum,
    /// The next longer quantum of [`QUANTUM_LADDER`].
    LongerQuantum,
    /// Freeze or unfreeze the display.
    ToggleFreeze,
    /// Clear the selected console.
    ClearConsole,
    /// Scroll the selected console back.
    ScrollUp,
    /// Scroll it forward.
    ScrollDown,
    /// Show or hide the help.
    ToggleHelp,
    /// Open or close the exit inspector on the selected VM.
    ToggleInspector,
    /// Next inspector filter: hypercalls, other exits, all.
    CycleFilter,
    /// Run the selected VM to its next exit and pause it there.
    Step,
    /// Pin the selected VM to the next core (with several), then unpin it.
    CyclePin,
    /// Choose which vCPU of the selected VM `s` runs: the next one, or
    /// whichever's turn it is after the last.
    ChooseStepVcpu,
    /// Save the selected VM to the next free NAME-N.snap here.
    Snapshot,
    /// Move the selected VM to the `--migrate-to` address.
    Migrate,
    /// Turn auto-converge on or off.
    ToggleAutoConverge,
    /// Show or hide the schedule timeline.
    ToggleTimeline,
    /// A shorter timeline window.
    ZoomIn,
    /// A longer timeline window.
    ZoomOut,
    /// Show or hide the lesson panel.
    ToggleLesson,
    /// Leave.
    Quit,
}

/// The whole UI state.
#[derive(Debug, Clone)]
pub struct App {
    /// The VMs, in run order.
    pub vms: Vec<VmView>,
    /// The core's settings, as last reported.
    pub settings: Settings,
    /// The selected VM.
    pub selected: usize,
    /// The display is frozen (the VMs keep running).
    pub frozen: bool,
    /// The help overlay is shown.
    pub help: bool,
    /// Nanoseconds since the run started, at the last sample.
    pub elapsed_ns: u64,
    /// Guest exits per second over all VMs.
    pub exits_per_s: f64,
    /// With several cores, each core's charged time over the last second
    /// (1.0: all of it), by the core each VM is on now.
    pub core_use: Vec<f64>,
    /// The user asked to quit.
    pub quitting: bool,
    /// The exit inspector, when it is open (`e`).
    pub inspector: Option<Inspector>,
    /// The schedule timeline (`t` shows it).
    pub timeline: Timeline,
    /// The lesson being followed, if any.
    pub lesson: Option<LessonProgress>,
    /// Where `M` moves the selected VM (`--migrate-to`).
    pub migrate_to: Option<crate::debug::ListenAddress>,
    /// Migrations throttle VMs that dirty faster than they are sent (`A`).
    pub auto_converge: bool,
    /// Snapshots asked for that were not written, and why (the run's
    /// status and stderr say so at the end, as headless).
    pub failed_snapshots: Vec<String>,
    window: RateWindow,
    /// The time the rates and shares span (see [`RateWindow::span_ns`]).
    pub rates_span_ns: u64,
}

impl App {
    /// A UI for VMs called `names` with `weights`, under `policy`.
    pub fn new(names: Vec<String>, settings: Settings) -> Self {
        Self {
            vms: names.into_iter().map(VmView::new).collect(),
            settings,
            selected: 0,
            frozen: false,
            help: false,
            elapsed_ns: 0,
            exits_per_s: 0.0,
            core_use: Vec::new(),
            quitting: false,
            inspector: None,
            timeline: Timeline::default(),
            lesson: None,
            migrate_to: None,
            auto_converge: false,
            failed_snapshots: Vec::new(),
            window: RateWindow::default(),
            rates_span_ns: 0,
        }
    }

    /// The share the policy pursues for `vm` now: under `fair` its weight
    /// over the weights of the VMs that can run, under `rr` an equal part of
    /// the CPU among them, under `io` none (it does not aim at shares); none
    /// either for a VM that cannot run (paused, halted, crashed).
    pub fn target(&self, vm: usize) -> Option<f64> {
        if self.vms.get(vm)?.state != VmState::Running {
            return None;
        }
        // rr's turns are equal weights; either way, weights are shares of
        // all the cores, a core per VM at most.
        let weight = |other: usize| match self.settings.policy {
            Policy::Rr => 1.0,
            _ => self.weight(other),
        };
        let weights: Vec<f64> = (self.vms.iter().enumerate())
            .map(|(other, view)| if view.state == VmState::Running { weight(other) } else { 0.0 })
            .collect();
        // Of the guests' time, as the bars are: where pins, too few VMs or
        // gang's windows leave a core idle, what the others have is all of it.
        let shares = match self.settings.policy {
            Policy::Io => return None,
            Policy::Rr | Policy::Fair => {
                let pins: Vec<Vec<usize>> = self.vms.iter().map(|view| view.pin.clone()).collect();
                pinned_machine_shares(&weights, self.settings.cpus, &pins)
            }
            Policy::Gang => {
                // Gang VMs in their windows, the others in the time between.
                let vcpus: Vec<usize> = self.vms.iter().map(|view| view.vcpus.len().max(1)).collect();
                crate::sched::gang::gang_cores(&weights, &vcpus, self.settings.cpus)
            }
        };
        let used: f64 = shares.iter().sum();
        shares.get(vm).copied().filter(|&share| share > 0.0).map(|share| share / used)
    }

    /// The cores VM `vm` runs on: its own, or under gang, for a VM of
    /// several vCPUs, each of its lanes' (in vCPU order).
    pub fn cores_of(&self, vm: usize) -> Vec<usize> {
        let view = &self.vms[vm];
        match view.vcpus.len() {
            vcpus if self.settings.policy == Policy::Gang && vcpus > 1 => {
                crate::sched::gang::lane_cores(view.core, vcpus, self.settings.cpus)
            }
            _ => vec![view.core],
        }
    }

    fn weight(&self, vm: usize) -> f64 {
        self.settings.weights.get(vm).copied().unwrap_or(0.0)
    }

    /// Takes in an event from the core; true if anything shown changed.
    pub fn apply(&mut self, event: Event) -> bool {
        let changed = self.apply_event(event);
        self.refresh_lesson() || changed
    }

    /// Ticks the lesson's steps that now hold; true if any did.
    fn refresh_lesson(&mut self) -> bool {
        let Some(mut lesson) = self.lesson.take() else { return false };
        let state = LessonState {
            vms: &self.vms,
            policy: self.settings.policy,
            targets: (0..self.vms.len()).map(|vm| self.target(vm)).collect(),
            inspector_open: self.inspector.is_some(),
            timeline_shown: self.timeline.shown,
            timeline_window_ns: self.timeline.window_ns(),
            selected: self.selected,
            rates_span_ns: self.rates_span_ns,
        };
        let ticked = lesson.advance(&state);
        self.lesson = Some(lesson);
        ticked
    }

    fn apply_event(&mut self, event: Event) -> bool {
        match event {
            Event::Console(batch) => {
                for piece in batch.pieces() {
                    if let Some(view) = self.vms.get_mut(piece.vm) {
                        view.push_console(piece.bytes, piece.dropped);
                    }
                }
            }
            Event::State { vm, state } => {
                if let Some(view) = self.vms.get_mut(vm) {
                    if state.is_finished() {
                        view.finish_partial();
                    }
                    if state == VmState::Running && view.state.is_finished() {
                        view.share_history.clear();
                    }
                    view.state = state;
                }
            }
            Event::Settings(settings) => self.settings = settings,
            Event::Round { vm, round, ends } => {
                if let Some(view) = self.vms.get_mut(vm) {
                    view.move_rounds.push(round, ends);
                }
            }
            Event::Debugger { vm, status, .. } => {
                if let Some(view) = self.vms.get_mut(vm) {
                    if let DebuggerStatus::Listening { address, .. } = &status {
                        view.gdb_address = Some(address.clone());
                    }
                    // The pane logs it as the hypervisor's line, as headless runs print it.
                    view.push_line(format!("{}{}", crate::console::NOTE_PREFIX, status.describe()));
                    // Stops, continues and refusals do not change who is connected.
                    let connection = !matches!(
                        status,
                        DebuggerStatus::Refused { .. } | DebuggerStatus::Continued | DebuggerStatus::Stopped(_)
                    );
                    if connection {
                        view.debugger = Some(status);
                    }
                }
            }
            Event::Exits { vm, records } => {
                if let Some(view) = self.vms.get_mut(vm) {
                    view.push_exits(records);
                }
                // Kept for the inspector; nothing on screen changed unless it shows them.
                return self.inspector.is_some() && vm == self.selected;
            }
            Event::Setup { vm, steps, summary } => {
                if let Some(view) = self.vms.get_mut(vm) {
                    view.setup = steps;
                    view.setup_summary = summary;
                }
                return self.inspector.is_some() && vm == self.selected;
            }
            Event::Slices { records, dropped } => {
                self.timeline.push(records, dropped);
                return self.timeline.shown;
            }
            Event::Stepped { vm, result, registers, .. } => {
                if let Some(view) = self.vms.get_mut(vm) {
                    if let StepResult::Exit(exit) = result {
                        view.push_exits(vec![exit]);
                    }
                    view.last_step = Some((result, registers));
                    if result != StepResult::Finished {
                        view.steps += 1;
                    }
                }
            }
            Event::Snapshot { vm, path, result, .. } => {
                // Written here, on the UI thread: the core may not open files,
                // and a key press's snapshot is worth a frame's delay.
                let line = result.and_then(|taken| taken.write(&path)).unwrap_or_else(|error| {
                    let why = format!("snapshot not taken: {error}");
                    let name = self.vms.get(vm).map_or("?", |view| view.name.as_str());
                    self.failed_snapshots.push(format!("VM '{}': {why}", crate::console::escape_input(name)));
                    why
                });
                if let Some(view) = self.vms.get_mut(vm) {
                    view.push_line(format!("{}{line}", crate::console::NOTE_PREFIX));
                }
            }
            Event::Added { vm, name } => {
                if vm == self.vms.len() {
                    self.vms.push(VmView::new(name));
                }
            }
            Event::Notice { text, .. } => {
                // No pane of its own: it goes to the selected VM's, marked as the hypervisor's.
                if let Some(view) = self.vms.get_mut(self.selected) {
                    view.push_line(format!("{}{text}", crate::console::NOTE_PREFIX));
                }
            }
            Event::Sample { elapsed_ns, vms } => self.apply_sample(elapsed_ns, vms),
            Event::Finished(_) => {}
        }
        true
    }

    fn apply_sample(&mut self, elapsed_ns: u64, samples: Vec<VmSample>) {
        self.elapsed_ns = elapsed_ns;
        for view in &mut self.vms {
            view.clock_ns = elapsed_ns;
        }
        for (view, sample) in self.vms.iter_mut().zip(&samples) {
            view.counters = sample.counters;
            view.core = sample.core;
            view.pin.clone_from(&sample.pin);
            if !sample.vcpus.is_empty() {
                view.take_vcpus(elapsed_ns, &sample.vcpus);
            }
        }
        self.window.push(elapsed_ns, samples);
        self.rates_span_ns = self.window.span_ns();
        let Some(figures) = self.window.figures() else { return };
        for (view, figures) in self.vms.iter_mut().zip(&figures) {
            view.rates = figures.rates;
            view.share = figures.share;
            if view.share_history.len() == SHARE_HISTORY {
                view.share_history.pop_front();
            }
            view.share_history.push_back((view.share * 1000.0).round() as u64);
        }
        self.exits_per_s = self.vms.iter().map(|view| view.rates.exits.total() as f64).sum();
        // Each core's use: its VMs' charged time over the window, by the core each is on now.
        self.core_use = vec![0.0; self.settings.cpus];
        for (vm, figures) in figures.iter().enumerate() {
            // Under gang a VM of several vCPUs runs on each of its lanes' cores in its windows.
            let lanes = self.cores_of(vm);
            for &core in &lanes {
                if let Some(used) = self.core_use.get_mut(core) {
                    *used += figures.cores_used / lanes.len() as f64;
                }
            }
        }
    }

    /// Carries out a user action; returns the commands for the core.
    pub fn act(&mut self, action: Action) -> Vec<Command> {
        let commands = self.act_on(action);
        self.refresh_lesson();
        commands
    }

    fn act_on(&mut self, action: Action) -> Vec<Command> {
        let count = self.vms.len();
        let vm = self.selected;
        // A run waiting for incoming VMs may have none yet.
        if count == 0 {
            match action {
                Action::Quit => self.quitting = true,
                Action::ToggleHelp => self.help = !self.help,
                _ => {}
            }
            return Vec::new();
        }
        match action {
            Action::SelectNext => self.select((vm + 1) % count),
            Action::SelectPrevious => self.select((vm + count - 1) % count),
            Action::Select(index) if index < count => self.select(index),
            Action::Select(_) => {}
            Action::MoreShare => return self.move_share(SHARE_STEP),
            Action::LessShare => return self.move_share(-SHARE_STEP),
            Action::TogglePause => match self.vms[vm].state {
                VmState::Running | VmState::Sleeping { .. } | VmState::Throttled { .. } => {
                    return vec![Command::Pause(vm)];
                }
                // Let go of a VM stopped for gdb (the core refuses while gdb is connected).
                VmState::Paused | VmState::Gdb { .. } => return vec![Command::Resume(vm)],
                _ => {}
            },
            Action::Restart => return vec![Command::Restart(vm)],
            Action::ToggleAutoConverge => {
                self.auto_converge = !self.auto_converge;
                return vec![Command::SetAutoConverge(self.auto_converge)];
            }
            Action::Migrate => match &self.migrate_to {
                Some(address) => return vec![Command::MigrateTo { vm, address: address.clone() }],
                None => self.vms[vm].push_line(format!(
                    "{}M moves a VM to the matrix-tui at --migrate-to ADDR: start with that option",
                    crate::console::NOTE_PREFIX
                )),
            },
            Action::CancelMigration => return vec![Command::CancelMigration(vm)],
            Action::Snapshot => {
                let path = crate::snapshot::file::next_free_name(std::path::Path::new(""), &self.vms[vm].name);
                return vec![Command::Snapshot { vm, path }];
            }
            Action::CyclePolicy => {
                let cpus = self.settings.cpus;
                // gang means nothing on one core, and refuses a VM wider than the cores.
                let gang_fits = cpus > 1 && self.vms.iter().all(|view| view.vcpus.len() <= cpus);
                let next = match self.settings.policy.next() {
                    Policy::Gang if !gang_fits => Policy::Io,
                    next => next,
                };
                return vec![Command::SetPolicy(next)];
            }
            Action::ShorterQuantum => return self.step_quantum(false),
            Action::LongerQuantum => return self.step_quantum(true),
            Action::ToggleFreeze => self.frozen = !self.frozen,
            Action::ClearConsole => {
                let view = &mut self.vms[vm];
                view.lines.clear();
                view.scroll = 0;
            }
            Action::ScrollUp => match &mut self.inspector {
                Some(inspector) => inspector.scroll = (inspector.scroll + 10).min(self.vms[vm].exits.len()),
                None => {
                    let view = &mut self.vms[vm];
                    view.scroll = (view.scroll + 10).min(view.lines.len());
                }
            },
            Action::ScrollDown => match &mut self.inspector {
                Some(inspector) => inspector.scroll = inspector.scroll.saturating_sub(10),
                None => {
                    let view = &mut self.vms[vm];
                    view.scroll = view.scroll.saturating_sub(10);
                }
            },
            Action::ToggleHelp => self.help = !self.help,
            Action::ToggleInspector => {
                self.inspector = match self.inspector {
                    Some(_) => None,
                    None => Some(Inspector::default()),
                }
            }
            Action::CycleFilter => {
                if let Some(inspector) = &mut self.inspector {
                    inspector.filter = inspector.filter.next();
                    inspector.scroll = 0;
                }
            }
            Action::Step => {
                // Stepping is watched in the inspector: open it on this VM.
                self.inspector.get_or_insert_with(Inspector::default).scroll = 0;
                return vec![Command::Step { vm, vcpu: self.vms[vm].step_vcpu }];
            }
            Action::CyclePin => {
                // Unpinned, then each core in turn, then unpinned again.
                let view = &self.vms[vm];
                let cores = match view.pin.as_slice() {
                    _ if self.settings.cpus < 2 => return Vec::new(),
                    [] => vec![0],
                    [core] if core + 1 < self.settings.cpus => vec![core + 1],
                    _ => Vec::new(),
                };
                return vec![Command::Pin { vm, cores }];
            }
            Action::ChooseStepVcpu => {
                let view = &mut self.vms[vm];
                let count = view.vcpus.len() as u16;
                view.step_vcpu = match view.step_vcpu {
                    _ if count < 2 => None,
                    None => Some(0),
                    Some(vcpu) if vcpu + 1 < count => Some(vcpu + 1),
                    Some(_) => None,
                };
            }
            Action::ToggleTimeline => self.timeline.shown = !self.timeline.shown,
            Action::ToggleLesson => {
                if let Some(lesson) = &mut self.lesson {
                    lesson.shown = !lesson.shown;
                }
            }
            Action::ZoomIn => self.timeline.zoom(-1),
            Action::ZoomOut => self.timeline.zoom(1),
            Action::Quit => {
                self.quitting = true;
                return vec![Command::Quit];
            }
        }
        Vec::new()
    }

    fn select(&mut self, vm: usize) {
        self.selected = vm;
        if let Some(inspector) = &mut self.inspector {
            inspector.scroll = 0;
        }
    }

    /// Moves the selected VM's share of the weights by `step` (5 points)
    /// among the VMs that can run (and itself), scaling the others' so that
    /// the shares still add up. Weights become percentages (raised so that the
    /// smallest is at least [`MIN_WEIGHT`]); VMs that cannot run keep theirs.
    fn move_share(&mut self, step: f64) -> Vec<Command> {
        let selected = self.selected;
        let group: Vec<usize> =
            (0..self.vms.len()).filter(|&vm| vm == selected || self.vms[vm].state == VmState::Running).collect();
        if group.len() < 2 {
            return Vec::new();
        }
        let total: f64 = group.iter().map(|&vm| self.weight(vm)).sum();
        let current = self.weight(selected) / total;
        let wanted = (((current + step) * 100.0).round() / 100.0).clamp(0.01, 0.99);
        if (wanted - current).abs() < 1e-9 {
            return Vec::new();
        }
        let others = 1.0 - current;
        let shares: Vec<f64> = group
            .iter()
            .map(|&vm| {
                if vm == selected {
                    wanted
                } else if others > 0.0 {
                    self.weight(vm) / total / others * (1.0 - wanted)
                } else {
                    (1.0 - wanted) / (group.len() - 1) as f64
                }
            })
            .collect();
        let smallest = shares.iter().copied().fold(f64::INFINITY, f64::min);
        let scale = (100.0f64).max(MIN_WEIGHT / smallest);
        let weights: Vec<f64> =
            shares.iter().map(|share| ((share * scale * 10.0).round() / 10.0).clamp(MIN_WEIGHT, MAX_WEIGHT)).collect();
        // Shown at once, before the core confirms.
        for (&vm, &weight) in group.iter().zip(&weights) {
            self.settings.weights[vm] = weight;
        }
        group.into_iter().zip(weights).map(|(vm, weight)| Command::SetWeight { vm, weight }).collect()
    }

    /// The next rung of [`QUANTUM_LADDER`] above or below the quantum in
    /// force (which may lie between rungs, given on the command line).
    fn step_quantum(&mut self, longer: bool) -> Vec<Command> {
        let now = self.settings.quantum;
        let next = if longer {
            QUANTUM_LADDER.iter().find(|&&rung| rung > now)
        } else {
            QUANTUM_LADDER.iter().rev().find(|&&rung| rung < now)
        };
        let Some(&quantum) = next else { return Vec::new() };
        self.settings.quantum = quantum;
        vec![Command::SetQuantum(quantum)]
    }
}

/// The quanta `[` and `]` step through, 1-2-5 from [`MIN_QUANTUM`] to
/// [`MAX_QUANTUM`]: any way up and down comes back to where it began.
pub const QUANTUM_LADDER: [Duration; 13] = [
    MIN_QUANTUM,
    Duration::from_micros(200),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(500),
    MAX_QUANTUM,
];

/// Settings for a UI that has not heard from the core yet.
pub fn initial_settings(policy: Policy, quantum: Duration, timer: TimerKind, weights: Vec<f64>) -> Settings {
    Settings { policy, quantum, timer, weights, cpus: 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::VmCounters;

    fn app() -> App {
        App::new(
            vec!["neo".into(), "morpheus".into()],
            initial_settings(Policy::Fair, Duration::from_millis(1), TimerKind::Posix, vec![70.0, 30.0]),
        )
    }

    #[test]
    fn plus_moves_the_selected_target_by_five_points() {
        let mut app = app();
        let commands = app.act(Action::MoreShare);
        assert_eq!(commands, [Command::SetWeight { vm: 0, weight: 75.0 }, Command::SetWeight { vm: 1, weight: 25.0 }]);
        assert!((app.target(0).unwrap() - 0.75).abs() < 1e-9);
        app.act(Action::SelectNext);
        app.act(Action::LessShare);
        assert!((app.target(1).unwrap() - 0.20).abs() < 1e-9);
        assert!((app.target(0).unwrap() - 0.80).abs() < 1e-9);
    }

    #[test]
    fn with_several_cores_targets_follow_pins_as_shares_of_the_guests_time() {
        let mut settings =
            initial_settings(Policy::Fair, Duration::from_millis(1), TimerKind::Posix, vec![1.0, 1.0, 1.0]);
        settings.cpus = 2;
        let mut app = App::new(vec!["a".into(), "b".into(), "c".into()], settings);
        let targets = |app: &App| (0..3).map(|vm| app.target(vm).unwrap()).collect::<Vec<f64>>();
        let close = |got: Vec<f64>, want: [f64; 3]| got.iter().zip(want).all(|(got, want)| (got - want).abs() < 1e-9);
        // Three on two cores: two thirds of a core each, a third of the guests' time.
        assert!(close(targets(&app), [1.0 / 3.0; 3]), "{:?}", targets(&app));
        // a and b pinned to core 0 share it; c has core 1.
        (app.vms[0].pin, app.vms[1].pin) = (vec![0], vec![0]);
        assert!(close(targets(&app), [0.25, 0.25, 0.5]), "{:?}", targets(&app));
        // c pinned there too: core 1 idles, and each has a third of what runs.
        app.vms[2].pin = vec![0];
        assert!(close(targets(&app), [1.0 / 3.0; 3]), "{:?}", targets(&app));
    }

    #[test]
    fn under_gang_a_pair_beside_a_spinner_has_a_core_and_m_skips_gang_where_it_cannot_run() {
        let mut settings = initial_settings(Policy::Gang, Duration::from_millis(5), TimerKind::Posix, vec![1.0, 1.0]);
        settings.cpus = 2;
        let mut app = App::new(vec!["pair".into(), "spin".into()], settings);
        let line = crate::ui::vm_view::VcpuLine { state: "run", share: 0.5, exits_per_s: 0.0, spin_pct: None };
        app.vms[0].vcpus = vec![line, line];
        // One core's worth against half a core: two thirds of the guests' time.
        let (pair, spin) = (app.target(0).unwrap(), app.target(1).unwrap());
        assert!((pair - 2.0 / 3.0).abs() < 1e-9 && (spin - 1.0 / 3.0).abs() < 1e-9, "{pair} {spin}");
        app.settings.policy = Policy::Fair;
        assert_eq!(app.act(Action::CyclePolicy), [Command::SetPolicy(Policy::Gang)]);
        // One core, or a VM wider than the cores: gang is passed over.
        app.settings.cpus = 1;
        assert_eq!(app.act(Action::CyclePolicy), [Command::SetPolicy(Policy::Io)]);
        app.settings.cpus = 2;
        app.vms[0].vcpus = vec![line; 3];
        assert_eq!(app.act(Action::CyclePolicy), [Command::SetPolicy(Policy::Io)]);
    }

    #[test]
    fn v_chooses_each_vcpu_in_turn_and_s_steps_the_chosen_one() {
        let mut app = app();
        assert_eq!(app.act(Action::Step), [Command::Step { vm: 0, vcpu: None }]);
        app.act(Action::ChooseStepVcpu);
        assert_eq!(app.vms[0].step_vcpu, None, "a VM of one vCPU has nothing to choose");
        let line = crate::ui::vm_view::VcpuLine { state: "run", share: 0.5, exits_per_s: 0.0, spin_pct: None };
        app.vms[0].vcpus = vec![line, line];
        let mut stepped = Vec::new();
        for _ in 0..3 {
            app.act(Action::ChooseStepVcpu);
            stepped.extend(app.act(Action::Step));
        }
        let expected = [Some(0), Some(1), None].map(|vcpu| Command::Step { vm: 0, vcpu });
        assert_eq!(stepped, expected);
    }

    #[test]
    fn o_pins_the_selected_vm_to_each_core_in_turn_then_unpins_it() {
        let mut app = app();
        assert!(app.act(Action::CyclePin).is_empty(), "one core: nothing to pin to");
        app.settings.cpus = 2;
        let mut asked = Vec::new();
        for pin in [vec![], vec![0], vec![1]] {
            app.vms[0].pin = pin;
            asked.extend(app.act(Action::CyclePin));
        }
        let expected = [vec![0], vec![1], vec![]].map(|cores| Command::Pin { vm: 0, cores });
        assert_eq!(asked, expected);
    }

    #[test]
    fn targets_stay_between_one_and_ninety_nine_percent() {
        let mut app = app();
        for _ in 0..30 {
            app.act(Action::MoreShare);
        }
        assert!((app.target(0).unwrap() - 0.99).abs() < 1e-9);
        assert!(app.act(Action::MoreShare).is_empty());
        assert!(app.settings.weights.iter().all(|&w| (MIN_WEIGHT..=MAX_WEIGHT).contains(&w)), "{:?}", app.settings);
    }

    fn classroom() -> App {
        let names = ["neo", "morpheus", "ticker-a", "ticker-b", "evil", "crash"].map(String::from).to_vec();
        let weights = vec![40.0, 20.0, 20.0, 10.0, 5.0, 5.0];
        App::new(names, initial_settings(Policy::Fair, Duration::from_millis(1), TimerKind::Posix, weights))
    }

    #[test]
    fn the_target_is_over_the_vms_that_can_run() {
        let mut app = classroom();
        assert!((app.target(0).unwrap() - 0.40).abs() < 1e-9);
        // evil halts, crash crashes: neo's 40 is now of 90, not of 100.
        app.apply(Event::State { vm: 4, state: VmState::Halted { registers: Default::default(), t_ns: 0 } });
        app.apply(Event::State {
            vm: 5,
            state: VmState::Crashed { reason: "triple fault".into(), registers: Default::default() },
        });
        assert!((app.target(0).unwrap() - 40.0 / 90.0).abs() < 1e-9);
        assert_eq!((app.target(4), app.target(5)), (None, None));
        // A paused VM has no target, and its weight leaves the others' sum.
        app.apply(Event::State { vm: 1, state: VmState::Paused });
        assert!((app.target(0).unwrap() - 40.0 / 70.0).abs() < 1e-9);
        assert_eq!(app.target(1), None);
        let targets: f64 = (0..6).filter_map(|vm| app.target(vm)).sum();
        assert!((targets - 1.0).abs() < 1e-9);
    }

    #[test]
    fn rr_targets_are_equal_and_io_has_none() {
        let mut app = classroom();
        app.apply(Event::Settings(Settings { policy: Policy::Rr, ..app.settings.clone() }));
        app.apply(Event::State { vm: 5, state: VmState::Halted { registers: Default::default(), t_ns: 0 } });
        assert!((app.target(0).unwrap() - 0.2).abs() < 1e-9);
        app.apply(Event::Settings(Settings { policy: Policy::Io, ..app.settings.clone() }));
        assert_eq!(app.target(0), None);
    }

    #[test]
    fn plus_moves_the_share_among_the_vms_that_can_run() {
        let mut app = classroom();
        app.apply(Event::State { vm: 4, state: VmState::Halted { registers: Default::default(), t_ns: 0 } });
        app.apply(Event::State { vm: 5, state: VmState::Halted { registers: Default::default(), t_ns: 0 } });
        let commands = app.act(Action::MoreShare);
        assert_eq!(commands.len(), 4, "only the running VMs get new weights: {commands:?}");
        assert!((app.target(0).unwrap() - 0.49).abs() < 1e-3, "{:?}", app.target(0));
        assert_eq!(&app.settings.weights[4..], [5.0, 5.0]);
    }

    #[test]
    fn keys_for_one_vm_become_commands_for_it() {
        let mut app = app();
        app.act(Action::SelectNext);
        assert_eq!(app.act(Action::TogglePause), [Command::Pause(1)]);
        app.apply(Event::State { vm: 1, state: VmState::Paused });
        assert_eq!(app.act(Action::TogglePause), [Command::Resume(1)]);
        assert_eq!(app.act(Action::Restart), [Command::Restart(1)]);
        assert_eq!(app.act(Action::CyclePolicy), [Command::SetPolicy(Policy::Io)]);
        assert_eq!(app.act(Action::ShorterQuantum), [Command::SetQuantum(Duration::from_micros(500))]);
        assert_eq!(app.act(Action::LongerQuantum), [Command::SetQuantum(Duration::from_millis(1))]);
        assert_eq!(app.act(Action::Quit), [Command::Quit]);
        assert!(app.quitting);
    }

    #[test]
    fn the_quantum_stops_at_its_bounds() {
        let mut app = app();
        for _ in 0..10 {
            app.act(Action::ShorterQuantum);
        }
        assert_eq!(app.settings.quantum, MIN_QUANTUM);
        assert!(app.act(Action::ShorterQuantum).is_empty());
        // Back up the ladder to where it began: 1 ms, as the run started.
        for _ in 0..3 {
            app.act(Action::LongerQuantum);
        }
        assert_eq!(app.settings.quantum, Duration::from_millis(1));
        for _ in 0..20 {
            app.act(Action::LongerQuantum);
        }
        assert_eq!(app.settings.quantum, MAX_QUANTUM);
        assert!(app.act(Action::LongerQuantum).is_empty());
        // A quantum between rungs (--quantum 300us) steps to the rung beside it.
        app.settings.quantum = Duration::from_micros(300);
        assert_eq!(app.act(Action::ShorterQuantum), [Command::SetQuantum(Duration::from_micros(200))]);
        app.settings.quantum = Duration::from_micros(300);
        assert_eq!(app.act(Action::LongerQuantum), [Command::SetQuantum(Duration::from_micros(500))]);
    }

    #[test]
    fn selection_wraps_and_clicks_select() {
        let mut app = app();
        app.act(Action::SelectPrevious);
        assert_eq!(app.selected, 1);
        app.act(Action::SelectNext);
        assert_eq!(app.selected, 0);
        app.act(Action::Select(1));
        assert_eq!(app.selected, 1);
        app.act(Action::Select(7));
        assert_eq!(app.selected, 1);
    }

    #[test]
    fn console_lines_are_escaped_and_bounded() {
        let mut app = app();
        app.apply(Event::console(0, b"one\n\x1b[31mtwo\nthr", 0, 0));
        assert_eq!(app.vms[0].lines, ["one", "\\x1b[31mtwo"]);
        assert_eq!(app.vms[0].pending, "thr");
        app.apply(Event::console(0, b"ee\n", 0, 5));
        assert_eq!(app.vms[0].lines.back().unwrap(), "three");
        assert!(app.vms[0].lines.contains(&"... 5 bytes dropped".to_string()));
        let flood: Vec<u8> = b"x\n".repeat(CONSOLE_LINES * 2);
        app.apply(Event::console(0, &flood, 0, 0));
        assert_eq!(app.vms[0].lines.len(), CONSOLE_LINES);
    }

    #[test]
    fn samples_give_shares_and_rates() {
        let mut app = app();
        let sample = |cpu: [u64; 2], exits: [u64; 2]| {
            cpu.iter()
                .zip(exits)
                .map(|(&cpu_ns, io_out)| VmSample {
                    counters: VmCounters {
                        exits: crate::stats::ExitCounts { io_out, ..Default::default() },
                        ..Default::default()
                    },
                    cpu_ns,
                    charged_ns: cpu_ns,
                    vcpus: Vec::new(),
                    core: 0,
                    pin: Vec::new(),
                })
                .collect::<Vec<_>>()
        };
        app.apply(Event::Sample { elapsed_ns: 1_000_000_000, vms: sample([0, 0], [0, 0]) });
        app.apply(Event::Sample { elapsed_ns: 1_500_000_000, vms: sample([350, 150], [100, 50]) });
        assert!((app.vms[0].share - 0.7).abs() < 1e-9);
        assert_eq!(app.vms[0].rates.exits.io_out, 200);
        assert_eq!(app.exits_per_s, 300.0);
        assert_eq!(app.vms[0].counters.exits.io_out, 100);
        assert_eq!(app.vms[1].share_history.back(), Some(&300));
    }

    #[test]
    fn records_redraw_only_what_shows_them() {
        use crate::record::{SliceEnd, SliceRecord};
        let mut app = app();
        let slice = SliceRecord {
            vm: 0,
            vcpu: 0,
            start_ns: 0,
            end_ns: 10,
            charged_ns: 10,
            end: SliceEnd::Deadline,
            exits: 0,
            injected: 0,
            core: 0,
            spin_pct: None,
        };
        assert!(!app.apply(Event::Slices { records: vec![slice], dropped: 0 }), "the timeline is hidden");
        assert!(!app.apply(Event::Exits { vm: 0, records: Vec::new() }), "the inspector is closed");
        app.act(Action::ToggleTimeline);
        app.act(Action::ToggleInspector);
        assert!(app.apply(Event::Slices { records: vec![slice], dropped: 0 }));
        assert!(app.apply(Event::Exits { vm: 0, records: Vec::new() }));
        assert!(!app.apply(Event::Exits { vm: 1, records: Vec::new() }), "another VM's exits are not shown");
        assert_eq!(app.timeline.newest_ns(), 10);
    }

    #[test]
    fn freeze_help_clear_and_scroll() {
        let mut app = app();
        app.act(Action::ToggleFreeze);
        assert!(app.frozen);
        app.act(Action::ToggleHelp);
        assert!(app.help);
        app.apply(Event::console(0, &b"a\n".repeat(50), 0, 0));
        app.act(Action::ScrollUp);
        assert_eq!(app.vms[0].scroll, 10);
        app.act(Action::ScrollDown);
        assert_eq!(app.vms[0].scroll, 0);
        app.act(Action::ClearConsole);
        assert!(app.vms[0].lines.is_empty());
    }

    #[test]
    fn steps_tick_in_order_as_their_checks_hold() {
        let settings = initial_settings(Policy::Fair, Duration::from_millis(1), TimerKind::Posix, vec![70.0, 30.0]);
        let mut app = App::new(vec!["neo".into(), "morpheus".into()], settings);
        app.lesson = Some(crate::ui::lesson_panel::tests::fractions());
        // Switching to rr first does not tick step 3: step 1 comes first.
        app.apply(Event::Settings(crate::event::Settings {
            policy: crate::config::Policy::Rr,
            ..app.settings.clone()
        }));
        assert_eq!(app.lesson.as_ref().unwrap().done, 0);
        app.act(Action::ToggleTimeline);
        assert_eq!(app.lesson.as_ref().unwrap().done, 1);
        app.apply(Event::Settings(crate::event::Settings {
            policy: crate::config::Policy::Fair,
            ..app.settings.clone()
        }));
        app.act(Action::MoreShare);
        // Step 2 ticks; step 3 (rr) does not hold any more.
        assert_eq!(app.lesson.as_ref().unwrap().done, 2);
        app.apply(Event::Settings(crate::event::Settings {
            policy: crate::config::Policy::Rr,
            ..app.settings.clone()
        }));
        assert!(app.lesson.as_ref().unwrap().finished());
        app.act(Action::ToggleLesson);
        assert!(!app.lesson.as_ref().unwrap().shown);
    }
}
