//! Sending signed requests: operations become signed HTTP requests, answers become typed
//! results. The client also keeps the rotator's signing session: it gets the credentials
//! when first needed, again only when they would expire within five minutes, and corrects
//! its signing clock when AWS says it is off.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use super::endpoints::Endpoints;
use super::error::parse_error_answer;
use super::identity::{self, IdentityError, RotatorIdentity, SessionCredentials};
use super::secrets::{self, Operation, SecretWrite};
use super::signing::Signer;
use super::ssm::{self, Expectation, ParameterWrite, ParameterWritten};
use super::sts::{self, AssumeRole};
use super::transport::{HttpResponse, Transport};
use super::{AssumedCredentials, AwsError};
use crate::clock::chrono_duration;

/// Credentials this close to their expiration are replaced before the next request.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// The session name of the rotator's own role (`aws_role_arn`), as CloudTrail shows it.
pub const ROTATOR_SESSION_NAME: &str = "concourse-sts";
/// A chained role session lasts at most an hour, whatever is asked.
const CHAINED_SESSION_SECONDS: u32 = 3600;

/// Waits for a Secrets Manager write's turn (see [`crate::pace`]).
pub trait Pace {
    fn wait_turn(&self) -> impl Future<Output = ()>;
}

/// No pacing.
impl Pace for () {
    async fn wait_turn(&self) {}
}

/// How a secret write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new version of an existing secret.
    Updated,
    /// The secret did not exist and was created.
    Created,
}

/// The credentials requests are signed with now.
struct Session {
    signer: Signer,
    expiration: Option<DateTime<Utc>>,
}

impl Session {
    fn fresh(&self) -> bool {
        self.expiration
            .is_none_or(|expiration| expiration - Utc::now() > chrono_duration(REFRESH_BEFORE))
    }
}

/// The rotator identity's view of AWS: signed calls to STS and Secrets Manager.
pub struct AwsClient<T> {
    transport: T,
    identity: RotatorIdentity,
    region: String,
    endpoints: Endpoints,
    session: RefCell<Option<Rc<Session>>>,
    /// Held while new credentials are being fetched, so concurrent requests wait for
    /// one fetch instead of each making their own.
    refreshing: futures::lock::Mutex<()>,
    /// Why the last fetch failed: the client asks no more (a tick stops at that).
    failure: RefCell<Option<IdentityError>>,
    /// AWS's clock minus ours, learned from an answer that refused our request time.
    skew: Cell<chrono::Duration>,
    /// Every credential value this client has held, scrubbed from error text.
    redact: RefCell<Vec<String>>,
}

impl<T: Transport> AwsClient<T> {
    pub fn new(
        transport: T,
        identity: RotatorIdentity,
        region: &str,
        endpoints: Endpoints,
    ) -> Self {
        Self {
            transport,
            identity,
            region: region.to_owned(),
            endpoints,
            session: RefCell::new(None),
            refreshing: futures::lock::Mutex::new(()),
            failure: RefCell::new(None),
            skew: Cell::new(chrono::Duration::zero()),
            redact: RefCell::new(Vec::new()),
        }
    }

    /// Gets the rotator's credentials now (before a tick takes its lease), unless the
    /// ones held are good for five more minutes.
    pub async fn prepare(&self) -> Result<(), IdentityError> {
        self.session().await.map(drop)
    }

    /// `sts:AssumeRole`.
    pub async fn assume_role(
        &self,
        request: &AssumeRole<'_>,
    ) -> Result<AssumedCredentials, AwsError> {
        let session = self.session().await.map_err(AwsError::Credentials)?;
        self.assume_role_with(&session.signer, request).await
    }

