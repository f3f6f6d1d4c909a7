//! What a snapshot's JSON holds: the VM as the run knew it (name, guest,
//! weight, ports), its machine (vCPU state, mode, layout) and matrix-tui's
//! own state of it (counters, hypercalls, timer, console), and the checks a
//! file must pass before anything is made from it.

use std::sync::Arc;

use super::format::{self, FormatError};
pub use super::identity::VmIdentity;
pub use super::running::{RuntimeState, SavedVcpu, SavedVcpuState, SnapshotState};
use crate::config::check_weight;
use crate::vm::SavedMachine;
use crate::vm::layout::{MAX_MEMORY, SystemArea};

/// A snapshot read and checked, ready to be restored (any number of times:
/// a restart restores it again).
#[derive(Debug)]
pub struct Snapshot {
    /// Where it was read from, as given.
    pub path: String,
    /// The VM as the run that took it knew it.
    pub vm: VmIdentity,
    /// Its machine and memory.
    pub machine: Arc<SavedMachine>,
    /// matrix-tui's state of it.
    pub runtime: RuntimeState,
}

/// A snapshot that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are damaged or of another version.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The JSON is not a VM's state.
    #[error("the snapshot's state cannot be read: {0}")]
    State(String),
    /// The state does not fit a machine.
    #[error("the snapshot does not fit a VM: {0}")]
    Unfit(String),
}

impl Snapshot {
    /// Decodes and checks a snapshot's bytes.
    pub fn decode(path: &str, bytes: Vec<u8>) -> Result<Self, SnapshotError> {
        Self::from_decoded(path, format::decode(bytes, MAX_MEMORY)?)
    }

    /// Checks a state and memory that arrived some other way (a migration's
    /// frames, each already checked) as a file's would be.
    pub fn from_decoded(path: &str, decoded: format::Decoded) -> Result<Self, SnapshotError> {
        let SnapshotState { vm, machine, runtime } = Self::checked_state(&decoded.state, decoded.memory_size)?;
        let machine = SavedMachine::new(machine, decoded).map_err(SnapshotError::Unfit)?;
        Ok(Self { path: path.to_string(), vm, machine, runtime })
    }

    /// The state `json` holds, checked as a file's would be, for a VM of
    /// `memory_size` bytes (a migration's, whose pages went straight into
    /// the VM's memory).
    pub fn checked_state(json: &str, memory_size: u64) -> Result<SnapshotState, SnapshotError> {
        let state = super::schema::from_json(json).map_err(|error| SnapshotError::State(error.to_string()))?;
        Self::check(&state).map_err(SnapshotError::Unfit)?;
        if state.machine.memory_size != memory_size {
            return Err(SnapshotError::Unfit(format!(
                "its state says {} bytes of memory but it stores {memory_size}",
                state.machine.memory_size
            )));
        }
        crate::vm::memory::check_size(memory_size).map_err(|error| SnapshotError::Unfit(error.to_string()))?;
        state.machine.vcpu.check().map_err(|error| SnapshotError::Unfit(error.to_string()))?;
        crate::vm::saved::check_siblings(&state.machine).map_err(SnapshotError::Unfit)?;
        let (vcpus, kept) = (state.machine.vcpu_count() as usize, state.runtime.vcpus.len());
        if vcpus > 1 && kept != vcpus {
            return Err(SnapshotError::Unfit(format!("it has {vcpus} vCPUs but keeps the state of {kept}")));
        }
        Ok(state)
    }

    fn check(state: &SnapshotState) -> Result<(), String> {
        check_weight(state.vm.weight)?;
        state.vm.port_map()?;
        let machine = &state.machine;
        let area = SystemArea { shift: machine.structures_shift };
        let reach = machine.mode.reach(machine.memory_size);
        let outside = machine.mode.structures().iter().find(|s| area.range(**s).end > reach);
        if machine.structures_shift % 4096 != 0 || outside.is_some() {
            return Err(format!(
                "its structures, moved up 0x{:x}, do not lie inside its {} KiB of memory on 4 KiB pages",
                machine.structures_shift,
                machine.memory_size >> 10
            ));
        }
        Ok(())
    }
}

/// Encodes `state` and the VM's memory `pages` as a snapshot file's bytes.
pub fn encode(state: &SnapshotState, pages: &format::Pages) -> Vec<u8> {
    format::encode(&state_json(state), pages)
}

/// The state as the file holds it.
pub fn state_json(state: &SnapshotState) -> String {
    super::schema::to_json(state)
}

/// A snapshot's contents described for people (`matrix-tui snapshot show`).
pub fn describe(snapshot: &Snapshot) -> String {
    let decoded_pages = snapshot.machine.memory.stored_pages();
    let machine = &snapshot.machine.state;
    let regs = &machine.vcpu.regs;
    let sregs = &machine.vcpu.sregs;
    let runtime = &snapshot.runtime;
    let timer = match runtime.timer.period_us {
        Some(period) => {
            format!("every {period} us, next tick {} us after the snapshot", runtime.timer.due_in_ns / 1000)
        }
        None => "not running".to_string(),
    };
    let vcpus = match machine.vcpu_count() {
        1 => String::new(),
        count => {
            let states: Vec<String> = runtime
                .vcpus
                .iter()
                .enumerate()
                .map(|(index, vcpu)| format!("{index} {}", saved_state_name(vcpu.state)))
                .collect();
            format!("vCPUs: {count} ({}); vCPU 0's registers:\n", states.join(", "))
        }
    };
    format!(
        "VM '{}' (guest {}, weight {}) in {} mode, file format {}.{}\n\
         memory: {} KiB, {} pages stored (the other {} were zero)\n\
         {vcpus}rip=0x{:x} rsp=0x{:x} rflags=0x{:x} rax=0x{:x}\n\
         cr0=0x{:x} cr3=0x{:x} cr4=0x{:x} efer=0x{:x} cs=0x{:x}\n\
         {} MSRs, mp_state {}\n\
         exits: {} ({} in, {} out, {} hlt), preemptions {}\n\
         timer: {timer}; {} ticks injected, {} coalesced{}\n",
        // A hostile file's names must not reach the terminal as escapes.
        crate::console::escape_input(&snapshot.vm.name),
        crate::console::escape_input(&snapshot.vm.guest),
        snapshot.vm.weight,
        machine.mode.name(),
        snapshot.machine.memory.version.0,
        snapshot.machine.memory.version.1,
        machine.memory_size >> 10,
        decoded_pages,
        machine.memory_size / format::PAGE_SIZE as u64 - decoded_pages,
        regs.rip,
        regs.rsp,
        regs.rflags,
        regs.rax,
        sregs.cr0,
        sregs.cr3,
        sregs.cr4,
        sregs.efer,
        sregs.cs.selector,
        machine.vcpu.msrs.len(),
        machine.vcpu.mp_state,
        runtime.counters.exits.total(),
        runtime.counters.exits.io_in,
        runtime.counters.exits.io_out,
        runtime.counters.exits.hlt,
        runtime.counters.preemptions,
        runtime.timer.injected,
        runtime.timer.coalesced,
        if runtime.sleeping { "; asleep in hlt" } else { "" },
    )
}

fn saved_state_name(state: super::running::SavedVcpuState) -> &'static str {
    match state {
        super::running::SavedVcpuState::Runnable => "runnable",
        super::running::SavedVcpuState::Sleeping => "sleeping",
        super::running::SavedVcpuState::Waiting => "waiting",
        super::running::SavedVcpuState::Halted => "halted",
    }
}
