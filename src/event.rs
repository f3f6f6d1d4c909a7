//! The messages between the scheduler core and the front ends: the only coupling
//! between them. Plain data; no KVM type crosses a channel.

use serde::Serialize;

use std::time::Duration;

use crate::config::Policy;
use crate::config::TimerKind;
use crate::console::ConsoleBatch;
use crate::debug::{DebugRequest, DebugStop, DebuggerStatus};
pub use crate::record::VmId;
use crate::record::{ExitRecord, SliceRecord};
use crate::report::RunReport;
use crate::stats::VmCounters;
use crate::vm::{RegisterDump, SetupStep};

/// Exits per VM the core keeps for a front end between sends, and the
/// inspector shows.
pub const LIVE_EXITS: usize = 1000;

/// What one step of a VM came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    /// The VM made this exit (it is paused after it, unless it halted or crashed).
    Exit(ExitRecord),
    /// No exit within the step's time: the timer took the CPU back and the VM is paused.
    Preempted {
        /// How long it ran.
        ran_ns: u64,
        /// Where it was.
        rip: u64,
    },
    /// The VM has halted or crashed: restart it to step it.
    Finished,
}

impl StepResult {
    /// The step in one line, as `--control` prints it after `NAME| `:
    /// `[step] exit N: <the decoded exit> rip=0x...`.
    pub fn describe(&self) -> String {
        self.describe_on(None)
    }

    /// The same, naming the vCPU stepped in a VM of several:
    /// `[step] cpu1 exit N: ...`.
    pub fn describe_on(&self, vcpu: Option<u16>) -> String {
        let on = vcpu.map(|vcpu| format!(" cpu{vcpu}")).unwrap_or_default();
        match self {
            Self::Exit(exit) => format!("[step]{on} exit {}: {} rip=0x{:x}", exit.number, exit.describe(), exit.rip),
            Self::Preempted { ran_ns, rip } => {
                format!("[step]{on} no exit: preempted after {:.3} ms rip=0x{rip:x}", *ran_ns as f64 / 1e6)
            }
            Self::Finished => "[step] the VM has ended; restart it to step it".to_string(),
        }
    }
}

/// What a front end asks of the core. Each is applied within one quantum
/// (and within 50 ms under `io`, even with a guest that never exits).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// End the run; the core answers with [`Event::Finished`].
    Quit,
    /// Change a VM's scheduling weight (1 ..= 10000; others are ignored).
    SetWeight {
        /// The VM.
        vm: VmId,
        /// Its new weight.
        weight: f64,
    },
    /// Stop scheduling a running VM.
    Pause(VmId),
    /// Schedule a paused VM again.
    Resume(VmId),
    /// Start a VM afresh: new memory, image loaded again, counters reset.
    Restart(VmId),
    /// Change the scheduling policy.
    SetPolicy(Policy),
    /// Change the quantum (clamped to 100 us ..= 1 s).
    SetQuantum(Duration),
    /// Run a VM to its next guest exit, handle it, and pause the VM there
    /// (answered with [`Event::Stepped`]). A VM that does not exit within
    /// 20 ms (or a quantum, if longer) is paused when it is preempted.
    /// `vcpu` names the vCPU to run (its siblings stay paused); `None` runs
    /// the one whose turn it is.
    Step {
        /// The VM.
        vm: VmId,
        /// The vCPU to run, if one is chosen.
        vcpu: Option<u16>,
    },
    /// Save a VM to a snapshot file at `path` (answered with
    /// [`Event::Snapshot`]; the front end writes the file). The VM goes on.
    Snapshot {
        /// The VM.
        vm: VmId,
        /// Where the file goes.
        path: std::path::PathBuf,
    },
    /// Move a running VM to the matrix-tui waiting at `address`
    /// (`migrate NAME ADDR`): [`crate::sched::CoreHandle::send`] starts the
    /// link thread and sends the core its internal `Migrate` instead.
    MigrateTo {
        /// The VM.
        vm: VmId,
        /// Where the receiver listens.
        address: crate::debug::ListenAddress,
    },
    /// Call off a VM's move before its Go (`migrate cancel NAME`): it runs
    /// on here.
    CancelMigration(VmId),
    /// Make an orphaned incoming VM this run's, paused (`adopt NAME`): for a
    /// person who knows it no longer runs on its sender.
    Adopt(VmId),
    /// Throttle VMs that dirty faster than their migration sends, or not
    /// (for the migrations that start from now, and those under way).
    SetAutoConverge(bool),
    /// Keep a VM on these cores (`--cpus` over 1); empty: any core.
    Pin {
        /// The VM.
        vm: VmId,
        /// The cores it may run on, from 0.
        cores: Vec<usize>,
    },
}

