//! The end-of-run report (`run --json`), built by the core when a run ends.

use serde::Serialize;

use crate::config::Calibration;
use crate::stats::{ExitCounts, Percentiles};
use crate::vm::RegisterDump;

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Wall time of the run.
    pub wall_ns: u64,
    /// Scheduling policy.
    pub policy: String,
    /// Quantum in microseconds (null for `io`, which has none).
    pub quantum_us: Option<u64>,
    /// Timer backend (null for `io`).
    pub timer: Option<String>,
    /// Percent of wall time the core spent outside KVM_RUN.
    pub outside_kvm_run_pct: f64,
    /// How long after a slice's deadline the preempted guest was out of KVM_RUN
    /// (null when nothing was preempted).
    pub preempt_overrun_us: Option<Percentiles>,
    /// How long before its deadline each preempted slice that ended early
    /// ended (its kick, armed early by the measured latency, came sooner
    /// than that); null when none did. Early ends are repaid by the planner.
    pub preempt_early_us: Option<Percentiles>,
    /// Percent of timed slices whose deadline was armed a slice ahead (null
    /// when no slice had a deadline); the others armed theirs when they started.
    pub deadlines_armed_ahead_pct: Option<f64>,
    /// How far before each deadline the timer was armed at the end of the
    /// run: the kick latency measured (null when slices had no deadline or
    /// compensation was off).
    pub kick_lead_us: Option<f64>,
    /// One entry per VM, in scenario order.
    pub vms: Vec<VmReport>,
    /// How fast this machine runs the guests' busy loop, when the demo
    /// guests' units were sized by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// The exit trace (`run --trace`), if one was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceReport>,
    /// Per VM, when timed (`RunConfig::timings`): not part of the JSON.
    #[serde(skip)]
    pub timings: Vec<VmTimings>,
    /// One entry per core (`--cpus`), in order.
    pub cores: Vec<CoreReport>,
}

/// One core of the run (one thread on one host CPU).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CoreReport {
    /// Its number, from 0.
    pub index: usize,
    /// The host CPU its thread was bound to (null with `--cpus 1`, whose
    /// one core goes wherever the host puts it).
    pub host_cpu: Option<usize>,
    /// The VMs it ran at the end, by name.
    pub vms: Vec<String>,
    /// Their ids, for putting the cores' reports together.
    #[serde(skip)]
    pub ids: Vec<usize>,
    /// Percent of the run's wall time its thread was on a CPU: running
    /// guests (its VMs', and under gang other cores' lanes) and scheduling;
    /// the rest it was idle or the host ran something else.
    pub busy_pct: f64,
    /// Percent of the run's wall time this core spent outside KVM_RUN
    /// (idle, or scheduling).
    pub outside_kvm_run_pct: f64,
    /// vCPUs moved onto or off it by balancing.
    pub moves: u64,
}

/// What became of a run's exit trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceReport {
    /// The file.
    pub path: String,
    /// Records handed to the writer.
    pub records: u64,
    /// Records dropped because the writer fell behind (a slow disk).
    pub dropped: u64,
    /// Records in the file.
    pub written: u64,
    /// Records handed to the writer that are not in the file: a write
    /// failed (the file then ends at its last whole record), or its reader
    /// did not take them in time.
    pub lost: u64,
    /// Why writing failed, if it did.
    pub error: Option<String>,
}

/// What a timed run recorded of one VM (monotonic ns), for the bench.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmTimings {
    /// When each guest I/O exit returned from KVM_RUN (a `ticker` prints once
    /// per unit of work, so these time its work).
    pub io_exit_ns: Vec<u64>,
    /// Each slice: when it started and ended, and what it was charged.
    pub slices: Vec<TimedSlice>,
}

/// One slice of a timed run (monotonic ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedSlice {
    /// When the slice began.
    pub start_ns: u64,
    /// When it ended.
    pub end_ns: u64,
    /// What it was charged.
    pub charged_ns: u64,
}

