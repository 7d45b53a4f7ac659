//! Turning a tick's plan and outcomes into state documents and events, in batches.
//!
//! Every `set` on Spin's SQLite store is a commit with fsyncs while the whole component
//! waits, so a tick's commits must not grow with its accounts. Before any AWS call, one
//! batch marks every due account `incomplete` (and drops removed state); outcomes then
//! change the documents in memory, and [`Record::changed`] hands them over in one
//! batch whenever the tick flushes. A host stopped at any point leaves every account
//! either complete or marked for repair. The deployment's counters and the tick's own
//! record (see [`crate::deployment`]) ride in the same batches.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::aws::client::RequestCounts;
use crate::aws::AwsError;
use crate::deployment::{Counters, LastTick, COUNTERS_KEY, LAST_TICK_KEY};
use crate::events::{Event, RotateReason};
use crate::settings::RotationRules;
use crate::state::{AccountState, LastError, Stage, TeamState, STATE_PREFIX};
use crate::timing::Timing;

use super::execute::Outcome;
use super::plan::{Job, Plan};

/// The state documents of a tick, as they are to be stored.
pub struct Record {
    states: BTreeMap<String, TeamState>,
    /// Whether each due account was marked incomplete before this tick marked it: an
    /// account that ends up not written gets its mark back as it was.
    was_incomplete: BTreeMap<(String, String), bool>,
    changed: BTreeSet<String>,
    /// `None` when the stored counters are not this version's to change.
    counters: Option<Counters>,
    counters_changed: bool,
    /// The tick's own record, once it is over, for the last batch.
    last_tick: Option<LastTick>,
}

/// The first batch of a tick: documents to write and keys to delete.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    pub writes: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
}

impl Record {
    /// Applies what the plan decided before any AWS call: removed teams and accounts lose
    /// their state, and every due account is marked incomplete.
    pub fn begin(
        mut states: BTreeMap<String, TeamState>,
        counters: Option<Counters>,
        plan: &Plan,
    ) -> (Self, Batch) {
        let mut changed = BTreeSet::new();
        for (team, account) in &plan.removed_accounts {
            if let Some(state) = states.get_mut(team) {
                state.accounts.remove(account);
                changed.insert(team.clone());
            }
        }
        // A team whose document changed since its state was written starts its accounts'
        // backoff over.
        let rewritten: BTreeSet<&str> = plan
            .jobs
            .iter()
            .filter(|job| {
                states
                    .get(&job.team)
                    .is_some_and(|s| s.document != job.team_digest)
            })
            .map(|job| job.team.as_str())
            .collect();
        let mut was_incomplete = BTreeMap::new();
        for job in &plan.jobs {
            let state = states.entry(job.team.clone()).or_default();
            state.document.clone_from(&job.team_digest);
            let account = state.accounts.entry(job.account.name.clone()).or_default();
            if rewritten.contains(job.team.as_str()) {
                account.consecutive_failures = 0;
                account.next_attempt = None;
            }
            was_incomplete.insert(key(job), account.incomplete);
            account.incomplete = true;
            changed.insert(job.team.clone());
        }
        let mut record = Self {
            states,
            was_incomplete,
            changed,
            counters,
            counters_changed: false,
            last_tick: None,
        };
        let batch = Batch {
            writes: record.changed(),
            deletes: plan
                .removed_teams
                .iter()
                .map(|team| format!("{STATE_PREFIX}{team}"))
                .collect(),
        };
        record.stored();
        (record, batch)
    }

    /// Records one account's outcome and says what became of it.
    pub fn apply(
        &mut self,
        job: &Job,
        outcome: Outcome,
        now: DateTime<Utc>,
        rules: &RotationRules,
        fraction: f64,
    ) -> Event {
        let timing = &rules.timing;
        let sinks = rules.sink.sinks();
        let was_incomplete = self.was_incomplete.get(&key(job)).copied().unwrap_or(false);
        match &outcome {
            Outcome::Rotated { .. } => self.count(Counters::count_rotation),
            Outcome::Failed { stage, .. } => {
                self.count(|counters| counters.count_failure(stage.as_str()))
            }
            Outcome::Stopped { .. } => {}
        }
        self.changed.insert(job.team.clone());
        let state = self
            .states
            .entry(job.team.clone())
            .or_default()
            .accounts
            .entry(job.account.name.clone())
            .or_default();
        match outcome {
            Outcome::Rotated {
                expiration,
                secrets_created,
            } => {
                let rotate_after = match job.reason {
                    RotateReason::NeverWritten => {
                        timing.first_rotate_after(now, expiration, fraction)
                    }
                    _ => timing.rotate_after(now, expiration, fraction),
                };
                *state = AccountState {
                    fingerprint: job.fingerprint.clone(),
                    written_at: Some(now),
                    expiration: Some(expiration),
                    rotate_after: Some(rotate_after),
                    sinks: sinks.iter().map(|sink| (sink.name().into(), now)).collect(),
                    other: std::mem::take(&mut state.other),
                    ..AccountState::default()
                };
                rotated(job, expiration, rotate_after, secrets_created)
            }
            Outcome::Failed {
                stage,
                error,
                wrote_some,
                complete,
            } => {
                state.incomplete = was_incomplete || stage == Stage::WriteSecrets;
                state
                    .sinks
                    .extend(complete.into_iter().map(|sink| (sink.name().into(), now)));
                let failure = Failure {
                    stage,
                    error,
                    wrote_some,
                    at: now,
                };
                failure.record(job, state, timing)
            }
            Outcome::Stopped {
                writing_started, ..
            } => {
                state.incomplete = was_incomplete || writing_started;
                Event::AccountDeferred {
                    team: job.team.clone(),
                    account: job.account.name.clone(),
                    reason: job.reason,
                }
            }
        }
    }

