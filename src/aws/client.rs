//! Sending signed requests: operations become signed HTTP requests, answers become typed
//! results. Every answer's `Date` sets the tick's AWS time (see [`crate::clock`]); an
//! answer that refuses the request's time is sent once more with the corrected time, as
//! the SDKs do; an answer that refuses the rotator's own credentials fails the session
//! (see [`super::session`]). Writes pass a [`Gate`] right before they are sent.

use std::cell::RefCell;
use std::future::Future;

use super::endpoints::Endpoints;
use super::error::{parse_error_answer, ErrorKind};
use super::identity::{self, IdentityError, RotatorIdentity, SessionCredentials};
use super::secrets::{self, Operation};
use super::session::{Keys, Session};
use super::ssm;
use super::sts::{self, AssumeRole};
use super::transport::{HttpResponse, Transport};
use super::{AssumedCredentials, AwsError};
use crate::clock::{Clock, TimeSource};

/// The session name of the rotator's own role (`aws_role_arn`), as CloudTrail shows it.
pub const ROTATOR_SESSION_NAME: &str = "concourse-sts";
/// A chained role session lasts at most an hour, whatever is asked.
const CHAINED_SESSION_SECONDS: u32 = 3600;

/// What a write waits for and checks right before it is sent (see `tick::execute`): its
/// turn in the service's pace, then the lease. `Err` says why it must not be sent.
pub trait Gate {
    fn admit(&self) -> impl Future<Output = Result<(), String>>;
}

/// Sent at once: reads, and writes in tests that need no pace or lease.
impl Gate for () {
    async fn admit(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The rotator identity's view of AWS: signed calls to STS, Secrets Manager and
/// Parameter Store.
pub struct AwsClient<'c, T, S> {
    transport: T,
    clock: &'c Clock<S>,
    endpoints: Endpoints,
    session: Session,
    /// Requests sent since they were last taken, by service and outcome.
    sent: RefCell<RequestCounts>,
}

/// Requests sent: (service (`sts`, `secretsmanager`, `ssm`), outcome (`ok`, or the
/// error's [`ErrorKind::label`]), count), each pair once. A few dozen pairs at most, so
/// a list: a map type would cost the component more code than it saves time.
pub type RequestCounts = Vec<(&'static str, &'static str, u64)>;

/// One request, before it is signed.
struct Call<B> {
    service: &'static str,
    builder: B,
    body: Vec<u8>,
}

impl<'c, T: Transport, S: TimeSource> AwsClient<'c, T, S> {
    pub fn new(
        transport: T,
        clock: &'c Clock<S>,
        identity: RotatorIdentity,
        region: &str,
        endpoints: Endpoints,
    ) -> Self {
        Self {
            transport,
            clock,
            session: Session::new(identity, region),
            endpoints,
            sent: RefCell::default(),
        }
    }

    /// The requests sent since the last call, for the deployment's counters.
    pub fn take_request_counts(&self) -> RequestCounts {
        self.sent.take()
    }

    /// Gets the rotator's credentials now (before a tick takes its lease), unless the
    /// ones held are good for five more minutes.
    pub async fn prepare(&self) -> Result<(), IdentityError> {
        self.keys().await.map(drop)
    }

    /// Makes sure the clock knows AWS's time: unless an answer has already said it,
    /// `sts:GetCallerIdentity` (which any working credentials may call) asks.
    pub async fn learn_time(&self) -> Result<(), AwsError> {
        if self.clock.knows_aws_time() {
            return Ok(());
        }
        let response = self
            .sts(&(), sts::GET_CALLER_IDENTITY.as_bytes().to_vec())
            .await?;
        match self.clock.knows_aws_time() {
            true => Ok(()),
            false => Err(AwsError::Malformed {
                status: response.status,
                detail: "STS answered without a Date header, so AWS's time is unknown".into(),
            }),
        }
    }

