//! One guest per fault class, each beside `part1` in the same run: the faulty
//! VM ends (or goes on) as the guest ABI says, with the reason and registers
//! kept, and `part1`'s output is exact every time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use matrix_tui::config::{Policy, VmConfig};
use matrix_tui::report::VmReport;

/// Runs a flat image beside `part1`; returns the image VM's report.
fn beside_part1(name: &str, image: Vec<u8>) -> (VmReport, String) {
    let vms = vec![VmConfig::new(name, name, Arc::from(image)), common::builtin("part1", "part1")];
    let outcome = common::run(vms, Policy::Fair, Duration::from_secs(3));
    common::assert_part1_console(&outcome.console(1));
    assert_eq!(outcome.report.vms[1].state, "halted");
    (outcome.report.vms[0].clone(), outcome.console(0))
}

fn assert_crashed(report: &VmReport, console: &str, reason: &str) {
    assert_eq!(report.state, "crashed", "{console}");
    let found = report.crash_reason.as_deref().unwrap_or("");
    assert!(found.contains(reason), "crash reason {found:?}, expected {reason:?}");
    assert!(report.registers.is_some(), "registers are kept");
    assert!(console.contains("[matrix] VM crashed: "), "{console}");
}

#[test]
fn hlt_with_interrupts_off_ends_the_vm_normally() {
    let (report, _) = beside_part1("cli-hlt", vec![0xfa, 0xf4]); // cli; hlt
    assert_eq!((report.state.as_str(), report.exits.counts.hlt), ("halted", 1));
}

#[test]
fn writing_over_its_own_page_tables_crashes_only_that_vm() {
    let image = [
        &[0x48, 0xc7, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00][..], // mov qword [0x2000], 0
        &[0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8][..],                                     // mov rax, cr3; mov cr3, rax
        &[0xf4][..],                                                                   // hlt (never reached)
    ]
    .concat();
    let (report, console) = beside_part1("own-tables", image);
    assert_crashed(&report, &console, "triple fault");
    // The first fetch after the CR3 reload (at 0x1000c) page-faults.
    assert_eq!(report.registers.unwrap().cr2, 0x1000c);
    assert_eq!(report.exits.counts.hlt, 0);
}

#[test]
fn jumping_outside_memory_crashes_only_that_vm() {
    let image = vec![0x48, 0xb8, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0xff, 0xe0]; // mov rax, 1 GiB; jmp rax
    let (report, console) = beside_part1("jump-out", image);
    assert_crashed(&report, &console, "triple fault");
    let registers = report.registers.unwrap();
    assert_eq!((registers.rip, registers.cr2), (0x4000_0000, 0x4000_0000));
}

#[test]
fn mmio_to_nowhere_is_refused_and_the_vm_goes_on() {
    let image = [
        &[0x48, 0xc7, 0x04, 0x25, 0x08, 0x40, 0x00, 0x00, 0x83, 0x00, 0x00, 0x40][..], // PD[1] = 1 GiB | P RW PS
        &[0x0f, 0x01, 0x3c, 0x25, 0x00, 0x00, 0x20, 0x00][..],                         // invlpg [0x200000]
        &[0x8b, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00][..],                               // mov eax, [0x200000]
        &[0xe7, 0xea][..],                                                             // out 0xea, eax (print it)
        &[0xf4][..],                                                                   // hlt
    ]
    .concat();
    let (report, console) = beside_part1("mmio", image);
    assert_eq!(report.state, "halted", "{console}");
    assert_eq!((report.exits.counts.mmio, report.faults), (1, 1));
    assert!(console.contains("[matrix] MMIO read from 0x40000000, outside guest memory; ignored"), "{console}");
    assert!(console.ends_with("4294967295\n"), "the read gave all ones: {console}");
}

#[test]
fn an_image_that_fills_all_of_memory_loads_and_runs() {
    let mut image = vec![0u8; (2 << 20) - 0x10000];
    image[0] = 0xf4; // hlt
    let (report, _) = beside_part1("full", image);
    assert_eq!(report.state, "halted");
}

#[test]
fn an_instruction_the_host_cannot_run_crashes_only_that_vm() {
    // pxor: KVM's instruction emulator (kvm_pvm hosts) cannot run it, which is
    // a KVM internal error; hardware-virtualized KVM just runs it and halts.
    let (report, console) = beside_part1("sse", vec![0x66, 0x0f, 0xef, 0xc0, 0xf4]);
    if report.state == "crashed" {
        assert_crashed(&report, &console, "KVM internal error");
    } else {
        assert_eq!(report.state, "halted");
    }
}
