//! A snapshot's contents in the running code's types: what a save makes
//! and a restore takes (the file's JSON is [`super::schema::FileState`]).

use super::identity::VmIdentity;
use crate::hypercall::HypercallProgress;
use crate::sched::virtual_timer::TimerState;
use crate::stats::VmCounters;
use crate::vm::MachineState;

/// One VM as a snapshot holds it, in the running code's types (the file's
/// JSON is [`super::schema::FileState`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotState {
    /// The VM as the run knew it.
    pub vm: VmIdentity,
    /// Its machine: mode, layout, vCPU.
    pub machine: MachineState,
    /// matrix-tui's own state of it.
    pub runtime: RuntimeState,
}

/// matrix-tui's own state of a VM.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeState {
    /// Exit and preemption counters (HC_numExits goes on from them).
    pub counters: VmCounters,
    /// Hypercall state between exits.
    pub hypercalls: HypercallProgress,
    /// The virtual timer.
    pub timer: TimerState,
    /// It was waiting in `hlt` for its next tick.
    pub sleeping: bool,
    /// The last of its console output (for the record; not printed again).
    pub console: String,
    /// Nanoseconds it had spent inside KVM_RUN.
    pub cpu_ns: u64,
    /// For a VM of several vCPUs, each one's own state (empty for a VM of
    /// one, whose timer and sleep are above).
    pub vcpus: Vec<SavedVcpu>,
}

/// One vCPU of a VM of several, as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedVcpu {
    /// Whether it could run.
    pub state: SavedVcpuState,
    /// Its virtual timer.
    pub timer: TimerState,
    /// Vectors raised on it, not yet injected.
    pub pending: Vec<u8>,
    /// Its HC_gvaToHva result waiting for the `in`.
    pub gva_result: Option<u32>,
    /// Its time inside KVM_RUN.
    pub cpu_ns: u64,
    /// Its part of the VM's charged time.
    pub charged_ns: u64,
    /// Exits it made.
    pub exits: u64,
    /// IPIs raised on it.
    pub ipis: u64,
    /// Of those, folded into one waiting.
    pub ipis_coalesced: u64,
}

/// Whether a saved vCPU could run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedVcpuState {
    /// It could.
    Runnable,
    /// In `hlt`, until its timer's tick.
    Sleeping,
    /// In `hlt`, for a sibling's IPI.
    Waiting,
    /// For good.
    Halted,
}
