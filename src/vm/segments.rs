//! Flat segments and the GDT that holds them, for the protected modes and
//! long mode: null (0x0), code (0x8), data (0x10).

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

use super::memory::GuestMemory;

/// Selector of the flat code segment.
pub const CODE_SELECTOR: u16 = 0x8;
/// Selector of the flat data segments.
pub const DATA_SELECTOR: u16 = 0x10;

/// The flat code segment (execute/read): 64-bit for long mode, else 32-bit.
pub fn code_segment(long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: CODE_SELECTOR,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
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

/// Writes the GDT at `at`: null, code (0x8, 64-bit if `long`), data (0x10).
pub fn write_gdt(memory: &GuestMemory, at: u64, long: bool) -> Result<(), vm_memory::GuestMemoryError> {
    let entries = [0, gdt_entry(&code_segment(long)), gdt_entry(&data_segment())];
    for (index, entry) in entries.iter().enumerate() {
        memory.write_obj(*entry, GuestAddress(at + index as u64 * 8))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments_encode_as_the_classic_descriptors() {
        assert_eq!(gdt_entry(&code_segment(true)), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(&code_segment(false)), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(&data_segment()), 0x00cf_9300_0000_ffff);
    }
}