impl Command {
    /// The VM it is about, if it is about one (the others go to every core).
    pub fn vm(&self) -> Option<VmId> {
        match *self {
            Self::SetWeight { vm, .. }
            | Self::Pause(vm)
            | Self::Resume(vm)
            | Self::Restart(vm)
            | Self::Step { vm, .. }
            | Self::Snapshot { vm, .. }
            | Self::MigrateTo { vm, .. }
            | Self::CancelMigration(vm)
            | Self::Adopt(vm)
            | Self::Pin { vm, .. } => Some(vm),
            Self::Quit | Self::SetPolicy(_) | Self::SetQuantum(_) | Self::SetAutoConverge(_) => None,
        }
    }
}

/// What the core's helper threads tell it (a migration's link threads, the
/// gdb server, the handle): not the front ends' to send, so that no front
/// end can claim a move's Go or hand the core a VM.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Internal {
    /// Another core's gang window calls this core to run a lane of it
    /// (`--policy gang`): the call waits in this core's lane inbox.
    GangCall,
    /// Move a running VM to another matrix-tui: the link thread writes the
    /// frames the core sends on `link` (see [`crate::migration`]).
    Migrate {
        /// The VM.
        vm: VmId,
        /// This attempt's number: the frames of its link carry it, and a
        /// frame of another attempt is not this one's business.
        attempt: u64,
        /// Where it goes, for messages.
        to: String,
        /// The link to the receiver.
        link: Reply<crate::migration::protocol::Frame>,
    },
    /// A frame from a VM's receiver.
    Migration {
        /// The VM moving out.
        vm: VmId,
        /// The attempt whose link it came on.
        attempt: u64,
        /// The frame.
        frame: crate::migration::protocol::Frame,
    },
    /// A VM's link failed: `sending` when its writer could not write a
    /// frame (nothing from it on went out whole), else its reader lost the
    /// link (what was written may have arrived).
    MigrationFailed {
        /// The VM moving out.
        vm: VmId,
        /// The attempt whose link it was.
        attempt: u64,
        /// What happened.
        why: String,
        /// The writer's failure, not the reader's.
        sending: bool,
    },
    /// The link wrote the Go: the receiver owns the VM now.
    MigrationGoSent {
        /// The VM that moved out.
        vm: VmId,
        /// The attempt whose link wrote it.
        attempt: u64,
    },
    /// A VM would come in: unless this run cannot take it (its name, its
    /// VM cap, its memory cap), make it now, arriving and blank, and hand
    /// its memory to the link thread, which writes the pages into it as
    /// they come. Asked at its Hello, so that the VM is made before the
    /// sender's final pause and a VM this run cannot take is refused
    /// before its pages are sent.
    PrepareArrival {
        /// Its name.
        name: String,
        /// Its memory in bytes.
        memory_size: u64,
        /// Where it comes from.
        from: String,
        /// Its id and memory, or why it may not come.
        reply: Reply<Result<(VmId, ArrivalMemory), String>>,
    },
    /// The arriving VM's pages are all in its memory: it takes the state its
    /// sender saved (checked as a snapshot file's), still arriving until
    /// [`Internal::StartIncoming`]; answered once it has it.
    ArrivalState {
        /// The VM.
        vm: VmId,
        /// Its state.
        state: Box<crate::snapshot::SnapshotState>,
        /// Rounds it came in.
        rounds: u32,
        /// Pages received.
        pages: u64,
        /// Ok, or why it cannot take it.
        reply: Reply<Result<(), String>>,
    },
    /// The sender gave up an incoming VM: run it, and report its downtime.
    StartIncoming {
        /// The VM.
        vm: VmId,
        /// When its last slice on the sender ended (monotonic ns there).
        last_slice_ns: u64,
        /// It was paused on the sender: it arrives paused.
        paused: bool,
        /// Where its downtime goes once it has run.
        report: Reply<u64>,
    },
    /// An incoming VM was made but will not be handed over: dropped when
    /// the sender keeps it for sure (the move ended before Ready, or the
    /// sender called it off), else orphaned (held until adopted).
    IncomingOrphaned {
        /// The VM.
        vm: VmId,
        /// What happened.
        why: String,
        /// The sender said Abandon (it runs the VM on): drop this copy.
        dropped: bool,
    },
    /// A line for the run's output that belongs to no VM.
    Notice(String),
    /// Hand VM `vm` to core `to` (the balancer's decision, `--cpus` over 1).
    MoveVm {
        /// The VM.
        vm: VmId,
        /// The core it goes to.
        to: usize,
    },
    /// A VM another core handed over waits in this core's arrivals.
    VmArrived,
    /// What a VM's gdb server asks (see [`crate::debug`]); the answer goes
    /// to the server on the VM's own reply channel.
    Debug {
        /// The VM.
        vm: VmId,
        /// The request.
        request: DebugRequest,
    },
}

