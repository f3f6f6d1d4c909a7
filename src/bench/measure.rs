//! The measurements of `matrix-tui bench`, one function each. Every one runs
//! real VMs on this machine and returns its figure with the parameters used.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::windows::{self, ErrorStats, Spread};
use crate::config::TimerKind;
use crate::config::{Policy, RunConfig, VmConfig};
use crate::event::{Command, Event};
use crate::hypercall::{Hypercall, PortMap};
use crate::record::ExitKind;
use crate::report::{RunReport, VmTimings};
use crate::sched::{self, SpawnError, Step, VmRuntime};
use crate::stats::Percentiles;
use crate::vm::{CpuMode, GuestLayout, KickTarget, KvmUnavailable, MachineSpec, SetupError};
use crate::{guests, vm};

/// A measurement that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// No usable /dev/kvm.
    #[error(transparent)]
    Kvm(#[from] KvmUnavailable),
    /// A run could not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A VM could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A helper program or /proc did not cooperate.
    #[error("{0}")]
    Tool(String),
}

/// Nanosecond percentiles of per-exit times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NsPercentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// How many exits were timed.
    pub samples: usize,
}

/// The hypercalls `hammer` can loop on, by its argument.
pub const HYPERCALLS: &[(&str, u64, u64)] = &[
    // (name, hammer argument, exits per call)
    ("print8bit", 0, 1),
    ("print32bit", 1, 1),
    ("numExits", 2, 1),
    ("printStr64", 3, 1),
    ("numExitsByType", 4, 1),
    ("gvaToHva", 5, 2),
];

pub(super) fn builtin(name: &str, guest: &str, weight: f64, args: &[u64]) -> VmConfig {
    let mut vm = VmConfig::new(name, guest, guests::resolve(guest).expect("built-in guest"));
    vm.weight = weight;
    vm.args = args.to_vec();
    vm
}

/// Runs `config` for `duration`, discarding console output, and
/// returns the report.
pub(super) fn run_for(config: RunConfig, duration: Duration) -> Result<RunReport, BenchError> {
    let core = sched::spawn(vm::open_kvm()?, config)?;
    let deadline = core.started() + duration;
    Ok(core.run_until(Some(deadline), |_| {}))
}

/// Per-exit round trip of one hypercall, host handling included: `hammer`
/// looping on it, its console discarded, timed exit to exit on this thread.
pub fn hypercall_round_trip(hammer_arg: u64, exits_per_call: u64, calls: usize) -> Result<NsPercentiles, BenchError> {
    let spec = MachineSpec {
        image: Arc::from(guests::builtin("hammer").expect("built in").image),
        memory_size: vm::layout::DEFAULT_MEMORY,
        args: vec![hammer_arg],
        layout: Default::default(),
        restore: None,
        vcpus: 1,
    };
    round_trip(&spec, PortMap::default(), exits_per_call, calls)
}

/// Per-exit round trip of the guest `spec` describes, which loops on one
/// hypercall of `exits_per_call` exits on `ports`.
fn round_trip(
    spec: &MachineSpec,
    ports: PortMap,
    exits_per_call: u64,
    calls: usize,
) -> Result<NsPercentiles, BenchError> {
    let mut runtime = VmRuntime::new(&vm::open_kvm()?, spec, ports)?;
    let kick = KickTarget::new();
    let _attached = kick.attach();
    let exits = calls * exits_per_call as usize;
    let mut times = Vec::with_capacity(exits + 1);
    // Warm up (first entry, page faults) before timing.
    for _ in 0..100 {
        runtime.step(&kick, 0, false, u64::MAX);
    }
    while times.len() <= exits {
        let (step, span, _) = runtime.step(&kick, 0, false, u64::MAX);
        if step == Step::Io {
            times.push(span.exited_ns);
        }
        if runtime.console.pending_len() > 64 * 1024 {
            runtime.console.discard_pending();
        }
    }
    let per_call: Vec<u64> = times
        .windows(exits_per_call as usize + 1)
        .step_by(exits_per_call as usize)
        .map(|pair| (pair[pair.len() - 1] - pair[0]) / exits_per_call)
        .collect();
    let p = Percentiles::of_ns(&per_call).expect("samples");
    Ok(NsPercentiles { p50: p.p50 * 1000.0, p99: p.p99 * 1000.0, samples: p.samples })
}

