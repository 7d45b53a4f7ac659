//! When accounts are due: before their credentials expire, spread by jitter, never
//! rewritten within ten minutes, and backing off after failures.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};

use crate::clock::chrono_duration;

/// AWS advises writing a secret at most once every 10 minutes: every write is a version,
/// and versions younger than 24 hours are never removed.
pub const MIN_REWRITE_INTERVAL: Duration = Duration::from_secs(600);

/// The longest jitter added in front of an account's next rotation.
const MAX_JITTER: Duration = Duration::from_secs(300);

/// The wait after the second failure in a row: the first is retried at the next tick, and
/// every later one waits twice as long as the one before (the default schedule period).
const FAILURE_BACKOFF_BASE: Duration = Duration::from_secs(300);

/// When rotations happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Rotate when the credentials expire within this.
    pub rotate_before_expiry: Duration,
    /// The longest wait between attempts of an account that keeps failing.
    pub failure_backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            rotate_before_expiry: Duration::from_secs(30 * 60),
            failure_backoff_max: Duration::from_secs(60 * 60),
        }
    }
}

impl Timing {
    /// Refuses a duration that would make the account due again less than ten minutes
    /// after each write, which would rewrite its secrets on every tick.
    pub fn check(&self, duration_seconds: u32) -> Result<(), String> {
        let lifetime = Duration::from_secs(u64::from(duration_seconds));
        let needed = self.rotate_before_expiry + MIN_REWRITE_INTERVAL;
        if lifetime < needed {
            return Err(format!(
                "duration {duration_seconds}s minus rotate_before_expiry {}s leaves less than the {}s AWS advises between writes of a secret; use a duration of at least {}s or lower rotate_before_expiry",
                self.rotate_before_expiry.as_secs(),
                MIN_REWRITE_INTERVAL.as_secs(),
                needed.as_secs()
            ));
        }
        Ok(())
    }

    /// The next rotation time for credentials written `now` that expire at `expiration`:
    /// `rotate_before_expiry` ahead of expiry, plus up to a tenth of the lifetime (at most
    /// five minutes) of jitter so accounts registered together drift apart, never sooner
    /// than ten minutes after the write. Whole seconds.
    pub fn rotate_after(
        &self,
        now: DateTime<Utc>,
        expiration: DateTime<Utc>,
        fraction: f64,
    ) -> DateTime<Utc> {
        let lifetime = (expiration - now).to_std().unwrap_or_default();
        let jitter = (lifetime / 10)
            .min(MAX_JITTER)
            .mul_f64(fraction.clamp(0.0, 1.0));
        let due = expiration - chrono_duration(self.rotate_before_expiry) - chrono_duration(jitter);
        let due = due.max(now + chrono_duration(MIN_REWRITE_INTERVAL));
        due.duration_trunc(chrono::Duration::seconds(1))
            .unwrap_or(due)
    }

    /// The next rotation time for an account's first credentials, written `now`: drawn
    /// anywhere from ten minutes after the write to the latest [`Timing::rotate_after`]
    /// would give. Accounts registered together (a platform's thousands at once) then
    /// come due spread over their whole lifetime from the second rotation on, instead of
    /// in waves that outgrow a tick and a write quota; each new account pays for it with
    /// one early renewal.
    pub fn first_rotate_after(
        &self,
        now: DateTime<Utc>,
        expiration: DateTime<Utc>,
        fraction: f64,
    ) -> DateTime<Utc> {
        let earliest = now + chrono_duration(MIN_REWRITE_INTERVAL);
        let latest = self.rotate_after(now, expiration, 0.0);
        let span = (latest - earliest).to_std().unwrap_or_default();
        let due = earliest + chrono_duration(span.mul_f64(fraction.clamp(0.0, 1.0)));
        due.duration_trunc(chrono::Duration::seconds(1))
            .unwrap_or(due)
    }

    /// Where an account without credentials ranks among those due for their expiry:
    /// as if its own expired just past the margin (`rotate_before_expiry` and the
    /// largest jitter from `now`). It goes after every account that must be renewed to
    /// stay above the margin, and before accounts renewed early (jitter, spreading).
    pub fn unwritten_urgency(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono_duration(self.rotate_before_expiry + MAX_JITTER)
    }

