//! Several cores (`--cpus 2`): the guest work of two tickers on two cores
//! against one, and the machine's shares by guest work in windows (70/30
//! and 2:1:1) against Linux CFS running the same guests as one KVM thread
//! per VM at nice levels that give the same weights, on the same two CPUs,
//! in the same run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::measure::{BenchError, builtin, run_for, settled_span};
use super::windows::{self, ErrorStats, Spread};
use crate::config::RunConfig;
use crate::hypercall::PortMap;
use crate::sched::shares::machine_shares;
use crate::sched::{Step, VmRuntime};
use crate::vm::{self, KickTarget, MachineSpec};

/// The windows the shares are judged in.
const WINDOWS: &[(&str, u64)] = &[("w100ms", 100_000_000), ("w1s", 1_000_000_000)];
/// Each step of weight is 1.25x CFS's (its nice-to-weight table).
const NICE_STEP: f64 = 1.25;

/// Two tickers on two cores against one.
#[derive(Debug, Clone, Serialize)]
pub struct CoreWork {
    /// Units of guest work both did on one core.
    pub units_one_core: usize,
    /// On two.
    pub units_two_cores: usize,
    /// Two over one.
    pub ratio: f64,
}

/// Two `ticker`s (unit `unit` iterations) for `duration` on one core, then on two.
pub fn work_ratio(unit: u64, duration: Duration) -> Result<CoreWork, BenchError> {
    let units = |cpus: usize| -> Result<usize, BenchError> {
        let vms = vec![builtin("a", "ticker", 1.0, &[unit]), builtin("b", "ticker", 1.0, &[unit])];
        let mut config = RunConfig::new(vms);
        (config.cpus, config.timings) = (cpus, true);
        Ok(run_for(config, duration)?.timings.iter().map(|trace| trace.io_exit_ns.len()).sum())
    };
    let (one, two) = (units(1)?, units(2)?);
    Ok(CoreWork { units_one_core: one, units_two_cores: two, ratio: two as f64 / one.max(1) as f64 })
}

/// One set of weights on two cores, ours against CFS's.
#[derive(Debug, Clone, Serialize)]
pub struct ShareComparison {
    /// What the weights give each VM of the machine.
    pub targets: Vec<f64>,
    /// The nice levels CFS ran them at.
    pub nice: Vec<i32>,
    /// Our error by guest work, per window (percentage points).
    pub ours_pp: BTreeMap<String, ErrorStats>,
    /// CFS's.
    pub cfs_pp: BTreeMap<String, ErrorStats>,
    /// Our mean error over CFS's, per window.
    pub mean_error_over_cfs: BTreeMap<String, f64>,
    /// Each VM's share of all the work, ours and CFS's.
    pub overall_ours: Vec<f64>,
    /// CFS's.
    pub overall_cfs: Vec<f64>,
}

/// `weights` (tickers of `unit` iterations) for `duration` on two cores,
/// then as CFS threads on the same two CPUs.
pub fn share_comparison(weights: &[f64], unit: u64, duration: Duration) -> Result<ShareComparison, BenchError> {
    let targets = machine_shares(weights, 2);
    let vms = (weights.iter().enumerate()).map(|(vm, &weight)| builtin(&format!("t{vm}"), "ticker", weight, &[unit]));
    let mut config = RunConfig::new(vms.collect());
    (config.cpus, config.timings) = (2, true);
    let ours: Vec<Vec<u64>> = run_for(config, duration)?.timings.into_iter().map(|trace| trace.io_exit_ns).collect();
    let heaviest = weights.iter().copied().fold(0.0, f64::max);
    let nice: Vec<i32> = weights
        .iter()
        .map(|&weight| ((heaviest / weight).ln() / NICE_STEP.ln()).round().clamp(0.0, 19.0) as i32)
        .collect();
    let cpus: Vec<usize> = crate::os::affinity::allowed_cpus().into_iter().take(2).collect();
    let cfs = cfs_run(unit, &nice, &cpus, duration)?;
    let (ours_pp, overall_ours) = errors(&ours, &targets);
    let (cfs_pp, overall_cfs) = errors(&cfs, &targets);
    let mean_error_over_cfs =
        (ours_pp.iter()).map(|(window, stats)| (window.clone(), stats.mean / cfs_pp[window].mean.max(1e-9))).collect();
    Ok(ShareComparison { targets, nice, ours_pp, cfs_pp, mean_error_over_cfs, overall_ours, overall_cfs })
}

