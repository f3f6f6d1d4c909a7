//! A VM's pre-copy rounds as the UI saw them (one [`Event::Round`] each),
//! and whether they show what a lesson claims of a migration: that it
//! converged, that its rounds did not shrink until the round cap, or that
//! auto-converge throttled it until the rest fit.
//!
//! [`Event::Round`]: crate::event::Event::Round

use crate::lesson::MigrationClaim;
use crate::report::{RoundReport, RoundsEnd};

/// Rounds kept of one migration (a round cap beyond it keeps the first).
const MAX_ROUNDS_KEPT: usize = 256;

/// The rounds of a VM's latest migration out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoveRounds {
    /// Its rounds, oldest first (round 0 sent every page).
    pub rounds: Vec<RoundReport>,
    /// Why its rounds ended, once they did.
    pub ended: Option<RoundsEnd>,
}

impl MoveRounds {
    /// Takes a round in (a round 0 starts a new migration's record).
    pub fn push(&mut self, round: RoundReport, ends: Option<RoundsEnd>) {
        if round.round == 0 {
            *self = Self::default();
        }
        if self.rounds.len() < MAX_ROUNDS_KEPT {
            self.rounds.push(round);
        }
        self.ended = self.ended.or(ends);
    }

    /// Whether the rounds show `claim` (the VM's having moved is checked
    /// by the caller).
    pub fn shows(&self, claim: MigrationClaim) -> bool {
        let Some(ended) = self.ended else { return false };
        // Round 0 sends all memory; what the guest keeps dirtying shows from round 1.
        let after_first = self.rounds.get(1..).unwrap_or_default();
        let Some(first) = after_first.first() else {
            return ended == RoundsEnd::Fits && claim == MigrationClaim::Converged;
        };
        match claim {
            MigrationClaim::Converged => ended == RoundsEnd::Fits,
            MigrationClaim::AtRoundCap => {
                // No round dirtied less than half the first: none shrank
                // toward the pause limit. (A guest given less CPU in one
                // round, on a busy host, dirties somewhat less in it; what
                // converges falls far further, as ThrottledToFit asks.)
                ended == RoundsEnd::Capped
                    && after_first.len() >= 2
                    && after_first.iter().all(|round| round.throttle_pct == 0)
                    && after_first.iter().all(|round| round.pages_dirtied * 2 >= first.pages_dirtied)
            }
            MigrationClaim::ThrottledToFit => {
                let last = after_first.last().unwrap_or(first);
                let throttles: Vec<u32> = after_first.iter().map(|round| round.throttle_pct).collect();
                ended == RoundsEnd::Fits
                    && throttles.windows(2).all(|pair| pair[0] <= pair[1])
                    && throttles.iter().filter(|&&pct| pct > 0).count() >= 2
                    && last.pages_dirtied * 2 < first.pages_dirtied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(dirtied_and_throttle: &[(u64, u32)], ended: Option<RoundsEnd>) -> MoveRounds {
        let mut rounds = MoveRounds::default();
        for (index, &(pages_dirtied, throttle_pct)) in dirtied_and_throttle.iter().enumerate() {
            let round = RoundReport { round: index as u32, pages_dirtied, throttle_pct, ..Default::default() };
            let last = index + 1 == dirtied_and_throttle.len();
            rounds.push(round, if last { ended } else { None });
        }
        rounds
    }

    #[test]
    fn rounds_that_stay_level_to_the_cap_show_the_cap_and_nothing_else() {
        let level = rounds(&[(1001, 0), (1001, 0), (998, 0), (1001, 0), (1001, 0)], Some(RoundsEnd::Capped));
        assert!(level.shows(MigrationClaim::AtRoundCap));
        // A round with less CPU on a busy host dirties less, and still did not shrink toward the limit.
        let busy = rounds(&[(1001, 0), (1001, 0), (802, 0), (1001, 0), (640, 0)], Some(RoundsEnd::Capped));
        assert!(busy.shows(MigrationClaim::AtRoundCap));
        assert!(!level.shows(MigrationClaim::Converged) && !level.shows(MigrationClaim::ThrottledToFit));
        // Rounds that shrank (the guest slower than the link) do not show it,
        // even when the cap ended them.
        let shrinking = rounds(&[(1001, 0), (1001, 0), (388, 0), (161, 0), (50, 0)], Some(RoundsEnd::Capped));
        assert!(!shrinking.shows(MigrationClaim::AtRoundCap));
        let throttled = rounds(&[(1001, 0), (1001, 0), (1001, 20), (1001, 30)], Some(RoundsEnd::Capped));
        assert!(!throttled.shows(MigrationClaim::AtRoundCap));
        assert!(!rounds(&[(1001, 0), (1001, 0), (1001, 0)], None).shows(MigrationClaim::AtRoundCap));
    }

    #[test]
    fn a_rising_throttle_that_brings_the_rest_under_the_limit_shows_throttled_to_fit() {
        let steps = [(2048, 0), (1001, 0), (1001, 20), (958, 30), (786, 40), (537, 50), (122, 60), (5, 60)];
        let throttled = rounds(&steps, Some(RoundsEnd::Fits));
        assert!(throttled.shows(MigrationClaim::ThrottledToFit) && throttled.shows(MigrationClaim::Converged));
        // Converging on its own, unthrottled, is not the claim.
        let unthrottled = rounds(&[(2048, 0), (1007, 0), (388, 0), (161, 0), (2, 0)], Some(RoundsEnd::Fits));
        assert!(unthrottled.shows(MigrationClaim::Converged));
        assert!(!unthrottled.shows(MigrationClaim::ThrottledToFit));
        // Nor is reaching the cap throttled.
        assert!(!rounds(&steps, Some(RoundsEnd::Capped)).shows(MigrationClaim::ThrottledToFit));
    }

    #[test]
    fn a_new_migration_starts_a_new_record() {
        let mut record = rounds(&[(2048, 0), (1001, 0), (1001, 0), (1001, 0)], Some(RoundsEnd::Capped));
        record.push(RoundReport { round: 0, pages_dirtied: 3, ..Default::default() }, Some(RoundsEnd::Fits));
        assert_eq!((record.rounds.len(), record.ended), (1, Some(RoundsEnd::Fits)));
        assert!(record.shows(MigrationClaim::Converged) && !record.shows(MigrationClaim::AtRoundCap));
    }
}
