//! Slice deadlines on one periodic timer.
//!
//! Arming a timer costs a system call, and arming one whose expiry becomes
//! the CPU's next timer event makes the kernel reprogram the timer hardware,
//! the dearest thing the core does between slices on this nested host (10 µs
//! and more). So the timer is armed for a slice's deadline *and then every
//! period after it*, the period being the next slice's length plus the usual
//! gap between a deadline and the next slice's start: while slices follow each
//! other at that pace, each finds its deadline armed already (the timer's next
//! expiry), and the kernel moves the timer on by itself as it fires. A slice
//! that starts off that pace (one ended early, a command, a host stall, a new
//! unit) arms the timer afresh, as a one-shot timer would be.
//!
//! A deadline taken from the timer makes the slice a little longer or shorter
//! than asked; the planner charges what each slice really ran, so the
//! difference is paid back like any other.

use crate::vm::QuantumTimer;

/// An armed expiry is used when it is within this fraction of the slice's
/// run to its kick of the deadline asked for (or within
/// [`MIN_TOLERANCE_NS`]). A quarter: on a noisy host the gap after a kick
/// varies by more than an eighth of a 100 µs slice, and each slice off the
/// pace re-arms the timer (15-20 µs here; with an eighth, 8 % of slices at
/// 256 VMs).
const TOLERANCE_FRACTION: u64 = 4;
/// The smallest tolerance, about the jitter of the gap between slices here
/// (the kick latency's p98 is some 30 µs above its median). With 10 µs, the
/// short slices of 256 VMs (65 µs to the kick) were re-armed 3.5-7 % of the
/// time, and that was a third of the core's time outside KVM_RUN before
/// them; with 30 µs, 0.8-1.3 %. It never takes more than half a run: a slice
/// is not cut to a sliver to keep the pace.
const MIN_TOLERANCE_NS: u64 = 30_000;
/// The gap assumed before any has been measured.
const INITIAL_GAP_NS: u64 = 30_000;
/// Gaps longer than this (a stall, a command) say nothing about the next one.
const MAX_GAP_NS: u64 = 200_000;

/// When the timer fires next, and how often after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    next_ns: u64,
    /// 0: once.
    period_ns: u64,
}

/// The quantum timer and what it is armed for.
pub struct Deadlines {
    timer: Box<dyn QuantumTimer>,
    armed: Option<Armed>,
    /// Running average of the gap from a deadline to the next slice's start.
    gap_ns: u64,
    /// Slices that found their deadline armed already.
    used_ahead: u64,
    /// Slices that had to arm their deadline when they started.
    armed_late: u64,
}

impl Deadlines {
    /// Deadlines on `timer`.
    pub fn new(timer: Box<dyn QuantumTimer>) -> Self {
        Self { timer, armed: None, gap_ns: INITIAL_GAP_NS, used_ahead: 0, armed_late: 0 }
    }

