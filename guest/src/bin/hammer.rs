//! Issues one hypercall in a loop, forever: for measuring the cost of an exit.
//! Argument 0 picks it: 0 print8bit (default), 1 print32bit, 2 numExits,
//! 3 printStr of 64 bytes, 4 numExitsByType, 5 gvaToHva (two exits).
#![no_std]
#![no_main]

use matrix_guest::{args, hc};

matrix_guest::entry!(main);

static TEXT: &core::ffi::CStr = c"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";

fn main() {
    match args::get_or(0, 0) {
        1 => loop {
            hc::print32(7);
        },
        2 => loop {
            hc::num_exits();
        },
        3 => loop {
            hc::print_str(TEXT);
        },
        4 => loop {
            hc::num_exits_by_type_gva();
        },
        5 => loop {
            hc::gva_to_hva(0x400);
        },
        _ => loop {
            hc::print8(b'.');
        },
    }
}
