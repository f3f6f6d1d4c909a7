//! KVM's dirty page log of a machine's memory, for live migration: turned
//! on for the rounds, read (and cleared) after each.

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use vm_memory::{GuestAddress, GuestMemoryBackend as _};

use super::machine::Machine;

impl Machine {
    /// Turns KVM's dirty page log of guest memory on or off (the slot is
    /// registered again with or without KVM_MEM_LOG_DIRTY_PAGES).
    pub fn log_dirty_pages(&mut self, on: bool) -> Result<(), kvm_ioctls::Error> {
        let start = self.memory.get_host_address(GuestAddress(0)).expect("guest memory starts at 0");
        let slot = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: self.memory_size,
            userspace_addr: start as u64,
            flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        };
        // SAFETY: the same live mapping of `memory_size` bytes as at setup,
        // owned by `self.memory`, which outlives the VM fd (Machine's field order).
        unsafe { self._vm.set_user_memory_region(slot) }
    }

    /// The pages the guest wrote since the last call (or since the log was
    /// turned on), read and cleared with KVM_GET_DIRTY_LOG. Writes the
    /// hypervisor itself makes are not in it.
    pub fn dirty_pages(&self) -> Result<Vec<u64>, kvm_ioctls::Error> {
        let bitmap = self._vm.get_dirty_log(0, self.memory_size as usize)?;
        let mut pages = Vec::new();
        for (word_index, word) in bitmap.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as u64;
                pages.push(word_index as u64 * 64 + bit);
                bits &= bits - 1;
            }
        }
        Ok(pages)
    }
}
