//! The arithmetic of the figures, apart from the simulation so that it can be checked.

use std::time::Duration;

use serde_json::{json, Value};

/// AWS advises writing a secret at most once in this.
pub const REWRITE_WINDOW_MS: u32 = 600_000;
const DAY_S: f64 = 86_400.0;

/// The least, middle and greatest of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values; the median of an even count is the upper middle one.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        values.sort_by(f64::total_cmp);
        Some(Self {
            min: *values.first()?,
            median: values[values.len() / 2],
            max: *values.last()?,
        })
    }

    /// As JSON, rounded to `places`.
    pub fn json(spread: Option<Self>, places: i32) -> Value {
        let round = |v: f64| (v * 10f64.powi(places)).round() / 10f64.powi(places);
        spread.map_or(
            Value::Null,
            |s| json!({"min": round(s.min), "median": round(s.median), "max": round(s.max)}),
        )
    }
}

/// The most of `times` (ascending, in ms) that fall within any `window` ms.
pub fn most_within(times: &[u32], window: u32) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, time) in times.iter().enumerate() {
        while time - times[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// The longest an account can go between rotations: until its credentials fall below
/// `rotate_before_expiry`, and never less than the ten minutes AWS advises between writes.
pub fn ideal_interval_s(duration: u32, rotate_before_expiry: Duration) -> f64 {
    let usable = f64::from(duration) - rotate_before_expiry.as_secs_f64();
    usable.max(f64::from(REWRITE_WINDOW_MS) / 1000.0)
}

/// Rotations a day, from `landings` complete sets over `span`.
pub fn per_day(landings: u32, span: Duration) -> f64 {
    f64::from(landings) * DAY_S / span.as_secs_f64()
}

/// How often an account rotated against its ideal: the ideal interval over the mean
/// interval between `landings` complete sets from `first` to `last` (1 is ideal, 1.2 a
/// fifth more rotations than needed); `None` with fewer than two sets.
pub fn against_ideal(landings: u32, first: Duration, last: Duration, ideal_s: f64) -> Option<f64> {
    let intervals = landings.checked_sub(1).filter(|n| *n > 0)?;
    let mean = last.saturating_sub(first).as_secs_f64() / f64::from(intervals);
    Some(ideal_s / mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_take_the_upper_middle() {
        let spread = Spread::of(vec![3.0, 1.0, 4.0, 2.0]).unwrap();
        assert_eq!((spread.min, spread.median, spread.max), (1.0, 3.0, 4.0));
        assert_eq!(Spread::of(Vec::new()), None);
        assert_eq!(Spread::json(Some(spread), 1)["median"], 3.0);
    }

    #[test]
    fn the_most_within_a_window_slides_over_every_start() {
        assert_eq!(most_within(&[], 600_000), 0);
        assert_eq!(most_within(&[0, 600_000, 1_200_000], 600_000), 1);
        assert_eq!(most_within(&[0, 599_999, 700_000, 1_199_998], 600_000), 3);
        assert_eq!(most_within(&[0, 599_999, 700_000, 1_199_999], 600_000), 2);
    }

    #[test]
    fn the_ideal_leaves_the_margin_and_the_ten_minutes() {
        let margin = Duration::from_secs(1800);
        assert_eq!(ideal_interval_s(3_600, margin), 1_800.0);
        assert_eq!(ideal_interval_s(2_400, margin), 600.0);
        let first = Duration::from_secs(0);
        let last = Duration::from_secs(3 * 1_500);
        let ratio = against_ideal(4, first, last, 1_800.0).unwrap();
        assert!((ratio - 1.2).abs() < 1e-9, "{ratio}");
        assert_eq!(against_ideal(1, first, last, 1_800.0), None);
        assert_eq!(per_day(12, Duration::from_secs(43_200)), 24.0);
    }
}
