//! What a live migration costs over loopback: two runs in this process, a
//! receiver on a Unix socket and a sender told to move its one VM there;
//! total time, rounds, pages sent over memory, and the downtime as the
//! receiver measured it (one host: one monotonic clock).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::measure::BenchError;
use crate::config::{RunConfig, VmConfig};
use crate::debug::ListenAddress;
use crate::event::{Command, Event};
use crate::migration::link::{IncomingListener, start_incoming};
use crate::stats::Percentiles;
use crate::{guests, sched, vm};

/// One guest's migrations, summed up.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationCosts {
    /// The guest and its arguments.
    pub guest: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Migrations measured.
    pub runs: usize,
    /// From `migrate` to the switch of owner, ms.
    pub total_ms: Percentiles,
    /// Rounds, the last one included (median).
    pub rounds_p50: f64,
    /// Pages sent over pages of memory (median).
    pub sent_over_memory_p50: f64,
    /// Last slice on the sender to first on the receiver, µs.
    pub downtime_us: Percentiles,
}

/// Moves a VM of `guest` (with `args`, `memory` bytes) `runs` times, each
/// after it ran for `warm` on the sender.
pub fn migration_costs(
    guest: &str,
    args: &[u64],
    memory: u64,
    runs: usize,
    warm: Duration,
) -> Result<MigrationCosts, BenchError> {
    let tool = |what: &str, error: &dyn std::fmt::Display| BenchError::Tool(format!("{what}: {error}"));
    let (mut totals, mut downtimes, mut rounds, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let socket = std::env::temp_dir().join(format!("matrix-tui-bench-{}-{run}.sock", std::process::id()));
        let address = ListenAddress::Unix(socket.clone());
        let listener = IncomingListener::bind(&address).map_err(|error| tool("cannot listen", &error))?;
        let mut receiving = RunConfig::new(Vec::new());
        receiving.stay_open = true;
        let receiver = sched::spawn(vm::open_kvm()?, receiving)?;
        start_incoming(listener, Arc::new(Mutex::new(Vec::new())), 1 << 30, None, receiver.commander())
            .map_err(|error| tool("no listener thread", &error))?;
        let image = Arc::from(guests::builtin(guest).expect("built in").image);
        let mut moving = VmConfig::new("moving", guest, image);
        (moving.args, moving.memory_size) = (args.to_vec(), memory);
        let sender = sched::spawn(vm::open_kvm()?, RunConfig::new(vec![moving]))?;
        // The core never waits for a front end: the events of the warm-up wait or are folded.
        std::thread::sleep(warm);
        sender.send(Command::MigrateTo { vm: 0, address });
        // The sender's run ends by itself once its one VM has moved (or after 60 s).
        let from = sender.run_until(Some(Instant::now() + Duration::from_secs(60)), |_: Event| {});
        let out = from.vms[0].migration.clone().ok_or_else(|| tool("no migration", &"the VM never moved"))?;
        receiver.send(Command::Quit);
        let to = receiver.run_until(Some(Instant::now() + Duration::from_secs(10)), |_: Event| {});
        let _ = std::fs::remove_file(&socket);
        let came = to.vms.first().and_then(|vm| vm.migration.clone());
        let downtime = came.and_then(|report| report.downtime_ms).or(out.downtime_ms);
        if let (Some(total), Some(downtime)) = (out.total_ms, downtime) {
            totals.push((total * 1e6) as u64);
            downtimes.push((downtime * 1e6) as u64);
            rounds.push(f64::from(out.round_count));
            ratios.push(out.pages as f64 / out.memory_pages.max(1) as f64);
        }
    }
    let p = |values: &[u64]| Percentiles::of_ns(values).ok_or_else(|| tool("no migration finished", &guest));
    Ok(MigrationCosts {
        guest: format!("{guest} {args:?}"),
        memory_mib: memory >> 20,
        runs,
        total_ms: scale(p(&totals)?, 1e-3),
        rounds_p50: super::measure::median(rounds),
        sent_over_memory_p50: super::measure::median(ratios),
        downtime_us: p(&downtimes)?,
    })
}

fn scale(p: Percentiles, by: f64) -> Percentiles {
    Percentiles { p50: p.p50 * by, p99: p.p99 * by, max: p.max * by, ..p }
}
