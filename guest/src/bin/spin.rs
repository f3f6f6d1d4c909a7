//! A loop that never exits to the host: only a timer can take the CPU back.
#![no_std]
#![no_main]

matrix_guest::entry!(main);

fn main() {
    loop {
        matrix_guest::work::spin(1 << 20);
    }
}
