//! Every rule of HYPERCALLS.md, broken once each by the `evil` guest, on real
//! KVM: each gives its clear line, the VM goes on, and it halts at the end.

mod common;

use std::time::Duration;

use matrix_tui::config::Policy;

#[test]
fn evil_breaks_every_rule_and_still_halts() {
    let outcome = common::run(vec![common::builtin("evil", "evil")], Policy::Io, Duration::from_secs(20));
    let console = outcome.console(0);
    let vm = &outcome.report.vms[0];
    assert_eq!(vm.state, "halted", "{console}");

    // Each marker is followed by the hypervisor's answer on the next line(s).
    let expectations: &[(&str, &str)] = &[
        (
            "evil: 1 ",
            "[matrix] HC_printStr(0x80000000) refused: 0x80000000 is not mapped by the guest's page tables; nothing printed",
        ),
        (
            "evil: 2 ",
            "[matrix] HC_printStr(0x200000) refused: 0x200000 maps to 0x40000000, past the end of guest memory; nothing printed",
        ),
        ("evil: 3 ", "refused: no NUL within 4096 bytes; nothing printed"),
        ("evil: 4 ", "refused: no NUL before the end of guest memory; nothing printed"),
        ("evil: 5 ", "[matrix] unknown port 0x80: a 1-byte out; value 0x42 ignored"),
        ("evil: 6 ", "[matrix] unknown port 0x1234: a 4-byte in; it reads all ones\n4294967295"),
        ("evil: 7 ", "[matrix] HC_print8bit (port 0xe9) takes a 1-byte out, got a 2-byte out; value 0x4141 ignored"),
        ("evil: 8 ", "[matrix] HC_numExits (port 0xeb) takes a 4-byte in, got a 1-byte in; it reads all ones\n255"),
        ("evil: 9 ", "[matrix] HC_numExits (port 0xeb) takes a 4-byte in, got a 4-byte out; value 0x7 ignored"),
        (
            "evil: 10 ",
            "[matrix] HC_print32bit (port 0xea) takes a 4-byte out, got a 4-byte in; it reads all ones\n4294967295",
        ),
        ("evil: 11 ", "\x1b[2J\x1b[31mred\x1b[0m bell\x07 back\x08space\r"),
        ("evil: 12 ", "Invalid GVA\n0"),
        ("evil: 13 ", "Invalid GVA\n0"),
    ];
    for (marker, answer) in expectations {
        let at = console.find(marker).unwrap_or_else(|| panic!("no marker {marker:?} in:\n{console}"));
        let after_marker = &console[at..];
        let next_line = after_marker.find('\n').unwrap() + 1;
        assert!(
            after_marker[next_line..].starts_with(answer)
                || after_marker[next_line..].lines().next().unwrap().ends_with(answer),
            "after {marker:?} expected {answer:?}, got:\n{}",
            &after_marker[next_line..].lines().take(2).collect::<Vec<_>>().join("\n")
        );
    }
    assert!(console.ends_with("evil: done, halting\n"), "{console}");
    assert_eq!(vm.faults, 4, "the four refused printStr calls");
    assert_eq!(vm.exits.counts.unknown_port, 6, "the six misused ports");
    assert_eq!(vm.exits.counts.hlt, 1);
}

#[test]
fn control_bytes_are_escaped_on_headless_stdout_unless_raw() {
    let output = common::binary().args(["run", "--vm", "evil"]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("evil| \\x1b[2J\\x1b[31mred\\x1b[0m bell\\x07 back\\x08space\\x0d\n"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "an escape byte reached stdout");

    let raw = common::binary().args(["run", "--vm", "evil", "--raw"]).output().unwrap();
    assert!(raw.stdout.windows(4).any(|w| w == b"\x1b[2J"), "--raw passes bytes through");
}
