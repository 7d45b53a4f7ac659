//! Sending signed requests. The runtime supplies a [`Transport`] (Spin's outbound HTTP in
//! the component, a fake in unit tests); this module turns operations into signed HTTP
//! requests and answers into typed results.

use std::future::Future;
use std::time::SystemTime;

use super::secrets::{self, Operation};
use super::signing::Signer;
use super::sts::{self, AssumeRole};
use super::{AssumedCredentials, AwsError, RotatorCredentials};

/// An HTTP answer, already read (up to the transport's size limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }
}

/// A request that got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Sends one HTTP request. Implementations add nothing the signature does not cover.
pub trait Transport {
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> impl Future<Output = Result<HttpResponse, TransportError>>;
}

/// Waits for a Secrets Manager write's turn (see [`crate::pace`]).
pub trait Pace {
    fn wait_turn(&self) -> impl Future<Output = ()>;
}

/// No pacing.
impl Pace for () {
    async fn wait_turn(&self) {}
}

/// Where the two services are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub sts: String,
    pub secrets_manager: String,
}

/// The endpoint overrides, as the variables name them.
#[derive(Debug, Clone, Default)]
pub struct EndpointOverrides<'a> {
    /// `aws_endpoint_url`: both services, like the SDKs' `AWS_ENDPOINT_URL`.
    pub aws: Option<&'a str>,
    /// `sts_endpoint_url`.
    pub sts: Option<&'a str>,
    /// `secretsmanager_endpoint_url`.
    pub secrets_manager: Option<&'a str>,
}

impl Endpoints {
    /// The regional AWS endpoints, unless overridden (the per-service override wins).
    pub fn resolve(region: &str, overrides: &EndpointOverrides) -> Result<Self, String> {
        let valid_region = !region.is_empty()
            && region.len() <= 32
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_region {
            return Err(format!(
                "aws_region {region:?} is not an AWS region name such as us-east-1"
            ));
        }
        let domain = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        let pick =
            |variable: &str, specific: Option<&str>, service: &str| match (specific, overrides.aws)
            {
                (Some(url), _) => check_endpoint(variable, url),
                (None, Some(url)) => check_endpoint("aws_endpoint_url", url),
                (None, None) => Ok(format!("https://{service}.{region}.{domain}")),
            };
        Ok(Self {
            sts: pick("sts_endpoint_url", overrides.sts, "sts")?,
            secrets_manager: pick(
                "secretsmanager_endpoint_url",
                overrides.secrets_manager,
                "secretsmanager",
            )?,
        })
    }
}

/// An endpoint is `http(s)://host[:port]`, with nothing after it but an optional `/`.
fn check_endpoint(variable: &str, url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    let uri: http::Uri = trimmed
        .parse()
        .map_err(|error| format!("{variable} {url:?} is not a URL: {error}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let bare = uri
        .path_and_query()
        .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty());
    if !scheme_ok || uri.host().is_none() || !bare {
        return Err(format!(
            "{variable} {url:?} must be http:// or https:// followed by a host and optional port, with no path"
        ));
    }
    Ok(trimmed.to_owned())
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

    /// Writes one secret: a new version if it exists, else the secret itself.
    pub async fn write_secret(
        &self,
        pace: &impl Pace,
        name: &str,
        value: &str,
        team: &str,
        account: &str,
    ) -> Result<Written, AwsError> {
        let put = || self.secrets_manager(pace, secrets::put_secret_value(name, value));
        match put().await {
            Err(error) if error.code() == Some(secrets::NOT_FOUND) => {}
            other => return other.map(|()| Written::Updated),
        }
        let create = secrets::create_secret(name, value, team, account);
        match self.secrets_manager(pace, create).await {
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
            .map_err(|error| self.redacted(AwsError::Transport(error.0)))
    }

    fn redacted(&self, error: AwsError) -> AwsError {
        let secrets: Vec<&str> = self.redact.iter().map(String::as_str).collect();
        error.redacted(&secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regional_endpoints_by_default() {
        let endpoints = Endpoints::resolve("eu-west-1", &EndpointOverrides::default()).unwrap();
        assert_eq!(endpoints.sts, "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(
            endpoints.secrets_manager,
            "https://secretsmanager.eu-west-1.amazonaws.com"
        );
        let china = Endpoints::resolve("cn-north-1", &EndpointOverrides::default()).unwrap();
        assert_eq!(china.sts, "https://sts.cn-north-1.amazonaws.com.cn");
    }

    #[test]
    fn one_override_for_both_and_one_each_that_wins() {
        let both = EndpointOverrides {
            aws: Some("http://127.0.0.1:5000/"),
            ..Default::default()
        };
        let endpoints = Endpoints::resolve("us-east-1", &both).unwrap();
        assert_eq!(endpoints.sts, "http://127.0.0.1:5000");
        assert_eq!(endpoints.secrets_manager, "http://127.0.0.1:5000");
        let specific = EndpointOverrides {
            sts: Some("https://sts.example.internal:8443"),
            ..both
        };
        let endpoints = Endpoints::resolve("us-east-1", &specific).unwrap();
        assert_eq!(endpoints.sts, "https://sts.example.internal:8443");
        assert_eq!(endpoints.secrets_manager, "http://127.0.0.1:5000");
    }

    #[test]
    fn bad_endpoints_and_regions_name_their_variable() {
        for (overrides, variable) in [
            (
                EndpointOverrides {
                    aws: Some("127.0.0.1:5000"),
                    ..Default::default()
                },
                "aws_endpoint_url",
            ),
            (
                EndpointOverrides {
                    sts: Some("ftp://host"),
                    ..Default::default()
                },
                "sts_endpoint_url",
            ),
            (
                EndpointOverrides {
                    secrets_manager: Some("http://host/path"),
                    ..Default::default()
                },
                "secretsmanager_endpoint_url",
            ),
        ] {
            let error = Endpoints::resolve("us-east-1", &overrides).unwrap_err();
            assert!(error.starts_with(variable), "{error}");
        }
        for region in ["", "US-EAST-1", "us east 1", "us-east-1.evil.com/"] {
            let error = Endpoints::resolve(region, &EndpointOverrides::default()).unwrap_err();
            assert!(error.starts_with("aws_region"), "{error}");
        }
    }
}
