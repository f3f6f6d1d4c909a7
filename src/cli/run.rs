//! `matrix-tui run` (and the demo with no command): its options, turning
//! them and a scenario into a run, and running it in the terminal UI or
//! headless, with the exit status its end deserves.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use crate::config::{DEFAULT_QUANTUM, Policy, RunConfig, TimerKind, VmConfig};
use crate::console::escape_input;
use crate::debug::ListenAddress;
use crate::headless::{self, HeadlessOptions};
use crate::lesson::Lesson;
use crate::os::signals;
use crate::os::stream::StreamWriter;
use crate::scenario::{self, Scenario, ScenarioVm};
use crate::sched;
use crate::snapshot::{self, Snapshot};
use crate::ui::cast::CastWriter;
use crate::units::{parse_duration, parse_size};
use crate::{calibration, control, guests, ui, vm};

use super::run_args::{
    VmArg, parse_address_arg, parse_args_arg, parse_gdb_arg, parse_mode_arg, parse_pin_arg, parse_ports_arg,
    parse_quantum, parse_vcpus_arg, parse_vm_arg,
};
use super::{Failure, OUTPUT_LOST, out_of_threads};
use crate::hypercall::PortMap;
use crate::migration::MigrationSettings;
use crate::migration::link::IncomingListener;
use crate::vm::{CpuMode, GuestLayout};

