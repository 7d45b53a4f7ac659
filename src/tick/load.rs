//! Reading what a tick works from: every team document and every state document (one
//! listing, then one read per document: see [`crate::store`] for why not a batch).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{parse_team, InvalidTeam, TeamDocument, TEAM_KEY_PREFIX};
use crate::deployment::{Counters, COUNTERS_KEY};
use crate::state::{document_digest, TeamState, STATE_PREFIX};
use crate::store::{KeyValue, StoreError};

/// A valid team document and the digest of its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedTeam {
    pub document: TeamDocument,
    pub digest: String,
}

/// The store as a tick found it.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid teams, in key order so that logs are stable.
    pub teams: Vec<LoadedTeam>,
    pub invalid: Vec<InvalidTeam>,
    /// The state of every team that has some, valid or not.
    pub states: BTreeMap<String, TeamState>,
    /// This application's state documents of teams whose document is gone.
    pub orphaned: Vec<String>,
    /// Teams whose state key holds something this application did not write.
    pub foreign_states: BTreeSet<String>,
    /// The deployment's counters; `None` when their key holds something this version
    /// cannot read (a newer version's format), which is then left alone.
    pub counters: Option<Counters>,
}

impl Loaded {
    /// Every team name that has a document, valid or not.
    fn known(&self) -> BTreeSet<&str> {
        let valid = self.teams.iter().map(|t| t.document.name.as_str());
        valid
            .chain(self.invalid.iter().map(InvalidTeam::team))
            .collect()
    }
}

/// Reads every `team/*` and `state/*` document, and the deployment's counters.
pub fn load(store: &impl KeyValue) -> Result<Loaded, StoreError> {
    let mut keys = store.keys()?;
    keys.sort();
    let team_keys: Vec<String> = keys
        .iter()
        .filter(|key| key.starts_with(TEAM_KEY_PREFIX))
        .cloned()
        .collect();
    let state_keys: Vec<String> = keys
        .into_iter()
        .filter(|key| key.starts_with(STATE_PREFIX))
        .collect();
    let mut loaded = Loaded {
        counters: Counters::read(store.get(COUNTERS_KEY)?.as_deref()),
        ..Loaded::default()
    };
    for key in &team_keys {
        // Deleted between listing and reading: the team is gone, nothing to do.
        let Some(bytes) = store.get(key)? else {
            continue;
        };
        match parse_team(key, &bytes) {
            Ok(document) => loaded.teams.push(LoadedTeam {
                document,
                digest: document_digest(&bytes),
            }),
            Err(invalid) => loaded.invalid.push(invalid),
        }
    }
    let known: BTreeSet<String> = loaded.known().into_iter().map(str::to_owned).collect();
    for key in &state_keys {
        let Some(team) = key.strip_prefix(STATE_PREFIX) else {
            continue;
        };
        let Some(bytes) = store.get(key)? else {
            continue;
        };
        match TeamState::read(&bytes) {
            Some(state) if known.contains(team) => {
                loaded.states.insert(team.to_owned(), state);
            }
            Some(state) if state.is_marked() => loaded.orphaned.push(team.to_owned()),
            // Not ours, or not provably ours: never touched.
            Some(_) => {}
            None if known.contains(team) => {
                loaded.foreign_states.insert(team.to_owned());
            }
            None => {}
        }
    }
    Ok(loaded)
}
