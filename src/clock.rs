//! Time and chance, behind a trait: the engine waits (backoff, write pacing) and spreads
//! (jitter) through a [`Clock`], so unit tests drive time by hand and the component uses
//! WASI's clocks and random source.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub trait Clock {
    /// Wall-clock time, for expirations and state.
    fn now(&self) -> DateTime<Utc>;
    /// Waits; the executor goes on with other accounts meanwhile.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;
    /// A uniformly random number in `[0, 1)`, for jitter.
    fn random_fraction(&self) -> f64;
}

/// `duration` as a chrono duration, saturating instead of failing on absurd values.
pub fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;

    /// A clock that only moves when slept on, and whose chance is fixed.
    pub struct ManualClock {
        start: DateTime<Utc>,
        elapsed: Cell<Duration>,
        fraction: f64,
    }

    impl ManualClock {
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
                fraction,
            }
        }

        pub fn slept(&self) -> Duration {
            self.elapsed.get()
        }

        pub fn advance(&self, duration: Duration) {
            self.elapsed.set(self.elapsed.get() + duration);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> DateTime<Utc> {
            self.start + chrono_duration(self.elapsed.get())
        }

        async fn sleep(&self, duration: Duration) {
            self.advance(duration);
        }

        fn random_fraction(&self) -> f64 {
            self.fraction
        }
    }

    impl Clock for &ManualClock {
        fn now(&self) -> DateTime<Utc> {
            (**self).now()
        }

        async fn sleep(&self, duration: Duration) {
            (**self).advance(duration);
        }

        fn random_fraction(&self) -> f64 {
            self.fraction
        }
    }
}
