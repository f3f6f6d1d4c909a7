//! The scheduler core: one thread (`matrix-core`) that owns every VM and runs
//! them one at a time, slice by slice, as the [`Planner`] decides. Front ends
//! talk to it only through [`CoreHandle`]: commands in, events out.
//!
//! Its files, one concern each: `handle` (starting a run, the front ends'
//! handle), `run_loop` (planning and running slices, stepping, idling),
//! `commands` (applying what the front ends ask), `outbox` (where a console
//! byte goes, and the events that must be delivered), `records` (live exit
//! and slice records), `samples` (counter samples and the final report),
//! `debugging` (what a VM's gdb server asks). This file holds the core's
//! state: the VMs' slots and the [`Core`] itself.

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
use crate::event::{
    Command, Event, Internal, LIVE_EXITS, Message, Settings, StepResult, TakenSnapshot, VmId, VmSample, VmState,
};
use crate::hypercall::GuestView;
use crate::record::{ExitRecord, SliceEnd, SliceRecord};
use crate::report::{RunReport, TimedSlice, TraceReport, VmReport, VmTimings};
use crate::snapshot::{SnapshotState, VmIdentity};
use crate::stats::LatencyLog;
use crate::trace::{self, TraceBuffer, TraceRecord, TraceWriter};
use crate::vm::debug_probe;
use crate::vm::guest_debug::{DebugExit, GuestDebug};
use crate::vm::kick::monotonic_ns;
use crate::vm::{CpuMode, GuestLayout, KickTarget, MachineSpec, SetupError, Vcpu, quantum_timer, seccomp};

#[cfg(test)]
mod arrival_tests;
mod commands;
mod debugging;
mod gang;
mod handle;
mod merge;
mod migrating;
mod moving;
mod outbox;
mod records;
mod run_loop;
mod samples;
mod saving;
mod slots;

pub(crate) use self::handle::Commander;
pub use self::handle::{CoreHandle, SpawnError, VmSetupError, spawn};
use self::slots::Slots;

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
    /// Its move to another matrix-tui, while one goes on.
    outgoing: Option<Box<migrating::Outgoing>>,
    /// Its save under way, if one is (its memory copied in steps).
    saving: Option<Box<saving::Saving>>,
    /// Came in by migration and not run yet: when its last slice on the
    /// sender ended, and where its downtime goes.
    incoming: Option<(u64, crate::event::Reply<u64>)>,
    /// When its last slice ended (monotonic ns).
    last_slice_ns: u64,
    /// Its live migration, for the report.
    migration_report: Option<crate::report::MigrationReport>,
    /// Arriving by migration, it has taken its sender's state: the Go may
    /// run it.
    arrived: bool,
}

impl Slot {
    /// Sets up `config`'s VM. A CPU mode this host's KVM refuses is not the
    /// user's mistake: that VM is shown crashed with the reason, beside the
    /// others, on a protected-mode stand-in that never runs.
    fn new(kvm: &Kvm, config: VmConfig) -> Result<Self, VmSetupError> {
        let failed = |source| VmSetupError { name: config.name.clone(), guest: config.guest.clone(), source };
        let spec = machine_spec(&config);
        let made = match &config.snapshot {
            Some(snapshot) => VmRuntime::restored(kvm, &spec, config.ports.clone(), snapshot, monotonic_ns()),
            None => VmRuntime::new(kvm, &spec, config.ports.clone()),
        };
        let (runtime, state) = match made {
            Ok(runtime) => (runtime, if config.paused { VmState::Paused } else { VmState::Running }),
            Err(refused @ SetupError::ModeUnsupported { .. }) => {
                let layout = GuestLayout { mode: CpuMode::Protected, ..spec.layout };
                let stand_in = MachineSpec { layout, ..spec };
                let reason = refused.to_string();
                let mut runtime = VmRuntime::new(kvm, &stand_in, config.ports.clone()).map_err(|_| failed(refused))?;
                runtime.console.note(format_args!("VM not started: {reason}"));
                // The stand-in's setup is not this VM's: the inspector shows none.
                runtime.machine.setup.clear();
                (runtime, VmState::Crashed { reason, registers: Default::default() })
            }
            Err(source) => return Err(failed(source)),
        };
        Ok(Self::around(config, runtime, state))
    }

    /// A VM coming in by migration: blank until its state comes, arriving.
    fn arriving(kvm: &Kvm, config: VmConfig) -> Result<Self, VmSetupError> {
        match VmRuntime::arriving(kvm, config.memory_size) {
            Ok(runtime) => Ok(Self::around(config, runtime, VmState::Arriving)),
            Err(source) => Err(VmSetupError { name: config.name.clone(), guest: config.guest.clone(), source }),
        }
    }

