//! Prints as fast as it can, forever: numbered lines, about 4 KiB per
//! HC_printStr. The lines are laid out once and only their fixed-width decimal
//! counters are bumped in place, so each batch costs a few hundred instructions
//! (formatting anew would make this guest CPU-bound rather than a flood).
#![no_std]
#![no_main]

use matrix_guest::hc;

matrix_guest::entry!(main);

const PREFIX: &[u8] = b"chatty ";
const DIGITS: usize = 10;
const TEXT: &[u8] = b": the quick brown fox jumps over the lazy dog\n";
const LINE: usize = PREFIX.len() + DIGITS + TEXT.len();
const LINES: usize = 4000 / LINE;

fn main() {
    let mut buffer = [0u8; LINES * LINE + 1];
    for (index, line) in buffer.chunks_exact_mut(LINE).enumerate() {
        line[..PREFIX.len()].copy_from_slice(PREFIX);
        line[PREFIX.len()..PREFIX.len() + DIGITS].fill(b'0');
        line[PREFIX.len() + DIGITS..].copy_from_slice(TEXT);
        add(line, index as u32);
    }
    loop {
        hc::print_str_at(buffer.as_ptr() as u64 as u32);
        for line in buffer.chunks_exact_mut(LINE) {
            add(line, LINES as u32);
        }
    }
}

/// Adds `amount` to the line's decimal counter, carrying to the left.
fn add(line: &mut [u8], amount: u32) {
    let mut carry = amount;
    for digit in line[PREFIX.len()..PREFIX.len() + DIGITS].iter_mut().rev() {
        if carry == 0 {
            return;
        }
        let sum = u32::from(*digit - b'0') + carry;
        *digit = b'0' + (sum % 10) as u8;
        carry = sum / 10;
    }
}
