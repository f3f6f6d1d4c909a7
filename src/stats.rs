//! Per-VM counters: guest-caused exits by type (what HC_numExits and
//! HC_numExitsByType report) and the host-side events kept apart from them.

use serde::Serialize;

/// Exits the guest's own instructions caused, by type (the kvm_stat view).
/// Port I/O is counted by direction whether or not the port is a hypercall;
/// `unknown_port` counts the misused or unknown ones among them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitCounts {
    /// `in` instructions.
    pub io_in: u64,
    /// `out` instructions.
    pub io_out: u64,
    /// HLT.
    pub hlt: u64,
    /// MMIO to addresses outside guest memory.
    pub mmio: u64,
    /// Port accesses that are not a hypercall (unknown port, wrong size or direction).
    pub unknown_port: u64,
    /// Triple faults.
    pub shutdown: u64,
    /// Anything else (failed entry, internal error, ...).
    pub other: u64,
}

impl ExitCounts {
    /// Every guest-caused exit (`unknown_port` is already inside `io_in`/`io_out`).
    pub fn total(&self) -> u64 {
        self.io_in + self.io_out + self.hlt + self.mmio + self.shutdown + self.other
    }
}

/// Everything counted for one VM.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VmCounters {
    /// Guest-caused exits.
    pub exits: ExitCounts,
    /// Times the scheduler took the CPU back (timer kicks); never in `exits`.
    pub preemptions: u64,
    /// Hypercalls refused for a bad guest pointer (HC_printStr) or similar.
    pub faults: u64,
    /// Virtual timer ticks injected (KVM_INTERRUPT); never in `exits`.
    pub injected: u64,
    /// Ticks that came due while one was still pending, folded into it.
    pub coalesced: u64,
    /// What its lock records say (all zero for a guest that names none).
    pub lock: LockCounts,
}

/// A VM's locking, for a guest that shares its lock records
/// (HC_lockWatch): how often a quantum ended on a vCPU that held a lock or
/// waited for one (the hypervisor's counts), and the sums of its vCPUs'
/// records (the guest's own counts, read from its memory).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LockCounts {
    /// Quanta that ended while their vCPU's record said it held a lock.
    pub holder_preempted: u64,
    /// Quanta that ended while their vCPU's record said it waited for one.
    pub waiter_preempted: u64,
    /// Critical sections done, as the guest counts them.
    pub sections: u64,
    /// Loop iterations spent spinning for a lock, as the guest counts them.
    pub spins: u64,
    /// Loop iterations spent on anything else, as the guest counts them.
    pub work: u64,
}

impl LockCounts {
    /// The part of these loop iterations spent spinning, in percent; None
    /// when there are none (for counts over a window, as rates are).
    pub fn spin_pct(&self) -> Option<f64> {
        self.spin_pct_since(&Self::default())
    }

    /// The part of the guest's loop iterations spent spinning, in percent,
    /// from `before` to these counts; None when it counted none.
    pub fn spin_pct_since(&self, before: &Self) -> Option<f64> {
        let spins = self.spins.saturating_sub(before.spins);
        let all = spins + self.work.saturating_sub(before.work);
        (all > 0).then(|| spins as f64 * 100.0 / all as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spin_part_is_of_the_iterations_counted_in_between() {
        let before = LockCounts { spins: 100, work: 100, ..Default::default() };
        let after = LockCounts { spins: 130, work: 190, ..Default::default() };
        assert_eq!(after.spin_pct_since(&before), Some(25.0));
        assert_eq!(before.spin_pct_since(&before), None);
        assert_eq!(after.spin_pct(), Some(130.0 * 100.0 / 320.0));
        // A guest's counts that went back (a restart, a hostile guest) count as none.
        assert_eq!(before.spin_pct_since(&after), None);
    }

    #[test]
    fn total_counts_unknown_ports_once() {
        let counts = ExitCounts { io_in: 3, io_out: 16, hlt: 1, unknown_port: 2, ..Default::default() };
        assert_eq!(counts.total(), 20);
    }
}

/// p50 / p99 / max of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// How many samples.
    pub samples: usize,
}

impl Percentiles {
    /// Percentiles of `values_ns` (nearest rank), in microseconds; None if empty.
    pub fn of_ns(values_ns: &[u64]) -> Option<Self> {
        if values_ns.is_empty() {
            return None;
        }
        let mut sorted = values_ns.to_vec();
        sorted.sort_unstable();
        let us = |q: f64| nearest_rank(&sorted, q).map_or(0.0, |ns| ns as f64 / 1000.0);
        Some(Self { p50: us(0.50), p99: us(0.99), max: us(1.0), samples: sorted.len() })
    }
}

/// The `q` quantile (0 < q <= 1) of values sorted in ascending order, by
/// nearest rank: the smallest value with at least `q` of them at or below
/// it. None when there are none.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted.get(rank.min(sorted.len()).checked_sub(1)?).copied()
}

/// A bounded record of latencies (the first [`LatencyLog::CAPACITY`] kept).
#[derive(Debug, Default, Clone)]
pub struct LatencyLog {
    samples_ns: Vec<u64>,
}

impl LatencyLog {
    /// Samples kept at most (a 1 ms quantum fills it in about 100 s).
    pub const CAPACITY: usize = 100_000;

    /// Adds one latency.
    pub fn record(&mut self, ns: u64) {
        if self.samples_ns.len() < Self::CAPACITY {
            self.samples_ns.push(ns);
        }
    }

    /// Their percentiles, if any were recorded.
    pub fn summary(&self) -> Option<Percentiles> {
        Percentiles::of_ns(&self.samples_ns)
    }
}

#[cfg(test)]
mod percentile_tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).map(|us| us * 1000).collect();
        let p = Percentiles::of_ns(&values).unwrap();
        assert_eq!((p.p50, p.p99, p.max, p.samples), (50.0, 99.0, 100.0, 100));
        assert_eq!(Percentiles::of_ns(&[]), None);
        let one = Percentiles::of_ns(&[7000]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(nearest_rank::<f64>(&[], 0.99), None);
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
    }
}
