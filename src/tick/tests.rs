//! The tick against an in-memory AWS, store and clock: the engine's behaviour without
//! the runtime.

use super::*;
use crate::aws::{
    CredentialsSource, Endpoints, HttpResponse, RotatorCredentials, RotatorIdentity, TransportError,
};
use crate::clock::tests::ManualClock;
use crate::events::RotateReason;
use crate::lease::LEASE_KEY;
use crate::roles::AllowedRoles;
use crate::state::TeamState;
use crate::store::tests::{MemoryStore, RacedStore};
use crate::template::{SecretFormat, SecretSink, Sink};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// STS and Secrets Manager in memory, with failures to order and a clock that each
/// request advances by `latency`.
struct FakeAws {
    clock: ManualClock,
    latency: Duration,
    secrets: RefCell<BTreeMap<String, String>>,
    denied_roles: HashSet<String>,
    failing_secrets: HashSet<String>,
    /// Role ARNs or secret names that fail with a retryable error this many more times.
    flaky: RefCell<HashMap<String, u32>>,
    issued: Cell<usize>,
    /// Every credential value handed out, written or not.
    issued_values: RefCell<Vec<String>>,
    in_flight: Cell<usize>,
    max_in_flight: Cell<usize>,
    calls: RefCell<Vec<String>>,
    /// Every secret write's `ClientRequestToken`, by secret name.
    tokens: RefCell<Vec<(String, String)>>,
    /// Secret writes never answer (a host about to be stopped).
    hang_writes: bool,
    /// Parameter Store's parameters by name.
    parameters: RefCell<BTreeMap<String, Parameter>>,
    /// Parameter Store refuses every write (a rotator without the SSM policy).
    ssm_denied: bool,
    imds_expirations: RefCell<Vec<DateTime<Utc>>>,
}

impl Default for FakeAws {
    fn default() -> Self {
        Self {
            clock: ManualClock::new(0.5),
            latency: Duration::ZERO,
            secrets: RefCell::default(),
            denied_roles: HashSet::new(),
            failing_secrets: HashSet::new(),
            flaky: RefCell::default(),
            issued: Cell::new(0),
            issued_values: RefCell::default(),
            in_flight: Cell::new(0),
            max_in_flight: Cell::new(0),
            calls: RefCell::default(),
            tokens: RefCell::default(),
            hang_writes: false,
            parameters: RefCell::default(),
            ssm_denied: false,
            imds_expirations: RefCell::default(),
        }
    }
}

/// A parameter: its value, version and tags.
type Parameter = (String, u64, Vec<String>);

/// Returns `Pending` once, so that concurrent requests really interleave.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// `triple` (key id, secret, token written at `path`), checked to come from one of the
/// fake's AssumeRole answers: `ASIAFAKE<n>` with `secret-<n>-…` and `token-<n>-…`.
fn one_assume_role(path: &str, triple: [String; 3]) -> [String; 3] {
    let n: usize = triple[0].trim_start_matches("ASIAFAKE").parse().unwrap();
    assert!(
        triple[1].starts_with(&format!("secret-{n}-")),
        "mixed triple at {path}: {triple:?}"
    );
    assert!(
        triple[2].starts_with(&format!("token-{n}-")),
        "mixed triple at {path}: {triple:?}"
    );
    triple
}

fn reply(status: u16, body: impl Into<String>) -> HttpResponse {
    HttpResponse::new(status, body.into())
}

impl FakeAws {
    fn answer(&self, request: &http::Request<Vec<u8>>) -> HttpResponse {
        if request.uri().path().starts_with("/latest/") {
            return self.imds(request.uri().path());
        }
        let length = request.headers()["content-length"].to_str().unwrap();
        assert_eq!(
            length,
            request.body().len().to_string(),
            "content-length must match"
        );
        assert!(request.headers().contains_key("authorization"));
        match request
            .headers()
            .get("x-amz-target")
            .map(|t| t.to_str().unwrap())
        {
            Some(target) if target.starts_with("AmazonSSM.") => {
                self.parameter_store(target, request.body())
            }
            Some(target) => self.secrets_manager(target, request.body()),
            None => self.sts(request.body()),
        }
    }

    fn flaked(&self, key: &str) -> bool {
        let mut flaky = self.flaky.borrow_mut();
        match flaky.get_mut(key) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    fn sts(&self, body: &[u8]) -> HttpResponse {
        let form: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let role = &form["RoleArn"];
        self.calls.borrow_mut().push(format!("AssumeRole {role}"));
        if self.denied_roles.contains(role) {
            return reply(
                403,
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not authorized</Message></Error></ErrorResponse>",
            );
        }
        if self.flaked(role) {
            return reply(400, "<ErrorResponse><Error><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>");
        }
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let session = &form["RoleSessionName"];
        let values = [
            format!("ASIAFAKE{n:08}"),
            format!("secret-{n}-{session}"),
            format!("token-{n}-{session}"),
        ];
        self.issued_values
            .borrow_mut()
            .extend(values.iter().cloned());
        let [key, secret, token] = values;
        let seconds: i64 = form["DurationSeconds"].parse().unwrap();
        let expiration = (self.clock.now() + chrono::Duration::seconds(seconds))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        reply(
            200,
            format!(
                "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
                 <AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
                 <SessionToken>{token}</SessionToken><Expiration>{expiration}</Expiration>\
                 </Credentials></AssumeRoleResult></AssumeRoleResponse>"
            ),
        )
    }

    /// IMDS: the rotator's credentials, expiring at the next of `imds_expirations` (real
    /// time, which the client checks them against); HTTP 500 once none is left.
    fn imds(&self, path: &str) -> HttpResponse {
        self.calls.borrow_mut().push("IMDS".into());
        let mut expirations = self.imds_expirations.borrow_mut();
        match path {
            _ if expirations.is_empty() => reply(500, "metadata unavailable"),
            "/latest/api/token" => reply(200, "token"),
            "/latest/meta-data/iam/security-credentials/" => reply(200, "rotator"),
            _ => {
                let expiration = expirations.remove(0).to_rfc3339();
                reply(
                    200,
                    format!(
                        r#"{{"AccessKeyId":"ASIAROTATOR","SecretAccessKey":"s","Token":"t","Expiration":"{expiration}"}}"#
                    ),
                )
            }
        }
    }

    /// A JSON-protocol call, recorded as "<operation> <name>": the operation from the
    /// `X-Amz-Target` after the service's `prefix`, the name from the first of
    /// `name_fields` the body has. Answers the operation, the name and the parsed body.
    fn json_call<'t>(
        &self,
        target: &'t str,
        prefix: &str,
        body: &[u8],
        name_fields: [&str; 2],
    ) -> (&'t str, String, serde_json::Value) {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let operation = target.trim_start_matches(prefix);
        let name = name_fields
            .iter()
            .find_map(|field| body.get(field))
            .and_then(|v| v.as_str())
            .unwrap()
            .to_owned();
        self.calls.borrow_mut().push(format!("{operation} {name}"));
        (operation, name, body)
    }

