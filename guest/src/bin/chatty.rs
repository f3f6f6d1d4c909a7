//! Prints as fast as it can, forever: a console flood for testing back-pressure.
#![no_std]
#![no_main]

matrix_guest::entry!(main);

fn main() {
    let mut line: u64 = 0;
    loop {
        matrix_guest::print!("chatty line {line}: the quick brown fox jumps over the lazy dog\n");
        line += 1;
    }
}