/// The error of each window's split of the units from `targets`, and each
/// VM's share of all of them; from 300 ms after the first unit to the last.
fn errors(units: &[Vec<u64>], targets: &[f64]) -> (BTreeMap<String, ErrorStats>, Vec<f64>) {
    let (from, last) = settled_span(units.iter().map(Vec::as_slice));
    let series: Vec<Vec<Spread>> =
        units.iter().map(|times| times.iter().map(|&at| Spread::at(at, 1.0)).collect()).collect();
    let stats = WINDOWS
        .iter()
        .map(|&(name, window)| {
            let shares = windows::window_shares(&series, from, last, window);
            (name.to_string(), windows::absolute_error_pp(&shares, targets))
        })
        .collect();
    let total: usize = units.iter().map(Vec::len).sum();
    (stats, units.iter().map(|times| times.len() as f64 / total.max(1) as f64).collect())
}

/// The tickers as Linux runs them: one thread per VM in a plain KVM_RUN
/// loop, each at its nice level, all on `cpus`; the time of every I/O exit.
fn cfs_run(unit: u64, nice: &[i32], cpus: &[usize], duration: Duration) -> Result<Vec<Vec<u64>>, BenchError> {
    let kvm = vm::open_kvm()?;
    let spec = MachineSpec {
        image: Arc::from(crate::guests::builtin("ticker").expect("built in").image),
        memory_size: vm::layout::DEFAULT_MEMORY,
        args: vec![unit],
        layout: Default::default(),
        restore: None,
        vcpus: 1,
    };
    let runtimes: Vec<VmRuntime> =
        nice.iter().map(|_| VmRuntime::new(&kvm, &spec, PortMap::default())).collect::<Result<_, _>>()?;
    let end = Instant::now() + duration;
    let threads: Vec<_> = runtimes
        .into_iter()
        .zip(nice.to_vec())
        .map(|(mut runtime, nice)| {
            let cpus = cpus.to_vec();
            std::thread::spawn(move || -> Result<Vec<u64>, String> {
                crate::os::affinity::bind_current_thread_to(&cpus).map_err(|error| error.to_string())?;
                // SAFETY: gettid has no preconditions; setpriority with a
                // thread's id changes that thread's nice level only (raising
                // it needs no privilege).
                let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
                if set != 0 {
                    return Err(format!("setpriority: {}", std::io::Error::last_os_error()));
                }
                let kick = KickTarget::new();
                let _attached = kick.attach();
                let mut times = Vec::new();
                while Instant::now() < end {
                    let (step, span, _) = runtime.step(&kick, 0, false, u64::MAX);
                    match step {
                        Step::Io => times.push(span.exited_ns),
                        Step::Halted { .. } | Step::Crashed { .. } => break,
                        _ => {}
                    }
                    if runtime.console.pending_len() > 64 * 1024 {
                        runtime.console.discard_pending();
                    }
                }
                Ok(times)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| {
            thread
                .join()
                .map_err(|_| BenchError::Tool("a CFS thread panicked".into()))?
                .map_err(|why| BenchError::Tool(format!("a CFS thread could not start: {why}")))
        })
        .collect()
}

/// What follows an unpin, over a number of cycles.
#[derive(Debug, Clone, Serialize)]
pub struct Unpinned {
    /// To the unpinned VM's first slice on the core left idle.
    pub to_other_core_us: crate::stats::Percentiles,
    /// To the end of the first 100 ms window from which both VMs' shares
    /// of the machine stay within 1 point of where they end up (`None`
    /// where a cycle never settled within its 1.5 s).
    pub shares_settle_us: Option<crate::stats::Percentiles>,
    /// Cycles that never settled.
    pub unsettled: usize,
}

/// After an unpin: two spinners on two cores, both pinned to core 0, one
/// unpinned (the balancer moves it at its next merged sample, five a
/// second), `cycles` times: when it first runs on the core left idle, and
/// when the shares settle.
pub fn unpin_to_spread(cycles: usize) -> Result<Unpinned, BenchError> {
    use super::settle::{Held, Judge, settle_ns};
    use crate::event::{Command, Event};
    use crate::record::SliceRecord;
    const FOLLOW_NS: u64 = 1_500_000_000;
    let (mut a, mut b) = (builtin("a", "spin", 1.0, &[]), builtin("b", "spin", 1.0, &[]));
    (a.pin, b.pin) = (vec![0], vec![0]);
    let mut config = RunConfig::new(vec![a, b]);
    (config.cpus, config.live_records) = (2, true);
    let core = crate::sched::spawn(vm::open_kvm()?, config)?;
    let elapsed = || core.started().elapsed().as_nanos() as u64;
    // Slices (ns since the run started) until `done` holds of those seen.
    let slices_until = |done: &dyn Fn(&[SliceRecord]) -> bool, seen: &mut Vec<SliceRecord>| -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let event = core.events().recv_deadline(deadline).map_err(|_| BenchError::Tool("no such slice".into()))?;
            if let Event::Slices { records, .. } = event {
                seen.extend_from_slice(&records);
                if done(seen) {
                    return Ok(());
                }
            }
        }
    };
    let judge = Judge { window_ns: 100_000_000, step_ns: 10_000_000, tolerance: 0.01, final_ns: 500_000_000 };
    let (mut to_other, mut settle, mut unsettled) = (Vec::with_capacity(cycles), Vec::new(), 0);
    for _ in 0..cycles {
        core.send(Command::Pin { vm: 1, cores: vec![0] });
        let pinned_ns = elapsed();
        let mut seen = Vec::new();
        let back_on_0 = |slice: &SliceRecord| slice.vm == 1 && slice.core == 0 && slice.start_ns >= pinned_ns;
        slices_until(&|seen| seen.iter().any(back_on_0), &mut seen)?;
        let unpinned_ns = elapsed();
        core.send(Command::Pin { vm: 1, cores: Vec::new() });
        let mut after = Vec::new();
        // Each core's slices come in batches of their own: until both VMs' reach the end.
        let past_end = |seen: &[SliceRecord]| {
            (0..2).all(|vm| seen.iter().any(|slice| slice.vm == vm && slice.end_ns >= unpinned_ns + FOLLOW_NS))
        };
        slices_until(&past_end, &mut after)?;
        let moved = after.iter().find(|slice| slice.vm == 1 && slice.core == 1 && slice.start_ns >= unpinned_ns);
        let moved_ns = moved.ok_or_else(|| BenchError::Tool("the unpinned VM never ran on core 1".into()))?.start_ns;
        to_other.push(moved_ns - unpinned_ns);
        let held: Vec<Held> = seen
            .iter()
            .chain(&after)
            .map(|slice| Held { vm: slice.vm, start_ns: slice.start_ns, end_ns: slice.end_ns })
            .collect();
        match settle_ns(&held, 2, 2, unpinned_ns, unpinned_ns + FOLLOW_NS, judge) {
            Some(ns) => settle.push(ns),
            None => unsettled += 1,
        }
    }
    core.send(Command::Quit);
    core.run_until(None, |_| {});
    Ok(Unpinned {
        to_other_core_us: crate::stats::Percentiles::of_ns(&to_other)
            .ok_or_else(|| BenchError::Tool("no cycle".into()))?,
        shares_settle_us: crate::stats::Percentiles::of_ns(&settle),
        unsettled,
    })
}

/// `vms` tickers (unit `unit` iterations) on two cores for `duration`: each
/// core's wall time outside KVM_RUN, and the start-up.
#[derive(Debug, Clone, Serialize)]
pub struct CoreScale {
    /// VMs.
    pub vms: usize,
    /// Setting them up and starting the cores.
    pub startup_ms: f64,
    /// Each core's time outside KVM_RUN, percent of the run's wall time.
    pub outside_kvm_run_pct: Vec<f64>,
}

/// Many tickers on two cores.
pub fn scale(vms: usize, unit: u64, duration: Duration) -> Result<CoreScale, BenchError> {
    let configs = (0..vms).map(|vm| builtin(&format!("t{vm}"), "ticker", 1.0, &[unit])).collect();
    let mut config = RunConfig::new(configs);
    config.cpus = 2;
    let started = Instant::now();
    let core = crate::sched::spawn(vm::open_kvm()?, config)?;
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    let report = core.run_until(Some(Instant::now() + duration), |_| {});
    let outside_kvm_run_pct = report.cores.iter().map(|core| core.outside_kvm_run_pct).collect();
    Ok(CoreScale { vms, startup_ms, outside_kvm_run_pct })
}