/// The exit round trip of HC_print32bit from real-mode code (the `counter`
/// course guest, its port 0x10 mapped) and from long-mode code (`hammer`),
/// measured alternately in `rounds` so that both see the same host.
pub fn real_vs_long_round_trip(calls: usize, rounds: usize) -> Result<(NsPercentiles, NsPercentiles), BenchError> {
    let counter = guests::builtin("counter").expect("built in");
    let spec = MachineSpec {
        image: Arc::from(counter.image),
        memory_size: vm::layout::DEFAULT_MEMORY,
        args: Vec::new(),
        layout: counter.layout,
        restore: None,
        vcpus: 1,
    };
    let mut ports = PortMap::default();
    ports.map(0x10, "print32bit").expect("a known hypercall");
    let (mut real, mut long) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        real.push(round_trip(&spec, ports.clone(), 1, calls)?);
        long.push(hypercall_round_trip(1, 1, calls)?);
    }
    let median = |mut figures: Vec<NsPercentiles>| {
        figures.sort_by(|a, b| a.p50.total_cmp(&b.p50));
        figures[figures.len() / 2]
    };
    Ok((median(real), median(long)))
}

/// How long setting up one VM takes in each CPU mode (the sum of its setup
/// steps), over `vms` VMs each; a mode this host's KVM refuses says why.
pub fn setup_by_mode(vms: usize) -> Result<BTreeMap<String, Value>, BenchError> {
    let kvm = vm::open_kvm()?;
    let mut figures = BTreeMap::new();
    for mode in CpuMode::ALL {
        let guest = match mode {
            CpuMode::Real => "hello16",
            CpuMode::Protected | CpuMode::Paged32 => "hello32",
            CpuMode::Long => "hello64",
        };
        let builtin = guests::builtin(guest).expect("built in");
        let spec = MachineSpec {
            image: Arc::from(builtin.image),
            memory_size: vm::layout::DEFAULT_MEMORY,
            args: Vec::new(),
            layout: GuestLayout { mode, ..builtin.layout },
            restore: None,
            vcpus: 1,
        };
        let mut totals = Vec::with_capacity(vms);
        let mut refused = None;
        for _ in 0..vms {
            match vm::Machine::new(&kvm, &spec) {
                Ok(machine) => totals.push(machine.setup.iter().map(|step| step.ns).sum::<u64>()),
                Err(vm::SetupError::ModeUnsupported { .. }) => {
                    refused = Some("this host's KVM refuses the mode's CR0.PG");
                    break;
                }
                Err(error) => return Err(error.into()),
            }
        }
        let figure = match (refused, Percentiles::of_ns(&totals)) {
            (Some(why), _) => json!({ "refused": why }),
            (None, Some(p)) => json!({ "p50": p.p50, "p99": p.p99, "samples": p.samples }),
            (None, None) => json!({ "refused": "no VM was set up" }),
        };
        figures.insert(mode.name().to_string(), figure);
    }
    Ok(figures)
}

/// Every hypercall's per-exit round trip.
pub fn hypercall_round_trips(calls: usize) -> Result<BTreeMap<String, NsPercentiles>, BenchError> {
    HYPERCALLS
        .iter()
        .map(|&(name, arg, exits)| Ok((name.to_string(), hypercall_round_trip(arg, exits, calls)?)))
        .collect()
}

/// Preemption overrun of two `spin` guests under `rr` with `timer`, with
/// deadline compensation or without.
pub fn preempt_overrun(
    timer: TimerKind,
    compensate: bool,
    quantum: Duration,
    duration: Duration,
) -> Result<Option<Percentiles>, BenchError> {
    let mut config = RunConfig::new(vec![builtin("a", "spin", 1.0, &[]), builtin("b", "spin", 1.0, &[])]);
    config.policy = Policy::Rr;
    config.timer = timer;
    config.compensate = compensate;
    config.quantum = quantum;
    Ok(run_for(config, duration)?.preempt_overrun_us)
}

