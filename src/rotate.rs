//! One tick: take the lease, read every team and its state, rotate what is due.
//!
//! An account is rotated when it was never written, when a write was left half done,
//! when its configuration or secret path changed, when its last attempt failed, or when
//! its credentials expire within `rotate_before_expiry`; never twice within ten minutes
//! except to repair a half-written triple. Due accounts run concurrently, most urgent
//! first, within the tick's time budget; AWS calls are retried in the standard mode and
//! Secrets Manager writes are paced. Failures stay where they happen, and every outcome is
//! one [`Event`], which the runtime logs as a JSON line.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::aws::client::{Pace, Written};
use crate::aws::sts::AssumeRole;
use crate::aws::{AssumedCredentials, AwsClient, AwsError, Transport};
use crate::clock::{chrono_duration, Clock};
use crate::config::{
    parse_team, AccountConfig, InvalidTeam, Problem, TeamDocument, TEAM_KEY_PREFIX,
};
use crate::lease::{self, Acquired};
use crate::pace::WritePacer;
use crate::retry::{with_retries, FailedAttempt, RetryPolicy};
use crate::roles::AllowedRoles;
pub use crate::state::Stage;
use crate::state::{
    self, AccountState, Decision, LastError, RotateReason, SkipReason, TeamState, Timing,
    STATE_PREFIX,
};
use crate::store::KeyValue;
use crate::template::{SecretFormat, SecretPath, SecretPathTemplate};

/// Where events go: stdout as JSON lines in the component, a vector in tests.
pub trait EventSink {
    fn emit(&self, event: &Event);
}

/// What a tick reports, one line each. None of them can hold a credential value: the
/// types they are built from do not carry any, and AWS error text is scrubbed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    TickStarted {
        teams: usize,
    },
    /// Another tick holds the lease; this one does nothing.
    LeaseBusy {
        holder: Option<String>,
        until: Option<String>,
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
        until: String,
    },
    /// Due, but the tick's budget ran out first: it leads the next tick.
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
        expiration: String,
        rotate_after: String,
        secrets_created: usize,
    },
    AccountFailed {
        team: String,
        account: String,
        role_arn: String,
        stage: Stage,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        retryable: bool,
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
        elapsed_ms: u64,
    },
}

impl Event {
    /// Failures are `error`, single failed attempts and contention `warn`, the rest `info`.
    pub fn level(&self) -> &'static str {
        match self {
            Event::TeamInvalid { .. } | Event::AccountFailed { .. } | Event::TickFailed { .. } => {
                "error"
            }
            Event::AttemptFailed { .. }
            | Event::LeaseBusy { .. }
            | Event::AccountDeferred { .. } => "warn",
            _ => "info",
        }
    }

    /// One JSON log line: time, level, then the event's own fields.
    pub fn to_log_line(&self, time: DateTime<Utc>) -> String {
        // Spliced rather than merged through a `serde_json::Map`, which would cost the
        // component a map type of its own: the event is `{"event":...}`, never empty.
        let head = format!(
            r#"{{"time":"{}","level":"{}""#,
            format_time(time),
            self.level()
        );
        match serde_json::to_string(self) {
            Ok(fields) if fields.len() > 2 => format!("{head},{}", &fields[1..]),
            _ => format!("{head}}}"),
        }
    }
}

/// The tick's result: what the cron export turns into `Ok` or an error summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickSummary {
    pub accounts: usize,
    pub rotated: usize,
    pub skipped: usize,
    pub deferred: usize,
    /// `team/account (reason)` for each failed account.
    pub failed: Vec<String>,
    /// The keys of team documents that could not be used.
    pub invalid_teams: Vec<String>,
    /// Another tick held the lease.
    pub lease_busy: bool,
}

impl TickSummary {
    /// `Ok` when nothing failed, else one line that counts and names the failures.
    pub fn into_result(self) -> Result<(), String> {
        if self.failed.is_empty() && self.invalid_teams.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::new();
        if !self.failed.is_empty() {
            parts.push(format!(
                "{} of {} accounts failed: {}",
                self.failed.len(),
                self.accounts,
                self.failed.join(", ")
            ));
        }
        if !self.invalid_teams.is_empty() {
            parts.push(format!(
                "{} invalid team documents: {}",
                self.invalid_teams.len(),
                self.invalid_teams.join(", ")
            ));
        }
        Err(parts.join("; "))
    }