    /// Starts a slice at `now_ns` that should end at `wanted_ns`, to be
    /// followed by one that runs `following_ns` before its deadline (None: no
    /// slice is expected to follow at that pace); returns the deadline it gets.
    pub fn start_slice(&mut self, now_ns: u64, wanted_ns: u64, following_ns: Option<u64>) -> u64 {
        let run = wanted_ns.saturating_sub(now_ns);
        let tolerance = (run / TOLERANCE_FRACTION).max(MIN_TOLERANCE_NS.min(run / 2));
        if let Some(armed) = &mut self.armed {
            if armed.period_ns > 0 && armed.next_ns <= now_ns {
                // The expiries that ended the last slice (and any it ran past).
                armed.next_ns += ((now_ns - armed.next_ns) / armed.period_ns + 1) * armed.period_ns;
            }
            let on_pace = armed.next_ns > now_ns && armed.next_ns.abs_diff(wanted_ns) <= tolerance;
            // A slice that nothing follows must not leave the timer ticking.
            if on_pace && (following_ns.is_some() || armed.period_ns == 0) {
                self.used_ahead += 1;
                return armed.next_ns;
            }
        }
        let period_ns = following_ns.map_or(0, |following| self.gap_ns + following);
        self.timer.arm(wanted_ns, period_ns);
        self.armed = Some(Armed { next_ns: wanted_ns, period_ns });
        self.armed_late += 1;
        wanted_ns
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

    /// Percent of slices that found their deadline armed already (None
    /// before any slice had a deadline).
    pub fn armed_ahead_pct(&self) -> Option<f64> {
        let slices = self.used_ahead + self.armed_late;
        (slices > 0).then(|| 100.0 * self.used_ahead as f64 / slices as f64)
    }

    /// The gap the next period will assume.
    pub fn gap_ns(&self) -> u64 {
        self.gap_ns
    }

    /// Cancels the timer (no slice with a deadline will run for a while).
    pub fn disarm(&mut self) {
        if self.armed.take().is_some() {
            self.timer.disarm();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Records every arming as (first expiry, period); (0, 0) for a disarm.
    #[derive(Clone, Default)]
    struct Log(Rc<RefCell<Vec<(u64, u64)>>>);

    struct FakeTimer(Log);

    impl QuantumTimer for FakeTimer {
        fn arm(&mut self, first_ns: u64, period_ns: u64) {
            self.0.0.borrow_mut().push((first_ns, period_ns));
        }
        fn disarm(&mut self) {
            self.0.0.borrow_mut().push((0, 0));
        }
    }

    fn deadlines() -> (Deadlines, Log) {
        let log = Log::default();
        (Deadlines::new(Box::new(FakeTimer(log.clone()))), log)
    }

    const US: u64 = 1_000;

    #[test]
    fn slices_at_the_usual_pace_use_the_expiries_the_timer_has_already() {
        let (mut deadlines, log) = deadlines();
        // First slice: nothing armed, so its deadline is, with a period of
        // the next slice's run plus the assumed 30 us gap.
        let first = deadlines.start_slice(1_000 * US, 1_200 * US, Some(200 * US));
        assert_eq!(first, 1_200 * US);
        assert_eq!(*log.0.borrow(), [(1_200 * US, 230 * US)]);
        // The next slices start about that gap after each deadline: they keep
        // the timer's expiries (within the tolerance) and arm nothing.
        let mut deadline = first;
        for start_after in [25, 34, 28, 30] {
            let start = deadline + start_after * US;
            deadlines.observe_gap(deadline, start);
            deadline = deadlines.start_slice(start, start + 200 * US, Some(200 * US));
            assert_eq!(deadline, first + (deadline - first) / (230 * US) * 230 * US, "an expiry of the first arming");
        }
        assert_eq!(deadline, first + 4 * 230 * US);
        assert_eq!(log.0.borrow().len(), 1);
        assert_eq!(deadlines.armed_ahead_pct(), Some(80.0));
    }

    #[test]
    fn a_slice_off_the_pace_arms_the_timer_afresh() {
        let (mut deadlines, log) = deadlines();
        let first = deadlines.start_slice(0, 200 * US, Some(200 * US));
        // The first slice ended early (a yield): the next one starts at 120 us,
        // and the expiry at 200 us would cut it to 80 us of its 200.
        let second = deadlines.start_slice(120 * US, 320 * US, Some(200 * US));
        assert_eq!(second, 320 * US);
        assert_eq!(log.0.borrow().last(), Some(&(320 * US, 230 * US)), "the expiry at 200 us is replaced");
        // One that starts long after (a stall of several periods) re-arms too.
        let third = deadlines.start_slice(2_100 * US, 2_300 * US, Some(200 * US));
        assert_eq!(third, 2_300 * US, "the period's expiry at 2,160 us is off by 140 us");
        assert_eq!(deadlines.armed_ahead_pct(), Some(0.0), "three slices, each armed as it started");
        let _ = first;
    }

    #[test]
    fn a_short_slice_keeps_the_pace_within_the_gaps_jitter_but_never_half_its_run() {
        let (mut deadlines, log) = deadlines();
        let first = deadlines.start_slice(0, 65 * US, Some(65 * US));
        assert_eq!(*log.0.borrow(), [(65 * US, 95 * US)]);
        // Started 25 us later than the gap assumed: a quarter of its 65 us run
        // is 16 us, but the jitter of a gap here is more, so the expiry stays.
        let second = deadlines.start_slice(first + 55 * US, first + 120 * US, Some(65 * US));
        assert_eq!(second, first + 95 * US, "the armed expiry, 25 us short of the deadline asked for");
        assert_eq!(log.0.borrow().len(), 1);
        // A 40 us run would lose more than half of itself to that: re-armed.
        let third = deadlines.start_slice(second + 30 * US, second + 70 * US, Some(65 * US));
        assert_eq!(third, second + 70 * US);
        assert_eq!(log.0.borrow().len(), 2);
    }

    #[test]
    fn a_slice_nothing_follows_leaves_no_timer_ticking() {
        let (mut deadlines, log) = deadlines();
        let first = deadlines.start_slice(0, 200 * US, Some(200 * US));
        // A step, at the pace: armed once, so that no expiry comes after it.
        let step = deadlines.start_slice(first + 30 * US, first + 230 * US, None);
        assert_eq!(step, first + 230 * US);
        assert_eq!(log.0.borrow().last(), Some(&(step, 0)));
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
    fn disarm_cancels_an_armed_timer_once() {
        let (mut deadlines, log) = deadlines();
        deadlines.start_slice(0, 200 * US, Some(200 * US));
        deadlines.disarm();
        deadlines.disarm();
        assert_eq!(log.0.borrow().iter().filter(|&&arming| arming == (0, 0)).count(), 1);
    }
}