/// Share errors of two tickers at 70/30 under `fair`.
#[derive(Debug, Clone, Serialize)]
pub struct ShareErrors {
    /// From the work the guests did (their ticker output).
    pub work: BTreeMap<String, ErrorStats>,
    /// From the time the scheduler charged.
    pub accounting: BTreeMap<String, ErrorStats>,
    /// Work share of the heavier VM over the whole run.
    pub overall_work_share: f64,
}

/// Windows for the share errors: (name, length).
pub const SHARE_WINDOWS: &[(&str, u64)] = &[("w20ms", 20_000_000), ("w100ms", 100_000_000), ("w1s", 1_000_000_000)];

/// Two `ticker` guests at `weights` under `fair`, with `unit` iterations per
/// unit of work; errors per window, from ticker output and from charged time.
pub fn share_errors(
    weights: [f64; 2],
    unit: u64,
    quantum: Duration,
    duration: Duration,
) -> Result<ShareErrors, BenchError> {
    let vms = vec![builtin("a", "ticker", weights[0], &[unit]), builtin("b", "ticker", weights[1], &[unit])];
    let mut config = RunConfig::new(vms);
    config.quantum = quantum;
    config.timings = true;
    let report = run_for(config, duration)?;
    let total: f64 = weights.iter().sum();
    let targets: Vec<f64> = weights.iter().map(|w| w / total).collect();
    let work: Vec<Vec<Spread>> = report.timings.iter().map(work_spreads).collect();
    let charged: Vec<Vec<Spread>> = report.timings.iter().map(charged_spreads).collect();
    let (start, end) = settled_range(&report.timings);
    let stats = |series: &[Vec<Spread>]| {
        SHARE_WINDOWS
            .iter()
            .map(|&(name, window)| {
                let shares = windows::window_shares(series, start, end, window);
                (name.to_string(), windows::absolute_error_pp(&shares, &targets))
            })
            .collect()
    };
    let units: Vec<usize> = report.timings.iter().map(|trace| trace.io_exit_ns.len()).collect();
    Ok(ShareErrors {
        work: stats(&work),
        accounting: stats(&charged),
        overall_work_share: units[0] as f64 / (units[0] + units[1]).max(1) as f64,
    })
}

/// From 300 ms after the first unit of work (start-up settled) to the last one.
fn settled_range(timings: &[VmTimings]) -> (u64, u64) {
    settled_span(timings.iter().map(|trace| trace.io_exit_ns.as_slice()))
}

/// From 300 ms after the first unit of work any VM finished to the last
/// one's end, given each VM's unit end times in order.
pub(super) fn settled_span<'a>(units: impl Iterator<Item = &'a [u64]> + Clone) -> (u64, u64) {
    let first = units.clone().filter_map(|times| times.first()).min().copied().unwrap_or(0);
    let last = units.filter_map(|times| times.last()).max().copied().unwrap_or(0);
    (first + 300_000_000, last)
}

/// A ticker's units of work as spans of time: each from the previous unit's
/// end (or the start of the slice it finished in, if later) to its own end, so
/// that a unit in progress at a window's edge counts on both sides.
fn work_spreads(trace: &VmTimings) -> Vec<Spread> {
    let mut previous = 0;
    trace
        .io_exit_ns
        .iter()
        .map(|&end| {
            let slice = trace.slices.partition_point(|slice| slice.start_ns <= end);
            let slice_start = slice.checked_sub(1).map_or(end, |index| trace.slices[index].start_ns);
            let from = previous.max(slice_start).min(end);
            previous = end;
            Spread { from, to: end, amount: 1.0 }
        })
        .collect()
}

/// Charged time, spread over each slice.
fn charged_spreads(trace: &VmTimings) -> Vec<Spread> {
    trace
        .slices
        .iter()
        .map(|slice| Spread { from: slice.start_ns, to: slice.end_ns, amount: slice.charged_ns as f64 })
        .collect()
}

/// Percent of wall time outside KVM_RUN with two spinning guests under `fair`.
pub fn overhead_pct(quantum: Duration, duration: Duration) -> Result<f64, BenchError> {
    let mut config = RunConfig::new(vec![builtin("a", "spin", 1.0, &[]), builtin("b", "spin", 1.0, &[])]);
    config.quantum = quantum;
    Ok(run_for(config, duration)?.outside_kvm_run_pct)
}