    fn count(&mut self, event: &Event) {
        match event {
            Event::AccountRotated { .. } => self.rotated += 1,
            Event::AccountSkipped { .. } => self.skipped += 1,
            Event::AccountDeferred { .. } => self.deferred += 1,
            Event::AccountFailed {
                team,
                account,
                code,
                stage,
                ..
            } => {
                let reason = code.clone().unwrap_or_else(|| format!("{stage:?}"));
                self.failed.push(format!("{team}/{account} ({reason})"));
            }
            _ => {}
        }
    }
}

/// What the operator decides about every tick, from the application variables.
#[derive(Debug, Clone)]
pub struct RotationRules {
    pub template: SecretPathTemplate,
    pub secret_format: SecretFormat,
    pub allowed_roles: AllowedRoles,
    pub max_concurrency: usize,
    pub timing: Timing,
    /// The whole tick, retries included, fits in this; the rest waits for the next tick.
    pub tick_budget: Duration,
    /// Secrets Manager writes started per second at most; 0 lifts the limit.
    pub writes_per_second: u32,
    pub retry: RetryPolicy,
    /// How long one AWS request may take; no account starts closer than this to the
    /// end of the budget.
    pub request_timeout: Duration,
}

impl Default for RotationRules {
    fn default() -> Self {
        Self {
            template: SecretPathTemplate::default(),
            secret_format: SecretFormat::default(),
            allowed_roles: AllowedRoles::default(),
            max_concurrency: 32,
            timing: Timing::default(),
            tick_budget: Duration::from_secs(180),
            writes_per_second: 40,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(20),
        }
    }
}

/// How long a lease outlives the budget, for a tick that overruns it by a request.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// Everything a tick runs on.
pub struct Engine<'a, T, C, K> {
    pub client: &'a AwsClient<T>,
    pub clock: &'a C,
    pub store: &'a K,
    /// A trait object, so the cron tick and the admin API (which also collects the
    /// events) share one copy of the engine in the component.
    pub sink: &'a dyn EventSink,
    pub rules: &'a RotationRules,
}

/// Which accounts a run looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope<'a> {
    /// Every team: the cron tick.
    All,
    /// One team, rotated now even where its credentials are still fresh (an operator's
    /// request); the ten-minute rule still holds.
    Team(&'a str),
}

/// One due account, with everything it needs owned.
struct Job {
    team: String,
    account: AccountConfig,
    path: SecretPath,
    fingerprint: String,
    reason: RotateReason,
    /// Earlier expiry first; never-written accounts before all.
    urgency: Option<DateTime<Utc>>,
}

