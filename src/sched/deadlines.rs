//! Slice deadlines armed one slice ahead, on two timers that take turns.
//!
//! Arming a timer whose expiry becomes the CPU's next timer event makes the
//! kernel reprogram the timer hardware, and on this nested host that is the
//! dearest thing the core does between slices (10 µs and more, against about
//! 1 µs for a timer that expires after one already pending). So while a slice
//! runs towards its deadline on one timer, the other is armed for the deadline
//! the *next* slice will probably want: the current deadline, plus the usual
//! gap between a deadline and the next slice's start, plus the next slice's
//! length. When that slice starts close enough to the guess, its deadline is
//! already armed and costs nothing; otherwise (a slice ended early, a command,
//! a host stall) it is armed then, as a plain one-shot timer would be.
//!
//! A deadline taken from the guess makes the slice a little longer or shorter
//! than asked; the planner charges what each slice really ran, so the
//! difference is paid back like any other.

use crate::vm::QuantumTimer;

/// A guessed deadline is used when it is within this fraction of the slice's
/// length of the deadline asked for (or within [`MIN_TOLERANCE_NS`]).
const TOLERANCE_FRACTION: u64 = 8;
/// The smallest tolerance: about the jitter of the gap between slices here.
const MIN_TOLERANCE_NS: u64 = 10_000;
/// The gap assumed before any has been measured.
const INITIAL_GAP_NS: u64 = 30_000;
/// Gaps longer than this (a stall, a command) say nothing about the next one.
const MAX_GAP_NS: u64 = 200_000;

/// Two quantum timers and what each is armed for.
pub struct Deadlines {
    timers: [Box<dyn QuantumTimer>; 2],
    armed: [Option<u64>; 2],
    /// The timer holding the current slice's deadline.
    current: usize,
    /// Running average of the gap from a deadline to the next slice's start.
    gap_ns: u64,
    /// Slices that found their deadline armed ahead.
    used_ahead: u64,
    /// Slices that had to arm their deadline when they started.
    armed_late: u64,
}

impl Deadlines {
    /// Takes turns between two timers of the same kind.
    pub fn new(first: Box<dyn QuantumTimer>, second: Box<dyn QuantumTimer>) -> Self {
        Self {
            timers: [first, second],
            armed: [None; 2],
            current: 0,
            gap_ns: INITIAL_GAP_NS,
            used_ahead: 0,
            armed_late: 0,
        }
    }

    /// Starts a slice at `now_ns` that should end at `wanted_ns`; returns the
    /// deadline it gets (the one armed ahead if that is close enough).
    pub fn start_slice(&mut self, now_ns: u64, wanted_ns: u64) -> u64 {
        let tolerance = ((wanted_ns.saturating_sub(now_ns)) / TOLERANCE_FRACTION).max(MIN_TOLERANCE_NS);
        let ahead = (0..2).find(|&index| {
            self.armed[index].is_some_and(|deadline| deadline > now_ns && deadline.abs_diff(wanted_ns) <= tolerance)
        });
        if let Some(index) = ahead {
            self.current = index;
            self.used_ahead += 1;
            return self.armed[index].expect("found armed");
        }
        // Move the timer that would fire first (the last slice's, if it ended
        // before its deadline), so that no stale expiry interrupts this slice;
        // `arm_next` then moves the other one.
        let index = (0..2)
            .filter(|&index| self.armed[index].is_some_and(|deadline| deadline > now_ns))
            .min_by_key(|&index| self.armed[index])
            .unwrap_or(self.current);
        self.arm(index, wanted_ns);
        self.current = index;
        self.armed_late += 1;
        wanted_ns
    }

    /// Arms the other timer for the slice after the current one, which is
    /// expected to last `next_length_ns` and start a gap after `deadline_ns`.
    pub fn arm_next(&mut self, deadline_ns: u64, next_length_ns: u64) {
        self.arm(1 - self.current, deadline_ns + self.gap_ns + next_length_ns);
    }

    /// Records that a slice whose deadline was `deadline_ns` was followed by
    /// one starting at `start_ns`, to guess the next gap.
    pub fn observe_gap(&mut self, deadline_ns: u64, start_ns: u64) {
        let gap = start_ns.saturating_sub(deadline_ns);
        if gap <= MAX_GAP_NS {
            // An average over the last eight or so gaps.
            self.gap_ns = (self.gap_ns * 7 + gap) / 8;
        }
    }

