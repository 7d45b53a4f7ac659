//! The AWS the simulated nodes talk to: STS, Secrets Manager and Parameter Store as one
//! in-process [`Transport`]. Each request reaches AWS half a latency after it is sent and
//! its answer comes back half a latency later, on the virtual clock; AWS serves it within
//! the published request quotas (throttling beyond them, as AWS does) and answers in its
//! own shapes ([`concourse_sts::aws::answers`]) with a `Date` header. A share of requests
//! fails: a connection reset, a server error, or an answer lost after AWS acted on it
//! (the client times out).
//!
//! The model also keeps what the figures need: which session each secret holds and every
//! version it received, so that for every account it knows how long the credentials it
//! had stored had left at each change, and when a complete set first landed.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use concourse_sts::aws::{answers, HttpResponse, Transport, TransportError};
use serde::Deserialize;

use crate::chance::Chance;
use crate::memory::NOBODY;
use crate::quota::RateLimit;
use crate::timeline::Timeline;

/// The request quotas AWS publishes, per account and region.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Secrets Manager: `PutSecretValue` (with `UpdateSecret` and a few others).
    pub put_secret_value: usize,
    /// Secrets Manager: `CreateSecret`, a quota of its own.
    pub create_secret: usize,
    /// STS: every request (`AssumeRole`, `GetCallerIdentity`), 600 a second.
    pub sts: usize,
    /// Parameter Store: `PutParameter` at the default throughput, as AWS Support quotes it.
    pub put_parameter: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            put_secret_value: 50,
            create_secret: 50,
            sts: 600,
            put_parameter: 3,
        }
    }
}

/// How requests travel and fail.
#[derive(Debug, Clone, Copy)]
pub struct Network {
    pub latency: Duration,
    /// The share of requests that fail on the way.
    pub fault_rate: f64,
    /// How long the client waits for an answer that never comes.
    pub request_timeout: Duration,
}

/// Where a secret lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    SecretsManager,
    ParameterStore,
}

/// One account's secret: which account, and which of its secrets (across sinks).
#[derive(Debug, Clone, Copy)]
pub struct Owned {
    pub account: u32,
    pub index: u8,
}

/// Which secrets belong to which account: every account has `per_account` of them.
pub struct Ownership {
    pub secrets: Vec<((Service, String), Owned)>,
    pub per_account: usize,
}

/// A secret or parameter, as AWS holds it.
#[derive(Default)]
struct Secret {
    owner: Option<Owned>,
    exists: bool,
    /// The `ClientRequestToken` of its newest version: a write repeating it adds none.
    last_token: Option<String>,
    versions: Vec<Version>,
}

/// One version of a secret: when it was made (ms into the simulation) and the session
/// whose credentials it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub at_ms: u32,
    pub session: u32,
}

/// A session STS issued.
#[derive(Debug, Clone, Copy)]
struct Session {
    /// Seconds since the Unix epoch.
    expires: i64,
    /// When it was issued, in ms into the simulation.
    issued_ms: u64,
}

/// What one account had stored, over time.
#[derive(Debug, Clone, Default)]
pub struct Holding {
    /// The session each of its secrets holds.
    held: Vec<Option<u32>>,
    /// The session of the newest complete set.
    complete: Option<u32>,
    /// When a complete set first landed, the second time (the first credentials are
    /// renewed early, to spread accounts registered together), and last.
    pub first_complete: Option<Duration>,
    pub second_complete: Option<Duration>,
    pub last_complete: Option<Duration>,
    /// Complete sets landed (distinct sessions).
    pub landings: u32,
    /// The least time the stored credentials had left at any change after the first
    /// complete set (negative: expired), in ms, and when.
    pub least_validity: Option<(i64, Duration)>,
}

impl Holding {
    /// The stored credentials had `left_ms` left at `at`.
    fn observe(&mut self, left_ms: i64, at: Duration) {
        if self.least_validity.is_none_or(|(least, _)| left_ms < least) {
            self.least_validity = Some((left_ms, at));
        }
    }
}