impl<T: Transport, C: Clock, K: KeyValue> Engine<'_, T, C, K> {
    /// Runs one tick, unless another holds the lease.
    pub async fn run_tick(&self) -> anyhow::Result<TickSummary> {
        self.run(Scope::All).await
    }

    /// Rotates one team now, through the same steps as a tick (lease included). Accounts
    /// written within the last ten minutes are still skipped.
    pub async fn rotate_team(&self, team: &str) -> anyhow::Result<TickSummary> {
        self.run(Scope::Team(team)).await
    }

    async fn run(&self, scope: Scope<'_>) -> anyhow::Result<TickSummary> {
        let started = self.clock.now();
        let holder = format!(
            "tick-{:016x}",
            (self.clock.random_fraction() * u64::MAX as f64) as u64
        );
        let ttl = chrono_duration(self.rules.tick_budget + LEASE_MARGIN);
        let lease = match lease::acquire(self.store, &holder, started, ttl)? {
            Acquired::Yes(lease) => lease,
            Acquired::Busy { holder, until } => {
                self.sink.emit(&Event::LeaseBusy {
                    holder,
                    until: until.map(format_time),
                });
                return Ok(TickSummary {
                    lease_busy: true,
                    ..TickSummary::default()
                });
            }
        };
        let result = self.rotate(scope, started).await;
        lease::release(self.store, lease, self.clock.now())?;
        result
    }

    async fn rotate(
        &self,
        scope: Scope<'_>,
        started: DateTime<Utc>,
    ) -> anyhow::Result<TickSummary> {
        let deadline = started + chrono_duration(self.rules.tick_budget);
        let (mut teams, mut invalid) = load_teams(self.store)?;
        if let Scope::Team(name) = scope {
            teams.retain(|team| team.name == name);
            invalid.retain(|team| team.team() == name);
        }
        self.sink.emit(&Event::TickStarted {
            teams: teams.len() + invalid.len(),
        });
        let mut summary = TickSummary::default();
        let invalid_names: Vec<String> = invalid.iter().map(|t| t.team().to_owned()).collect();
        for team in invalid {
            summary.invalid_teams.push(team.key.clone());
            self.sink.emit(&Event::TeamInvalid {
                team: team.team().to_owned(),
                key: team.key,
                problems: team.problems,
            });
        }
        let known: Vec<&str> = invalid_names
            .iter()
            .map(String::as_str)
            .chain(teams.iter().map(|team| team.name.as_str()))
            .collect();
        let states = States::load(self.store, &teams, &known, scope == Scope::All, self.sink)?;
        let mut jobs = Vec::new();
        for team in &teams {
            summary.accounts += team.accounts.len();
            for account in &team.accounts {
                match self.plan(&team.name, account, &states, started, scope != Scope::All) {
                    Ok(job) => jobs.push(job),
                    Err(event) => {
                        summary.count(&event);
                        self.sink.emit(&event);
                    }
                }
            }
        }
        jobs.sort_by_key(|job| job.urgency);
        let pacer = WritePacer::new(self.clock, self.rules.writes_per_second);
        let mut outcomes = stream::iter(jobs)
            .map(|job| self.run_job(job, deadline, &states, &pacer))
            .buffer_unordered(self.rules.max_concurrency.max(1));
        while let Some(event) = outcomes.next().await {
            summary.count(&event);
            self.sink.emit(&event);
        }
        summary.failed.sort();
        self.sink.emit(&Event::TickFinished {
            accounts: summary.accounts,
            rotated: summary.rotated,
            skipped: summary.skipped,
            deferred: summary.deferred,
            failed: summary.failed.len(),
            invalid_teams: summary.invalid_teams.len(),
            elapsed_ms: (self.clock.now() - started).num_milliseconds().max(0) as u64,
        });
        Ok(summary)
    }

    /// Decides what to do with one account: a job, or the event that says why not.
    fn plan(
        &self,
        team: &str,
        account: &AccountConfig,
        states: &States<'_, K>,
        now: DateTime<Utc>,
        requested: bool,
    ) -> Result<Job, Box<Event>> {
        let refused = |stage: Stage, code: Option<&str>, error: String| {
            Box::new(Event::AccountFailed {
                team: team.to_owned(),
                account: account.name.clone(),
                role_arn: account.role_arn.clone(),
                stage,
                code: code.map(str::to_owned),
                retryable: false,
                error,
            })
        };
        if !self.rules.allowed_roles.permits(&account.role_arn) {
            let reason = "the role ARN matches no pattern of allowed_role_arns; STS was not called";
            return Err(refused(
                Stage::RoleNotAllowed,
                Some("RoleNotAllowed"),
                reason.to_owned(),
            ));
        }
        self.rules
            .timing
            .check(account.duration_seconds)
            .map_err(|reason| refused(Stage::Config, None, reason))?;
        let path = self
            .rules
            .template
            .render(team, &account.name)
            .map_err(|reason| refused(Stage::SecretPath, None, reason))?;
        let fingerprint = state::fingerprint(account, &path, self.rules.secret_format);
        let current = states.get(team, &account.name);
        let decision = match state::decide(current.as_ref(), &fingerprint, now) {
            Decision::Skip {
                reason: SkipReason::Fresh,
                ..
            } if requested => Decision::Rotate(RotateReason::Requested),
            decision => decision,
        };
        match decision {
            Decision::Skip { reason, until } => Err(Box::new(Event::AccountSkipped {
                team: team.to_owned(),
                account: account.name.clone(),
                reason,
                until: format_time(until),
            })),
            Decision::Rotate(reason) => Ok(Job {
                team: team.to_owned(),
                account: account.clone(),
                path,
                fingerprint,
                reason,
                urgency: current.and_then(|state| state.expiration),
            }),
        }
    }

    async fn run_job(
        &self,
        job: Job,
        deadline: DateTime<Utc>,
        states: &States<'_, K>,
        pacer: &impl Pace,
    ) -> Event {
        if self.clock.now() + chrono_duration(self.rules.request_timeout) > deadline {
            return Event::AccountDeferred {
                team: job.team,
                account: job.account.name,
                reason: job.reason,
            };
        }
        let request = AssumeRole {
            role_arn: &job.account.role_arn,
            session_name: &job.team,
            duration_seconds: job.account.duration_seconds,
            external_id: job.account.external_id.as_deref(),
        };
        let assumed = with_retries(
            &self.rules.retry,
            self.clock,
            deadline,
            || self.client.assume_role(&request),
            |failed| self.attempt_failed(&job, "assume_role", None, failed),
        )
        .await;
        let credentials = match assumed {
            Ok(credentials) => credentials,
            Err(error) => return self.failed(&job, states, Stage::AssumeRole, error, false),
        };
        if let Err(error) = states.update(&job.team, &job.account.name, |state| {
            state.incomplete = true
        }) {
            return self.failed(
                &job,
                states,
                Stage::State,
                AwsError::Request(format!("{error:#}")),
                false,
            );
        }
        match self.write_all(&job, &credentials, deadline, pacer).await {
            Ok(created) => self.succeeded(&job, states, &credentials, created),
            Err(error) => self.failed(&job, states, Stage::WriteSecrets, error, true),
        }
    }

    /// Writes every secret of the account's format concurrently. On failure the error
    /// names every secret that was not written, so a partial write is visible in the log.
    async fn write_all(
        &self,
        job: &Job,
        credentials: &AssumedCredentials,
        deadline: DateTime<Utc>,
        pacer: &impl Pace,
    ) -> Result<usize, AwsError> {
        let targets = secret_targets(&job.path, self.rules.secret_format, credentials);
        let values = credentials.secret_values();
        let writes = targets.iter().map(|(name, value)| {
            with_retries(
                &self.rules.retry,
                self.clock,
                deadline,
                || {
                    let write = self.client.write_secret(
                        pacer,
                        name,
                        value.expose_secret(),
                        &job.team,
                        &job.account.name,
                    );
                    async move { write.await.map_err(|error| error.redacted(&values)) }
                },
                |failed| self.attempt_failed(job, "write_secret", Some(name), failed),
            )
        });
        let results = futures::future::join_all(writes).await;
        let mut created = 0;
        let mut not_written = Vec::new();
        let mut first_error = None;
        for ((name, _), result) in targets.iter().zip(results) {
            match result {
                Ok(Written::Created) => created += 1,
                Ok(Written::Updated) => {}
                Err(error) => {
                    not_written.push(name.as_str());
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            None => Ok(created),
            Some(error) => {
                Err(error.annotated(&format!(" [not written: {}]", not_written.join(", "))))
            }
        }
    }

    fn attempt_failed(
        &self,
        job: &Job,
        operation: &'static str,
        secret: Option<&str>,
        failed: FailedAttempt<'_>,
    ) {
        self.sink.emit(&Event::AttemptFailed {
            team: job.team.clone(),
            account: job.account.name.clone(),
            operation,
            secret: secret.map(str::to_owned),
            attempt: failed.attempt,
            code: failed.error.code().map(str::to_owned),
            retry_in_ms: failed.retry_in.map(|wait| wait.as_millis() as u64),
            error: failed.error.to_string(),
        });
    }

    fn succeeded(
        &self,
        job: &Job,
        states: &States<'_, K>,
        credentials: &AssumedCredentials,
        created: usize,
    ) -> Event {
        let now = self.clock.now();
        let rotate_after = self.rules.timing.rotate_after(
            now,
            credentials.expiration,
            self.clock.random_fraction(),
        );
        let saved = states.update(&job.team, &job.account.name, |state| {
            *state = AccountState {
                fingerprint: job.fingerprint.clone(),
                written_at: Some(now),
                expiration: Some(credentials.expiration),
                rotate_after: Some(rotate_after),
                consecutive_failures: 0,
                last_error: None,
                incomplete: false,
            };
        });
        if let Err(error) = saved {
            return self.failed(
                job,
                states,
                Stage::State,
                AwsError::Request(format!("{error:#}")),
                false,
            );
        }
        Event::AccountRotated {
            team: job.team.clone(),
            account: job.account.name.clone(),
            role_arn: job.account.role_arn.clone(),
            reason: job.reason,
            secret_path: job.path.as_str().to_owned(),
            expiration: format_time(credentials.expiration),
            rotate_after: format_time(rotate_after),
            secrets_created: created,
        }
    }

    /// Records the failure in the account's state (a failed write leaves it marked
    /// incomplete, so the next tick rewrites everything) and reports it.
    fn failed(
        &self,
        job: &Job,
        states: &States<'_, K>,
        stage: Stage,
        error: AwsError,
        incomplete: bool,
    ) -> Event {
        let at = self.clock.now();
        // A failure to save the failure is already reported by the event below.
        let _ = states.update(&job.team, &job.account.name, |state| {
            state.consecutive_failures += 1;
            state.incomplete |= incomplete;
            state.last_error = Some(LastError {
                at,
                stage,
                code: error.code().map(str::to_owned),
                message: error.to_string(),
            });
        });
        Event::AccountFailed {
            team: job.team.clone(),
            account: job.account.name.clone(),
            role_arn: job.account.role_arn.clone(),
            stage,
            code: error.code().map(str::to_owned),
            retryable: error.is_retryable(),
            error: error.to_string(),
        }
    }
}

/// The secrets of one account in the chosen format, with their values.
fn secret_targets(
    path: &SecretPath,
    format: SecretFormat,
    credentials: &AssumedCredentials,
) -> Vec<(String, SecretString)> {
    let mut targets = Vec::new();
    if format.split() {
        let [access, secret, token] = credentials.secret_values();
        for (name, value) in path.secret_names().into_iter().zip([access, secret, token]) {
            targets.push((name, SecretString::from(value.to_owned())));
        }
    }
    if format.json() {
        targets.push((path.as_str().to_owned(), credentials.json_document()));
    }
    targets
}

/// Reads and validates every `team/*` document, in key order so logs are stable.
fn load_teams(store: &impl KeyValue) -> anyhow::Result<(Vec<TeamDocument>, Vec<InvalidTeam>)> {
    let mut keys: Vec<String> = store
        .keys()?
        .into_iter()
        .filter(|key| key.starts_with(TEAM_KEY_PREFIX))
        .collect();
    keys.sort();
    let mut teams = Vec::new();
    let mut invalid = Vec::new();
    for key in keys {
        let document = match store.get(&key) {
            Ok(Some(bytes)) => parse_team(&key, &bytes),
            // Deleted between listing and reading: the team is gone, nothing to do.
            Ok(None) => continue,
            Err(error) => Err(InvalidTeam {
                key: key.clone(),
                problems: vec![Problem {
                    field: "(document)".into(),
                    reason: format!("could not be read from the key-value store: {error:#}"),
                }],
            }),
        };
        match document {
            Ok(team) => teams.push(team),
            Err(error) => invalid.push(error),
        }
    }
    Ok((teams, invalid))
}

/// The rotation state of every valid team, kept in memory for the tick and written back
/// to `state/<team>` on every change.
struct States<'k, K> {
    store: &'k K,
    teams: RefCell<BTreeMap<String, TeamState>>,
}

