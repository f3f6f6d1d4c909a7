//! 64-bit long mode as the guest ABI defines it: identity-mapped 2 MiB pages
//! over all of guest memory, and the control registers the guest starts with
//! (the segments are in `segments`, the registers built by `cpu_mode`).

use vm_memory::{Bytes, GuestAddress};

use super::layout::{PAGE_2M, Structure, SystemArea};
use super::memory::GuestMemory;

const PAGE_PRESENT: u64 = 1 << 0;
const PAGE_WRITABLE: u64 = 1 << 1;
const PAGE_HUGE: u64 = 1 << 7;

/// CR0: PE | MP | ET | NE | WP | AM | PG.
pub const CR0: u64 = 0x8005_0033;
/// CR4: PAE | OSFXSR | OSXMMEXCPT (SSE usable).
pub const CR4: u64 = 0x620;
/// EFER: LME | LMA.
pub const EFER: u64 = 0x500;

/// Writes the PML4, PDPT and page directory (where `area` puts them) that
/// identity-map `memory_size` bytes with 2 MiB pages (read/write,
/// supervisor). Nothing past memory is mapped.
pub fn write_page_tables(
    memory: &GuestMemory,
    memory_size: u64,
    area: SystemArea,
) -> Result<(), vm_memory::GuestMemoryError> {
    let (pml4, pdpt, directory) =
        (area.start(Structure::Pml4), area.start(Structure::Pdpt), area.start(Structure::PageDirectory));
    memory.write_obj(pdpt | PAGE_PRESENT | PAGE_WRITABLE, GuestAddress(pml4))?;
    memory.write_obj(directory | PAGE_PRESENT | PAGE_WRITABLE, GuestAddress(pdpt))?;
    for page in 0..memory_size / PAGE_2M {
        let entry = (page * PAGE_2M) | PAGE_PRESENT | PAGE_WRITABLE | PAGE_HUGE;
        memory.write_obj(entry, GuestAddress(directory + page * 8))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout::{PAGE_DIRECTORY, PDPT, PML4};
    use crate::vm::memory;

    #[test]
    fn page_tables_map_exactly_guest_memory() {
        let size = 6 << 20;
        let mem = memory::allocate(size).unwrap();
        write_page_tables(&mem, size, SystemArea::default()).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(pml4, PDPT | 3);
        let pdpt: u64 = mem.read_obj(GuestAddress(PDPT)).unwrap();
        assert_eq!(pdpt, PAGE_DIRECTORY | 3);
        let entries: Vec<u64> = (0..4).map(|i| mem.read_obj(GuestAddress(PAGE_DIRECTORY + i * 8)).unwrap()).collect();
        assert_eq!(entries, [0x83, 0x20_0083, 0x40_0083, 0]);
    }

    #[test]
    fn moved_tables_point_at_each_other_where_they_moved() {
        let size = 2 << 20;
        let mem = memory::allocate(size).unwrap();
        let area = SystemArea { shift: 0x10_0000 };
        write_page_tables(&mem, size, area).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4 + 0x10_0000)).unwrap();
        assert_eq!(pml4, (PDPT + 0x10_0000) | 3);
        let low: u64 = mem.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(low, 0, "nothing written at the ABI's addresses");
    }
}
