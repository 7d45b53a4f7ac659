//! Where the rotator's own credentials come from. Static keys are the one secret whose
//! leak exposes every team, so the component also takes the credentials of the machine or
//! container it runs on, as the AWS SDKs do: the EC2 instance metadata service (IMDSv2
//! only) or the container credentials endpoint (ECS task roles, EKS Pod Identity). Either
//! way it may then assume one more role of its own (`aws_role_arn`) and rotate as that.
//!
//! Nothing fetched here is logged, stored or put into an error: a failure says where it
//! asked and what status it got, never what it was told.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::transport::{HttpResponse, Transport};
use super::RotatorCredentials;

/// How long an IMDSv2 session token lives: long enough for one tick.
const IMDS_TOKEN_TTL_SECONDS: &str = "300";

/// Where the rotator's credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialsSource {
    /// Keys given in variables.
    Static(RotatorCredentials),
    /// The EC2 instance metadata service at this base URL.
    Imds { endpoint: String },
    /// A container credentials endpoint (`uri`), with its authorization token if any.
    Container {
        uri: String,
        authorization: Option<SecretString>,
    },
}

impl CredentialsSource {
    /// Where the credentials come from, for errors and the documentation of limits.
    pub fn describe(&self) -> String {
        match self {
            CredentialsSource::Static(_) => "the static keys (aws_access_key_id)".to_owned(),
            CredentialsSource::Imds { endpoint } => format!("IMDS at {endpoint}"),
            CredentialsSource::Container { uri, .. } => {
                format!("the container credentials endpoint {uri}")
            }
        }
    }
}

/// The rotator's identity: a source of credentials, and optionally a role to assume
/// with them (role chaining) before rotating.
#[derive(Debug, Clone)]
pub struct RotatorIdentity {
    pub source: CredentialsSource,
    pub role_arn: Option<String>,
}

impl RotatorIdentity {
    /// Why the rotator is a role session, if it is one: AWS then caps every session it
    /// assumes at one hour (role chaining).
    pub fn role_session(&self) -> Option<String> {
        match (&self.role_arn, &self.source) {
            (Some(_), _) => Some("aws_role_arn is set".to_owned()),
            (None, CredentialsSource::Static(_)) => None,
            (None, source) => Some(format!("its credentials come from {}", source.describe())),
        }
    }
}

/// Credentials and when they stop working (`None`: static keys, which do not expire).
#[derive(Clone)]
pub struct SessionCredentials {
    pub credentials: RotatorCredentials,
    pub expiration: Option<DateTime<Utc>>,
}

/// Credentials could not be had from a source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("getting the rotator's credentials from {origin}: {reason}")]
pub struct IdentityError {
    pub origin: String,
    pub reason: String,
}

/// The credentials a source gives now.
pub async fn fetch(
    source: &CredentialsSource,
    transport: &impl Transport,
) -> Result<SessionCredentials, IdentityError> {
    let failed = |reason: String| IdentityError {
        origin: source.describe(),
        reason,
    };
    match source {
        CredentialsSource::Static(credentials) => Ok(SessionCredentials {
            credentials: credentials.clone(),
            expiration: None,
        }),
        CredentialsSource::Imds { endpoint } => imds(endpoint, transport).await.map_err(failed),
        CredentialsSource::Container { uri, authorization } => {
            container(uri, authorization.as_ref(), transport)
                .await
                .map_err(failed)
        }
    }
}

/// IMDSv2: a session token first (`PUT`), then the role's name and its credentials, each
/// asked with the token. IMDSv1's token-less `GET`s are never used.
async fn imds(endpoint: &str, transport: &impl Transport) -> Result<SessionCredentials, String> {
    let token_request = http::Request::put(format!("{endpoint}/latest/api/token"))
        .header(
            "x-aws-ec2-metadata-token-ttl-seconds",
            IMDS_TOKEN_TTL_SECONDS,
        )
        .header(http::header::CONTENT_LENGTH, 0);
    let token = text(get(transport, token_request, "the session token").await?)?;
    let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
    let ask = |url: String| {
        http::Request::get(url).header("x-aws-ec2-metadata-token", token.trim().to_owned())
    };
    let roles = text(get(transport, ask(base.clone()), "the instance's role").await?)?;
    let role = roles
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or("the instance has no IAM role attached")?;
    let answer = get(
        transport,
        ask(format!("{base}{role}")),
        "the role's credentials",
    )
    .await?;
    credentials(&answer)
}

/// The container endpoint: one `GET`, with the token as `Authorization` when there is one.
async fn container(
    uri: &str,
    authorization: Option<&SecretString>,
    transport: &impl Transport,
) -> Result<SessionCredentials, String> {
    let mut request = http::Request::get(uri);
    if let Some(token) = authorization {
        request = request.header(http::header::AUTHORIZATION, token.expose_secret().trim());
    }
    credentials(&get(transport, request, "the credentials").await?)
}

/// Sends a metadata request and wants a 200; the error says what was asked, and how it
/// went, never what was answered.
async fn get(
    transport: &impl Transport,
    request: http::request::Builder,
    what: &str,
) -> Result<HttpResponse, String> {
    let request = request
        .body(Vec::new())
        .map_err(|error| format!("asking for {what}: {error}"))?;
    let answer = transport
        .send(request)
        .await
        .map_err(|error| format!("asking for {what}: {error}"))?;
    if answer.status != 200 {
        return Err(format!("asking for {what}: HTTP {}", answer.status));
    }
    Ok(answer)
}

fn text(answer: HttpResponse) -> Result<String, String> {
    String::from_utf8(answer.body).map_err(|_| "the answer is not text".to_owned())
}

