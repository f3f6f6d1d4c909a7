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
}
