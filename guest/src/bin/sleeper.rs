//! Sleeps between prints: an idle VM. It starts its virtual timer at a
//! period of 200 ms (argument 0: the period in ms) and waits for each tick
//! in `hlt`; after every tick (argument 1: every Nth) it prints how many it
//! has taken. Asleep, it is not run and costs nothing.
#![no_std]
#![no_main]

use matrix_guest::{args, hc, interrupts};

matrix_guest::entry!(main);

fn main() {
    let period_ms = args::get_or(0, 200).clamp(1, 60_000) as u32;
    let print_every = args::get_or(1, 1).max(1);
    interrupts::init();
    hc::print32(0);
    interrupts::timer_start(period_ms * 1000);
    let mut printed = 0;
    loop {
        interrupts::wait_for_tick();
        let ticks = interrupts::ticks();
        if ticks / print_every > printed {
            printed = ticks / print_every;
            hc::print32(ticks as u32);
        }
    }
}
