//! A published request quota, enforced the strict way: a request is throttled when the
//! quota's number of requests was already admitted within the last second. Whatever it
//! admits is therefore at most the quota in any one-second window, and it keeps the
//! highest count it admitted in one.

use std::collections::VecDeque;
use std::time::Duration;

const WINDOW: Duration = Duration::from_secs(1);

/// One quota's bucket: requests per second, and what it saw.
#[derive(Debug)]
pub struct RateLimit {
    per_second: usize,
    /// When the requests of the last second were admitted.
    recent: VecDeque<Duration>,
    /// The most requests admitted within one second.
    pub peak: usize,
    pub admitted: u64,
    pub throttled: u64,
}

impl RateLimit {
    pub fn new(per_second: usize) -> Self {
        Self {
            per_second,
            recent: VecDeque::new(),
            peak: 0,
            admitted: 0,
            throttled: 0,
        }
    }

    /// Whether a request arriving `now` is served (`false`: throttled).
    pub fn admit(&mut self, now: Duration) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|admitted| now.saturating_sub(*admitted) >= WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.per_second {
            self.throttled += 1;
            return false;
        }
        self.recent.push_back(now);
        self.admitted += 1;
        self.peak = self.peak.max(self.recent.len());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_burst_beyond_the_quota_is_throttled_until_a_second_has_passed() {
        let mut limit = RateLimit::new(50);
        assert!((0..50).all(|_| limit.admit(ms(0))));
        assert!(!limit.admit(ms(999)), "the 51st within the second");
        assert!(limit.admit(ms(1000)), "the first has left the window");
        assert_eq!((limit.admitted, limit.throttled, limit.peak), (51, 1, 50));
    }

    /// Paced at 40 a second (one every 25 ms), nothing is throttled and no one-second
    /// window holds more than 40.
    #[test]
    fn a_steady_pace_under_the_quota_passes_whole() {
        let mut limit = RateLimit::new(50);
        assert!((0..400).all(|i| limit.admit(ms(i * 25))));
        assert_eq!((limit.throttled, limit.peak), (0, 40));
    }
}
