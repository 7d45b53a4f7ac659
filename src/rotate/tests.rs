//! The tick against an in-memory AWS: the engine's behaviour without the runtime.

use super::*;
use crate::aws::client::Endpoints;
use crate::aws::{HttpResponse, RotatorCredentials, TransportError};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// STS and Secrets Manager in memory, with failures to order.
#[derive(Default)]
struct FakeAws {
    secrets: RefCell<BTreeMap<String, String>>,
    denied_roles: HashSet<String>,
    failing_secrets: HashSet<String>,
    issued: Cell<usize>,
    /// Every credential value handed out, written or not.
    issued_values: RefCell<Vec<String>>,
    in_flight: Cell<usize>,
    max_in_flight: Cell<usize>,
    calls: RefCell<Vec<String>>,
}

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

fn reply(status: u16, body: impl Into<String>) -> HttpResponse {
    HttpResponse {
        status,
        body: body.into().into_bytes(),
    }
}

impl FakeAws {
    fn answer(&self, request: &http::Request<Vec<u8>>) -> HttpResponse {
        let length = request.headers()["content-length"].to_str().unwrap();
        assert_eq!(
            length,
            request.body().len().to_string(),
            "content-length must match"
        );
        assert!(request.headers().contains_key("authorization"));
        match request.headers().get("x-amz-target") {
            Some(target) => self.secrets_manager(target.to_str().unwrap(), request.body()),
            None => self.sts(request.body()),
        }
    }

    fn sts(&self, body: &[u8]) -> HttpResponse {
        let form: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        self.calls
            .borrow_mut()
            .push(format!("AssumeRole {}", form["RoleArn"]));
        if self.denied_roles.contains(&form["RoleArn"]) {
            return reply(
                403,
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not authorized</Message></Error></ErrorResponse>",
            );
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
        reply(
            200,
            format!(
                "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
                 <AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
                 <SessionToken>{token}</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>\
                 </Credentials></AssumeRoleResult></AssumeRoleResponse>"
            ),
        )
    }

    fn secrets_manager(&self, target: &str, body: &[u8]) -> HttpResponse {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let operation = target.trim_start_matches("secretsmanager.");
        let name = body
            .get("SecretId")
            .or_else(|| body.get("Name"))
            .and_then(|v| v.as_str())
            .unwrap()
            .to_owned();
        self.calls.borrow_mut().push(format!("{operation} {name}"));
        if self.failing_secrets.contains(&name) {
            return reply(500, r#"{"__type":"InternalServiceError","message":"boom"}"#);
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
                secrets.insert(name, value);
                reply(200, "{}")
            }
        }
    }
}

impl Transport for &FakeAws {
    async fn send(&self, request: http::Request<Vec<u8>>) -> Result<HttpResponse, TransportError> {
        self.in_flight.set(self.in_flight.get() + 1);
        self.max_in_flight
            .set(self.max_in_flight.get().max(self.in_flight.get()));
        YieldOnce(false).await;
        self.in_flight.set(self.in_flight.get() - 1);
        Ok(self.answer(&request))
    }
}

#[derive(Default)]
struct Store(BTreeMap<String, Vec<u8>>);

impl Store {
    fn with(mut self, key: &str, document: &str) -> Self {
        self.0.insert(key.to_owned(), document.as_bytes().to_vec());
        self
    }
}

impl TeamStore for Store {
    fn keys(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.0.keys().cloned().collect())
    }
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }
}

#[derive(Default)]
struct Events(RefCell<Vec<Event>>);

impl EventSink for Events {
    fn emit(&self, event: &Event) {
        self.0.borrow_mut().push(event.clone());
    }
}