    /// Parameter Store as AWS answers: tags only on a create, a taken name refused
    /// without `Overwrite`, every put a new version.
    fn parameter_store(&self, target: &str, body: &[u8]) -> HttpResponse {
        let (operation, name, body) =
            self.json_call(target, "AmazonSSM.", body, ["Name", "ResourceId"]);
        if self.ssm_denied {
            return reply(
                400,
                r#"{"__type":"AccessDeniedException","message":"not authorized to perform: ssm:PutParameter"}"#,
            );
        }
        let tags: Vec<String> = body["Tags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|tag| {
                format!(
                    "{}={}",
                    tag["Key"].as_str().unwrap(),
                    tag["Value"].as_str().unwrap()
                )
            })
            .collect();
        let mut parameters = self.parameters.borrow_mut();
        if operation == "AddTagsToResource" {
            parameters.get_mut(&name).unwrap().2.extend(tags);
            return reply(200, "{}");
        }
        assert_eq!(body["Type"], "SecureString");
        let overwrite = body["Overwrite"].as_bool().unwrap();
        if overwrite && !tags.is_empty() {
            return reply(
                400,
                r#"{"__type":"ValidationException","Message":"tags and overwrite can't be used together"}"#,
            );
        }
        let value = body["Value"].as_str().unwrap().to_owned();
        let version = match parameters.get_mut(&name) {
            Some(_) if !overwrite => {
                return reply(
                    400,
                    r#"{"__type":"ParameterAlreadyExists","message":"exists","Message":"exists"}"#,
                )
            }
            Some(existing) => {
                existing.0 = value;
                existing.1 += 1;
                existing.1
            }
            None => {
                parameters.insert(name, (value, 1, tags));
                1
            }
        };
        reply(200, format!(r#"{{"Version":{version},"Tier":"Standard"}}"#))
    }

    /// The triple of parameters at a path, checked to come from one AssumeRole.
    fn consistent_parameters(&self, path: &str) -> [String; 3] {
        let parameters = self.parameters.borrow();
        let triple = ["access-key", "secret-key", "session-token"]
            .map(|suffix| parameters[&format!("{path}-{suffix}")].0.clone());
        one_assume_role(path, triple)
    }

    fn secrets_manager(&self, target: &str, body: &[u8]) -> HttpResponse {
        let (operation, name, body) =
            self.json_call(target, "secretsmanager.", body, ["SecretId", "Name"]);
        let token = body["ClientRequestToken"].as_str().unwrap_or_default();
        self.tokens
            .borrow_mut()
            .push((name.clone(), token.to_owned()));
        if self.failing_secrets.contains(&name) {
            return reply(
                400,
                r#"{"__type":"AccessDeniedException","message":"boom"}"#,
            );
        }
        if self.flaked(&name) {
            return reply(
                500,
                r#"{"__type":"InternalServiceError","message":"try again"}"#,
            );
        }
        let value = body["SecretString"].as_str().unwrap().to_owned();
        let mut secrets = self.secrets.borrow_mut();
        match (operation, secrets.contains_key(&name)) {
            ("PutSecretValue", false) => reply(
                404,
                r#"{"__type":"ResourceNotFoundException","message":"Secrets Manager can't find the specified secret."}"#,
            ),
            ("CreateSecret", true) => reply(
                400,
                r#"{"__type":"ResourceExistsException","message":"exists"}"#,
            ),
            _ => {
                let answer = format!(
                    r#"{{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf","Name":"{name}"}}"#
                );
                secrets.insert(name, value);
                reply(200, answer)
            }
        }
    }

    fn secret(&self, name: &str) -> Option<String> {
        self.secrets.borrow().get(name).cloned()
    }

    /// The triple at a path, checked to come from one AssumeRole.
    fn consistent_triple(&self, path: &str) -> [String; 3] {
        let triple = ["access-key", "secret-key", "session-token"].map(|suffix| {
            self.secret(&format!("{path}-{suffix}"))
                .unwrap_or_else(|| panic!("{path}-{suffix} missing"))
        });
        one_assume_role(path, triple)
    }

    fn count_calls(&self, prefix: &str) -> usize {
        self.calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }
}

impl Transport for &FakeAws {
    async fn send(&self, request: http::Request<Vec<u8>>) -> Result<HttpResponse, TransportError> {
        self.in_flight.set(self.in_flight.get() + 1);
        self.max_in_flight
            .set(self.max_in_flight.get().max(self.in_flight.get()));
        YieldOnce(false).await;
        if self.hang_writes && request.headers().contains_key("x-amz-target") {
            std::future::pending::<()>().await;
        }
        self.clock.advance(self.latency);
        self.in_flight.set(self.in_flight.get() - 1);
        Ok(self.answer(&request))
    }
}

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

/// A tick (or one team's rotation, with `team`) named `tick`, with any client and store.
async fn run_engine(
    client: &AwsClient<&FakeAws>,
    aws: &FakeAws,
    store: &impl crate::store::KeyValue,
    rules: &RotationRules,
    tick: &str,
    team: Option<&str>,
) -> (anyhow::Result<TickSummary>, Vec<Event>) {
    let events = Events::default();
    let engine = Engine {
        client,
        clock: &aws.clock,
        store,
        sink: &events,
        rules,
        tick,
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

#[test]
fn rotates_every_account_of_every_team_into_the_lambda_layout() {
    let aws = FakeAws::default();
    let store = two_teams();
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.clone().into_result(), Ok(()));
    assert_eq!((summary.accounts, summary.rotated), (3, 3));
    assert_eq!(aws.secrets.borrow().len(), 9);
    aws.consistent_triple("/concourse/alpha/dev");
    aws.consistent_triple("/concourse/alpha/prod");
    let [_, _, token] = aws.consistent_triple("/concourse/beta/lab");
    assert!(
        token.ends_with("-beta"),
        "the session is named after the team"
    );
    assert!(rotated(&events)
        .iter()
        .all(|(_, _, reason)| *reason == RotateReason::NeverWritten));
    let alpha = state(&store, "alpha");
    let dev = &alpha.accounts["dev"];
    assert!(!dev.incomplete && dev.consecutive_failures == 0);
    assert_eq!(dev.written_at, Some(aws.clock.now()));
    assert!(matches!(
        events.first(),
        Some(Event::TickStarted { teams: 2 })
    ));
    assert!(matches!(
        events.last(),
        Some(Event::TickFinished {
            accounts: 3,
            rotated: 3,
            failed: 0,
            invalid_teams: 0,
            ..
        })
    ));
    assert!(store.text(LEASE_KEY).is_some(), "the lease was taken");
}

#[test]
fn fresh_accounts_are_skipped_until_they_near_expiry() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    let first = aws.secrets.borrow().clone();
    aws.calls.borrow_mut().clear();

    let (summary, events) = tick(&aws, &store);
    assert_eq!((summary.rotated, summary.skipped), (0, 3));
    assert!(
        aws.calls.borrow().is_empty(),
        "a fresh tick makes no AWS call"
    );
    assert!(event_lines(&events).contains(r#""reason":"written_recently""#));

    aws.clock.advance(20 * MINUTE);
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.skipped, 3);
    assert!(event_lines(&events).contains(r#""reason":"fresh""#));
    assert!(aws.calls.borrow().is_empty());

    // One-hour credentials, 30 minutes before expiry, minus up to 5 minutes of jitter.
    aws.clock.advance(10 * MINUTE);
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 3);
    assert!(rotated(&events)
        .iter()
        .all(|(_, _, reason)| *reason == RotateReason::ExpiresSoon));
    assert_eq!(aws.count_calls("PutSecretValue"), 9);
    assert_eq!(aws.count_calls("CreateSecret"), 0);
    let second = aws.secrets.borrow();
    assert!(first.iter().all(|(name, value)| &second[name] != value));
}

#[test]
fn a_changed_configuration_rotates_once_ten_minutes_have_passed() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    tick(&aws, &store);
    store
        .set("team/alpha", team("alpha", &[("dev", "ci-new")]).as_bytes())
        .unwrap();
    aws.clock.advance(5 * MINUTE);
    let (summary, _) = tick(&aws, &store);
    assert_eq!(summary.skipped, 1, "never twice within ten minutes");
    aws.clock.advance(5 * MINUTE);
    let (_, events) = tick(&aws, &store);
    assert_eq!(
        rotated(&events),
        [("alpha".into(), "dev".into(), RotateReason::ConfigChanged)]
    );
    assert!(aws
        .calls
        .borrow()
        .iter()
        .any(|c| c == &format!("AssumeRole {}", role("ci-new"))));
}

#[test]
fn bad_teams_and_denied_roles_fail_alone_and_are_retried_next_tick() {
    let aws = FakeAws {
        denied_roles: [role("ci-prod")].into(),
        ..Default::default()
    };
    let store = two_teams()
        .with("team/broken", "{\"name\": \"broken\", ")
        .with("team/mismatch", &team("other", &[("x", "ci")]));
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 2);
    assert_eq!(summary.failed, ["alpha/prod (AccessDenied)"]);
    assert_eq!(summary.invalid_teams, ["team/broken", "team/mismatch"]);
    assert_eq!(
        summary.into_result().unwrap_err(),
        "1 of 3 accounts failed: alpha/prod (AccessDenied); 2 invalid team documents: team/broken, team/mismatch"
    );
    let failure = events
        .iter()
        .find(|e| matches!(e, Event::AccountFailed { .. }))
        .unwrap();
    let line = serde_json::to_value(failure).unwrap();
    assert_eq!(
        (
            &line["team"],
            &line["account"],
            &line["role_arn"],
            &line["stage"],
            &line["code"]
        ),
        (
            &"alpha".into(),
            &"prod".into(),
            &role("ci-prod").into(),
            &"assume_role".into(),
            &"AccessDenied".into()
        )
    );
    let prod = &state(&store, "alpha").accounts["prod"];
    assert_eq!(prod.consecutive_failures, 1);
    assert_eq!(
        prod.last_error.as_ref().unwrap().code.as_deref(),
        Some("AccessDenied")
    );

    aws.calls.borrow_mut().clear();
    let (summary, _) = tick(&aws, &store);
    assert_eq!(
        aws.calls.borrow().as_slice(),
        [format!("AssumeRole {}", role("ci-prod"))]
    );
    assert_eq!(
        state(&store, "alpha").accounts["prod"].consecutive_failures,
        2
    );
    assert_eq!(summary.skipped, 2);
}

#[test]
fn a_half_written_triple_is_rewritten_whole_by_the_next_tick() {
    let aws = FakeAws {
        failing_secrets: ["/concourse/beta/lab-session-token".to_owned()].into(),
        ..Default::default()
    };
    let store = two_teams();
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.failed, ["beta/lab (AccessDeniedException)"]);
    let line = event_lines(&events);
    assert!(line.contains(r#""stage":"write_secrets""#), "{line}");
    assert!(
        line.contains("[not written: /concourse/beta/lab-session-token]"),
        "{line}"
    );
    assert!(state(&store, "beta").accounts["lab"].incomplete);
    assert!(
        aws.secret("/concourse/beta/lab-access-key").is_some(),
        "the partial write happened"
    );

    let fixed = FakeAws {
        secrets: RefCell::new(aws.secrets.borrow().clone()),
        issued: Cell::new(aws.issued.get()),
        ..Default::default()
    };
    fixed.clock.advance(MINUTE);
    let (_, events) = tick(&fixed, &store);
    assert_eq!(
        rotated(&events),
        [("beta".into(), "lab".into(), RotateReason::Incomplete)]
    );
    fixed.consistent_triple("/concourse/beta/lab");
    assert!(!state(&store, "beta").accounts["lab"].incomplete);
}

#[test]
fn transient_failures_are_retried_with_one_line_per_attempt() {
    let aws = FakeAws::default();
    aws.flaky.borrow_mut().insert(role("ci"), 2);
    aws.flaky
        .borrow_mut()
        .insert("/concourse/alpha/dev-secret-key".into(), 1);
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 1);
    let attempts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::AttemptFailed {
                operation,
                attempt,
                retry_in_ms,
                ..
            } => Some((*operation, *attempt, retry_in_ms.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(
        attempts,
        [
            ("assume_role", 1, true),
            ("assume_role", 2, true),
            ("write_secret", 1, true)
        ]
    );
    aws.consistent_triple("/concourse/alpha/dev");

    let stubborn = FakeAws::default();
    stubborn.flaky.borrow_mut().insert(role("ci"), 10);
    let (summary, events) = tick(
        &stubborn,
        &MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")])),
    );
    assert_eq!(summary.failed, ["alpha/dev (Throttling)"]);
    assert_eq!(stubborn.count_calls("AssumeRole"), 3, "bounded attempts");
    let last = events
        .iter()
        .rev()
        .find(|e| matches!(e, Event::AttemptFailed { .. }))
        .unwrap();
    assert!(matches!(
        last,
        Event::AttemptFailed {
            attempt: 3,
            retry_in_ms: None,
            ..
        }
    ));
}

#[test]
fn what_does_not_fit_the_budget_is_deferred_and_leads_the_next_tick() {
    let aws = FakeAws {
        latency: Duration::from_secs(5),
        ..Default::default()
    };
    let accounts: Vec<(String, &str)> = (0..6).map(|i| (format!("a{i}"), "ci")).collect();
    let refs: Vec<(&str, &str)> = accounts.iter().map(|(a, r)| (a.as_str(), *r)).collect();
    let store = MemoryStore::default().with("team/wide", &team("wide", &refs));
    let tight = RotationRules {
        max_concurrency: 1,
        tick_budget: Duration::from_secs(60),
        ..RotationRules::default()
    };
    let (summary, events) = tick_with(&aws, &store, &tight);
    assert!(summary.rotated >= 1 && summary.deferred >= 1, "{summary:?}");
    assert_eq!(summary.rotated + summary.deferred, 6);
    assert!(event_lines(&events).contains(r#""event":"account_deferred""#));
    assert_eq!(summary.into_result(), Ok(()), "deferring is not failing");

    aws.calls.borrow_mut().clear();
    let (summary, events) = tick_with(&aws, &store, &tight);
    let first_rotated = rotated(&events);
    assert!(summary.rotated >= 1);
    assert!(first_rotated
        .iter()
        .all(|(_, _, reason)| *reason == RotateReason::NeverWritten));
}

#[test]
fn secrets_manager_writes_are_paced() {
    let aws = FakeAws::default();
    let store = two_teams();
    let slow = RotationRules {
        writes_per_second: 4,
        ..rules(8)
    };
    tick_with(&aws, &store, &slow);
    // Nine creations (a Put then a Create each: 18 calls) at 4 per second.
    assert_eq!(
        aws.count_calls("PutSecretValue") + aws.count_calls("CreateSecret"),
        18
    );
    assert!(
        aws.clock.slept() >= Duration::from_millis(17 * 250),
        "{:?}",
        aws.clock.slept()
    );
}

#[test]
fn the_json_format_writes_one_consistent_secret() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let json = RotationRules {
        secret_format: SecretFormat::Json,
        ..rules(8)
    };
    tick_with(&aws, &store, &json);
    assert_eq!(aws.secrets.borrow().len(), 1);
    let document: serde_json::Value =
        serde_json::from_str(&aws.secret("/concourse/alpha/dev").unwrap()).unwrap();
    let n: usize = document["access_key_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("ASIAFAKE")
        .parse()
        .unwrap();
    assert_eq!(document["secret_access_key"], format!("secret-{n}-alpha"));
    assert_eq!(document["session_token"], format!("token-{n}-alpha"));
    assert!(document["expiration"].as_str().unwrap().ends_with('Z'));

    let both = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    tick_with(
        &both,
        &store,
        &RotationRules {
            secret_format: SecretFormat::Both,
            ..rules(8)
        },
    );
    assert_eq!(both.secrets.borrow().len(), 4);
    both.consistent_triple("/concourse/alpha/dev");
}

#[test]
fn durations_that_would_force_rewrites_every_tick_are_refused_per_account() {
    let aws = FakeAws::default();
    let document = r#"{"name":"alpha","accounts":[
        {"name":"short","roleArn":"arn:aws:iam::123456789012:role/ci","duration":900},
        {"name":"ok","roleArn":"arn:aws:iam::123456789012:role/ci"}]}"#;
    let store = MemoryStore::default().with("team/alpha", document);
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 1);
    assert_eq!(summary.failed, ["alpha/short (Config)"]);
    assert!(event_lines(&events).contains("use a duration of at least 2400s"));
    assert_eq!(aws.count_calls("AssumeRole"), 1);
}

#[test]
fn removed_teams_and_accounts_lose_their_state_but_keep_their_secrets() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    store.delete("team/beta").unwrap();
    store
        .set("team/alpha", team("alpha", &[("dev", "ci")]).as_bytes())
        .unwrap();
    let (_, events) = tick(&aws, &store);
    assert!(events.contains(&Event::TeamRemoved {
        team: "beta".into()
    }));
    assert!(events.contains(&Event::AccountRemoved {
        team: "alpha".into(),
        account: "prod".into()
    }));
    assert!(store.text("state/beta").is_none());
    assert!(!state(&store, "alpha").accounts.contains_key("prod"));
    assert!(aws.secret("/concourse/beta/lab-access-key").is_some());
    let (_, again) = tick(&aws, &store);
    assert!(
        !again
            .iter()
            .any(|e| matches!(e, Event::TeamRemoved { .. } | Event::AccountRemoved { .. })),
        "said once"
    );
}

#[test]
fn an_invalid_document_keeps_its_teams_state() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    store.set("team/beta", b"{oops").unwrap();
    let (_, events) = tick(&aws, &store);
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::TeamRemoved { .. })));
    assert!(store.text("state/beta").is_some());
}

