//! The whole deployment in one read, for the routes that show all of it at once
//! (`GET /metrics`, `GET /status`): every team and account with its stored state and the
//! condition an operator cares about, the counters, the last tick and the lease.
//!
//! It reads the store as a tick does ([`load`]) and asks the plan's own checks
//! ([`admit`], [`colliding_names`]) which accounts the next tick refuses before any AWS
//! call (a role outside `allowed_role_arns`, a `duration` the rules cannot serve, a
//! secret path that cannot be rendered, colliding secret names): such accounts never get
//! a state of their own, yet they fail at every tick and only an operator can fix them.
//!
//! The admin API has no AWS time (it makes no AWS call), so "now" is the serving node's
//! wall clock: a condition such as "due" may be off by that node's skew.

use chrono::{DateTime, Utc};

use crate::deployment::{Counters, LastTick, LAST_TICK_KEY};
use crate::events::Event;
use crate::lease::{self, Holding};
use crate::settings::RotationRules;
use crate::state::{AccountState, LastError};
use crate::store::{KeyValue, StoreError};
use crate::tick::load::{load, Loaded, LoadedTeam};
use crate::tick::plan::{admit, colliding_names, foreign_state};

/// What an operator needs to know of an account at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Written, and not due yet.
    Fresh,
    /// Never written, or due: the next tick rotates it.
    Due,
    /// Its last attempt failed, or the next tick refuses it; tried at the next tick.
    Failing,
    /// It failed repeatedly and waits until `next_attempt`.
    BackingOff,
    /// A write was left half done: pipelines may read a mix until it is repaired.
    HalfWritten,
    /// Its team's document is invalid: nothing of the team is rotated.
    InvalidTeam,
}

impl Condition {
    /// As `/status` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Fresh => "fresh",
            Condition::Due => "due",
            Condition::Failing => "failing",
            Condition::BackingOff => "backing_off",
            Condition::HalfWritten => "half_written",
            Condition::InvalidTeam => "invalid_team",
        }
    }
}

/// One account as the overview shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountView {
    pub name: String,
    /// From the team's document; unknown when the document is invalid.
    pub role_arn: Option<String>,
    pub state: AccountState,
    /// Why the next tick refuses it before any AWS call, if it does.
    pub refused: Option<LastError>,
    pub condition: Condition,
}

impl AccountView {
    /// Its last attempt failed, or the next tick refuses it.
    pub fn failing(&self) -> bool {
        self.refused.is_some() || self.state.consecutive_failures > 0
    }

    /// The failure that shows: the refusal, else the stored last error.
    pub fn last_error(&self) -> Option<&LastError> {
        self.refused.as_ref().or(self.state.last_error.as_ref())
    }

    /// Only an operator can make its failure go away.
    pub fn permanent(&self) -> bool {
        self.failing() && self.last_error().is_some_and(|error| error.permanent)
    }
}

/// One team with a document under `team/`.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamView {
    pub name: String,
    pub invalid: bool,
    /// The document's accounts; for an invalid document, those its state remembers.
    pub accounts: Vec<AccountView>,
}

/// The deployment as the store shows it.
#[derive(Debug, Default)]
pub struct Overview {
    /// Teams with a valid document by name, then the invalid ones.
    pub teams: Vec<TeamView>,
    /// Zero when nothing was counted yet (or the stored counters are a newer format).
    pub counters: Counters,
    pub last_tick: Option<LastTick>,
    pub lease: Option<Holding>,
}

impl Overview {
    /// Reads everything; with `rules` (the application variables could be read) the
    /// plan's refusals are known too.
    pub fn read(
        store: &impl KeyValue,
        rules: Option<&RotationRules>,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let loaded = load(store)?;
        let last_tick = store
            .get(LAST_TICK_KEY)?
            .and_then(|bytes| LastTick::read(&bytes));
        Ok(Self {
            teams: teams(&loaded, rules, now),
            counters: loaded.counters.clone().unwrap_or_default(),
            last_tick,
            lease: lease::holding(store)?,
        })
    }
}

