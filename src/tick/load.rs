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
    /// What all this was parsed from, for [`load_again`] to compare.
    documents: Documents,
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

/// Every document a tick reads, as it read them.
#[derive(Debug, Default, PartialEq)]
struct Documents {
    counters: Option<Vec<u8>>,
    /// `team/*` and `state/*`, each in key order.
    teams: Vec<(String, Vec<u8>)>,
    states: Vec<(String, Vec<u8>)>,
}

/// Reads every `team/*` and `state/*` document, and the deployment's counters.
pub fn load(store: &impl KeyValue) -> Result<Loaded, StoreError> {
    Ok(parse(read(store)?))
}

/// Reads everything again, as [`load`] does; when nothing changed since `previous` read
/// it (no other tick wrote in between, as under a lease just taken), what `previous`
/// parsed is kept instead of parsed again: a large store costs its parsing once a tick.
pub fn load_again(store: &impl KeyValue, previous: Loaded) -> Result<Loaded, StoreError> {
    let documents = read(store)?;
    if documents == previous.documents {
        return Ok(previous);
    }
    Ok(parse(documents))
}

fn read(store: &impl KeyValue) -> Result<Documents, StoreError> {
    let mut keys = store.keys()?;
    keys.sort();
    let mut documents = Documents {
        counters: store.get(COUNTERS_KEY)?,
        ..Documents::default()
    };
    for key in keys {
        let kind = match () {
            _ if key.starts_with(TEAM_KEY_PREFIX) => &mut documents.teams,
            _ if key.starts_with(STATE_PREFIX) => &mut documents.states,
            _ => continue,
        };
        // Deleted between listing and reading: gone, nothing to do.
        if let Some(bytes) = store.get(&key)? {
            kind.push((key, bytes));
        }
    }
    Ok(documents)
}

fn parse(documents: Documents) -> Loaded {
    let mut loaded = Loaded {
        counters: Counters::read(documents.counters.as_deref()),
        ..Loaded::default()
    };
    for (key, bytes) in &documents.teams {
        match parse_team(key, bytes) {
            Ok(document) => loaded.teams.push(LoadedTeam {
                document,
                digest: document_digest(bytes),
            }),
            Err(invalid) => loaded.invalid.push(invalid),
        }
    }
    let known: BTreeSet<String> = loaded.known().into_iter().map(str::to_owned).collect();
    for (key, bytes) in &documents.states {
        let Some(team) = key.strip_prefix(STATE_PREFIX) else {
            continue;
        };
        match TeamState::read(bytes) {
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
    loaded.documents = documents;
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::MemoryStore;

    /// A second look is what a fresh look would be: the first one kept when nothing was
    /// written in between, what another tick wrote when something was.
    #[test]
    fn a_second_look_sees_what_changed_since_the_first() {
        let team = r#"{"name":"a","accounts":[{"name":"x","roleArn":"arn:aws:iam::123456789012:role/r"}]}"#;
        let store = MemoryStore::default().with("team/a", team);
        let fresh = || format!("{:?}", load(&store).unwrap());
        let again = load_again(&store, load(&store).unwrap()).unwrap();
        assert_eq!(format!("{again:?}"), fresh());
        assert!(again.states.is_empty());
        store
            .set("state/a", br#"{"writer":"concourse-sts","accounts":{}}"#)
            .unwrap();
        let changed = load_again(&store, again).unwrap();
        assert!(changed.states.contains_key("a"));
        assert_eq!(format!("{changed:?}"), fresh());
    }
}
