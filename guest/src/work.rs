//! Busy work of a fixed size, for guests that measure the CPU they get.
//!
//! One iteration is `dec rcx; jnz` in inline assembly, so a unit of work is the
//! same instructions whatever the compiler does; its cost in time depends on the
//! host (see the README's calibration table).

/// Spins for `iterations` loop iterations without leaving the guest.
#[inline(always)]
pub fn spin(iterations: u64) {
    if iterations == 0 {
        return;
    }
    // SAFETY: a register-only countdown loop.
    unsafe {
        core::arch::asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) iterations => _,
                         options(nomem, nostack));
    }
}