    /// `sts:AssumeRole`.
    pub async fn assume_role(
        &self,
        request: &AssumeRole<'_>,
    ) -> Result<AssumedCredentials, AwsError> {
        let response = self.sts(&(), request.form_body().into_bytes()).await?;
        sts::parse_assume_role(&response).map_err(|error| self.session.redacted(error))
    }

    /// Sends one Secrets Manager operation through `gate` (see [`secrets::write_secret`]).
    pub async fn secrets_manager(
        &self,
        gate: &impl Gate,
        operation: Operation,
    ) -> Result<HttpResponse, AwsError> {
        let endpoint = &self.endpoints.secrets_manager;
        self.json_operation("secretsmanager", endpoint, gate, operation)
            .await
    }

    /// Sends one Parameter Store operation through `gate` (see [`ssm::write_parameter`]).
    pub async fn parameter_store(
        &self,
        gate: &impl Gate,
        operation: Operation,
    ) -> Result<HttpResponse, AwsError> {
        self.json_operation(ssm::SERVICE, &self.endpoints.ssm, gate, operation)
            .await
    }

    /// An `sts:GetCallerIdentity` request to the STS endpoint, with `headers` added and
    /// signed as the rotator, and not sent: Vault's AWS auth method replays it to STS to
    /// learn who is logging in (see [`crate::vault`]).
    pub async fn signed_caller_identity(
        &self,
        headers: &[(&str, &str)],
    ) -> Result<http::Request<Vec<u8>>, AwsError> {
        let keys = self.keys().await.map_err(AwsError::Credentials)?;
        let call = self.sts_call(sts::GET_CALLER_IDENTITY.as_bytes().to_vec());
        let mut request = unsigned(&call, headers)?;
        keys.signer
            .sign(call.service, &mut request, self.clock.now().into())?;
        Ok(request)
    }

    /// `error` with every credential value of the rotator's session replaced.
    pub fn redacted(&self, error: AwsError) -> AwsError {
        self.session.redacted(error)
    }

    /// Why the rotator's credentials could not be had, or were refused, once they were.
    pub fn credentials_failure(&self) -> Option<IdentityError> {
        self.session.failure()
    }

    async fn keys(&self) -> Result<std::rc::Rc<Keys>, IdentityError> {
        self.session
            .keys(self.clock.now(), || self.open_session())
            .await
    }

    /// The source's credentials, and with `aws_role_arn` the role assumed with them.
    async fn open_session(&self) -> Result<SessionCredentials, IdentityError> {
        let identity = self.session.identity();
        let source = identity::fetch(&identity.source, &self.transport).await?;
        let Some(role_arn) = &identity.role_arn else {
            return Ok(source);
        };
        let request = AssumeRole {
            role_arn,
            session_name: ROTATOR_SESSION_NAME,
            duration_seconds: CHAINED_SESSION_SECONDS,
            external_id: None,
        };
        let keys = self.session.keys_of(&source);
        let assumed = self
            .exchange(&keys, &(), &self.sts_call(request.form_body().into_bytes()))
            .await
            .and_then(|response| sts::parse_assume_role(&response))
            .map_err(|error| IdentityError {
                origin: format!("aws_role_arn {role_arn}"),
                reason: self.session.redacted(error).to_string(),
            })?;
        Ok(SessionCredentials {
            credentials: assumed.to_rotator_credentials(),
            expiration: Some(assumed.expiration),
        })
    }

    fn sts_call(&self, body: Vec<u8>) -> Call<impl Fn() -> http::request::Builder + '_> {
        let builder = move || {
            http::Request::post(format!("{}/", self.endpoints.sts))
                .header(http::header::CONTENT_TYPE, sts::CONTENT_TYPE)
        };
        Call {
            service: "sts",
            builder,
            body,
        }
    }

    async fn sts(&self, gate: &impl Gate, body: Vec<u8>) -> Result<HttpResponse, AwsError> {
        self.call(gate, self.sts_call(body)).await
    }

