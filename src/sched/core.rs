//! The scheduler core: one thread (`matrix-core`) that owns every VM and runs
//! them one at a time, slice by slice, as the [`Planner`] decides. Front ends
//! talk to it only through [`CoreHandle`]: commands in, events out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use kvm_ioctls::Kvm;

use super::compensation::Compensation;
use super::deadlines::Deadlines;
use super::policy::{Candidate, Planner, Slice};
use super::stolen::{StolenWindow, ThreadClocks, WindowSlice};
use super::vm_runtime::{Step, VmRuntime};
use crate::config::TimerKind;
use crate::config::{Calibration, MAX_QUANTUM, MIN_QUANTUM, Policy, RunConfig, VmConfig, check_weight};
use crate::console::ConsoleBatch;
use crate::debug::server::{self, Listener};
use crate::debug::session::{Debugged, Resume};
use crate::debug::{DebugEnd, DebugReply, DebugRequest, DebugStop, DebuggerStatus};
use crate::event::{Command, Event, LIVE_EXITS, Settings, StepResult, VmId, VmSample, VmState};
use crate::hypercall::GuestView;
use crate::record::{ExitRecord, SliceEnd, SliceRecord};
use crate::report::{RunReport, TimedSlice, TraceReport, VmReport, VmTimings};
use crate::stats::LatencyLog;
use crate::trace::{self, TraceBuffer, TraceRecord, TraceWriter};
use crate::vm::debug_probe;
use crate::vm::guest_debug::{DebugExit, GuestDebug};
use crate::vm::kick::monotonic_ns;
use crate::vm::{KickTarget, MachineSpec, SetupError, Vcpu, quantum_timer, seccomp};

mod debugging;

/// Events waiting in the channel before the core starts coalescing. A console
/// event carries a round's output of every VM, usually under
/// [`CONSOLE_FLUSH_BYTES`] each (up to [`CONSOLE_BACKLOG_CAP`] while the front
/// end is behind), so this bounds the bytes in flight too.
const EVENT_CAPACITY: usize = 128;
/// Console bytes one VM may have waiting for a slow front end; older ones are
/// dropped (and counted) past this.
pub const CONSOLE_BACKLOG_CAP: usize = 256 * 1024;
/// How often console bytes go out while VMs run: often enough for a screen
/// (it draws at most 30 times a second), rarely enough that the core does not
/// wake a front end after every slice (a wake-up costs several microseconds
/// here, a tenth of a 0.1 ms slice).
const CONSOLE_FLUSH_EVERY: Duration = Duration::from_millis(10);
/// With many VMs the round of console flushes comes at most once per this
/// much time per VM: a round visits every VM (about 0.1 µs each, its state
/// cold in the cache), and no VM gets a slice more often than once in that
/// time (the shortest slice is 100 µs), so more frequent rounds would find
/// no more to send. 256 VMs: every 25.6 ms.
const CONSOLE_FLUSH_PER_VM: Duration = Duration::from_micros(100);
/// A VM with this many console bytes waiting has them sent after its slice.
const CONSOLE_FLUSH_BYTES: usize = 16 * 1024;
/// How often counters are sampled for the front ends.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How long the core sleeps between checks when no VM can run.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How often exit and slice records go to the front end: 20 times a second
/// keeps the timeline moving smoothly, and each send wakes the UI thread (tens
/// of microseconds here; 100 a second cost it 0.4 % of a core).
const RECORDS_FLUSH_EVERY: Duration = Duration::from_millis(50);
/// The longest a step waits for its exit (or a quantum, if longer) before the
/// VM is preempted: a fresh VM's first entry alone can take milliseconds on a
/// busy host, and a step should not end before the guest's first instruction.
const STEP_LIMIT: Duration = Duration::from_millis(20);
/// Slice records kept for a front end that lags (the timeline's ten seconds
/// of 0.1 ms slices); older ones are dropped and counted past this.
const LIVE_SLICES: usize = 100_000;

/// A VM that could not be set up, with its name.
#[derive(Debug, thiserror::Error)]
#[error("VM '{name}' ({guest}): {source}")]
pub struct VmSetupError {
    /// The VM's name.
    pub name: String,
    /// Its GUEST.
    pub guest: String,
    /// What went wrong.
    pub source: SetupError,
}

/// Starting a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A VM could not be set up.
    #[error(transparent)]
    Vm(#[from] VmSetupError),
    /// The seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// A gdb server could not listen where it was asked to.
    #[error("cannot serve gdb for VM '{name}' on {address}: {source}; give --gdb another port or socket path")]
    Gdb {
        /// The VM.
        name: String,
        /// Where.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The guest-debug probe could not run.
    #[error("cannot find out what this host's KVM honours of guest debugging: {0}")]
    DebugProbe(SetupError),
    /// The trace file could not be created.
    #[error("--trace {path}: cannot write the trace there: {source}{advice}", advice = trace_advice(.source))]
    Trace {
        /// The file asked for.
        path: String,
        /// Why.
        source: crate::os::files::FileError,
    },
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}; the process is out of memory or threads (see ulimit -v and -u)")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The quantum timer could not be created.
    #[error("cannot create the {kind} quantum timer: {source}; try --timer {other}", kind = .kind.name(), other = .other.name())]
    Timer {
        /// The backend asked for.
        kind: TimerKind,
        /// The other backend, to suggest.
        other: TimerKind,
        /// Why.
        source: std::io::Error,
    },
}