/// Options of `matrix-tui run`.
#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// A scenario file (TOML; see assets/). The options below override it.
    /// Without it and without --vm: the built-in Neo/Morpheus scenario.
    #[arg(value_name = "SCENARIO.toml")]
    pub(super) scenario: Option<PathBuf>,

    /// A VM: NAME=GUEST[:WEIGHT]. GUEST is a built-in guest (see `matrix-tui
    /// guests`) or a path to an image; a lone GUEST is also its NAME. Repeat for
    /// more VMs.
    #[arg(long = "vm", value_name = "NAME=GUEST[:WEIGHT]", value_parser = parse_vm_arg)]
    pub(super) vms: Vec<VmArg>,

    /// Scheduling policy [default: the scenario's, else fair].
    #[arg(long, value_enum)]
    pub(super) policy: Option<Policy>,

    /// The quantum: each VM's slice under rr, the period split by weight under
    /// fair (100us to 1s) [default: the scenario's, else 1ms].
    #[arg(long, value_parser = parse_quantum)]
    pub(super) quantum: Option<Duration>,

    /// What ends a slice: posix (a POSIX timer signals the core thread) or
    /// timerfd (a kicker thread reads a timerfd) [default: the scenario's, else posix].
    #[arg(long, value_enum)]
    pub(super) timer: Option<TimerKind>,

    /// End the run after this long (e.g. 5s, 500ms); without it the run ends
    /// when every VM has halted or crashed, or on Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub(super) duration: Option<Duration>,

    /// Guest memory of every VM (multiple of 2 MiB, at most 1 GiB) [default:
    /// the scenario's, else 2M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(super) mem: Option<u64>,

    /// Most guest memory all VMs together may have.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "8G")]
    pub(super) max_total_mem: u64,

    /// Guest arguments of one VM: NAME=V1,V2,... (u64, decimal or 0x hex), written
    /// at 0x500. For ticker, neo and morpheus the first is the work unit in loop
    /// iterations (0 or none: 1 ms of guest CPU, measured on this machine).
    #[arg(long = "args", value_name = "NAME=V1,V2,...", value_parser = parse_args_arg)]
    pub(super) guest_args: Vec<(String, Vec<u64>)>,

    /// The CPU mode VM NAME starts in: real, protected, paged32 or long
    /// [default: the scenario's, else the built-in guest's, else long].
    #[arg(long = "mode", value_name = "NAME=MODE", value_parser = parse_mode_arg)]
    pub(super) modes: Vec<(String, CpuMode)>,

    /// Where VM NAME's flat image is loaded (guest physical address, e.g. 0x0)
    /// [default: 0x10000].
    #[arg(long = "load", value_name = "NAME=ADDRESS", value_parser = parse_address_arg)]
    pub(super) loads: Vec<(String, u64)>,

    /// Where VM NAME starts (in real mode CS:IP = (A >> 4) & 0xF000 : A & 0xFFFF)
    /// [default: the load address, or the ELF entry].
    #[arg(long = "entry", value_name = "NAME=ADDRESS", value_parser = parse_address_arg)]
    pub(super) entries: Vec<(String, u64)>,

    /// Ports of VM NAME that make hypercalls: NAME=PORT:CALL,... (e.g.
    /// c=0x10:print32bit; CALL is print8bit, print32bit, numExits, printStr,
    /// numExitsByType, gvaToHva or yield).
    #[arg(long = "ports", value_name = "NAME=PORT:CALL,...", value_parser = parse_ports_arg)]
    pub(super) ports: Vec<(String, PortMap)>,

    /// Run the VMs on N cores, one thread per host CPU (at most the CPUs this
    /// process may use); weights are shares of all N [default: the
    /// scenario's, else 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(super) cpus: Option<u32>,

    /// Under fair, a VM that wakes from its timer sleep owed time runs at
    /// once, before the VM whose slice the wake cut short (wake-up
    /// preemption); without it, it waits for its turn by virtual deadline.
    #[arg(long)]
    pub(super) wake_preempt: bool,

    /// Keep VM NAME on these cores (with --cpus; numbered from 0); repeat
    /// for more VMs [default: the scenario's, else any core].
    #[arg(long = "pin", value_name = "NAME=CORE,...", value_parser = parse_pin_arg)]
    pub(super) pins: Vec<(String, Vec<usize>)>,

    /// Give VM NAME N virtual CPUs (1 to 64; they share its weight); repeat
    /// for more VMs [default: the scenario's, else 1].
    #[arg(long = "vcpus", value_name = "NAME=N", value_parser = parse_vcpus_arg)]
    pub(super) vcpus: Vec<(String, u32)>,

    /// Show VM NAME's accesses to ports that make no hypercall as plain
    /// lines (`out 0x10 ← 7`) instead of errors; repeat for more.
    #[arg(long = "show-ports", value_name = "NAME")]
    pub(super) show_ports: Vec<String>,

    /// Write every guest exit and every slice to FILE as JSON Lines (see the
    /// docs/observing.md for the schema); a slow disk costs records (counted), never time.
    #[arg(long, value_name = "FILE")]
    pub(super) trace: Option<PathBuf>,

    /// Start this VM paused (repeat for more), to step it from its first
    /// instruction (`s` in the UI, `step NAME` under --control) or resume it.
    #[arg(long, value_name = "NAME")]
    pub(super) paused: Vec<String>,

    /// Serve gdb for VM NAME at ADDR (HOST:PORT, or a Unix socket path);
    /// repeat for more. The VM waits at its entry point for `gdb -ex 'target
    /// remote ADDR'` while the others run.
    #[arg(long, value_name = "NAME=ADDR", value_parser = parse_gdb_arg)]
    pub(super) gdb: Vec<(String, ListenAddress)>,

    /// Wait for VMs moved here by another matrix-tui (`migrate NAME ADDR`
    /// there): ADDR is HOST:PORT or a Unix socket path. The run may start
    /// with no VM of its own and lasts until quit (or --duration).
    #[arg(long, value_name = "ADDR", value_parser = ListenAddress::parse)]
    pub(super) incoming: Option<ListenAddress>,

    /// A file whose contents both sides of a migration share: a receiver on
    /// TCP takes VMs only from senders that prove they know it (a fresh
    /// challenge each time; the secret never crosses the link), and one on
    /// an address other than loopback needs it. Make one with
    /// `head -c 32 /dev/urandom | base64 > FILE`.
    #[arg(long, value_name = "FILE")]
    pub(super) migrate_secret: Option<PathBuf>,

    /// Where `M` in the terminal UI moves the selected VM (a matrix-tui run
    /// with --incoming ADDR).
    #[arg(long, value_name = "ADDR", value_parser = ListenAddress::parse)]
    pub(super) migrate_to: Option<ListenAddress>,

    /// The pause a migration's last round may cost at most, at the measured
    /// bandwidth [default: 5ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(super) downtime_limit: Option<Duration>,

    /// Cap a migration's sending rate at this many bytes a second (e.g. 2M),
    /// so that a class sees rounds that take time [default: no cap].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(super) migrate_bandwidth: Option<u64>,

    /// Pre-copy rounds before the pause, whatever is still dirty (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(super) max_rounds: u32,

    /// Throttle a migrating VM that dirties memory faster than the link
    /// sends: it is held off the CPU for 20 % of its time, then 10 % more each
    /// round that does not shrink, to 99 %.
    #[arg(long)]
    pub(super) auto_converge: bool,

    /// Plain text output instead of the terminal UI (also what happens when
    /// stdout is not a terminal, and with --json or --control).
    #[arg(long)]
    pub(super) headless: bool,

    /// Record the terminal UI session as an asciicast v2 file (play it with
    /// `asciinema play FILE`).
    #[arg(long, value_name = "FILE.cast")]
    pub(super) record: Option<PathBuf>,

    /// Prefix each console line with seconds since the run started.
    #[arg(long)]
    pub(super) timestamps: bool,

    /// Print no console lines; print one JSON report at the end.
    #[arg(long)]
    pub(super) json: bool,

    /// Write guest output as it is, control bytes included (headless only).
    #[arg(long)]
    pub(super) raw: bool,

    /// Run without the core thread's seccomp filter (for debugging).
    #[arg(long)]
    pub(super) no_seccomp: bool,

    /// Arm each slice's timer at its deadline, not early by the kick latency
    /// measured as the run goes (to compare the two).
    #[arg(long)]
    pub(super) no_compensation: bool,

    /// The lesson whose scenario this run is (`matrix-tui lesson`).
    #[arg(skip)]
    pub(super) lesson: Option<Lesson>,

    /// Read commands from stdin while running, one per line: weight NAME W,
    /// pause NAME, resume NAME, restart NAME, step NAME, snapshot NAME FILE,
    /// policy io|rr|fair|gang, quantum 2ms, quit.
    #[arg(long)]
    pub(super) control: bool,
}