    /// When an account that has now failed `failures` times in a row is tried again:
    /// `None` (the next tick) after the first failure, then 5 minutes, doubling, capped
    /// at `failure_backoff_max`. Backing off never lets working credentials run short:
    /// the wait ends where the current ones (expiring at `expiration`) fall below
    /// `rotate_before_expiry`, and once they have, while they still work, every tick
    /// tries again.
    pub fn next_attempt(
        &self,
        failed_at: DateTime<Utc>,
        failures: u32,
        expiration: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let doublings = failures.checked_sub(2)?.min(31);
        let wait = FAILURE_BACKOFF_BASE
            .saturating_mul(1u32 << doublings)
            .min(self.failure_backoff_max);
        let backoff = failed_at + chrono_duration(wait);
        match expiration.filter(|expiration| *expiration > failed_at) {
            Some(expiration) => {
                let running_short = expiration - chrono_duration(self.rotate_before_expiry);
                (running_short > failed_at).then(|| backoff.min(running_short))
            }
            None => Some(backoff),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::at;

    #[test]
    fn rotate_after_leaves_the_margin_and_spreads_accounts() {
        let timing = Timing::default();
        let now = at(0);
        let expiration = at(60);
        assert_eq!(timing.rotate_after(now, expiration, 0.0), at(30));
        // A tenth of an hour is six minutes, capped at five.
        assert_eq!(timing.rotate_after(now, expiration, 1.0), at(25));
        let half = timing.rotate_after(now, expiration, 0.5);
        assert!(half < at(30) && half > at(25));
        assert_eq!(half.timestamp_subsec_nanos(), 0, "whole seconds");
        // Never sooner than ten minutes after the write.
        assert_eq!(timing.rotate_after(now, at(35), 1.0), at(10));
    }

    /// First credentials come due anywhere between ten minutes after the write and the
    /// usual due time; never earlier, never later.
    #[test]
    fn first_credentials_come_due_spread_over_their_lifetime() {
        let timing = Timing::default();
        let (now, expiration) = (at(0), at(60));
        assert_eq!(timing.first_rotate_after(now, expiration, 0.0), at(10));
        assert_eq!(timing.first_rotate_after(now, expiration, 1.0), at(30));
        assert_eq!(timing.first_rotate_after(now, expiration, 0.5), at(20));
        let twelve_hours = timing.first_rotate_after(now, at(720), 0.5);
        assert_eq!(twelve_hours, at(10 + (690 - 10) / 2));
        assert_eq!(timing.first_rotate_after(now, at(35), 0.7), at(10));
        assert_eq!(timing.unwritten_urgency(now), at(35));
    }

    #[test]
    fn durations_that_would_force_rewrites_every_tick_are_refused() {
        let timing = Timing::default();
        assert!(timing.check(3600).is_ok());
        assert!(timing.check(2400).is_ok());
        let error = timing.check(900).unwrap_err();
        assert!(error.contains("at least 2400s"), "{error}");
        let short = Timing {
            rotate_before_expiry: Duration::from_secs(300),
            ..Timing::default()
        };
        assert!(short.check(900).is_ok());
    }

    #[test]
    fn failures_back_off_from_the_next_tick_doubling_to_the_cap() {
        let timing = Timing::default();
        let waits: Vec<Option<i64>> = (1..=7)
            .map(|failures| {
                timing
                    .next_attempt(at(0), failures, None)
                    .map(|next| (next - at(0)).num_minutes())
            })
            .collect();
        assert_eq!(
            waits,
            [
                None,
                Some(5),
                Some(10),
                Some(20),
                Some(40),
                Some(60),
                Some(60)
            ]
        );
        let short = Timing {
            failure_backoff_max: Duration::from_secs(600),
            ..Timing::default()
        };
        assert_eq!(short.next_attempt(at(0), 40, None), Some(at(10)));
    }

    /// Credentials expiring at minute 80 fall below the 30-minute margin at minute 50,
    /// before the hour's backoff ends: it is cut there; once past it every tick tries
    /// again while they work; credentials already expired back off as usual.
    #[test]
    fn backing_off_never_outlasts_the_current_credentials() {
        let timing = Timing::default();
        let next = |failed_at: i64, expires: i64| {
            timing
                .next_attempt(at(failed_at), 6, Some(at(expires)))
                .map(|next| (next - at(0)).num_minutes())
        };
        assert_eq!(next(0, 300), Some(60), "far from expiry: the whole backoff");
        assert_eq!(next(0, 80), Some(50), "cut at the margin");
        assert_eq!(next(75, 100), None, "inside the margin: the next tick");
        assert_eq!(next(120, 100), Some(180), "expired: backing off as usual");
        assert_eq!(timing.next_attempt(at(0), 1, Some(at(100))), None);
    }
}