/// Requests by what they ask.
enum Call {
    CallerIdentity,
    AssumeRole {
        duration: i64,
    },
    SecretWrite {
        create: bool,
        name: String,
        /// The session of the value written.
        session: u32,
        token: Option<String>,
    },
    PutParameter {
        name: String,
        session: u32,
        overwrite: bool,
        tagged: bool,
    },
    AddTags,
}

/// What befalls a request on its way.
enum Fate {
    Served,
    /// The connection breaks before AWS sees the request.
    Reset,
    /// AWS fails it without acting on it.
    ServerError,
    /// AWS acts on it and the answer is lost: the client times out.
    Lost,
}

pub struct AwsModel {
    timeline: Rc<Timeline>,
    /// The true time at the start of the simulation.
    epoch: DateTime<Utc>,
    network: Network,
    chance: Chance,
    limits: RefCell<Limits>,
    /// The sessions issued, by number.
    sessions: RefCell<Vec<Session>>,
    secrets: RefCell<HashMap<(Service, String), Secret>>,
    accounts: RefCell<Vec<Holding>>,
    /// Sessions that a repair (a rotation of a half-written set) delivered.
    repairs: RefCell<HashSet<u32>>,
    pub faults: RefCell<u64>,
    /// Padding that gives issued credentials AWS's sizes.
    padding: (String, String),
}

/// The quotas' buckets.
pub struct Limits {
    pub put_secret_value: RateLimit,
    pub create_secret: RateLimit,
    pub sts: RateLimit,
    pub put_parameter: RateLimit,
}

impl AwsModel {
    /// A world whose secrets belong to accounts as `ownership` says.
    pub fn new(
        timeline: Rc<Timeline>,
        epoch: DateTime<Utc>,
        network: Network,
        quotas: Quotas,
        seed: u64,
        ownership: Ownership,
    ) -> Self {
        let owned = ownership.secrets;
        let accounts = owned
            .iter()
            .map(|(_, o)| o.account as usize + 1)
            .max()
            .unwrap_or(0);
        let secrets = owned
            .into_iter()
            .map(|(key, owner)| {
                let secret = Secret {
                    owner: Some(owner),
                    ..Secret::default()
                };
                (key, secret)
            })
            .collect();
        let holding = Holding {
            held: vec![None; ownership.per_account],
            ..Holding::default()
        };
        Self {
            timeline,
            epoch,
            network,
            chance: Chance::new(seed, 1),
            limits: RefCell::new(Limits {
                put_secret_value: RateLimit::new(quotas.put_secret_value),
                create_secret: RateLimit::new(quotas.create_secret),
                sts: RateLimit::new(quotas.sts),
                put_parameter: RateLimit::new(quotas.put_parameter),
            }),
            sessions: RefCell::default(),
            secrets: RefCell::new(secrets),
            accounts: RefCell::new(vec![holding; accounts]),
            repairs: RefCell::default(),
            faults: RefCell::new(0),
            // A secret access key is 40 characters; a session token several hundred.
            padding: ("k".repeat(25), "t".repeat(700)),
        }
    }

    /// The true time now.
    pub fn now(&self) -> DateTime<Utc> {
        self.epoch + chrono::Duration::from_std(self.timeline.now()).expect("within range")
    }