    /// Percent of slices that found their deadline armed ahead (None before
    /// any slice had a deadline).
    pub fn armed_ahead_pct(&self) -> Option<f64> {
        let slices = self.used_ahead + self.armed_late;
        (slices > 0).then(|| 100.0 * self.used_ahead as f64 / slices as f64)
    }

    /// The gap the next guess will assume.
    pub fn gap_ns(&self) -> u64 {
        self.gap_ns
    }

    /// Cancels both timers (no slice will run for a while).
    pub fn disarm(&mut self) {
        for (timer, armed) in self.timers.iter_mut().zip(&mut self.armed) {
            if armed.take().is_some() {
                timer.disarm();
            }
        }
    }

    fn arm(&mut self, index: usize, deadline_ns: u64) {
        self.timers[index].arm(deadline_ns);
        self.armed[index] = Some(deadline_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Records every arming as (timer, deadline); 0 for a disarm.
    #[derive(Clone, Default)]
    struct Log(Rc<RefCell<Vec<(usize, u64)>>>);

    struct FakeTimer {
        index: usize,
        log: Log,
    }

    impl QuantumTimer for FakeTimer {
        fn arm(&mut self, deadline_ns: u64) {
            self.log.0.borrow_mut().push((self.index, deadline_ns));
        }
        fn disarm(&mut self) {
            self.log.0.borrow_mut().push((self.index, 0));
        }
    }

    fn deadlines() -> (Deadlines, Log) {
        let log = Log::default();
        let timer = |index| Box::new(FakeTimer { index, log: log.clone() }) as Box<dyn QuantumTimer>;
        (Deadlines::new(timer(0), timer(1)), log)
    }

    const US: u64 = 1_000;

    #[test]
    fn slices_that_start_as_guessed_use_the_deadline_armed_ahead() {
        let (mut deadlines, log) = deadlines();
        // First slice: nothing armed ahead, so its own deadline is armed.
        let first = deadlines.start_slice(1_000 * US, 1_200 * US);
        assert_eq!(first, 1_200 * US);
        deadlines.arm_next(first, 200 * US);
        assert_eq!(*log.0.borrow(), [(0, 1_200 * US), (1, 1_430 * US)]);
        // The next slice starts 25 us after the deadline (5 us before the guess):
        // it keeps the guessed deadline, and the first timer is armed further on.
        deadlines.observe_gap(first, 1_225 * US);
        let second = deadlines.start_slice(1_225 * US, 1_425 * US);
        assert_eq!(second, 1_430 * US);
        deadlines.arm_next(second, 200 * US);
        assert_eq!(log.0.borrow()[2].0, 0, "the timer that fired takes the next guess");
        assert_eq!(deadlines.armed_ahead_pct(), Some(50.0));
    }

    #[test]
    fn a_slice_far_from_the_guess_moves_the_timer_armed_ahead() {
        let (mut deadlines, log) = deadlines();
        let first = deadlines.start_slice(0, 200 * US);
        deadlines.arm_next(first, 200 * US);
        // The first slice ended early (a yield): the next one starts at 50 us.
        let second = deadlines.start_slice(50 * US, 250 * US);
        assert_eq!(second, 250 * US);
        assert_eq!(log.0.borrow().last(), Some(&(0, 250 * US)), "the pending timer that would fire first moves");
        // A slice that starts after a guessed deadline has passed re-arms too.
        deadlines.arm_next(second, 200 * US);
        let third = deadlines.start_slice(900 * US, 1_100 * US);
        assert_eq!(third, 1_100 * US);
        assert_eq!(deadlines.armed_ahead_pct(), Some(0.0), "three slices, each armed as it started");
    }

    #[test]
    fn gaps_are_averaged_and_stalls_ignored() {
        let (mut deadlines, _) = deadlines();
        for _ in 0..50 {
            deadlines.observe_gap(0, 20 * US);
        }
        assert!(deadlines.gap_ns().abs_diff(20 * US) < US, "{}", deadlines.gap_ns());
        deadlines.observe_gap(0, 5_000 * US);
        assert!(deadlines.gap_ns().abs_diff(20 * US) < US);
    }

    #[test]
    fn disarm_cancels_only_armed_timers() {
        let (mut deadlines, log) = deadlines();
        let first = deadlines.start_slice(0, 200 * US);
        deadlines.arm_next(first, 200 * US);
        deadlines.disarm();
        deadlines.disarm();
        let disarms: Vec<_> = log.0.borrow().iter().filter(|(_, d)| *d == 0).copied().collect();
        assert_eq!(disarms, [(0, 0), (1, 0)]);
    }
}
