//! Planning a tick: a pure function of the team documents, their state, the rules and
//! the time, deciding for every account whether it is rotated now, and why or why not.
//!
//! An account is rotated when it was never written, when a write was left half done,
//! when its configuration or secret path changed, when its last attempt failed, or when
//! its credentials expire within `rotate_before_expiry`; never twice within ten minutes
//! except to repair a half-written triple; and not while it backs off after failures.

use chrono::{DateTime, Utc};

use crate::clock::chrono_duration;
use std::collections::BTreeMap;

use crate::config::{AccountConfig, Problem, TEAM_KEY_PREFIX};
use crate::events::{Event, RotateReason, SkipReason};
use crate::settings::RotationRules;
use crate::state::{fingerprint, AccountState, Stage, STATE_PREFIX};
use crate::template::SecretPath;
use crate::timing::MIN_REWRITE_INTERVAL;

use super::load::{Loaded, LoadedTeam};

/// Which accounts a run looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every team: the cron tick.
    All,
    /// One team, rotated now even where its credentials are still fresh or it backs off
    /// (an operator's request); the ten-minute rule still holds.
    Team(&'a str),
}

impl Scope<'_> {
    fn includes(&self, team: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Team(name) => *name == team,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Rotate(RotateReason),
    Skip {
        reason: SkipReason,
        until: DateTime<Utc>,
    },
}

/// One due account, with everything it needs owned.
#[derive(Debug, Clone)]
pub struct Job {
    pub team: String,
    /// The digest of the team's document, recorded with the outcome.
    pub team_digest: String,
    pub account: AccountConfig,
    pub path: SecretPath,
    pub fingerprint: String,
    /// The account's secrets were all written before with this configuration, so they
    /// exist (Parameter Store then overwrites first instead of creating).
    pub written_before: bool,
    pub reason: RotateReason,
    /// When the account's credentials expire, earlier first; an account without any
    /// ranks as [`crate::timing::Timing::unwritten_urgency`] says, so that a mass
    /// registration never holds back credentials about to expire.
    pub urgency: DateTime<Utc>,
}

/// What a tick is going to do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Teams looked at, invalid ones included.
    pub teams: usize,
    /// Accounts of valid teams looked at.
    pub accounts: usize,
    /// Due accounts, most urgent first.
    pub jobs: Vec<Job>,
    /// What is already decided: invalid teams, removals, skipped and refused accounts.
    pub events: Vec<Event>,
    /// The keys of invalid team documents.
    pub invalid_teams: Vec<String>,
    /// Teams and accounts whose state goes.
    pub removed_teams: Vec<String>,
    pub removed_accounts: Vec<(String, String)>,
}

impl Plan {
    /// Whether the tick has anything to write (and so needs the lease).
    pub fn has_work(&self) -> bool {
        !self.jobs.is_empty() || !self.removed_teams.is_empty() || !self.removed_accounts.is_empty()
    }
}

/// Decides every account in scope.
pub fn plan(loaded: &Loaded, rules: &RotationRules, now: DateTime<Utc>, scope: Scope) -> Plan {
    let mut plan = Plan::default();
    for invalid in loaded.invalid.iter().filter(|t| scope.includes(t.team())) {
        plan.teams += 1;
        plan.invalid_teams.push(invalid.key.clone());
        plan.events.push(Event::TeamInvalid {
            team: invalid.team().to_owned(),
            key: invalid.key.clone(),
            problems: invalid.problems.clone(),
        });
    }
    if scope == Scope::All {
        for team in &loaded.orphaned {
            plan.removed_teams.push(team.clone());
            plan.events.push(Event::TeamRemoved { team: team.clone() });
        }
    }
    for team in loaded
        .teams
        .iter()
        .filter(|t| scope.includes(&t.document.name))
    {
        plan.teams += 1;
        plan_team(&mut plan, team, loaded, rules, now, scope != Scope::All);
    }
    plan.jobs.sort_by_key(|job| job.urgency);
    plan
}