fn team(name: &str, accounts: &[(&str, &str)]) -> String {
    let accounts: Vec<String> = accounts
        .iter()
        .map(|(account, role)| {
            format!(r#"{{"name":"{account}","roleArn":"arn:aws:iam::123456789012:role/{role}"}}"#)
        })
        .collect();
    format!(r#"{{"name":"{name}","accounts":[{}]}}"#, accounts.join(","))
}

fn two_teams() -> Store {
    Store::default()
        .with(
            "team/alpha",
            &team("alpha", &[("dev", "ci"), ("prod", "ci-prod")]),
        )
        .with("team/beta", &team("beta", &[("lab", "ci")]))
        .with("unrelated/key", "not a team")
}

fn tick(aws: &FakeAws, store: &Store, concurrency: usize) -> (TickSummary, Vec<Event>) {
    let rules = RotationRules {
        template: SecretPathTemplate::default(),
        allowed_roles: AllowedRoles::default(),
        max_concurrency: concurrency,
    };
    tick_with(aws, store, &rules)
}

fn tick_with(aws: &FakeAws, store: &Store, rules: &RotationRules) -> (TickSummary, Vec<Event>) {
    let client = AwsClient::new(
        aws,
        &RotatorCredentials {
            access_key_id: "AKIDROTATOR".into(),
            secret_access_key: "ROTATORSECRET".into(),
            session_token: None,
        },
        "us-east-1",
        Endpoints {
            sts: "http://sts.test".into(),
            secrets_manager: "http://sm.test".into(),
        },
    );
    let events = Events::default();
    let summary = futures::executor::block_on(run_tick(store, &client, rules, &events)).unwrap();
    (summary, events.0.into_inner())
}

fn event_lines(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn rotates_every_account_of_every_team_into_the_lambda_layout() {
    let aws = FakeAws::default();
    let (summary, events) = tick(&aws, &two_teams(), 8);
    assert_eq!(summary.clone().into_result(), Ok(()));
    assert_eq!((summary.accounts, summary.rotated), (3, 3));
    let secrets = aws.secrets.borrow();
    assert_eq!(secrets.len(), 9);
    let access = &secrets["/concourse/alpha/dev-access-key"];
    let n: usize = access.trim_start_matches("ASIAFAKE").parse().unwrap();
    assert_eq!(
        secrets["/concourse/alpha/dev-secret-key"],
        format!("secret-{n}-alpha")
    );
    assert_eq!(
        secrets["/concourse/alpha/dev-session-token"],
        format!("token-{n}-alpha")
    );
    assert!(secrets["/concourse/beta/lab-session-token"].ends_with("-beta"));
    let rotated: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::AccountRotated {
                    secrets_created: 3,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(rotated.len(), 3);
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
}

#[test]
fn a_second_tick_replaces_every_value_with_put_secret_value() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store, 8);
    let first = aws.secrets.borrow().clone();
    aws.calls.borrow_mut().clear();
    let (summary, events) = tick(&aws, &store, 8);
    assert_eq!(summary.rotated, 3);
    let second = aws.secrets.borrow();
    for (name, value) in first.iter() {
        assert_ne!(&second[name], value, "{name} was not replaced");
    }
    let calls = aws.calls.borrow();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("PutSecretValue"))
            .count(),
        9
    );
    assert!(!calls.iter().any(|c| c.starts_with("CreateSecret")));
    assert!(events.iter().all(
        |e| !matches!(e, Event::AccountRotated { secrets_created, .. } if *secrets_created != 0)
    ));
}

#[test]
fn bad_teams_and_denied_roles_fail_alone() {
    let aws = FakeAws {
        denied_roles: ["arn:aws:iam::123456789012:role/ci-prod".to_owned()].into(),
        ..Default::default()
    };
    let store = two_teams()
        .with("team/broken", "{\"name\": \"broken\", ")
        .with("team/mismatch", &team("other", &[("x", "ci")]));
    let (summary, events) = tick(&aws, &store, 8);
    assert_eq!(summary.rotated, 2);
    assert_eq!(summary.failed, ["alpha/prod (AccessDenied)"]);
    assert_eq!(summary.invalid_teams, ["team/broken", "team/mismatch"]);
    let error = summary.into_result().unwrap_err();
    assert_eq!(
        error,
        "1 of 3 accounts failed: alpha/prod (AccessDenied); 2 invalid team documents: team/broken, team/mismatch"
    );
    assert!(aws
        .secrets
        .borrow()
        .contains_key("/concourse/alpha/dev-access-key"));
    assert!(aws
        .secrets
        .borrow()
        .contains_key("/concourse/beta/lab-access-key"));
    assert!(!aws.secrets.borrow().keys().any(|k| k.contains("/prod-")));
    let failure = events
        .iter()
        .find(|e| matches!(e, Event::AccountFailed { .. }))
        .unwrap();
    let line = serde_json::to_value(failure).unwrap();
    assert_eq!(line["team"], "alpha");
    assert_eq!(line["account"], "prod");
    assert_eq!(line["role_arn"], "arn:aws:iam::123456789012:role/ci-prod");
    assert_eq!(line["stage"], "assume_role");
    assert_eq!(line["code"], "AccessDenied");
    let invalid = events
        .iter()
        .find_map(|e| match e {
            Event::TeamInvalid { team, problems, .. } if team == "mismatch" => Some(problems),
            _ => None,
        })
        .unwrap();
    assert_eq!(invalid[0].field, "name");
}