/// What to do about a trace file that cannot be opened, where its error
/// does not say already.
fn trace_advice(error: &crate::os::files::FileError) -> &'static str {
    match error {
        crate::os::files::FileError::Io(_) => "; give --trace a path in a writable directory",
        _ => "",
    }
}

/// The front end's side of a running core.
pub struct CoreHandle {
    commands: Sender<Command>,
    events: Receiver<Event>,
    kick: Arc<KickTarget>,
    thread: JoinHandle<()>,
    started: Instant,
    trace_writer: Option<TraceWriter>,
    /// gdb servers' Unix sockets, removed when the run ends.
    socket_paths: Vec<std::path::PathBuf>,
}

impl CoreHandle {
    /// When the run started: the zero of timestamps, durations and `wall_ns`.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Sends a command and kicks the core out of KVM_RUN to read it.
    pub fn send(&self, command: Command) {
        // The core holds the receiver until it finishes; after that there is
        // nobody to tell, so a failed send needs no handling.
        let _ = self.commands.send(command);
        self.kick.request();
    }

    /// The events the core sends, ending with [`Event::Finished`].
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Kernel thread id of the core thread (for /proc lookups).
    pub fn core_tid(&self) -> libc::pid_t {
        self.kick.tid()
    }

    /// Passes every event to `on_event` until the run finishes, asking it to
    /// quit at `deadline` (if any); then waits for the thread and returns the
    /// final report.
    pub fn run_until(self, deadline: Option<Instant>, mut on_event: impl FnMut(Event)) -> RunReport {
        let mut deadline = deadline;
        loop {
            let received = match deadline {
                Some(at) => self.events.recv_deadline(at).map_err(|_| ()),
                None => self.events.recv().map_err(|_| ()),
            };
            match received {
                Ok(Event::Finished(mut report)) => {
                    self.finish(&mut report);
                    return *report;
                }
                Ok(event) => on_event(event),
                Err(()) if deadline.is_some() => {
                    self.send(Command::Quit);
                    deadline = None;
                }
                Err(()) => panic!("the core thread ended without a report"),
            }
        }
    }

    /// Waits for the core thread to end, and at most
    /// [`trace::FINISH_LIMIT`] for the trace writer; puts what the trace
    /// file got into `report` (which [`Event::Finished`] brought).
    pub fn finish(self, report: &mut RunReport) {
        for path in &self.socket_paths {
            let _ = std::fs::remove_file(path);
        }
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
        if let (Some(writer), Some(trace)) = (self.trace_writer, &mut report.trace) {
            let end = writer.finish();
            trace.written = end.written;
            trace.lost = trace.records.saturating_sub(end.written);
            trace.error = end.error;
        }
    }
}

/// Sets up every VM of `config` (on the calling thread, so that errors come back
/// at once) and starts the core thread running them.
pub fn spawn(kvm: Kvm, config: RunConfig) -> Result<CoreHandle, SpawnError> {
    let mut slots = Vec::with_capacity(config.vms.len());
    for vm in config.vms {
        let mut slot = Slot::new(&kvm, vm)?;
        slot.timings = config.timings.then(VmTimings::default);
        slots.push(slot);
    }
    let (trace, trace_writer) = match &config.trace {
        Some(path) => {
            let names = slots.iter().map(|slot| slot.config.name.clone()).collect();
            let (buffer, writer) = trace::start(path, names).map_err(|error| match error {
                trace::StartError::File(source) => SpawnError::Trace { path: path.display().to_string(), source },
                trace::StartError::Thread(source) => SpawnError::Thread { what: "trace writer", source },
            })?;
            (Some((buffer, path.display().to_string())), Some(writer))
        }
        None => (None, None),
    };
    let (command_tx, command_rx) = crossbeam_channel::unbounded();
    let (event_tx, event_rx) = crossbeam_channel::bounded(EVENT_CAPACITY);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let kick = KickTarget::new();
    let socket_paths = serve_debuggers(&kvm, &mut slots, &command_tx, &kick)?;
    let started = Instant::now();
    let epoch_ns = monotonic_ns();
    let quantum = config.quantum.clamp(MIN_QUANTUM, MAX_QUANTUM);
    let core = Core {
        planner: Planner::new(config.policy, quantum.as_nanos() as u64, &candidates(&slots)),
        kvm,
        slots,
        timer_kind: config.timer,
        kick: Arc::clone(&kick),
        commands: command_rx,
        events: event_tx,
        outbox: VecDeque::new(),
        started,
        epoch_ns,
        live_records: config.live_records,
        live_slices: Vec::new(),
        live_slices_dropped: 0,
        trace,
        calibration: config.calibration,
        step_requests: VecDeque::new(),
        gdb_steps: VecDeque::new(),
        last_sample_ns: epoch_ns,
        last_console_flush_ns: epoch_ns,
        last_records_flush_ns: epoch_ns,
        stay_open: config.stay_open,
        seccomp: config.seccomp,
        compensation: Compensation::new(config.compensate),
        quit: false,
        overruns: LatencyLog::default(),
        early_ends: LatencyLog::default(),
        preempted_at: None,
        // Started on the core thread: the CPU clock is the thread's.
        stolen: StolenWindow::default(),
    };
    let thread = std::thread::Builder::new()
        .name("matrix-core".into())
        .spawn(move || core.run(ready_tx))
        .map_err(|source| SpawnError::Thread { what: "core", source })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            let _ = thread.join();
            return Err(error);
        }
        Err(_) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the core thread reports readiness before it returns"),
        },
    }
    Ok(CoreHandle { commands: command_tx, events: event_rx, kick, thread, started, trace_writer, socket_paths })
}