/// Whether a tick at `now` has anything to write: what [`plan`]'s
/// [`Plan::has_work`] would say, found team by team and ending at the first team with
/// work, so that confirming work in AWS time costs a few teams, not a second plan.
pub fn has_work(loaded: &Loaded, rules: &RotationRules, now: DateTime<Utc>, scope: Scope) -> bool {
    if scope == Scope::All && !loaded.orphaned.is_empty() {
        return true;
    }
    loaded
        .teams
        .iter()
        .filter(|t| scope.includes(&t.document.name))
        .any(|team| {
            let mut planned = Plan::default();
            plan_team(&mut planned, team, loaded, rules, now, scope != Scope::All);
            planned.has_work()
        })
}

fn plan_team(
    plan: &mut Plan,
    team: &LoadedTeam,
    loaded: &Loaded,
    rules: &RotationRules,
    now: DateTime<Utc>,
    requested: bool,
) {
    let name = &team.document.name;
    let state = loaded.states.get(name);
    plan.accounts += team.document.accounts.len();
    for account in state.into_iter().flat_map(|s| s.accounts.keys()) {
        if !team.document.accounts.iter().any(|a| &a.name == account) {
            plan.removed_accounts.push((name.clone(), account.clone()));
            plan.events.push(Event::AccountRemoved {
                team: name.clone(),
                account: account.clone(),
            });
        }
    }
    let collisions = colliding_names(team, rules);
    if !collisions.is_empty() {
        let key = format!("{TEAM_KEY_PREFIX}{name}");
        plan.invalid_teams.push(key.clone());
        plan.events.push(Event::TeamInvalid {
            team: name.clone(),
            key,
            problems: collisions,
        });
        return;
    }
    let reset_backoff = state.is_some_and(|s| s.document != team.digest);
    for account in &team.document.accounts {
        let current = state.and_then(|s| s.accounts.get(&account.name));
        let planned = if loaded.foreign_states.contains(name) {
            Err(foreign_state(name, account))
        } else {
            plan_account(team, account, current, rules, now, requested, reset_backoff)
        };
        match planned {
            Ok(job) => plan.jobs.push(job),
            Err(event) => plan.events.push(*event),
        }
    }
}

/// The refusal of an account whose team's state key holds a value this application did
/// not write.
pub fn foreign_state(team: &str, account: &AccountConfig) -> Box<Event> {
    let message = format!("key {STATE_PREFIX}{team} holds a value concourse-sts did not write; it is left alone, so this team cannot be rotated until that key is removed");
    refused(team, account, Stage::State, None, message)
}

/// Accounts whose secrets would have the same name as another account's, which can
/// happen only with `secret_format = both` (account `a`'s access key secret is account
/// `a-access-key`'s JSON secret): every such account is a problem of the team. Other
/// formats are not checked, which saves rendering every name of every account on every
/// plan: one account's path and suffixes never spell another's.
pub fn colliding_names(team: &LoadedTeam, rules: &RotationRules) -> Vec<Problem> {
    if !(rules.secret_format.split() && rules.secret_format.json()) {
        return Vec::new();
    }
    let mut owners: BTreeMap<String, &str> = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, account) in team.document.accounts.iter().enumerate() {
        let path = rules.template.render(&team.document.name, &account.name);
        for secret in path.names(rules.secret_format) {
            if let Some(owner) = owners.insert(secret.clone(), &account.name) {
                problems.push(Problem {
                    field: format!("accounts[{i}].name"),
                    reason: format!(
                        "with secret_format {}, its secret {secret} is also a secret of account {owner:?}; rename one of them",
                        rules.secret_format.as_str()
                    ),
                });
            }
        }
    }
    problems
}

