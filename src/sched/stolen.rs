//! Time the host took the CPU away from the core thread, per slice: a guest
//! does no work while its thread waits for a CPU, so that time is not charged.
//!
//! The thread's CPU clock costs a system call to read (a dear one on this
//! nested host), so it is read once per slice, at its end: a slice's
//! off-CPU time is measured from the end of the slice before, and the gap
//! between the two (the core's own work between slices, or an idle wait) is
//! taken off it first. A preemption inside the slice is then undercounted by
//! at most that gap, a few microseconds; without one nothing is off.

use crate::vm::kick::{monotonic_ns, thread_cpu_ns};

/// The wall clock and the thread's CPU clock, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadClocks {
    /// Monotonic ns.
    pub wall_ns: u64,
    /// The calling thread's CPU time, in ns.
    pub cpu_ns: u64,
}

impl ThreadClocks {
    /// Both clocks, now.
    pub fn now() -> Self {
        Self { wall_ns: monotonic_ns(), cpu_ns: thread_cpu_ns() }
    }

    /// Off-CPU time between `self` (the end of the last slice) and `end`
    /// (the end of a slice that started at `start_ns`) that fell in that slice.
    pub fn stolen_until(self, start_ns: u64, end: ThreadClocks) -> u64 {
        let wall = end.wall_ns.saturating_sub(self.wall_ns);
        let off_cpu = wall.saturating_sub(end.cpu_ns.saturating_sub(self.cpu_ns));
        off_cpu.saturating_sub(start_ns.saturating_sub(self.wall_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    fn clocks(wall_ns: u64, cpu_ns: u64) -> ThreadClocks {
        ThreadClocks { wall_ns, cpu_ns }
    }

    #[test]
    fn a_slice_on_the_cpu_throughout_lost_nothing() {
        // 3 us between slices, then 100 us of slice, all of it on the CPU.
        assert_eq!(clocks(0, 0).stolen_until(3 * US, clocks(103 * US, 103 * US)), 0);
    }

    #[test]
    fn a_preemption_inside_the_slice_is_counted_less_the_gap_at_most() {
        // 40 us off the CPU inside the slice: 40 us, or 3 us less if the gap
        // was on the CPU (the clocks cannot tell where the 40 us fell).
        let stolen = clocks(0, 0).stolen_until(3 * US, clocks(143 * US, 103 * US));
        assert_eq!(stolen, 37 * US);
    }

    #[test]
    fn off_cpu_time_before_the_slice_started_is_not_its() {
        // A preemption (or an idle wait) of 500 us between the slices.
        assert_eq!(clocks(0, 0).stolen_until(503 * US, clocks(603 * US, 103 * US)), 0);
    }

    #[test]
    fn clocks_read_now_move_forward() {
        let (first, second) = (ThreadClocks::now(), ThreadClocks::now());
        assert!(second.wall_ns >= first.wall_ns && second.cpu_ns >= first.cpu_ns);
    }
}
