//! One fake AWS for the unit tests: IMDS, STS (`AssumeRole`, `GetCallerIdentity`),
//! Secrets Manager and Parameter Store in memory, and the fake Vault beside them. Its clock is the true time of the
//! test's [`ManualClock`] (each request advances it by `latency`), which it sends as
//! `Date` and against which it refuses requests signed more than five minutes off, as
//! AWS does. Faults are ordered per role or secret, or triggered by an event through
//! [`FakeAws::on_request`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::aws::{
    answers, AwsClient, CredentialsSource, Endpoints, HttpResponse, RotatorIdentity, Transport,
    TransportError,
};
use crate::clock::tests::{ManualClock, ManualTime};
use crate::fake_vault::FakeVault;

/// AWS refuses a request signed further than this from its own clock.
const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// A hook called with the fake and each AWS call's description ("PutSecretValue
/// /concourse/t/a", "AssumeRole arn:…", "GetCallerIdentity") right before it is answered.
pub type OnRequest = Box<dyn Fn(&FakeAws, &str)>;

pub struct FakeAws {
    pub clock: ManualClock,
    pub latency: Duration,
    pub secrets: RefCell<BTreeMap<String, String>>,
    pub denied_roles: HashSet<String>,
    pub failing_secrets: HashSet<String>,
    /// Role ARNs or secret names that fail with a retryable error this many more times.
    pub flaky: RefCell<HashMap<String, u32>>,
    /// Secret names whose writes land but are answered with something unreadable, this
    /// many more times.
    pub garbled: RefCell<HashMap<String, u32>>,
    /// Every request is refused as signed with keys AWS does not know.
    pub refuse_keys: Cell<bool>,
    pub issued: Cell<usize>,
    /// Every credential value handed out, written or not.
    pub issued_values: RefCell<Vec<String>>,
    pub in_flight: Cell<usize>,
    pub max_in_flight: Cell<usize>,
    /// Each call, as "<operation> <role or name>", "GetCallerIdentity" or "IMDS".
    pub calls: RefCell<Vec<String>>,
    /// Each AWS call and the access key that signed it.
    pub signed: RefCell<Vec<(String, String)>>,
    /// Every secret write's `ClientRequestToken`, by secret name.
    pub tokens: RefCell<Vec<(String, String)>>,
    /// Secret writes never answer (a host about to be stopped).
    pub hang_writes: bool,
    /// Parameter Store's parameters by name.
    pub parameters: RefCell<BTreeMap<String, Parameter>>,
    /// Parameter Store refuses every write (a rotator without the SSM policy).
    pub ssm_denied: bool,
    /// The expirations IMDS hands out, one per fetch; HTTP 500 once none is left.
    pub imds_expirations: RefCell<Vec<DateTime<Utc>>>,
    pub imds_fetches: Cell<usize>,
    pub hook: RefCell<Option<OnRequest>>,
    /// Vault, at `http://vault.test`.
    pub vault: FakeVault,
}

impl Default for FakeAws {
    fn default() -> Self {
        Self {
            clock: ManualClock::manual(0.5),
            latency: Duration::ZERO,
            secrets: RefCell::default(),
            denied_roles: HashSet::new(),
            failing_secrets: HashSet::new(),
            flaky: RefCell::default(),
            garbled: RefCell::default(),
            refuse_keys: Cell::new(false),
            issued: Cell::new(0),
            issued_values: RefCell::default(),
            in_flight: Cell::new(0),
            max_in_flight: Cell::new(0),
            calls: RefCell::default(),
            signed: RefCell::default(),
            tokens: RefCell::default(),
            hang_writes: false,
            parameters: RefCell::default(),
            ssm_denied: false,
            imds_expirations: RefCell::default(),
            imds_fetches: Cell::new(0),
            hook: RefCell::new(None),
            vault: FakeVault::default(),
        }
    }
}

/// A parameter: its value, version and tags.
pub type Parameter = (String, u64, Vec<String>);

/// Returns `Pending` once, so that concurrent requests really interleave.
pub struct YieldOnce(pub bool);

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
    HttpResponse::new(status, body.into())
}

fn sts_error(status: u16, code: &str, message: &str) -> HttpResponse {
    reply(status, answers::sts_error(code, message))
}