/// What reaches the core on its one channel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Message {
    /// A front end's command.
    Command(Command),
    /// A helper thread's message.
    Internal(Internal),
}

/// A channel end that goes inside a [`Command`] (equal to another end of
/// the same channel).
#[derive(Debug, Clone)]
pub struct Reply<T>(pub crossbeam_channel::Sender<T>);

impl<T> PartialEq for Reply<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_channel(&other.0)
    }
}

impl<T> Reply<T> {
    /// Sends, if anyone still listens.
    pub fn send(&self, value: T) {
        let _ = self.0.send(value);
    }
}

/// An arriving VM's memory, for the link thread to write its pages into
/// (equal to another over the same mapping).
#[derive(Debug, Clone)]
pub struct ArrivalMemory(pub crate::vm::memory::GuestMemory);

impl PartialEq for ArrivalMemory {
    fn eq(&self, other: &Self) -> bool {
        use vm_memory::{GuestAddress, GuestMemoryBackend as _};
        self.0.get_host_address(GuestAddress(0)).ok() == other.0.get_host_address(GuestAddress(0)).ok()
    }
}

/// A VM saved by the core, for a front end to write.
#[derive(Debug, Clone, PartialEq)]
pub struct TakenSnapshot {
    /// Its state.
    pub state: crate::snapshot::SnapshotState,
    /// Its memory's non-zero pages, copied.
    pub memory: crate::snapshot::format::Pages,
    /// How long the core took to save it (the VM was held that long).
    pub took_ns: u64,
    /// In how many steps its memory was copied (the other VMs ran between).
    pub steps: u32,
    /// The longest of those steps, ns (what its neighbours waited at most for it).
    pub longest_step_ns: u64,
}

impl TakenSnapshot {
    /// Encodes and writes it to `path` (whole or not at all); says what was
    /// written, in a line for the VM's console.
    pub fn write(&self, path: &std::path::Path) -> Result<String, String> {
        let started = std::time::Instant::now();
        // Written as it is encoded: a large VM's file is never whole in memory
        // beside the copy of its pages.
        let json = crate::snapshot::state::state_json(&self.state);
        let length = crate::snapshot::format::encoded_len(&json, &self.memory);
        let written = crate::os::files::write_atomically_with(path, |file| {
            crate::snapshot::format::encode_to(file, &json, &self.memory)
        });
        written.map_err(|error| match error {
            crate::os::files::FileError::Io(_) => {
                format!("cannot write the snapshot {}: {error}; give a path in a writable directory", path.display())
            }
            _ => format!("cannot write the snapshot {}: {error}", path.display()),
        })?;
        Ok(format!(
            "snapshot {} written: {} KiB for {} KiB of memory, saved in {:.2} ms{}, written in {:.2} ms",
            path.display(),
            length.div_ceil(1024),
            self.memory.memory_size >> 10,
            self.took_ns as f64 / 1e6,
            if self.steps > 1 { format!(" ({} steps)", self.steps) } else { String::new() },
            started.elapsed().as_secs_f64() * 1e3
        ))
    }
}