    pub fn limits(&self) -> std::cell::Ref<'_, Limits> {
        self.limits.borrow()
    }

    /// Every account's holding, as of now.
    pub fn holdings(&self) -> Vec<Holding> {
        let now_ms = self.timeline.now().as_millis() as i64;
        let sessions = self.sessions.borrow();
        let mut holdings = self.accounts.borrow().clone();
        for holding in holdings.iter_mut().filter(|h| h.first_complete.is_some()) {
            let left = least_left_ms(&holding.held, &sessions, self.epoch, now_ms);
            holding.observe(left, self.timeline.now());
        }
        holdings
    }

    /// Every secret's versions, those a repair delivered left out when `outside_repairs`.
    pub fn versions(&self, outside_repairs: bool) -> Vec<Vec<u32>> {
        let repairs = self.repairs.borrow();
        let secrets = self.secrets.borrow();
        secrets
            .values()
            .map(|secret| {
                let kept = secret.versions.iter();
                kept.filter(|v| !(outside_repairs && repairs.contains(&v.session)))
                    .map(|v| v.at_ms)
                    .collect()
            })
            .collect()
    }

    /// When the session of the account's newest complete set was issued (ms into the
    /// simulation), and whether it was a repair's, now that a tick says it rotated
    /// the account.
    pub fn rotated(&self, account: u32, repair: bool) -> Option<u64> {
        let session = self.accounts.borrow()[account as usize].complete?;
        if repair {
            self.repairs.borrow_mut().insert(session);
        }
        Some(self.sessions.borrow()[session as usize].issued_ms)
    }

    pub fn repairs(&self) -> usize {
        self.repairs.borrow().len()
    }

    fn fate(&self) -> Fate {
        if self.chance.fraction() >= self.network.fault_rate {
            return Fate::Served;
        }
        *self.faults.borrow_mut() += 1;
        match self.chance.next_u64() % 3 {
            0 => Fate::Reset,
            1 => Fate::ServerError,
            _ => Fate::Lost,
        }
    }

    /// AWS's answer to a request it receives now.
    fn serve(&self, request: &http::Request<Vec<u8>>) -> HttpResponse {
        let call = parse(request);
        let (status, body) = match self.limit(&call) {
            Some(throttled) => (400, throttled),
            None => self.act(call),
        };
        self.answer(status, body)
    }

    /// The throttling answer for a request beyond its quota, or `None`.
    fn limit(&self, call: &Call) -> Option<String> {
        let now = self.timeline.now();
        let mut limits = self.limits.borrow_mut();
        let (limit, answer) = match call {
            Call::CallerIdentity | Call::AssumeRole { .. } => (
                &mut limits.sts,
                answers::sts_error("Throttling", "Rate exceeded"),
            ),
            Call::SecretWrite { create: false, .. } => (
                &mut limits.put_secret_value,
                answers::json_error("ThrottlingException", "Rate exceeded"),
            ),
            Call::SecretWrite { create: true, .. } => (
                &mut limits.create_secret,
                answers::json_error("ThrottlingException", "Rate exceeded"),
            ),
            Call::PutParameter { .. } => (
                &mut limits.put_parameter,
                answers::json_error("ThrottlingException", "Rate exceeded"),
            ),
            Call::AddTags => return None,
        };
        (!limit.admit(now)).then_some(answer)
    }

    fn act(&self, call: Call) -> (u16, String) {
        match call {
            Call::CallerIdentity => (
                200,
                answers::caller_identity("arn:aws:iam::123456789012:user/concourse-sts"),
            ),
            Call::AssumeRole { duration } => (200, self.issue(duration)),
            Call::SecretWrite {
                create,
                name,
                session,
                token,
            } => self.write_secret(create, name, session, token),
            Call::PutParameter {
                name,
                session,
                overwrite,
                tagged,
            } => self.put_parameter(name, session, overwrite, tagged),
            Call::AddTags => (200, "{}".to_owned()),
        }
    }

    /// A new session of `duration` seconds: its number is in all three values.
    fn issue(&self, duration: i64) -> String {
        let mut sessions = self.sessions.borrow_mut();
        let n = sessions.len();
        let expiration = self.now() + chrono::Duration::seconds(duration);
        let expiration = DateTime::from_timestamp(expiration.timestamp(), 0).expect("in range");
        sessions.push(Session {
            expires: expiration.timestamp(),
            issued_ms: self.timeline.now().as_millis() as u64,
        });
        let (key, token) = &self.padding;
        answers::assume_role(
            &format!("ASIASIM{n:012}"),
            &format!("SIM{n:012}{key}"),
            &format!("SIM{n:012}{token}"),
            expiration,
        )
    }

    fn write_secret(
        &self,
        create: bool,
        name: String,
        session: u32,
        token: Option<String>,
    ) -> (u16, String) {
        let mut secrets = self.secrets.borrow_mut();
        let secret = secrets
            .entry((Service::SecretsManager, name.clone()))
            .or_default();
        match (create, secret.exists) {
            (false, false) => {
                let message = "Secrets Manager can't find the specified secret.";
                return (
                    400,
                    answers::json_error("ResourceNotFoundException", message),
                );
            }
            (true, true) => {
                let message =
                    format!("The operation failed because the secret {name} already exists.");
                return (
                    400,
                    answers::json_error("ResourceExistsException", &message),
                );
            }
            _ => {}
        }
        secret.exists = true;
        let repeated = token.is_some() && token == secret.last_token;
        if !repeated {
            secret.last_token = token;
            self.land(secret, session);
        }
        (200, answers::secret_written(&name))
    }

    fn put_parameter(
        &self,
        name: String,
        session: u32,
        overwrite: bool,
        tagged: bool,
    ) -> (u16, String) {
        if overwrite && tagged {
            let message = "Invalid request: tags and overwrite can't be used together.";
            return (400, answers::json_error("ValidationException", message));
        }
        let mut secrets = self.secrets.borrow_mut();
        let parameter = secrets.entry((Service::ParameterStore, name)).or_default();
        if parameter.exists && !overwrite {
            let message = "The parameter already exists.";
            return (400, answers::json_error("ParameterAlreadyExists", message));
        }
        parameter.exists = true;
        self.land(parameter, session);
        (
            200,
            answers::parameter_written(parameter.versions.len() as u64),
        )
    }

    /// A new version of `secret` holding `session`'s credentials: the account it belongs
    /// to now holds that session there.
    fn land(&self, secret: &mut Secret, session: u32) {
        let now = self.timeline.now();
        secret.versions.push(Version {
            at_ms: now.as_millis() as u32,
            session,
        });
        let Some(owner) = secret.owner else {
            return;
        };
        let sessions = self.sessions.borrow();
        let mut accounts = self.accounts.borrow_mut();
        let holding = &mut accounts[owner.account as usize];
        if holding.first_complete.is_some() {
            let left = least_left_ms(&holding.held, &sessions, self.epoch, now.as_millis() as i64);
            holding.observe(left, now);
        }
        holding.held[owner.index as usize] = Some(session);
        let whole = holding.held.iter().all(|held| *held == Some(session));
        if whole && holding.complete != Some(session) {
            holding.complete = Some(session);
            holding.landings += 1;
            if holding.landings == 2 {
                holding.second_complete = Some(now);
            }
            holding.first_complete.get_or_insert(now);
            holding.last_complete = Some(now);
        }
    }
}

