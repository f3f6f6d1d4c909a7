//! A machine as saved: what it is apart from its memory, and a saved
//! machine ready to be made again (`restore` makes it).

use std::sync::Arc;

use super::cpu_mode::CpuMode;
use super::loader::ImageKind;
use super::memory;
use crate::snapshot::format::Decoded;
use crate::snapshot::vcpu_record::VcpuState;

/// What a machine is, apart from its memory: enough to make it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineState {
    /// The CPU mode it was started in (the vCPU may since have changed it).
    pub mode: CpuMode,
    /// Guest memory in bytes.
    pub memory_size: u64,
    /// How far the hypervisor's structures moved up from their ABI addresses.
    pub structures_shift: u64,
    /// Where its image was loaded.
    pub image: ImageState,
    /// The bootstrap vCPU (index 0).
    pub vcpu: VcpuState,
    /// The vCPUs past the first, by index from 1 (empty for a VM of one).
    pub siblings: Vec<VcpuState>,
}

impl MachineState {
    /// How many vCPUs the machine has.
    pub fn vcpu_count(&self) -> u32 {
        1 + self.siblings.len() as u32
    }
}

/// Where an image lies and where it was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageState {
    /// "elf" or "flat".
    pub kind: ImageKind,
    /// Its lowest guest address.
    pub start: u64,
    /// One past its highest.
    pub end: u64,
    /// Where it was entered.
    pub entry: u64,
}

/// A saved machine ready to be made again: its state and its memory's pages.
#[derive(Debug)]
pub struct SavedMachine {
    /// The state.
    pub state: MachineState,
    /// The memory (the pages a snapshot stored; the others are zero).
    pub memory: Decoded,
}

impl SavedMachine {
    /// Pairs a state with the memory a snapshot decoded, if they agree.
    pub fn new(state: MachineState, memory: Decoded) -> Result<Arc<Self>, String> {
        if state.memory_size != memory.memory_size {
            return Err(format!(
                "its state says {} bytes of memory but it stores {}",
                state.memory_size, memory.memory_size
            ));
        }
        memory::check_size(state.memory_size).map_err(|error| error.to_string())?;
        state.vcpu.check().map_err(|error| error.to_string())?;
        check_siblings(&state)?;
        Ok(Arc::new(Self { state, memory }))
    }
}

/// Checks the vCPUs past the first: no more than a VM may have, each a
/// vCPU's state.
pub fn check_siblings(state: &MachineState) -> Result<(), String> {
    if state.vcpu_count() > super::MAX_VCPUS {
        return Err(format!("it has {} vCPUs; a VM has at most {}", state.vcpu_count(), super::MAX_VCPUS));
    }
    for (index, sibling) in state.siblings.iter().enumerate() {
        sibling.check().map_err(|error| format!("vCPU {}: {error}", index + 1))?;
    }
    Ok(())
}
