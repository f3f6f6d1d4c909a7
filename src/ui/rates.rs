//! Counter rates and CPU shares over a sliding window of samples: a VM that
//! exits twice a second reads 2/s, not 0/s and 5/s in turn as it would over
//! one 200 ms sample.

use std::collections::VecDeque;

use crate::event::VmSample;
use crate::stats::{ExitCounts, LockCounts, VmCounters};

/// The shortest span rates and shares are taken over, once the run is that old.
pub const RATE_WINDOW_NS: u64 = 1_000_000_000;

/// The samples of the last [`RATE_WINDOW_NS`] (and the one just before).
#[derive(Debug, Clone, Default)]
pub struct RateWindow {
    samples: VecDeque<(u64, Vec<VmSample>)>,
}

/// One VM's figures over the window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowFigures {
    /// Counters per second.
    pub rates: VmCounters,
    /// Its fraction of all the CPU time charged in the window: what the
    /// policy steers by, so that it converges on the target (KVM_RUN time
    /// also holds each slice's run past its deadline, which goes uncharged).
    pub share: f64,
    /// The cores' worth of charged time it had over the window (1.0: a
    /// whole core): the header adds these up by core.
    pub cores_used: f64,
}

impl RateWindow {
    /// Adds a sample taken `elapsed_ns` into the run, dropping those no
    /// longer needed: the oldest kept is the newest one at least a window old.
    pub fn push(&mut self, elapsed_ns: u64, vms: Vec<VmSample>) {
        self.samples.push_back((elapsed_ns, vms));
        while self.samples.get(1).is_some_and(|(at, _)| elapsed_ns - at >= RATE_WINDOW_NS) {
            self.samples.pop_front();
        }
    }

    /// The time the figures span: a full [`RATE_WINDOW_NS`] once the run is that old.
    pub fn span_ns(&self) -> u64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((from, _)), Some((to, _))) => to.saturating_sub(*from),
            _ => 0,
        }
    }

    /// Each VM's rates and share between the oldest and newest sample kept
    /// (None until there are two).
    pub fn figures(&self) -> Option<Vec<WindowFigures>> {
        let ((from_ns, from), (to_ns, to)) = (self.samples.front()?, self.samples.back()?);
        let seconds = to_ns.checked_sub(*from_ns).filter(|&ns| ns > 0)? as f64 / 1e9;
        let cpu: Vec<u64> = from.iter().zip(to).map(|(a, b)| b.charged_ns.saturating_sub(a.charged_ns)).collect();
        let total_cpu: u64 = cpu.iter().sum();
        Some(
            from.iter()
                .zip(to)
                .zip(cpu)
                .map(|((a, b), cpu)| WindowFigures {
                    rates: per_second(&a.counters, &b.counters, seconds),
                    share: if total_cpu > 0 { cpu as f64 / total_cpu as f64 } else { 0.0 },
                    cores_used: cpu as f64 / (seconds * 1e9),
                })
                .collect(),
        )
    }
}

fn per_second(before: &VmCounters, after: &VmCounters, seconds: f64) -> VmCounters {
    let rate = |b: u64, a: u64| (a.saturating_sub(b) as f64 / seconds).round() as u64;
    let (b, a) = (&before.exits, &after.exits);
    VmCounters {
        exits: ExitCounts {
            io_in: rate(b.io_in, a.io_in),
            io_out: rate(b.io_out, a.io_out),
            hlt: rate(b.hlt, a.hlt),
            mmio: rate(b.mmio, a.mmio),
            unknown_port: rate(b.unknown_port, a.unknown_port),
            shutdown: rate(b.shutdown, a.shutdown),
            other: rate(b.other, a.other),
        },
        preemptions: rate(before.preemptions, after.preemptions),
        faults: rate(before.faults, after.faults),
        injected: rate(before.injected, after.injected),
        coalesced: rate(before.coalesced, after.coalesced),
        lock: LockCounts {
            holder_preempted: rate(before.lock.holder_preempted, after.lock.holder_preempted),
            waiter_preempted: rate(before.lock.waiter_preempted, after.lock.waiter_preempted),
            sections: rate(before.lock.sections, after.lock.sections),
            spins: rate(before.lock.spins, after.lock.spins),
            work: rate(before.lock.work, after.lock.work),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(io_out: u64, cpu_ns: u64) -> VmSample {
        VmSample {
            counters: VmCounters { exits: ExitCounts { io_out, ..Default::default() }, ..Default::default() },
            cpu_ns,
            charged_ns: cpu_ns,
            vcpus: Vec::new(),
            core: 0,
            pin: Vec::new(),
        }
    }

    #[test]
    fn a_slow_vm_reads_its_rate_over_a_second_not_one_sample() {
        // Two exits a second, samples every 200 ms: an exit lands in every
        // other or third sample. One sample's rate reads 0/s or 5/s; the
        // window's reads 2/s from the first second on.
        let mut window = RateWindow::default();
        let mut exits = 0;
        let mut rates = Vec::new();
        for step in 0..=30u64 {
            let at = step * 200_000_000;
            exits = (at * 2 / 1_000_000_000).max(exits);
            window.push(at, vec![sample(exits, at)]);
            if at >= RATE_WINDOW_NS {
                rates.push(window.figures().unwrap()[0].rates.exits.io_out);
            }
        }
        assert!(rates.iter().all(|&rate| rate == 2), "{rates:?}");
    }

    #[test]
    fn the_window_keeps_a_second_and_no_more() {
        let mut window = RateWindow::default();
        assert_eq!(window.figures(), None);
        for step in 0..20u64 {
            window.push(step * 200_000_000, vec![sample(step * 10, step * 7), sample(0, step * 3)]);
        }
        // Newest at 3.8 s; the oldest kept is the newest at least 1 s older: 2.8 s.
        assert_eq!(window.samples.front().unwrap().0, 2_800_000_000);
        let figures = window.figures().unwrap();
        assert_eq!(figures[0].rates.exits.io_out, 50);
        assert!((figures[0].share - 0.7).abs() < 1e-9 && (figures[1].share - 0.3).abs() < 1e-9);
    }

    #[test]
    fn counters_that_went_back_read_zero() {
        // A restarted VM starts its counters again.
        let mut window = RateWindow::default();
        window.push(0, vec![sample(100, 100)]);
        window.push(1_000_000_000, vec![sample(3, 150)]);
        assert_eq!(window.figures().unwrap()[0].rates.exits.io_out, 0);
    }
}
