//! The hypercalls of the guest ABI, one function each. Every call is exactly one
//! `in` or `out` on its port (one VM exit); `gva_to_hva` is two.

use core::arch::asm;
use core::ffi::CStr;

/// Port of HC_print8bit: `out dx, al`, the byte in AL.
pub const PORT_PRINT8: u16 = 0xE9;
/// Port of HC_print32bit: `out dx, eax`; shown in decimal with a newline.
pub const PORT_PRINT32: u16 = 0xEA;
/// Port of HC_numExits: `in eax, dx`; exits so far, this one included.
pub const PORT_NUM_EXITS: u16 = 0xEB;
/// Port of HC_printStr: `out dx, eax`, the GVA of a NUL-terminated string.
pub const PORT_PRINT_STR: u16 = 0xEC;
/// Port of HC_numExitsByType: `in eax, dx`; the GVA of `IO in: X\nIO out: Y\n`.
pub const PORT_NUM_EXITS_BY_TYPE: u16 = 0xED;
/// Port of HC_gvaToHva: `out dx, eax` with the GVA, then `in eax, dx` for the HVA.
pub const PORT_GVA_TO_HVA: u16 = 0xEE;
/// Port of HC_yield: `out dx, al`; gives up the rest of the slice.
pub const PORT_YIELD: u16 = 0xEF;

/// HC_print8bit: prints one byte on the VM's console.
#[inline(always)]
pub fn print8(byte: u8) {
    crate::io::outb(PORT_PRINT8, byte);
}

/// HC_print32bit: prints `value` in decimal followed by a newline.
#[inline(always)]
pub fn print32(value: u32) {
    crate::io::outl(PORT_PRINT32, value);
}

/// HC_numExits: how many exits this VM has made, this one included.
/// Exits forced by the scheduler's timer are not counted.
#[inline(always)]
pub fn num_exits() -> u32 {
    crate::io::inl(PORT_NUM_EXITS)
}

/// HC_printStr: prints a NUL-terminated string (at most 4096 bytes are read).
#[inline(always)]
pub fn print_str(text: &CStr) {
    print_str_at(text.as_ptr() as u64 as u32);
}

/// HC_printStr with a raw guest virtual address. The hypervisor checks it: a bad
/// address prints an error line and counts a fault instead of the string.
#[inline(always)]
pub fn print_str_at(gva: u32) {
    // SAFETY: the hypervisor only reads guest memory here. The asm is not `nomem`
    // so that the string is in memory before the exit.
    unsafe { asm!("out dx, eax", in("dx") PORT_PRINT_STR, in("eax") gva, options(nostack, preserves_flags)) }
}

/// HC_numExitsByType: the text `IO in: X\nIO out: Y\n` (counts include this exit).
///
/// The text lives in the hypervisor's mailbox, which has 32 slots used in turn:
/// it stays valid until 32 more calls of this hypercall.
pub fn num_exits_by_type() -> &'static CStr {
    let gva = num_exits_by_type_gva();
    // SAFETY: the hypervisor wrote a NUL-terminated string of under 128 bytes at
    // this address, inside the mailbox page that only it writes.
    unsafe { CStr::from_ptr(gva as u64 as *const core::ffi::c_char) }
}

/// HC_numExitsByType, returning the mailbox address as the guest ABI does.
#[inline(always)]
pub fn num_exits_by_type_gva() -> u32 {
    let gva: u32;
    // SAFETY: the hypervisor writes the mailbox during this exit, so the asm is
    // not `nomem`: later reads of the text must not be hoisted above it.
    unsafe { asm!("in eax, dx", in("dx") PORT_NUM_EXITS_BY_TYPE, out("eax") gva, options(nostack, preserves_flags)) }
    gva
}

/// HC_gvaToHva: the low 32 bits of the host virtual address backing `gva`, or 0
/// when the guest's page tables do not map it inside guest memory (the console
/// then shows `Invalid GVA`).
#[inline(always)]
pub fn gva_to_hva(gva: u32) -> u32 {
    crate::io::outl(PORT_GVA_TO_HVA, gva);
    crate::io::inl(PORT_GVA_TO_HVA)
}

/// HC_yield: gives up the rest of this VM's time slice.
#[inline(always)]
pub fn yield_now() {
    crate::io::outb(PORT_YIELD, 0);
}