#[test]
fn a_tick_that_finds_the_lease_held_does_nothing() {
    let aws = FakeAws::default();
    let until = aws.clock.now() + chrono::Duration::minutes(3);
    let store = two_teams().with(
        LEASE_KEY,
        &format!(
            r#"{{"holder":"tick-other","expires_at":"{}"}}"#,
            until.to_rfc3339()
        ),
    );
    let (summary, events) = tick(&aws, &store);
    assert!(summary.lease_busy);
    assert_eq!(summary.into_result(), Ok(()));
    assert!(aws.calls.borrow().is_empty());
    assert_eq!(
        events,
        [Event::LeaseBusy {
            holder: Some("tick-other".into()),
            until: Some(until)
        }]
    );
    aws.clock.advance(4 * MINUTE);
    let (summary, _) = tick(&aws, &store);
    assert_eq!(summary.rotated, 3, "an expired lease is taken over");
}

#[test]
fn events_never_carry_credential_values() {
    let aws = FakeAws {
        denied_roles: [role("ci-prod")].into(),
        failing_secrets: ["/concourse/beta/lab-secret-key".to_owned()].into(),
        ..Default::default()
    };
    aws.flaky
        .borrow_mut()
        .insert("/concourse/alpha/dev-session-token".into(), 1);
    let store = two_teams();
    let (_, events) = tick(&aws, &store);
    let lines = event_lines(&events);
    let debug = format!("{events:?}");
    let states = format!("{:?}", store.entries.borrow());
    let mut values = aws.issued_values.borrow().clone();
    assert_eq!(values.len(), 6, "two accounts got credentials");
    values.extend(["ROTATORSECRET".to_owned(), "AKIDROTATOR".to_owned()]);
    for value in &values {
        assert!(
            !lines.contains(value.as_str()),
            "{value} leaked into {lines}"
        );
        assert!(
            !debug.contains(value.as_str()),
            "{value} leaked into {debug}"
        );
        assert!(
            !states.contains(value.as_str()),
            "{value} leaked into the state"
        );
    }
}

