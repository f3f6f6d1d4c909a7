//! Does fixed units of busy work and, after each, prints the number of units done
//! so far with HC_print32bit. Its output rate is the guest's own measure of the
//! CPU it got. Argument 0: iterations per unit (default: about 1 ms here).
#![no_std]
#![no_main]

use matrix_guest::{args, hc, work};

matrix_guest::entry!(main);

/// Iterations of `work::spin` in one unit when argument 0 is missing or 0 and
/// the host did not size it (matrix-tui sizes it to 1 ms of guest CPU on the
/// machine it runs on): about 1 ms on an emulating KVM such as kvm_pvm.
const DEFAULT_UNIT: u64 = 1_000;

fn main() {
    let unit = args::get_or(0, DEFAULT_UNIT);
    let mut done: u32 = 0;
    loop {
        work::spin(unit);
        done = done.wrapping_add(1);
        hc::print32(done);
    }
}
