//! Where timed slices end. Slices of one length end on the ticks of a periodic
//! timer, so the timer is armed once per change of length rather than once per
//! slice (arming it reprograms the host's timer hardware, which is one of the
//! dearest things the core does between slices).

/// A slice starting closer than this fraction of its length to the next tick
/// runs to the tick after it instead (the near tick interrupts it for nothing).
const MIN_REMAINDER_FRACTION: u64 = 4;

/// The ticks of the periodic timer, if it is running.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickGrid {
    ticks: Option<Ticks>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticks {
    next_ns: u64,
    interval_ns: u64,
}

/// Where a slice ends, and whether the timer must be (re)armed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceDeadline {
    /// The slice's deadline (monotonic ns).
    pub deadline_ns: u64,
    /// Arm the timer to fire at `deadline_ns` and every slice length after it.
    pub arm: bool,
}

impl TickGrid {
    /// The deadline of a slice of `length_ns` starting at `now_ns`: the next
    /// tick, or a new grid starting one length from now if the length changed
    /// or no timer runs.
    pub fn slice_end(&mut self, now_ns: u64, length_ns: u64) -> SliceDeadline {
        match &mut self.ticks {
            Some(ticks) if ticks.interval_ns == length_ns => {
                if ticks.next_ns <= now_ns {
                    // Skip the ticks that passed while no slice waited for them.
                    ticks.next_ns += ((now_ns - ticks.next_ns) / length_ns + 1) * length_ns;
                }
                let mut deadline_ns = ticks.next_ns;
                if deadline_ns - now_ns < length_ns / MIN_REMAINDER_FRACTION {
                    deadline_ns += length_ns;
                }
                SliceDeadline { deadline_ns, arm: false }
            }
            _ => {
                let deadline_ns = now_ns + length_ns;
                self.ticks = Some(Ticks { next_ns: deadline_ns, interval_ns: length_ns });
                SliceDeadline { deadline_ns, arm: true }
            }
        }
    }

    /// The timer was disarmed: the next timed slice starts a new grid.
    pub fn stop(&mut self) {
        self.ticks = None;
    }

    /// Whether the periodic timer is running.
    pub fn is_running(&self) -> bool {
        self.ticks.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    #[test]
    fn the_first_slice_arms_the_timer_and_later_ones_end_on_its_ticks() {
        let mut grid = TickGrid::default();
        assert_eq!(grid.slice_end(1000 * US, 200 * US), SliceDeadline { deadline_ns: 1200 * US, arm: true });
        // The kick lands 15 us late; the next slice ends on the next tick.
        assert_eq!(grid.slice_end(1216 * US, 200 * US), SliceDeadline { deadline_ns: 1400 * US, arm: false });
        assert_eq!(grid.slice_end(1417 * US, 200 * US), SliceDeadline { deadline_ns: 1600 * US, arm: false });
    }

    #[test]
    fn a_slice_starting_just_before_a_tick_runs_to_the_one_after() {
        let mut grid = TickGrid::default();
        grid.slice_end(0, 200 * US);
        // A yield at 180 us: 20 us left to the tick is too little for a slice.
        assert_eq!(grid.slice_end(180 * US, 200 * US), SliceDeadline { deadline_ns: 400 * US, arm: false });
        // At 120 us, 80 us are left: the slice ends on the tick.
        assert_eq!(grid.slice_end(320 * US, 200 * US), SliceDeadline { deadline_ns: 400 * US, arm: false });
    }

    #[test]
    fn ticks_missed_during_a_stall_are_skipped() {
        let mut grid = TickGrid::default();
        grid.slice_end(0, 200 * US);
        assert_eq!(grid.slice_end(3050 * US, 200 * US), SliceDeadline { deadline_ns: 3200 * US, arm: false });
    }

    #[test]
    fn a_new_length_or_a_stopped_timer_starts_a_new_grid() {
        let mut grid = TickGrid::default();
        grid.slice_end(0, 200 * US);
        assert_eq!(grid.slice_end(210 * US, 300 * US), SliceDeadline { deadline_ns: 510 * US, arm: true });
        assert!(grid.is_running());
        grid.stop();
        assert!(!grid.is_running());
        assert_eq!(grid.slice_end(600 * US, 300 * US), SliceDeadline { deadline_ns: 900 * US, arm: true });
    }
}