/// Teams with a valid document in name order, then those whose document is invalid.
fn teams(loaded: &Loaded, rules: Option<&RotationRules>, now: DateTime<Utc>) -> Vec<TeamView> {
    let mut teams: Vec<TeamView> = loaded
        .teams
        .iter()
        .map(|team| team_view(team, loaded, rules, now))
        .collect();
    for invalid in &loaded.invalid {
        let name = invalid.team();
        let remembered = loaded.states.get(name).into_iter();
        let accounts = remembered
            .flat_map(|s| &s.accounts)
            .map(|(account, state)| AccountView {
                name: account.clone(),
                role_arn: None,
                state: state.clone(),
                refused: None,
                condition: Condition::InvalidTeam,
            });
        teams.push(TeamView {
            name: name.to_owned(),
            invalid: true,
            accounts: accounts.collect(),
        });
    }
    teams
}

/// A team with a valid document, judged as the next tick's plan would: its accounts'
/// names colliding make it invalid, the rules may refuse an account.
fn team_view(
    team: &LoadedTeam,
    loaded: &Loaded,
    rules: Option<&RotationRules>,
    now: DateTime<Utc>,
) -> TeamView {
    let name = &team.document.name;
    let invalid = rules.is_some_and(|rules| !colliding_names(team, rules).is_empty());
    let states = loaded.states.get(name);
    let accounts = team.document.accounts.iter().map(|account| {
        let refusal = match rules {
            _ if invalid => None,
            _ if loaded.foreign_states.contains(name) => Some(foreign_state(name, account)),
            Some(rules) => admit(name, account, rules).err(),
            None => None,
        };
        let refused = refusal.and_then(|event| refusal_error(*event, now));
        let state = states.and_then(|s| s.accounts.get(&account.name));
        let state = state.cloned().unwrap_or_default();
        let condition = condition(&state, refused.is_some(), invalid, now);
        AccountView {
            name: account.name.clone(),
            role_arn: Some(account.role_arn.clone()),
            state,
            refused,
            condition,
        }
    });
    TeamView {
        name: name.clone(),
        invalid,
        accounts: accounts.collect(),
    }
}

/// The last error a refusal amounts to.
fn refusal_error(event: Event, now: DateTime<Utc>) -> Option<LastError> {
    match event {
        Event::AccountFailed {
            stage,
            code,
            permanent,
            error,
            ..
        } => Some(LastError {
            at: now,
            stage,
            code,
            message: error,
            permanent,
        }),
        _ => None,
    }
}

