//! The whole deployment in one read, for the routes that show all of it at once
//! (`GET /metrics`, `GET /status`): every team and account with its stored state and the
//! condition an operator cares about, the counters, the last tick and the lease.
//!
//! It reads the store as a tick does ([`load`]) and asks the tick's own pure [`plan`]
//! which accounts the next tick would refuse before any AWS call (a role outside
//! `allowed_role_arns`, a `duration` the rules cannot serve, a secret path that cannot
//! be rendered, colliding secret names): such accounts never get a state of their own,
//! yet they fail at every tick and only an operator can fix them.
//!
//! The admin API has no AWS time (it makes no AWS call), so "now" is the serving node's
//! wall clock: a condition such as "due" may be off by that node's skew.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::TEAM_KEY_PREFIX;
use crate::deployment::{Counters, LastTick, LAST_TICK_KEY};
use crate::events::Event;
use crate::lease::{self, Holding};
use crate::settings::RotationRules;
use crate::state::{AccountState, LastError};
use crate::store::{KeyValue, StoreError};
use crate::tick::load::{load, Loaded};
use crate::tick::plan::{plan, Scope};

/// What an operator needs to know of an account at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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
    /// By name.
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

/// What the plan refuses: the invalid teams' names and the refused accounts' errors.
#[derive(Default)]
struct Refusals {
    invalid: BTreeSet<String>,
    accounts: BTreeMap<(String, String), LastError>,
}

fn refusals(loaded: &Loaded, rules: Option<&RotationRules>, now: DateTime<Utc>) -> Refusals {
    let mut refusals = Refusals::default();
    let Some(rules) = rules else {
        refusals.invalid = loaded.invalid.iter().map(|t| t.team().to_owned()).collect();
        return refusals;
    };
    let planned = plan(loaded, rules, now, Scope::All);
    for key in &planned.invalid_teams {
        let name = key.strip_prefix(TEAM_KEY_PREFIX).unwrap_or(key);
        refusals.invalid.insert(name.to_owned());
    }
    for event in planned.events {
        if let Event::AccountFailed {
            team,
            account,
            stage,
            code,
            permanent,
            error,
            ..
        } = event
        {
            let refusal = LastError {
                at: now,
                stage,
                code,
                message: error,
                permanent,
            };
            refusals.accounts.insert((team, account), refusal);
        }
    }
    refusals
}

fn teams(loaded: &Loaded, rules: Option<&RotationRules>, now: DateTime<Utc>) -> Vec<TeamView> {
    let mut refusals = refusals(loaded, rules, now);
    let stored = |team: &str, account: &str| {
        let states = loaded.states.get(team);
        let state = states.and_then(|s| s.accounts.get(account));
        state.cloned().unwrap_or_default()
    };
    let mut teams = Vec::new();
    for team in &loaded.teams {
        let name = &team.document.name;
        let invalid = refusals.invalid.contains(name);
        let accounts = team.document.accounts.iter().map(|account| {
            let refused = refusals
                .accounts
                .remove(&(name.clone(), account.name.clone()));
            let state = stored(name, &account.name);
            let condition = condition(&state, refused.is_some(), invalid, now);
            AccountView {
                name: account.name.clone(),
                role_arn: Some(account.role_arn.clone()),
                state,
                refused,
                condition,
            }
        });
        teams.push(TeamView {
            name: name.clone(),
            invalid,
            accounts: accounts.collect(),
        });
    }
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
    teams.sort_by(|a, b| a.name.cmp(&b.name));
    teams
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
                ("beta", "old", InvalidTeam, false),
                ("gamma", "dev", Failing, true),
            ]
        );
        let invalid: Vec<bool> = overview.teams.iter().map(|t| t.invalid).collect();
        assert_eq!(invalid, [false, true, false]);
        let gamma = &overview.teams[2].accounts[0];
        assert_eq!(gamma.last_error().unwrap().stage, Stage::RoleNotAllowed);
        assert!(gamma.failing() && gamma.state == AccountState::default());
    }

    #[test]
    fn without_the_rules_only_stored_failures_show() {
        let overview = Overview::read(&every_condition(), None, at(40)).unwrap();
        let gamma = &overview.teams[2].accounts[0];
        assert_eq!((gamma.condition, gamma.failing()), (Condition::Due, false));
        assert!(overview.teams[1].invalid);
    }
}
