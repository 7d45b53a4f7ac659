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

/// Times in stored documents, as RFC 3339 in UTC (`2030-01-01T00:00:00Z`). Read with
/// chrono's RFC 3339 parser: its general `FromStr`, which chrono's own serde support uses,
/// is the largest part of chrono in the component.
pub mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// The text a stored time is written as.
    pub fn format(time: &DateTime<Utc>) -> String {
        time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(D::Error::custom)
    }

    /// The same for optional times (`null` or absent is `None`).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            time: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => super::serialize(time, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            #[derive(Deserialize)]
            struct Time(#[serde(with = "super")] DateTime<Utc>);
            Ok(Option::<Time>::deserialize(deserializer)?.map(|Time(time)| time))
        }
    }
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
