//! What a snapshot costs: saving a running ticker (the core's pause),
//! encoding and writing the file, reading and checking it, and restoring
//! the machine, for a small and a large guest memory; and what saving a
//! large, much-written VM costs the VM beside it and the process's memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::measure::BenchError;
use crate::config::{RunConfig, VmConfig};
use crate::event::{Command, Event};
use crate::record::SliceRecord;
use crate::sched::{self, VmRuntime};
use crate::snapshot::{self, Snapshot, SnapshotState, VmIdentity};
use crate::stats::Percentiles;
use crate::vm::{self, KickTarget, MachineSpec};
use crate::{guests, vm::kick::monotonic_ns};

/// The costs of one memory size, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotCosts {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Bytes of the file.
    pub file_bytes: usize,
    /// The core's part: complete the exit, read the vCPU, copy memory (the VMs wait).
    pub save_us: Percentiles,
    /// Encoding (zero pages skipped, checksum) and writing the file.
    pub write_us: Percentiles,
    /// Reading the file and checking it.
    pub read_us: Percentiles,
    /// Making the VM again: memory, VM, vCPU and its state, ready to run.
    pub restore_us: Percentiles,
}

/// Saves, writes, reads and restores a ticker with `memory` bytes, `rounds` times.
pub fn snapshot_costs(memory: u64, rounds: usize) -> Result<SnapshotCosts, BenchError> {
    let kvm = vm::open_kvm()?;
    let builtin = guests::builtin("ticker").expect("built in");
    let spec = MachineSpec {
        image: Arc::from(builtin.image),
        memory_size: memory,
        args: vec![50],
        layout: builtin.layout,
        restore: None,
        vcpus: 1,
    };
    let mut runtime = VmRuntime::new(&kvm, &spec, Default::default())?;
    let kick = KickTarget::new();
    let _attached = kick.attach();
    for _ in 0..200 {
        runtime.step(&kick, 0, false, u64::MAX);
    }
    let path = std::env::temp_dir().join(format!("matrix-tui-bench-{}.snap", std::process::id()));
    let (mut save, mut write, mut read, mut restore) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut file_bytes = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let (machine, runtime_state, memory) =
            runtime.save(&kvm, monotonic_ns(), false).map_err(|error| BenchError::Tool(error.to_string()))?;
        save.push(started.elapsed().as_nanos() as u64);
        let vm = VmIdentity {
            name: "bench".into(),
            guest: "ticker".into(),
            weight: 1.0,
            ports: Vec::new(),
            show_ports: false,
        };
        let state = SnapshotState { vm, machine, runtime: runtime_state };
        let started = Instant::now();
        let bytes = snapshot::state::encode(&state, &memory);
        snapshot::file::write(&path, &bytes).map_err(|error| BenchError::Tool(error.to_string()))?;
        write.push(started.elapsed().as_nanos() as u64);
        file_bytes = bytes.len();
        let started = Instant::now();
        let loaded: Snapshot = snapshot::file::read(&path).map_err(|error| BenchError::Tool(error.to_string()))?;
        read.push(started.elapsed().as_nanos() as u64);
        let restored_spec = MachineSpec { restore: Some(Arc::clone(&loaded.machine)), ..spec.clone() };
        let started = Instant::now();
        let restored = vm::Machine::new(&kvm, &restored_spec)?;
        restore.push(started.elapsed().as_nanos() as u64);
        drop(restored);
        // The next round saves a ticker that has moved on.
        for _ in 0..20 {
            runtime.step(&kick, 0, false, u64::MAX);
        }
    }
    let _ = std::fs::remove_file(&path);
    let p = |values: &[u64]| Percentiles::of_ns(values).expect("rounds > 0");
    Ok(SnapshotCosts {
        memory_mib: memory >> 20,
        file_bytes,
        save_us: p(&save),
        write_us: p(&write),
        read_us: p(&read),
        restore_us: p(&restore),
    })
}

