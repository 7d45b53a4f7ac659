//! `GET /metrics`: the [`Overview`] in Prometheus' text exposition format (version
//! 0.0.4), written by hand: a metrics crate would cost the component more than these
//! few lines, and every value is computed at scrape time from the store, so every node
//! answers the same.
//!
//! Names follow Prometheus' naming guide: the `concourse_sts_` prefix, base units
//! (`_seconds`, `_timestamp_seconds` for moments, as cert-manager's
//! `certmanager_certificate_expiration_timestamp_seconds`), `_total` for counters. The
//! labels that name things are `team` and `account`, bounded by the registered teams;
//! the counters' other labels (`stage`, `service`, `outcome`) take their values from a
//! fixed vocabulary. Never a role ARN, a secret name or a credential.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::aws::ErrorKind;
use crate::overview::{AccountView, Overview};
use crate::state::Stage;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A per-account gauge: its name (after `concourse_sts_`), help, and value (`None`: no
/// sample for that account).
type AccountGauge = (
    &'static str,
    &'static str,
    fn(&AccountView) -> Option<Number>,
);

const ACCOUNT_GAUGES: [AccountGauge; 8] = [
    (
        "account_credentials_expiry_timestamp_seconds",
        "When the credentials last written for the account expire.",
        |a| seconds(a.state.expiration),
    ),
    (
        "account_last_rotation_timestamp_seconds",
        "When the account's credentials were last all written.",
        |a| seconds(a.state.written_at),
    ),
    (
        "account_next_rotation_timestamp_seconds",
        "When the account is next due, before its credentials expire.",
        |a| seconds(a.state.rotate_after),
    ),
    (
        "account_next_attempt_timestamp_seconds",
        "Until when a failing account backs off.",
        |a| seconds(a.state.next_attempt),
    ),
    (
        "account_failing",
        "1 when the account's last attempt failed, or the next tick refuses it.",
        |a| Some(flag(a.failing())),
    ),
    (
        "account_consecutive_failures",
        "Attempts of the account that failed in a row.",
        |a| Some(Number::count(u64::from(a.state.consecutive_failures))),
    ),
    (
        "account_half_written",
        "1 when a write of the account's secrets was left half done.",
        |a| Some(flag(a.state.incomplete)),
    ),
    (
        "account_permanent_failure",
        "1 when the account fails in a way only an operator can fix.",
        |a| Some(flag(a.permanent())),
    ),
];

/// The stages whose failure counters exist from the start, so that `rate()` sees the
/// first failure.
const COUNTED_STAGES: [Stage; 2] = [Stage::AssumeRole, Stage::WriteSecrets];
/// The services whose throttling counters exist from the start.
const SERVICES: [&str; 3] = ["sts", "secretsmanager", "ssm"];

/// The whole exposition; `now` is the serving node's wall clock (for the lease's age).
pub fn exposition(overview: &Overview, now: DateTime<Utc>) -> String {
    let mut out = Exposition::default();
    for (name, help, value) in ACCOUNT_GAUGES {
        out.family(name, "gauge", help);
        for team in &overview.teams {
            for account in &team.accounts {
                if let Some(value) = value(account) {
                    let labels = [("team", team.name.as_str()), ("account", &account.name)];
                    out.sample(name, &labels, value);
                }
            }
        }
    }
    out.family(
        "team_invalid",
        "gauge",
        "1 when the team's document is invalid: none of its accounts is rotated.",
    );
    for team in &overview.teams {
        out.sample("team_invalid", &[("team", &team.name)], flag(team.invalid));
    }
    last_tick(&mut out, overview);
    lease(&mut out, overview, now);
    counters(&mut out, overview);
    out.text
}

fn last_tick(out: &mut Exposition, overview: &Overview) {
    let Some(tick) = &overview.last_tick else {
        return;
    };
    let moments = [
        (
            "last_tick_started_timestamp_seconds",
            tick.started_at,
            "When the last full tick started.",
        ),
        (
            "last_tick_finished_timestamp_seconds",
            tick.finished_at,
            "When the last full tick finished.",
        ),
    ];
    for (name, at, help) in moments {
        out.family(name, "gauge", help);
        out.sample(name, &[], Number::micros(at.timestamp_micros()));
    }
    out.family(
        "last_tick_duration_seconds",
        "gauge",
        "How long the last full tick took.",
    );
    out.sample(
        "last_tick_duration_seconds",
        &[],
        Number::millis(tick.duration_ms as i64),
    );
    out.family(
        "last_tick_accounts",
        "gauge",
        "Accounts of the last full tick, by what became of them.",
    );
    let outcomes = [
        ("rotated", tick.rotated),
        ("skipped", tick.skipped),
        ("deferred", tick.deferred),
        ("failed", tick.failed),
    ];
    for (outcome, count) in outcomes {
        out.sample(
            "last_tick_accounts",
            &[("outcome", outcome)],
            Number::count(count),
        );
    }
}

/// How long the lease's current holder has held it; 0 when no tick holds it.
fn lease(out: &mut Exposition, overview: &Overview, now: DateTime<Utc>) {
    out.family(
        "lease_holder_age_seconds",
        "gauge",
        "How long the tick holding the lease has held it; 0 when none does.",
    );
    let age = overview
        .lease
        .as_ref()
        .filter(|holding| holding.expires_at > now)
        .and_then(|holding| holding.acquired_at)
        .map_or(Number::count(0), |since| {
            Number::millis((now - since).num_milliseconds().max(0))
        });
    out.sample("lease_holder_age_seconds", &[], age);
}

fn counters(out: &mut Exposition, overview: &Overview) {
    let counted = &overview.counters;
    out.family(
        "rotations_total",
        "counter",
        "Accounts whose credentials were all written.",
    );
    out.sample("rotations_total", &[], Number::count(counted.rotations()));
    out.family(
        "failures_total",
        "counter",
        "Rotations that failed, by the stage that failed.",
    );
    for stage in COUNTED_STAGES.map(Stage::as_str) {
        let count = counted.failures().find(|(name, _)| *name == stage);
        let count = count.map_or(0, |(_, count)| count);
        out.sample("failures_total", &[("stage", stage)], Number::count(count));
    }
    for (stage, count) in counted.failures() {
        if !COUNTED_STAGES
            .iter()
            .any(|counted| counted.as_str() == stage)
        {
            out.sample("failures_total", &[("stage", stage)], Number::count(count));
        }
    }
    out.family(
        "aws_requests_total",
        "counter",
        "AWS requests sent, by service and outcome (ok, or the class of the error).",
    );
    for (service, outcome, count) in counted.requests() {
        let labels = [("service", service), ("outcome", outcome)];
        out.sample("aws_requests_total", &labels, Number::count(count));
    }
    out.family(
        "aws_throttled_requests_total",
        "counter",
        "AWS requests answered with throttling, by service.",
    );
    let throttled = ErrorKind::Throttling.label();
    for service in SERVICES {
        let count = counted
            .requests()
            .filter(|(name, outcome, _)| *name == service && *outcome == throttled)
            .map(|(_, _, count)| count)
            .sum();
        out.sample(
            "aws_throttled_requests_total",
            &[("service", service)],
            Number::count(count),
        );
    }
}

fn seconds(moment: Option<DateTime<Utc>>) -> Option<Number> {
    moment.map(|at| Number::micros(at.timestamp_micros()))
}

fn flag(on: bool) -> Number {
    Number::count(u64::from(on))
}

/// A sample's value in millionths, written without floating point: every value here
/// is a count or a time (to the microsecond, as stored), and formatting an `f64` would
/// add the float printing code to the component (about 20 KB of its 1 MiB).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Number {
    millionths: i64,
}

