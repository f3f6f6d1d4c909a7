//! A guest to learn gdb on (`matrix-tui run --gdb debugme=127.0.0.1:1234`):
//! a global, a function with a local, and the reference guest's write of 42
//! to 0x400, each where a debugger can find it. Prints what it adds up.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use matrix_guest::{args, hc};

matrix_guest::entry!(main);

/// How many times `add_up` ran: a global for gdb's `print ROUNDS`.
static ROUNDS: AtomicU64 = AtomicU64::new(0);

/// Adds 1 ..= n; `total` is a local for gdb's `print total`.
#[inline(never)]
fn add_up(n: u64) -> u64 {
    let mut total = 0;
    for i in 1..=n {
        total = core::hint::black_box(total + i);
    }
    ROUNDS.fetch_add(1, Ordering::Relaxed);
    total
}

fn main() {
    let rounds = args::get_or(0, 3);
    for n in 1..=rounds {
        hc::print32(add_up(n * 10) as u32);
    }
    // SAFETY: 0x400 is identity-mapped guest memory that nothing else uses
    // (the reference guest leaves 42 there too).
    unsafe { core::ptr::write_volatile(0x400 as *mut u64, 42) };
    hc::print32(ROUNDS.load(Ordering::Relaxed) as u32);
}