/// Starts a gdb server for each VM that asked for one (after probing what
/// this host honours, once); those VMs wait at their entry point. Returns
/// the Unix sockets to remove when the run ends.
fn serve_debuggers(
    kvm: &Kvm,
    slots: &mut [Slot],
    commands: &Sender<Command>,
    kick: &Arc<KickTarget>,
) -> Result<Vec<std::path::PathBuf>, SpawnError> {
    let mut strategy = None;
    let mut socket_paths = Vec::new();
    for (vm, slot) in slots.iter_mut().enumerate() {
        let Some(address) = slot.config.gdb.clone() else { continue };
        let strategy = match strategy {
            Some(strategy) => strategy,
            None => *strategy.insert(debug_probe::probe(kvm).map_err(SpawnError::DebugProbe)?.strategy()),
        };
        let failed = |source| SpawnError::Gdb { name: slot.config.name.clone(), address: address.to_string(), source };
        let listener = Listener::bind(&address).map_err(failed)?;
        let listening = listener.address();
        socket_paths.extend(listener.socket_path());
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let send = server::request_sender(vm, commands.clone(), Arc::clone(kick));
        server::start(listener, send, reply_rx).map_err(|source| SpawnError::Thread { what: "gdb server", source })?;
        slot.debug = Some(Debugged::new(listening, reply_tx, strategy));
        slot.state = VmState::Gdb { stop: DebugStop::Waiting };
    }
    Ok(socket_paths)
}

/// One VM as the core schedules it.
struct Slot {
    config: VmConfig,
    runtime: VmRuntime,
    console_dropped: u64,
    state: VmState,
    /// KVM_RUN time the scheduler charged (up to deadlines, less stolen time).
    charged_ns: u64,
    /// Time the host took the CPU away during this VM's slices.
    stolen_ns: u64,
    /// Of that, what is still to be taken off its next charges.
    stolen_unpaid_ns: u64,
    /// What a timed run records (the bench).
    timings: Option<VmTimings>,
    /// Exits not yet sent to the front end (the newest [`LIVE_EXITS`]).
    live_exits: VecDeque<ExitRecord>,
    /// The VM's latest exit.
    last_exit: Option<ExitRecord>,
    /// Its gdb server's side in the core, for a VM run with `--gdb`.
    debug: Option<Debugged>,
}

impl Slot {
    fn new(kvm: &Kvm, config: VmConfig) -> Result<Self, VmSetupError> {
        let runtime = VmRuntime::new(kvm, &machine_spec(&config)).map_err(|source| VmSetupError {
            name: config.name.clone(),
            guest: config.guest.clone(),
            source,
        })?;
        let state = if config.paused { VmState::Paused } else { VmState::Running };
        Ok(Self {
            config,
            runtime,
            console_dropped: 0,
            state,
            charged_ns: 0,
            stolen_ns: 0,
            stolen_unpaid_ns: 0,
            timings: None,
            live_exits: VecDeque::new(),
            last_exit: None,
            debug: None,
        })
    }

    /// What the planner needs of it.
    fn candidate(&self) -> Candidate {
        Candidate { weight: self.config.weight, runnable: self.state == VmState::Running }
    }
}

/// What the planner needs of every VM.
fn candidates(slots: &[Slot]) -> Vec<Candidate> {
    slots.iter().map(Slot::candidate).collect()
}

fn machine_spec(config: &VmConfig) -> MachineSpec {
    MachineSpec { image: Arc::clone(&config.image), memory_size: config.memory_size, args: config.args.clone() }
}

struct Core {
    kvm: Kvm,
    slots: Vec<Slot>,
    /// Told of every change of a VM's weight or state (it is not asked
    /// again before every slice).
    planner: Planner,
    timer_kind: TimerKind,
    kick: Arc<KickTarget>,
    commands: Receiver<Command>,
    events: Sender<Event>,
    /// Events that must arrive (state changes), waiting for room in the channel.
    outbox: VecDeque<Event>,
    started: Instant,
    /// Monotonic ns at the start of the run: records and console lines are
    /// stamped in ns since then.
    epoch_ns: u64,
    /// Send exit and slice records to the front end.
    live_records: bool,
    /// Slices not yet sent to the front end.
    live_slices: Vec<SliceRecord>,
    /// Slices dropped since the last send (the front end lagged).
    live_slices_dropped: u64,
    /// The exit trace and its path, when the run writes one.
    trace: Option<(TraceBuffer, String)>,
    /// VMs to step once each, in order.
    step_requests: VecDeque<VmId>,
    /// VMs gdb asked to step an instruction each, in order.
    gdb_steps: VecDeque<VmId>,
    /// What the demo guests' units were sized by, for the report.
    calibration: Option<Calibration>,
    // Monotonic ns, compared with the end of the last slice: a clock read
    // fewer for each of them a slice.
    last_sample_ns: u64,
    last_console_flush_ns: u64,
    last_records_flush_ns: u64,
    stay_open: bool,
    seccomp: bool,
    /// The kick latency measured, and the lead taken from it.
    compensation: Compensation,
    quit: bool,
    /// How long after each deadline a preempted guest was out of KVM_RUN.
    overruns: LatencyLog,
    /// How long before their deadline preempted slices ended (kicks armed
    /// early by more than their latency).
    early_ends: LatencyLog,
    /// The deadline the last slice was preempted at, if it was.
    preempted_at: Option<u64>,
    /// The slices since the thread's CPU clock was last read.
    stolen: StolenWindow,
}