    /// Writes one secret: a new version if it exists, else the secret itself. Both
    /// carry the write's request token, so a retried write never adds a second version.
    pub async fn write_secret(
        &self,
        pace: &impl Pace,
        write: &SecretWrite<'_>,
    ) -> Result<Written, AwsError> {
        let put = || self.secrets_manager(pace, secrets::put_secret_value(write));
        match put().await {
            Err(error) if error.code() == Some(secrets::NOT_FOUND) => {}
            other => return other.map(|()| Written::Updated),
        }
        match self
            .secrets_manager(pace, secrets::create_secret(write))
            .await
        {
            // Another writer created it in between: our value still has to land.
            Err(error) if error.code() == Some(secrets::ALREADY_EXISTS) => {
                put().await.map(|()| Written::Updated)
            }
            other => other.map(|()| Written::Created),
        }
    }

    /// Why the rotator's credentials could not be had, once a fetch has failed.
    pub fn credentials_failure(&self) -> Option<IdentityError> {
        self.failure.borrow().clone()
    }

    /// The signing session, fetched again when it would expire within five minutes. Once
    /// a fetch has failed, every later call fails the same way without asking again.
    async fn session(&self) -> Result<Rc<Session>, IdentityError> {
        if let Some(session) = self.current() {
            return Ok(session);
        }
        let _only_one_fetch = self.refreshing.lock().await;
        if let Some(session) = self.current() {
            return Ok(session);
        }
        if let Some(failure) = self.credentials_failure() {
            return Err(failure);
        }
        let session = Rc::new(
            self.open_session()
                .await
                .inspect_err(|failure| *self.failure.borrow_mut() = Some(failure.clone()))?,
        );
        *self.session.borrow_mut() = Some(session.clone());
        Ok(session)
    }

    fn current(&self) -> Option<Rc<Session>> {
        self.session
            .borrow()
            .clone()
            .filter(|session| session.fresh())
    }

    /// The source's credentials, and with `aws_role_arn` the role assumed with them.
    async fn open_session(&self) -> Result<Session, IdentityError> {
        let source = identity::fetch(&self.identity.source, &self.transport).await?;
        let session = self.session_of(&source);
        let Some(role_arn) = &self.identity.role_arn else {
            return Ok(session);
        };
        let request = AssumeRole {
            role_arn,
            session_name: ROTATOR_SESSION_NAME,
            duration_seconds: CHAINED_SESSION_SECONDS,
            external_id: None,
        };
        let assumed = self
            .assume_role_with(&session.signer, &request)
            .await
            .map_err(|error| IdentityError {
                origin: format!("aws_role_arn {role_arn}"),
                reason: error.to_string(),
            })?;
        Ok(self.session_of(&SessionCredentials {
            credentials: assumed.to_rotator_credentials(),
            expiration: Some(assumed.expiration),
        }))
    }

    fn session_of(&self, source: &SessionCredentials) -> Session {
        let values = source.credentials.secret_values();
        self.redact
            .borrow_mut()
            .extend(values.into_iter().map(str::to_owned));
        Session {
            signer: Signer::new(&source.credentials, &self.region),
            expiration: source.expiration,
        }
    }

    async fn assume_role_with(
        &self,
        signer: &Signer,
        request: &AssumeRole<'_>,
    ) -> Result<AssumedCredentials, AwsError> {
        let url = format!("{}/", self.endpoints.sts);
        let builder =
            || http::Request::post(&url).header(http::header::CONTENT_TYPE, sts::CONTENT_TYPE);
        let body = request.form_body().into_bytes();
        let response = self.call("sts", signer, builder, body).await?;
        sts::parse_assume_role(&response).map_err(|error| self.redacted(error))
    }

    /// Writes one parameter in the fewest calls for what the caller expects (see
    /// [`ssm::write_parameter`]).
    pub async fn write_parameter(
        &self,
        pace: &impl Pace,
        write: &ParameterWrite<'_>,
        expectation: Expectation,
    ) -> Result<ParameterWritten, AwsError> {
        let send =
            |operation| self.json_operation(ssm::SERVICE, &self.endpoints.ssm, pace, operation);
        match ssm::write_parameter(write, expectation, send).await {
            Ok(written) => Ok(self.scrubbing(|secrets| written.redacted(secrets))),
            Err(error) => Err(self.redacted(error)),
        }
    }

