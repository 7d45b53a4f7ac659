//! Rotation state: what was written for each account and when it is due again.
//!
//! One document per team under `state/<team>` (some Spin key-value backends cap the number
//! of keys near 1024, so not one per account). It holds no credential: expirations, times,
//! a fingerprint of the configuration, and the last error's code and message.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::chrono_duration;
use crate::config::AccountConfig;
use crate::template::{SecretFormat, SecretPath};

/// The key prefix of team state documents.
pub const STATE_PREFIX: &str = "state/";

/// AWS advises writing a secret at most once every 10 minutes: every write is a version,
/// and versions younger than 24 hours are never removed.
pub const MIN_REWRITE_INTERVAL: Duration = Duration::from_secs(600);

/// The longest jitter added in front of an account's next rotation.
const MAX_JITTER: Duration = Duration::from_secs(300);

/// The state of one team's accounts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeamState {
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountState>,
}

/// What the last rotations of one account left behind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    /// Of the configuration and rendered path the last complete write used.
    pub fingerprint: String,
    #[serde(default, with = "crate::clock::rfc3339::option")]
    pub written_at: Option<DateTime<Utc>>,
    #[serde(default, with = "crate::clock::rfc3339::option")]
    pub expiration: Option<DateTime<Utc>>,
    /// When the next rotation is due: before expiry, minus a little jitter.
    #[serde(default, with = "crate::clock::rfc3339::option")]
    pub rotate_after: Option<DateTime<Utc>>,
    #[serde(default)]
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    /// Set before the secrets are written and cleared once all are: if it is still set,
    /// a tick died or failed half-way and the triple may be mixed.
    #[serde(default)]
    pub incomplete: bool,
}

/// The step at which an account failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The role is outside the operator's `allowed_role_arns`.
    RoleNotAllowed,
    /// The account's `duration` and `rotate_before_expiry` would force a rewrite every tick.
    Config,
    /// The account's secret path cannot be rendered (too long for Secrets Manager).
    SecretPath,
    AssumeRole,
    /// One or more secrets were not written; the others may have been.
    WriteSecrets,
    /// The rotation state could not be saved.
    State,
}

/// The last failure of an account, without any credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
    pub stage: Stage,
    pub code: Option<String>,
    pub message: String,
}

/// When rotations happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Rotate when the credentials expire within this.
    pub rotate_before_expiry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            rotate_before_expiry: Duration::from_secs(30 * 60),
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
    /// than ten minutes after the write.
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
        due.max(now + chrono_duration(MIN_REWRITE_INTERVAL))
    }
}

/// Why an account is rotated this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RotateReason {
    NeverWritten,
    /// A write was left half done: rewrite the whole triple, whatever the interval.
    Incomplete,
    ConfigChanged,
    LastAttemptFailed,
    ExpiresSoon,
    /// An operator asked for it (`POST /teams/{name}/rotate`).
    Requested,
}

/// Why an account is left alone this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Written less than ten minutes ago; due again at `until` at the earliest.
    WrittenRecently,
    /// Valid long enough; due at `until`.
    Fresh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Rotate(RotateReason),
    Skip {
        reason: SkipReason,
        until: DateTime<Utc>,
    },
}

/// Decides one account. Repairing a half-written triple is the one thing that may happen
/// within ten minutes of the last write.
pub fn decide(state: Option<&AccountState>, fingerprint: &str, now: DateTime<Utc>) -> Decision {
    let Some(state) = state.filter(|s| s.written_at.is_some() || s.incomplete) else {
        return Decision::Rotate(RotateReason::NeverWritten);
    };
    if state.incomplete {
        return Decision::Rotate(RotateReason::Incomplete);
    }
    if let Some(written_at) = state.written_at {
        let earliest = written_at + chrono_duration(MIN_REWRITE_INTERVAL);
        if now < earliest {
            return Decision::Skip {
                reason: SkipReason::WrittenRecently,
                until: earliest,
            };
        }
    }
    if state.fingerprint != fingerprint {
        return Decision::Rotate(RotateReason::ConfigChanged);
    }
    if state.consecutive_failures > 0 {
        return Decision::Rotate(RotateReason::LastAttemptFailed);
    }
    match state.rotate_after {
        Some(until) if now < until => Decision::Skip {
            reason: SkipReason::Fresh,
            until,
        },
        _ => Decision::Rotate(RotateReason::ExpiresSoon),
    }
}