impl Core {
    fn run(mut self, ready: Sender<Result<(), SpawnError>>) {
        let _attached = self.kick.attach();
        let create = || quantum_timer::create(self.timer_kind, &self.kick);
        let mut deadlines = match create().map(Deadlines::new) {
            Ok(deadlines) => deadlines,
            Err(source) => {
                let other = match self.timer_kind {
                    TimerKind::Posix => TimerKind::Timerfd,
                    TimerKind::Timerfd => TimerKind::Posix,
                };
                let _ = ready.send(Err(SpawnError::Timer { kind: self.timer_kind, other, source }));
                return;
            }
        };
        // Everything the thread opens it has opened: from here on it runs guests.
        if self.seccomp {
            if let Err(error) = seccomp::confine_current_thread() {
                let _ = ready.send(Err(error.into()));
                return;
            }
        }
        let _ = ready.send(Ok(()));
        self.stolen.start(ThreadClocks::now());
        self.outbox.push_back(Event::Settings(self.settings()));
        for vm in 0..self.slots.len() {
            self.announce_setup(vm);
            if let Some(debug) = &self.slots[vm].debug {
                let status = DebuggerStatus::Listening { address: debug.address.clone(), serving: debug.serving() };
                self.debugger_status(vm, status);
            }
            if self.slots[vm].state != VmState::Running {
                self.outbox.push_back(Event::State { vm, state: self.slots[vm].state.clone() });
            }
        }
        // Steps asked for before a quit are answered before the run ends.
        while !self.quit || !self.step_requests.is_empty() {
            if self.kick.take_request() {
                self.apply_commands();
                continue;
            }
            if let Some(vm) = self.gdb_steps.pop_front() {
                self.gdb_step(vm, &mut deadlines);
                self.apply_commands();
                self.deliver_outbox();
                continue;
            }
            if let Some(vm) = self.step_requests.pop_front() {
                self.step(vm, &mut deadlines);
                self.apply_commands();
                self.deliver_outbox();
                continue;
            }
            let now_ns = match self.planner.next_slice() {
                Some(slice) => {
                    let record = self.run_slice(slice, &mut deadlines, false);
                    if self.slots[slice.vm].runtime.console.pending_len() >= CONSOLE_FLUSH_BYTES {
                        let batch = self.take_one_console(slice.vm);
                        self.send_console(batch);
                    }
                    self.epoch_ns + record.end_ns
                }
                None if self.stay_open
                    || !self.step_requests.is_empty()
                    || self.slots.iter().any(|slot| matches!(slot.state, VmState::Paused | VmState::Gdb { .. })) =>
                {
                    deadlines.disarm();
                    self.idle();
                    monotonic_ns()
                }
                None => break,
            };
            self.deliver_outbox();
            self.flush_consoles_if_due(now_ns);
            self.sample_if_due(now_ns);
        }
        deadlines.disarm();
        let armed_ahead_pct = deadlines.armed_ahead_pct();
        drop(deadlines);
        self.finish(armed_ahead_pct);
    }

