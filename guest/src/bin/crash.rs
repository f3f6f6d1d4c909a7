//! Triple-faults: an invalid opcode with no IDT escalates to #GP, #DF and then a
//! shutdown, which ends this VM as crashed (the others go on).
#![no_std]
#![no_main]

use matrix_guest::hc;

matrix_guest::entry!(main);

fn main() {
    hc::print_str(c"crash: about to execute ud2 with no IDT\n");
    // SAFETY: deliberately faults; nothing after it runs.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}