impl Default for RunArgs {
    fn default() -> Self {
        Self {
            scenario: None,
            vms: Vec::new(),
            policy: None,
            quantum: None,
            timer: None,
            duration: None,
            mem: None,
            max_total_mem: crate::migration::DEFAULT_MAX_TOTAL_MEMORY,
            guest_args: Vec::new(),
            modes: Vec::new(),
            loads: Vec::new(),
            entries: Vec::new(),
            ports: Vec::new(),
            show_ports: Vec::new(),
            vcpus: Vec::new(),
            pins: Vec::new(),
            cpus: None,
            wake_preempt: false,
            trace: None,
            paused: Vec::new(),
            gdb: Vec::new(),
            headless: false,
            record: None,
            timestamps: false,
            json: false,
            raw: false,
            control: false,
            no_seccomp: false,
            no_compensation: false,
            lesson: None,
            incoming: None,
            migrate_to: None,
            migrate_secret: None,
            downtime_limit: None,
            migrate_bandwidth: None,
            max_rounds: 30,
            auto_converge: false,
        }
    }
}

/// The VM called `name`, for option `option` that named it.
fn named<'a>(vms: &'a mut [ScenarioVm], option: &str, name: &str) -> Result<&'a mut ScenarioVm, Failure> {
    vms.iter_mut()
        .find(|vm| vm.name == name)
        .ok_or_else(|| Failure::Usage(anyhow!("{option} names VM '{}', which is not in this run", escape_input(name))))
}

/// [`named`], for an option that sets up a guest from its image: a VM
/// restored from a snapshot brings all that with it, so the option is refused
/// rather than ignored.
fn named_image<'a>(vms: &'a mut [ScenarioVm], option: &str, name: &str) -> Result<&'a mut ScenarioVm, Failure> {
    let vm = named(vms, option, name)?;
    if vm.guest.starts_with(scenario::SNAPSHOT_PREFIX) {
        return Err(Failure::Usage(anyhow!(
            "{option}: VM '{}' is restored from a snapshot, which brings its mode, memory and state with it; \
             leave {option} out for it",
            escape_input(name)
        )));
    }
    Ok(vm)
}