    /// Runs one slice of `slice.vm`: until its next I/O exit under `io` (or
    /// when `stepping`), else until its deadline, a yield, its end, or a
    /// command; records it and returns the record.
    ///
    /// The slice is charged its time in KVM_RUN up to the deadline, less
    /// what the VM is still owed of the time the host took the CPU away from
    /// this thread in its slices (see [`stolen`](super::stolen)). A stepped
    /// slice is charged to the VM but not to the policy: the VM is paused.
    fn run_slice(&mut self, slice: Slice, deadlines: &mut Deadlines, stepping: bool) -> SliceRecord {
        let vm = slice.vm;
        let wall_start = monotonic_ns();
        self.kick.note_cpu();
        if let Some(previous) = self.preempted_at.take() {
            deadlines.observe_gap(previous, wall_start);
        }
        // The timer is armed for `kick`, early by the latency measured, so
        // that the guest is out of KVM_RUN at `deadline`.
        let (kick, deadline) = match slice.length_ns {
            Some(length) => {
                let lead = length - self.compensation.run_before_kick(length);
                let following = self.planner.following_length_ns().filter(|_| !stepping);
                let following = following.map(|length| self.compensation.run_before_kick(length));
                let kick = deadlines.start_slice(wall_start, wall_start + length - lead, following);
                self.kick.set_deadline(kick);
                (kick, kick + lead)
            }
            None => {
                // No expiry may cut a slice that runs until I/O.
                deadlines.disarm();
                (u64::MAX, u64::MAX)
            }
        };
        let mut in_guest = 0;
        let mut exits = 0;
        let end = loop {
            let (step, span, record) = self.slots[vm].runtime.step(&self.kick, self.epoch_ns);
            in_guest += span.charged_until(deadline);
            let rip = record.map_or(0, |record| record.rip);
            if let Some(mut record) = record {
                record.vm = vm;
                exits += 1;
                self.keep_exit(record);
            }
            if let (Step::Io, Some(timings)) = (&step, &mut self.slots[vm].timings) {
                timings.io_exit_ns.push(span.exited_ns);
            }
            if step == Step::Io {
                if let Some(stop) = self.debugger_after_io(vm, rip) {
                    self.stop_for_debugger(vm, stop);
                    break SliceEnd::Debugger;
                }
            }
            match step {
                Step::Io if stepping => break SliceEnd::Step,
                Step::Io if slice.length_ns.is_none() => break SliceEnd::IoSwitch,
                Step::Io if span.exited_ns >= deadline => break SliceEnd::ExitAfterDeadline,
                Step::Io => continue,
                Step::Yielded => break SliceEnd::Yield,
                Step::Halted => {
                    self.set_state(vm, VmState::Halted);
                    self.answer_debugger(vm, DebugReply::Stopped(DebugStop::Halted));
                    break SliceEnd::Halt;
                }
                Step::Crashed { kind, registers } => {
                    self.set_state(vm, VmState::Crashed { reason: kind.to_string(), registers });
                    self.answer_debugger(vm, DebugReply::Stopped(DebugStop::Crashed));
                    break SliceEnd::Crash;
                }
                Step::Debug(exit) => match self.debugger_exit(vm, exit) {
                    Some(stop) => {
                        self.stop_for_debugger(vm, stop);
                        break SliceEnd::Debugger;
                    }
                    // Stepped to serve a breakpoint or watchpoint that did not
                    // hit; a host may not report a stepped hlt, so it is seen here.
                    None if self.halts_next(vm, exit.pc) => {
                        self.halt_for_debugger(vm);
                        break SliceEnd::Halt;
                    }
                    None if span.exited_ns >= deadline => break SliceEnd::ExitAfterDeadline,
                    None => continue,
                },
                Step::Interrupted if self.kick.is_requested() => break SliceEnd::Command,
                Step::Interrupted if span.exited_ns >= kick => {
                    self.slots[vm].runtime.counters.preemptions += 1;
                    // Ended before its deadline (the lead was more than this
                    // kick's latency): no overrun, and the early end is repaid.
                    self.overruns.record(span.exited_ns.saturating_sub(deadline));
                    if span.exited_ns < deadline {
                        self.early_ends.record(deadline - span.exited_ns);
                    }
                    if !stepping {
                        self.compensation.observe(kick, span.exited_ns);
                    }
                    self.preempted_at = Some(kick);
                    break SliceEnd::Deadline;
                }
                // A signal for an earlier slice (or not for us): carry on.
                Step::Interrupted => continue,
            }
        };
        self.kick.set_deadline(u64::MAX);
        let wall_end = monotonic_ns();
        let seen =
            WindowSlice { vm, start_ns: wall_start, end_ns: wall_end, deadline_ns: deadline, charged_ns: in_guest };
        for share in self.stolen.end_slice(seen, ThreadClocks::now) {
            let slot = &mut self.slots[share.vm];
            slot.stolen_ns += share.stolen_ns;
            slot.stolen_unpaid_ns += share.stolen_ns;
        }
        let slot = &mut self.slots[vm];
        let repaid = slot.stolen_unpaid_ns.min(in_guest);
        slot.stolen_unpaid_ns -= repaid;
        let charged = in_guest - repaid;
        slot.charged_ns += charged;
        if let Some(timings) = &mut slot.timings {
            timings.slices.push(TimedSlice { start_ns: wall_start, end_ns: wall_end, charged_ns: charged });
        }
        if !stepping {
            self.planner.charge(vm, charged, matches!(end, SliceEnd::Yield | SliceEnd::Halt | SliceEnd::Crash));
        }
        let record = SliceRecord {
            vm,
            start_ns: wall_start.saturating_sub(self.epoch_ns),
            end_ns: wall_end.saturating_sub(self.epoch_ns),
            charged_ns: charged,
            end,
            exits,
        };
        self.keep_slice(record);
        record
    }

    /// Keeps an exit for the front end and the trace.
    fn keep_exit(&mut self, record: ExitRecord) {
        self.slots[record.vm].last_exit = Some(record);
        if self.live_records {
            let live = &mut self.slots[record.vm].live_exits;
            if live.len() == LIVE_EXITS {
                live.pop_front();
            }
            live.push_back(record);
        }
        if let Some((trace, _)) = &mut self.trace {
            trace.push(TraceRecord::Exit(record));
        }
    }

    /// Keeps a slice for the front end and the trace.
    fn keep_slice(&mut self, record: SliceRecord) {
        if self.live_records {
            if self.live_slices.len() == LIVE_SLICES {
                // Dropped in halves so that the copy is paid once per half.
                self.live_slices.drain(..LIVE_SLICES / 2);
                self.live_slices_dropped += (LIVE_SLICES / 2) as u64;
            }
            self.live_slices.push(record);
        }
        if let Some((trace, _)) = &mut self.trace {
            trace.push(TraceRecord::Slice(record));
        }
    }