/// What writing the exit trace costs the core.
#[derive(Debug, Clone, Serialize)]
pub struct TraceCost {
    /// Time outside KVM_RUN without a trace, per round (percent of wall time).
    pub outside_kvm_run_pct_off: Vec<f64>,
    /// The same with `--trace`, per round.
    pub outside_kvm_run_pct_on: Vec<f64>,
    /// Median with the trace minus median without, in percentage points.
    pub cost_pp: f64,
    /// Records the traced rounds wrote, in all.
    pub records: u64,
    /// Records they dropped (the writer fell behind).
    pub dropped: u64,
}

/// Two tickers at 70/30 (units of `unit` iterations: an exit every few
/// tens of microseconds) for `duration`, in `rounds` alternating pairs
/// without and with a trace written to a temporary file.
pub fn trace_cost(unit: u64, rounds: usize, duration: Duration) -> Result<TraceCost, BenchError> {
    let path = std::env::temp_dir().join(format!("matrix-tui-bench-trace-{}.jsonl", std::process::id()));
    let (mut off, mut on, mut records, mut dropped) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..rounds {
        for traced in [false, true] {
            let vms = vec![builtin("neo", "ticker", 70.0, &[unit]), builtin("morpheus", "ticker", 30.0, &[unit])];
            let mut config = RunConfig::new(vms);
            config.trace = traced.then(|| path.clone());
            let core = sched::spawn(vm::open_kvm()?, config)?;
            let deadline = core.started() + duration;
            let report = core.run_until(Some(deadline), |_| {});
            if let Some(trace) = &report.trace {
                records += trace.records;
                dropped += trace.dropped;
            }
            if traced { &mut on } else { &mut off }.push(report.outside_kvm_run_pct);
        }
    }
    let _ = std::fs::remove_file(&path);
    let cost_pp = median(on.clone()) - median(off.clone());
    Ok(TraceCost { outside_kvm_run_pct_off: off, outside_kvm_run_pct_on: on, cost_pp, records, dropped })
}

/// Many `ticker` VMs at equal weights on the one thread.
#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    /// How many VMs.
    pub vms: usize,
    /// Setting them all up and starting the core.
    pub startup_ms: f64,
    /// The windows the shares are judged in: long enough for each VM to get
    /// the same number of slices in one whatever the count (1 s for 256).
    pub window_s: f64,
    /// Largest |share - target| of any VM in any window, from its work.
    pub share_error_pp: f64,
    /// Largest |share / target - 1| of any VM in any window, from its work.
    pub share_error_rel_pct: f64,
    /// The same from the time the scheduler charged: how evenly it shared.
    pub share_error_rel_pct_charged: f64,
    /// Largest |work / mean work - 1| of any VM over the whole run: how much
    /// identical VMs' speeds differ on this host (a floor under the above).
    pub speed_spread_pct: f64,
    /// Resident memory of the process at the end.
    pub rss_mib: f64,
    /// Wall time the core spent outside KVM_RUN: the scheduler's own cost at
    /// this many VMs, from a run of its own without the per-exit timings the
    /// share figures need (recording them costs 0.5-1.2 points at 256 VMs).
    pub outside_kvm_run_pct: f64,
    /// The same in the run that recorded those timings.
    pub outside_kvm_run_pct_timed: f64,
}