impl Number {
    const ONE: i64 = 1_000_000;

    fn count(count: u64) -> Self {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        Self {
            millionths: count.saturating_mul(Self::ONE),
        }
    }

    fn millis(millis: i64) -> Self {
        Self {
            millionths: millis.saturating_mul(1000),
        }
    }

    fn micros(micros: i64) -> Self {
        Self { millionths: micros }
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.millionths < 0 { "-" } else { "" };
        let magnitude = self.millionths.unsigned_abs();
        let one = Self::ONE.unsigned_abs();
        let (whole, mut fraction, mut digits) = (magnitude / one, magnitude % one, 6);
        if fraction == 0 {
            return write!(f, "{sign}{whole}");
        }
        while fraction % 10 == 0 {
            fraction /= 10;
            digits -= 1;
        }
        write!(f, "{sign}{whole}.{fraction:0digits$}")
    }
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP concourse_sts_{name} {help}\n# TYPE concourse_sts_{name} {kind}"
        );
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Number) {
        let _ = write!(self.text, "concourse_sts_{name}");
        for (i, (label, text)) in labels.iter().enumerate() {
            let open = if i == 0 { '{' } else { ',' };
            let _ = write!(self.text, "{open}{label}=\"");
            escape_into(&mut self.text, text);
            self.text.push('"');
        }
        if !labels.is_empty() {
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{Counters, LastTick};
    use crate::lease::Holding;
    use crate::overview::tests::{allow_list, every_condition};
    use crate::state::tests::at;

    fn scraped() -> String {
        let mut overview = Overview::read(&every_condition(), Some(&allow_list()), at(40)).unwrap();
        overview.counters = Counters::default();
        for _ in 0..12 {
            overview.counters.count_rotation();
        }
        overview.counters.count_request("sts", "throttled", 2);
        overview.counters.count_request("sts", "ok", 9);
        overview.counters.count_failure("assume_role");
        overview.last_tick = Some(LastTick {
            started_at: at(39),
            finished_at: at(39) + chrono::Duration::milliseconds(1500),
            duration_ms: 1500,
            rotated: 2,
            ..LastTick::default()
        });
        overview.lease = Some(Holding {
            expires_at: at(41),
            acquired_at: Some(at(39)),
        });
        exposition(&overview, at(40))
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn every_family_has_help_and_type_and_its_samples_together() {
        let text = scraped();
        let mut seen = Vec::new();
        let mut current = "";
        for row in text.lines() {
            if let Some(rest) = row.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["gauge", "counter"].contains(&kind), "{row}");
                assert!(!seen.contains(&name), "{name} twice");
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no help"
                );
                seen.push(name);
                current = name;
            } else if !row.starts_with('#') {
                assert!(row.starts_with(current), "{row} outside {current}");
            }
        }
        assert_eq!(seen.len(), 18, "{seen:?}");
        assert!(seen.iter().all(|name| name.starts_with("concourse_sts_")));
        let mut counters = seen.iter().filter(|name| name.ends_with("_total"));
        assert!(counters.all(|name| text.contains(&format!("# TYPE {name} counter"))));
    }

    #[test]
    fn account_series_say_what_the_state_says() {
        let text = scraped();
        let expiry = at(60).timestamp();
        assert_eq!(
            line(
                &text,
                r#"concourse_sts_account_credentials_expiry_timestamp_seconds{team="alpha",account="fresh"}"#
            ),
            format!(
                r#"concourse_sts_account_credentials_expiry_timestamp_seconds{{team="alpha",account="fresh"}} {expiry}"#
            )
        );
        for (account, failing, permanent, half) in [
            ("fresh", 0, 0, 0),
            ("failing", 1, 1, 0),
            ("backing-off", 1, 0, 0),
            ("half", 0, 0, 1),
        ] {
            let labels = format!(r#"{{team="alpha",account="{account}"}}"#);
            for (name, value) in [
                ("failing", failing),
                ("permanent_failure", permanent),
                ("half_written", half),
            ] {
                let series = format!("concourse_sts_account_{name}{labels}");
                assert_eq!(line(&text, &series), format!("{series} {value}"));
            }
        }
        let refused = r#"concourse_sts_account_permanent_failure{team="gamma",account="dev"}"#;
        assert_eq!(line(&text, refused), format!("{refused} 1"));
        assert!(!text.contains(r#"next_attempt_timestamp_seconds{team="alpha",account="fresh"}"#));
        assert!(text.contains("concourse_sts_team_invalid{team=\"beta\"} 1\n"));
        assert!(text.contains("concourse_sts_team_invalid{team=\"alpha\"} 0\n"));
    }

    #[test]
    fn deployment_series_come_from_the_counters_the_last_tick_and_the_lease() {
        let text = scraped();
        for expected in [
            "concourse_sts_rotations_total 12",
            "concourse_sts_failures_total{stage=\"assume_role\"} 1",
            "concourse_sts_failures_total{stage=\"write_secrets\"} 0",
            "concourse_sts_aws_requests_total{service=\"sts\",outcome=\"ok\"} 9",
            "concourse_sts_aws_throttled_requests_total{service=\"sts\"} 2",
            "concourse_sts_aws_throttled_requests_total{service=\"ssm\"} 0",
            "concourse_sts_last_tick_duration_seconds 1.5",
            "concourse_sts_last_tick_accounts{outcome=\"rotated\"} 2",
            "concourse_sts_lease_holder_age_seconds 60",
        ] {
            assert!(
                text.contains(&format!("{expected}\n")),
                "{expected} in\n{text}"
            );
        }
        let finished = at(39).timestamp_millis() + 1500;
        assert!(text.contains(&format!(
            "concourse_sts_last_tick_finished_timestamp_seconds {}.5\n",
            finished / 1000
        )));
    }

    #[test]
    fn numbers_are_written_as_prometheus_reads_them() {
        let written: Vec<String> = [
            Number::count(0),
            Number::count(12),
            Number::millis(1_500),
            Number::millis(1_900_000_000_250),
            Number::micros(1_796_555_715_472_900),
            Number::micros(7),
            Number::millis(-20),
        ]
        .iter()
        .map(Number::to_string)
        .collect();
        assert_eq!(
            written,
            [
                "0",
                "12",
                "1.5",
                "1900000000.25",
                "1796555715.4729",
                "0.000007",
                "-0.02"
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("x", &[("team", "a\"b\\c\nd")], Number::count(1));
        assert_eq!(out.text, "concourse_sts_x{team=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