    fn around(config: VmConfig, runtime: VmRuntime, state: VmState) -> Self {
        Self {
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
            outgoing: None,
            saving: None,
            incoming: None,
            last_slice_ns: 0,
            migration_report: None,
            arrived: false,
        }
    }

    /// What the planner needs of it under `policy`: a VM of several vCPUs
    /// under `gang` runs in its windows, never by the planner.
    fn candidate(&self, policy: Policy) -> Candidate {
        let runnable = self.state == VmState::Running && !self.in_gang(policy);
        Candidate { weight: self.config.weight, runnable, keeps_lag: false }
    }

    /// Whether it runs in gang windows under `policy` (a VM of several
    /// vCPUs under `gang`), not by the planner.
    fn in_gang(&self, policy: Policy) -> bool {
        policy == Policy::Gang && self.runtime.vcpus.len() > 1
    }
}

/// What the planner needs of every VM under `policy`.
fn candidates(slots: &Slots, policy: Policy) -> Vec<Candidate> {
    // Another core's VM never runs here.
    let elsewhere = Candidate { weight: 1.0, runnable: false, keeps_lag: false };
    slots.each().map(|slot| slot.map_or(elsewhere, |slot| slot.candidate(policy))).collect()
}

/// The VM as a snapshot (or a migration's state) names it.
fn identity(config: &VmConfig) -> VmIdentity {
    VmIdentity {
        name: config.name.clone(),
        guest: config.guest.clone(),
        weight: config.weight,
        ports: config.ports.entries().map(|(port, call)| (port, call.to_string())).collect(),
        show_ports: config.ports.show_unknown,
    }
}

fn machine_spec(config: &VmConfig) -> MachineSpec {
    MachineSpec {
        image: Arc::clone(&config.image),
        memory_size: config.memory_size,
        args: config.args.clone(),
        layout: config.layout,
        restore: config.snapshot.as_ref().map(|snapshot| Arc::clone(&snapshot.machine)),
        vcpus: config.vcpus,
    }
}

struct Core {
    kvm: Kvm,
    slots: Slots,
    /// Told of every change of a VM's weight or state (it is not asked
    /// again before every slice).
    planner: Planner,
    timer_kind: TimerKind,
    kick: Arc<KickTarget>,
    commands: Receiver<Message>,
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
    step_requests: VecDeque<(VmId, Option<u16>)>,
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
    /// VMs sleeping now: the per-slice wake-up checks are skipped while none is.
    sleeping: usize,
    /// When each sleeping or throttled VM wakes (ns since the epoch, VM),
    /// earliest first: a wake costs O(log N), never a scan of every VM. An
    /// entry whose VM no longer waits for that time is dropped when met.
    wakes: std::collections::BinaryHeap<std::cmp::Reverse<(u64, VmId)>>,
    /// How VMs move out.
    migration: crate::migration::MigrationSettings,
    /// VMs moving out now: the per-slice migration work is skipped while none is.
    migrating: usize,
    /// Saves under way now.
    saving: usize,
    /// When the next step of a save may run (monotonic ns): the other VMs
    /// get as long as the last step took.
    next_save_step_ns: u64,
    /// The host CPU this core's thread is bound to (`--cpus` over 1).
    host_cpu: Option<usize>,
    /// Which core it is (0 with `--cpus 1`).
    index: usize,
    /// How many cores the run has.
    cores: usize,
    /// A sleeper that wakes owed time runs next (`--wake-preempt`).
    wake_preempt: bool,
    /// Every core (this one too), to hand VMs to and pass commands on to.
    peers: Vec<moving::Peer>,
    /// Which core runs each VM.
    placement: Arc<moving::Placement>,
    /// VMs other cores handed to this one, not taken in yet.
    arrivals: Receiver<(VmId, Box<Slot>)>,
    /// VMs moved onto or off this core.
    moves: u64,
    /// Whether VMs may still move (not once the run ends), and how many are
    /// between two cores now.
    move_gate: Arc<moving::MoveGate>,
    /// Time this core spent inside KVM_RUN (its VMs' time, wherever they
    /// ran before or after).
    kvm_run_ns: u64,
    /// Gang windows, shared by every core.
    gang: Arc<gang::GangBoard>,
    /// Lanes of other cores' gang windows this core is called to run.
    lane_calls: Receiver<gang::LaneCall>,
    /// The last gang window of its own it skipped (VM, end).
    gang_skipped: Option<(VmId, u64)>,
}

impl Core {}

/// Whether `every` has passed from `since_ns` to `now_ns` (monotonic ns).
fn passed(every: Duration, since_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(since_ns) >= every.as_nanos() as u64
}

fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}
