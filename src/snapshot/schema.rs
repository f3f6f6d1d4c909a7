//! The JSON a snapshot file holds (and a migration's State frame carries),
//! as types that exist only to be written and read. The running code's
//! types (counters, timer, hypercall progress, CPU mode, image kind) change
//! as the code does; these change only with the format's version, and each
//! converts to and from its running counterpart here. The golden files in
//! tests/golden pin what they read.
//!
//! The vCPU's record is [`super::vcpu_record`], the VM's settings
//! [`VmIdentity`]: both exist only for files too.

use serde::{Deserialize, Serialize};

pub use super::identity::VmIdentity;
use super::running::{RuntimeState, SnapshotState};
use super::vcpu_record::VcpuState;
use crate::hypercall::HypercallProgress;
use crate::sched::virtual_timer::TimerState;
use crate::stats::{ExitCounts, VmCounters};
use crate::vm::cpu_mode::CpuMode;
use crate::vm::loader::ImageKind;
use crate::vm::saved::{ImageState, MachineState};

/// A snapshot's JSON, whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileState {
    /// The VM as the run that took it knew it.
    pub vm: VmIdentity,
    /// Its machine: mode, layout, vCPU.
    pub machine: FileMachine,
    /// matrix-tui's own state of it.
    pub runtime: FileRuntime,
}

/// What the machine was, apart from its memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMachine {
    /// The CPU mode it was started in.
    pub mode: FileCpuMode,
    /// Guest memory in bytes.
    pub memory_size: u64,
    /// How far the hypervisor's structures moved up from their ABI addresses.
    pub structures_shift: u64,
    /// Where its image was loaded.
    pub image: FileImage,
    /// The vCPU.
    pub vcpu: VcpuState,
}

/// A CPU mode's name in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum FileCpuMode {
    Real,
    Protected,
    Paged32,
    Long,
}

/// Where the image lay and where it was entered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FileImage {
    pub kind: FileImageKind,
    pub start: u64,
    pub end: u64,
    pub entry: u64,
}

/// An image kind's name in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum FileImageKind {
    Elf,
    Flat,
}

/// matrix-tui's own state of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRuntime {
    /// Exit and preemption counters.
    pub counters: FileCounters,
    /// Hypercall state between exits.
    pub hypercalls: FileHypercalls,
    /// The virtual timer.
    pub timer: FileTimer,
    /// It was waiting in `hlt` for its next tick.
    pub sleeping: bool,
    /// The last of its console output.
    pub console: String,
    /// Nanoseconds it had spent inside KVM_RUN.
    pub cpu_ns: u64,
}

/// The VM's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FileCounters {
    pub exits: FileExits,
    pub preemptions: u64,
    pub faults: u64,
    pub injected: u64,
    pub coalesced: u64,
}

/// Guest-caused exits by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FileExits {
    pub io_in: u64,
    pub io_out: u64,
    pub hlt: u64,
    pub mmio: u64,
    pub unknown_port: u64,
    pub shutdown: u64,
    pub other: u64,
}

/// How far the hypercalls had got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FileHypercalls {
    pub mailbox_calls: u64,
    pub gva_result: Option<u32>,
}

/// The virtual timer: its period while it ran, and when its next tick was
/// due after the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FileTimer {
    pub period_us: Option<u32>,
    pub due_in_ns: u64,
    pub pending: bool,
    pub injected: u64,
    pub coalesced: u64,
}

impl From<&SnapshotState> for FileState {
    fn from(state: &SnapshotState) -> Self {
        let SnapshotState { vm, machine, runtime } = state;
        Self { vm: vm.clone(), machine: machine.into(), runtime: runtime.into() }
    }
}

impl From<FileState> for SnapshotState {
    fn from(file: FileState) -> Self {
        let FileState { vm, machine, runtime } = file;
        Self { vm, machine: machine.into(), runtime: runtime.into() }
    }
}

