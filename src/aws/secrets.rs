//! Secrets Manager over the JSON 1.1 protocol: `PutSecretValue`, and `CreateSecret` when
//! the secret does not exist yet.

use serde::{Deserialize, Serialize};

use super::error::{parse_xml_error, truncate};
use super::{AwsError, HttpResponse};

/// The media type of the JSON 1.1 protocol.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The error code that means "create it first".
pub const NOT_FOUND: &str = "ResourceNotFoundException";
/// The error code of a `CreateSecret` that lost a race with another writer.
pub const ALREADY_EXISTS: &str = "ResourceExistsException";

/// One Secrets Manager operation, ready to be sent.
pub struct Operation {
    /// The `X-Amz-Target` header value.
    pub target: &'static str,
    pub body: Vec<u8>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutSecretValue<'a> {
    secret_id: &'a str,
    secret_string: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CreateSecret<'a> {
    name: &'a str,
    secret_string: &'a str,
    description: &'a str,
}

/// A new version of an existing secret.
pub fn put_secret_value(name: &str, value: &str) -> Operation {
    Operation {
        target: "secretsmanager.PutSecretValue",
        body: to_json(&PutSecretValue {
            secret_id: name,
            secret_string: value,
        }),
    }
}

/// A secret that does not exist yet, described so that a person who finds it in the
/// console knows what writes it.
pub fn create_secret(name: &str, value: &str, team: &str, account: &str) -> Operation {
    let description =
        format!("Temporary AWS credentials for Concourse team {team}, account {account}; rotated by concourse-sts");
    Operation {
        target: "secretsmanager.CreateSecret",
        body: to_json(&CreateSecret {
            name,
            secret_string: value,
            description: &description,
        }),
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("string fields always serialize")
}

#[derive(Deserialize)]
struct JsonError {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(alias = "Message", default)]
    message: String,
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
    let parsed = serde_json::from_slice::<JsonError>(&response.body)
        .ok()
        .filter(|error| !error.kind.is_empty());
    let body = String::from_utf8_lossy(&response.body);
    Err(match parsed {
        Some(error) => AwsError::Service {
            status: response.status,
            code: truncate(error.kind.rsplit('#').next().unwrap_or_default(), 100),
            message: truncate(&error.message, 500),
        },
        // Authorization failures can come back in the XML shape (moto does this).
        None => parse_xml_error(response.status, &body).unwrap_or_else(|| AwsError::Malformed {
            status: response.status,
            detail: format!(
                "not a Secrets Manager error document: {:?}",
                truncate(&body, 200)
            ),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(status, body)
    }

    #[test]
    fn builds_put_and_create_bodies() {
        let put = put_secret_value("/concourse/t/a-access-key", "v\"1");
        assert_eq!(put.target, "secretsmanager.PutSecretValue");
        assert_eq!(
            String::from_utf8(put.body).unwrap(),
            r#"{"SecretId":"/concourse/t/a-access-key","SecretString":"v\"1"}"#
        );
        let create = create_secret("/concourse/t/a-access-key", "v", "t", "a");
        assert_eq!(create.target, "secretsmanager.CreateSecret");
        let body: serde_json::Value = serde_json::from_slice(&create.body).unwrap();
        assert_eq!(body["Name"], "/concourse/t/a-access-key");
        assert_eq!(body["SecretString"], "v");
        assert!(body["Description"]
            .as_str()
            .unwrap()
            .contains("team t, account a"));
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
            assert_eq!(error.code(), Some(NOT_FOUND));
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
