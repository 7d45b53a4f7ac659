//! One tick: read every team, assume each account's role, write the three secrets.
//!
//! Failures stay where they happen. An invalid team document fails that team, a denied
//! role or a failed write fails that account; everything else still rotates. Every
//! outcome is one [`Event`], which the runtime logs as a JSON line.

use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::aws::client::Written;
use crate::aws::sts::AssumeRole;
use crate::aws::{AssumedCredentials, AwsClient, AwsError, Transport};
use crate::config::{
    parse_team, AccountConfig, InvalidTeam, Problem, TeamDocument, TEAM_KEY_PREFIX,
};
use crate::roles::AllowedRoles;
use crate::template::SecretPathTemplate;

/// Read access to the team documents in the key-value store.
pub trait TeamStore {
    fn keys(&self) -> anyhow::Result<Vec<String>>;
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;
}

/// Where events go: stdout as JSON lines in the component, a vector in tests.
pub trait EventSink {
    fn emit(&self, event: &Event);
}

/// What a tick reports, one line each. None of them can hold a credential value: the
/// types they are built from do not carry any.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    TickStarted {
        teams: usize,
    },
    TeamInvalid {
        team: String,
        key: String,
        problems: Vec<Problem>,
    },
    AccountRotated {
        team: String,
        account: String,
        role_arn: String,
        secret_path: String,
        expiration: String,
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
        failed: usize,
        invalid_teams: usize,
        elapsed_ms: u64,
    },
}

impl Event {
    /// Failures are `error`, the rest `info`: what a log pipeline filters on.
    pub fn level(&self) -> &'static str {
        match self {
            Event::TeamInvalid { .. } | Event::AccountFailed { .. } | Event::TickFailed { .. } => {
                "error"
            }
            _ => "info",
        }
    }

    /// One JSON log line: time, level, then the event's own fields.
    pub fn to_log_line(&self, time: DateTime<Utc>) -> String {
        let mut line = serde_json::Map::new();
        line.insert("time".into(), format_time(time).into());
        line.insert("level".into(), self.level().into());
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) {
            line.extend(fields);
        }
        serde_json::Value::Object(line).to_string()
    }
}

/// The step at which an account failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The role is outside the operator's `allowed_role_arns`.
    RoleNotAllowed,
    /// The account's secret path cannot be rendered (too long for Secrets Manager).
    SecretPath,
    AssumeRole,
    /// One or more of the three secrets was not written; the others may have been.
    WriteSecrets,
}

/// The tick's result: what the cron export turns into `Ok` or an error summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickSummary {
    pub accounts: usize,
    pub rotated: usize,
    /// `team/account (reason)` for each failed account.
    pub failed: Vec<String>,
    /// The keys of team documents that could not be used.
    pub invalid_teams: Vec<String>,
}

impl TickSummary {
    /// `Ok` when everything rotated, else one line that counts and names the failures.
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
}

/// What the operator decides about every tick, from the application variables.
#[derive(Debug, Clone)]
pub struct RotationRules {
    pub template: SecretPathTemplate,
    pub allowed_roles: AllowedRoles,
    pub max_concurrency: usize,
}

/// One account's work, with everything it needs owned.
struct Job {
    team: String,
    account: AccountConfig,
}