#[test]
fn accounts_run_concurrently_within_the_bound() {
    let many: Vec<(String, String)> = (0..12)
        .map(|i| (format!("a{i}"), "ci".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(a, r)| (a.as_str(), r.as_str())).collect();
    let store = MemoryStore::default().with("team/wide", &team("wide", &refs));
    let aws = FakeAws::default();
    let (summary, _) = tick_with(
        &aws,
        &store,
        &RotationRules {
            writes_per_second: 0,
            ..rules(4)
        },
    );
    assert_eq!(summary.rotated, 12);
    // Four accounts at once, each with up to three parallel writes.
    let peak = aws.max_in_flight.get();
    assert!(peak > 4 && peak <= 12, "peak in flight {peak}");
    let serial = FakeAws::default();
    let store = MemoryStore::default().with("team/wide", &team("wide", &refs));
    tick_with(
        &serial,
        &store,
        &RotationRules {
            writes_per_second: 0,
            ..rules(1)
        },
    );
    assert!(serial.max_in_flight.get() <= 3);
}

#[test]
fn roles_outside_the_allow_list_never_reach_sts() {
    let rules = RotationRules {
        allowed_roles: AllowedRoles::parse(&role("ci")).unwrap(),
        ..rules(4)
    };
    let aws = FakeAws::default();
    let (summary, events) = tick_with(&aws, &two_teams(), &rules);
    assert_eq!(summary.rotated, 2);
    assert_eq!(summary.failed, ["alpha/prod (RoleNotAllowed)"]);
    assert!(
        !aws.calls.borrow().iter().any(|c| c.contains("ci-prod")),
        "STS was called"
    );
    assert!(event_lines(&events).contains(r#""stage":"role_not_allowed""#));
}

#[test]
fn no_teams_is_a_quiet_success() {
    let (summary, events) = tick(&FakeAws::default(), &MemoryStore::default());
    assert_eq!(summary.into_result(), Ok(()));
    assert_eq!(events.len(), 2);
}

#[test]
fn rotating_one_team_touches_only_that_team_and_keeps_the_ten_minute_rule() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    aws.clock.advance(11 * MINUTE);
    aws.calls.borrow_mut().clear();
    let one_team = rules(8);
    let run = |team: &str| with_engine(&aws, &store, &one_team, Some(team));
    let (summary, events) = run("beta");
    assert_eq!(summary.rotated, 1);
    assert_eq!(
        rotated(&events),
        [("beta".into(), "lab".into(), RotateReason::Requested)]
    );
    assert!(
        aws.calls.borrow().iter().all(|c| !c.contains("alpha")),
        "only beta was touched"
    );
    let (summary, events) = run("beta");
    assert_eq!(
        summary.skipped, 1,
        "never twice within ten minutes, even on request"
    );
    assert!(event_lines(&events).contains("written_recently"));
    store.delete("team/alpha").unwrap();
    run("beta");
    assert!(
        store.text("state/alpha").is_some(),
        "a one-team run prunes no other team"
    );
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

#[test]
fn store_commits_do_not_grow_with_accounts() {
    for n in [3, 120] {
        let aws = FakeAws::default();
        let store = many_accounts(n);
        let unpaced = RotationRules {
            writes_per_second: 0,
            ..rules(32)
        };
        let (summary, _) = tick_with(&aws, &store, &unpaced);
        assert_eq!(summary.rotated, n);
        // Take the lease, mark the due accounts, store the outcomes, release.
        assert_eq!(store.commits.get(), 4, "{n} accounts");
        store.commits.set(0);
        let (summary, _) = tick_with(&aws, &store, &unpaced);
        assert_eq!(summary.skipped, n);
        assert_eq!(store.commits.get(), 0, "an idle tick writes nothing");
    }
}

#[test]
fn an_idle_tick_takes_no_lease() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    let lease = store.text(LEASE_KEY);
    let busy = format!(
        r#"{{"holder":"tick-other","expires_at":"{}"}}"#,
        (aws.clock.now() + chrono::Duration::minutes(3)).to_rfc3339()
    );
    store.set(LEASE_KEY, busy.as_bytes()).unwrap();
    let (summary, events) = tick(&aws, &store);
    assert!(!summary.lease_busy, "nothing due, so no lease was needed");
    assert_eq!(summary.skipped, 3);
    assert!(!events.iter().any(|e| matches!(e, Event::LeaseBusy { .. })));
    assert_ne!(store.text(LEASE_KEY), lease);
}

#[test]
fn two_overlapping_ticks_rotate_each_account_once() {
    let aws = FakeAws {
        latency: Duration::from_millis(300),
        ..Default::default()
    };
    let store = many_accounts(20);
    let rules = rules(4);
    let (first, second) = futures::executor::block_on(async {
        let one = async { with_engine_async(&aws, &store, &rules, "tick-one").await };
        let other = async {
            YieldOnce(false).await;
            with_engine_async(&aws, &store, &rules, "tick-other").await
        };
        futures::join!(one, other)
    });
    let busy = [&first, &second]
        .iter()
        .filter(|(summary, _)| summary.lease_busy)
        .count();
    assert_eq!(busy, 1, "one of the two ticks found the lease held");
    assert_eq!(first.0.rotated + second.0.rotated, 20);
    assert_eq!(aws.count_calls("AssumeRole"), 20, "no account twice");
    for t in 0..2 {
        for a in 0..10 {
            aws.consistent_triple(&format!("/concourse/t{t:03}/a{a}"));
        }
    }
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

#[test]
fn a_host_stopped_mid_tick_leaves_every_due_account_marked_for_repair() {
    let hung = FakeAws {
        hang_writes: true,
        ..Default::default()
    };
    let store = two_teams();
    futures::executor::block_on(async {
        let client = test_client(&hung);
        let rules = rules(8);
        let tick = run_engine(&client, &hung, &store, &rules, "tick-stopped", None);
        futures::pin_mut!(tick);
        for _ in 0..50 {
            assert!(futures::poll!(tick.as_mut()).is_pending());
        }
        // The tick is dropped here, as a stopped host drops it.
    });
    assert_eq!(
        hung.count_calls("AssumeRole"),
        3,
        "every account got that far"
    );
    for (team, account) in [("alpha", "dev"), ("alpha", "prod"), ("beta", "lab")] {
        assert!(
            state(&store, team).accounts[account].incomplete,
            "{team}/{account}"
        );
    }
    // The next tick, once the lease of the stopped one has expired, repairs all of them.
    let aws = FakeAws::default();
    aws.clock
        .advance(RotationRules::default().lease_ttl() + MINUTE);
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 3);
    assert!(rotated(&events)
        .iter()
        .all(|(_, _, reason)| *reason == RotateReason::Incomplete));
}

#[test]
fn a_tick_whose_lease_is_taken_over_writes_no_more() {
    let aws = FakeAws::default();
    // Another tick takes the lease over at this one's fourth read of it: the first, before
    // the lease exists; the read-back; the first account's fence; then the takeover.
    let reads = Cell::new(0);
    let store = RacedStore {
        inner: many_accounts(5),
        before_get: Some(Box::new(move |inner, key| {
            if key == LEASE_KEY {
                reads.set(reads.get() + 1);
                if reads.get() == 4 {
                    let other = r#"{"holder":"tick-other","expires_at":"2099-01-01T00:00:00Z"}"#;
                    inner.set(LEASE_KEY, other.as_bytes()).unwrap();
                }
            }
        })),
        ..RacedStore::default()
    };
    let client = test_client(&aws);
    let (summary, events) = futures::executor::block_on(run_engine(
        &client,
        &aws,
        &store,
        &rules(1),
        "tick-test",
        None,
    ));
    let summary = summary.unwrap();
    assert_eq!(summary.rotated, 1);
    assert_eq!(summary.deferred, 4);
    assert!(events.contains(&Event::LeaseLost {
        reason: "the lease was taken over by tick-other".into()
    }));
    assert_eq!(
        aws.count_calls("PutSecretValue"),
        3,
        "one account's secrets only"
    );
    assert_eq!(
        aws.count_calls("AssumeRole"),
        2,
        "nothing started once the lease was lost"
    );
    let kept = state(&store.inner, "t000");
    assert!(
        kept.accounts
            .values()
            .all(|a| a.incomplete && a.written_at.is_none()),
        "a lost tick records no outcome: {kept:?}"
    );
    assert!(store.inner.text(LEASE_KEY).unwrap().contains("tick-other"));
}

fn test_client(aws: &FakeAws) -> AwsClient<&FakeAws> {
    let keys = CredentialsSource::Static(RotatorCredentials {
        access_key_id: "AKIDROTATOR".into(),
        secret_access_key: "ROTATORSECRET".into(),
        session_token: None,
    });
    client_as(aws, keys)
}

/// A client whose own credentials come from the fake's IMDS at `http://imds.test`.
fn imds_client(aws: &FakeAws) -> AwsClient<&FakeAws> {
    let endpoint = "http://imds.test".into();
    client_as(aws, CredentialsSource::Imds { endpoint })
}

fn client_as(aws: &FakeAws, source: CredentialsSource) -> AwsClient<&FakeAws> {
    let identity = RotatorIdentity {
        source,
        role_arn: None,
    };
    AwsClient::new(
        aws,
        identity,
        "us-east-1",
        Endpoints {
            sts: "http://sts.test".into(),
            secrets_manager: "http://sm.test".into(),
            ssm: "http://ssm.test".into(),
        },
    )
}

fn failure(events: &[Event]) -> serde_json::Value {
    let failed = events
        .iter()
        .find(|e| matches!(e, Event::AccountFailed { .. }))
        .expect("an account failed");
    serde_json::to_value(failed).unwrap()
}

#[test]
fn a_failing_account_backs_off_and_says_whether_it_can_heal() {
    let aws = FakeAws {
        denied_roles: [role("ci")].into(),
        ..Default::default()
    };
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let (_, events) = tick(&aws, &store);
    let line = failure(&events);
    assert_eq!(line["permanent"], true, "AccessDenied needs an operator");
    assert!(
        line.get("next_attempt").is_none(),
        "the first retry is the next tick"
    );

    aws.clock.advance(MINUTE);
    let (_, events) = tick(&aws, &store);
    let next = aws.clock.now() + chrono::Duration::minutes(5);
    assert_eq!(failure(&events)["next_attempt"], serde_json::json!(next));
    assert_eq!(
        state(&store, "alpha").accounts["dev"].next_attempt,
        Some(next)
    );

    aws.calls.borrow_mut().clear();
    aws.clock.advance(MINUTE);
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.skipped, 1);
    assert!(event_lines(&events).contains(r#""reason":"backing_off""#));
    assert!(aws.calls.borrow().is_empty(), "backing off calls nothing");

    aws.clock.advance(4 * MINUTE);
    tick(&aws, &store);
    assert_eq!(
        aws.count_calls("AssumeRole"),
        1,
        "tried again once the wait is over"
    );
    let third = state(&store, "alpha").accounts["dev"].clone();
    assert_eq!(third.consecutive_failures, 3);
    assert_eq!(
        third.next_attempt,
        Some(aws.clock.now() + chrono::Duration::minutes(10))
    );

    // A changed team document starts over: tried at once...
    store
        .set(
            "team/alpha",
            team("alpha", &[("dev", "ci"), ("new", "ci-new")]).as_bytes(),
        )
        .unwrap();
    aws.calls.borrow_mut().clear();
    let (_, events) = tick(&aws, &store);
    assert!(aws
        .calls
        .borrow()
        .contains(&format!("AssumeRole {}", role("ci"))));
    // ... and a failure then is the first again: retried at the next tick.
    assert!(failure(&events).get("next_attempt").is_none());
    assert_eq!(
        state(&store, "alpha").accounts["dev"].consecutive_failures,
        1
    );
}

#[test]
fn throttling_that_outlasts_the_retries_is_not_permanent() {
    let aws = FakeAws::default();
    aws.flaky.borrow_mut().insert(role("ci"), 10);
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let (_, events) = tick(&aws, &store);
    let line = failure(&events);
    assert_eq!(
        (&line["retryable"], &line["permanent"]),
        (&true.into(), &false.into())
    );
}

#[test]
fn a_repair_that_keeps_failing_rewrites_the_siblings_at_most_every_ten_minutes() {
    let aws = FakeAws {
        failing_secrets: ["/concourse/beta/lab-session-token".to_owned()].into(),
        ..Default::default()
    };
    let store = MemoryStore::default().with("team/beta", &team("beta", &[("lab", "ci")]));
    let writes_of_access_key = || aws.count_calls("PutSecretValue /concourse/beta/lab-access-key");
    tick(&aws, &store);
    aws.clock.advance(MINUTE);
    let (_, events) = tick(&aws, &store);
    assert_eq!(rotated(&events), [], "the first repair fails too");
    assert_eq!(
        writes_of_access_key(),
        2,
        "the first write and the first repair"
    );
    for _ in 0..9 {
        aws.clock.advance(MINUTE);
        tick(&aws, &store);
    }
    assert_eq!(writes_of_access_key(), 2, "nothing for ten minutes");
    aws.clock.advance(MINUTE);
    tick(&aws, &store);
    assert_eq!(writes_of_access_key(), 3);
}

#[test]
fn every_write_carries_a_request_token_that_its_retries_repeat() {
    let aws = FakeAws::default();
    aws.flaky
        .borrow_mut()
        .insert("/concourse/alpha/dev-secret-key".into(), 1);
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    tick(&aws, &store);
    let tokens = aws.tokens.borrow();
    assert!(tokens.iter().all(|(_, token)| token.len() == 36));
    let of = |name: &str| -> HashSet<String> {
        tokens
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .collect()
    };
    let secret_key = of("/concourse/alpha/dev-secret-key");
    assert_eq!(
        secret_key.len(),
        1,
        "the retry and the create reuse the token"
    );
    assert_ne!(secret_key, of("/concourse/alpha/dev-access-key"));
    assert!(
        tokens.len() >= 7,
        "put, create, and the retried put: {tokens:?}"
    );
}

#[test]
fn a_shared_store_keeps_what_others_wrote() {
    let aws = FakeAws::default();
    let foreign_state = r#"{"their":"document"}"#;
    let store = two_teams()
        .with("state/gone-but-not-ours", foreign_state)
        .with("state/beta", "not json at all");
    let (summary, events) = tick(&aws, &store);
    assert_eq!(
        store.text("state/gone-but-not-ours").as_deref(),
        Some(foreign_state)
    );
    assert_eq!(store.text("state/beta").as_deref(), Some("not json at all"));
    assert_eq!(summary.failed, ["beta/lab (State)"]);
    assert!(
        event_lines(&events).contains("key state/beta holds a value concourse-sts did not write")
    );
    assert_eq!(summary.rotated, 2, "the other team is not held up");
    assert_eq!(store.text("unrelated/key").as_deref(), Some("not a team"));

    let foreign_lease = MemoryStore::default()
        .with("team/alpha", &team("alpha", &[("dev", "ci")]))
        .with(LEASE_KEY, "someone else's");
    let client = test_client(&aws);
    let (result, _) = futures::executor::block_on(run_engine(
        &client,
        &aws,
        &foreign_lease,
        &rules(4),
        "tick-test",
        None,
    ));
    let error = result.unwrap_err();
    assert!(
        format!("{error:#}").contains("lease/rotation holds a value concourse-sts did not write")
    );
    assert_eq!(
        foreign_lease.text(LEASE_KEY).as_deref(),
        Some("someone else's")
    );
}

#[test]
fn accounts_whose_secrets_would_collide_make_their_team_invalid() {
    let aws = FakeAws::default();
    let store = MemoryStore::default()
        .with(
            "team/alpha",
            &team("alpha", &[("a", "ci"), ("a-access-key", "ci")]),
        )
        .with("team/beta", &team("beta", &[("lab", "ci")]));
    let both = RotationRules {
        secret_format: SecretFormat::Both,
        ..rules(4)
    };
    let (summary, events) = tick_with(&aws, &store, &both);
    assert_eq!(summary.invalid_teams, ["team/alpha"]);
    assert_eq!(summary.rotated, 1, "the other team goes on");
    assert!(event_lines(&events).contains(
        r#""field":"accounts[1].name","reason":"with secret_format both, its secret /concourse/alpha/a-access-key is also a secret of account \"a\"; rename one of them""#
    ), "{}", event_lines(&events));
    assert!(
        !aws.calls.borrow().iter().any(|c| c.contains("alpha")),
        "nothing of alpha written"
    );
    let fresh = MemoryStore::default().with(
        "team/alpha",
        &team("alpha", &[("a", "ci"), ("a-access-key", "ci")]),
    );
    let (summary, _) = tick_with(&FakeAws::default(), &fresh, &rules(4));
    assert_eq!(summary.rotated, 2, "with one format the names are distinct");
}

#[test]
fn without_the_rotators_credentials_the_tick_fails_before_any_aws_call() {
    let aws = FakeAws::default();
    let store = two_teams();
    let client = imds_client(&aws);
    let (result, _) = futures::executor::block_on(run_engine(
        &client,
        &aws,
        &store,
        &rules(4),
        "tick-test",
        None,
    ));
    let error = result.unwrap_err();
    assert_eq!(
        format!("{error:#}"),
        "getting the rotator's credentials from IMDS at http://imds.test: asking for the session token: HTTP 500"
    );
    assert_eq!(aws.calls.borrow().as_slice(), ["IMDS"], "no AWS call");
    assert!(store.text(LEASE_KEY).is_none(), "no lease taken");
}

fn into(sink: SecretSink) -> RotationRules {
    RotationRules {
        sink,
        ssm_writes_per_second: 0,
        ..rules(8)
    }
}

#[test]
fn parameter_store_gets_tagged_parameters_then_overwrites_them() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let ssm = into(SecretSink::Ssm);
    let (summary, events) = tick_with(&aws, &store, &ssm);
    assert_eq!(summary.rotated, 1, "{}", event_lines(&events));
    assert!(
        aws.secrets.borrow().is_empty(),
        "nothing in Secrets Manager"
    );
    let first = aws.consistent_parameters("/concourse/alpha/dev");
    assert_eq!(aws.count_calls("PutParameter"), 3, "one tagged create each");
    let tags = aws.parameters.borrow()["/concourse/alpha/dev-session-token"]
        .2
        .clone();
    assert_eq!(
        tags,
        ["concourse-sts:team=alpha", "concourse-sts:account=dev"]
    );
    let dev = &state(&store, "alpha").accounts["dev"];
    assert_eq!(
        dev.sinks.keys().copied().collect::<Vec<_>>(),
        [Sink::ParameterStore]
    );

    aws.calls.borrow_mut().clear();
    aws.clock.advance(40 * MINUTE);
    let (summary, _) = tick_with(&aws, &store, &ssm);
    assert_eq!(summary.rotated, 1);
    assert_eq!(aws.count_calls("PutParameter"), 3, "one overwrite each");
    let second = aws.consistent_parameters("/concourse/alpha/dev");
    assert!(first.iter().zip(&second).all(|(a, b)| a != b));
    assert_eq!(
        aws.parameters.borrow()["/concourse/alpha/dev-access-key"].1,
        2
    );
}

#[test]
fn with_both_sinks_an_account_is_rotated_only_when_both_hold_it() {
    let denied = FakeAws {
        ssm_denied: true,
        ..Default::default()
    };
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let both = into(SecretSink::Both);
    let (summary, events) = tick_with(&denied, &store, &both);
    assert_eq!(summary.failed, ["alpha/dev (AccessDeniedException)"]);
    assert!(event_lines(&events).contains("[not written: /concourse/alpha/dev-access-key (ssm)"));
    denied.consistent_triple("/concourse/alpha/dev");
    let dev = &state(&store, "alpha").accounts["dev"];
    assert!(dev.incomplete);
    assert_eq!(
        dev.sinks.keys().copied().collect::<Vec<_>>(),
        [Sink::SecretsManager]
    );

    let aws = FakeAws {
        secrets: RefCell::new(denied.secrets.borrow().clone()),
        issued: Cell::new(denied.issued.get()),
        ..Default::default()
    };
    aws.clock.advance(MINUTE);
    let (summary, _) = tick_with(&aws, &store, &both);
    assert_eq!(summary.rotated, 1);
    let in_secrets = aws.consistent_triple("/concourse/alpha/dev");
    assert_eq!(
        in_secrets,
        aws.consistent_parameters("/concourse/alpha/dev")
    );
    let dev = &state(&store, "alpha").accounts["dev"];
    assert_eq!(dev.sinks.len(), 2);
}

#[test]
fn names_parameter_store_would_refuse_fail_their_account_before_sts() {
    let aws = FakeAws::default();
    let store = MemoryStore::default()
        .with("team/awsteam", &team("awsteam", &[("dev", "ci")]))
        .with("team/beta", &team("beta", &[("lab", "ci")]));
    let rules = RotationRules {
        template: "/{{.Team}}/{{.Account}}".parse().unwrap(),
        ..into(SecretSink::Ssm)
    };
    let (summary, events) = tick_with(&aws, &store, &rules);
    assert_eq!(summary.failed, ["awsteam/dev (SecretPath)"]);
    assert!(event_lines(&events).contains(r#"must not start with \"aws\" or \"ssm\""#));
    assert_eq!(summary.rotated, 1);
    assert_eq!(aws.count_calls("AssumeRole"), 1);
}

#[test]
fn credentials_that_cannot_be_refreshed_stop_the_tick_without_charging_accounts() {
    // Good for four more minutes: fetched before the lease, and again at the first
    // account's request, when IMDS has nothing more to give.
    let aws = FakeAws {
        imds_expirations: RefCell::new(vec![chrono::Utc::now() + chrono::Duration::minutes(4)]),
        ..Default::default()
    };
    let store = two_teams();
    let client = imds_client(&aws);
    let (result, events) = futures::executor::block_on(run_engine(
        &client,
        &aws,
        &store,
        &rules(1),
        "tick-test",
        None,
    ));
    let error = format!("{:#}", result.unwrap_err());
    assert!(
        error.starts_with("getting the rotator's credentials from IMDS at http://imds.test"),
        "{error}"
    );
    let imds_calls = aws.calls.borrow().iter().filter(|c| *c == "IMDS").count();
    assert_eq!(
        imds_calls,
        4,
        "one whole fetch, then one refused ask: {:?}",
        aws.calls.borrow()
    );
    assert_eq!(aws.count_calls("AssumeRole"), 0);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::AccountDeferred { .. }))
            .count(),
        3
    );
    for team in ["alpha", "beta"] {
        for account in state(&store, team).accounts.values() {
            assert_eq!(account.consecutive_failures, 0, "not charged");
            assert!(!account.incomplete, "nothing was written");
        }
    }
}
