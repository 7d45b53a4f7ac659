//! One clock with two faces, so that no part of a tick reads time any other way.
//!
//! - **Monotonic time** ([`Clock::instant`]) for intervals: the tick's budget, request
//!   pacing, backoff, the lease's settle time, and how long this node may still write
//!   under a lease it took. It never steps, and it keeps running while the process is
//!   frozen (SIGSTOP, a paused VM), so a node that wakes knows how long it was away.
//! - **AWS time** ([`Clock::now`]) for everything compared with AWS's expirations or
//!   written for other nodes to read: planning, lease expiries, recorded times, request
//!   signatures. It is this node's wall clock corrected by what AWS's answers say the time
//!   is (their `Date` header), so that nodes whose own clocks disagree still agree on
//!   when a lease or a credential expires.
//!
//! The platform (WASI in the component, a hand-driven source in unit tests) supplies the
//! raw readings through [`TimeSource`].

use std::cell::Cell;
use std::future::Future;
use std::ops::Add;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A correction within this of the one in use is noise (a `Date` header has whole
/// seconds, and the answer spent some time on the way); a bigger one is a clock step.
const OFFSET_TOLERANCE: Duration = Duration::from_secs(2);

/// The raw readings of one platform.
pub trait TimeSource {
    /// This node's own wall clock, uncorrected.
    fn wall(&self) -> DateTime<Utc>;
    /// Time since an arbitrary origin that never steps and runs on while frozen.
    fn monotonic(&self) -> Duration;
    /// Waits; the executor goes on with other accounts meanwhile.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;
    /// A uniformly random number in `[0, 1)`, for jitter.
    fn random_fraction(&self) -> f64;
}

/// A point on the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(Duration);

impl Instant {
    /// How long from `earlier` to this; zero if `earlier` is later.
    pub fn since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, duration: Duration) -> Instant {
        Instant(self.0.saturating_add(duration))
    }
}

/// The clock of a tick: monotonic time and AWS time over one [`TimeSource`].
pub struct Clock<S> {
    source: S,
    /// AWS's time minus this node's wall clock, once an answer has said.
    offset: Cell<Option<chrono::Duration>>,
}

impl<S: TimeSource> Clock<S> {
    pub fn new(source: S) -> Self {
        Self {
            source,
            offset: Cell::new(None),
        }
    }

    /// AWS time: the wall clock corrected by the last offset learned (uncorrected until
    /// an answer has said what time it is, see [`Clock::knows_aws_time`]).
    pub fn now(&self) -> DateTime<Utc> {
        self.source.wall() + self.offset.get().unwrap_or_default()
    }

    /// AWS's time minus this node's wall clock, once an answer has said.
    pub fn offset(&self) -> Option<chrono::Duration> {
        self.offset.get()
    }

    /// Whether an answer from AWS has set the clock this tick.
    pub fn knows_aws_time(&self) -> bool {
        self.offset.get().is_some()
    }

    /// Learns AWS's time from an answer's `Date` header (whole seconds, so the answer was
    /// made within the second after it) for a request that took `round_trip`: AWS's
    /// clock read it about halfway through. A header that cannot be read is ignored.
    pub fn observe_date(&self, date: &str, round_trip: Duration) {
        let Ok(date) = DateTime::parse_from_rfc2822(date) else {
            return;
        };
        let aws_then = date.to_utc() + chrono::Duration::milliseconds(500);
        let sample = aws_then - (self.source.wall() - chrono_duration(round_trip / 2));
        let step = self
            .offset
            .get()
            .is_none_or(|current| (sample - current).abs() > chrono_duration(OFFSET_TOLERANCE));
        if step {
            self.offset.set(Some(sample));
        }
    }

    /// The current monotonic instant.
    pub fn instant(&self) -> Instant {
        Instant(self.source.monotonic())
    }

    pub async fn sleep(&self, duration: Duration) {
        if !duration.is_zero() {
            self.source.sleep(duration).await;
        }
    }

    /// Waits until `instant` (at once if it has passed).
    pub async fn sleep_until(&self, instant: Instant) {
        self.sleep(instant.since(self.instant())).await;
    }

    pub fn random_fraction(&self) -> f64 {
        self.source.random_fraction()
    }
}

