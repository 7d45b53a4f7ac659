//! Secrets Manager over the JSON 1.1 protocol: `PutSecretValue`, and `CreateSecret` when
//! the secret does not exist yet.

use std::future::Future;

use serde::{Deserialize, Serialize};

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::error::parse_error_answer;
use super::{AssumedCredentials, AwsError, ErrorKind, HttpResponse};

/// What the caller knows of a secret or parameter before writing it, which picks the
/// first call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    /// This sink has written the name before (the account rotated into it): a new
    /// version, or an overwrite.
    Exists,
    /// It never has (a new account, format or sink): create it.
    Missing,
}

/// How a secret write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new version of an existing secret.
    Updated,
    /// The secret did not exist and was created.
    Created,
}

/// The media type of the JSON 1.1 protocol.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// One operation of a JSON-protocol service (Secrets Manager, Parameter Store), ready
/// to be sent.
pub struct Operation {
    /// The `X-Amz-Target` header value.
    pub target: &'static str,
    pub body: Vec<u8>,
}

impl Operation {
    pub(super) fn new(target: &'static str, body: &impl Serialize) -> Self {
        let body = serde_json::to_vec(body).expect("string, bool and tag fields always serialize");
        Operation { target, body }
    }
}

/// One secret write: where, what, and the token that makes a retry of it idempotent.
pub struct SecretWrite<'a> {
    pub name: &'a str,
    pub value: &'a str,
    /// `ClientRequestToken`: derived from the secret's name and the new credentials'
    /// access key id, so every retry of this write (after a timeout or a lost answer)
    /// names the same version and AWS adds no second one.
    pub request_token: String,
    /// Set on a secret that is created, so that whoever finds it knows what writes it.
    pub description: String,
}

impl<'a> SecretWrite<'a> {
    pub fn new(
        name: &'a str,
        value: &'a str,
        credentials: &AssumedCredentials,
        team: &str,
        account: &str,
    ) -> Self {
        Self {
            name,
            value,
            request_token: request_token(name, credentials.access_key_id.expose_secret()),
            description: format!(
                "Temporary AWS credentials for Concourse team {team}, account {account}; rotated by concourse-sts"
            ),
        }
    }
}

/// A UUID (as the SDKs send) made from a digest of the secret's name and the access key
/// id: stable for one set of credentials, different for the next.
fn request_token(name: &str, access_key_id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([0])
        .chain_update(access_key_id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes).hyphenated().to_string()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutSecretValue<'a> {
    secret_id: &'a str,
    secret_string: &'a str,
    client_request_token: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CreateSecret<'a> {
    name: &'a str,
    secret_string: &'a str,
    description: &'a str,
    client_request_token: &'a str,
}

/// A new version of an existing secret.
pub fn put_secret_value(write: &SecretWrite) -> Operation {
    Operation::new(
        "secretsmanager.PutSecretValue",
        &PutSecretValue {
            secret_id: write.name,
            secret_string: write.value,
            client_request_token: &write.request_token,
        },
    )
}

/// A secret that does not exist yet, with its first version.
pub fn create_secret(write: &SecretWrite) -> Operation {
    Operation::new(
        "secretsmanager.CreateSecret",
        &CreateSecret {
            name: write.name,
            secret_string: write.value,
            description: &write.description,
            client_request_token: &write.request_token,
        },
    )
}

/// Writes one secret through `send`, which signs, gates and sends one [`Operation`] and
/// returns the answer: a new version if the secret exists, else the secret itself,
/// trying first what `expectation` says (a wrong guess costs one more call; a mass
/// registration writes each secret in one call, not two). Both carry the write's request
/// token, so a retried write never adds a second version.
pub async fn write_secret<S, F>(
    write: &SecretWrite<'_>,
    expectation: Expectation,
    send: S,
) -> Result<Written, AwsError>
where
    S: Fn(Operation) -> F,
    F: Future<Output = Result<HttpResponse, AwsError>>,
{
    let sent = |operation| {
        let answer = send(operation);
        async { check_write(&answer.await?) }
    };
    if expectation == Expectation::Exists {
        match sent(put_secret_value(write)).await {
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            other => return other.map(|()| Written::Updated),
        }
    }
    match sent(create_secret(write)).await {
        // It exists after all (another writer created it in between, or it was never
        // ours to expect missing): our value still has to land.
        Err(error) if error.kind() == ErrorKind::AlreadyExists => sent(put_secret_value(write))
            .await
            .map(|()| Written::Updated),
        other => other.map(|()| Written::Created),
    }
}

/// What a successful write answers; its `ARN` is what proves the write landed.
#[derive(Deserialize)]
struct WriteAnswer {
    #[serde(rename = "ARN")]
    arn: String,
}