/// How long the least-lived of `held` sessions has left at `now_ms`, in ms.
fn least_left_ms(
    held: &[Option<u32>],
    sessions: &[Session],
    epoch: DateTime<Utc>,
    now_ms: i64,
) -> i64 {
    let expires = held
        .iter()
        .map(|session| session.map_or(i64::MIN, |s| sessions[s as usize].expires))
        .min()
        .unwrap_or(i64::MIN);
    let epoch_ms = epoch.timestamp_millis();
    expires
        .saturating_mul(1000)
        .saturating_sub(epoch_ms + now_ms)
}

/// The session number a written value carries (`SIM` and twelve digits).
pub fn session_of(value: &str) -> Option<u32> {
    let at = value.find("SIM")? + 3;
    value.get(at..at + 12)?.parse().ok()
}

/// The fields of a JSON 1.1 request the model reads, borrowed from its body.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body<'a> {
    #[serde(borrow)]
    secret_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    secret_string: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value: Option<Cow<'a, str>>,
    #[serde(borrow)]
    client_request_token: Option<Cow<'a, str>>,
    #[serde(default)]
    overwrite: bool,
    tags: Option<serde::de::IgnoredAny>,
}

/// What a request asks, from its target header and body.
fn parse(request: &http::Request<Vec<u8>>) -> Call {
    let Some(target) = request.headers().get("x-amz-target") else {
        let duration = form_urlencoded::parse(request.body())
            .find(|(field, _)| field == "DurationSeconds")
            .map(|(_, seconds)| seconds.parse().expect("a number of seconds"));
        return match duration {
            Some(duration) => Call::AssumeRole { duration },
            None => Call::CallerIdentity,
        };
    };
    let body: Body = serde_json::from_slice(request.body()).expect("a JSON 1.1 body");
    let text = |field: Option<Cow<'_, str>>| field.unwrap_or_default().into_owned();
    let session = |value: Option<Cow<'_, str>>| {
        session_of(&value.unwrap_or_default()).expect("every value carries its session")
    };
    match target.to_str().expect("an ASCII target") {
        "secretsmanager.PutSecretValue" | "secretsmanager.CreateSecret" => Call::SecretWrite {
            create: target == "secretsmanager.CreateSecret",
            name: text(body.secret_id.or(body.name)),
            session: session(body.secret_string),
            token: body.client_request_token.map(Cow::into_owned),
        },
        "AmazonSSM.PutParameter" => Call::PutParameter {
            name: text(body.name),
            session: session(body.value),
            overwrite: body.overwrite,
            tagged: body.tags.is_some(),
        },
        "AmazonSSM.AddTagsToResource" => Call::AddTags,
        other => panic!("the simulated AWS does not know {other}"),
    }
}