/// `count` tickers at equal weights for `duration`, their shares judged in
/// windows of `window`; then for `untimed` without timings, for the overhead.
pub fn scale(
    count: usize,
    unit: u64,
    duration: Duration,
    window: Duration,
    untimed: Duration,
) -> Result<Scale, BenchError> {
    let vms: Vec<VmConfig> = (0..count).map(|i| builtin(&format!("t{i}"), "ticker", 1.0, &[unit])).collect();
    let outside_kvm_run_pct = run_for(RunConfig::new(vms.clone()), untimed)?.outside_kvm_run_pct;
    let mut config = RunConfig::new(vms);
    config.timings = true;
    let started = Instant::now();
    let core = sched::spawn(vm::open_kvm()?, config)?;
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    let deadline = core.started() + duration;
    while core.events().recv_deadline(deadline).is_ok() {}
    let rss_mib = rss_kib() as f64 / 1024.0;
    core.send(Command::Quit);
    let report = core.run_until(None, |_| {});
    let work: Vec<Vec<Spread>> = report.timings.iter().map(work_spreads).collect();
    let charged: Vec<Vec<Spread>> = report.timings.iter().map(charged_spreads).collect();
    let (start, end) = settled_range(&report.timings);
    let window_ns = window.as_nanos() as u64;
    let shares = windows::window_shares(&work, start, end, window_ns);
    let charged_shares = windows::window_shares(&charged, start, end, window_ns);
    let targets = vec![1.0 / count as f64; count];
    let units: Vec<f64> = report.timings.iter().map(|trace| trace.io_exit_ns.len() as f64).collect();
    let mean = units.iter().sum::<f64>() / count as f64;
    let speed_spread_pct = units.iter().map(|u| (u / mean - 1.0).abs() * 100.0).fold(0.0, f64::max);
    Ok(Scale {
        vms: count,
        startup_ms,
        window_s: window.as_secs_f64(),
        share_error_pp: windows::absolute_error_pp(&shares, &targets).max,
        share_error_rel_pct: windows::relative_error_pct(&shares, &targets).max,
        share_error_rel_pct_charged: windows::relative_error_pct(&charged_shares, &targets).max,
        speed_spread_pct,
        rss_mib,
        outside_kvm_run_pct,
        outside_kvm_run_pct_timed: report.outside_kvm_run_pct,
    })
}

/// A console flood (`chatty`) read by a front end that keeps up.
#[derive(Debug, Clone, Serialize)]
pub struct Flood {
    /// Console bytes delivered per second.
    pub bytes_per_s: f64,
    /// Resident memory growth from 1 s in to the end.
    pub rss_growth_mib: f64,
    /// Bytes dropped because the reader fell behind.
    pub dropped_bytes: u64,
}

/// `chatty` for `duration`, its console counted and discarded.
pub fn console_flood(duration: Duration) -> Result<Flood, BenchError> {
    let core = sched::spawn(vm::open_kvm()?, RunConfig::new(vec![builtin("c", "chatty", 1.0, &[])]))?;
    let (mut bytes, mut dropped) = (0u64, 0u64);
    let mut rss_early = None;
    let deadline = core.started() + duration;
    while let Ok(event) = core.events().recv_deadline(deadline) {
        if let Event::Console(batch) = event {
            for piece in batch.pieces() {
                bytes += piece.bytes.len() as u64;
                dropped += piece.dropped;
            }
        }
        if rss_early.is_none() && core.started().elapsed() >= Duration::from_secs(1) {
            rss_early = Some(rss_kib());
        }
    }
    let rss_late = rss_kib();
    core.send(Command::Quit);
    core.run_until(None, |_| {});
    Ok(Flood {
        bytes_per_s: bytes as f64 / duration.as_secs_f64(),
        rss_growth_mib: rss_late.saturating_sub(rss_early.unwrap_or(rss_late)) as f64 / 1024.0,
        dropped_bytes: dropped,
    })
}

/// Resident memory of this process, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The terminal UI's own CPU use while it shows two busy VMs.
#[derive(Debug, Clone, Serialize)]
pub struct UiCpu {
    /// CPU time of the `matrix-ui` thread, in percent of one core.
    pub pct: f64,
}

/// Runs the default Neo/Morpheus UI in a detached tmux pseudo-terminal of
/// 160x48 and reads its `matrix-ui` thread's CPU time over `duration`.
/// None when tmux is not installed.
pub fn ui_cpu(duration: Duration) -> Result<Option<UiCpu>, BenchError> {
    use std::process::Command as Process;
    if Process::new("tmux").arg("-V").output().is_err() {
        return Ok(None);
    }
    let exe =
        std::env::current_exe().map_err(|error| BenchError::Tool(format!("cannot find this program: {error}")))?;
    let token = format!("{}-{}", std::process::id(), vm::kick::monotonic_ns());
    let session = format!("matrix-bench-ui-{}", std::process::id());
    let command = format!("MATRIX_BENCH_UI={token} TERM=xterm-256color {} run", exe.display());
    let started = Process::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "160", "-y", "48", &command])
        .status()
        .map_err(|error| BenchError::Tool(format!("tmux: {error}")))?;
    if !started.success() {
        return Err(BenchError::Tool("tmux could not start a session".into()));
    }
    let result = measure_ui_thread(&token, duration);
    let _ = Process::new("tmux").args(["send-keys", "-t", &session, "q"]).status();
    std::thread::sleep(Duration::from_millis(300));
    let _ = Process::new("tmux").args(["kill-session", "-t", &session]).output();
    result.map(|pct| Some(UiCpu { pct }))
}

