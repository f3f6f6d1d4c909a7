//! Helpers shared by the integration tests: run VMs through the real core and
//! collect what the front ends would see.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use matrix_tui::config::{Policy, RunConfig, VmConfig};
use matrix_tui::event::{Command, Event};
use matrix_tui::report::RunReport;
use matrix_tui::{guests, sched, vm};

/// Opens /dev/kvm. Without it the test fails (never skips) when CI=true.
pub fn kvm() -> kvm_ioctls::Kvm {
    match vm::open_kvm() {
        Ok(kvm) => kvm,
        Err(error) => panic!("these tests need /dev/kvm: {error}"),
    }
}

/// A VM running a built-in guest.
pub fn builtin(name: &str, guest: &str) -> VmConfig {
    VmConfig::new(name, guest, guests::resolve(guest).expect("built-in guest"))
}

/// What a run produced.
pub struct Outcome {
    pub events: Vec<Event>,
    pub report: RunReport,
}

impl Outcome {
    /// All console bytes of VM `vm`, in order.
    pub fn console(&self, vm: usize) -> String {
        let mut bytes = Vec::new();
        for event in &self.events {
            if let Event::Console {
                vm: from,
                bytes: chunk,
                ..
            } = event
            {
                if *from == vm {
                    bytes.extend_from_slice(chunk);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Runs `vms` under `policy` until they all finish, or quits them after `limit`.
pub fn run(vms: Vec<VmConfig>, policy: Policy, limit: Duration) -> Outcome {
    run_config(RunConfig::new(vms).with_policy(policy), limit)
}

/// Runs `config` until every VM finishes, or quits it after `limit`.
pub fn run_config(config: RunConfig, limit: Duration) -> Outcome {
    let core = sched::spawn(kvm(), config).expect("VMs set up");
    let deadline = Instant::now() + limit;
    let mut quit_sent = false;
    let mut events = Vec::new();
    loop {
        let event = if quit_sent {
            core.events()
                .recv_timeout(Duration::from_secs(10))
                .expect("the core finishes after quit")
        } else {
            match core.events().recv_deadline(deadline) {
                Ok(event) => event,
                Err(_) => {
                    core.send(Command::Quit);
                    quit_sent = true;
                    continue;
                }
            }
        };
        if let Event::Finished(report) = event {
            core.join();
            return Outcome {
                events,
                report: *report,
            };
        }
        events.push(event);
    }
}

/// The console `part1` must print (HYPERCALLS.md), given its `<hva>`.
pub fn part1_expected(hva: u32) -> String {
    format!(
        "Hello 695!\n2048\n4294967295\nCS695 Assignment 2\n14\n16\n{hva}\nInvalid GVA\n0\n\
         IO in: 3\nIO out: 16\nIO in: 6\nIO out: 20\n"
    )
}

/// Checks `part1`'s console when the host address is not known to the test:
/// everything but line 7 exactly, and line 7 a non-zero u32.
pub fn assert_part1_console(console: &str) {
    let hva_line = console
        .lines()
        .nth(6)
        .unwrap_or_else(|| panic!("part1 printed too little:\n{console}"));
    let hva: u32 = hva_line
        .parse()
        .unwrap_or_else(|_| panic!("line 7 is not a u32: {hva_line:?}"));
    assert_ne!(hva, 0);
    assert_eq!(console, part1_expected(hva));
}

/// The release or debug binary under test.
pub fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_matrix-tui"))
}
