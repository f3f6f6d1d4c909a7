//! Saving a machine (its vCPU state and memory) and making one again from
//! what was saved, in a fresh VM of this or another process.

use std::sync::Arc;

use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use super::cpu_mode::CpuMode;
use super::layout::SystemArea;
use super::loader::{ImageKind, LoadedImage};
use super::machine::{Machine, SetupError, SetupTimer, Vcpu, create_vm};
use super::memory;
use super::vcpu_state::{VcpuState, VcpuStateError, msr_indices};
use crate::snapshot::format::{Decoded, PAGE_SIZE};

/// What a machine is, apart from its memory: enough to make it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// The CPU mode it was started in (the vCPU may since have changed it).
    pub mode: CpuMode,
    /// Guest memory in bytes.
    pub memory_size: u64,
    /// How far the hypervisor's structures moved up from their ABI addresses.
    pub structures_shift: u64,
    /// Where its image was loaded.
    pub image: ImageState,
    /// The vCPU.
    pub vcpu: VcpuState,
}

/// Where an image lies and where it was entered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        Ok(Arc::new(Self { state, memory }))
    }
}

impl Machine {
    /// Saves the machine: the exit in progress is completed first (an `in`'s
    /// value reaches the guest's rax only then), then the vCPU's state is
    /// read and the memory copied. The machine can go on running after.
    pub fn save(&mut self, kvm: &Kvm) -> Result<(MachineState, Vec<u8>), VcpuStateError> {
        self.vcpu.complete_pending_exit();
        let vcpu = VcpuState::save(self.vcpu.fd(), msr_indices(kvm))?;
        let mut memory = vec![0u8; self.memory_size as usize];
        self.memory.read_slice(&mut memory, GuestAddress(0)).expect("guest memory is memory_size bytes");
        let image = &self.image;
        let state = MachineState {
            mode: self.mode,
            memory_size: self.memory_size,
            structures_shift: self.area.shift,
            image: ImageState { kind: image.kind, start: image.span.start, end: image.span.end, entry: image.entry },
            vcpu,
        };
        Ok((state, memory))
    }

    /// Makes `saved` again in a new VM: memory first (only the stored pages
    /// are written; the rest of a fresh mapping is zero), then the vCPU's
    /// state in the order the KVM API asks. MSRs the host refuses are
    /// skipped and listed in [`Machine::refused_msrs`].
    pub(super) fn restore(kvm: &Kvm, saved: &SavedMachine) -> Result<Self, SetupError> {
        let state = &saved.state;
        let memory_size = memory::check_size(state.memory_size)?;
        let mut timer = SetupTimer::default();
        let memory = memory::allocate(memory_size).map_err(SetupError::Memory)?;
        timer.done("allocate guest memory", "mmap");
        for (index, page) in saved.memory.pages() {
            memory
                .write_slice(page, GuestAddress(index * PAGE_SIZE as u64))
                .map_err(|error| SetupError::Memory(std::io::Error::other(error.to_string())))?;
        }
        timer.done("copy the snapshot's pages in", "memory writes");
        let (vm, fd) = create_vm(kvm, &memory, memory_size, &mut timer)?;
        let refused_msrs = state.vcpu.restore(&fd)?;
        timer.done(
            "restore the vCPU's state",
            "KVM_SET_MP_STATE, _REGS, _SREGS, _XSAVE, _XCRS, _DEBUGREGS, _MSRS, _VCPU_EVENTS",
        );
        let image = &state.image;
        Ok(Self {
            vcpu: Vcpu::new(kvm, fd),
            _vm: vm,
            memory,
            memory_size,
            mode: state.mode,
            area: SystemArea { shift: state.structures_shift },
            image: LoadedImage { entry: image.entry, kind: image.kind, span: image.start..image.end },
            setup: timer.steps,
            refused_msrs,
        })
    }
}
