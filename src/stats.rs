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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_counts_unknown_ports_once() {
        let counts = ExitCounts {
            io_in: 3,
            io_out: 16,
            hlt: 1,
            unknown_port: 2,
            ..Default::default()
        };
        assert_eq!(counts.total(), 20);
    }
}
