//! Sending signed requests: operations become signed HTTP requests, answers become
//! typed results.

use std::future::Future;
use std::time::SystemTime;

use super::endpoints::Endpoints;
use super::secrets::{self, Operation, SecretWrite};
use super::signing::Signer;
use super::sts::{self, AssumeRole};
use super::transport::{HttpResponse, Transport};
use super::{AssumedCredentials, AwsError, RotatorCredentials};

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

/// The rotator identity's view of AWS: signed calls to STS and Secrets Manager.
pub struct AwsClient<T> {
    transport: T,
    signer: Signer,
    endpoints: Endpoints,
    redact: Vec<String>,
}

impl<T: Transport> AwsClient<T> {
    pub fn new(
        transport: T,
        credentials: &RotatorCredentials,
        region: &str,
        endpoints: Endpoints,
    ) -> Self {
        Self {
            transport,
            signer: Signer::new(credentials, region),
            endpoints,
            redact: credentials
                .secret_values()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }

    /// `sts:AssumeRole`.
    pub async fn assume_role(
        &self,
        request: &AssumeRole<'_>,
    ) -> Result<AssumedCredentials, AwsError> {
        let url = format!("{}/", self.endpoints.sts);
        let builder =
            http::Request::post(url).header(http::header::CONTENT_TYPE, sts::CONTENT_TYPE);
        let response = self
            .call("sts", builder, request.form_body().into_bytes())
            .await?;
        sts::parse_assume_role(&response).map_err(|error| self.redacted(error))
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

    async fn secrets_manager(
        &self,
        pace: &impl Pace,
        operation: Operation,
    ) -> Result<(), AwsError> {
        pace.wait_turn().await;
        let url = format!("{}/", self.endpoints.secrets_manager);
        let builder = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, secrets::CONTENT_TYPE)
            .header("x-amz-target", operation.target);
        let response = self.call("secretsmanager", builder, operation.body).await?;
        secrets::check_write(&response).map_err(|error| self.redacted(error))
    }

    /// Signs and sends. `content-length` is always set: without it Spin's outbound HTTP
    /// sends the body chunked, which AWS SDKs never do.
    async fn call(
        &self,
        service: &str,
        builder: http::request::Builder,
        body: Vec<u8>,
    ) -> Result<HttpResponse, AwsError> {
        let mut request = builder
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .map_err(|error| AwsError::Request(error.to_string()))?;
        self.signer.sign(service, &mut request, SystemTime::now())?;
        self.transport
            .send(request)
            .await
            .map_err(|error| self.redacted(AwsError::Transport(error)))
    }

    fn redacted(&self, error: AwsError) -> AwsError {
        let secrets: Vec<&str> = self.redact.iter().map(String::as_str).collect();
        error.redacted(&secrets)
    }
}
