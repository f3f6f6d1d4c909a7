//! The reference sequence of the guest ABI (the seed's grading guest): its console
//! must match HYPERCALLS.md byte for byte, and it leaves 42 at 0x400.
#![no_std]
#![no_main]

use matrix_guest::{entry, halt_forever, hc};

entry!(main);

fn main() {
    for &byte in b"Hello 695!\n" {
        hc::print8(byte);
    }
    hc::print32(2048);
    hc::print32(4294967295);
    let a = hc::num_exits();
    hc::print_str(c"CS695 Assignment 2\n");
    let b = hc::num_exits();
    hc::print32(a);
    hc::print32(b);
    let first = hc::num_exits_by_type_gva();
    hc::print32(hc::gva_to_hva(1024));
    hc::print32(hc::gva_to_hva(4294967295));
    let second = hc::num_exits_by_type_gva();
    hc::print_str_at(first);
    hc::print_str_at(second);
    // SAFETY: 0x400 is identity-mapped guest memory that nothing else uses.
    unsafe { core::ptr::write_volatile(0x400 as *mut u64, 42) };
    halt_forever()
}
