//! The command line: what `matrix-tui` accepts, and turning it into a run.
//!
//! Exit status: 0 when every VM halted or the duration ended, 3 when a VM
//! crashed, 2 for usage and configuration errors, 1 for host errors.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Parser, Subcommand};

use crate::config::{Policy, RunConfig, VmConfig};
use crate::headless::{self, HeadlessOptions};
use crate::sched::{self, VmSetupError};
use crate::units::{parse_duration, parse_size};
use crate::vm::SetupError;
use crate::vm::layout::DEFAULT_MEMORY;
use crate::{guests, vm};

/// Run several small VMs on one host thread with a scheduler of its own, and watch them.
#[derive(Debug, Parser)]
#[command(name = "matrix-tui", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

const AFTER_HELP: &str = "With no command, runs the Neo 70 / Morpheus 30 demo.\n\
Examples:\n  matrix-tui run --vm part1 --json\n  matrix-tui run --vm a=ticker:70 --vm b=ticker:30 --duration 5s\n  matrix-tui guests";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run VMs (the Neo/Morpheus demo when no --vm is given).
    Run(RunArgs),
    /// List the built-in guests.
    Guests,
}

/// Options of `matrix-tui run`.
#[derive(Debug, Args, Default)]
struct RunArgs {
    /// A VM: NAME=GUEST[:WEIGHT]. GUEST is a built-in guest (see `matrix-tui
    /// guests`) or a path to an image; a lone GUEST is also its NAME. Repeat for
    /// more VMs.
    #[arg(long = "vm", value_name = "NAME=GUEST[:WEIGHT]", value_parser = parse_vm_arg)]
    vms: Vec<VmArg>,

    /// Scheduling policy.
    #[arg(long, value_enum, default_value = "io")]
    policy: Policy,

    /// End the run after this long (e.g. 5s, 500ms); without it the run ends
    /// when every VM has halted or crashed, or on Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Guest memory of every VM (multiple of 2 MiB, at most 1 GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    mem: Option<u64>,

    /// Guest arguments of one VM: NAME=V1,V2,... (u64, decimal or 0x hex), written
    /// at 0x500. For ticker, neo and morpheus the first is the work unit in loop
    /// iterations.
    #[arg(long = "args", value_name = "NAME=V1,V2,...", value_parser = parse_args_arg)]
    guest_args: Vec<(String, Vec<u64>)>,

    /// Plain text output instead of the terminal UI (the only mode for now).
    #[arg(long)]
    headless: bool,

    /// Prefix each console line with seconds since the run started.
    #[arg(long)]
    timestamps: bool,

    /// Print no console lines; print one JSON report at the end.
    #[arg(long)]
    json: bool,

    /// Write guest output as it is, control bytes included (headless only).
    #[arg(long)]
    raw: bool,
}

#[derive(Debug, Clone)]
struct VmArg {
    name: String,
    guest: String,
    weight: Option<f64>,
}

fn parse_vm_arg(text: &str) -> Result<VmArg, String> {
    let (name, rest) = match text.split_once('=') {
        Some((name, rest)) => (Some(name.to_string()), rest),
        None => (None, text),
    };
    let (guest, weight) = match rest.rsplit_once(':') {
        Some((guest, weight)) => {
            let weight: f64 = weight
                .parse()
                .map_err(|_| format!("weight '{weight}' is not a number (NAME=GUEST[:WEIGHT])"))?;
            if !(weight > 0.0 && weight.is_finite()) {
                return Err(format!("weight {weight} must be a positive number"));
            }
            (guest.to_string(), Some(weight))
        }
        None => (rest.to_string(), None),
    };
    if guest.is_empty() {
        return Err("GUEST is empty (NAME=GUEST[:WEIGHT])".into());
    }
    // A lone GUEST names its VM: `part1`, or `my-guest` for `./build/my-guest.elf`.
    let name = name.unwrap_or_else(|| {
        std::path::Path::new(&guest)
            .file_stem()
            .map_or(guest.clone(), |stem| stem.to_string_lossy().into_owned())
    });
    check_name(&name)?;
    Ok(VmArg {
        name,
        guest,
        weight,
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "VM name '{name}' must be 1-32 letters, digits, '-', '_' or '.'"
        ))
    }
}

fn parse_args_arg(text: &str) -> Result<(String, Vec<u64>), String> {
    let (name, values) = text.split_once('=').ok_or("expected NAME=V1,V2,...")?;
    let values = values
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            }
            .map_err(|_| format!("guest argument '{v}' is not a u64"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), values))
}

/// A failure, with the exit status it deserves.
#[derive(Debug)]
enum Failure {
    /// The user asked for something that cannot work (status 2).
    Usage(anyhow::Error),
    /// The host could not do it (status 1).
    Host(anyhow::Error),
}

impl From<VmSetupError> for Failure {
    fn from(error: VmSetupError) -> Self {
        match error.source {
            SetupError::Kvm { .. } | SetupError::Memory(_) => Failure::Host(error.into()),
            _ => Failure::Usage(error.into()),
        }
    }
}

