//! Lock-holder preemption: critical sections a second of the `locks`
//! guest's four locks, from the guest's own lock records, with 2 and 4
//! vCPUs on one core, and a VM of 2 vCPUs beside a spinner on two cores.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::measure::{BenchError, builtin, run_for};
use crate::calibration;
use crate::config::{Calibration, Policy, RunConfig};

/// The locks, by the `locks` guest's argument 2, as the report names them.
pub const LOCKS: [(&str, u64); 4] = [("test_and_set", 0), ("ticket", 1), ("pv_yield", 2), ("pv_halt", 3)];

/// One lock's run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LockRun {
    /// Critical sections a second of the run's wall time (the guest's count).
    pub sections_per_s: f64,
    /// The part of its loop iterations spent spinning, in percent.
    pub spin_pct: Option<f64>,
    /// Quanta that ended on a vCPU holding the lock.
    pub holder_preempted: u64,
    /// Quanta that ended on a vCPU waiting for it.
    pub waiter_preempted: u64,
}

/// Runs `locks` with `vcpus` vCPUs and lock `kind` (its sections sized to
/// 20 and 60 µs here) for `duration` at `quantum` under `fair`: alone on one
/// core, or beside a spinner on `cpus` cores.
pub fn run_lock(
    calibration: &Calibration,
    vcpus: u32,
    kind: u64,
    quantum: Duration,
    duration: Duration,
    beside_spinner: Option<usize>,
) -> Result<LockRun, BenchError> {
    let mut locks = builtin("locks", "locks", 1.0, &[0, 0, kind]);
    locks.vcpus = vcpus;
    let mut vms = vec![locks];
    if beside_spinner.is_some() {
        vms.push(builtin("spin", "spin", 1.0, &[]));
    }
    calibration::size_units(calibration, &mut vms);
    let mut config = RunConfig::new(vms).with_policy(Policy::Fair);
    config.quantum = quantum;
    config.cpus = beside_spinner.unwrap_or(1);
    let report = run_for(config, duration)?;
    let lock = report.vms[0].lock.unwrap_or_default();
    let seconds = report.wall_ns as f64 / 1e9;
    Ok(LockRun {
        sections_per_s: lock.sections as f64 / seconds.max(1e-9),
        spin_pct: lock.spin_pct(),
        holder_preempted: lock.holder_preempted,
        waiter_preempted: lock.waiter_preempted,
    })
}

/// Every lock with 2 and 4 vCPUs alone on one core, keyed `vcpus_N` then by
/// lock name, and each lock's critical sections over the ticket lock's.
pub fn one_core(
    calibration: &Calibration,
    quantum: Duration,
    duration: Duration,
) -> Result<BTreeMap<String, BTreeMap<String, LockRun>>, BenchError> {
    let mut table = BTreeMap::new();
    for vcpus in [2, 4] {
        let mut row = BTreeMap::new();
        for (name, kind) in LOCKS {
            row.insert(name.to_string(), run_lock(calibration, vcpus, kind, quantum, duration, None)?);
        }
        table.insert(format!("vcpus_{vcpus}"), row);
    }
    Ok(table)
}

/// Each lock's critical sections over the ticket lock's, in a row of [`one_core`].
pub fn over_ticket(row: &BTreeMap<String, LockRun>) -> BTreeMap<String, f64> {
    let ticket = row.get("ticket").map_or(0.0, |run| run.sections_per_s);
    row.iter()
        .filter(|(name, _)| name.as_str() != "ticket")
        .map(|(name, run)| (name.clone(), run.sections_per_s / ticket.max(1e-9)))
        .collect()
}