    /// One call of a JSON 1.1 service (Secrets Manager, Parameter Store).
    async fn json_operation(
        &self,
        service: &'static str,
        endpoint: &str,
        gate: &impl Gate,
        operation: Operation,
    ) -> Result<HttpResponse, AwsError> {
        let builder = || {
            http::Request::post(format!("{endpoint}/"))
                .header(http::header::CONTENT_TYPE, secrets::CONTENT_TYPE)
                .header("x-amz-target", operation.target)
        };
        let call = Call {
            service,
            builder,
            body: operation.body.clone(),
        };
        self.call(gate, call).await
    }

    /// Signs with the session's keys and sends; an answer that refused the rotator's
    /// credentials fails the session.
    async fn call<B>(&self, gate: &impl Gate, call: Call<B>) -> Result<HttpResponse, AwsError>
    where
        B: Fn() -> http::request::Builder,
    {
        let keys = self.keys().await.map_err(AwsError::Credentials)?;
        match self.exchange(&keys, gate, &call).await {
            Err(error) if error.kind() == ErrorKind::RotatorAuth => {
                Err(AwsError::Credentials(self.session.refuse(&error)))
            }
            other => other,
        }
    }

    /// Sends, and reads an error answer into a (scrubbed) error; when AWS refused the
    /// request's time and its answer corrected the clock, sends once more.
    async fn exchange<B>(
        &self,
        keys: &Keys,
        gate: &impl Gate,
        call: &Call<B>,
    ) -> Result<HttpResponse, AwsError>
    where
        B: Fn() -> http::request::Builder,
    {
        let mut resent = false;
        loop {
            let offset = self.clock.offset();
            let response = match self.send_once(keys, gate, call).await {
                Ok(response) => response,
                Err(error) => {
                    // Only a transport error was sent; the others never left.
                    if let AwsError::Transport(_) = error {
                        self.count(call.service, error.kind().label());
                    }
                    return Err(error);
                }
            };
            if response.status < 400 {
                self.count(call.service, "ok");
                return Ok(response);
            }
            let error = self
                .session
                .redacted(parse_error_answer(&response, "an AWS"));
            self.count(call.service, error.kind().label());
            let corrected = self.clock.offset() != offset;
            if error.kind() != ErrorKind::ClockSkew || !corrected || resent {
                return Err(error);
            }
            resent = true;
        }
    }

    fn count(&self, service: &'static str, outcome: &'static str) {
        let mut sent = self.sent.borrow_mut();
        match sent
            .iter_mut()
            .find(|(s, o, _)| (*s, *o) == (service, outcome))
        {
            Some((_, _, count)) => *count += 1,
            None => sent.push((service, outcome, 1)),
        }
    }

    /// One signed request through the gate; the answer's `Date` is learned, whatever
    /// the answer says.
    async fn send_once<B>(
        &self,
        keys: &Keys,
        gate: &impl Gate,
        call: &Call<B>,
    ) -> Result<HttpResponse, AwsError>
    where
        B: Fn() -> http::request::Builder,
    {
        let mut request = unsigned(call, &[])?;
        gate.admit().await.map_err(AwsError::Halted)?;
        keys.signer
            .sign(call.service, &mut request, self.clock.now().into())?;
        let sent = self.clock.instant();
        let response = self
            .transport
            .send(request)
            .await
            .map_err(|error| self.session.redacted(AwsError::Transport(error)))?;
        if let Some(date) = response.header("date") {
            self.clock
                .observe_date(date, self.clock.instant().since(sent));
        }
        Ok(response)
    }
}

