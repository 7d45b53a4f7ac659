//! Rotation state: what was written for each account, when it is due again, and what
//! went wrong last.
//!
//! One document per team under `state/<team>` (some Spin key-value backends cap the number
//! of keys near 1024, so not one per account). It holds no credential: expirations, times,
//! a fingerprint of the configuration, and the last error's code and message. Each
//! document names its writer, so that in a store shared with other applications this one
//! only ever deletes its own documents.
//!
//! Fields this version does not know (a newer version wrote them, during a rolling
//! upgrade) are read, kept and written back as they were: the documents are never refused
//! for them, and a newer node's bookkeeping survives an older node's tick.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::AccountConfig;
use crate::sink::SecretSinks;
use crate::template::{SecretFormat, SecretPath};

/// The key prefix of team state documents.
pub const STATE_PREFIX: &str = "state/";

/// The mark every state document carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Writer {
    #[default]
    #[serde(rename = "concourse-sts")]
    ConcourseSts,
}

/// The state of one team's accounts (read through [`TeamState::read`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TeamState {
    /// Absent only in documents written before the mark existed.
    pub writer: Option<Writer>,
    /// The digest of the team document the state was last written for: when the document
    /// changes, its accounts' failure backoff starts over.
    pub document: String,
    pub accounts: BTreeMap<String, AccountState>,
    /// Fields a newer version wrote.
    #[serde(flatten)]
    pub other: Fields,
}

/// The fields of a stored document that this version does not know, kept as they are.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// A stored document as written, before it is known to be a state document: one carries
/// the writer's mark, or (written before the mark existed) an `accounts` table. Any other
/// JSON object, such as another application's `{"their": "document"}`, is not one.
#[derive(Deserialize)]
struct Stored {
    #[serde(default)]
    writer: Option<Writer>,
    #[serde(default)]
    document: String,
    accounts: Option<BTreeMap<String, AccountState>>,
    #[serde(flatten)]
    other: Fields,
}

impl TeamState {
    /// Reads a stored document; `None` when the bytes are not a state document at all
    /// (something another application stored under this key).
    pub fn read(bytes: &[u8]) -> Option<Self> {
        let stored: Stored = serde_json::from_slice(bytes).ok()?;
        if stored.writer.is_none() && stored.accounts.is_none() {
            return None;
        }
        Some(Self {
            writer: stored.writer,
            document: stored.document,
            accounts: stored.accounts.unwrap_or_default(),
            other: stored.other,
        })
    }

    /// Whether the document carries this application's mark, the condition for deleting it.
    pub fn is_marked(&self) -> bool {
        self.writer.is_some()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let marked = TeamState {
            writer: Some(Writer::ConcourseSts),
            ..self.clone()
        };
        serde_json::to_vec(&marked).expect("state documents hold only strings, numbers and times")
    }
}

/// What the last rotations of one account left behind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    /// Of the configuration and rendered path the last complete write used.
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default)]
    pub written_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub expiration: Option<DateTime<Utc>>,
    /// When the next rotation is due: before expiry, minus a little jitter.
    #[serde(default)]
    pub rotate_after: Option<DateTime<Utc>>,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// Not before this is the account tried again (backing off after failures).
    #[serde(default)]
    pub next_attempt: Option<DateTime<Utc>>,
    /// Set before the secrets are written and cleared once all are: if it is still set,
    /// a tick died or failed half-way and the triple may be mixed.
    #[serde(default)]
    pub incomplete: bool,
    /// The last failed repair that rewrote some of the account's secrets but not all: a
    /// repair that keeps failing rewrites the siblings at most once per ten minutes.
    #[serde(default)]
    pub partial_write_at: Option<DateTime<Utc>>,
    /// When each sink last received a complete set (with several in `secret_sink`, the
    /// account is rotated only when all have), by the sink's name: a sink a newer
    /// version writes to is kept like any other.
    #[serde(default)]
    pub sinks: BTreeMap<String, DateTime<Utc>>,
    /// Fields a newer version wrote.
    #[serde(flatten)]
    pub other: Fields,
}

/// The step at which an account failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The role is outside the operator's `allowed_role_arns`.
    RoleNotAllowed,
    /// The account's `duration` does not fit the rules (`rotate_before_expiry`, or the
    /// one-hour cap on chained role sessions).
    Config,
    /// The account's secret path cannot be rendered (too long for Secrets Manager).
    SecretPath,
    AssumeRole,
    /// One or more secrets were not written; the others may have been.
    WriteSecrets,
    /// The rotation state could not be read or saved.
    State,
}

impl Stage {
    /// The stage as stored and logged (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::RoleNotAllowed => "role_not_allowed",
            Stage::Config => "config",
            Stage::SecretPath => "secret_path",
            Stage::AssumeRole => "assume_role",
            Stage::WriteSecrets => "write_secrets",
            Stage::State => "state",
        }
    }
}

/// The last failure of an account, without any credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub at: DateTime<Utc>,
    pub stage: Stage,
    pub code: Option<String>,
    pub message: String,
    /// The failure cannot heal by itself: an operator has to act.
    #[serde(default)]
    pub permanent: bool,
}

