//! Lock-holder preemption: critical sections a second of the `locks`
//! guest's four locks, from the guest's own lock records, with 2 and 4
//! vCPUs on one core, and a VM of 2 vCPUs beside a spinner on two cores
//! under `fair` and `gang`, and alone on them (dedicated).

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
    /// Critical sections a second of the VM's own time in KVM_RUN (all its
    /// vCPUs): what the time it was given bought, whatever its share.
    pub sections_per_cpu_s: f64,
    /// The part of its loop iterations spent spinning, in percent.
    pub spin_pct: Option<f64>,
    /// Quanta that ended on a vCPU holding the lock.
    pub holder_preempted: u64,
    /// Quanta that ended on a vCPU waiting for it.
    pub waiter_preempted: u64,
}

/// Where a lock's VM runs.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The cores of the run.
    pub cpus: usize,
    /// A spinner beside it.
    pub spinner: bool,
    /// The policy.
    pub policy: Policy,
}

/// Alone on one core under `fair`.
pub const ONE_CORE: Setting = Setting { cpus: 1, spinner: false, policy: Policy::Fair };

/// Runs `locks` with `vcpus` vCPUs and lock `kind` (its sections sized to
/// 20 and 60 µs here) for `duration` at `quantum`, as `setting` says.
pub fn run_lock(
    calibration: &Calibration,
    vcpus: u32,
    kind: u64,
    quantum: Duration,
    duration: Duration,
    setting: Setting,
) -> Result<LockRun, BenchError> {
    let mut locks = builtin("locks", "locks", 1.0, &[0, 0, kind]);
    locks.vcpus = vcpus;
    let mut vms = vec![locks];
    if setting.spinner {
        vms.push(builtin("spin", "spin", 1.0, &[]));
    }
    calibration::size_units(calibration, &mut vms);
    let mut config = RunConfig::new(vms).with_policy(setting.policy);
    config.quantum = quantum;
    config.cpus = setting.cpus;
    let report = run_for(config, duration)?;
    let lock = report.vms[0].lock.unwrap_or_default();
    let seconds = report.wall_ns as f64 / 1e9;
    Ok(LockRun {
        sections_per_s: lock.sections as f64 / seconds.max(1e-9),
        sections_per_cpu_s: lock.sections as f64 / (report.vms[0].cpu_ns as f64 / 1e9).max(1e-9),
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
            row.insert(name.to_string(), run_lock(calibration, vcpus, kind, quantum, duration, ONE_CORE)?);
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

/// A VM of 2 vCPUs with each lock on two cores: beside a spinner under
/// `fair` and under `gang`, and alone under `gang` (each vCPU on a core of
/// its own all the time: dedicated), keyed by setting then lock.
pub fn two_cores(
    calibration: &Calibration,
    quantum: Duration,
    duration: Duration,
) -> Result<BTreeMap<String, BTreeMap<String, LockRun>>, BenchError> {
    let settings = [
        ("fair_beside_spinner", Setting { cpus: 2, spinner: true, policy: Policy::Fair }),
        ("gang_beside_spinner", Setting { cpus: 2, spinner: true, policy: Policy::Gang }),
        ("dedicated", Setting { cpus: 2, spinner: false, policy: Policy::Gang }),
    ];
    let mut table = BTreeMap::new();
    for (setting_name, setting) in settings {
        let mut row = BTreeMap::new();
        for (name, kind) in LOCKS {
            row.insert(name.to_string(), run_lock(calibration, 2, kind, quantum, duration, setting)?);
        }
        table.insert(setting_name.to_string(), row);
    }
    Ok(table)
}

/// Critical sections per second of the VM's own CPU under `setting` over
/// the dedicated run's, for each lock of [`two_cores`].
pub fn over_dedicated(table: &BTreeMap<String, BTreeMap<String, LockRun>>, setting: &str) -> BTreeMap<String, f64> {
    let (Some(row), Some(dedicated)) = (table.get(setting), table.get("dedicated")) else { return BTreeMap::new() };
    row.iter()
        .filter_map(|(name, run)| {
            let alone = dedicated.get(name)?.sections_per_cpu_s;
            Some((name.clone(), run.sections_per_cpu_s / alone.max(1e-9)))
        })
        .collect()
}