/// `duration` as a chrono duration, saturating instead of failing on absurd values.
pub fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Time that only moves when slept on or advanced by hand, a wall clock that can be
    /// set apart from it, and fixed chance.
    pub struct ManualTime {
        start: DateTime<Utc>,
        elapsed: Cell<Duration>,
        /// This node's wall clock minus the true time.
        wall_error: Cell<chrono::Duration>,
        fraction: f64,
    }

    impl ManualTime {
        pub fn new(fraction: f64) -> Self {
            Self::at(
                DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
                    .unwrap()
                    .into(),
                fraction,
            )
        }

        pub fn at(start: DateTime<Utc>, fraction: f64) -> Self {
            Self {
                start,
                elapsed: Cell::new(Duration::ZERO),
                wall_error: Cell::new(chrono::Duration::zero()),
                fraction,
            }
        }

        /// The true time (what AWS's clock reads).
        pub fn true_now(&self) -> DateTime<Utc> {
            self.start + chrono_duration(self.elapsed.get())
        }
    }

    /// A [`Clock`] over [`ManualTime`], with the knobs the tests turn.
    pub type ManualClock = Clock<ManualTime>;

    impl ManualClock {
        pub fn manual(fraction: f64) -> Self {
            Clock::new(ManualTime::new(fraction))
        }

        pub fn manual_at(start: DateTime<Utc>, fraction: f64) -> Self {
            Clock::new(ManualTime::at(start, fraction))
        }

        /// Time slept or advanced so far.
        pub fn slept(&self) -> Duration {
            self.source.elapsed.get()
        }

        /// Moves every clock ahead, as time passing (or a frozen process) would.
        pub fn advance(&self, duration: Duration) {
            let time = &self.source;
            time.elapsed.set(time.elapsed.get() + duration);
        }

        /// Sets this node's wall clock `error` away from the true time.
        pub fn skew_wall(&self, error: chrono::Duration) {
            self.source.wall_error.set(error);
        }

        /// The true time, whatever this node's wall clock says.
        pub fn true_now(&self) -> DateTime<Utc> {
            self.source.true_now()
        }
    }

    impl TimeSource for ManualTime {
        fn wall(&self) -> DateTime<Utc> {
            self.true_now() + self.wall_error.get()
        }

        fn monotonic(&self) -> Duration {
            self.elapsed.get()
        }

        async fn sleep(&self, duration: Duration) {
            self.elapsed.set(self.elapsed.get() + duration);
        }

        fn random_fraction(&self) -> f64 {
            self.fraction
        }
    }

    fn http_date(time: DateTime<Utc>) -> String {
        time.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
    }

    #[test]
    fn aws_time_is_the_wall_clock_corrected_by_the_answers_date() {
        let clock = ManualClock::manual(0.0);
        clock.skew_wall(chrono::Duration::minutes(4));
        assert!(!clock.knows_aws_time());
        assert_eq!(clock.now() - clock.true_now(), chrono::Duration::minutes(4));
        clock.observe_date(&http_date(clock.true_now()), Duration::ZERO);
        assert!(clock.knows_aws_time());
        let error = (clock.now() - clock.true_now()).abs();
        assert!(error <= chrono::Duration::seconds(1), "{error}");
    }

    #[test]
    fn small_differences_are_noise_and_a_step_is_followed() {
        let clock = ManualClock::manual(0.0);
        clock.observe_date(&http_date(clock.true_now()), Duration::ZERO);
        let first = clock.now();
        // One second later by the header (the answer took a while): kept.
        let later = clock.true_now() + chrono::Duration::seconds(1);
        clock.observe_date(&http_date(later), Duration::ZERO);
        assert_eq!(clock.now(), first);
        // The wall clock steps back a minute: the next answer corrects it.
        clock.skew_wall(chrono::Duration::minutes(-1));
        clock.observe_date(&http_date(clock.true_now()), Duration::ZERO);
        assert!((clock.now() - clock.true_now()).abs() <= chrono::Duration::seconds(1));
        // Unreadable headers change nothing.
        clock.observe_date("yesterday", Duration::ZERO);
        assert!((clock.now() - clock.true_now()).abs() <= chrono::Duration::seconds(1));
    }

    #[test]
    fn a_long_round_trip_is_split_in_half() {
        let clock = ManualClock::manual(0.0);
        // The answer was made when half of a 4-second round trip had passed.
        let made = clock.true_now();
        clock.advance(Duration::from_secs(2));
        clock.observe_date(&http_date(made), Duration::from_secs(4));
        let error = (clock.now() - clock.true_now()).abs();
        assert!(error <= chrono::Duration::seconds(1), "{error}");
    }

    #[test]
    fn monotonic_time_ignores_the_wall_clock() {
        let clock = ManualClock::manual(0.0);
        let start = clock.instant();
        clock.skew_wall(chrono::Duration::hours(-3));
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.instant().since(start), Duration::from_secs(5));
        assert_eq!(start.since(clock.instant()), Duration::ZERO);
        futures::executor::block_on(clock.sleep_until(start + Duration::from_secs(8)));
        assert_eq!(clock.instant().since(start), Duration::from_secs(8));
    }
}
