//! The reference guest `part1` against HYPERCALLS.md, on real KVM.

mod common;

use std::time::Duration;

use matrix_tui::config::Policy;
use matrix_tui::sched::Step;
use matrix_tui::vm::KickTarget;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn part1_is_byte_exact_with_the_real_host_address_and_leaves_42() {
    let mut vm = common::runtime("part1", &[]);
    let kick = KickTarget::new();
    let _attached = kick.attach();
    let mut steps = 0;
    loop {
        match vm.step(&kick, 0, false, u64::MAX).0 {
            Step::Halted { .. } => break,
            Step::Io | Step::Interrupted => {}
            other => panic!("part1 did {other:?}"),
        }
        steps += 1;
        assert!(steps < 1000, "part1 does not halt");
    }
    let hva = vm.machine.host_address(0x400).unwrap() as u32;
    let console = String::from_utf8(vm.console.history().to_vec()).unwrap();
    assert_eq!(console, common::part1_expected(hva));

    let answer: u64 = vm.machine.memory.read_obj(GuestAddress(0x400)).unwrap();
    assert_eq!(answer, 42);

    let exits = vm.counters.exits;
    assert_eq!((exits.io_in + exits.io_out, exits.hlt), (28, 1));
    assert_eq!((exits.io_in, exits.io_out, exits.total()), (6, 22, 29));
    assert_eq!((exits.unknown_port, vm.counters.faults), (0, 0));
}

#[test]
fn part1_through_the_core_reports_halted_with_its_console() {
    let outcome = common::run(vec![common::builtin("part1", "part1")], Policy::Io, Duration::from_secs(20));
    common::assert_part1_console(&outcome.console(0));
    let vm = &outcome.report.vms[0];
    assert_eq!(vm.state, "halted");
    assert_eq!(vm.console, outcome.console(0));
    assert_eq!((vm.exits.total, vm.exits.counts.hlt), (29, 1));
    assert!(vm.cpu_ns > 0);
}

#[test]
fn larger_memory_puts_the_stack_at_its_top_and_part1_still_works() {
    let mut vm = common::builtin("part1", "part1");
    vm.memory_size = 64 << 20;
    let outcome = common::run(vec![vm], Policy::Io, Duration::from_secs(20));
    common::assert_part1_console(&outcome.console(0));
}
