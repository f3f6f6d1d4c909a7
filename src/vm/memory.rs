//! Guest memory: one anonymous mapping per VM, sized and checked here. Every
//! guest access in the project goes through vm-memory's bounds-checked calls,
//! and every write the hypervisor makes through them (the mailbox, a
//! hypercall's result, a debugger's bytes) sets the page's bit in the
//! region's dirty bitmap: KVM's dirty log sees only the guest's own writes,
//! and a migration must send both (as Firecracker tracks them).

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend as _, GuestMemoryMmap, MmapRegion};

use super::layout::{MAX_MEMORY, MIN_MEMORY, PAGE_2M};

/// The guest memory type every VM uses.
pub type GuestMemory = GuestMemoryMmap<AtomicBitmap>;

/// A guest memory size that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemorySizeError {
    /// Not a whole number of 2 MiB pages.
    #[error("guest memory must be a multiple of 2 MiB, got {0} bytes; try {mib} MiB", mib = round_up_mib(*.0))]
    NotMultipleOf2M(u64),
    /// Below 2 MiB or above 1 GiB.
    #[error("guest memory must be between 2 MiB and 1 GiB, got {0} bytes")]
    OutOfRange(u64),
}

fn round_up_mib(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_2M).max(1) * 2
}

/// Checks a guest memory size against the guest ABI's rules.
pub fn check_size(bytes: u64) -> Result<u64, MemorySizeError> {
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
        return Err(MemorySizeError::OutOfRange(bytes));
    }
    if bytes % PAGE_2M != 0 {
        return Err(MemorySizeError::NotMultipleOf2M(bytes));
    }
    Ok(bytes)
}

/// Allocates zeroed guest memory of `bytes` (already checked) at guest address 0.
pub fn allocate(bytes: u64) -> std::io::Result<GuestMemory> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)])
        .map_err(|error| std::io::Error::other(format!("cannot map {bytes} bytes of guest memory: {error}")))
}

/// The pages the hypervisor wrote since the last call (its own writes, not
/// the guest's), in order; their bits are cleared.
pub fn take_host_writes(memory: &GuestMemory) -> Vec<u64> {
    let Some(region) = memory.iter().next() else { return Vec::new() };
    let words = MmapRegion::bitmap(region).get_and_reset();
    let mut pages = Vec::new();
    for (word_index, word) in words.into_iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            pages.push(word_index as u64 * 64 + u64::from(bits.trailing_zeros()));
            bits &= bits - 1;
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_abi() {
        assert_eq!(check_size(2 << 20), Ok(2 << 20));
        assert_eq!(check_size(1 << 30), Ok(1 << 30));
        assert_eq!(check_size(0), Err(MemorySizeError::OutOfRange(0)));
        assert_eq!(check_size((1 << 30) + PAGE_2M), Err(MemorySizeError::OutOfRange((1 << 30) + PAGE_2M)));
        assert_eq!(check_size(3 << 20), Err(MemorySizeError::NotMultipleOf2M(3 << 20)));
        assert!(check_size(3 << 20).unwrap_err().to_string().contains("try 4 MiB"));
    }

    #[test]
    fn the_hypervisors_writes_are_tracked_by_page_and_taken_once() {
        use vm_memory::Bytes as _;
        let memory = allocate(4 << 20).unwrap();
        memory.write_obj(7u64, GuestAddress(0x5000)).unwrap();
        memory.write_slice(&[1; 8], GuestAddress(3 * 4096 - 4)).unwrap();
        memory.write_obj(1u8, GuestAddress((4 << 20) - 1)).unwrap();
        let mut byte = [0];
        memory.read_slice(&mut byte, GuestAddress(0x9000)).unwrap();
        assert_eq!(take_host_writes(&memory), [2, 3, 5, 1023], "reads are not writes");
        assert_eq!(take_host_writes(&memory), Vec::<u64>::new());
    }
}
