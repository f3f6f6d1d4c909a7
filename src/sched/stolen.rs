//! Time the host took the CPU away from the core thread: a guest does no work
//! while its thread waits for a CPU, so that time is not charged.
//!
//! The thread's CPU clock costs a system call to read (about 0.6 µs on this
//! nested host, more than the rest of a slice's bookkeeping), so it is read
//! at the end of a slice only once a window of [`WINDOW_NS`] has passed since
//! the last reading. The window's off-CPU time (wall time less CPU time) is
//! first taken down by the time in it that was never charged (the gaps
//! between slices, idle waits included, and each slice's run past its
//! deadline), since that may be where it fell; the rest is shared among the
//! window's slices in proportion to what each was charged, and each VM gets
//! its part back from its next charges. A slice of a window or more reads
//! the clock at its end, as every slice once did.

use crate::vm::kick::{monotonic_ns, thread_cpu_ns};

/// The shortest window between two readings of the thread's CPU clock: at
/// 100 µs slices (256 VMs) one reading every five slices or so.
pub const WINDOW_NS: u64 = 500_000;

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
}

/// A slice's part of the time taken away in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StolenShare {
    /// The VM whose slice it was.
    pub vm: usize,
    /// Nanoseconds to take off its charges.
    pub stolen_ns: u64,
}

/// The slices since the last reading of the CPU clock.
#[derive(Debug, Default)]
pub struct StolenWindow {
    /// At the last reading.
    last: Option<ThreadClocks>,
    /// Wall time since then that no slice was charged for.
    uncharged_ns: u64,
    /// Where the last slice ended (the gap to the next is uncharged).
    last_end_ns: u64,
    /// (VM, charged ns) of each slice since.
    slices: Vec<(usize, u64)>,
    /// What the last window that ended gave each of its slices.
    shares: Vec<StolenShare>,
}

impl StolenWindow {
    /// Starts the first window at `clocks`.
    pub fn start(&mut self, clocks: ThreadClocks) {
        *self = Self { last: Some(clocks), last_end_ns: clocks.wall_ns, ..Self::default() };
    }

    /// Records a slice. When the window is over it reads the clocks with
    /// `read` and returns each of the window's slices' part of the stolen
    /// time (none while the window goes on, or when nothing was stolen).
    pub fn end_slice(&mut self, slice: WindowSlice, read: impl FnOnce() -> ThreadClocks) -> &[StolenShare] {
        let WindowSlice { vm, start_ns, end_ns, deadline_ns, charged_ns } = slice;
        self.uncharged_ns += start_ns.saturating_sub(self.last_end_ns) + end_ns.saturating_sub(deadline_ns);
        self.last_end_ns = end_ns;
        self.slices.push((vm, charged_ns));
        self.shares.clear();
        let Some(last) = self.last else {
            self.start(read());
            return &[];
        };
        if end_ns.saturating_sub(last.wall_ns) < WINDOW_NS {
            return &[];
        }
        let now = read();
        let wall = now.wall_ns.saturating_sub(last.wall_ns);
        let off_cpu = wall.saturating_sub(now.cpu_ns.saturating_sub(last.cpu_ns));
        let stolen = off_cpu.saturating_sub(self.uncharged_ns);
        let charged: u64 = self.slices.iter().map(|&(_, ns)| ns).sum();
        if stolen > 0 && charged > 0 {
            for &(vm, ns) in &self.slices {
                // Never more than the slice was charged: the rest fell where
                // nothing was charged after all.
                let part = ((u128::from(stolen) * u128::from(ns) / u128::from(charged)) as u64).min(ns);
                if part > 0 {
                    self.shares.push(StolenShare { vm, stolen_ns: part });
                }
            }
        }
        self.slices.clear();
        self.uncharged_ns = 0;
        self.last = Some(now);
        self.last_end_ns = now.wall_ns;
        &self.shares
    }
}

