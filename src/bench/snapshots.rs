//! What a snapshot costs: saving a running ticker (the core's pause),
//! encoding and writing the file, reading and checking it, and restoring
//! the machine, for a small and a large guest memory.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::measure::BenchError;
use crate::sched::VmRuntime;
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
    };
    let mut runtime = VmRuntime::new(&kvm, &spec, Default::default())?;
    let kick = KickTarget::new();
    let _attached = kick.attach();
    for _ in 0..200 {
        runtime.step(&kick, 0, false);
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
            runtime.step(&kick, 0, false);
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
