//! The tick against the shared fake AWS, an in-memory store and a hand-driven clock:
//! the engine's behaviour without the runtime, one file per concern.

mod counters;
mod failures;
mod lease;
mod rotation;
mod sinks;

use super::*;
use crate::aws::{CredentialsSource, RotatorCredentials};
use crate::clock::tests::ManualTime;
pub(super) use crate::events::RotateReason;
pub(super) use crate::fake_aws::{FakeAws, YieldOnce};
pub(super) use crate::fake_vault;
pub(super) use crate::lease::LEASE_KEY;
pub(super) use crate::roles::AllowedRoles;
pub(super) use crate::state::TeamState;
pub(super) use crate::store::tests::{MemoryStore, RacedStore};
pub(super) use crate::store::KeyValue;
pub(super) use crate::template::SecretFormat;
pub(super) use crate::vault::VaultClient;
pub(super) use std::cell::{Cell, RefCell};
pub(super) use std::collections::HashSet;

/// The client the tests run the engine with: the fake AWS as transport and its clock.
type Client<'a> = AwsClient<'a, &'a FakeAws, ManualTime>;

#[derive(Default)]
struct Events(RefCell<Vec<Event>>);

impl EventSink for Events {
    fn emit(&self, event: &Event) {
        self.0.borrow_mut().push(event.clone());
    }
}

const MINUTE: Duration = Duration::from_secs(60);

fn team(name: &str, accounts: &[(&str, &str)]) -> String {
    let accounts: Vec<String> = accounts
        .iter()
        .map(|(account, role)| {
            format!(r#"{{"name":"{account}","roleArn":"arn:aws:iam::123456789012:role/{role}"}}"#)
        })
        .collect();
    format!(r#"{{"name":"{name}","accounts":[{}]}}"#, accounts.join(","))
}

fn role(name: &str) -> String {
    format!("arn:aws:iam::123456789012:role/{name}")
}

fn two_teams() -> MemoryStore {
    MemoryStore::default()
        .with(
            "team/alpha",
            &team("alpha", &[("dev", "ci"), ("prod", "ci-prod")]),
        )
        .with("team/beta", &team("beta", &[("lab", "ci")]))
        .with("unrelated/key", "not a team")
}

fn rules(concurrency: usize) -> RotationRules {
    RotationRules {
        max_concurrency: concurrency,
        ..RotationRules::default()
    }
}

fn tick(aws: &FakeAws, store: &MemoryStore) -> (TickSummary, Vec<Event>) {
    tick_with(aws, store, &rules(8))
}

fn tick_with(
    aws: &FakeAws,
    store: &MemoryStore,
    rules: &RotationRules,
) -> (TickSummary, Vec<Event>) {
    with_engine(aws, store, rules, None)
}

/// Runs a tick, or with `team` a one-team rotation, against the fakes; returns its
/// summary and events.
fn with_engine(
    aws: &FakeAws,
    store: &MemoryStore,
    rules: &RotationRules,
    team: Option<&str>,
) -> (TickSummary, Vec<Event>) {
    let client = test_client(aws);
    let (summary, events) =
        futures::executor::block_on(run_engine(&client, aws, store, rules, "tick-test", team));
    (summary.unwrap(), events)
}

/// A tick named `tick` with any client and store, run to its end.
fn run_blocking(
    client: &Client<'_>,
    aws: &FakeAws,
    store: &impl KeyValue,
    rules: &RotationRules,
    tick: &str,
) -> (anyhow::Result<TickSummary>, Vec<Event>) {
    futures::executor::block_on(run_engine(client, aws, store, rules, tick, None))
}

/// A tick (or one team's rotation, with `team`) named `tick`, with any client and store.
async fn run_engine(
    client: &Client<'_>,
    aws: &FakeAws,
    store: &impl crate::store::KeyValue,
    rules: &RotationRules,
    tick: &str,
    team: Option<&str>,
) -> (anyhow::Result<TickSummary>, Vec<Event>) {
    let events = Events::default();
    let vault = (rules.sink.contains(crate::sink::Sink::Vault)).then(|| {
        VaultClient::new(
            aws,
            &aws.clock,
            client,
            fake_vault::settings(fake_vault::approle()),
        )
    });
    let engine = Engine {
        client,
        clock: &aws.clock,
        store,
        sink: &events,
        rules,
        tick,
        vault: vault.as_ref(),
    };
    let summary = match team {
        None => engine.run_tick().await,
        Some(team) => engine.rotate_team(team).await,
    };
    (summary, events.0.into_inner())
}

fn event_lines(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn state(store: &MemoryStore, team: &str) -> TeamState {
    TeamState::read(store.text(&format!("state/{team}")).unwrap().as_bytes()).unwrap()
}

fn rotated(events: &[Event]) -> Vec<(String, String, RotateReason)> {
    let mut rotated: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::AccountRotated {
                team,
                account,
                reason,
                ..
            } => Some((team.clone(), account.clone(), *reason)),
            _ => None,
        })
        .collect();
    rotated.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    rotated
}

/// `n` accounts in teams of ten.
fn many_accounts(n: usize) -> MemoryStore {
    let store = MemoryStore::default();
    for t in 0..n.div_ceil(10) {
        let accounts: Vec<(String, &str)> = (0..10.min(n - t * 10))
            .map(|a| (format!("a{a}"), "ci"))
            .collect();
        let refs: Vec<(&str, &str)> = accounts.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        store
            .set(
                &format!("team/t{t:03}"),
                team(&format!("t{t:03}"), &refs).as_bytes(),
            )
            .unwrap();
    }
    store.commits.set(0);
    store
}

async fn with_engine_async(
    aws: &FakeAws,
    store: &MemoryStore,
    rules: &RotationRules,
    tick: &str,
) -> (TickSummary, Vec<Event>) {
    let (summary, events) = run_engine(&test_client(aws), aws, store, rules, tick, None).await;
    (summary.unwrap(), events)
}

fn test_client(aws: &FakeAws) -> Client<'_> {
    let keys = CredentialsSource::Static(RotatorCredentials {
        access_key_id: "AKIDROTATOR".into(),
        secret_access_key: "ROTATORSECRET".into(),
        session_token: None,
    });
    client_as(aws, keys)
}

/// A client whose own credentials come from the fake's IMDS at `http://imds.test`.
fn imds_client(aws: &FakeAws) -> Client<'_> {
    let endpoint = "http://imds.test".into();
    client_as(aws, CredentialsSource::Imds { endpoint })
}

fn client_as(aws: &FakeAws, source: CredentialsSource) -> Client<'_> {
    aws.client_as(source)
}

fn failure(events: &[Event]) -> serde_json::Value {
    let failed = events
        .iter()
        .find(|e| matches!(e, Event::AccountFailed { .. }))
        .expect("an account failed");
    serde_json::to_value(failed).unwrap()
}

/// The rules of a tick into `sinks` (as `secret_sink` lists them), unpaced.
fn into(sinks: &str) -> RotationRules {
    RotationRules {
        sink: sinks.parse().unwrap(),
        ssm_writes_per_second: 0,
        ..rules(8)
    }
}
