//! The rotator's logins and what Vault answers them: the request bodies of the AppRole
//! and AWS IAM logins, and the token a login, renewal or lookup grants.

use std::time::Duration;

use aws_smithy_types::base64;
use secrecy::SecretString;
use serde_json::json;

use super::answer::{field, Object};
use crate::aws::AwsError;

/// What Vault says of a token: how long it lives and whether it may be renewed.
pub struct Grant {
    /// `None` for a token without an end (a root token).
    pub ttl: Option<Duration>,
    pub renewable: bool,
}

impl Grant {
    /// Reads a login's or renewal's `auth`: the token and what it is granted.
    pub fn from_auth(answer: &Object) -> Result<(SecretString, Self), AwsError> {
        let token = field(answer, &["auth", "client_token"]).and_then(|t| t.as_str());
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(AwsError::Malformed {
                status: 200,
                detail: "Vault answered a login without auth.client_token".to_owned(),
            });
        };
        let grant = Self {
            ttl: seconds(field(answer, &["auth", "lease_duration"])),
            renewable: flag(field(answer, &["auth", "renewable"])),
        };
        Ok((token.to_owned().into(), grant))
    }

    /// Reads `auth/token/lookup-self`'s `data`.
    pub fn from_lookup(answer: &Object) -> Self {
        Self {
            ttl: seconds(field(answer, &["data", "ttl"])),
            renewable: flag(field(answer, &["data", "renewable"])),
        }
    }
}

/// A TTL of 0 (or none) is a token that does not expire.
fn seconds(value: Option<&serde_json::Value>) -> Option<Duration> {
    value
        .and_then(|v| v.as_u64())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

fn flag(value: Option<&serde_json::Value>) -> bool {
    value.and_then(|v| v.as_bool()).unwrap_or(false)
}

/// The AppRole login's body.
pub fn approle(role_id: &str, secret_id: &str) -> serde_json::Value {
    json!({ "role_id": role_id, "secret_id": secret_id })
}

/// The AWS IAM login's body: the signed `sts:GetCallerIdentity` as Vault's own CLI sends
/// it, method, URL, body and headers (a JSON object of lists) each base64, and the role
/// when one is named.
pub fn aws(signed: &http::Request<Vec<u8>>, role: Option<&str>) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in signed.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.insert(name.as_str().to_owned(), json!([value]));
    }
    let headers = serde_json::Value::Object(headers).to_string();
    let mut body = json!({
        "iam_http_request_method": signed.method().as_str(),
        "iam_request_url": base64::encode(signed.uri().to_string()),
        "iam_request_body": base64::encode(signed.body()),
        "iam_request_headers": base64::encode(headers.as_bytes()),
    });
    if let Some(role) = role {
        body["role"] = role.into();
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn logins_and_renewals_grant_a_token_with_its_ttl() {
        let answer: Object = serde_json::from_str(
            r#"{"auth":{"client_token":"s.abc","lease_duration":600,"renewable":true}}"#,
        )
        .unwrap();
        let (token, grant) = Grant::from_auth(&answer).unwrap();
        assert_eq!(token.expose_secret(), "s.abc");
        assert_eq!(grant.ttl, Some(Duration::from_secs(600)));
        assert!(grant.renewable);
        let root: Object =
            serde_json::from_str(r#"{"auth":{"client_token":"r","lease_duration":0}}"#).unwrap();
        let (_, root) = Grant::from_auth(&root).unwrap();
        assert_eq!((root.ttl, root.renewable), (None, false));
        for bad in [r#"{"auth":null}"#, r#"{"auth":{"client_token":""}}"#, "{}"] {
            let answer: Object = serde_json::from_str(bad).unwrap();
            assert!(Grant::from_auth(&answer).is_err(), "{bad}");
        }
        let lookup: Object =
            serde_json::from_str(r#"{"data":{"ttl":30,"renewable":true}}"#).unwrap();
        let lookup = Grant::from_lookup(&lookup);
        assert!(lookup.renewable);
        assert_eq!(lookup.ttl, Some(Duration::from_secs(30)));
    }

    #[test]
    fn the_aws_login_carries_the_signed_request_in_base64() {
        let signed = http::Request::post("https://sts.us-east-1.amazonaws.com/")
            .header("x-vault-aws-iam-server-id", "vault.example.com")
            .header("authorization", "AWS4-HMAC-SHA256 Credential=AKID/…")
            .body(b"Action=GetCallerIdentity&Version=2011-06-15".to_vec())
            .unwrap();
        let body = aws(&signed, Some("concourse-sts"));
        let decode = |field: &str| {
            let text = body[field].as_str().unwrap();
            String::from_utf8(base64::decode(text).unwrap()).unwrap()
        };
        assert_eq!(body["iam_http_request_method"], "POST");
        assert_eq!(body["role"], "concourse-sts");
        assert_eq!(
            decode("iam_request_url"),
            "https://sts.us-east-1.amazonaws.com/"
        );
        assert_eq!(
            decode("iam_request_body"),
            "Action=GetCallerIdentity&Version=2011-06-15"
        );
        let headers: serde_json::Value =
            serde_json::from_str(&decode("iam_request_headers")).unwrap();
        assert_eq!(
            headers["x-vault-aws-iam-server-id"],
            json!(["vault.example.com"])
        );
        assert!(aws(&signed, None).get("role").is_none());
    }
}