impl Transport for &AwsModel {
    async fn send(&self, request: http::Request<Vec<u8>>) -> Result<HttpResponse, TransportError> {
        let there = self.network.latency / 2;
        let back = self.network.latency - there;
        self.timeline.sleep(there).await;
        match NOBODY.run(|| self.fate()) {
            Fate::Served => {
                let answer = NOBODY.run(|| self.serve(&request));
                self.timeline.sleep(back).await;
                Ok(answer)
            }
            Fate::Reset => Err(TransportError::Connection(
                "connection reset by peer".into(),
            )),
            Fate::ServerError => {
                self.timeline.sleep(back).await;
                Ok(NOBODY.run(|| self.server_error(&request)))
            }
            Fate::Lost => {
                NOBODY.run(|| self.serve(&request));
                let waited = self.network.request_timeout.saturating_sub(there);
                self.timeline.sleep(waited).await;
                Err(TransportError::Timeout(
                    "no answer within request_timeout".into(),
                ))
            }
        }
    }
}

impl AwsModel {
    /// A server error in the service's own shape.
    fn server_error(&self, request: &http::Request<Vec<u8>>) -> HttpResponse {
        let body = match request.headers().contains_key("x-amz-target") {
            true => answers::json_error("InternalServiceError", "An internal error occurred."),
            false => answers::sts_error("InternalFailure", "An internal error occurred."),
        };
        self.answer(500, body)
    }

