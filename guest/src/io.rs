//! Raw port I/O of every width, for guests that probe the hypervisor's rules
//! (wrong sizes, unknown ports). Ordinary guests use [`crate::hc`] instead.
//!
//! Port I/O cannot break the guest's own memory safety: in this VM each access is
//! a VM exit the hypervisor handles, so these functions are safe.

use core::arch::asm;

/// `out dx, al`.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: a port write exits to the hypervisor and touches no guest memory.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// `out dx, ax`.
#[inline(always)]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) }
}

/// `out dx, eax`.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

/// `in al, dx`.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: a port read exits to the hypervisor and touches no guest memory.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) }
    value
}

/// `in ax, dx`.
#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as for `inb`.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags)) }
    value
}

/// `in eax, dx`.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `inb`.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags)) }
    value
}