    async fn secrets_manager(
        &self,
        pace: &impl Pace,
        operation: Operation,
    ) -> Result<(), AwsError> {
        let endpoint = &self.endpoints.secrets_manager;
        let response = self
            .json_operation("secretsmanager", endpoint, pace, operation)
            .await?;
        secrets::check_write(&response).map_err(|error| self.redacted(error))
    }

    /// One call of a JSON 1.1 service (Secrets Manager, Parameter Store), in its turn.
    async fn json_operation(
        &self,
        service: &str,
        endpoint: &str,
        pace: &impl Pace,
        operation: Operation,
    ) -> Result<HttpResponse, AwsError> {
        let session = self.session().await.map_err(AwsError::Credentials)?;
        pace.wait_turn().await;
        let url = format!("{endpoint}/");
        let builder = || {
            http::Request::post(&url)
                .header(http::header::CONTENT_TYPE, secrets::CONTENT_TYPE)
                .header("x-amz-target", operation.target)
        };
        self.call(service, &session.signer, builder, operation.body)
            .await
    }

    /// Signs and sends; when AWS refuses the request's time, corrects the signing clock
    /// from the answer's `Date` and sends once more, as the SDKs do.
    async fn call(
        &self,
        service: &str,
        signer: &Signer,
        builder: impl Fn() -> http::request::Builder,
        body: Vec<u8>,
    ) -> Result<HttpResponse, AwsError> {
        let response = self.send(service, signer, builder(), body.clone()).await?;
        match self.skew_from(&response) {
            Some(skew) => {
                self.skew.set(skew);
                self.send(service, signer, builder(), body).await
            }
            None => Ok(response),
        }
    }

    /// The clock correction an answer calls for: AWS's time minus ours, when AWS refused
    /// the request's time and said what time it is.
    fn skew_from(&self, response: &HttpResponse) -> Option<chrono::Duration> {
        if response.status < 400 || !parse_error_answer(response, "an AWS").is_clock_skew() {
            return None;
        }
        let date = DateTime::parse_from_rfc2822(response.header("date")?).ok()?;
        Some(date.to_utc() - Utc::now())
    }

    /// `content-length` is always set: without it Spin's outbound HTTP sends the body
    /// chunked, which AWS SDKs never do.
    async fn send(
        &self,
        service: &str,
        signer: &Signer,
        builder: http::request::Builder,
        body: Vec<u8>,
    ) -> Result<HttpResponse, AwsError> {
        let mut request = builder
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .map_err(|error| AwsError::Request(error.to_string()))?;
        signer.sign(service, &mut request, self.signing_time())?;
        self.transport
            .send(request)
            .await
            .map_err(|error| self.redacted(AwsError::Transport(error)))
    }

    fn signing_time(&self) -> SystemTime {
        let skew = self.skew.get();
        let now = SystemTime::now();
        match skew.to_std() {
            Ok(ahead) => now + ahead,
            Err(_) => now - (-skew).to_std().unwrap_or_default(),
        }
    }

    fn redacted(&self, error: AwsError) -> AwsError {
        self.scrubbing(|secrets| error.redacted(secrets))
    }

