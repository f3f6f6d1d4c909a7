//! Classroom demo guest: Neo, CPU-bound with a themed progress line a few times a
//! second at a full CPU share. Arguments: iterations per unit, units per line.
#![no_std]
#![no_main]

matrix_guest::entry!(main);

fn main() {
    matrix_guest::demo::run(
        "Neo",
        &[
            "Wake up, Neo...",
            "The Matrix has you.",
            "Follow the white rabbit.",
            "Knock, knock.",
            "I know kung fu.",
            "There is no spoon.",
            "Dodging bullets.",
            "He is the One.",
        ],
    )
}