/// A job for one account, or the event that says why not.
fn plan_account(
    team: &LoadedTeam,
    account: &AccountConfig,
    state: Option<&AccountState>,
    rules: &RotationRules,
    now: DateTime<Utc>,
    requested: bool,
    reset_backoff: bool,
) -> Result<Job, Box<Event>> {
    let name = &team.document.name;
    let path = admit(name, account, rules)?;
    let fingerprint = fingerprint(account, &path, rules.secret_format, &rules.sink);
    let written_before =
        state.is_some_and(|s| s.written_at.is_some() && s.fingerprint == fingerprint);
    let decision = match decide(state, &fingerprint, now, reset_backoff) {
        Decision::Skip {
            reason: SkipReason::Fresh | SkipReason::BackingOff,
            ..
        } if requested => Decision::Rotate(RotateReason::Requested),
        decision => decision,
    };
    match decision {
        Decision::Skip { reason, until } => Err(Box::new(Event::AccountSkipped {
            team: name.clone(),
            account: account.name.clone(),
            reason,
            until,
        })),
        Decision::Rotate(reason) => Ok(Job {
            team: name.clone(),
            team_digest: team.digest.clone(),
            account: account.clone(),
            path,
            fingerprint,
            written_before,
            reason,
            urgency: state
                .and_then(|state| state.expiration)
                .unwrap_or_else(|| rules.timing.unwritten_urgency(now)),
        }),
    }
}

/// The account's secret path, or the event that refuses the account before any AWS call
/// (its role outside `allowed_role_arns`, a `duration` the rules cannot serve, a path
/// that cannot be written): what the operator's rules, not AWS, say no to. `/metrics`
/// and `/status` show the same refusals.
pub fn admit(
    team: &str,
    account: &AccountConfig,
    rules: &RotationRules,
) -> Result<SecretPath, Box<Event>> {
    if !rules.allowed_roles.permits(&account.role_arn) {
        let reason = "the role ARN matches no pattern of allowed_role_arns; STS was not called";
        return Err(refused(
            team,
            account,
            Stage::RoleNotAllowed,
            Some("RoleNotAllowed"),
            reason.into(),
        ));
    }
    rules
        .check_duration(account.duration_seconds)
        .map_err(|reason| refused(team, account, Stage::Config, None, reason))?;
    let path = rules.template.render(team, &account.name);
    if let Some(problem) = rules.sink.path_problem(&path, rules.secret_format) {
        return Err(refused(team, account, Stage::SecretPath, None, problem));
    }
    Ok(path)
}

/// An account refused before any AWS call: nothing but an operator can fix it.
fn refused(
    team: &str,
    account: &AccountConfig,
    stage: Stage,
    code: Option<&str>,
    error: String,
) -> Box<Event> {
    Box::new(Event::AccountFailed {
        team: team.to_owned(),
        account: account.name.clone(),
        role_arn: account.role_arn.clone(),
        stage,
        code: code.map(str::to_owned),
        retryable: false,
        permanent: true,
        next_attempt: None,
        error,
    })
}

