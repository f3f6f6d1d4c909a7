//! The reference guest `part1` against HYPERCALLS.md, on real KVM.

mod common;

use std::time::Duration;

use matrix_tui::config::Policy;

#[test]
fn part1_output_is_byte_exact() {
    let outcome = common::run(
        vec![common::builtin("part1", "part1")],
        Policy::Io,
        Duration::from_secs(20),
    );
    println!("{}", outcome.console(0));
    let vm = &outcome.report.vms[0];
    println!("{:?}", vm);
}