    /// Runs `scrub` with every credential value this client has held.
    fn scrubbing<R>(&self, scrub: impl FnOnce(&[&str]) -> R) -> R {
        let values = self.redact.borrow();
        let secrets: Vec<&str> = values.iter().map(String::as_str).collect();
        scrub(&secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::identity::CredentialsSource;
    use crate::aws::{RotatorCredentials, TransportError};
    use std::collections::BTreeMap;

    /// IMDS, STS and Secrets Manager in one, with a clock of its own (`offset` ahead of
    /// ours) that refuses requests signed more than five minutes off, as AWS does.
    #[derive(Default)]
    struct FakeAws {
        offset: chrono::Duration,
        /// The expirations IMDS hands out, one per fetch (the last one repeats); none: it
        /// fails.
        imds_expirations: RefCell<Vec<DateTime<Utc>>>,
        imds_fetches: Cell<u32>,
        /// Each AWS request: the operation and the access key that signed it.
        signed: RefCell<Vec<(String, String)>>,
    }

    impl FakeAws {
        /// IMDS, failing (HTTP 500) when it has no expirations to hand out.
        fn imds(&self, path: &str) -> HttpResponse {
            if self.imds_expirations.borrow().is_empty() {
                return HttpResponse::new(500, "");
            }
            match path {
                "/latest/api/token" => HttpResponse::new(200, "token"),
                "/latest/meta-data/iam/security-credentials/" => HttpResponse::new(200, "role"),
                _ => {
                    let n = self.imds_fetches.get() + 1;
                    self.imds_fetches.set(n);
                    let mut expirations = self.imds_expirations.borrow_mut();
                    let expiration = if expirations.len() > 1 {
                        expirations.remove(0)
                    } else {
                        expirations[0]
                    };
                    let body = format!(
                        r#"{{"AccessKeyId":"ASIAIMDS{n}","SecretAccessKey":"s{n}","Token":"t{n}","Expiration":"{}"}}"#,
                        expiration.to_rfc3339()
                    );
                    HttpResponse::new(200, body)
                }
            }
        }

        fn aws(&self, request: &http::Request<Vec<u8>>) -> HttpResponse {
            let header = |name: &str| request.headers()[name].to_str().unwrap().to_owned();
            let authorization = header("authorization");
            let key = authorization
                .split("Credential=")
                .nth(1)
                .and_then(|c| c.split('/').next())
                .unwrap()
                .to_owned();
            let body = String::from_utf8_lossy(request.body()).into_owned();
            let form: BTreeMap<String, String> = form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            let operation = match request.headers().get("x-amz-target") {
                Some(target) => target.to_str().unwrap().to_owned(),
                None => format!("AssumeRole {}", form["RoleSessionName"]),
            };
            self.signed.borrow_mut().push((operation, key));
            let signed_at =
                chrono::NaiveDateTime::parse_from_str(&header("x-amz-date"), "%Y%m%dT%H%M%SZ")
                    .unwrap()
                    .and_utc();
            let server_now = Utc::now() + self.offset;
            let mut answer = if (signed_at - server_now).num_minutes().abs() > 5 {
                HttpResponse::new(
                    400,
                    r#"{"__type":"InvalidSignatureException","message":"Signature expired: too old"}"#,
                )
            } else if form.contains_key("RoleArn") {
                HttpResponse::new(200, "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIACHAIN</AccessKeyId><SecretAccessKey>c</SecretAccessKey><SessionToken>ct</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>")
            } else {
                HttpResponse::new(
                    200,
                    r#"{"ARN":"arn:aws:secretsmanager:us-east-1:1:secret:x"}"#,
                )
            };
            answer
                .headers
                .insert("date", server_now.to_rfc2822().parse().unwrap());
            answer
        }
    }

    impl Transport for &FakeAws {
        async fn send(
            &self,
            request: http::Request<Vec<u8>>,
        ) -> Result<HttpResponse, TransportError> {
            // Every request waits a turn, so that concurrent ones interleave.
            let mut yielded = false;
            futures::future::poll_fn(|cx| {
                if yielded {
                    return std::task::Poll::Ready(());
                }
                yielded = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            })
            .await;
            let path = request.uri().path().to_owned();
            Ok(if path.starts_with("/latest/") {
                self.imds(&path)
            } else {
                self.aws(&request)
            })
        }
    }

    fn client<'a>(
        aws: &'a FakeAws,
        source: CredentialsSource,
        role_arn: Option<&str>,
    ) -> AwsClient<&'a FakeAws> {
        let identity = RotatorIdentity {
            source,
            role_arn: role_arn.map(str::to_owned),
        };
        let endpoints = Endpoints {
            sts: "http://aws.test".into(),
            secrets_manager: "http://aws.test".into(),
            ssm: "http://aws.test".into(),
        };
        AwsClient::new(aws, identity, "us-east-1", endpoints)
    }

