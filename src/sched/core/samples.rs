//! Counter samples for the front ends five times a second, and the final
//! report when the run ends.

use super::*;
use crate::report::{VcpuLockReport, VcpuReport};
use crate::sched::vm_runtime::VmRuntime;
use crate::stats::LockCounts;

impl Core {
    /// Sends the counters when a sample is due at `now_ns` (monotonic).
    pub(super) fn sample_if_due(&mut self, now_ns: u64) {
        if !passed(SAMPLE_EVERY, self.last_sample_ns, now_ns) {
            return;
        }
        self.last_sample_ns = now_ns;
        // Every VM's place, another core's VMs as stand-ins the merger
        // replaces (with one core there are none).
        let vms = self
            .slots
            .each()
            .map(|slot| match slot {
                Some(slot) => VmSample {
                    counters: slot.runtime.counters(),
                    cpu_ns: slot.runtime.cpu_ns,
                    charged_ns: slot.charged_ns,
                    vcpus: vcpu_samples(&slot.runtime),
                    core: self.index,
                    pin: slot.config.pin.clone(),
                },
                None => VmSample::elsewhere(),
            })
            .collect();
        // A sample the front end has no room for is simply skipped: the next
        // one carries the same counters, newer.
        let _ = self.events.try_send(Event::Sample { elapsed_ns: self.started.elapsed().as_nanos() as u64, vms });
    }

    /// Delivers what is left and the final report, then returns (the thread
    /// ends). `armed_ahead_pct` goes into the report as it is.
    pub(super) fn finish(mut self, armed_ahead_pct: Option<f64>) {
        // VMs on their way here are this core's to report.
        self.take_last_arrivals();
        let wall_ns = self.started.elapsed().as_nanos() as u64;
        // Waiting is fine now: the run is over and the front end is reading.
        for event in std::mem::take(&mut self.outbox) {
            let _ = self.events.send(event);
        }
        // A save under way is finished: the run's end does not lose it.
        self.finish_saves();
        // The last notes go out whole, even after a line a guest left unfinished.
        for slot in self.slots.iter_mut() {
            slot.runtime.console.release_held_notes();
        }
        let batch = self.take_consoles();
        if !batch.is_empty() {
            let _ = self.events.send(Event::Console(batch));
        }
        for event in self.take_records() {
            let _ = self.events.send(event);
        }
        let mut report = self.report(wall_ns, armed_ahead_pct);
        if let Some((trace, path)) = self.trace.take() {
            let counts = trace.finish();
            report.trace = Some(TraceReport {
                path,
                records: counts.records,
                dropped: counts.dropped,
                written: 0,
                lost: 0,
                error: None,
            });
        }
        let _ = self.events.send(Event::Finished(Box::new(report)));
    }