/// The JSON both metadata services answer with.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MetadataCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: DateTime<Utc>,
}

fn credentials(answer: &HttpResponse) -> Result<SessionCredentials, String> {
    // The body holds the secret: a parse error must not quote it.
    let parsed: MetadataCredentials = serde_json::from_slice(&answer.body).map_err(|_| {
        "the answer is not a credentials document (AccessKeyId, SecretAccessKey, Token, Expiration)"
            .to_owned()
    })?;
    Ok(SessionCredentials {
        credentials: RotatorCredentials {
            access_key_id: parsed.access_key_id.into(),
            secret_access_key: parsed.secret_access_key.into(),
            session_token: Some(parsed.token.into()),
        },
        expiration: Some(parsed.expiration),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::TransportError;
    use std::cell::RefCell;

    const ANSWER: &str = r#"{"Code":"Success","AccessKeyId":"ASIAMETA","SecretAccessKey":"metasecret","Token":"metatoken","Expiration":"2030-01-01T06:00:00Z"}"#;

    /// A metadata service: IMDSv2 (a GET without the session token gets 401, as on EC2)
    /// and a container endpoint that wants its authorization token.
    #[derive(Default)]
    struct FakeMetadata {
        asked: RefCell<Vec<String>>,
        answer: Option<&'static str>,
    }

    impl Transport for FakeMetadata {
        async fn send(
            &self,
            request: http::Request<Vec<u8>>,
        ) -> Result<HttpResponse, TransportError> {
            let path = request.uri().path().to_owned();
            self.asked
                .borrow_mut()
                .push(format!("{} {path}", request.method()));
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let answer = self.answer.unwrap_or(ANSWER);
            let reply = |status, body: &str| Ok(HttpResponse::new(status, body));
            match (request.method().as_str(), path.as_str()) {
                ("PUT", "/latest/api/token") => {
                    match header("x-aws-ec2-metadata-token-ttl-seconds") {
                        Some(_) => reply(200, "imds-session"),
                        None => reply(400, ""),
                    }
                }
                (_, p) if p.starts_with("/latest/") => {
                    if header("x-aws-ec2-metadata-token").as_deref() != Some("imds-session") {
                        return reply(401, "");
                    }
                    match p.trim_start_matches("/latest/meta-data/iam/security-credentials/") {
                        "" => reply(200, "rotator-role\n"),
                        "rotator-role" => reply(200, answer),
                        _ => reply(404, ""),
                    }
                }
                ("GET", "/v1/credentials") => match header("authorization").as_deref() {
                    Some("pod-token") => reply(200, answer),
                    _ => reply(403, "denied"),
                },
                _ => reply(404, ""),
            }
        }
    }

    fn imds_source() -> CredentialsSource {
        CredentialsSource::Imds {
            endpoint: "http://169.254.169.254".into(),
        }
    }

    #[test]
    fn imds_v2_asks_for_a_session_token_then_the_role_and_its_credentials() {
        let metadata = FakeMetadata::default();
        let session = futures::executor::block_on(fetch(&imds_source(), &metadata)).unwrap();
        assert_eq!(
            metadata.asked.borrow().as_slice(),
            [
                "PUT /latest/api/token",
                "GET /latest/meta-data/iam/security-credentials/",
                "GET /latest/meta-data/iam/security-credentials/rotator-role"
            ]
        );
        let values = session.credentials.secret_values();
        assert_eq!(values, ["ASIAMETA", "metasecret", "metatoken"]);
        assert_eq!(
            session.expiration,
            Some("2030-01-01T06:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn the_container_endpoint_gets_its_token() {
        let metadata = FakeMetadata::default();
        let source = |token: Option<&str>| CredentialsSource::Container {
            uri: "http://169.254.170.23/v1/credentials".into(),
            authorization: token.map(|t| SecretString::from(t.to_owned())),
        };
        let session =
            futures::executor::block_on(fetch(&source(Some("pod-token\n")), &metadata)).unwrap();
        assert_eq!(session.credentials.secret_values()[0], "ASIAMETA");
        let refused = futures::executor::block_on(fetch(&source(None), &metadata)).err();
        assert_eq!(
            refused.map(|e| e.to_string()).as_deref(),
            Some("getting the rotator's credentials from the container credentials endpoint http://169.254.170.23/v1/credentials: asking for the credentials: HTTP 403")
        );
    }

    #[test]
    fn failures_name_the_source_and_never_quote_the_answer() {
        let garbled = FakeMetadata {
            answer: Some(r#"{"AccessKeyId":"ASIALEAK","SecretAccessKey":"leaked-secret"}"#),
            ..Default::default()
        };
        let error = futures::executor::block_on(fetch(&imds_source(), &garbled))
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with("getting the rotator's credentials from IMDS at http://169.254.169.254: the answer is not a credentials document"), "{error}");
        assert!(
            !error.contains("leaked") && !error.contains("ASIALEAK"),
            "{error}"
        );
    }

    #[test]
    fn a_role_session_is_told_and_why() {
        let keys = RotatorCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "SECRET".into(),
            session_token: None,
        };
        let static_keys = RotatorIdentity {
            source: CredentialsSource::Static(keys),
            role_arn: None,
        };
        assert_eq!(static_keys.role_session(), None);
        let chained = RotatorIdentity {
            role_arn: Some("arn:aws:iam::123456789012:role/rotator".into()),
            ..static_keys
        };
        assert_eq!(
            chained.role_session().as_deref(),
            Some("aws_role_arn is set")
        );
        let instance = RotatorIdentity {
            source: imds_source(),
            role_arn: None,
        };
        assert_eq!(
            instance.role_session().as_deref(),
            Some("its credentials come from IMDS at http://169.254.169.254")
        );
    }
}