    fn imds() -> CredentialsSource {
        CredentialsSource::Imds {
            endpoint: "http://imds.test".into(),
        }
    }

    fn write(client: &AwsClient<&FakeAws>) -> Result<Written, AwsError> {
        futures::executor::block_on(write_one(client))
    }

    async fn write_one(client: &AwsClient<&FakeAws>) -> Result<Written, AwsError> {
        let write = SecretWrite {
            name: "/concourse/t/a",
            value: "v",
            request_token: "token".into(),
            description: String::new(),
        };
        client.write_secret(&(), &write).await
    }

    fn keys() -> CredentialsSource {
        CredentialsSource::Static(RotatorCredentials {
            access_key_id: "AKIDSTATIC".into(),
            secret_access_key: "secret".into(),
            session_token: None,
        })
    }

    #[test]
    fn a_refused_request_time_corrects_the_signing_clock_once() {
        let aws = FakeAws {
            offset: chrono::Duration::hours(1),
            ..Default::default()
        };
        let client = client(&aws, keys(), None);
        assert_eq!(write(&client), Ok(Written::Updated));
        assert_eq!(aws.signed.borrow().len(), 2, "refused, corrected, accepted");
        assert_eq!(write(&client), Ok(Written::Updated));
        assert_eq!(aws.signed.borrow().len(), 3, "the correction stays");
    }

    #[test]
    fn credentials_are_fetched_once_and_again_only_when_they_near_expiry() {
        let soon = Utc::now() + chrono::Duration::minutes(4);
        let later = Utc::now() + chrono::Duration::hours(6);
        let aws = FakeAws {
            imds_expirations: RefCell::new(vec![soon, later]),
            ..Default::default()
        };
        let client = client(&aws, imds(), None);
        futures::executor::block_on(client.prepare()).unwrap();
        assert_eq!(aws.imds_fetches.get(), 1);
        // Four writes at once: the credentials expire within five minutes, so they are
        // fetched again, once.
        futures::executor::block_on(futures::future::join_all(
            (0..4).map(|_| write_one(&client)),
        ));
        assert_eq!(aws.imds_fetches.get(), 2);
        assert!(aws
            .signed
            .borrow()
            .iter()
            .all(|(_, key)| key == "ASIAIMDS2"));
        write(&client).unwrap();
        assert_eq!(
            aws.imds_fetches.get(),
            2,
            "good for hours: not fetched again"
        );
    }

    #[test]
    fn a_failed_fetch_is_not_repeated() {
        let aws = FakeAws::default();
        let failing = client(&aws, imds(), None);
        assert!(futures::executor::block_on(failing.prepare()).is_err());
        let first = failing.credentials_failure().unwrap();
        assert!(matches!(write(&failing), Err(AwsError::Credentials(again)) if again == first));
        assert_eq!(aws.imds_fetches.get(), 0);
        assert!(aws.signed.borrow().is_empty());
    }

    #[test]
    fn with_a_role_arn_the_rotator_assumes_it_first_and_rotates_as_it() {
        let aws = FakeAws {
            imds_expirations: RefCell::new(vec![Utc::now() + chrono::Duration::hours(6)]),
            ..Default::default()
        };
        let client = client(&aws, imds(), Some("arn:aws:iam::123456789012:role/rotator"));
        write(&client).unwrap();
        assert_eq!(
            aws.signed.borrow().as_slice(),
            [
                (
                    "AssumeRole concourse-sts".to_owned(),
                    "ASIAIMDS1".to_owned()
                ),
                (
                    "secretsmanager.PutSecretValue".to_owned(),
                    "ASIACHAIN".to_owned()
                ),
            ]
        );
    }
}