/// The operation of an AWS request, and the role or name it is about: from the
/// `X-Amz-Target` and the JSON body, or from STS's form.
fn operation(request: &http::Request<Vec<u8>>) -> (String, String) {
    match request.headers().get("x-amz-target") {
        Some(target) => {
            let body: serde_json::Value = serde_json::from_slice(request.body()).unwrap();
            let name = ["SecretId", "Name", "ResourceId"]
                .iter()
                .find_map(|field| body.get(field)?.as_str())
                .unwrap_or_default();
            let target = target.to_str().unwrap();
            let operation = target.rsplit('.').next().unwrap_or(target);
            (operation.to_owned(), name.to_owned())
        }
        None => {
            let form: BTreeMap<String, String> = form_urlencoded::parse(request.body())
                .into_owned()
                .collect();
            match form.get("RoleArn") {
                Some(role) => ("AssumeRole".to_owned(), role.clone()),
                None => ("GetCallerIdentity".to_owned(), String::new()),
            }
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

impl FakeAws {
    /// The time AWS's clock reads.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.true_now()
    }

    /// A client of this fake whose own credentials come from `source`.
    pub fn client_as(&self, source: CredentialsSource) -> AwsClient<'_, &FakeAws, ManualTime> {
        let identity = RotatorIdentity {
            source,
            role_arn: None,
        };
        let endpoints = Endpoints {
            sts: "http://sts.test".into(),
            secrets_manager: "http://sm.test".into(),
            ssm: "http://ssm.test".into(),
        };
        AwsClient::new(self, &self.clock, identity, "us-east-1", endpoints)
    }

    /// Calls `hook` with each AWS call's description before it is answered.
    pub fn on_request(&self, hook: impl Fn(&FakeAws, &str) + 'static) {
        *self.hook.borrow_mut() = Some(Box::new(hook));
    }

    fn answer(&self, request: &http::Request<Vec<u8>>) -> HttpResponse {
        if request.uri().host() == Some("vault.test") {
            return self.vault.answer(request, self.now());
        }
        if request.uri().path().starts_with("/latest/") {
            return self.imds(request.uri().path());
        }
        let length = request.headers()["content-length"].to_str().unwrap();
        assert_eq!(
            length,
            request.body().len().to_string(),
            "content-length must match"
        );
        let (operation, subject) = operation(request);
        let call = format!("{operation} {subject}").trim_end().to_owned();
        let json = request.headers().contains_key("x-amz-target");
        let mut answer = match self.refusal(request, &call, json) {
            Some(refused) => refused,
            None => {
                if let Some(hook) = self.hook.borrow().as_ref() {
                    hook(self, &call);
                }
                self.calls.borrow_mut().push(call);
                let body = request.body();
                match request.headers().get("x-amz-target") {
                    None => self.sts(body),
                    Some(_) if operation == "PutParameter" || operation == "AddTagsToResource" => {
                        self.parameter_store(&operation, subject, body)
                    }
                    Some(_) => self.secrets_manager(&operation, subject, body),
                }
            }
        };
        let date = answers::http_date(self.now());
        answer.headers.insert("date", date.parse().unwrap());
        answer
    }

    /// What AWS answers before looking at the request: a signature too far from its
    /// clock, or keys it does not know. Every request's signing key is recorded.
    fn refusal(
        &self,
        request: &http::Request<Vec<u8>>,
        call: &str,
        json: bool,
    ) -> Option<HttpResponse> {
        let header = |name: &str| request.headers()[name].to_str().unwrap().to_owned();
        let authorization = header("authorization");
        let key = authorization
            .split("Credential=")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .unwrap()
            .to_owned();
        self.signed.borrow_mut().push((call.to_owned(), key));
        let signed_at =
            chrono::NaiveDateTime::parse_from_str(&header("x-amz-date"), "%Y%m%dT%H%M%SZ")
                .unwrap()
                .and_utc();
        let (code, message) = if (signed_at - self.now()).abs() > MAX_SKEW {
            let code = match json {
                true => "InvalidSignatureException",
                false => "SignatureDoesNotMatch",
            };
            (
                code,
                "Signature expired: the request time is too far from now",
            )
        } else if self.refuse_keys.get() {
            let code = match json {
                true => "UnrecognizedClientException",
                false => "InvalidClientTokenId",
            };
            (
                code,
                "The security token included in the request is invalid.",
            )
        } else {
            return None;
        };
        self.calls.borrow_mut().push(format!("refused {code}"));
        Some(match json {
            true => reply(400, answers::json_error(code, message)),
            false => sts_error(403, code, message),
        })
    }

    fn flaked(&self, faults: &RefCell<HashMap<String, u32>>, key: &str) -> bool {
        let mut faults = faults.borrow_mut();
        match faults.get_mut(key) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    fn sts(&self, body: &[u8]) -> HttpResponse {
        let form: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let Some(role) = form.get("RoleArn") else {
            return reply(
                200,
                answers::caller_identity("arn:aws:iam::123456789012:user/rotator"),
            );
        };
        if self.denied_roles.contains(role) {
            return sts_error(403, "AccessDenied", "not authorized");
        }
        if self.flaked(&self.flaky, role) {
            return sts_error(400, "Throttling", "Rate exceeded");
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
        let expiration = self.now() + chrono::Duration::seconds(seconds);
        reply(200, answers::assume_role(&key, &secret, &token, expiration))
    }

    /// IMDS: the rotator's credentials `ASIAIMDS<n>`, expiring at the next of
    /// `imds_expirations`; HTTP 500 once none is left.
    fn imds(&self, path: &str) -> HttpResponse {
        self.calls.borrow_mut().push("IMDS".into());
        let mut expirations = self.imds_expirations.borrow_mut();
        match path {
            _ if expirations.is_empty() => reply(500, "metadata unavailable"),
            "/latest/api/token" => reply(200, "token"),
            "/latest/meta-data/iam/security-credentials/" => reply(200, "rotator"),
            _ => {
                let n = self.imds_fetches.get() + 1;
                self.imds_fetches.set(n);
                let expiration = expirations.remove(0).to_rfc3339();
                reply(
                    200,
                    format!(
                        r#"{{"AccessKeyId":"ASIAIMDS{n}","SecretAccessKey":"s{n}","Token":"t{n}","Expiration":"{expiration}"}}"#
                    ),
                )
            }
        }
    }

    /// Parameter Store as AWS answers: tags only on a create, a taken name refused
    /// without `Overwrite`, every put a new version.
    fn parameter_store(&self, operation: &str, name: String, body: &[u8]) -> HttpResponse {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        if self.ssm_denied {
            return reply(
                400,
                answers::json_error(
                    "AccessDeniedException",
                    "not authorized to perform: ssm:PutParameter",
                ),
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
        reply(200, answers::parameter_written(version))
    }

    /// The triple of parameters at a path, checked to come from one AssumeRole.
    pub fn consistent_parameters(&self, path: &str) -> [String; 3] {
        let parameters = self.parameters.borrow();
        let triple = ["access-key", "secret-key", "session-token"]
            .map(|suffix| parameters[&format!("{path}-{suffix}")].0.clone());
        one_assume_role(path, triple)
    }

    fn secrets_manager(&self, operation: &str, name: String, body: &[u8]) -> HttpResponse {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let token = body["ClientRequestToken"].as_str().unwrap_or_default();
        self.tokens
            .borrow_mut()
            .push((name.clone(), token.to_owned()));
        if self.failing_secrets.contains(&name) {
            return reply(400, answers::json_error("AccessDeniedException", "boom"));
        }
        if self.flaked(&self.flaky, &name) {
            return reply(
                500,
                answers::json_error("InternalServiceError", "try again"),
            );
        }
        let value = body["SecretString"].as_str().unwrap().to_owned();
        let mut secrets = self.secrets.borrow_mut();
        match (operation, secrets.contains_key(&name)) {
            ("PutSecretValue", false) => reply(
                404,
                answers::json_error(
                    "ResourceNotFoundException",
                    "Secrets Manager can't find the specified secret.",
                ),
            ),
            ("CreateSecret", true) => reply(
                400,
                answers::json_error("ResourceExistsException", "exists"),
            ),
            _ => {
                let answer = answers::secret_written(&name);
                secrets.insert(name.clone(), value);
                match self.flaked(&self.garbled, &name) {
                    true => reply(200, &answer[..answer.len() / 2]),
                    false => reply(200, answer),
                }
            }
        }
    }

    pub fn secret(&self, name: &str) -> Option<String> {
        self.secrets.borrow().get(name).cloned()
    }

    /// The triple at a path, checked to come from one AssumeRole.
    pub fn consistent_triple(&self, path: &str) -> [String; 3] {
        let triple = ["access-key", "secret-key", "session-token"].map(|suffix| {
            self.secret(&format!("{path}-{suffix}"))
                .unwrap_or_else(|| panic!("{path}-{suffix} missing"))
        });
        one_assume_role(path, triple)
    }

    pub fn count_calls(&self, prefix: &str) -> usize {
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