/// Runs the program with these arguments; returns the exit status.
pub fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Some(Command::Guests) => list_guests(),
        Some(Command::Run(args)) => run(args),
        None => run(RunArgs::default()),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Usage(error)) => {
            eprintln!("matrix-tui: {error:#}");
            ExitCode::from(2)
        }
        Err(Failure::Host(error)) => {
            eprintln!("matrix-tui: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn list_guests() -> Result<ExitCode, Failure> {
    let mut out = std::io::stdout().lock();
    for guest in guests::BUILTIN {
        let _ = writeln!(out, "{:<10} {}", guest.name, guest.summary);
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo when no VM is named: Neo and Morpheus.
fn default_vms() -> Vec<VmArg> {
    vec![
        VmArg {
            name: "neo".into(),
            guest: "neo".into(),
            weight: Some(70.0),
        },
        VmArg {
            name: "morpheus".into(),
            guest: "morpheus".into(),
            weight: Some(30.0),
        },
    ]
}

fn run_config(args: &RunArgs) -> Result<RunConfig, Failure> {
    let vm_args = if args.vms.is_empty() {
        default_vms()
    } else {
        args.vms.clone()
    };
    let memory_size = args.mem.unwrap_or(DEFAULT_MEMORY);
    vm::memory::check_size(memory_size)
        .map_err(|error| Failure::Usage(anyhow!("--mem: {error}")))?;
    let mut vms: Vec<VmConfig> = Vec::new();
    for arg in vm_args {
        if vms.iter().any(|vm| vm.name == arg.name) {
            return Err(Failure::Usage(anyhow!(
                "two VMs are called '{}'; give each --vm a NAME=",
                arg.name
            )));
        }
        let image = guests::resolve(&arg.guest).map_err(|error| Failure::Usage(error.into()))?;
        let mut config = VmConfig::new(arg.name, arg.guest, image);
        config.weight = arg.weight.unwrap_or(1.0);
        config.memory_size = memory_size;
        vms.push(config);
    }
    for (name, values) in &args.guest_args {
        let vm = vms.iter_mut().find(|vm| &vm.name == name).ok_or_else(|| {
            Failure::Usage(anyhow!(
                "--args names VM '{name}', which is not in this run"
            ))
        })?;
        vm.args = values.clone();
    }
    Ok(RunConfig {
        vms,
        policy: args.policy,
    })
}

fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let config = run_config(&args)?;
    let kvm = vm::open_kvm().map_err(|error| Failure::Host(error.into()))?;
    let names = config.vms.iter().map(|vm| vm.name.clone()).collect();
    let stop = stop_signals().map_err(Failure::Host)?;
    let core = sched::spawn(kvm, config)?;
    let options = HeadlessOptions {
        timestamps: args.timestamps,
        json: args.json,
        raw: args.raw,
        duration: args.duration,
    };
    let report = headless::run(core, names, options, std::io::stdout().lock(), &stop);
    for vm in report.vms.iter().filter(|vm| vm.state == "crashed") {
        eprintln!(
            "matrix-tui: VM '{}' crashed: {}",
            vm.name,
            vm.crash_reason.as_deref().unwrap_or("unknown reason")
        );
    }
    Ok(if report.any_crashed() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// A channel that receives a message on SIGINT, SIGTERM or SIGHUP.
fn stop_signals() -> anyhow::Result<crossbeam_channel::Receiver<()>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("matrix-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                let _ = tx.try_send(());
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_arguments_parse() {
        let vm = parse_vm_arg("neo=ticker:70").unwrap();
        assert_eq!(
            (vm.name.as_str(), vm.guest.as_str(), vm.weight),
            ("neo", "ticker", Some(70.0))
        );
        let vm = parse_vm_arg("part1").unwrap();
        assert_eq!(
            (vm.name.as_str(), vm.guest.as_str(), vm.weight),
            ("part1", "part1", None)
        );
        let vm = parse_vm_arg("c=./guest/examples/c/hello.elf").unwrap();
        assert_eq!(vm.guest, "./guest/examples/c/hello.elf");
        let vm = parse_vm_arg("./build/my-guest.bin").unwrap();
        assert_eq!((vm.name.as_str(), vm.weight), ("my-guest", None));
        assert!(parse_vm_arg("a=ticker:0").unwrap_err().contains("positive"));
        assert!(
            parse_vm_arg("a=ticker:x")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            parse_vm_arg("bad name=spin")
                .unwrap_err()
                .contains("VM name")
        );
        assert!(parse_vm_arg("a=").is_err());
    }

    #[test]
    fn guest_arguments_parse() {
        assert_eq!(
            parse_args_arg("t=1000,0x10"),
            Ok(("t".into(), vec![1000, 16]))
        );
        assert!(parse_args_arg("t=abc").is_err());
        assert!(parse_args_arg("t").is_err());
    }

    #[test]
    fn duplicate_names_and_unknown_guests_are_usage_errors() {
        let args = RunArgs {
            vms: vec![
                parse_vm_arg("a=spin").unwrap(),
                parse_vm_arg("a=part1").unwrap(),
            ],
            ..Default::default()
        };
        assert!(
            matches!(run_config(&args), Err(Failure::Usage(e)) if e.to_string().contains("two VMs are called 'a'"))
        );
        let args = RunArgs {
            vms: vec![parse_vm_arg("a=nope").unwrap()],
            ..Default::default()
        };
        assert!(
            matches!(run_config(&args), Err(Failure::Usage(e)) if e.to_string().contains("unknown guest"))
        );
        let args = RunArgs {
            mem: Some(3 << 20),
            ..Default::default()
        };
        assert!(matches!(run_config(&args), Err(Failure::Usage(_))));
    }

    #[test]
    fn the_default_run_is_neo_and_morpheus_70_30() {
        let config = run_config(&RunArgs::default()).unwrap();
        let vms: Vec<_> = config
            .vms
            .iter()
            .map(|vm| (vm.name.as_str(), vm.weight))
            .collect();
        assert_eq!(vms, [("neo", 70.0), ("morpheus", 30.0)]);
    }
}