/// A short, stable digest of everything that decides what an account's secrets hold
/// and where: a change to any of it means the secrets must be rewritten.
pub fn fingerprint(
    account: &AccountConfig,
    path: &SecretPath,
    format: SecretFormat,
    sinks: &SecretSinks,
) -> String {
    digest(&[
        account.role_arn.as_bytes(),
        account.duration_seconds.to_string().as_bytes(),
        account.external_id.as_deref().unwrap_or("").as_bytes(),
        path.as_str().as_bytes(),
        format.as_str().as_bytes(),
        sinks.to_string().as_bytes(),
    ])
}

/// The digest of a stored team document, to notice that it changed.
pub fn document_digest(bytes: &[u8]) -> String {
    digest(&[bytes])
}

fn digest(parts: &[&[u8]]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part);
        digest.update([0]);
    }
    hex::encode(&digest.finalize()[..8])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `minutes` after a fixed moment.
    pub(crate) fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + minutes * 60, 0).unwrap()
    }

    /// An account written at minute `at_minute` with one-hour credentials, due again at
    /// minute `rotate_after`.
    pub(crate) fn written(at_minute: i64, rotate_after: i64) -> AccountState {
        AccountState {
            fingerprint: "f".into(),
            written_at: Some(at(at_minute)),
            expiration: Some(at(at_minute + 60)),
            rotate_after: Some(at(rotate_after)),
            ..Default::default()
        }
    }

    #[test]
    fn fingerprints_follow_what_matters() {
        let account = AccountConfig {
            name: "a".into(),
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            duration_seconds: 3600,
            external_id: None,
        };
        let path = crate::template::SecretPathTemplate::default().render("t", "a");
        let sm = &SecretSinks::default();
        let base = fingerprint(&account, &path, SecretFormat::Split, sm);
        assert_eq!(base.len(), 16);
        assert_eq!(
            base,
            fingerprint(&account.clone(), &path, SecretFormat::Split, sm)
        );
        let longer = AccountConfig {
            duration_seconds: 7200,
            ..account.clone()
        };
        assert_ne!(base, fingerprint(&longer, &path, SecretFormat::Split, sm));
        assert_ne!(base, fingerprint(&account, &path, SecretFormat::Json, sm));
        assert_ne!(
            base,
            fingerprint(
                &account,
                &path,
                SecretFormat::Split,
                &"both".parse().unwrap()
            )
        );
        let moved = crate::template::SecretPathTemplate::default().render("t", "b");
        assert_ne!(base, fingerprint(&account, &moved, SecretFormat::Split, sm));
    }

    #[test]
    fn state_documents_round_trip_marked_and_tolerate_missing_fields() {
        let mut team = TeamState::default();
        team.accounts.insert("a".into(), written(0, 28));
        let stored = TeamState::read(&team.to_bytes()).unwrap();
        assert!(stored.is_marked());
        assert_eq!(stored.accounts, team.accounts);
        let sparse = TeamState::read(br#"{"accounts":{"a":{"fingerprint":"f","written_at":null,"expiration":null,"rotate_after":null,"last_error":null}}}"#).unwrap();
        assert!(!sparse.accounts["a"].incomplete);
        assert!(!sparse.is_marked(), "written before the mark existed");
        let bare = TeamState::read(br#"{"accounts":{"a":{"fingerprint":"f"}}}"#).unwrap();
        assert!(TeamState::read(br#"{"writer":"concourse-sts"}"#).is_some());
        assert_eq!(bare.accounts["a"].written_at, None);
        for foreign in [
            &b"garbage"[..],
            b"[1]",
            br#"{"accounts":5}"#,
            br#"{"their":"document"}"#,
            b"{}",
        ] {
            assert_eq!(TeamState::read(foreign), None);
        }
    }

    /// A newer version's fields, at the document's and at an account's level, and a sink
    /// this version does not write to, are read and written back as they were.
    #[test]
    fn a_newer_versions_fields_are_kept() {
        let newer = r#"{"writer":"concourse-sts","document":"d","epoch":7,"accounts":{"a":{"fingerprint":"f","sinks":{"vault":"2030-01-01T00:00:00Z"},"vault_version":3}}}"#;
        let state = TeamState::read(newer.as_bytes()).unwrap();
        assert!(state.is_marked());
        assert_eq!(state.accounts["a"].fingerprint, "f");
        let written: serde_json::Value = serde_json::from_slice(&state.to_bytes()).unwrap();
        assert_eq!(written["epoch"], 7);
        assert_eq!(written["accounts"]["a"]["vault_version"], 3);
        assert_eq!(
            written["accounts"]["a"]["sinks"]["vault"],
            "2030-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_stages_name_is_its_serde_name() {
        use Stage::*;
        for stage in [
            RoleNotAllowed,
            Config,
            SecretPath,
            AssumeRole,
            WriteSecrets,
            State,
        ] {
            assert_eq!(serde_json::to_value(stage).unwrap(), stage.as_str());
        }
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
        // What earlier versions wrote, offsets included, still reads.
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