/// Checks a write's answer: a 2xx carrying the secret's ARN is success (a garbled 200
/// from a proxy is not), anything else a typed error. The code is read from `__type`
/// (dropping a `prefix#`), never guessed from the status: moto answers
/// `ResourceNotFoundException` with 404 where AWS uses 400.
pub fn check_write(response: &HttpResponse) -> Result<(), AwsError> {
    if (200..300).contains(&response.status) {
        return match serde_json::from_slice::<WriteAnswer>(&response.body) {
            Ok(answer) if !answer.arn.is_empty() => Ok(()),
            _ => Err(AwsError::Malformed {
                status: response.status,
                detail: "a write answered without the secret's ARN".to_owned(),
            }),
        };
    }
    Err(parse_error_answer(response, "a Secrets Manager"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(status, body)
    }

    fn credentials(access_key_id: &str) -> AssumedCredentials {
        AssumedCredentials {
            access_key_id: access_key_id.to_owned().into(),
            secret_access_key: "S".to_owned().into(),
            session_token: "T".to_owned().into(),
            expiration: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn builds_put_and_create_bodies_with_one_request_token() {
        let first = credentials("ASIAFIRST");
        let write = SecretWrite::new("/concourse/t/a-access-key", "v\"1", &first, "t", "a");
        let put = put_secret_value(&write);
        assert_eq!(put.target, "secretsmanager.PutSecretValue");
        let token = &write.request_token;
        assert_eq!(
            String::from_utf8(put.body).unwrap(),
            format!(
                r#"{{"SecretId":"/concourse/t/a-access-key","SecretString":"v\"1","ClientRequestToken":"{token}"}}"#
            )
        );
        let create = create_secret(&write);
        assert_eq!(create.target, "secretsmanager.CreateSecret");
        let body: serde_json::Value = serde_json::from_slice(&create.body).unwrap();
        assert_eq!(body["Name"], "/concourse/t/a-access-key");
        assert_eq!(body["SecretString"], "v\"1");
        assert_eq!(body["ClientRequestToken"], token.as_str());
        assert!(body["Description"]
            .as_str()
            .unwrap()
            .contains("team t, account a"));
    }

    #[test]
    fn request_tokens_are_uuids_stable_per_secret_and_credentials() {
        let token =
            |name, key| SecretWrite::new(name, "v", &credentials(key), "t", "a").request_token;
        let one = token("/c/t/a-access-key", "ASIAFIRST");
        assert_eq!(one.len(), 36, "AWS wants 32 to 64 characters");
        assert!(uuid::Uuid::parse_str(&one).is_ok());
        assert_eq!(
            one,
            token("/c/t/a-access-key", "ASIAFIRST"),
            "a retry reuses it"
        );
        assert_ne!(
            one,
            token("/c/t/a-secret-key", "ASIAFIRST"),
            "each secret its own"
        );
        assert_ne!(
            one,
            token("/c/t/a-access-key", "ASIANEXT"),
            "each rotation its own"
        );
        assert!(!one.contains("ASIA"));
    }

    #[test]
    fn success_is_a_2xx_naming_the_secret() {
        let landed = r#"{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:/c/t/a-AbCdEf","Name":"/c/t/a","VersionId":"v1"}"#;
        assert_eq!(check_write(&answer(200, landed)), Ok(()));
        for garbled in [
            "",
            "{}",
            "{\"ARN\":\"\"}",
            "\u{1}\u{2}",
            "{\"ARN\":\"arn:aws",
        ] {
            let error = check_write(&answer(200, garbled)).unwrap_err();
            assert!(
                matches!(error, AwsError::Malformed { status: 200, .. }),
                "{garbled:?}"
            );
        }
    }

    #[test]
    fn not_found_is_read_from_the_type_whatever_the_status() {
        for status in [400, 404] {
            let error = check_write(&answer(
                status,
                r#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","message":"Secrets Manager can't find the specified secret."}"#,
            ))
            .unwrap_err();
            assert_eq!(error.code(), Some("ResourceNotFoundException"));
            assert_eq!(error.kind(), crate::aws::ErrorKind::NotFound);
        }
        let error = check_write(&answer(
            400,
            r#"{"__type":"ThrottlingException","Message":"Rate exceeded"}"#,
        ))
        .unwrap_err();
        assert_eq!(error.code(), Some("ThrottlingException"));
        assert!(error.to_string().contains("Rate exceeded"));
        assert!(error.is_retryable());
    }

    #[test]
    fn xml_authorization_failures_are_read_too() {
        let body = r#"<?xml version="1.0" encoding="utf-8"?>
<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: x is not authorized to perform: secretsmanager:PutSecretValue</Message></Error></Errors></ErrorResponse>"#;
        let error = check_write(&answer(403, body)).unwrap_err();
        assert_eq!(error.code(), Some("AccessDenied"));
        assert!(error.to_string().contains("secretsmanager:PutSecretValue"));
    }

    #[test]
    fn unreadable_errors_are_malformed() {
        for body in [
            "",
            "<html>502</html>",
            "{\"message\":\"no type\"}",
            "[1]",
            "{\"__type\":5}",
        ] {
            let error = check_write(&answer(502, body)).unwrap_err();
            assert!(
                matches!(error, AwsError::Malformed { status: 502, .. }),
                "{body}: {error:?}"
            );
        }
    }
}