/// One slice, as a window sees it (all times monotonic ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSlice {
    /// Its VM.
    pub vm: usize,
    /// When it started.
    pub start_ns: u64,
    /// When it ended.
    pub end_ns: u64,
    /// Its deadline (u64::MAX: none); time past it is not charged.
    pub deadline_ns: u64,
    /// What it was charged, before stolen time.
    pub charged_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    fn clocks(wall_ns: u64, cpu_ns: u64) -> ThreadClocks {
        ThreadClocks { wall_ns, cpu_ns }
    }

    /// Runs slices of (vm, start, end, deadline) charged end - start up to
    /// the deadline, with the CPU clock at each reading from `cpu_at(wall)`.
    fn run(slices: &[(usize, u64, u64, u64)], cpu_at: impl Fn(u64) -> u64) -> (Vec<StolenShare>, usize) {
        let mut window = StolenWindow::default();
        window.start(clocks(0, 0));
        let (mut shares, mut readings) = (Vec::new(), 0);
        for &(vm, start, end, deadline) in slices {
            let slice = WindowSlice {
                vm,
                start_ns: start * US,
                end_ns: end * US,
                deadline_ns: deadline * US,
                charged_ns: (end.min(deadline) - start) * US,
            };
            let read = || {
                readings += 1;
                clocks(end * US, cpu_at(end * US))
            };
            shares.extend_from_slice(window.end_slice(slice, read));
        }
        (shares, readings)
    }

    /// Slices of 100 us with 3 us gaps, alternating VMs 0 and 1.
    fn hundred_us_slices(count: u64) -> Vec<(usize, u64, u64, u64)> {
        (0..count).map(|i| ((i % 2) as usize, i * 103 + 3, i * 103 + 103, i * 103 + 103)).collect()
    }

    #[test]
    fn slices_on_the_cpu_throughout_lost_nothing_and_the_clock_is_read_once_a_window() {
        let (shares, readings) = run(&hundred_us_slices(50), |wall| wall);
        assert!(shares.is_empty(), "{shares:?}");
        // 50 slices of 103 us: 5,150 us, a reading every 500 us or so.
        assert!((9..=11).contains(&readings), "{readings} readings");
    }

    #[test]
    fn a_stolen_stretch_is_shared_by_the_windows_slices_as_they_were_charged() {
        // 40 us off the CPU in the first window of five slices (three of VM
        // 0, two of VM 1, 100 us each).
        let slices = hundred_us_slices(5);
        let (shares, readings) = run(&slices, |wall| wall - 40 * US);
        assert_eq!(readings, 1);
        let of = |vm| shares.iter().filter(|s| s.vm == vm).map(|s| s.stolen_ns).sum::<u64>();
        // 40 us less the gaps (15 us, which may be where it fell): 25 us.
        assert_eq!(of(0) + of(1), 25 * US);
        assert_eq!(of(0), 15 * US);
        assert_eq!(of(1), 10 * US);
    }

    #[test]
    fn off_cpu_time_in_gaps_and_past_deadlines_is_nobodys() {
        // One slice after an idle wait of 500 us (off the CPU), running 20 us
        // past its deadline, all of that off the CPU: nothing is stolen.
        let (shares, _) = run(&[(0, 500, 620, 600)], |wall| wall - 520 * US);
        assert!(shares.is_empty(), "{shares:?}");
        // 30 us more off the CPU than that was inside the slice.
        let (shares, _) = run(&[(0, 500, 620, 600)], |wall| wall - 550 * US);
        assert_eq!(shares, [StolenShare { vm: 0, stolen_ns: 30 * US }]);
    }

    #[test]
    fn no_slice_gets_back_more_than_it_was_charged() {
        // A host stall longer than the slices: each gets at most its charge.
        let (shares, _) = run(&hundred_us_slices(5), |wall| wall / 10);
        assert!(shares.iter().all(|share| share.stolen_ns <= 100 * US), "{shares:?}");
        assert_eq!(shares.len(), 5);
    }

    #[test]
    fn a_long_slice_reads_the_clock_at_its_end() {
        let slices: Vec<_> = (0..4).map(|i| (0, i * 1_000, i * 1_000 + 700, i * 1_000 + 700)).collect();
        assert_eq!(run(&slices, |wall| wall).1, 4);
    }

    #[test]
    fn clocks_read_now_move_forward() {
        let (first, second) = (ThreadClocks::now(), ThreadClocks::now());
        assert!(second.wall_ns >= first.wall_ns && second.cpu_ns >= first.cpu_ns);
    }
}