/// Reads the snapshot a `snapshot:FILE` guest names, and gives the VM the
/// snapshot's memory, mode, ports and (unless one was given) weight.
fn take_snapshot_settings(vm: &mut ScenarioVm) -> Result<Option<Arc<Snapshot>>, Failure> {
    let Some(file) = vm.guest.strip_prefix(scenario::SNAPSHOT_PREFIX) else { return Ok(None) };
    let snapshot = snapshot::file::read(std::path::Path::new(file))
        .map_err(|error| Failure::Usage(anyhow!("VM '{}': {error}", escape_input(&vm.name))))?;
    let machine = &snapshot.machine.state;
    if vm.vcpus != 1 && vm.vcpus != machine.vcpu_count() {
        return Err(Failure::Usage(anyhow!(
            "VM '{}' is restored from a snapshot of {} vCPUs, which brings them with it; leave its vcpus out",
            escape_input(&vm.name),
            machine.vcpu_count()
        )));
    }
    vm.vcpus = machine.vcpu_count();
    vm.memory = machine.memory_size;
    vm.mode = Some(machine.mode);
    if !vm.weight_given {
        vm.weight = snapshot.vm.weight;
    }
    if vm.ports.entries().next().is_none() {
        let mut ports = snapshot.vm.port_map().expect("checked when the snapshot was read");
        ports.show_unknown |= vm.ports.show_unknown;
        vm.ports = ports;
    }
    Ok(Some(Arc::new(snapshot)))
}