fn measure_ui_thread(token: &str, duration: Duration) -> Result<f64, BenchError> {
    let give_up = Instant::now() + Duration::from_secs(10);
    let thread = loop {
        if let Some(thread) = find_ui_thread(token) {
            break thread;
        }
        if Instant::now() > give_up {
            return Err(BenchError::Tool("the UI under test never started its matrix-ui thread".into()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let it settle (first frames, the VMs' first slices) before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let on_cpu_ns = || -> Result<u64, BenchError> {
        let schedstat = std::fs::read_to_string(thread.join("schedstat"))
            .map_err(|error| BenchError::Tool(format!("reading the UI thread's schedstat: {error}")))?;
        schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .ok_or_else(|| BenchError::Tool("bad schedstat".into()))
    };
    let (before, start) = (on_cpu_ns()?, Instant::now());
    std::thread::sleep(duration);
    let (after, took) = (on_cpu_ns()?, start.elapsed());
    Ok((after - before) as f64 / took.as_nanos() as f64 * 100.0)
}

/// /proc/PID/task/TID of the `matrix-ui` thread of the process started with
/// MATRIX_BENCH_UI=`token` in its environment.
fn find_ui_thread(token: &str) -> Option<std::path::PathBuf> {
    let needle = format!("MATRIX_BENCH_UI={token}");
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let environ = std::fs::read(process.path().join("environ")).unwrap_or_default();
        if !environ.split(|&b| b == 0).any(|entry| entry == needle.as_bytes()) {
            continue;
        }
        for task in std::fs::read_dir(process.path().join("task")).ok()?.flatten() {
            if std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == "matrix-ui") {
                return Some(task.path());
            }
        }
    }
    None
}

/// The C baseline's source, built into the binary so `bench` works anywhere.
const C_BASELINE: &str = include_str!("../../benches/c/baseline.c");
/// What the C programs share (written beside each).
const C_HELPERS: &str = include_str!("../../benches/c/bench.h");

/// The C baseline (benches/c/baseline.c), built with gcc for this run.
pub struct CBaseline {
    dir: std::path::PathBuf,
    binary: std::path::PathBuf,
}

impl CBaseline {
    /// Builds it; None when there is no gcc.
    pub fn build() -> Result<Option<Self>, BenchError> {
        let dir = std::env::temp_dir().join(format!("matrix-tui-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| c_error("temporary folder", &e))?;
        let (source, binary) = (dir.join("baseline.c"), dir.join("baseline"));
        std::fs::write(&source, C_BASELINE).map_err(|e| c_error("writing the source", &e))?;
        std::fs::write(dir.join("bench.h"), C_HELPERS).map_err(|e| c_error("writing the source", &e))?;
        let compiled = match std::process::Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&binary)
            .arg(&source)
            .arg("-lrt")
            .output()
        {
            Ok(output) => output,
            Err(_) => return Ok(None),
        };
        if !compiled.status.success() {
            return Err(c_error("gcc", &String::from_utf8_lossy(&compiled.stderr)));
        }
        Ok(Some(Self { dir, binary }))
    }

    fn run(&self, mode: &str, count: usize) -> Result<Vec<f64>, BenchError> {
        let output = std::process::Command::new(&self.binary)
            .arg(mode)
            .arg(count.to_string())
            .output()
            .map_err(|e| c_error(mode, &e))?;
        if !output.status.success() {
            return Err(c_error(mode, &String::from_utf8_lossy(&output.stderr)));
        }
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(|field| field.parse::<f64>().map_err(|e| c_error(mode, &e)))
            .collect()
    }

    /// The exit round trip of its `out` loop, `exits` exits.
    pub fn exit_round_trip(&self, exits: usize) -> Result<NsPercentiles, BenchError> {
        let figures = self.run("exit", exits)?;
        Ok(NsPercentiles { p50: figures[0], p99: figures[1], samples: exits })
    }

    /// The overrun of `preemptions` POSIX-timer preemptions at 1 ms.
    pub fn preempt_overrun(&self, preemptions: usize) -> Result<Percentiles, BenchError> {
        let figures = self.run("preempt", preemptions)?;
        Ok(Percentiles { p50: figures[0], p99: figures[1], max: figures[2], samples: preemptions })
    }
}

impl Drop for CBaseline {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn c_error(what: &str, error: &dyn std::fmt::Display) -> BenchError {
    BenchError::Tool(format!("C baseline: {what}: {error}"))
}

/// The median of some figures.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A long-mode guest timed as benches/c/lapic.c times KVM's LAPIC: it loads
/// an IDT, starts its virtual timer (`out 0xF0` of the period), waits in
/// `sti; hlt`; its handler's first instruction is an exit (`out 0xE9`).
fn tick_probe_image(period_us: u32) -> Vec<u8> {
    const HANDLER: usize = 0x80;
    const IDTR: usize = 0x100;
    const IDT: usize = 0x1000;
    let mut image = vec![0u8; IDT + 256 * 16];
    // lidt [rip + to IDTR]; mov eax, period; out 0xf0, eax; sti; hlt; jmp sti
    let lidt_end = 7;
    let mut code = vec![0x0f, 0x01, 0x1d];
    code.extend_from_slice(&((IDTR - lidt_end) as i32).to_le_bytes());
    code.push(0xb8);
    code.extend_from_slice(&period_us.to_le_bytes());
    code.extend_from_slice(&[0xe7, 0xf0, 0xfb, 0xf4, 0xeb, 0xfc]);
    image[..code.len()].copy_from_slice(&code);
    // out 0xe9, al; iretq
    image[HANDLER..HANDLER + 4].copy_from_slice(&[0xe6, 0xe9, 0x48, 0xcf]);
    let base = vm::layout::IMAGE_BASE;
    image[IDTR..IDTR + 2].copy_from_slice(&((256 * 16 - 1) as u16).to_le_bytes());
    image[IDTR + 2..IDTR + 10].copy_from_slice(&(base + IDT as u64).to_le_bytes());
    let handler = base + HANDLER as u64;
    let low = (handler & 0xffff) | 0x8 << 16 | 0x8e << 40 | (handler >> 16 & 0xffff) << 48;
    let gate = IDT + 0x20 * 16;
    image[gate..gate + 8].copy_from_slice(&low.to_le_bytes());
    image[gate + 8..gate + 16].copy_from_slice(&(handler >> 32).to_le_bytes());
    image
}

/// How a virtual timer's ticks reached a guest (period `period_us`, `ticks`
/// ticks) beside `spinners` spinning VMs: from each tick's due time
/// (HC_timerStart's exit plus k periods, as the C program times its LAPIC)
/// to its injection, and to the handler's first exit.
pub fn timer_delivery(period_us: u64, ticks: u64, spinners: usize) -> Result<(Percentiles, Percentiles), BenchError> {
    timer_delivery_with(period_us, ticks, spinners, false)
}

/// [`timer_delivery`], with wake-up preemption on or off.
pub fn timer_delivery_with(
    period_us: u64,
    ticks: u64,
    spinners: usize,
    wake_preempt: bool,
) -> Result<(Percentiles, Percentiles), BenchError> {
    let image: Arc<[u8]> = Arc::from(tick_probe_image(period_us as u32));
    let mut vms = vec![VmConfig::new("probe", "tick probe", image)];
    vms.extend((0..spinners).map(|i| builtin(&format!("p{i}"), "spin", 1.0, &[])));
    let mut config = RunConfig::new(vms);
    (config.live_records, config.wake_preempt) = (true, wake_preempt);
    let core = sched::spawn(vm::open_kvm()?, config)?;
    let deadline = core.started() + Duration::from_micros(period_us * (ticks + 3));
    let mut exits = Vec::new();
    core.run_until(Some(deadline), |event| {
        if let Event::Exits { vm: 0, records } = event {
            exits.extend(records);
        }
    });
    let started = exits.iter().find(|exit| exit.call.hypercall == Some(Hypercall::TimerStart)).map(|exit| exit.t_ns);
    let Some(started) = started else { return Err(BenchError::Tool("the probe never started its timer".into())) };
    let period_ns = period_us * 1000;
    let (mut injected, mut handled) = (Vec::new(), Vec::new());
    for (at, exit) in exits.iter().enumerate().filter(|(_, exit)| exit.kind == ExitKind::Interrupt) {
        let due = started + (exit.t_ns - started) / period_ns * period_ns;
        injected.push(exit.t_ns - due);
        if let Some(next) = exits[at + 1..].iter().find(|next| next.kind != ExitKind::Interrupt) {
            handled.push(next.t_ns - due);
        }
    }
    let none = || BenchError::Tool("no tick was injected".into());
    Ok((Percentiles::of_ns(&injected).ok_or_else(none)?, Percentiles::of_ns(&handled).ok_or_else(none)?))
}

/// What `vms` sleepers on 10 ms timers cost the host over `duration`: the
/// process's CPU time (user and system, all threads) per second of wall
/// time, in percent of a core, and the report's time outside KVM_RUN.
pub fn sleepers_cost(vms: usize, duration: Duration) -> Result<(f64, f64), BenchError> {
    let sleepers = (0..vms).map(|i| builtin(&format!("s{i}"), "sleeper", 1.0, &[10, 1000])).collect();
    let core = sched::spawn(vm::open_kvm()?, RunConfig::new(sleepers))?;
    let (cpu_before, wall_before) = (process_cpu_ns(), Instant::now());
    let report = core.run_until(Some(Instant::now() + duration), |_| {});
    let (cpu, wall) = (process_cpu_ns() - cpu_before, wall_before.elapsed().as_nanos() as u64);
    Ok((cpu as f64 * 100.0 / wall as f64, report.outside_kvm_run_pct))
}

/// This process's CPU time so far (CLOCK_PROCESS_CPUTIME_ID).
fn process_cpu_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The C program beside the injection latency (benches/c/lapic.c), built into
/// the binary so `bench` works anywhere.
const C_LAPIC: &str = include_str!("../../benches/c/lapic.c");

/// KVM's in-kernel LAPIC timer delivering to a halted guest, `ticks` ticks of
/// `period_us`, timed as [`timer_delivery`] times ours: p50 and p99 in µs,
/// or None without gcc.
pub fn c_lapic_delivery(period_us: u64, ticks: u64) -> Result<Option<(f64, f64)>, BenchError> {
    let dir = std::env::temp_dir().join(format!("matrix-tui-lapic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| c_error("temporary folder", &e))?;
    let (source, binary) = (dir.join("lapic.c"), dir.join("lapic"));
    std::fs::write(&source, C_LAPIC).map_err(|e| c_error("writing the LAPIC program", &e))?;
    std::fs::write(dir.join("bench.h"), C_HELPERS).map_err(|e| c_error("writing the LAPIC program", &e))?;
    let result = (|| {
        let Ok(compiled) = std::process::Command::new("gcc").args(["-O2", "-o"]).arg(&binary).arg(&source).output()
        else {
            return Ok(None);
        };
        if !compiled.status.success() {
            return Err(c_error("gcc", &String::from_utf8_lossy(&compiled.stderr)));
        }
        let output = std::process::Command::new(&binary)
            .args([period_us.to_string(), ticks.to_string()])
            .output()
            .map_err(|e| c_error("lapic", &e))?;
        if !output.status.success() {
            return Err(c_error("lapic", &String::from_utf8_lossy(&output.stderr)));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let figures: Vec<f64> = text.split_whitespace().filter_map(|field| field.parse().ok()).collect();
        match figures[..] {
            [p50, p99] => Ok(Some((p50, p99))),
            _ => Err(c_error("lapic", &format!("unexpected output {text:?}"))),
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
