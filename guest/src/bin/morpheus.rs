//! Classroom demo guest: Morpheus, CPU-bound with a themed progress line a few
//! times a second at a full CPU share. Arguments: iterations per unit, units per line.
#![no_std]
#![no_main]

matrix_guest::entry!(main);

fn main() {
    matrix_guest::demo::run(
        "Morpheus",
        &[
            "What is real?",
            "Free your mind.",
            "Red pill or blue pill?",
            "Welcome to the desert of the real.",
            "I can only show you the door.",
            "You have to see it for yourself.",
            "He is beginning to believe.",
            "Knowing the path is not walking the path.",
        ],
    )
}
