//! What a tick reports: one [`Event`] per outcome, logged as one JSON line each.
//!
//! No event can hold a credential value: the types they are built from do not carry any,
//! and AWS error text is scrubbed before it gets here.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Problem;
use crate::state::Stage;

/// Where events go: stdout as JSON lines in the component, a vector in tests.
pub trait EventSink {
    fn emit(&self, event: &Event);
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    TickStarted {
        teams: usize,
    },
    /// Another tick holds the lease; this one does nothing.
    LeaseBusy {
        holder: Option<String>,
        until: Option<DateTime<Utc>>,
    },
    /// The lease is no longer this tick's (another took it over, or the store could not
    /// show it): this one sends no more writes and stores nothing more; what it left half
    /// done is repaired by the next holder.
    LeaseLost {
        reason: String,
    },
    TeamInvalid {
        team: String,
        key: String,
        problems: Vec<Problem>,
    },
    /// The team's document is gone: its state is dropped, its secrets stay.
    TeamRemoved {
        team: String,
    },
    /// The account left its team's document: its state is dropped, its secrets stay.
    AccountRemoved {
        team: String,
        account: String,
    },
    AccountSkipped {
        team: String,
        account: String,
        reason: SkipReason,
        until: DateTime<Utc>,
    },
    /// Due, but the tick's budget ran out (or its lease was lost) first: it leads the
    /// next tick.
    AccountDeferred {
        team: String,
        account: String,
        reason: RotateReason,
    },
    AttemptFailed {
        team: String,
        account: String,
        operation: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// When the next attempt starts; absent when this was the last.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
        error: String,
    },
    AccountRotated {
        team: String,
        account: String,
        role_arn: String,
        reason: RotateReason,
        secret_path: String,
        expiration: DateTime<Utc>,
        rotate_after: DateTime<Utc>,
        secrets_created: usize,
    },
    AccountFailed {
        team: String,
        account: String,
        role_arn: String,
        stage: Stage,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// Whether retrying within the tick could help (throttling, timeouts, 5xx).
        retryable: bool,
        /// The failure cannot heal by itself (a denied or missing role, a refused
        /// request, a secret scheduled for deletion): an operator has to act.
        permanent: bool,
        /// When the account is tried again (backing off after repeated failures).
        #[serde(skip_serializing_if = "Option::is_none")]
        next_attempt: Option<DateTime<Utc>>,
        error: String,
    },
    /// The tick could not run at all (bad variables, key-value store unavailable).
    TickFailed {
        error: String,
    },
    TickFinished {
        accounts: usize,
        rotated: usize,
        skipped: usize,
        deferred: usize,
        failed: usize,
        invalid_teams: usize,
        /// The lease was lost during the tick: what it did not finish is left to the new
        /// holder, and the tick reports an error.
        lease_lost: bool,
        elapsed_ms: u64,
    },
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
    /// Failed repeatedly; tried again at `until`.
    BackingOff,
}

/// How loud an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Event {
    /// Failures are `error`, single failed attempts and contention `warn`, the rest `info`.
    pub fn level(&self) -> Level {
        match self {
            Event::TeamInvalid { .. } | Event::AccountFailed { .. } | Event::TickFailed { .. } => {
                Level::Error
            }
            Event::AttemptFailed { .. }
            | Event::LeaseBusy { .. }
            | Event::LeaseLost { .. }
            | Event::AccountDeferred { .. } => Level::Warn,
            _ => Level::Info,
        }
    }

    /// Whether this is the outcome of one account (what the admin API answers with).
    pub fn is_account_outcome(&self) -> bool {
        matches!(
            self,
            Event::AccountRotated { .. }
                | Event::AccountSkipped { .. }
                | Event::AccountFailed { .. }
                | Event::AccountDeferred { .. }
                | Event::TeamInvalid { .. }
        )
    }
}

/// One log line: when, how loud, which tick (so that the lines of overlapping ticks can
/// be told apart), then the event's own fields.
#[derive(Serialize)]
pub struct LogLine<'a> {
    pub time: DateTime<Utc>,
    pub level: Level,
    pub tick: &'a str,
    #[serde(flatten)]
    pub event: &'a Event,
}

impl LogLine<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("log lines hold only strings, numbers and times")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_carry_time_level_tick_and_fields() {
        let time = DateTime::parse_from_rfc3339("2030-01-01T00:00:00.250Z")
            .unwrap()
            .to_utc();
        let skipped = Event::AccountSkipped {
            team: "alpha".into(),
            account: "dev".into(),
            reason: SkipReason::Fresh,
            until: time,
        };
        let line = LogLine {
            time,
            level: skipped.level(),
            tick: "7f3a",
            event: &skipped,
        };
        assert_eq!(
            line.to_json(),
            r#"{"time":"2030-01-01T00:00:00.250Z","level":"info","tick":"7f3a","event":"account_skipped","team":"alpha","account":"dev","reason":"fresh","until":"2030-01-01T00:00:00.250Z"}"#
        );
        let lost = Event::LeaseLost {
            reason: "taken over".into(),
        };
        let line = LogLine {
            time,
            level: lost.level(),
            tick: "7f3a",
            event: &lost,
        };
        assert!(line.to_json().ends_with(
            r#""level":"warn","tick":"7f3a","event":"lease_lost","reason":"taken over"}"#
        ));
    }
}
