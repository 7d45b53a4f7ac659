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
//! Both keep the fields a newer version wrote, as the state documents do.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::{Fields, Writer};

/// Where the counters live (under the `store_prefix`).
pub const COUNTERS_KEY: &str = "metrics/counters";
/// Where the last full tick's record lives.
pub const LAST_TICK_KEY: &str = "metrics/last_tick";

/// Counts that only grow, shared by every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    #[serde(default)]
    pub writer: Writer,
    /// Accounts whose credentials were all written.
    #[serde(default)]
    pub rotations: u64,
    /// Failed rotations, by the stage that failed (`assume_role`, `write_secrets`).
    #[serde(default)]
    pub failures: BTreeMap<String, u64>,
    /// AWS requests sent, by service (`sts`, `secretsmanager`, `ssm`), then by outcome
    /// (`ok`, or the class of the error: see [`crate::aws::ErrorKind::label`]).
    #[serde(default)]
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(flatten)]
    pub other: Fields,
}

impl Counters {
    /// The stored counters; `None` when the key holds something this application did not
    /// write, which is then never overwritten.
    pub fn read(bytes: Option<&[u8]>) -> Option<Self> {
        match bytes {
            None => Some(Self::default()),
            Some(bytes) => serde_json::from_slice(bytes).ok(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("counters are numbers and names")
    }

    pub fn count_request(&mut self, service: &str, outcome: &str, count: u64) {
        let by_outcome = self.requests.entry(service.to_owned()).or_default();
        *by_outcome.entry(outcome.to_owned()).or_default() += count;
    }

    pub fn count_failure(&mut self, stage: &str) {
        *self.failures.entry(stage.to_owned()).or_default() += 1;
    }
}

/// The last full tick (not a one-team rotation asked through the API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastTick {
    #[serde(default)]
    pub writer: Writer,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Measured on the monotonic clock, so a clock step cannot make it negative.
    pub duration_ms: u64,
    pub accounts: usize,
    pub rotated: usize,
    pub skipped: usize,
    pub deferred: usize,
    pub failed: usize,
    pub invalid_teams: usize,
    #[serde(flatten)]
    pub other: Fields,
}

impl LastTick {
    /// The stored record; `None` when there is none or it is not this application's.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a tick record is numbers and times")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_keep_a_newer_versions_fields_and_refuse_foreign_values() {
        let mut counters = Counters::read(None).unwrap();
        counters.rotations = 3;
        counters.count_failure("assume_role");
        counters.count_failure("assume_role");
        counters.count_request("sts", "ok", 4);
        counters.count_request("sts", "throttled", 1);
        let read = Counters::read(Some(&counters.to_bytes())).unwrap();
        assert_eq!(read, counters);
        assert_eq!(read.failures["assume_role"], 2);
        let newer =
            br#"{"writer":"concourse-sts","rotations":7,"vault_writes":9,"failures":{"vault":1}}"#;
        let kept: serde_json::Value =
            serde_json::from_slice(&Counters::read(Some(newer)).unwrap().to_bytes()).unwrap();
        assert_eq!(
            (&kept["vault_writes"], &kept["failures"]["vault"]),
            (&9.into(), &1.into())
        );
        for foreign in [&b"garbage"[..], b"[1]", br#"{"rotations":"many"}"#] {
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