    /// Steps `vm` once: runs it to its next exit (or for at most
    /// [`STEP_LIMIT`] or a quantum), pauses it there, and tells the front end
    /// what happened.
    fn step(&mut self, vm: VmId, deadlines: &mut Deadlines) {
        let slot = &mut self.slots[vm];
        if slot.state.is_finished() {
            let registers = slot.runtime.machine.vcpu.registers();
            let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
            self.outbox.push_back(Event::Stepped { vm, t_ns, result: StepResult::Finished, registers });
            return;
        }
        let length = self.planner.quantum_ns().max(STEP_LIMIT.as_nanos() as u64);
        let slice = Slice { vm, length_ns: Some(length) };
        let exits_before = self.slots[vm].runtime.counters.exits.total();
        let record = self.run_slice(slice, deadlines, true);
        let exited = self.slots[vm].runtime.counters.exits.total() > exits_before;
        if record.end == SliceEnd::Command && !exited {
            // A command came first: apply it, then step afresh (a quit, too,
            // waits for the steps asked for before it).
            self.kick.take_request();
            self.apply_commands();
            self.step_requests.push_front(vm);
            return;
        }
        let slot = &mut self.slots[vm];
        let vcpu = &mut slot.runtime.machine.vcpu;
        if !slot.state.is_finished() {
            vcpu.complete_pending_exit();
        }
        let registers = vcpu.registers();
        let result = match slot.last_exit.filter(|_| exited) {
            Some(exit) => StepResult::Exit(exit),
            None => StepResult::Preempted { ran_ns: record.end_ns - record.start_ns, rip: registers.rip },
        };
        if slot.state == VmState::Running {
            self.set_state(vm, VmState::Paused);
        }
        let t_ns = match result {
            StepResult::Exit(exit) => exit.t_ns,
            _ => record.end_ns,
        };
        self.outbox.push_back(Event::Stepped { vm, t_ns, result, registers });
    }