/// A short, stable digest of everything that decides what an account's secrets hold
/// and where: a change to any of it means the secrets must be rewritten.
pub fn fingerprint(account: &AccountConfig, path: &SecretPath, format: SecretFormat) -> String {
    let mut digest = Sha256::new();
    for part in [
        account.role_arn.as_str(),
        &account.duration_seconds.to_string(),
        account.external_id.as_deref().unwrap_or(""),
        path.as_str(),
        format.as_str(),
    ] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    hex::encode(&digest.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + minutes * 60, 0).unwrap()
    }

    fn written(at_minute: i64, rotate_after: i64) -> AccountState {
        AccountState {
            fingerprint: "f".into(),
            written_at: Some(at(at_minute)),
            expiration: Some(at(at_minute + 60)),
            rotate_after: Some(at(rotate_after)),
            ..Default::default()
        }
    }

    #[test]
    fn never_written_rotates() {
        assert_eq!(
            decide(None, "f", at(0)),
            Decision::Rotate(RotateReason::NeverWritten)
        );
        let failed_only = AccountState {
            consecutive_failures: 2,
            ..Default::default()
        };
        assert_eq!(
            decide(Some(&failed_only), "f", at(0)),
            Decision::Rotate(RotateReason::NeverWritten)
        );
    }

    #[test]
    fn fresh_accounts_are_skipped_until_due() {
        let state = written(0, 28);
        assert_eq!(
            decide(Some(&state), "f", at(20)),
            Decision::Skip {
                reason: SkipReason::Fresh,
                until: at(28)
            }
        );
        assert_eq!(
            decide(Some(&state), "f", at(28)),
            Decision::Rotate(RotateReason::ExpiresSoon)
        );
    }

    #[test]
    fn nothing_but_a_repair_within_ten_minutes_of_a_write() {
        let mut state = written(0, 5);
        state.fingerprint = "old".into();
        state.consecutive_failures = 1;
        assert_eq!(
            decide(Some(&state), "f", at(9)),
            Decision::Skip {
                reason: SkipReason::WrittenRecently,
                until: at(10)
            }
        );
        state.incomplete = true;
        assert_eq!(
            decide(Some(&state), "f", at(1)),
            Decision::Rotate(RotateReason::Incomplete)
        );
    }

    #[test]
    fn changes_and_failures_rotate_once_the_interval_has_passed() {
        let state = written(0, 50);
        assert_eq!(
            decide(Some(&state), "g", at(11)),
            Decision::Rotate(RotateReason::ConfigChanged)
        );
        let failed = AccountState {
            consecutive_failures: 1,
            ..written(0, 50)
        };
        assert_eq!(
            decide(Some(&failed), "f", at(11)),
            Decision::Rotate(RotateReason::LastAttemptFailed)
        );
    }

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
        // Never sooner than ten minutes after the write.
        assert_eq!(timing.rotate_after(now, at(35), 1.0), at(10));
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
        };
        assert!(short.check(900).is_ok());
    }

    #[test]
    fn fingerprints_follow_what_matters() {
        let account = AccountConfig {
            name: "a".into(),
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            duration_seconds: 3600,
            external_id: None,
        };
        let path = crate::template::SecretPathTemplate::default()
            .render("t", "a")
            .unwrap();
        let base = fingerprint(&account, &path, SecretFormat::Split);
        assert_eq!(base.len(), 16);
        assert_eq!(
            base,
            fingerprint(&account.clone(), &path, SecretFormat::Split)
        );
        let longer = AccountConfig {
            duration_seconds: 7200,
            ..account.clone()
        };
        assert_ne!(base, fingerprint(&longer, &path, SecretFormat::Split));
        assert_ne!(base, fingerprint(&account, &path, SecretFormat::Json));
        let moved = crate::template::SecretPathTemplate::default()
            .render("t", "b")
            .unwrap();
        assert_ne!(base, fingerprint(&account, &moved, SecretFormat::Split));
    }

    #[test]
    fn state_documents_round_trip_and_tolerate_missing_fields() {
        let mut team = TeamState::default();
        team.accounts.insert("a".into(), written(0, 28));
        let text = serde_json::to_string(&team).unwrap();
        assert_eq!(serde_json::from_str::<TeamState>(&text).unwrap(), team);
        let sparse: TeamState = serde_json::from_str(r#"{"accounts":{"a":{"fingerprint":"f","written_at":null,"expiration":null,"rotate_after":null,"last_error":null}}}"#).unwrap();
        assert!(!sparse.accounts["a"].incomplete);
        let bare: TeamState =
            serde_json::from_str(r#"{"accounts":{"a":{"fingerprint":"f"}}}"#).unwrap();
        assert_eq!(bare.accounts["a"].written_at, None);
    }

    #[test]
    fn stored_times_are_rfc3339_and_bad_ones_are_refused() {
        let mut account = written(0, 28);
        account.written_at = Some(at(0) + chrono::Duration::milliseconds(250));
        let text = serde_json::to_string(&account).unwrap();
        assert!(
            text.contains(r#""written_at":"2030-03-17T17:46:40.250Z""#),
            "{text}"
        );
        assert!(
            text.contains(r#""expiration":"2030-03-17T18:46:40Z""#),
            "{text}"
        );
        // What chrono's own serde support wrote, offsets included, still reads.
        let older = r#"{"fingerprint":"f","written_at":"2030-03-17T17:46:40.250+00:00","expiration":"2030-03-17T19:46:40+01:00"}"#;
        let read: AccountState = serde_json::from_str(older).unwrap();
        assert_eq!(read.written_at, account.written_at);
        assert_eq!(read.expiration, account.expiration);
        for bad in [r#""yesterday""#, "12", r#""2030-13-01T00:00:00Z""#] {
            let text = format!(r#"{{"fingerprint":"f","expiration":{bad}}}"#);
            assert!(
                serde_json::from_str::<AccountState>(&text).is_err(),
                "{bad}"
            );
        }
    }
}
