//! The classroom demo guests' main loop (Neo and Morpheus): CPU-bound work with a
//! themed progress line now and then.

use crate::{args, println, work};

/// Iterations of [`work::spin`] in one unit when argument 0 is missing or 0
/// and the host did not size it (matrix-tui sizes it to 1 ms of guest CPU on
/// the machine it runs on): about 1 ms on an emulating KVM such as kvm_pvm.
pub const DEFAULT_UNIT: u64 = 1_000;
/// Units between two progress lines (argument 1): with 1 ms units, a line
/// every 0.15 s of guest CPU, so a few lines a second at a 30 to 70 % share.
pub const DEFAULT_UNITS_PER_LINE: u64 = 150;

/// Works forever, printing `[step] name: phrase (N units)` every few hundred
/// units, cycling through `phrases`.
pub fn run(name: &str, phrases: &[&str]) -> ! {
    let unit = args::get_or(0, DEFAULT_UNIT);
    let units_per_line = args::get_or(1, DEFAULT_UNITS_PER_LINE);
    let mut units: u64 = 0;
    let mut step: u64 = 0;
    loop {
        for _ in 0..units_per_line {
            work::spin(unit);
        }
        units += units_per_line;
        step += 1;
        let phrase = phrases[(step as usize - 1) % phrases.len()];
        println!("[{step:04}] {name}: {phrase} ({units} units)");
    }
}