    /// Adds the AWS requests sent since the last call to the counters.
    pub fn count_requests(&mut self, sent: RequestCounts) {
        for (service, outcome, count) in sent {
            self.count(|counters| counters.count_request(service, outcome, count));
        }
    }

    /// The tick is over: its record goes with the last batch.
    pub fn finish(&mut self, last_tick: LastTick) {
        self.last_tick = Some(last_tick);
    }

    fn count(&mut self, change: impl FnOnce(&mut Counters)) {
        if let Some(counters) = &mut self.counters {
            change(counters);
            self.counters_changed = true;
        }
    }

    /// Whether anything is waiting to be stored.
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty() || self.counters_changed || self.last_tick.is_some()
    }

    /// The documents changed since they were last stored, for one batched write.
    pub fn changed(&self) -> Vec<(String, Vec<u8>)> {
        let states = self.changed.iter().filter_map(|team| {
            let state = self.states.get(team)?;
            Some((format!("{STATE_PREFIX}{team}"), state.to_bytes()))
        });
        let counters = self
            .counters
            .as_ref()
            .filter(|_| self.counters_changed)
            .map(|counters| (COUNTERS_KEY.to_owned(), counters.to_bytes()));
        let last_tick = self
            .last_tick
            .as_ref()
            .map(|tick| (LAST_TICK_KEY.to_owned(), tick.to_bytes()));
        states.chain(counters).chain(last_tick).collect()
    }

    /// The changed documents have been stored.
    pub fn stored(&mut self) {
        self.changed.clear();
        self.counters_changed = false;
        self.last_tick = None;
    }
}

fn rotated(
    job: &Job,
    expiration: DateTime<Utc>,
    rotate_after: DateTime<Utc>,
    secrets_created: usize,
) -> Event {
    Event::AccountRotated {
        team: job.team.clone(),
        account: job.account.name.clone(),
        role_arn: job.account.role_arn.clone(),
        reason: job.reason,
        secret_path: job.path.as_str().to_owned(),
        expiration,
        rotate_after,
        secrets_created,
    }
}

/// A failed attempt of one account.
struct Failure {
    stage: Stage,
    error: AwsError,
    wrote_some: bool,
    at: DateTime<Utc>,
}

impl Failure {
    /// Counts the failure, sets the account's backoff and says so.
    ///
    /// A half-written set whose failure passes by itself (throttling, a timeout) is
    /// repaired at the very next tick, however often that fails: pipelines read a mix
    /// meanwhile. Only a repair that fails for good after rewriting some of the secrets
    /// waits, ten minutes and then its backoff, so that it does not pile up versions.
    fn record(self, job: &Job, state: &mut AccountState, timing: &Timing) -> Event {
        state.consecutive_failures += 1;
        let transient = self.error.is_retryable();
        if state.incomplete && transient {
            state.partial_write_at = None;
            state.next_attempt = None;
        } else {
            if self.wrote_some && job.reason == RotateReason::Incomplete {
                state.partial_write_at = Some(self.at);
            }
            state.next_attempt =
                timing.next_attempt(self.at, state.consecutive_failures, state.expiration);
        }
        let last_error = LastError {
            at: self.at,
            stage: self.stage,
            code: self.error.code().map(str::to_owned),
            message: self.error.to_string(),
            permanent: self.error.is_permanent(),
        };
        state.last_error = Some(last_error.clone());
        Event::AccountFailed {
            team: job.team.clone(),
            account: job.account.name.clone(),
            role_arn: job.account.role_arn.clone(),
            stage: self.stage,
            code: last_error.code,
            retryable: transient,
            permanent: last_error.permanent,
            next_attempt: state.next_attempt,
            error: last_error.message,
        }
    }
}

fn key(job: &Job) -> (String, String) {
    (job.team.clone(), job.account.name.clone())
}
