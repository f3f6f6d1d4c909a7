//! A VM's virtual timer: the guest arms it with HC_timerStart(period_us) and
//! the hypervisor injects vector [`TIMER_VECTOR`] each period, in host time,
//! whether or not the VM is running. Pure: the core asks it with the time.
//!
//! A tick is pending until it is injected. Ticks that come due while one is
//! still pending (the VM was not running, or could not take an interrupt)
//! are folded into it and counted as coalesced, as a real timer's would be.

/// The vector the virtual timer interrupts on (the first after the
/// exceptions; `MATRIX_TIMER_VECTOR` in the C header).
pub const TIMER_VECTOR: u8 = 0x20;

/// The shortest period a guest may ask for. On a host that emulates guests
/// (kvm_pvm) an injection and its handler's exits cost 20-40 µs, so a tick
/// every millisecond costs a guest at most about 4 %; and no slice is shorter
/// than 100 µs, so shorter periods could not be kept anyway.
pub const MIN_PERIOD_US: u32 = 1000;

/// The timer's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtualTimer {
    /// The period, while the timer runs.
    period_ns: Option<u64>,
    /// When the next tick comes due (monotonic ns).
    next_due_ns: u64,
    /// A tick is waiting to be injected.
    pending: bool,
    /// Ticks injected.
    pub injected: u64,
    /// Ticks folded into a pending one.
    pub coalesced: u64,
}

/// A timer as a snapshot keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerState {
    /// The period, while it runs.
    pub period_us: Option<u32>,
    /// How long after the snapshot the next tick was due.
    pub due_in_ns: u64,
    /// A tick was waiting to be injected.
    pub pending: bool,
    /// Ticks injected so far.
    pub injected: u64,
    /// Ticks coalesced so far.
    pub coalesced: u64,
}

/// What starting the timer came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The period it runs at (µs).
    pub period_us: u32,
    /// It was raised from this, to [`MIN_PERIOD_US`].
    pub raised_from: Option<u32>,
}

impl VirtualTimer {
    /// Starts (or restarts) the timer at `now_ns` with `period_us`, raised to
    /// [`MIN_PERIOD_US`]; the first tick comes one period from now. A tick
    /// still pending stays pending.
    pub fn start(&mut self, now_ns: u64, period_us: u32) -> Started {
        let period = period_us.max(MIN_PERIOD_US);
        self.period_ns = Some(u64::from(period) * 1000);
        self.next_due_ns = now_ns + u64::from(period) * 1000;
        Started { period_us: period, raised_from: (period != period_us).then_some(period_us) }
    }

    /// Stops the timer; a pending tick is dropped.
    pub fn stop(&mut self) {
        self.period_ns = None;
        self.pending = false;
    }

    /// Whether the timer runs.
    pub fn running(&self) -> bool {
        self.period_ns.is_some()
    }

    /// When the next tick comes due, if the timer runs.
    pub fn next_due_ns(&self) -> Option<u64> {
        self.period_ns.map(|_| self.next_due_ns)
    }

    /// Brings the timer up to `now_ns`: every tick due by then becomes the
    /// pending one (the extra ones counted as coalesced). Returns whether a
    /// tick is pending.
    pub fn poll(&mut self, now_ns: u64) -> bool {
        if let Some(period) = self.period_ns {
            if now_ns >= self.next_due_ns {
                let due = (now_ns - self.next_due_ns) / period + 1;
                self.coalesced += due - 1 + u64::from(self.pending);
                self.pending = true;
                self.next_due_ns += due * period;
            }
        }
        self.pending
    }

    /// What a snapshot keeps, with the next tick's time relative to `now_ns`
    /// (host clocks differ between processes and hosts).
    pub fn save(&self, now_ns: u64) -> TimerState {
        TimerState {
            period_us: self.period_ns.map(|period| (period / 1000) as u32),
            due_in_ns: self.period_ns.map_or(0, |_| self.next_due_ns.saturating_sub(now_ns)),
            pending: self.pending,
            injected: self.injected,
            coalesced: self.coalesced,
        }
    }

    /// A timer as `state` left it, its next tick `due_in_ns` after `now_ns`.
    /// A period under the floor (an edited snapshot) is raised to it, and
    /// the next tick comes at most one period away.
    pub fn restore(state: &TimerState, now_ns: u64) -> Self {
        let period_ns = state.period_us.map(|period| u64::from(period.max(MIN_PERIOD_US)) * 1000);
        Self {
            period_ns,
            next_due_ns: now_ns + period_ns.map_or(0, |period| state.due_in_ns.min(period)),
            pending: state.pending && period_ns.is_some(),
            injected: state.injected,
            coalesced: state.coalesced,
        }
    }

    /// The pending tick was injected.
    pub fn injected(&mut self) {
        if self.pending {
            self.pending = false;
            self.injected += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_tick_comes_due_each_period_and_waits_until_injected() {
        let mut timer = VirtualTimer::default();
        assert!(!timer.poll(5 * MS), "not started");
        timer.start(0, 2000);
        assert_eq!(timer.next_due_ns(), Some(2 * MS));
        assert!(!timer.poll(MS));
        assert!(timer.poll(2 * MS));
        timer.injected();
        assert!(!timer.poll(3 * MS));
        assert!(timer.poll(4 * MS));
        timer.injected();
        assert_eq!((timer.injected, timer.coalesced), (2, 0));
    }

    #[test]
    fn ticks_due_while_one_is_pending_are_coalesced_into_it() {
        let mut timer = VirtualTimer::default();
        timer.start(0, 1000);
        // The VM did not run for 5.5 ms: five ticks came due, one is delivered.
        assert!(timer.poll(5 * MS + MS / 2));
        assert_eq!(timer.coalesced, 4);
        assert_eq!(timer.next_due_ns(), Some(6 * MS));
        // Not injectable yet (interrupts off): the next one folds in too.
        assert!(timer.poll(6 * MS));
        assert_eq!(timer.coalesced, 5);
        timer.injected();
        assert_eq!(timer.injected, 1);
    }

    #[test]
    fn a_saved_timer_comes_back_with_its_next_tick_as_far_away() {
        let mut timer = VirtualTimer::default();
        timer.start(0, 5000);
        timer.poll(11 * MS);
        let state = timer.save(12 * MS);
        assert_eq!((state.period_us, state.due_in_ns, state.pending), (Some(5000), 3 * MS, true));
        let restored = VirtualTimer::restore(&state, 100 * MS);
        assert_eq!(restored.next_due_ns(), Some(103 * MS));
        assert_eq!((restored.injected, restored.coalesced), (timer.injected, timer.coalesced));
        // An edited snapshot cannot ask for a tick past one period or under the floor.
        let edited = TimerState { period_us: Some(1), due_in_ns: u64::MAX, ..state };
        assert_eq!(VirtualTimer::restore(&edited, 0).next_due_ns(), Some(MS));
        assert_eq!(VirtualTimer::restore(&TimerState::default(), 7).next_due_ns(), None);
    }

    #[test]
    fn periods_below_the_floor_are_raised_and_stopping_drops_the_pending_tick() {
        let mut timer = VirtualTimer::default();
        assert_eq!(timer.start(0, 10), Started { period_us: 1000, raised_from: Some(10) });
        assert_eq!(timer.start(0, 5000), Started { period_us: 5000, raised_from: None });
        assert!(timer.poll(5 * MS));
        timer.stop();
        assert!(!timer.running() && !timer.poll(20 * MS));
        assert_eq!(timer.next_due_ns(), None);
    }
}