    pub(super) fn report(&self, wall_ns: u64, deadlines_armed_ahead_pct: Option<f64>) -> RunReport {
        let total_weight: f64 = self.slots.iter().map(|slot| slot.config.weight).sum();
        let total_cpu: u64 = self.slots.iter().map(|slot| slot.runtime.cpu_ns).sum();
        let total_charged: u64 = self.slots.iter().map(|slot| slot.charged_ns).sum();
        let vms = self
            .slots
            .iter()
            .map(|slot| {
                let (crash_reason, registers) = match &slot.state {
                    VmState::Crashed { reason, registers } => (Some(reason.clone()), Some(*registers)),
                    VmState::Halted { registers, .. } => (None, Some(*registers)),
                    _ => (None, None),
                };
                let counters = slot.runtime.counters();
                let (console, console_cut_bytes) = slot.runtime.console.report_history();
                VmReport {
                    name: slot.config.name.clone(),
                    guest: slot.config.guest.clone(),
                    state: slot.state.name().to_string(),
                    crash_reason,
                    registers,
                    weight: slot.config.weight,
                    target_share: ratio(slot.config.weight, total_weight),
                    share: ratio(slot.runtime.cpu_ns as f64, total_cpu as f64),
                    charged_share: ratio(slot.charged_ns as f64, total_charged as f64),
                    cpu_ns: slot.runtime.cpu_ns,
                    charged_ns: slot.charged_ns,
                    stolen_ns: slot.stolen_ns,
                    exits: counters.exits.into(),
                    preemptions: counters.preemptions,
                    faults: counters.faults,
                    injected: counters.injected,
                    coalesced: counters.coalesced,
                    lock: slot.runtime.lock_sums().map(|_| counters.lock),
                    console: String::from_utf8_lossy(console).into_owned(),
                    console_cut_bytes,
                    console_dropped: slot.console_dropped,
                    migration: slot.migration_report.clone(),
                    vcpus: vcpu_reports(&slot.runtime, total_cpu),
                }
            })
            .collect();
        let timed = self.planner.policy() != Policy::Io;
        let outside_kvm_run_pct = 100.0 * (1.0 - ratio(self.kvm_run_ns as f64, wall_ns as f64));
        RunReport {
            wall_ns,
            policy: self.planner.policy().name().into(),
            quantum_us: timed.then(|| self.planner.quantum_ns() / 1000),
            timer: timed.then(|| self.timer_kind.name().into()),
            outside_kvm_run_pct,
            preempt_overrun_us: self.overruns.summary(),
            preempt_early_us: self.early_ends.summary(),
            deadlines_armed_ahead_pct,
            kick_lead_us: (timed && self.compensation.is_enabled() && deadlines_armed_ahead_pct.is_some())
                .then(|| self.compensation.lead_ns() as f64 / 1000.0),
            vms,
            calibration: self.calibration,
            trace: None,
            timings: self.slots.iter().map(|slot| slot.timings.clone().unwrap_or_default()).collect(),
            cores: vec![crate::report::CoreReport {
                index: self.index,
                host_cpu: self.host_cpu,
                vms: self.slots.iter().map(|slot| slot.config.name.clone()).collect(),
                ids: (0..self.slots.len()).filter(|&vm| self.slots.owns(vm)).collect(),
                // Read on the core thread, at the run's end.
                busy_pct: 100.0 * ratio(crate::vm::kick::thread_cpu_ns() as f64, wall_ns as f64).min(1.0),
                outside_kvm_run_pct,
                moves: self.moves,
            }],
        }
    }
}

/// What the report says of each of a VM's vCPUs.
fn vcpu_reports(runtime: &VmRuntime, total_cpu: u64) -> Vec<VcpuReport> {
    let records = runtime.lock_records();
    runtime
        .vcpus
        .iter()
        .enumerate()
        .map(|(index, vcpu)| VcpuReport {
            index,
            state: vcpu.state.name(),
            exits: vcpu.exits,
            cpu_ns: vcpu.cpu_ns,
            charged_ns: vcpu.charged_ns,
            share: ratio(vcpu.cpu_ns as f64, total_cpu as f64),
            injected: vcpu.timer.injected,
            ipis: vcpu.ipis,
            ipis_coalesced: vcpu.ipis_coalesced,
            lock: records.as_ref().map(|records| {
                let record = records[index];
                let counts = LockCounts { spins: record.spins, work: record.work, ..Default::default() };
                VcpuLockReport { sections: record.sections, spin_pct: counts.spin_pct() }
            }),
        })
        .collect()
}

/// What the front ends are told of a VM's vCPUs: nothing for a VM of one.
fn vcpu_samples(runtime: &VmRuntime) -> Vec<crate::event::VcpuSample> {
    if runtime.vcpus.len() == 1 {
        return Vec::new();
    }
    let records = runtime.lock_records();
    runtime
        .vcpus
        .iter()
        .enumerate()
        .map(|(index, vcpu)| crate::event::VcpuSample {
            state: vcpu.state.cell_word(),
            exits: vcpu.exits,
            charged_ns: vcpu.charged_ns,
            lock_spins: records.as_ref().map_or(0, |records| records[index].spins),
            lock_work: records.as_ref().map_or(0, |records| records[index].work),
        })
        .collect()
}
