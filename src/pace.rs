//! Client-side pacing of Secrets Manager writes. AWS allows 50 write calls per second per
//! region for the whole account (PutSecretValue and UpdateSecret share it); pacing below
//! that is cheaper than retrying into throttling.

use std::cell::Cell;
use std::time::Duration;

use crate::clock::{Clock, Instant, TimeSource};

/// Starts at most `per_second` writes in any second, in the order they ask, on the
/// monotonic clock (a wall clock that steps would stall or burst it).
pub struct WritePacer<'c, S> {
    clock: &'c Clock<S>,
    interval: Option<Duration>,
    next_slot: Cell<Option<Instant>>,
}

impl<'c, S: TimeSource> WritePacer<'c, S> {
    /// `per_second` of 0 lifts the limit.
    pub fn new(clock: &'c Clock<S>, per_second: u32) -> Self {
        Self {
            clock,
            interval: (per_second > 0).then(|| Duration::from_secs(1) / per_second),
            next_slot: Cell::new(None),
        }
    }

    /// Waits for this write's turn.
    pub async fn wait_turn(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = self.clock.instant();
        let slot = self.next_slot.get().map_or(now, |next| next.max(now));
        self.next_slot.set(Some(slot + interval));
        self.clock.sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::tests::ManualClock;

    #[test]
    fn writes_are_spaced_to_the_rate() {
        let clock = ManualClock::manual(0.0);
        let pacer = WritePacer::new(&clock, 40);
        futures::executor::block_on(async {
            for _ in 0..81 {
                pacer.wait_turn().await;
            }
        });
        // 81 writes at 40/s: the 81st starts two seconds after the first.
        assert_eq!(clock.slept(), Duration::from_secs(2));
    }

    #[test]
    fn idle_time_is_not_banked() {
        let clock = ManualClock::manual(0.0);
        let pacer = WritePacer::new(&clock, 10);
        futures::executor::block_on(pacer.wait_turn());
        clock.advance(Duration::from_secs(5));
        futures::executor::block_on(async {
            pacer.wait_turn().await;
            pacer.wait_turn().await;
        });
        assert_eq!(
            clock.slept(),
            Duration::from_secs(5) + Duration::from_millis(100)
        );
    }

    #[test]
    fn zero_lifts_the_limit() {
        let clock = ManualClock::manual(0.0);
        let pacer = WritePacer::new(&clock, 0);
        futures::executor::block_on(async {
            for _ in 0..1000 {
                pacer.wait_turn().await;
            }
        });
        assert_eq!(clock.slept(), Duration::ZERO);
    }
}
