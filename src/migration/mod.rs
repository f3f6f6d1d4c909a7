//! Live migration: a running VM moved to another matrix-tui, page rounds
//! first while it runs, then a short pause for the rest and its state.
//! `protocol` is the wire format (pure), `link` the sockets' threads; the
//! core's side (rounds, dirty pages, throttling, the switch of owner) is in
//! `sched::core::migrating`.

pub mod handover;
pub mod link;
pub mod ownership;
pub mod protocol;
pub mod secret;

use std::time::Duration;

/// How a run migrates VMs out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationSettings {
    /// The pause the last round may cost at most, at the measured bandwidth.
    pub downtime_limit: Duration,
    /// The sending rate's cap in bytes a second (none: as fast as the link goes).
    pub bandwidth: Option<u64>,
    /// Rounds before the pause whatever the dirty pages (Xen stopped at 30).
    pub max_rounds: u32,
    /// Throttle a VM that dirties faster than the link sends.
    pub auto_converge: bool,
    /// The guest memory all of the run's VMs may have together, those that
    /// come in counted with those already here (`--max-total-mem`).
    pub max_total_memory: u64,
}

/// The default cap on a run's guest memory: 8 GiB.
pub const DEFAULT_MAX_TOTAL_MEMORY: u64 = 8 << 30;

/// The default downtime limit: 5 ms. A person does not see a pause that short
/// (a 60 Hz frame is 16.7 ms), and a class's small VMs over a local link stay
/// well under it once their working set is sent; QEMU's 300 ms is sized for
/// gigabytes over a data-centre network.
pub const DEFAULT_DOWNTIME_LIMIT: Duration = Duration::from_millis(5);

impl Default for MigrationSettings {
    fn default() -> Self {
        Self {
            downtime_limit: DEFAULT_DOWNTIME_LIMIT,
            bandwidth: None,
            max_rounds: 30,
            auto_converge: false,
            max_total_memory: DEFAULT_MAX_TOTAL_MEMORY,
        }
    }
}
