//! Sleeps between prints: an idle VM. Each round it prints its count and
//! sleeps 200 ms of host time in `hlt` (argument 0: the sleep in ms), woken
//! by its virtual timer; asleep, it is not run and costs nothing.
#![no_std]
#![no_main]

use matrix_guest::{args, hc, interrupts};

matrix_guest::entry!(main);

fn main() {
    let sleep_ms = args::get_or(0, 200).clamp(1, 60_000) as u32;
    let mut round: u32 = 0;
    loop {
        round = round.wrapping_add(1);
        hc::print32(round);
        interrupts::sleep_us(sleep_ms * 1000);
    }
}