impl<'k, K: KeyValue> States<'k, K> {
    /// Loads the states of `teams`, dropping (and reporting once) the state of accounts
    /// that left their team and, when `prune` (a full tick), of teams that are gone. Teams
    /// in `known` but invalid keep theirs: a typo must not cost a team its history.
    fn load(
        store: &'k K,
        teams: &[TeamDocument],
        known: &[&str],
        prune: bool,
        sink: &dyn EventSink,
    ) -> anyhow::Result<Self> {
        for key in store.keys()?.into_iter().filter(|_| prune) {
            let Some(team) = key.strip_prefix(STATE_PREFIX) else {
                continue;
            };
            if !known.contains(&team) {
                store.delete(&key)?;
                sink.emit(&Event::TeamRemoved {
                    team: team.to_owned(),
                });
            }
        }
        let mut states = BTreeMap::new();
        for team in teams {
            let key = format!("{STATE_PREFIX}{}", team.name);
            // An unreadable state document means "unknown": every account rotates.
            let mut state: TeamState = store
                .get(&key)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            let before = state.accounts.len();
            state.accounts.retain(|account, _| {
                let keep = team.accounts.iter().any(|a| &a.name == account);
                if !keep {
                    sink.emit(&Event::AccountRemoved {
                        team: team.name.clone(),
                        account: account.clone(),
                    });
                }
                keep
            });
            if state.accounts.len() != before {
                store.set(&key, &serde_json::to_vec(&state)?)?;
            }
            states.insert(team.name.clone(), state);
        }
        Ok(Self {
            store,
            teams: RefCell::new(states),
        })
    }

    fn get(&self, team: &str, account: &str) -> Option<AccountState> {
        self.teams
            .borrow()
            .get(team)?
            .accounts
            .get(account)
            .cloned()
    }

    /// Changes one account's state and saves its team's document.
    fn update(
        &self,
        team: &str,
        account: &str,
        change: impl FnOnce(&mut AccountState),
    ) -> anyhow::Result<()> {
        let document = {
            let mut teams = self.teams.borrow_mut();
            let state = teams.entry(team.to_owned()).or_default();
            change(state.accounts.entry(account.to_owned()).or_default());
            serde_json::to_vec(state)?
        };
        self.store.set(&format!("{STATE_PREFIX}{team}"), &document)
    }
}

fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests;