/// How the core is scheduling, sent at the start and after every change.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The policy.
    pub policy: Policy,
    /// The quantum (the period under `fair`).
    pub quantum: Duration,
    /// The timer backend.
    pub timer: TimerKind,
    /// Every VM's weight, in VM order.
    pub weights: Vec<f64>,
    /// The cores the VMs share (`--cpus`): weights are shares of them all.
    pub cpus: usize,
}

/// Where a VM is in its life.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum VmState {
    /// Runnable (scheduled in turn).
    Running,
    /// Held by the user; not scheduled.
    Paused,
    /// Waiting in `hlt` with interrupts on for its timer's next tick: not
    /// runnable, charged nothing.
    Sleeping {
        /// When the tick comes due (ns since the run started).
        until_ns: u64,
    },
    /// Ended with HLT.
    Halted {
        /// Registers at the halt.
        registers: RegisterDump,
        /// When it halted (ns since the run started).
        t_ns: u64,
    },
    /// Held off the CPU by its migration's auto-converge until `until_ns`
    /// (ns since the run started): it runs at most a share of the time.
    Throttled {
        /// When it may run again.
        until_ns: u64,
    },
    /// Stopped for gdb (`--gdb`): not scheduled, charged nothing.
    Gdb {
        /// Why it is stopped.
        stop: DebugStop,
    },
    /// Ended by gdb's `kill`.
    Killed,
    /// Moved to another matrix-tui, which runs it now.
    Moved {
        /// Where it went.
        to: String,
    },
    /// Came in by migration, waiting for the sender's Go: not runnable, and
    /// every command but quit refused.
    Arriving,
    /// Came in, but the sender went silent after Ready without its Go: it
    /// may still run there. Not runnable until `adopt NAME`.
    Orphaned,
    /// Was coming in, but the sender kept it (the move ended before Ready,
    /// or the sender called it off after): it runs there, and this copy is
    /// dropped for good.
    Dropped,
    /// Ended by a fault KVM reported.
    Crashed {
        /// What happened.
        reason: String,
        /// Registers at the crash.
        registers: RegisterDump,
    },
}

impl VmState {
    /// The state's name as the JSON report spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Sleeping { .. } => "sleeping",
            Self::Throttled { .. } => "throttled",
            Self::Halted { .. } => "halted",
            Self::Gdb { .. } => "gdb",
            Self::Killed => "killed",
            Self::Moved { .. } => "moved",
            Self::Crashed { .. } => "crashed",
            Self::Arriving => "arriving",
            Self::Orphaned => "orphaned",
            Self::Dropped => "dropped",
        }
    }

    /// Whether the VM is done for good (halted, crashed, killed, moved away
    /// or dropped).
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Halted { .. } | Self::Killed | Self::Crashed { .. } | Self::Moved { .. } | Self::Dropped)
    }
}

/// One VM's figures at a moment (cumulative; front ends take differences).
#[derive(Debug, Clone, PartialEq)]
pub struct VmSample {
    /// Counters so far.
    pub counters: VmCounters,
    /// Nanoseconds spent in KVM_RUN so far.
    pub cpu_ns: u64,
    /// Nanoseconds the scheduler charged it (KVM_RUN time up to each deadline).
    pub charged_ns: u64,
    /// Its vCPUs, for a VM of several (empty for a VM of one).
    pub vcpus: Vec<VcpuSample>,
    /// The core that runs it (0 with `--cpus 1`).
    pub core: usize,
    /// The cores it is pinned to (empty: any).
    pub pin: Vec<usize>,
}

impl VmSample {
    /// What a core sends for a VM that another core runs (its `core` is
    /// `usize::MAX`): the merger puts that core's in its place.
    pub fn elsewhere() -> Self {
        Self {
            counters: VmCounters::default(),
            cpu_ns: 0,
            charged_ns: 0,
            vcpus: Vec::new(),
            core: usize::MAX,
            pin: Vec::new(),
        }
    }
}