#[test]
fn a_failed_secret_write_names_what_was_not_written() {
    let aws = FakeAws {
        failing_secrets: ["/concourse/beta/lab-session-token".to_owned()].into(),
        ..Default::default()
    };
    let (summary, events) = tick(&aws, &two_teams(), 8);
    assert_eq!(summary.rotated, 2);
    assert_eq!(summary.failed, ["beta/lab (InternalServiceError)"]);
    let line = event_lines(&events);
    assert!(line.contains(r#""stage":"write_secrets""#), "{line}");
    assert!(
        line.contains("[not written: /concourse/beta/lab-session-token]"),
        "{line}"
    );
    assert!(line.contains(r#""retryable":true"#), "{line}");
}

#[test]
fn events_never_carry_credential_values() {
    let aws = FakeAws {
        denied_roles: ["arn:aws:iam::123456789012:role/ci-prod".to_owned()].into(),
        failing_secrets: ["/concourse/beta/lab-secret-key".to_owned()].into(),
        ..Default::default()
    };
    let (_, events) = tick(&aws, &two_teams(), 8);
    let lines = event_lines(&events);
    let debug = format!("{events:?}");
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
    }
}

#[test]
fn accounts_run_concurrently_within_the_bound() {
    let many: Vec<(String, String)> = (0..12)
        .map(|i| (format!("a{i}"), "ci".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(a, r)| (a.as_str(), r.as_str())).collect();
    let store = Store::default().with("team/wide", &team("wide", &refs));
    let aws = FakeAws::default();
    let (summary, _) = tick(&aws, &store, 4);
    assert_eq!(summary.rotated, 12);
    // Four accounts at once, each with up to three parallel writes.
    let peak = aws.max_in_flight.get();
    assert!(peak > 4 && peak <= 12, "peak in flight {peak}");
    let serial = FakeAws::default();
    tick(&serial, &store, 1);
    assert!(serial.max_in_flight.get() <= 3);
}

#[test]
fn no_teams_is_a_quiet_success() {
    let (summary, events) = tick(&FakeAws::default(), &Store::default(), 8);
    assert_eq!(summary.into_result(), Ok(()));
    assert_eq!(events.len(), 2);
}

#[test]
fn log_lines_carry_time_level_and_fields() {
    let event = Event::AccountFailed {
        team: "t".into(),
        account: "a".into(),
        role_arn: "arn:aws:iam::123456789012:role/r".into(),
        stage: Stage::AssumeRole,
        code: Some("AccessDenied".into()),
        retryable: false,
        error: "denied".into(),
    };
    let line: serde_json::Value =
        serde_json::from_str(&event.to_log_line(DateTime::UNIX_EPOCH)).unwrap();
    assert_eq!(line["time"], "1970-01-01T00:00:00Z");
    assert_eq!(line["level"], "error");
    assert_eq!(line["event"], "account_failed");
    assert_eq!(line["code"], "AccessDenied");
    let info = Event::TickStarted { teams: 1 }.to_log_line(DateTime::UNIX_EPOCH);
    assert!(info.contains(r#""level":"info""#), "{info}");
}

#[test]
fn roles_outside_the_allow_list_never_reach_sts() {
    let rules = RotationRules {
        template: SecretPathTemplate::default(),
        allowed_roles: AllowedRoles::parse("arn:aws:iam::123456789012:role/ci").unwrap(),
        max_concurrency: 4,
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
