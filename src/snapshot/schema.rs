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
use super::running::{RuntimeState, SavedVcpu, SavedVcpuState, SnapshotState};
use super::vcpu_record::VcpuState;
use crate::hypercall::HypercallProgress;
use crate::sched::virtual_timer::TimerState;
use crate::stats::{ExitCounts, LockCounts, VmCounters};
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
    /// The vCPU (the first, for a VM of several).
    pub vcpu: VcpuState,
    /// The vCPUs past the first (format 2.1; absent for a VM of one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub siblings: Vec<VcpuState>,
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
    /// For a VM of several vCPUs, each one's own state, the first's
    /// included (format 2.1; absent for a VM of one, whose timer and
    /// sleep are the fields above).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpus: Vec<FileVcpu>,
}

/// One vCPU of a VM of several, as matrix-tui kept it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FileVcpu {
    /// `runnable`, `sleeping` (until its timer), `waiting` (for an IPI) or `halted`.
    pub state: FileVcpuState,
    pub timer: FileTimer,
    /// Vectors its siblings raised on it, not yet injected.
    pub pending: Vec<u8>,
    pub gva_result: Option<u32>,
    pub cpu_ns: u64,
    pub charged_ns: u64,
    pub exits: u64,
    pub ipis: u64,
    pub ipis_coalesced: u64,
}

/// Whether a vCPU could run, in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum FileVcpuState {
    Runnable,
    Sleeping,
    Waiting,
    Halted,
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
    /// Quanta that ended on a lock's holder (format 2.2; absent when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holder_preempted: u64,
    /// Quanta that ended on a lock's waiter (format 2.2; absent when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waiter_preempted: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
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
    /// Where the guest's lock records lie (format 2.2; absent when it named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_records: Option<u64>,
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
        let MachineState { mode, memory_size, structures_shift, image, vcpu, siblings } = machine;
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
        let (memory_size, structures_shift) = (*memory_size, *structures_shift);
        Self { mode, memory_size, structures_shift, image, vcpu: vcpu.clone(), siblings: siblings.clone() }
    }
}

impl From<FileMachine> for MachineState {
    fn from(file: FileMachine) -> Self {
        let FileMachine { mode, memory_size, structures_shift, image, vcpu, siblings } = file;
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
        Self { mode, memory_size, structures_shift, image: ImageState { kind, start, end, entry }, vcpu, siblings }
    }
}

impl From<&RuntimeState> for FileRuntime {
    fn from(runtime: &RuntimeState) -> Self {
        let RuntimeState { counters, hypercalls, timer, sleeping, console, cpu_ns, vcpus } = runtime;
        // The guest's own lock counts live in its memory, which the file keeps.
        let VmCounters { exits, preemptions, faults, injected, coalesced, lock } = *counters;
        let LockCounts { holder_preempted, waiter_preempted, .. } = lock;
        let ExitCounts { io_in, io_out, hlt, mmio, unknown_port, shutdown, other } = exits;
        let exits = FileExits { io_in, io_out, hlt, mmio, unknown_port, shutdown, other };
        let HypercallProgress { mailbox_calls, gva_result, lock_records } = *hypercalls;
        Self {
            counters: FileCounters {
                exits,
                preemptions,
                faults,
                injected,
                coalesced,
                holder_preempted,
                waiter_preempted,
            },
            hypercalls: FileHypercalls { mailbox_calls, gva_result, lock_records },
            timer: (*timer).into(),
            sleeping: *sleeping,
            console: console.clone(),
            cpu_ns: *cpu_ns,
            vcpus: vcpus.iter().map(FileVcpu::from).collect(),
        }
    }
}

impl From<FileRuntime> for RuntimeState {
    fn from(file: FileRuntime) -> Self {
        let FileRuntime { counters, hypercalls, timer, sleeping, console, cpu_ns, vcpus } = file;
        let FileCounters { exits, preemptions, faults, injected, coalesced, holder_preempted, waiter_preempted } =
            counters;
        let lock = LockCounts { holder_preempted, waiter_preempted, ..Default::default() };
        let FileExits { io_in, io_out, hlt, mmio, unknown_port, shutdown, other } = exits;
        let exits = ExitCounts { io_in, io_out, hlt, mmio, unknown_port, shutdown, other };
        let FileHypercalls { mailbox_calls, gva_result, lock_records } = hypercalls;
        Self {
            counters: VmCounters { exits, preemptions, faults, injected, coalesced, lock },
            hypercalls: HypercallProgress { mailbox_calls, gva_result, lock_records },
            timer: timer.into(),
            sleeping,
            console,
            cpu_ns,
            vcpus: vcpus.into_iter().map(SavedVcpu::from).collect(),
        }
    }
}

impl From<TimerState> for FileTimer {
    fn from(timer: TimerState) -> Self {
        let TimerState { period_us, due_in_ns, pending, injected, coalesced } = timer;
        Self { period_us, due_in_ns, pending, injected, coalesced }
    }
}

impl From<FileTimer> for TimerState {
    fn from(file: FileTimer) -> Self {
        let FileTimer { period_us, due_in_ns, pending, injected, coalesced } = file;
        Self { period_us, due_in_ns, pending, injected, coalesced }
    }
}

impl From<&SavedVcpu> for FileVcpu {
    fn from(vcpu: &SavedVcpu) -> Self {
        let SavedVcpu { state, timer, pending, gva_result, cpu_ns, charged_ns, exits, ipis, ipis_coalesced } =
            vcpu.clone();
        let state = match state {
            SavedVcpuState::Runnable => FileVcpuState::Runnable,
            SavedVcpuState::Sleeping => FileVcpuState::Sleeping,
            SavedVcpuState::Waiting => FileVcpuState::Waiting,
            SavedVcpuState::Halted => FileVcpuState::Halted,
        };
        Self { state, timer: timer.into(), pending, gva_result, cpu_ns, charged_ns, exits, ipis, ipis_coalesced }
    }
}

impl From<FileVcpu> for SavedVcpu {
    fn from(file: FileVcpu) -> Self {
        let FileVcpu { state, timer, pending, gva_result, cpu_ns, charged_ns, exits, ipis, ipis_coalesced } = file;
        let state = match state {
            FileVcpuState::Runnable => SavedVcpuState::Runnable,
            FileVcpuState::Sleeping => SavedVcpuState::Sleeping,
            FileVcpuState::Waiting => SavedVcpuState::Waiting,
            FileVcpuState::Halted => SavedVcpuState::Halted,
        };
        Self { state, timer: timer.into(), pending, gva_result, cpu_ns, charged_ns, exits, ipis, ipis_coalesced }
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