/// One vCPU's figures at a moment (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuSample {
    /// `run`, `sleep` (until its timer), `wait` (for a sibling's IPI) or `halt`.
    pub state: &'static str,
    /// Guest exits it made so far.
    pub exits: u64,
    /// Its part of its VM's charged time so far.
    pub charged_ns: u64,
    /// Loop iterations it spent spinning for a lock and on anything else,
    /// as its lock record says (zero for a guest that shares none).
    pub lock_spins: u64,
    /// See `lock_spins`.
    pub lock_work: u64,
}

/// What the core tells the front ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Console output of one or more VMs, each VM's in order. A round of
    /// flushes sends every VM's in one event: each event may wake a front
    /// end, and a wake-up is an interrupt to another CPU (several
    /// microseconds here, hundreds of them when each of 256 VMs had its own).
    Console(ConsoleBatch),
    /// The newest exits of one VM since the last such event (at most
    /// [`LIVE_EXITS`]; older ones were superseded), when the front end asked
    /// for records (`RunConfig::live_records`).
    Exits {
        /// The VM.
        vm: VmId,
        /// Oldest first.
        records: Vec<ExitRecord>,
    },
    /// Slices since the last such event, oldest first, when the front end
    /// asked for records. `dropped` older ones were lost while it lagged.
    Slices {
        /// The slices.
        records: Vec<SliceRecord>,
        /// Slices dropped just before these.
        dropped: u64,
    },
    /// How a VM was set up, step by step (at the start and after a restart).
    Setup {
        /// The VM.
        vm: VmId,
        /// The steps, in order, timed.
        steps: Vec<SetupStep>,
        /// The mode, where the image lies and where it starts, in a line.
        summary: String,
    },
    /// The answer to [`Command::Step`].
    Stepped {
        /// The VM.
        vm: VmId,
        /// When the step ended (ns since the run started).
        t_ns: u64,
        /// What the step came to.
        result: StepResult,
        /// Its registers after the step (the exit completed).
        registers: RegisterDump,
        /// The vCPU it stepped, for a VM of several.
        vcpu: Option<u16>,
    },
    /// The answer to [`Command::Snapshot`]: the VM's state and memory for
    /// the front end to write to `path`, or why it could not be saved.
    Snapshot {
        /// The VM.
        vm: VmId,
        /// When it was saved (ns since the run started).
        t_ns: u64,
        /// Where the file goes.
        path: std::path::PathBuf,
        /// What was saved.
        result: Result<Box<TakenSnapshot>, String>,
    },
    /// A VM came in (by migration): front ends add it, in this order.
    Added {
        /// Its id (the number of VMs before it).
        vm: VmId,
        /// Its name.
        name: String,
    },
    /// A line that belongs to no VM (an incoming migration refused, say).
    Notice {
        /// When (ns since the run started).
        t_ns: u64,
        /// The text.
        text: String,
    },
    /// A pre-copy round of a VM moving out ended (`ends`: and with it the
    /// rounds, the last one beginning).
    Round {
        /// The VM.
        vm: VmId,
        /// What the round sent and saw dirtied.
        round: crate::report::RoundReport,
        /// Why the rounds end here, if they do.
        ends: Option<crate::report::RoundsEnd>,
    },
    /// A VM changed state.
    State {
        /// The VM.
        vm: VmId,
        /// Its new state.
        state: VmState,
    },
    /// A VM's debugger connected, left or was refused (and, at the start,
    /// where its gdb server listens).
    Debugger {
        /// The VM.
        vm: VmId,
        /// When (ns since the run started).
        t_ns: u64,
        /// What happened.
        status: DebuggerStatus,
    },
    /// The scheduling settings changed (and once at the start).
    Settings(Settings),
    /// Counters of every VM, a few times a second.
    Sample {
        /// Nanoseconds since the run started.
        elapsed_ns: u64,
        /// One per VM, in VM order.
        vms: Vec<VmSample>,
    },
    /// The run is over; the last event.
    Finished(Box<RunReport>),
}

impl Event {
    /// `bytes` of VM `vm`, written all at once at `t_ns`, after `dropped`
    /// lost bytes.
    pub fn console(vm: VmId, bytes: &[u8], t_ns: u64, dropped: u64) -> Self {
        Self::Console(ConsoleBatch::of(vm, bytes, t_ns, dropped))
    }
}