/// Decides one account. Repairing a half-written triple is the one thing that may happen
/// within ten minutes of the last write (unless the repair itself keeps failing); an
/// account backing off waits, unless its team's document changed since (`reset_backoff`).
pub fn decide(
    state: Option<&AccountState>,
    fingerprint: &str,
    now: DateTime<Utc>,
    reset_backoff: bool,
) -> Decision {
    let Some(state) = state else {
        return Decision::Rotate(RotateReason::NeverWritten);
    };
    if let Some(until) = state
        .next_attempt
        .filter(|next| now < *next && !reset_backoff)
    {
        return Decision::Skip {
            reason: SkipReason::BackingOff,
            until,
        };
    }
    if state.incomplete {
        return match state.partial_write_at {
            Some(partial) if state.consecutive_failures > 0 => {
                not_within_ten_minutes_of(partial, now, RotateReason::Incomplete)
            }
            _ => Decision::Rotate(RotateReason::Incomplete),
        };
    }
    let Some(written_at) = state.written_at else {
        return Decision::Rotate(RotateReason::NeverWritten);
    };
    if let Decision::Skip { reason, until } =
        not_within_ten_minutes_of(written_at, now, RotateReason::ConfigChanged)
    {
        return Decision::Skip { reason, until };
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

/// `reason` unless `written` was less than ten minutes before `now`.
fn not_within_ten_minutes_of(
    written: DateTime<Utc>,
    now: DateTime<Utc>,
    reason: RotateReason,
) -> Decision {
    let earliest = written + chrono_duration(MIN_REWRITE_INTERVAL);
    if now < earliest {
        return Decision::Skip {
            reason: SkipReason::WrittenRecently,
            until: earliest,
        };
    }
    Decision::Rotate(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{at, written};

    fn decided(state: &AccountState, now: i64) -> Decision {
        decide(Some(state), "f", at(now), false)
    }

    #[test]
    fn never_written_rotates() {
        assert_eq!(
            decide(None, "f", at(0), false),
            Decision::Rotate(RotateReason::NeverWritten)
        );
        let failed_once = AccountState {
            consecutive_failures: 1,
            ..Default::default()
        };
        assert_eq!(
            decided(&failed_once, 0),
            Decision::Rotate(RotateReason::NeverWritten)
        );
    }

    #[test]
    fn fresh_accounts_are_skipped_until_due() {
        let state = written(0, 28);
        assert_eq!(
            decided(&state, 20),
            Decision::Skip {
                reason: SkipReason::Fresh,
                until: at(28)
            }
        );
        assert_eq!(
            decided(&state, 28),
            Decision::Rotate(RotateReason::ExpiresSoon)
        );
    }

    #[test]
    fn nothing_but_a_repair_within_ten_minutes_of_a_write() {
        let mut state = written(0, 5);
        state.fingerprint = "old".into();
        state.consecutive_failures = 1;
        assert_eq!(
            decided(&state, 9),
            Decision::Skip {
                reason: SkipReason::WrittenRecently,
                until: at(10)
            }
        );
        state.incomplete = true;
        assert_eq!(
            decided(&state, 1),
            Decision::Rotate(RotateReason::Incomplete)
        );
    }

    #[test]
    fn changes_and_failures_rotate_once_the_interval_has_passed() {
        let state = written(0, 50);
        assert_eq!(
            decide(Some(&state), "g", at(11), false),
            Decision::Rotate(RotateReason::ConfigChanged)
        );
        let failed = AccountState {
            consecutive_failures: 1,
            ..written(0, 50)
        };
        assert_eq!(
            decided(&failed, 11),
            Decision::Rotate(RotateReason::LastAttemptFailed)
        );
    }

    #[test]
    fn an_account_backing_off_waits_unless_its_team_changed() {
        let failing = AccountState {
            consecutive_failures: 3,
            next_attempt: Some(at(30)),
            ..written(0, 50)
        };
        let backing_off = Decision::Skip {
            reason: SkipReason::BackingOff,
            until: at(30),
        };
        assert_eq!(decided(&failing, 20), backing_off);
        assert_eq!(
            decided(&failing, 30),
            Decision::Rotate(RotateReason::LastAttemptFailed)
        );
        assert_eq!(
            decide(Some(&failing), "f", at(20), true),
            Decision::Rotate(RotateReason::LastAttemptFailed),
            "a changed team document starts over"
        );
        let never_worked = AccountState {
            consecutive_failures: 4,
            next_attempt: Some(at(30)),
            ..Default::default()
        };
        assert_eq!(decided(&never_worked, 20), backing_off);
    }

    #[test]
    fn a_failing_repair_rewrites_the_siblings_at_most_every_ten_minutes() {
        let repairing = AccountState {
            incomplete: true,
            consecutive_failures: 1,
            partial_write_at: Some(at(0)),
            ..written(-60, -30)
        };
        assert_eq!(
            decided(&repairing, 9),
            Decision::Skip {
                reason: SkipReason::WrittenRecently,
                until: at(10)
            }
        );
        assert_eq!(
            decide(Some(&repairing), "f", at(9), true),
            Decision::Skip {
                reason: SkipReason::WrittenRecently,
                until: at(10)
            },
            "not even when the team changed"
        );
        assert_eq!(
            decided(&repairing, 10),
            Decision::Rotate(RotateReason::Incomplete)
        );
        let crashed = AccountState {
            incomplete: true,
            partial_write_at: None,
            ..repairing
        };
        assert_eq!(
            decided(&crashed, 1),
            Decision::Rotate(RotateReason::Incomplete),
            "a tick that died is repaired at once"
        );
    }
}
