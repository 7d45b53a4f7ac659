//! What the deployment as a whole did, kept in the store beside the teams' state so that
//! every node's `/metrics` answers the same and nothing is lost to a restart.
//!
//! - [`Counters`] (`metrics/counters`): rotations, failures by stage, AWS requests by
//!   service and outcome. Only a tick holding the lease changes them, and only in the
//!   batches it writes anyway (see `tick::record`), so counting costs no commit and two
//!   nodes never overwrite each other's counts.
//! - [`LastTick`] (`metrics/last_tick`): when the last full tick started and finished and
//!   what became of its accounts. A tick with work writes it in its last batch; a tick
//!   with nothing due writes it alone, its one commit, so that a deployment whose
//!   accounts are all fresh still shows that its schedule runs.
//!
//! Both are read as plain JSON rather than through derived types: the component's size
//! is bounded (1 MiB), and a JSON object keeps every field a newer version added to the
//! counters by itself. A tick's record is replaced whole by every tick.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::state::{Fields, Writer};

/// Where the counters live (under the `store_prefix`).
pub const COUNTERS_KEY: &str = "metrics/counters";
/// Where the last full tick's record lives.
pub const LAST_TICK_KEY: &str = "metrics/last_tick";

/// Counts that only grow, shared by every node: `{"rotations": n, "failures": {stage:
/// n}, "requests": {service: {outcome: n}}}`, with whatever else a newer version counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters(Fields);

impl Counters {
    /// The stored counters (none yet: zero); `None` when the key holds something that is
    /// not a JSON object, which is then never overwritten.
    pub fn read(bytes: Option<&[u8]>) -> Option<Self> {
        let Some(bytes) = bytes else {
            return Some(Self::default());
        };
        match serde_json::from_slice(bytes).ok()? {
            Value::Object(fields) => Some(Self(fields)),
            _ => None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("counters are JSON")
    }

    /// Accounts whose credentials were all written.
    pub fn rotations(&self) -> u64 {
        self.0.get("rotations").and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn count_rotation(&mut self) {
        bump(&mut self.0, &["rotations"], 1);
    }

    /// Failed rotations by the stage that failed.
    pub fn failures(&self) -> impl Iterator<Item = (&str, u64)> {
        counts(&self.0, "failures")
    }

    pub fn count_failure(&mut self, stage: &str) {
        bump(&mut self.0, &["failures", stage], 1);
    }

    /// AWS requests sent, by service (`sts`, `secretsmanager`, `ssm`), then outcome (`ok`,
    /// or the class of the error: see [`crate::aws::ErrorKind::label`]).
    pub fn requests(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        let services = self.0.get("requests").and_then(Value::as_object);
        services
            .into_iter()
            .flatten()
            .flat_map(|(service, outcomes)| {
                let outcomes = outcomes.as_object().into_iter().flatten();
                outcomes.filter_map(move |(outcome, n)| {
                    Some((service.as_str(), outcome.as_str(), n.as_u64()?))
                })
            })
    }

    pub fn count_request(&mut self, service: &str, outcome: &str, count: u64) {
        bump(&mut self.0, &["requests", service, outcome], count);
    }
}

/// The counts in the object at `field`.
fn counts<'a>(fields: &'a Fields, field: &str) -> impl Iterator<Item = (&'a str, u64)> {
    let counts = fields.get(field).and_then(Value::as_object);
    counts
        .into_iter()
        .flatten()
        .filter_map(|(name, n)| Some((name.as_str(), n.as_u64()?)))
}

/// Adds `count` to the number at `path`, making the objects on the way; a value this
/// version cannot read (a newer version's format) is left as it is.
fn bump(fields: &mut Fields, path: &[&str], count: u64) {
    let Some((last, objects)) = path.split_last() else {
        return;
    };
    let mut object = fields;
    for name in objects {
        let entry = object
            .entry(*name)
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(inner) = entry else {
            return;
        };
        object = inner;
    }
    if let Value::Number(n) = object.entry(*last).or_insert(json!(0)) {
        if let Some(current) = n.as_u64() {
            *n = current.saturating_add(count).into();
        }
    }
}

/// The last full tick (not a one-team rotation asked through the API).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LastTick {
    pub writer: Writer,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Measured on the monotonic clock, so a clock step cannot make it negative.
    pub duration_ms: u64,
    pub accounts: u64,
    pub rotated: u64,
    pub skipped: u64,
    pub deferred: u64,
    pub failed: u64,
    pub invalid_teams: u64,
}

impl LastTick {
    /// The stored record; `None` when it cannot be read.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        let record: Value = serde_json::from_slice(bytes).ok()?;
        let time = |field: &str| {
            let text = record.get(field)?.as_str()?;
            Some(DateTime::parse_from_rfc3339(text).ok()?.to_utc())
        };
        let count = |field: &str| record.get(field).and_then(Value::as_u64).unwrap_or(0);
        Some(Self {
            writer: Writer::ConcourseSts,
            started_at: time("started_at")?,
            finished_at: time("finished_at")?,
            duration_ms: count("duration_ms"),
            accounts: count("accounts"),
            rotated: count("rotated"),
            skipped: count("skipped"),
            deferred: count("deferred"),
            failed: count("failed"),
            invalid_teams: count("invalid_teams"),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a tick record is numbers and times")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_keep_a_newer_versions_fields_and_refuse_foreign_values() {
        let mut counters = Counters::read(None).unwrap();
        counters.count_rotation();
        counters.count_rotation();
        counters.count_failure("assume_role");
        counters.count_failure("assume_role");
        counters.count_request("sts", "ok", 4);
        counters.count_request("sts", "throttled", 1);
        let read = Counters::read(Some(&counters.to_bytes())).unwrap();
        assert_eq!(read, counters);
        assert_eq!(read.rotations(), 2);
        assert_eq!(read.failures().collect::<Vec<_>>(), [("assume_role", 2)]);
        assert_eq!(
            read.requests().collect::<Vec<_>>(),
            [("sts", "ok", 4), ("sts", "throttled", 1)]
        );
        let newer = br#"{"rotations":7,"vault_writes":9,"failures":{"vault":1},"requests":{"sts":"by region"}}"#;
        let mut kept = Counters::read(Some(newer)).unwrap();
        kept.count_rotation();
        kept.count_request("sts", "ok", 1);
        let written: Value = serde_json::from_slice(&kept.to_bytes()).unwrap();
        assert_eq!(
            written,
            json!({"rotations": 8, "vault_writes": 9, "failures": {"vault": 1}, "requests": {"sts": "by region"}})
        );
        for foreign in [&b"garbage"[..], b"[1]", b"7"] {
            assert_eq!(Counters::read(Some(foreign)), None);
        }
    }

    #[test]
    fn a_last_tick_record_round_trips() {
        let tick = LastTick {
            started_at: "2030-01-01T00:00:00Z".parse().unwrap(),
            finished_at: "2030-01-01T00:00:02.5Z".parse().unwrap(),
            duration_ms: 2500,
            accounts: 3,
            rotated: 2,
            failed: 1,
            ..LastTick::default()
        };
        assert_eq!(LastTick::read(&tick.to_bytes()), Some(tick));
        assert_eq!(LastTick::read(b"{}"), None);
    }
}