/// Runs one tick over every registered team.
pub async fn run_tick<T: Transport>(
    store: &impl TeamStore,
    client: &AwsClient<T>,
    rules: &RotationRules,
    sink: &impl EventSink,
) -> anyhow::Result<TickSummary> {
    let started = Instant::now();
    let (teams, invalid) = load_teams(store)?;
    sink.emit(&Event::TickStarted {
        teams: teams.len() + invalid.len(),
    });
    let mut summary = TickSummary::default();
    for team in invalid {
        summary.invalid_teams.push(team.key.clone());
        sink.emit(&Event::TeamInvalid {
            team: team.team().to_owned(),
            key: team.key,
            problems: team.problems,
        });
    }
    let jobs: Vec<Job> = teams
        .into_iter()
        .flat_map(|team| {
            let name = team.name;
            team.accounts.into_iter().map(move |account| Job {
                team: name.clone(),
                account,
            })
        })
        .collect();
    summary.accounts = jobs.len();
    let mut outcomes = stream::iter(jobs)
        .map(|job| rotate_account(client, rules, job))
        .buffer_unordered(rules.max_concurrency.max(1));
    while let Some(event) = outcomes.next().await {
        match &event {
            Event::AccountRotated { .. } => summary.rotated += 1,
            Event::AccountFailed {
                team,
                account,
                code,
                stage,
                ..
            } => {
                let reason = code.clone().unwrap_or_else(|| format!("{stage:?}"));
                summary.failed.push(format!("{team}/{account} ({reason})"));
            }
            _ => {}
        }
        sink.emit(&event);
    }
    summary.failed.sort();
    sink.emit(&Event::TickFinished {
        accounts: summary.accounts,
        rotated: summary.rotated,
        failed: summary.failed.len(),
        invalid_teams: summary.invalid_teams.len(),
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    Ok(summary)
}

/// Reads and validates every `team/*` document, in key order so logs are stable.
fn load_teams(store: &impl TeamStore) -> anyhow::Result<(Vec<TeamDocument>, Vec<InvalidTeam>)> {
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

async fn rotate_account<T: Transport>(
    client: &AwsClient<T>,
    rules: &RotationRules,
    job: Job,
) -> Event {
    let Job { team, account } = job;
    let refused =
        |stage: Stage, code: Option<&str>, retryable: bool, error: String| Event::AccountFailed {
            team: team.clone(),
            account: account.name.clone(),
            role_arn: account.role_arn.clone(),
            stage,
            code: code.map(str::to_owned),
            retryable,
            error,
        };
    let failed = |stage: Stage, error: AwsError| {
        refused(stage, error.code(), error.is_retryable(), error.to_string())
    };
    if !rules.allowed_roles.permits(&account.role_arn) {
        let reason = "the role ARN matches no pattern of allowed_role_arns; STS was not called";
        return refused(
            Stage::RoleNotAllowed,
            Some("RoleNotAllowed"),
            false,
            reason.to_owned(),
        );
    }
    let path = match rules.template.render(&team, &account.name) {
        Ok(path) => path,
        Err(reason) => return refused(Stage::SecretPath, None, false, reason),
    };
    let request = AssumeRole {
        role_arn: &account.role_arn,
        session_name: &team,
        duration_seconds: account.duration_seconds,
        external_id: account.external_id.as_deref(),
    };
    let credentials = match client.assume_role(&request).await {
        Ok(credentials) => credentials,
        Err(error) => return failed(Stage::AssumeRole, error),
    };
    match write_triple(
        client,
        &path.secret_names(),
        &credentials,
        &team,
        &account.name,
    )
    .await
    {
        Ok(created) => Event::AccountRotated {
            team: team.clone(),
            account: account.name.clone(),
            role_arn: account.role_arn.clone(),
            secret_path: path.as_str().to_owned(),
            expiration: format_time(credentials.expiration),
            secrets_created: created,
        },
        Err(error) => failed(Stage::WriteSecrets, error),
    }
}

/// Writes the three secrets concurrently. On failure the error names every secret that
/// was not written, so a partial triple is visible in the log.
async fn write_triple<T: Transport>(
    client: &AwsClient<T>,
    names: &[String; 3],
    credentials: &AssumedCredentials,
    team: &str,
    account: &str,
) -> Result<usize, AwsError> {
    let values = credentials.secret_values();
    let writes = names
        .iter()
        .zip(values)
        .map(|(name, value)| client.write_secret(name, value, team, account));
    let results = futures::future::join_all(writes).await;
    let mut created = 0;
    let mut failures = Vec::new();
    let mut first_error = None;
    for (name, result) in names.iter().zip(results) {
        match result {
            Ok(Written::Created) => created += 1,
            Ok(Written::Updated) => {}
            Err(error) => {
                failures.push(name.as_str());
                first_error.get_or_insert(error.redacted(&values));
            }
        }
    }
    match first_error {
        None => Ok(created),
        Some(error) => Err(describe_partial(error, &failures)),
    }
}

/// Keeps the AWS code of the first failure and says which secrets were not written.
fn describe_partial(error: AwsError, failures: &[&str]) -> AwsError {
    let note = format!(" [not written: {}]", failures.join(", "));
    match error {
        AwsError::Service {
            status,
            code,
            message,
        } => AwsError::Service {
            status,
            code,
            message: format!("{message}{note}"),
        },
        AwsError::Transport(text) => AwsError::Transport(format!("{text}{note}")),
        AwsError::Malformed { status, detail } => AwsError::Malformed {
            status,
            detail: format!("{detail}{note}"),
        },
        AwsError::Request(text) => AwsError::Request(format!("{text}{note}")),
    }
}

fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests;