/// The run `args` describe: the scenario (or the built-in one) with the
/// command line's VMs and settings on top. Also returns the run's duration.
fn run_config(args: &RunArgs) -> Result<(RunConfig, Option<Duration>), Failure> {
    let scenario = match &args.scenario {
        Some(path) => scenario::load(path)?,
        None if args.lesson.is_some() => args.lesson.as_ref().expect("checked").scenario.clone(),
        None if args.vms.is_empty() && args.incoming.is_none() => scenario::default_scenario(),
        None => Scenario { policy: None, quantum: None, timer: None, duration: None, cpus: None, vms: Vec::new() },
    };
    let mut vms = scenario.vms;
    for arg in &args.vms {
        match vms.iter_mut().find(|vm| vm.name == arg.name) {
            Some(_) if args.scenario.is_none() && args.lesson.is_none() => {
                return Err(Failure::Usage(anyhow!("two VMs are called '{}'; give each --vm a NAME=", arg.name)));
            }
            // A --vm with a scenario VM's name replaces its guest (and weight, if given).
            Some(vm) => {
                vm.guest = arg.guest.clone();
                vm.weight = arg.weight.unwrap_or(vm.weight);
                vm.weight_given |= arg.weight.is_some();
            }
            None => vms.push(ScenarioVm {
                weight: arg.weight.unwrap_or(1.0),
                weight_given: arg.weight.is_some(),
                ..ScenarioVm::new(arg.name.clone(), arg.guest.clone())
            }),
        }
    }
    if vms.is_empty() && args.incoming.is_none() {
        return Err(Failure::Usage(anyhow!(
            "the scenario has no VMs; add [[vm]] entries or --vm NAME=GUEST (or wait for some with --incoming ADDR)"
        )));
    }
    if vms.len() > scenario::MAX_VMS {
        return Err(Failure::Usage(anyhow!("{} VMs; a run has at most {}", vms.len(), scenario::MAX_VMS)));
    }
    if let Some(memory) = args.mem {
        vm::memory::check_size(memory).map_err(|error| Failure::Usage(anyhow!("--mem: {error}")))?;
        vms.iter_mut().for_each(|vm| vm.memory = memory);
    }
    for (name, values) in &args.guest_args {
        let vm = named_image(&mut vms, "--args", name)?;
        if values.len() > vm::layout::MAX_GUEST_ARGS {
            return Err(Failure::Usage(anyhow!("--args: a guest takes at most 31 arguments")));
        }
        vm.args = values.clone();
    }
    for name in &args.paused {
        named(&mut vms, "--paused", name)?.paused = true;
    }
    for (name, mode) in &args.modes {
        named_image(&mut vms, "--mode", name)?.mode = Some(*mode);
    }
    for (name, load) in &args.loads {
        named_image(&mut vms, "--load", name)?.load = Some(*load);
    }
    for (name, entry) in &args.entries {
        named_image(&mut vms, "--entry", name)?.entry = Some(*entry);
    }
    for (name, ports) in &args.ports {
        let vm = named(&mut vms, "--ports", name)?;
        for (port, call) in ports.entries() {
            vm.ports.remap(port, call).map_err(|message| Failure::Usage(anyhow!("--ports: {message}")))?;
        }
    }
    for name in &args.show_ports {
        named(&mut vms, "--show-ports", name)?.ports.show_unknown = true;
    }
    for (name, count) in &args.vcpus {
        named_image(&mut vms, "--vcpus", name)?.vcpus = *count;
    }
    for (name, cores) in &args.pins {
        named(&mut vms, "--pin", name)?.pin = cores.clone();
    }
    for (at, (name, address)) in args.gdb.iter().enumerate() {
        if args.gdb[..at].iter().any(|(earlier, _)| earlier == name) {
            return Err(Failure::Usage(anyhow!("--gdb names VM '{name}' twice; a VM has one gdb server")));
        }
        named(&mut vms, "--gdb", name)?.gdb = Some(address.clone());
    }
    let snapshots: Vec<Option<Arc<Snapshot>>> = vms.iter_mut().map(take_snapshot_settings).collect::<Result<_, _>>()?;
    let total: u64 = vms.iter().map(|vm| vm.memory).sum();
    if total > args.max_total_mem {
        return Err(Failure::Usage(anyhow!(
            "the VMs need {} MiB of guest memory in all, more than --max-total-mem ({} MiB); give them less (--mem, \
             or memory in the scenario) or raise --max-total-mem",
            total >> 20,
            args.max_total_mem >> 20
        )));
    }
    let mut configs = Vec::with_capacity(vms.len());
    for (vm, snapshot) in vms.into_iter().zip(snapshots) {
        let image = match snapshot {
            // Its image is already in the snapshot's memory.
            Some(_) => Arc::from(&[][..]),
            None => guests::resolve(&vm.guest).map_err(|error| Failure::Usage(error.into()))?,
        };
        let guest_default = guests::default_layout(&vm.guest);
        let layout = GuestLayout {
            mode: vm.mode.unwrap_or(guest_default.mode),
            load: vm.load.or(guest_default.load),
            entry: vm.entry.or(guest_default.entry),
        };
        let mut config = VmConfig::new(vm.name, vm.guest, image);
        config.layout = layout;
        config.ports = vm.ports;
        config.weight = vm.weight;
        config.memory_size = vm.memory;
        config.args = vm.args;
        config.paused = vm.paused;
        config.gdb = vm.gdb;
        config.snapshot = snapshot;
        config.vcpus = vm.vcpus;
        config.pin = vm.pin;
        configs.push(config);
    }
    let config = RunConfig {
        vms: configs,
        policy: args.policy.or(scenario.policy).unwrap_or_default(),
        quantum: args.quantum.or(scenario.quantum).unwrap_or(DEFAULT_QUANTUM),
        timer: args.timer.or(scenario.timer).unwrap_or(TimerKind::Posix),
        stay_open: false,
        timings: false,
        live_records: false,
        trace: args.trace.clone(),
        calibration: None,
        seccomp: !args.no_seccomp,
        compensate: !args.no_compensation,
        migration: MigrationSettings {
            downtime_limit: args.downtime_limit.unwrap_or(crate::migration::DEFAULT_DOWNTIME_LIMIT),
            bandwidth: args.migrate_bandwidth,
            max_rounds: args.max_rounds,
            auto_converge: args.auto_converge,
            max_total_memory: args.max_total_mem,
        },
        migrate_secret: match &args.migrate_secret {
            Some(path) => Some(Arc::new(crate::migration::secret::Secret::read(path).map_err(|error| {
                Failure::Usage(anyhow!(
                    "--migrate-secret {}: {error}",
                    escape_input(path.as_os_str().as_encoded_bytes())
                ))
            })?)),
            None => None,
        },
        cpus: cores(args.cpus.or(scenario.cpus).unwrap_or(1), args.incoming.is_some())?,
        wake_preempt: args.wake_preempt,
    };
    for vm in &config.vms {
        if config.policy == Policy::Gang && vm.vcpus as usize > config.cpus {
            return Err(Failure::Usage(anyhow!(
                "VM '{}' has {} vCPUs, but the run has {} core{}: --policy gang runs all of a VM's vCPUs at once, \
                 each on its own core; give --cpus {} or more, fewer vCPUs, or another policy",
                vm.name,
                vm.vcpus,
                config.cpus,
                if config.cpus == 1 { "" } else { "s" },
                vm.vcpus
            )));
        }
        if let Some(&core) = vm.pin.iter().find(|&&core| core >= config.cpus) {
            let cores = if config.cpus == 1 { "core 0".to_string() } else { format!("cores 0 to {}", config.cpus - 1) };
            return Err(Failure::Usage(anyhow!(
                "VM '{}' is pinned to core {core}, but the run has {cores}; give more --cpus or pin it lower",
                vm.name
            )));
        }
    }
    Ok((config, args.duration.or(scenario.duration)))
}