/// The condition of one account, the most pressing first.
fn condition(
    state: &AccountState,
    refused: bool,
    team_invalid: bool,
    now: DateTime<Utc>,
) -> Condition {
    if team_invalid {
        Condition::InvalidTeam
    } else if state.incomplete {
        Condition::HalfWritten
    } else if refused {
        Condition::Failing
    } else if state.next_attempt.is_some_and(|next| next > now) {
        Condition::BackingOff
    } else if state.consecutive_failures > 0 {
        Condition::Failing
    } else if state.written_at.is_none() || state.rotate_after.is_none_or(|due| due <= now) {
        Condition::Due
    } else {
        Condition::Fresh
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::tests::{at, written};
    use crate::state::{Stage, TeamState};
    use crate::store::tests::MemoryStore;

    const ROLE: &str = "arn:aws:iam::123456789012:role/ci";

    fn document(name: &str, accounts: &[(&str, &str)]) -> String {
        let accounts: Vec<String> = accounts
            .iter()
            .map(|(account, role)| format!(r#"{{"name":"{account}","roleArn":"{role}"}}"#))
            .collect();
        format!(r#"{{"name":"{name}","accounts":[{}]}}"#, accounts.join(","))
    }

    fn failed(consecutive: u32, permanent: bool) -> AccountState {
        AccountState {
            consecutive_failures: consecutive,
            last_error: Some(LastError {
                at: at(30),
                stage: Stage::AssumeRole,
                code: Some("AccessDenied".into()),
                message: "not authorized".into(),
                permanent,
            }),
            ..written(0, 28)
        }
    }

    /// A store with every condition: alpha's accounts fresh, due, failing, backing off,
    /// half written and never written; beta's document broken, its state remembered;
    /// gamma's role outside the allow-list.
    pub(crate) fn every_condition() -> MemoryStore {
        let mut alpha = TeamState::default();
        let backing_off = AccountState {
            next_attempt: Some(at(45)),
            ..failed(3, false)
        };
        let half = AccountState {
            incomplete: true,
            ..written(0, 28)
        };
        for (name, state) in [
            ("fresh", written(0, 50)),
            ("due", written(0, 28)),
            ("failing", failed(1, true)),
            ("backing-off", backing_off),
            ("half", half),
        ] {
            alpha.accounts.insert(name.into(), state);
        }
        let mut beta = TeamState::default();
        beta.accounts.insert("old".into(), written(0, 50));
        let names = ["fresh", "due", "failing", "backing-off", "half", "new"];
        let accounts: Vec<(&str, &str)> = names.iter().map(|name| (*name, ROLE)).collect();
        let outside = "arn:aws:iam::999999999999:role/admin";
        MemoryStore::default()
            .with("team/alpha", &document("alpha", &accounts))
            .with("state/alpha", &String::from_utf8(alpha.to_bytes()).unwrap())
            .with("team/beta", "{\"name\": \"beta\", ")
            .with("state/beta", &String::from_utf8(beta.to_bytes()).unwrap())
            .with("team/gamma", &document("gamma", &[("dev", outside)]))
    }

    pub(crate) fn allow_list() -> RotationRules {
        RotationRules {
            allowed_roles: crate::roles::AllowedRoles::parse("arn:aws:iam::123456789012:role/*")
                .unwrap(),
            ..RotationRules::default()
        }
    }

    #[test]
    fn every_account_gets_its_condition_and_the_plans_refusals_count_as_failing() {
        let store = every_condition();
        let overview = Overview::read(&store, Some(&allow_list()), at(40)).unwrap();
        let conditions: Vec<(&str, &str, Condition, bool)> = overview
            .teams
            .iter()
            .flat_map(|team| {
                team.accounts.iter().map(|account| {
                    let permanent = account.permanent();
                    (
                        team.name.as_str(),
                        account.name.as_str(),
                        account.condition,
                        permanent,
                    )
                })
            })
            .collect();
        use Condition::*;
        assert_eq!(
            conditions,
            [
                ("alpha", "fresh", Fresh, false),
                ("alpha", "due", Due, false),
                ("alpha", "failing", Failing, true),
                ("alpha", "backing-off", BackingOff, false),
                ("alpha", "half", HalfWritten, false),
                ("alpha", "new", Due, false),
                ("gamma", "dev", Failing, true),
                ("beta", "old", InvalidTeam, false),
            ]
        );
        let invalid: Vec<bool> = overview.teams.iter().map(|t| t.invalid).collect();
        assert_eq!(invalid, [false, false, true]);
        let gamma = &overview.teams[1].accounts[0];
        assert_eq!(gamma.last_error().unwrap().stage, Stage::RoleNotAllowed);
        assert!(gamma.failing() && gamma.state == AccountState::default());
    }

    #[test]
    fn without_the_rules_only_stored_failures_show() {
        let overview = Overview::read(&every_condition(), None, at(40)).unwrap();
        let gamma = &overview.teams[1].accounts[0];
        assert_eq!((gamma.condition, gamma.failing()), (Condition::Due, false));
        assert!(overview.teams[2].invalid);
    }
}
