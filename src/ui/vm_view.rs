//! One VM as the terminal UI shows it: its console lines, counters, share,
//! exits and what it has done, kept from the core's events. Shared by the
//! app and the components that draw a VM (the inspector, the lesson checks).

use std::collections::VecDeque;

use crate::console::{LineBuffer, escape};
use crate::debug::DebuggerStatus;
use crate::event::{LIVE_EXITS, StepResult, VmState};
use crate::record::{ExitKind, ExitRecord};
use crate::stats::{LockCounts, VmCounters};
use crate::vm::{RegisterDump, SetupStep};

/// Console lines kept per VM.
pub const CONSOLE_LINES: usize = 1000;

/// One VM as the UI shows it.
#[derive(Debug, Clone)]
pub struct VmView {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: VmState,
    /// Console lines, escaped, oldest first.
    pub lines: VecDeque<String>,
    partial: LineBuffer,
    /// The line being written (escaped), if any.
    pub pending: String,
    /// Console bytes lost because the UI fell behind.
    pub dropped: u64,
    /// Counters at the last sample.
    pub counters: VmCounters,
    /// Counters per second over the last second or more ([`RateWindow`]).
    pub rates: VmCounters,
    /// Its share of guest time over the same window.
    pub share: f64,
    /// Recent shares, in per mille, oldest first.
    pub share_history: VecDeque<u64>,
    /// Lines scrolled back from the newest.
    pub scroll: usize,
    /// Its newest exits (at most [`LIVE_EXITS`]), oldest first.
    pub exits: VecDeque<ExitRecord>,
    /// What its last step came to, and its registers after it.
    pub last_step: Option<(StepResult, RegisterDump)>,
    /// Steps taken (`s`), whatever they came to.
    pub steps: u64,
    /// The vCPU `s` runs (`v` chooses); `None`: whichever's turn it is.
    pub step_vcpu: Option<u16>,
    /// The core that runs it (shown with several).
    pub core: usize,
    /// The cores it is pinned to (empty: any).
    pub pin: Vec<usize>,
    /// Lines the guest printed (not the hypervisor's `[matrix]` lines).
    pub lines_printed: u64,
    /// Exit kinds seen so far.
    pub seen_kinds: Vec<ExitKind>,
    /// Hypercalls seen so far, by name.
    pub seen_hypercalls: Vec<&'static str>,
    /// How its machine was set up, step by step.
    pub setup: Vec<SetupStep>,
    /// Its mode, image and entry, in a line.
    pub setup_summary: String,
    /// Its debugger's latest news (for a VM run with `--gdb`).
    pub debugger: Option<DebuggerStatus>,
    /// Where its gdb server listens.
    pub gdb_address: Option<String>,
    /// The rounds of its latest migration out.
    pub move_rounds: super::move_rounds::MoveRounds,
    /// Its latest `[matrix]` line and when it came (the run's clock as the
    /// UI last heard it), for a compact row to show it a while.
    pub last_note: Option<(String, u64)>,
    /// The run's clock as the UI last heard it (ns since the start).
    pub(super) clock_ns: u64,
    /// Its vCPUs as the last two samples show them (empty for a VM of one).
    pub vcpus: Vec<VcpuLine>,
    /// The vCPUs' last sample and when it came, to take differences from.
    vcpus_before: (u64, Vec<crate::event::VcpuSample>),
}

/// One vCPU of a VM of several, as its pane shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VcpuLine {
    /// `run`, `sleep`, `wait` or `halt`.
    pub state: &'static str,
    /// Its charged time over the time between the last two samples.
    pub share: f64,
    /// Its exits per second over the same time.
    pub exits_per_s: f64,
    /// The part of its loop iterations spent spinning over the same time,
    /// in percent, as its lock record says (None for a guest that shares none).
    pub spin_pct: Option<f64>,
}