/// The cores asked for, if this host has the CPUs for them and the run
/// can use them.
fn cores(asked: u32, incoming: bool) -> Result<usize, Failure> {
    let host = crate::os::affinity::allowed_count();
    if asked as usize > host {
        let plural = if host == 1 { "" } else { "s" };
        return Err(Failure::Usage(anyhow!(
            "--cpus {asked}: this process may run on {host} CPU{plural} here; give at most {host}"
        )));
    }
    if asked > 1 && incoming {
        return Err(Failure::Usage(anyhow!(
            "--incoming takes VMs in on one core only for now; leave --cpus out (or give 1) on the receiving side"
        )));
    }
    Ok(asked as usize)
}

pub(super) fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let (mut config, duration) = run_config(&args)?;
    let wants_text = args.headless || args.json || args.control;
    let terminal = std::io::stdout().is_terminal();
    if args.record.is_some() && (wants_text || !terminal) {
        return Err(Failure::Usage(anyhow!(
            "--record records the terminal UI: run it in a terminal, without --headless, --json or --control"
        )));
    }
    if !wants_text && !terminal {
        eprintln!(
            "matrix-tui: stdout is not a terminal, so the run is headless (--headless says so and hides this note)"
        );
    }
    let tui = !wants_text && terminal;
    // In the UI a finished VM can be restarted, and VMs may still come in:
    // the run lasts until quit.
    config.stay_open = tui || args.incoming.is_some();
    // The inspector and the timeline are made of exit and slice records.
    config.live_records = tui;
    let kvm = vm::open_kvm().map_err(|error| Failure::Host(error.into()))?;
    if calibration::wanted(&config.vms) {
        let measured = calibration::measure(&kvm).map_err(|error| Failure::Host(error.into()))?;
        calibration::size_units(&measured, &mut config.vms);
        config.calibration = Some(measured);
    }
    let names: Vec<String> = config.vms.iter().map(|vm| vm.name.clone()).collect();
    if let (Some(ListenAddress::Tcp(address)), None) = (&args.incoming, &config.migrate_secret) {
        if !is_loopback(address) {
            return Err(Failure::Usage(anyhow!(
                "--incoming {address}: anyone who can reach it could hand this run a VM; give --migrate-secret FILE \
                 (the same on the sending side), or listen on 127.0.0.1 or a Unix socket"
            )));
        }
    }
    let incoming = match &args.incoming {
        Some(address) => Some(IncomingListener::bind(address).map_err(|error| {
            Failure::Usage(anyhow!("--incoming {address}: cannot listen there: {error}; give a free port or path"))
        })?),
        None => None,
    };
    let max_memory = args.max_total_mem;
    let config_secret = config.migrate_secret.clone();
    let shared_names = Arc::new(std::sync::Mutex::new(names.clone()));
    let settings = ui::app::initial_settings(
        config.policy,
        config.quantum,
        config.timer,
        config.vms.iter().map(|vm| vm.weight).collect(),
    );
    let cast = match &args.record {
        Some(path) if tui => {
            let (width, height) = crossterm::terminal::size().map_err(|error| Failure::Host(error.into()))?;
            Some(CastWriter::create(path, width, height).map_err(|error| {
                Failure::Usage(anyhow!(
                    "--record {}: cannot record there: {error}; give --record a path for a new file",
                    path.display()
                ))
            })?)
        }
        _ => None,
    };
    let stop = signals::claim();
    let file_vms: Vec<usize> =
        (0..config.vms.len()).filter(|&vm| guests::builtin(&config.vms[vm].guest).is_none()).collect();
    let core = sched::spawn(kvm, config)?;
    if let Some(listener) = incoming {
        crate::migration::link::start_incoming(
            listener,
            Arc::clone(&shared_names),
            max_memory,
            config_secret.clone(),
            core.commander(),
        )
        .map_err(|error| Failure::Host(out_of_threads("incoming migrations", &error)))?;
    }
    let mut lost_output = false;
    let report = if tui {
        let lesson = args.lesson.clone().map(|lesson| ui::lesson_panel::LessonProgress::new(lesson, file_vms));
        let options = ui::UiOptions {
            cast,
            duration,
            lesson,
            migrate_to: args.migrate_to.clone(),
            auto_converge: args.auto_converge,
        };
        let thread = std::thread::Builder::new()
            .name("matrix-ui".into())
            .spawn(move || ui::run(core, names, settings, options, &stop))
            .map_err(|error| Failure::Host(out_of_threads("terminal UI", &error)))?;
        let end = match thread.join() {
            Ok(result) => result.map_err(|error| Failure::Host(anyhow!("terminal UI: {error}")))?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        if let (Some(cast), Some(path)) = (end.cast, &args.record) {
            if let Some(error) = cast.error {
                eprintln!(
                    "matrix-tui: the recording {} is incomplete: {error}; it ends at its last whole event \
                     ({} events, {} lost)",
                    path.display(),
                    cast.written,
                    cast.lost
                );
                lost_output = true;
            }
        }
        for failure in &end.failed_snapshots {
            eprintln!("matrix-tui: {failure}");
            lost_output = true;
        }
        end.report
    } else {
        let end = run_headless(core, names, shared_names, &args, duration, &stop)?;
        let output = &end.output;
        if let Some(error) = &output.error {
            match args.json {
                true => eprintln!("matrix-tui: cannot write the JSON report to stdout: {error}"),
                false => eprintln!("matrix-tui: cannot write to stdout: {error} ({} lines lost)", output.dropped_lines),
            }
            lost_output = true;
        } else if !end.report_written {
            eprintln!(
                "matrix-tui: the JSON report could not be written: stdout was not read within {} s",
                headless::OUTPUT_FINISH_LIMIT.as_secs()
            );
            lost_output = true;
        }
        for failure in &end.failed_snapshots {
            eprintln!("matrix-tui: {failure}");
            lost_output = true;
        }
        if output.error.is_none() && end.report_written && output.dropped_lines > 0 {
            eprintln!(
                "matrix-tui: stdout: {} lines dropped because stdout was not read fast enough",
                output.dropped_lines
            );
        }
        end.report
    };
    if let Some(trace) = &report.trace {
        match &trace.error {
            Some(error) => {
                eprintln!(
                    "matrix-tui: the trace {} is incomplete: {error} ({} records written, {} lost, {} dropped)",
                    trace.path, trace.written, trace.lost, trace.dropped
                );
                lost_output = true;
            }
            None if trace.dropped > 0 => eprintln!(
                "matrix-tui: trace: {} records in {}, {} dropped because the disk was too slow",
                trace.written, trace.path, trace.dropped
            ),
            None => {}
        }
    }
    for vm in report.vms.iter().filter(|vm| vm.state == "crashed") {
        eprintln!(
            "matrix-tui: VM '{}' crashed: {}",
            escape_input(&vm.name),
            vm.crash_reason.as_deref().unwrap_or("unknown reason")
        );
    }
    Ok(if lost_output {
        ExitCode::from(OUTPUT_LOST)
    } else if report.any_crashed() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_headless(
    core: sched::CoreHandle,
    names: Vec<String>,
    shared_names: Arc<std::sync::Mutex<Vec<String>>>,
    args: &RunArgs,
    duration: Option<Duration>,
    stop: &crossbeam_channel::Receiver<libc::c_int>,
) -> Result<headless::HeadlessEnd, Failure> {
    let options = HeadlessOptions { timestamps: args.timestamps, json: args.json, raw: args.raw, duration };
    let (control_tx, control_rx) = crossbeam_channel::unbounded();
    if args.control {
        control::spawn_stdin_reader(shared_names, control_tx)
            .map_err(|error| Failure::Host(out_of_threads("control input", &error)))?;
    } else {
        drop(control_tx);
    }
    let out = StreamWriter::spawn("matrix-stdout", std::io::stdout())
        .map_err(|error| Failure::Host(out_of_threads("output", &error)))?;
    headless::run(core, names, options, out, stop, &control_rx).map_err(|error| Failure::Host(error.into()))
}

/// Whether `HOST:PORT` names this machine only (127.0.0.0/8, ::1, localhost).
fn is_loopback(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_go_without_a_secret() {
        for address in ["127.0.0.1:7000", "127.1.2.3:7000", "localhost:7000", "[::1]:7000"] {
            assert!(is_loopback(address), "{address}");
        }
        for address in ["0.0.0.0:7000", "10.0.0.5:7000", "example.org:7000", "[::]:7000"] {
            assert!(!is_loopback(address), "{address}");
        }
    }

    #[test]
    fn duplicate_names_and_unknown_guests_are_usage_errors() {
        let args = RunArgs {
            vms: vec![parse_vm_arg("a=spin").unwrap(), parse_vm_arg("a=part1").unwrap()],
            ..Default::default()
        };
        assert!(
            matches!(run_config(&args), Err(Failure::Usage(e)) if e.to_string().contains("two VMs are called 'a'"))
        );
        let args = RunArgs { vms: vec![parse_vm_arg("a=nope").unwrap()], ..Default::default() };
        assert!(matches!(run_config(&args), Err(Failure::Usage(e)) if e.to_string().contains("unknown guest")));
        let args = RunArgs { mem: Some(3 << 20), ..Default::default() };
        assert!(matches!(run_config(&args), Err(Failure::Usage(_))));
    }

    #[test]
    fn one_vm_named_twice_by_gdb_is_a_usage_error() {
        let gdb = |text: &str| parse_gdb_arg(text).unwrap();
        let args = RunArgs { gdb: vec![gdb("neo=127.0.0.1:1234"), gdb("neo=127.0.0.1:1235")], ..Default::default() };
        assert!(
            matches!(run_config(&args), Err(Failure::Usage(e)) if e.to_string().contains("--gdb names VM 'neo' twice"))
        );
    }

    #[test]
    fn the_default_run_is_neo_and_morpheus_70_30_fair() {
        let (config, duration) = run_config(&RunArgs::default()).unwrap();
        let vms: Vec<_> = config.vms.iter().map(|vm| (vm.name.as_str(), vm.weight)).collect();
        assert_eq!(vms, [("neo", 70.0), ("morpheus", 30.0)]);
        assert_eq!((config.policy, config.quantum, config.timer), (Policy::Fair, DEFAULT_QUANTUM, TimerKind::Posix));
        assert_eq!(duration, None);
    }

    #[test]
    fn the_command_line_overrides_the_scenario() {
        let args = RunArgs {
            scenario: Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/matrix.toml"))),
            vms: vec![parse_vm_arg("neo=ticker").unwrap(), parse_vm_arg("extra=spin:5").unwrap()],
            policy: Some(Policy::Rr),
            quantum: Some(Duration::from_millis(3)),
            timer: Some(TimerKind::Timerfd),
            mem: Some(4 << 20),
            duration: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let (config, duration) = run_config(&args).unwrap();
        let vms: Vec<_> = config.vms.iter().map(|vm| (vm.name.as_str(), vm.guest.as_str(), vm.weight)).collect();
        assert_eq!(vms, [("neo", "ticker", 70.0), ("morpheus", "morpheus", 30.0), ("extra", "spin", 5.0)]);
        assert!(config.vms.iter().all(|vm| vm.memory_size == 4 << 20));
        assert_eq!(
            (config.policy, config.quantum, config.timer),
            (Policy::Rr, Duration::from_millis(3), TimerKind::Timerfd)
        );
        assert_eq!(duration, Some(Duration::from_secs(2)));
    }
}