/// The request of `call` with `headers` added, before it is signed. `content-length` is
/// always set: without it Spin's outbound HTTP sends the body chunked, which AWS SDKs
/// never do.
fn unsigned<B>(call: &Call<B>, headers: &[(&str, &str)]) -> Result<http::Request<Vec<u8>>, AwsError>
where
    B: Fn() -> http::request::Builder,
{
    let mut builder = (call.builder)();
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .header(http::header::CONTENT_LENGTH, call.body.len())
        .body(call.body.clone())
        .map_err(|error| AwsError::Request(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::identity::CredentialsSource;
    use crate::aws::secrets::{write_secret, Expectation, SecretWrite, Written};
    use crate::aws::RotatorCredentials;
    use crate::clock::tests::ManualTime;
    use crate::fake_aws::FakeAws;

    type Client<'a> = AwsClient<'a, &'a FakeAws, ManualTime>;

    fn client<'a>(
        aws: &'a FakeAws,
        source: CredentialsSource,
        role_arn: Option<&str>,
    ) -> Client<'a> {
        let identity = RotatorIdentity {
            source,
            role_arn: role_arn.map(str::to_owned),
        };
        let endpoints = Endpoints {
            sts: "http://aws.test".into(),
            secrets_manager: "http://aws.test".into(),
            ssm: "http://aws.test".into(),
        };
        AwsClient::new(aws, &aws.clock, identity, "us-east-1", endpoints)
    }

    fn imds() -> CredentialsSource {
        CredentialsSource::Imds {
            endpoint: "http://imds.test".into(),
        }
    }

    fn keys() -> CredentialsSource {
        CredentialsSource::Static(RotatorCredentials {
            access_key_id: "AKIDSTATIC".into(),
            secret_access_key: "secret".into(),
            session_token: None,
        })
    }

    fn write(client: &Client<'_>) -> Result<Written, AwsError> {
        futures::executor::block_on(write_one(client))
    }

    /// One secret's write, as the tests send it.
    fn secret_write() -> SecretWrite<'static> {
        SecretWrite {
            name: "/concourse/t/a",
            value: "v",
            request_token: "token".into(),
            description: String::new(),
        }
    }

    async fn write_one(client: &Client<'_>) -> Result<Written, AwsError> {
        let write = secret_write();
        let send = |operation| client.secrets_manager(&(), operation);
        write_secret(&write, Expectation::Exists, send).await
    }

    fn signed(aws: &FakeAws) -> Vec<(String, String)> {
        aws.signed.borrow().clone()
    }

    /// A secret expected missing is created in one call; one that exists after all
    /// gets its new version in a second.
    #[test]
    fn a_secret_expected_missing_is_created_first() {
        let aws = FakeAws::default();
        let client = client(&aws, keys(), None);
        let write = secret_write();
        let missing = || {
            let send = |operation| client.secrets_manager(&(), operation);
            futures::executor::block_on(write_secret(&write, Expectation::Missing, send))
        };
        assert_eq!(missing(), Ok(Written::Created));
        assert_eq!(
            aws.calls.borrow().as_slice(),
            ["CreateSecret /concourse/t/a"]
        );
        assert_eq!(missing(), Ok(Written::Updated));
        assert_eq!(
            aws.calls.borrow()[1..],
            [
                "CreateSecret /concourse/t/a",
                "PutSecretValue /concourse/t/a"
            ]
        );
    }

    #[test]
    fn a_refused_request_time_corrects_the_clock_once_for_every_request() {
        let aws = FakeAws::default();
        aws.clock.skew_wall(chrono::Duration::hours(1));
        let client = client(&aws, keys(), None);
        assert_eq!(write(&client), Ok(Written::Created));
        assert_eq!(
            aws.calls.borrow().as_slice(),
            [
                "refused InvalidSignatureException",
                "PutSecretValue /concourse/t/a",
                "CreateSecret /concourse/t/a"
            ],
            "refused, corrected, sent again"
        );
        assert_eq!(write(&client), Ok(Written::Updated));
        assert_eq!(aws.calls.borrow().len(), 4, "the correction stays");
        let error = (aws.clock.now() - aws.now()).abs();
        assert!(error <= chrono::Duration::seconds(1), "AWS time: {error}");
    }

    /// With nothing to learn it from yet, the time is asked of STS; once any answer has
    /// said it, it is not asked again.
    #[test]
    fn aws_time_is_learned_from_sts_when_no_answer_has_said_it() {
        let aws = FakeAws::default();
        aws.clock.skew_wall(chrono::Duration::minutes(-4));
        let client = client(&aws, keys(), None);
        futures::executor::block_on(client.learn_time()).unwrap();
        assert_eq!(aws.calls.borrow().as_slice(), ["GetCallerIdentity"]);
        assert!((aws.clock.now() - aws.now()).abs() <= chrono::Duration::seconds(1));
        futures::executor::block_on(client.learn_time()).unwrap();
        assert_eq!(aws.calls.borrow().len(), 1);
    }

    #[test]
    fn credentials_are_fetched_once_and_again_only_when_they_near_expiry() {
        let aws = FakeAws::default();
        let now = aws.now();
        aws.imds_expirations.borrow_mut().extend([
            now + chrono::Duration::minutes(4),
            now + chrono::Duration::hours(6),
        ]);
        let client = client(&aws, imds(), None);
        futures::executor::block_on(client.prepare()).unwrap();
        assert_eq!(aws.imds_fetches.get(), 1);
        // Four writes at once: the credentials expire within five minutes, so they are
        // fetched again, once.
        futures::executor::block_on(futures::future::join_all(
            (0..4).map(|_| write_one(&client)),
        ));
        assert_eq!(aws.imds_fetches.get(), 2);
        assert!(signed(&aws).iter().all(|(_, key)| key == "ASIAIMDS2"));
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
        assert!(signed(&aws).is_empty());
    }

    /// Keys AWS does not know fail the session: the next request is not even sent.
    #[test]
    fn refused_credentials_fail_the_session() {
        let aws = FakeAws::default();
        aws.refuse_keys.set(true);
        let client = client(&aws, keys(), None);
        let refused = write(&client).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::RotatorAuth);
        let failure = client.credentials_failure().unwrap().to_string();
        assert!(
            failure.contains("static keys") && failure.contains("UnrecognizedClientException"),
            "{failure}"
        );
        assert!(!failure.contains("AKIDSTATIC") && !failure.contains("secret"));
        assert!(write(&client).is_err());
        assert_eq!(signed(&aws).len(), 1, "one request, then none");
    }

    /// A write's gate is asked right before each request goes out, and a refusal keeps
    /// it from going out at all.
    #[test]
    fn a_gate_that_refuses_keeps_the_request_from_being_sent() {
        struct Closed;
        impl Gate for Closed {
            async fn admit(&self) -> Result<(), String> {
                Err("the lease was taken over by tick-other".into())
            }
        }
        let aws = FakeAws::default();
        let client = client(&aws, keys(), None);
        let write = secret_write();
        let sent = write_secret(&write, Expectation::Exists, |operation| {
            client.secrets_manager(&Closed, operation)
        });
        let error = futures::executor::block_on(sent).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Halted);
        assert!(error.to_string().contains("tick-other"));
        assert!(signed(&aws).is_empty(), "nothing was sent");
    }

    #[test]
    fn with_a_role_arn_the_rotator_assumes_it_first_and_rotates_as_it() {
        let aws = FakeAws::default();
        aws.imds_expirations
            .borrow_mut()
            .push(aws.now() + chrono::Duration::hours(6));
        let role = "arn:aws:iam::123456789012:role/rotator";
        let client = client(&aws, imds(), Some(role));
        write(&client).unwrap();
        assert_eq!(
            signed(&aws)[..2],
            [
                (format!("AssumeRole {role}"), "ASIAIMDS1".to_owned()),
                (
                    "PutSecretValue /concourse/t/a".to_owned(),
                    "ASIAFAKE00000001".to_owned()
                ),
            ]
        );
    }
}