impl VmView {
    /// Takes a sample of its vCPUs at `elapsed_ns`: their states now, their
    /// shares and exit rates since the sample before.
    pub(super) fn take_vcpus(&mut self, elapsed_ns: u64, now: &[crate::event::VcpuSample]) {
        let (before_ns, before) = &self.vcpus_before;
        let span = elapsed_ns.saturating_sub(*before_ns) as f64;
        self.vcpus = now
            .iter()
            .enumerate()
            .map(|(index, vcpu)| {
                let earlier = before.get(index).filter(|_| before.len() == now.len() && span > 0.0);
                let (share, exits_per_s, spin_pct) = earlier.map_or((0.0, 0.0, None), |earlier| {
                    let charged = vcpu.charged_ns.saturating_sub(earlier.charged_ns) as f64;
                    let exits = vcpu.exits.saturating_sub(earlier.exits) as f64;
                    let counts = |sample: &crate::event::VcpuSample| LockCounts {
                        spins: sample.lock_spins,
                        work: sample.lock_work,
                        ..Default::default()
                    };
                    (charged / span, exits * 1e9 / span, counts(vcpu).spin_pct_since(&counts(earlier)))
                });
                VcpuLine { state: vcpu.state, share, exits_per_s, spin_pct }
            })
            .collect();
        self.vcpus_before = (elapsed_ns, now.to_vec());
    }

    pub(super) fn new(name: String) -> Self {
        Self {
            name,
            state: VmState::Running,
            lines: VecDeque::new(),
            partial: LineBuffer::default(),
            pending: String::new(),
            dropped: 0,
            counters: VmCounters::default(),
            rates: VmCounters::default(),
            share: 0.0,
            share_history: VecDeque::new(),
            scroll: 0,
            exits: VecDeque::new(),
            last_step: None,
            steps: 0,
            step_vcpu: None,
            core: 0,
            pin: Vec::new(),
            lines_printed: 0,
            seen_kinds: Vec::new(),
            seen_hypercalls: Vec::new(),
            setup: Vec::new(),
            setup_summary: String::new(),
            debugger: None,
            gdb_address: None,
            move_rounds: Default::default(),
            last_note: None,
            clock_ns: 0,
            vcpus: Vec::new(),
            vcpus_before: (0, Vec::new()),
        }
    }

    pub(super) fn push_console(&mut self, bytes: &[u8], dropped: u64) {
        if dropped > 0 {
            self.dropped += dropped;
            self.push_line(format!("... {dropped} bytes dropped"));
        }
        let mut complete = Vec::new();
        self.partial.push(bytes, |line| complete.push(escape(line)));
        for line in complete {
            if !line.starts_with(crate::console::NOTE_PREFIX) {
                self.lines_printed += 1;
            }
            self.push_line(line);
        }
        self.pending = self.partial.peek().map(escape).unwrap_or_default();
    }

    pub(super) fn push_exits(&mut self, records: Vec<ExitRecord>) {
        for record in records {
            // A stepped exit comes twice (with the step and in the batch).
            if self.exits.back().is_some_and(|last| last.number >= record.number && last.t_ns >= record.t_ns) {
                continue;
            }
            if !self.seen_kinds.contains(&record.kind) {
                self.seen_kinds.push(record.kind);
            }
            if let Some(name) = record.call.hypercall.map(|call| call.name()) {
                if !self.seen_hypercalls.contains(&name) {
                    self.seen_hypercalls.push(name);
                }
            }
            if self.exits.len() == LIVE_EXITS {
                self.exits.pop_front();
            }
            self.exits.push_back(record);
        }
    }

    /// Ends the unfinished line (its VM ended): it becomes a line.
    pub(super) fn finish_partial(&mut self) {
        if let Some(partial) = self.partial.take_partial() {
            self.push_line(escape(&partial));
            self.pending.clear();
        }
    }

    pub(super) fn push_line(&mut self, line: String) {
        if line.starts_with(crate::console::NOTE_PREFIX) {
            self.last_note = Some((line.clone(), self.clock_ns));
        }
        if self.lines.len() == CONSOLE_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
        if self.scroll > 0 {
            // Keep the view still while the user reads back.
            self.scroll = (self.scroll + 1).min(self.lines.len());
        }
    }
}