/// One VM at the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmReport {
    /// Its name.
    pub name: String,
    /// The guest it ran (built-in name or image path).
    pub guest: String,
    /// `halted`, `crashed`, `running` or `paused`.
    pub state: String,
    /// Why it crashed, if it did.
    pub crash_reason: Option<String>,
    /// Registers at the crash, if it crashed.
    pub registers: Option<RegisterDump>,
    /// Scheduling weight.
    pub weight: f64,
    /// weight / sum of weights.
    pub target_share: f64,
    /// Measured fraction of the time spent in guests (KVM_RUN).
    pub share: f64,
    /// Fraction of the time the scheduler charged (KVM_RUN up to deadlines).
    pub charged_share: f64,
    /// Nanoseconds inside KVM_RUN.
    pub cpu_ns: u64,
    /// Nanoseconds charged by the scheduler.
    pub charged_ns: u64,
    /// Nanoseconds the host took the CPU away from the core thread during this
    /// VM's slices (not charged).
    pub stolen_ns: u64,
    /// Guest-caused exits.
    pub exits: ExitReport,
    /// Timer kicks (not guest exits).
    pub preemptions: u64,
    /// Refused hypercalls (bad pointers).
    pub faults: u64,
    /// Virtual timer ticks injected (KVM_INTERRUPT).
    pub injected: u64,
    /// Ticks that came due while one was pending, folded into it.
    pub coalesced: u64,
    /// Its locking, for a guest that shares its lock records (HC_lockWatch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<crate::stats::LockCounts>,
    /// Console output (the last 64 KiB at most, from the start of a line),
    /// as text.
    pub console: String,
    /// Bytes of console output before `console`, left out of the report.
    pub console_cut_bytes: u64,
    /// Console bytes the front end never received (it fell behind).
    pub console_dropped: u64,
    /// Its live migration, if it moved out or came in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationReport>,
    /// Each of its vCPUs (the figures above are their sums).
    pub vcpus: Vec<VcpuReport>,
}

/// One vCPU of a VM at the end of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcpuReport {
    /// Its index in its VM.
    pub index: usize,
    /// `runnable`, `sleeping` (until its timer's tick), `waiting` (in hlt
    /// for a sibling's interrupt) or `halted`.
    pub state: &'static str,
    /// Guest exits it made.
    pub exits: u64,
    /// Nanoseconds inside KVM_RUN.
    pub cpu_ns: u64,
    /// Its part of its VM's charged time.
    pub charged_ns: u64,
    /// Its fraction of the run's time in guests (as the VM's `share`).
    pub share: f64,
    /// Its timer's ticks injected.
    pub injected: u64,
    /// Interrupts its siblings raised on it (HC_ipi).
    pub ipis: u64,
    /// Of those, raised while the same vector still waited to go in: folded into it.
    pub ipis_coalesced: u64,
    /// What its lock record says, for a guest that shares its records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<VcpuLockReport>,
}

/// One vCPU's lock record at the end, as the guest counted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VcpuLockReport {
    /// Critical sections it did.
    pub sections: u64,
    /// The part of its loop iterations spent spinning, in percent.
    pub spin_pct: Option<f64>,
}

/// A VM's live migration, as the side that reports it saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MigrationReport {
    /// `out` (the sender's) or `in` (the receiver's).
    pub direction: &'static str,
    /// Where it went (the receiver's address) or where it came from.
    pub peer: String,
    /// Each pre-copy round (the sender's).
    pub rounds: Vec<RoundReport>,
    /// Rounds in all (the last, paused one included).
    pub round_count: u32,
    /// Pages sent (or received) in all rounds.
    pub pages: u64,
    /// Pages of its memory.
    pub memory_pages: u64,
    /// From `migrate` to the switch of owner (the sender's).
    pub total_ms: Option<f64>,
    /// From its last slice on the sender to its first on the receiver:
    /// both on one host's monotonic clock (see docs/snapshots.md for
    /// other hosts).
    pub downtime_ms: Option<f64>,
    /// Why it was abandoned, if it was.
    pub abandoned: Option<String>,
}

/// Why a migration's pre-copy rounds ended (its last round began).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundsEnd {
    /// What was left fits the downtime limit at the measured bandwidth.
    Fits,
    /// The round cap or the byte cap (3x memory) was reached.
    Capped,
}

/// One pre-copy round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RoundReport {
    /// Its number (0 sends every page).
    pub round: u32,
    /// Pages it sent.
    pub pages_sent: u64,
    /// Pages dirtied while it went.
    pub pages_dirtied: u64,
    /// How long it took.
    pub ms: f64,
    /// Bytes a second acknowledged since the first page.
    pub bandwidth_bytes_s: f64,
    /// The dirtied pages over that bandwidth: the pause if it ended here.
    pub expected_downtime_ms: f64,
    /// The auto-converge throttle during it.
    pub throttle_pct: u32,
}

/// Exit counts with their total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ExitReport {
    /// All guest-caused exits.
    pub total: u64,
    /// By type.
    #[serde(flatten)]
    pub counts: ExitCounts,
}

impl From<ExitCounts> for ExitReport {
    fn from(counts: ExitCounts) -> Self {
        Self { total: counts.total(), counts }
    }
}

impl RunReport {
    /// Whether any VM crashed (exit status 3).
    pub fn any_crashed(&self) -> bool {
        self.vms.iter().any(|vm| vm.state == "crashed")
    }
}