    /// Nothing can run: wait for a command (a resume, a restart or a quit).
    fn idle(&mut self) {
        match self.commands.recv_timeout(IDLE_WAIT) {
            Ok(command) => {
                self.kick.take_request();
                self.apply(command);
                self.apply_commands();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.quit = true,
        }
    }

    /// Applies the commands waiting, in order, up to and including the
    /// first step: what came after a step waits until it is done (a `quit`
    /// after three `step`s quits after the third).
    fn apply_commands(&mut self) {
        while self.step_requests.is_empty() {
            let Ok(command) = self.commands.try_recv() else { return };
            self.apply(command);
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Quit => self.quit = true,
            Command::SetWeight { vm, weight } => {
                if let Some(slot) = self.slots.get_mut(vm).filter(|_| check_weight(weight).is_ok()) {
                    slot.config.weight = weight;
                    self.planner.set_candidate(vm, slot.candidate());
                    self.outbox.push_back(Event::Settings(self.settings()));
                }
            }
            Command::Pause(vm) => {
                if self.slots.get(vm).is_some_and(|slot| slot.state == VmState::Running) {
                    self.set_state(vm, VmState::Paused);
                }
            }
            Command::Resume(vm) => {
                let Some(slot) = self.slots.get(vm) else { return };
                // A VM stopped for gdb with no gdb connected can be let go.
                let idle_debugger = slot.debug.as_ref().is_some_and(|debug| debug.peer.is_none());
                if slot.state == VmState::Paused || (matches!(slot.state, VmState::Gdb { .. }) && idle_debugger) {
                    self.arm_debugger(vm, None);
                    self.set_state(vm, VmState::Running);
                }
            }
            Command::Restart(vm) if vm < self.slots.len() => self.restart(vm),
            Command::Restart(_) => {}
            Command::Step(vm) if matches!(self.slots.get(vm).map(|slot| &slot.state), Some(VmState::Gdb { .. })) => {
                self.slots[vm]
                    .runtime
                    .console
                    .note(format_args!("this VM is stopped for gdb: step it from gdb (stepi)"));
            }
            Command::Step(vm) if vm < self.slots.len() => self.step_requests.push_back(vm),
            Command::Debug { vm, request } if vm < self.slots.len() => self.debug_request(vm, request),
            Command::Debug { .. } => {}
            Command::Step(_) => {}
            Command::SetPolicy(policy) => self.set_planner(policy, self.planner.quantum_ns()),
            Command::SetQuantum(quantum) => {
                let quantum = quantum.clamp(MIN_QUANTUM, MAX_QUANTUM).as_nanos() as u64;
                self.set_planner(self.planner.policy(), quantum);
            }
        }
    }

    fn set_planner(&mut self, policy: Policy, quantum_ns: u64) {
        if policy == self.planner.policy() {
            self.planner.set_quantum(quantum_ns);
        } else {
            self.planner = Planner::new(policy, quantum_ns, &candidates(&self.slots));
        }
        self.outbox.push_back(Event::Settings(self.settings()));
    }

    fn restart(&mut self, vm: VmId) {
        // What the old VM printed still goes out, before its new life starts.
        self.queue_console(vm);
        let slot = &mut self.slots[vm];
        match VmRuntime::new(&self.kvm, &machine_spec(&slot.config)) {
            Ok(mut runtime) => {
                // The console (already flushed above) goes on, so that the
                // report's history holds every life with a note between them.
                runtime.console = std::mem::take(&mut slot.runtime.console);
                slot.runtime = runtime;
                slot.charged_ns = 0;
                slot.stolen_ns = 0;
                slot.stolen_unpaid_ns = 0;
                // The note is stamped now, not at the old life's last exit.
                slot.runtime.console.set_clock(monotonic_ns().saturating_sub(self.epoch_ns));
                slot.runtime.console.note(format_args!("VM restarted"));
                self.announce_setup(vm);
                let state = match &mut self.slots[vm].debug {
                    // A VM under gdb starts its new life waiting at the entry, as its first.
                    Some(debug) => {
                        debug.forget();
                        debug.applied = GuestDebug::default();
                        debug.answer_resume(DebugReply::Ended(DebugEnd::Killed));
                        VmState::Gdb { stop: DebugStop::Waiting }
                    }
                    None => VmState::Running,
                };
                self.set_state(vm, state);
            }
            Err(error) => {
                let registers = slot.runtime.machine.vcpu.registers();
                slot.runtime.console.set_clock(monotonic_ns().saturating_sub(self.epoch_ns));
                slot.runtime.console.note(format_args!("restart failed: {error}"));
                self.set_state(vm, VmState::Crashed { reason: format!("restart failed: {error}"), registers });
            }
        }
    }

    /// Tells the front end how `vm` was set up, if it asked for records
    /// (only the UI's inspector shows it).
    fn announce_setup(&mut self, vm: VmId) {
        if self.live_records {
            let steps = self.slots[vm].runtime.machine.setup.clone();
            self.outbox.push_back(Event::Setup { vm, steps });
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            policy: self.planner.policy(),
            quantum: Duration::from_nanos(self.planner.quantum_ns()),
            timer: self.timer_kind,
            weights: self.slots.iter().map(|slot| slot.config.weight).collect(),
        }
    }

    /// Records a state change. A VM that finishes has its last console bytes
    /// queued first, so that front ends see them before the new state.
    fn set_state(&mut self, vm: VmId, state: VmState) {
        if state.is_finished() {
            self.queue_console(vm);
        }
        self.slots[vm].state = state.clone();
        self.planner.set_candidate(vm, self.slots[vm].candidate());
        self.outbox.push_back(Event::State { vm, state });
    }

    /// Takes `vm`'s pending console bytes (and drop count) into `batch`.
    fn take_console(&mut self, vm: VmId, batch: &mut ConsoleBatch) {
        let slot = &mut self.slots[vm];
        if slot.runtime.console.pending_len() == 0 && slot.console_dropped == 0 {
            return;
        }
        let dropped = std::mem::take(&mut slot.console_dropped);
        slot.runtime.console.take_into(vm, dropped, batch);
    }

    /// Every VM's pending console bytes.
    fn take_consoles(&mut self) -> ConsoleBatch {
        let mut batch = ConsoleBatch::default();
        for vm in 0..self.slots.len() {
            self.take_console(vm, &mut batch);
        }
        batch
    }

    /// `vm`'s pending console bytes alone.
    fn take_one_console(&mut self, vm: VmId) -> ConsoleBatch {
        let mut batch = ConsoleBatch::default();
        self.take_console(vm, &mut batch);
        batch
    }

    /// Queues `vm`'s pending console bytes in the outbox, so that they go out
    /// before the events queued after them.
    fn queue_console(&mut self, vm: VmId) {
        let batch = self.take_one_console(vm);
        if !batch.is_empty() {
            self.outbox.push_back(Event::Console(batch));
        }
    }

    /// Sends console output in one event, or gives it back to its VMs
    /// (bounded, oldest dropped first and counted) while the front end is
    /// behind.
    fn send_console(&mut self, batch: ConsoleBatch) {
        if batch.is_empty() {
            return;
        }
        let Err(TrySendError::Full(Event::Console(batch))) = self.events.try_send(Event::Console(batch)) else {
            return;
        };
        for piece in batch.pieces() {
            let slot = &mut self.slots[piece.vm];
            let excess = piece.bytes.len().saturating_sub(CONSOLE_BACKLOG_CAP);
            slot.console_dropped += piece.dropped + excess as u64;
            slot.runtime.console.put_back(piece.without_front(excess));
        }
    }

    fn deliver_outbox(&mut self) {
        while let Some(event) = self.outbox.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// A round of console flushes (and records, and the trace's buffer)
    /// when one is due at `now_ns` (monotonic).
    fn flush_consoles_if_due(&mut self, now_ns: u64) {
        let every = CONSOLE_FLUSH_EVERY.max(CONSOLE_FLUSH_PER_VM * self.slots.len() as u32);
        if !passed(every, self.last_console_flush_ns, now_ns) {
            return;
        }
        self.last_console_flush_ns = now_ns;
        let batch = self.take_consoles();
        self.send_console(batch);
        if self.live_records && passed(RECORDS_FLUSH_EVERY, self.last_records_flush_ns, now_ns) {
            self.last_records_flush_ns = now_ns;
            self.flush_records();
        }
        if let Some((trace, _)) = &mut self.trace {
            trace.flush();
        }
    }

    /// Sends the exit and slice records kept for the front end; what finds
    /// no room waits for the next round (bounded: see `keep_exit`, `keep_slice`).
    fn flush_records(&mut self) {
        let mut events = self.take_records().into_iter();
        while let Some(event) = events.next() {
            if let Err(TrySendError::Full(event)) = self.events.try_send(event) {
                for event in std::iter::once(event).chain(events) {
                    self.put_back_records(event);
                }
                return;
            }
        }
    }

    /// The records kept for the front end, as events: each VM's exits, then
    /// the slices.
    fn take_records(&mut self) -> Vec<Event> {
        let mut events: Vec<Event> = (self.slots.iter_mut().enumerate())
            .filter(|(_, slot)| !slot.live_exits.is_empty())
            .map(|(vm, slot)| Event::Exits { vm, records: Vec::from(std::mem::take(&mut slot.live_exits)) })
            .collect();
        if !self.live_slices.is_empty() || self.live_slices_dropped > 0 {
            let records = std::mem::take(&mut self.live_slices);
            events.push(Event::Slices { records, dropped: std::mem::take(&mut self.live_slices_dropped) });
        }
        events
    }

    /// Keeps records that could not be sent (nothing newer was kept since).
    fn put_back_records(&mut self, event: Event) {
        match event {
            Event::Exits { vm, records } => self.slots[vm].live_exits = records.into(),
            Event::Slices { records, dropped } => (self.live_slices, self.live_slices_dropped) = (records, dropped),
            _ => unreachable!("only records are put back"),
        }
    }

    /// Sends the counters when a sample is due at `now_ns` (monotonic).
    fn sample_if_due(&mut self, now_ns: u64) {
        if !passed(SAMPLE_EVERY, self.last_sample_ns, now_ns) {
            return;
        }
        self.last_sample_ns = now_ns;
        let vms = self
            .slots
            .iter()
            .map(|slot| VmSample {
                counters: slot.runtime.counters,
                cpu_ns: slot.runtime.cpu_ns,
                charged_ns: slot.charged_ns,
            })
            .collect();
        // A sample the front end has no room for is simply skipped: the next
        // one carries the same counters, newer.
        let _ = self.events.try_send(Event::Sample { elapsed_ns: self.started.elapsed().as_nanos() as u64, vms });
    }

    /// Delivers what is left and the final report, then returns (the thread
    /// ends). `armed_ahead_pct` goes into the report as it is.
    fn finish(mut self, armed_ahead_pct: Option<f64>) {
        let wall_ns = self.started.elapsed().as_nanos() as u64;
        // Waiting is fine now: the run is over and the front end is reading.
        for event in std::mem::take(&mut self.outbox) {
            let _ = self.events.send(event);
        }
        let batch = self.take_consoles();
        if !batch.is_empty() {
            let _ = self.events.send(Event::Console(batch));
        }
        for event in self.take_records() {
            let _ = self.events.send(event);
        }
        let mut report = self.report(wall_ns, armed_ahead_pct);
        if let Some((trace, path)) = self.trace.take() {
            let counts = trace.finish();
            report.trace = Some(TraceReport {
                path,
                records: counts.records,
                dropped: counts.dropped,
                written: 0,
                lost: 0,
                error: None,
            });
        }
        let _ = self.events.send(Event::Finished(Box::new(report)));
    }

    fn report(&self, wall_ns: u64, deadlines_armed_ahead_pct: Option<f64>) -> RunReport {
        let total_weight: f64 = self.slots.iter().map(|slot| slot.config.weight).sum();
        let total_cpu: u64 = self.slots.iter().map(|slot| slot.runtime.cpu_ns).sum();
        let total_charged: u64 = self.slots.iter().map(|slot| slot.charged_ns).sum();
        let vms = self
            .slots
            .iter()
            .map(|slot| {
                let (crash_reason, registers) = match &slot.state {
                    VmState::Crashed { reason, registers } => (Some(reason.clone()), Some(*registers)),
                    _ => (None, None),
                };
                let counters = &slot.runtime.counters;
                VmReport {
                    name: slot.config.name.clone(),
                    guest: slot.config.guest.clone(),
                    state: slot.state.name().to_string(),
                    crash_reason,
                    registers,
                    weight: slot.config.weight,
                    target_share: ratio(slot.config.weight, total_weight),
                    share: ratio(slot.runtime.cpu_ns as f64, total_cpu as f64),
                    charged_share: ratio(slot.charged_ns as f64, total_charged as f64),
                    cpu_ns: slot.runtime.cpu_ns,
                    charged_ns: slot.charged_ns,
                    stolen_ns: slot.stolen_ns,
                    exits: counters.exits.into(),
                    preemptions: counters.preemptions,
                    faults: counters.faults,
                    console: String::from_utf8_lossy(slot.runtime.console.history()).into_owned(),
                    console_dropped: slot.console_dropped,
                }
            })
            .collect();
        let timed = self.planner.policy() != Policy::Io;
        RunReport {
            wall_ns,
            policy: self.planner.policy().name().into(),
            quantum_us: timed.then(|| self.planner.quantum_ns() / 1000),
            timer: timed.then(|| self.timer_kind.name().into()),
            outside_kvm_run_pct: 100.0 * (1.0 - ratio(total_cpu as f64, wall_ns as f64)),
            preempt_overrun_us: self.overruns.summary(),
            preempt_early_us: self.early_ends.summary(),
            deadlines_armed_ahead_pct,
            kick_lead_us: (timed && self.compensation.is_enabled() && deadlines_armed_ahead_pct.is_some())
                .then(|| self.compensation.lead_ns() as f64 / 1000.0),
            vms,
            calibration: self.calibration,
            trace: None,
            timings: self.slots.iter().map(|slot| slot.timings.clone().unwrap_or_default()).collect(),
        }
    }
}

/// Whether `every` has passed from `since_ns` to `now_ns` (monotonic ns).
fn passed(every: Duration, since_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(since_ns) >= every.as_nanos() as u64
}

fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}