/// What saving a large, much-written VM costs its neighbour and the process.
#[derive(Debug, Clone, Serialize)]
pub struct LargeSaveCosts {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Guest memory the VM had written before the save, MiB (the resident
    /// growth of the process while it wrote).
    pub written_mib: f64,
    /// From the command to the core's answer (the copy in steps), ms.
    pub save_ms: f64,
    /// Steps the copy took.
    pub steps: u32,
    /// The longest step, ms (the core's part of a neighbour's wait).
    pub longest_step_ms: f64,
    /// The neighbour's longest wait between two of its slices during the save, ms.
    pub neighbour_gap_during_ms: f64,
    /// The same in the second before the command, ms (what the host gives anyway).
    pub neighbour_gap_before_ms: f64,
    /// The process's peak resident growth during the save over what was written.
    pub rss_growth_over_written: f64,
}

/// Saves a `memory`-byte dirtier that wrote `written` bytes while a ticker
/// runs beside it, watching the ticker's slices and the process's peak RSS.
pub fn large_save_costs(memory: u64, written: u64) -> Result<LargeSaveCosts, BenchError> {
    let tool = |what: &str, error: &dyn std::fmt::Display| BenchError::Tool(format!("{what}: {error}"));
    let pages = written >> 12;
    // Each unit writes 4,096 pages of the working set (1 MiB up), so the
    // first pages/4,096 units touch every page once.
    let mut dirtier = VmConfig::new("big", "dirtier", guests::resolve("dirtier").expect("built in"));
    (dirtier.args, dirtier.memory_size) = (vec![4096, pages, 1_000_000, 1], memory);
    let mut ticker = VmConfig::new("ticker", "ticker", guests::resolve("ticker").expect("built in"));
    ticker.args = vec![50];
    let mut config = RunConfig::new(vec![dirtier, ticker]);
    config.live_records = true;
    let rss_before_start = resident_bytes().ok_or_else(|| tool("RSS", &"no /proc/self/statm"))?;
    let core = sched::spawn(vm::open_kvm()?, config)?;
    let mut slices: Vec<SliceRecord> = Vec::new();
    let keep = |event: Event, slices: &mut Vec<SliceRecord>| match event {
        Event::Slices { records, .. } => {
            slices.extend(records.into_iter().filter(|slice| slice.vm == 1));
            None
        }
        Event::Snapshot { t_ns, result, .. } => Some((t_ns, result)),
        _ => None,
    };
    // Written: the process grew by the pages the dirtier touched.
    let deadline = Instant::now() + Duration::from_secs(120);
    while resident_bytes().unwrap_or(0).saturating_sub(rss_before_start) < written * 95 / 100 {
        if Instant::now() > deadline {
            core.send(Command::Quit);
            return Err(tool("dirtier", &"did not write its pages within 120 s"));
        }
        if let Ok(event) = core.events().recv_timeout(Duration::from_millis(50)) {
            keep(event, &mut slices);
        }
    }
    let written_bytes = resident_bytes().unwrap_or(0).saturating_sub(rss_before_start);
    // One more second beside it, to see what the neighbour waits without a save.
    let calm_until = Instant::now() + Duration::from_secs(1);
    while let Ok(event) = core.events().recv_deadline(calm_until) {
        keep(event, &mut slices);
    }
    reset_peak_resident();
    let rss_before = resident_bytes().unwrap_or(0);
    let asked_ns = core.started().elapsed().as_nanos() as u64;
    let path = std::env::temp_dir().join(format!("matrix-tui-bench-large-{}.snap", std::process::id()));
    core.send(Command::Snapshot { vm: 0, path });
    let answer_deadline = Instant::now() + Duration::from_secs(60);
    let (saved_ns, taken) = loop {
        let event = core.events().recv_deadline(answer_deadline).map_err(|_| tool("save", &"no answer in 60 s"))?;
        if let Some(answer) = keep(event, &mut slices) {
            break answer;
        }
    };
    let peak = peak_resident_bytes().unwrap_or(0);
    let taken = taken.map_err(|why| tool("save", &why))?;
    let (steps, longest_step_ms) = (taken.steps, taken.longest_step_ns as f64 / 1e6);
    drop(taken);
    // The slices of the save's last moments come in the next batches.
    let tail_until = Instant::now() + Duration::from_millis(200);
    while let Ok(event) = core.events().recv_deadline(tail_until) {
        keep(event, &mut slices);
    }
    core.send(Command::Quit);
    let _ = core.run_until(Some(Instant::now() + Duration::from_secs(10)), |_| {});
    let calm_from = asked_ns.saturating_sub(1_000_000_000);
    Ok(LargeSaveCosts {
        memory_mib: memory >> 20,
        written_mib: written_bytes as f64 / f64::from(1 << 20),
        steps,
        longest_step_ms,
        save_ms: saved_ns.saturating_sub(asked_ns) as f64 / 1e6,
        neighbour_gap_during_ms: longest_gap(&slices, asked_ns, saved_ns) as f64 / 1e6,
        neighbour_gap_before_ms: longest_gap(&slices, calm_from, asked_ns) as f64 / 1e6,
        rss_growth_over_written: peak.saturating_sub(rss_before) as f64 / written_bytes.max(1) as f64,
    })
}

/// The longest time between one slice's end and the next one's start, for
/// the gaps that overlap `from..to` (ns since the run started).
fn longest_gap(slices: &[SliceRecord], from: u64, to: u64) -> u64 {
    slices
        .windows(2)
        .filter(|pair| pair[1].start_ns > from && pair[0].end_ns < to)
        .map(|pair| pair[1].start_ns.saturating_sub(pair[0].end_ns))
        .max()
        .unwrap_or(0)
}

/// The process's resident memory now, from /proc/self/statm.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The process's peak resident memory since the last reset (VmHWM).
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sets the peak resident memory back to the current (Linux's clear_refs 5);
/// where that fails the peak is the whole process's, an overstatement.
fn reset_peak_resident() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
