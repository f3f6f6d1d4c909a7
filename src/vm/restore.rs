//! Saving a machine (its vCPU state and memory) and making one again from
//! what was saved, in a fresh VM of this or another process.

use kvm_ioctls::Kvm;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

use super::cpu_mode::CpuMode;
use super::layout::SystemArea;
use super::loader::{ImageKind, LoadedImage};
use super::machine::{Machine, SetupError, SetupTimer, Vcpu, create_vm};
use super::memory;
use super::saved::{ImageState, MachineState, SavedMachine};
use super::vcpu_state::{VcpuState, VcpuStateError, msr_indices};
use crate::snapshot::format::{PAGE_SIZE, Pages};

/// Whether the host has swap on (read once from /proc/swaps; yes if it
/// cannot be read). Call it before the core thread is confined, as
/// `sched::spawn` does.
pub fn host_may_swap() -> bool {
    static SWAP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SWAP.get_or_init(|| std::fs::read_to_string("/proc/swaps").map_or(true, |swaps| swaps.lines().count() > 1))
}

impl Machine {
    /// Saves the machine: the exit in progress is completed first (an `in`'s
    /// value reaches the guest's rax only then), then the vCPU's state is
    /// read and the memory's non-zero pages copied. The machine can go on running after.
    pub fn save(&mut self, kvm: &Kvm) -> Result<(MachineState, Pages), VcpuStateError> {
        let state = self.save_state(kvm)?;
        Ok((state, self.copy_pages(&self.resident_pages(), false)))
    }

    /// [`Self::save`] without the memory.
    pub fn save_state(&mut self, kvm: &Kvm) -> Result<MachineState, VcpuStateError> {
        let msrs = msr_indices(kvm);
        let mut saved = Vec::with_capacity(self.vcpus.len());
        for vcpu in &mut self.vcpus {
            vcpu.complete_pending_exit();
            saved.push(VcpuState::save(vcpu.fd(), msrs)?);
        }
        let vcpu = saved.remove(0);
        let image = &self.image;
        let state = MachineState {
            mode: self.mode,
            memory_size: self.memory_size,
            structures_shift: self.area.shift,
            image: ImageState { kind: image.kind, start: image.span.start, end: image.span.end, entry: image.entry },
            vcpu,
            siblings: saved,
        };
        Ok(state)
    }

    /// Pages `indices` copied, zero ones only when `zeros`. Only pages are
    /// copied, not the whole memory: a whole copy of a large memory would
    /// fault in as many fresh pages (30 ms for 64 MiB here) while every VM
    /// waits.
    pub fn copy_pages(&self, indices: &[u64], zeros: bool) -> Pages {
        let mut pages = Pages::new(self.memory_size);
        self.copy_pages_into(indices, zeros, &mut pages);
        pages
    }

    /// [`Self::copy_pages`] added to `pages`.
    pub fn copy_pages_into(&self, indices: &[u64], zeros: bool, pages: &mut Pages) {
        let mut page = [0u8; PAGE_SIZE];
        for &index in indices {
            if self.memory.read_slice(&mut page, GuestAddress(index * PAGE_SIZE as u64)).is_ok() {
                if zeros { pages.push(index, &page) } else { pages.keep(index, &page) }
            }
        }
    }

    /// The pages of guest memory the host has ever backed: the others were
    /// never written and are zero, and reading them would fault each in.
    /// All of them where a page could be in swap (mincore calls a swapped
    /// page absent too) or where the host cannot tell.
    pub fn resident_pages(&self) -> Vec<u64> {
        let count = (self.memory_size / PAGE_SIZE as u64) as usize;
        if host_may_swap() {
            return (0..count as u64).collect();
        }
        let mut resident = vec![0u8; count];
        let start = self.memory.get_host_address(GuestAddress(0)).expect("guest memory starts at 0");
        // SAFETY: `start` is the start of this machine's one mapping of
        // `memory_size` bytes (page-aligned: mmap'd); mincore writes one byte
        // per 4 KiB page of it into `resident`, which has exactly that many.
        let result = unsafe { libc::mincore(start.cast(), self.memory_size as usize, resident.as_mut_ptr()) };
        if result != 0 {
            return (0..count as u64).collect();
        }
        (0..count as u64).filter(|&index| resident[index as usize] & 1 != 0).collect()
    }

