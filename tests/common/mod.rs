//! Helpers shared by the integration tests: run VMs through the real core and
//! collect what the front ends would see.
#![allow(dead_code)]

use std::time::{Duration, Instant};

pub mod cast;
pub mod controlled;
pub mod tmux;

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
            if let Event::Console(batch) = event {
                for piece in batch.pieces().filter(|piece| piece.vm == vm) {
                    bytes.extend_from_slice(piece.bytes);
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
    let deadline = core.started() + limit;
    let mut events = Vec::new();
    let report = core.run_until(Some(deadline), |event| events.push(event));
    Outcome { events, report }
}

/// A runtime for one VM of a built-in guest, driven by the test itself.
pub fn runtime(guest: &str, args: &[u64]) -> matrix_tui::sched::VmRuntime {
    let builtin = guests::builtin(guest).expect("built-in guest");
    let spec = vm::MachineSpec {
        image: std::sync::Arc::from(builtin.image),
        memory_size: 2 << 20,
        args: args.to_vec(),
        layout: builtin.layout,
        restore: None,
        vcpus: 1,
    };
    matrix_tui::sched::VmRuntime::new(&kvm(), &spec, Default::default()).expect("the VM sets up")
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
    let hva_line = console.lines().nth(6).unwrap_or_else(|| panic!("part1 printed too little:\n{console}"));
    let hva: u32 = hva_line.parse().unwrap_or_else(|_| panic!("line 7 is not a u32: {hva_line:?}"));
    assert_ne!(hva, 0);
    assert_eq!(console, part1_expected(hva));
}

/// The release or debug binary under test.
pub fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_matrix-tui"))
}

/// A VM running a built-in guest with a weight and guest arguments.
pub fn weighted(name: &str, guest: &str, weight: f64, args: &[u64]) -> VmConfig {
    let mut vm = builtin(name, guest);
    vm.weight = weight;
    vm.args = args.to_vec();
    vm
}

/// Starts a run and hands back the core, for tests that steer it.
pub fn start(config: RunConfig) -> sched::CoreHandle {
    sched::spawn(kvm(), config).expect("VMs set up")
}

/// The process's resident memory in KiB once the run is `at` old (the
/// run's events left unread meanwhile, as a frozen front end leaves them).
pub fn rss_at(core: &sched::CoreHandle, at: Duration) -> u64 {
    while core.started().elapsed() < at {
        std::thread::sleep(Duration::from_millis(10));
    }
    matrix_tui::bench::measure::rss_kib()
}

/// Quits a run and collects everything it still sends.
pub fn quit(core: sched::CoreHandle, mut events: Vec<Event>) -> Outcome {
    core.send(Command::Quit);
    let report = core.run_until(None, |event| events.push(event));
    Outcome { events, report }
}

/// Receives events until `pick` returns Some for one (keeping all of them);
/// fails after 15 s, showing the state changes and settings seen meanwhile.
pub fn wait_for<T>(core: &sched::CoreHandle, events: &mut Vec<Event>, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let give_up = Instant::now() + Duration::from_secs(15);
    let first = events.len();
    loop {
        let Ok(event) = core.events().recv_deadline(give_up) else {
            let seen: Vec<&Event> =
                events[first..].iter().filter(|e| matches!(e, Event::State { .. } | Event::Settings(_))).collect();
            panic!("the awaited event did not come in 15 s; meanwhile: {seen:#?}");
        };
        let found = pick(&event);
        events.push(event);
        if let Some(found) = found {
            return found;
        }
    }
}

/// The first counter sample at or after `elapsed` since the start (events kept).
pub fn sample_after(
    core: &sched::CoreHandle,
    events: &mut Vec<Event>,
    elapsed: Duration,
) -> Vec<matrix_tui::event::VmSample> {
    wait_for(core, events, |event| match event {
        Event::Sample { elapsed_ns, vms } if *elapsed_ns >= elapsed.as_nanos() as u64 => Some(vms.clone()),
        _ => None,
    })
}

/// Each VM's share of the CPU time charged between two samples: KVM_RUN time
/// less the time the host gave the core thread's CPU to someone else, so that
/// a busy machine (other tests, other processes) does not skew it.
pub fn shares_between(before: &[matrix_tui::event::VmSample], after: &[matrix_tui::event::VmSample]) -> Vec<f64> {
    let deltas: Vec<u64> = before.iter().zip(after).map(|(b, a)| a.charged_ns - b.charged_ns).collect();
    let total: u64 = deltas.iter().sum();
    deltas.iter().map(|&d| d as f64 / total as f64).collect()
}

/// xorshift64*: small, seeded, reproducible random numbers for tests.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Builds `guest/examples/NAME` with its Makefile into `out`.
pub fn make_example(name: &str, out: &std::path::Path) {
    let make = std::process::Command::new("make")
        .arg("-C")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/examples").join(name))
        .arg(format!("OUT={}", out.display()))
        .output()
        .expect("make runs (install make and gcc; .ci/run does)");
    assert!(make.status.success(), "make failed:\n{}", String::from_utf8_lossy(&make.stderr));
}

/// Runs the binary (KVM checked first) with `args` and returns its output.
pub fn matrix(args: &[&str]) -> std::process::Output {
    kvm();
    binary().args(args).output().expect("the binary runs")
}

/// The JSON report of a `--json` run.
pub fn report(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("no JSON report ({error}); stderr:\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

/// The report's entry for VM `name`.
pub fn vm<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["vms"].as_array().unwrap().iter().find(|vm| vm["name"] == name).expect("the VM is in the report")
}
