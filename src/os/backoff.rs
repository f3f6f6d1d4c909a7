//! Waiting after an `accept` that failed (out of descriptors, say) before
//! trying again: from 10 ms, doubling to 1 s while it keeps failing, back
//! to the start after a success. A listener thread neither spins nor sleeps
//! longer than it must.

use std::time::Duration;

/// The first wait after a failure.
const FIRST: Duration = Duration::from_millis(10);
/// The longest wait.
const LONGEST: Duration = Duration::from_secs(1);

/// The back-off of one listener thread.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    next: Option<Duration>,
}

impl AcceptBackoff {
    /// How long to wait after one more failure in a row (and the wait is
    /// doubled for the next).
    pub fn after_failure(&mut self) -> Duration {
        let wait = self.next.unwrap_or(FIRST);
        self.next = Some((wait * 2).min(LONGEST));
        wait
    }

    /// An accept succeeded: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.next = None;
    }

    /// Waits as long as [`Self::after_failure`] says.
    pub fn wait_after_failure(&mut self) {
        std::thread::sleep(self.after_failure());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_wait_longer_up_to_a_second_and_a_success_starts_again() {
        let mut backoff = AcceptBackoff::default();
        let waits: Vec<u64> = (0..9).map(|_| backoff.after_failure().as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.after_failure(), FIRST);
    }
}