    /// Makes `saved` again in a new VM: memory first (only the stored pages
    /// are written; the rest of a fresh mapping is zero), then the vCPU's
    /// state in the order the KVM API asks. MSRs the host refuses are
    /// skipped and listed in [`Machine::refused_msrs`].
    pub(super) fn restore(kvm: &Kvm, saved: &SavedMachine) -> Result<Self, SetupError> {
        let mut machine = Self::blank(kvm, saved.state.memory_size)?;
        let mut timer = SetupTimer::default();
        for (index, page) in saved.memory.pages() {
            machine
                .memory
                .write_slice(page, GuestAddress(index * PAGE_SIZE as u64))
                .map_err(|error| SetupError::Memory(std::io::Error::other(error.to_string())))?;
        }
        timer.done("copy the snapshot's pages in", "memory writes");
        machine.setup.extend(timer.steps);
        machine.take_state(&saved.state)?;
        Ok(machine)
    }

    /// A VM with `memory_size` bytes of zeroed memory and a vCPU with the
    /// host's CPUID, in no state yet: what a migration's pages are written
    /// into as they come, before [`Self::take_state`] gives it its vCPU.
    pub fn blank(kvm: &Kvm, memory_size: u64) -> Result<Self, SetupError> {
        let memory_size = memory::check_size(memory_size)?;
        let mut timer = SetupTimer::default();
        let memory = memory::allocate(memory_size).map_err(SetupError::Memory)?;
        timer.done("allocate guest memory", "mmap");
        let (vm, fds) = create_vm(kvm, &memory, memory_size, 1, &mut timer)?;
        Ok(Self {
            vcpus: fds.into_iter().map(|fd| Vcpu::new(kvm, fd)).collect(),
            _vm: vm,
            memory,
            memory_size,
            mode: CpuMode::Long,
            area: SystemArea { shift: 0 },
            image: LoadedImage { entry: 0, kind: ImageKind::Flat, span: 0..0 },
            setup: timer.steps,
            restore_notes: Default::default(),
        })
    }

    /// Gives this machine (its memory already the saved one's) the saved
    /// vCPU, mode and layout of `state`.
    pub fn take_state(&mut self, state: &MachineState) -> Result<(), SetupError> {
        if state.memory_size != self.memory_size {
            return Err(SetupError::Memory(std::io::Error::other(format!(
                "the saved machine has {} bytes of memory, this one {}",
                state.memory_size, self.memory_size
            ))));
        }
        let mut timer = SetupTimer::default();
        // A machine made blank has one vCPU: the saved one's siblings are made here.
        while self.vcpus.len() < state.vcpu_count() as usize {
            let index = self.vcpus.len() as u64;
            let fd = super::machine::setup_ioctl("to create a vCPU (KVM_CREATE_VCPU)", || self._vm.create_vcpu(index))?;
            let sibling = self.boot_vcpu().sibling(fd);
            self.vcpus.push(sibling);
        }
        self.restore_notes = state.vcpu.restore(self.boot_vcpu().fd(), super::machine::given_cpuid())?;
        for (index, sibling) in state.siblings.iter().enumerate() {
            // Each keeps its saved CPUID (its APIC id with it); the notes are the first's.
            sibling.restore(self.vcpus[index + 1].fd(), &[])?;
        }
        timer.done(
            if state.siblings.is_empty() { "restore the vCPU's state" } else { "restore each vCPU's state" },
            "KVM_SET_CPUID2, _TSC_KHZ, _MP_STATE, _REGS, _SREGS, _XSAVE, _XCRS, _DEBUGREGS, _MSRS, _VCPU_EVENTS",
        );
        self.setup.extend(timer.steps);
        let image = &state.image;
        self.mode = state.mode;
        self.area = SystemArea { shift: state.structures_shift };
        self.image = LoadedImage { entry: image.entry, kind: image.kind, span: image.start..image.end };
        Ok(())
    }
}