impl From<&MachineState> for FileMachine {
    fn from(machine: &MachineState) -> Self {
        let MachineState { mode, memory_size, structures_shift, image, vcpu } = machine;
        let mode = match mode {
            CpuMode::Real => FileCpuMode::Real,
            CpuMode::Protected => FileCpuMode::Protected,
            CpuMode::Paged32 => FileCpuMode::Paged32,
            CpuMode::Long => FileCpuMode::Long,
        };
        let kind = match image.kind {
            ImageKind::Elf => FileImageKind::Elf,
            ImageKind::Flat => FileImageKind::Flat,
        };
        let ImageState { start, end, entry, .. } = *image;
        let image = FileImage { kind, start, end, entry };
        Self { mode, memory_size: *memory_size, structures_shift: *structures_shift, image, vcpu: vcpu.clone() }
    }
}

impl From<FileMachine> for MachineState {
    fn from(file: FileMachine) -> Self {
        let FileMachine { mode, memory_size, structures_shift, image, vcpu } = file;
        let mode = match mode {
            FileCpuMode::Real => CpuMode::Real,
            FileCpuMode::Protected => CpuMode::Protected,
            FileCpuMode::Paged32 => CpuMode::Paged32,
            FileCpuMode::Long => CpuMode::Long,
        };
        let kind = match image.kind {
            FileImageKind::Elf => ImageKind::Elf,
            FileImageKind::Flat => ImageKind::Flat,
        };
        let FileImage { start, end, entry, .. } = image;
        Self { mode, memory_size, structures_shift, image: ImageState { kind, start, end, entry }, vcpu }
    }
}

impl From<&RuntimeState> for FileRuntime {
    fn from(runtime: &RuntimeState) -> Self {
        let RuntimeState { counters, hypercalls, timer, sleeping, console, cpu_ns } = runtime;
        let VmCounters { exits, preemptions, faults, injected, coalesced } = *counters;
        let ExitCounts { io_in, io_out, hlt, mmio, unknown_port, shutdown, other } = exits;
        let exits = FileExits { io_in, io_out, hlt, mmio, unknown_port, shutdown, other };
        let HypercallProgress { mailbox_calls, gva_result } = *hypercalls;
        let TimerState { period_us, due_in_ns, pending, injected: ticks, coalesced: folded } = *timer;
        Self {
            counters: FileCounters { exits, preemptions, faults, injected, coalesced },
            hypercalls: FileHypercalls { mailbox_calls, gva_result },
            timer: FileTimer { period_us, due_in_ns, pending, injected: ticks, coalesced: folded },
            sleeping: *sleeping,
            console: console.clone(),
            cpu_ns: *cpu_ns,
        }
    }
}

impl From<FileRuntime> for RuntimeState {
    fn from(file: FileRuntime) -> Self {
        let FileRuntime { counters, hypercalls, timer, sleeping, console, cpu_ns } = file;
        let FileCounters { exits, preemptions, faults, injected, coalesced } = counters;
        let FileExits { io_in, io_out, hlt, mmio, unknown_port, shutdown, other } = exits;
        let exits = ExitCounts { io_in, io_out, hlt, mmio, unknown_port, shutdown, other };
        let FileHypercalls { mailbox_calls, gva_result } = hypercalls;
        let FileTimer { period_us, due_in_ns, pending, injected: ticks, coalesced: folded } = timer;
        Self {
            counters: VmCounters { exits, preemptions, faults, injected, coalesced },
            hypercalls: HypercallProgress { mailbox_calls, gva_result },
            timer: TimerState { period_us, due_in_ns, pending, injected: ticks, coalesced: folded },
            sleeping,
            console,
            cpu_ns,
        }
    }
}

/// The state as a file holds it: pretty JSON of [`FileState`].
pub fn to_json(state: &SnapshotState) -> String {
    serde_json::to_string_pretty(&FileState::from(state)).expect("a snapshot state serializes")
}

/// The same JSON without the spaces and newlines (a migration's State
/// frame: it is encoded and parsed inside the VM's final pause).
pub fn to_compact_json(state: &SnapshotState) -> String {
    serde_json::to_string(&FileState::from(state)).expect("a snapshot state serializes")
}

/// The state a file's JSON holds.
pub fn from_json(json: &str) -> Result<SnapshotState, serde_json::Error> {
    serde_json::from_str::<FileState>(json).map(SnapshotState::from)
}
