//! 64-bit long mode as the guest ABI defines it: identity-mapped 2 MiB pages over
//! all of guest memory, a flat GDT, and the control registers the guest starts
//! with. The table writers work on guest memory alone; the register builders are
//! pure, so all of it is tested without KVM.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{GDT, PAGE_2M, PAGE_DIRECTORY, PDPT, PML4};
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
/// Selector of the flat 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x8;
/// Selector of the flat data segments.
pub const DATA_SELECTOR: u16 = 0x10;
/// RFLAGS at entry: only the always-one bit; interrupts off.
const RFLAGS: u64 = 0x2;

/// Writes the PML4, PDPT and page directory that identity-map `memory_size`
/// bytes with 2 MiB pages (read/write, supervisor). Nothing past memory is mapped.
pub fn write_page_tables(memory: &GuestMemory, memory_size: u64) -> Result<(), vm_memory::GuestMemoryError> {
    memory.write_obj(PDPT | PAGE_PRESENT | PAGE_WRITABLE, GuestAddress(PML4))?;
    memory.write_obj(PAGE_DIRECTORY | PAGE_PRESENT | PAGE_WRITABLE, GuestAddress(PDPT))?;
    for page in 0..memory_size / PAGE_2M {
        let entry = (page * PAGE_2M) | PAGE_PRESENT | PAGE_WRITABLE | PAGE_HUGE;
        memory.write_obj(entry, GuestAddress(PAGE_DIRECTORY + page * 8))?;
    }
    Ok(())
}

/// The flat code segment (64-bit, execute/read).
pub fn code_segment() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: CODE_SELECTOR,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    }
}

/// The flat data segment (read/write) used for DS, ES, FS, GS and SS.
pub fn data_segment() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: DATA_SELECTOR,
        type_: 0x3,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

/// Encodes a segment as an 8-byte GDT descriptor.
pub fn gdt_entry(segment: &kvm_segment) -> u64 {
    let limit = if segment.g != 0 { segment.limit >> 12 } else { segment.limit };
    let base = segment.base;
    let access = u64::from(segment.type_)
        | u64::from(segment.s) << 4
        | u64::from(segment.dpl) << 5
        | u64::from(segment.present) << 7;
    let flags =
        u64::from(segment.avl) | u64::from(segment.l) << 1 | u64::from(segment.db) << 2 | u64::from(segment.g) << 3;
    (u64::from(limit) & 0xffff)
        | (base & 0xff_ffff) << 16
        | access << 40
        | ((u64::from(limit) >> 16) & 0xf) << 48
        | flags << 52
        | ((base >> 24) & 0xff) << 56
}

/// Writes the GDT: null, code (0x8), data (0x10).
pub fn write_gdt(memory: &GuestMemory) -> Result<(), vm_memory::GuestMemoryError> {
    let entries = [0, gdt_entry(&code_segment()), gdt_entry(&data_segment())];
    for (index, entry) in entries.iter().enumerate() {
        memory.write_obj(*entry, GuestAddress(GDT + index as u64 * 8))?;
    }
    Ok(())
}

/// The special registers of a guest entering long mode, on top of the vCPU's own.
pub fn special_registers(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.cs = code_segment();
    let data = data_segment();
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 3 * 8 - 1;
    // No IDT: any exception escalates to a triple fault, which ends the VM.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = PML4;
    sregs.cr4 = CR4;
    sregs.cr0 = CR0;
    sregs.efer = EFER;
    sregs
}

/// The general registers at entry: RIP at the image's entry point, RSP at the
/// top of memory, interrupts off.
pub fn initial_registers(entry: u64, memory_size: u64) -> kvm_regs {
    kvm_regs { rip: entry, rsp: memory_size, rflags: RFLAGS, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory;

    #[test]
    fn flat_segments_encode_as_the_classic_descriptors() {
        assert_eq!(gdt_entry(&code_segment()), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(&data_segment()), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn page_tables_map_exactly_guest_memory() {
        let size = 6 << 20;
        let mem = memory::allocate(size).unwrap();
        write_page_tables(&mem, size).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(pml4, PDPT | 3);
        let pdpt: u64 = mem.read_obj(GuestAddress(PDPT)).unwrap();
        assert_eq!(pdpt, PAGE_DIRECTORY | 3);
        let entries: Vec<u64> = (0..4).map(|i| mem.read_obj(GuestAddress(PAGE_DIRECTORY + i * 8)).unwrap()).collect();
        assert_eq!(entries, [0x83, 0x20_0083, 0x40_0083, 0]);
    }

    #[test]
    fn registers_match_the_abi() {
        let sregs = special_registers(kvm_sregs::default());
        assert_eq!((sregs.cr0, sregs.cr4, sregs.efer, sregs.cr3), (0x8005_0033, 0x620, 0x500, 0x2000));
        assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.ss.selector), (0x8, 1, 0x10));
        let regs = initial_registers(0x10000, 2 << 20);
        assert_eq!((regs.rip, regs.rsp, regs.rflags), (0x10000, 0x20_0000, 2));
    }
}