    /// An answer made now: it carries AWS's `Date`.
    fn answer(&self, status: u16, body: String) -> HttpResponse {
        let mut answer = HttpResponse::new(status, body);
        let date = answers::http_date(self.now());
        answer
            .headers
            .insert("date", date.parse().expect("a header value"));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures;
    use serde_json::json;

    fn model(fault_rate: f64) -> AwsModel {
        let owned = |index| Owned { account: 0, index };
        let secrets = ["/c/t/a-1", "/c/t/a-2"]
            .iter()
            .enumerate()
            .map(|(i, name)| ((Service::SecretsManager, name.to_string()), owned(i as u8)))
            .collect();
        let network = Network {
            latency: Duration::from_millis(50),
            fault_rate,
            request_timeout: Duration::from_secs(20),
        };
        let ownership = Ownership {
            secrets,
            per_account: 2,
        };
        let epoch = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let timeline = Rc::new(Timeline::default());
        AwsModel::new(timeline, epoch, network, Quotas::default(), 1, ownership)
    }

    fn request(target: Option<&str>, body: String) -> http::Request<Vec<u8>> {
        let request = http::Request::post("/");
        let request = match target {
            Some(target) => request.header("x-amz-target", target),
            None => request,
        };
        request.body(body.into_bytes()).unwrap()
    }

    /// Lets `time` pass on the model's timeline.
    fn pass(aws: &AwsModel, time: Duration) {
        let mut pool = futures::executor::LocalPool::new();
        let timeline = aws.timeline.clone();
        let sleep = async move { timeline.sleep(time).await };
        futures::task::LocalSpawnExt::spawn_local(&pool.spawner(), sleep).unwrap();
        crate::timeline::run(&mut pool, &aws.timeline);
    }

    /// A session for 3,600 s, written to both secrets of the account with `create`.
    fn rotate(aws: &AwsModel, create: bool) -> Vec<u16> {
        let issued = aws.serve(&request(
            None,
            "Action=AssumeRole&DurationSeconds=3600".into(),
        ));
        let session = session_of(std::str::from_utf8(&issued.body).unwrap()).unwrap();
        let target = match create {
            true => "secretsmanager.CreateSecret",
            false => "secretsmanager.PutSecretValue",
        };
        ["/c/t/a-1", "/c/t/a-2"]
            .iter()
            .map(|name| {
                let body = json!({"SecretId": name, "Name": name, "SecretString": format!("SIM{session:012}"), "ClientRequestToken": format!("{name}-{session}")});
                aws.serve(&request(Some(target), body.to_string())).status
            })
            .collect()
    }

    /// The account's record follows AWS's answers: a missing secret is refused, a
    /// complete set lands once, a repeated token adds no version, and validity is
    /// measured at each change after the first set.
    #[test]
    fn the_record_follows_what_aws_did() {
        let aws = model(0.0);
        assert_eq!(rotate(&aws, false), [400, 400], "not created yet");
        assert_eq!(rotate(&aws, true), [200, 200]);
        let first = aws.holdings()[0].clone();
        assert_eq!(
            (first.landings, first.first_complete),
            (1, Some(Duration::ZERO))
        );
        pass(&aws, Duration::from_secs(1_800));
        assert_eq!(rotate(&aws, false), [200, 200]);
        let body = json!({"SecretId": "/c/t/a-1", "SecretString": "SIM000000000002", "ClientRequestToken": "/c/t/a-1-2"});
        let repeated = request(Some("secretsmanager.PutSecretValue"), body.to_string());
        assert_eq!(aws.serve(&repeated).status, 200);
        let holding = &aws.holdings()[0];
        assert_eq!(holding.landings, 2);
        assert_eq!(
            holding.least_validity,
            Some((1_800_000, Duration::from_secs(1_800)))
        );
        assert_eq!(aws.versions(false).iter().map(Vec::len).sum::<usize>(), 4);
        assert!(aws
            .versions(false)
            .iter()
            .all(|v| figures::most_within(v, 600_000) == 1));
    }

    #[test]
    fn every_value_names_its_session() {
        assert_eq!(session_of("ASIASIM000000000042"), Some(42));
        assert_eq!(
            session_of(r#"{"access_key_id":"ASIASIM000000000007","x":"SIM000000000009"}"#),
            Some(7)
        );
        assert_eq!(session_of("plain"), None);
    }

    #[test]
    fn validity_is_the_least_lived_session_held() {
        let epoch = DateTime::from_timestamp(1_000, 0).unwrap();
        let session = |expires| Session {
            expires,
            issued_ms: 0,
        };
        let sessions = [session(1_000 + 3_600), session(1_000 + 1_800)];
        let left = least_left_ms(&[Some(0), Some(1)], &sessions, epoch, 600_000);
        assert_eq!(left, 1_200_000);
        assert!(least_left_ms(&[Some(0), None], &sessions, epoch, 0) < 0);
    }
}
