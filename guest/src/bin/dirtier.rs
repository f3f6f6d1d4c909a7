//! Dirties memory at a steady rate, for watching live migration converge or
//! not: each unit of work writes `pages` pages of a working set of `set`
//! pages at 1 MiB (round robin), then spins a little; every `every` units it
//! prints the number of units done. Arguments: pages per unit (default 8),
//! working set in pages (default 64; at most 240 in 2 MiB of memory, more
//! with `--mem`), units per printed line (default 100), iterations of busy
//! work per unit (default 50).
#![no_std]
#![no_main]

use matrix_guest::{args, hc, work};

matrix_guest::entry!(main);

/// Where the working set starts: above the image, below the stack.
const SET_START: u64 = 0x10_0000;
const PAGE: u64 = 4096;

fn main() {
    let pages = args::get_or(0, 8).max(1);
    let set = args::get_or(1, 64).max(1);
    let every = args::get_or(2, 100).max(1);
    let spin = args::get_or(3, 50);
    let mut cursor = 0u64;
    let mut units: u32 = 0;
    loop {
        for _ in 0..pages {
            let address = SET_START + (cursor % set) * PAGE;
            // SAFETY: the working set lies in guest memory (identity-mapped)
            // between the image and the stack, as the arguments promise.
            unsafe { core::ptr::write_volatile(address as *mut u64, u64::from(units)) };
            cursor = cursor.wrapping_add(1);
        }
        work::spin(spin);
        units = units.wrapping_add(1);
        if u64::from(units) % every == 0 {
            hc::print32(units);
        }
    }
}
