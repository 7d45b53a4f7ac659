//! STS over the query protocol: `AssumeRole` (the form body, and the XML answer or
//! error), and `GetCallerIdentity`, which needs no permission and is sent only for the
//! time its answer carries.

use chrono::{DateTime, Utc};

use super::error::parse_error_answer;
use super::xml::child_texts;
use super::{AssumedCredentials, AwsError, HttpResponse};

/// The request for one account's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole<'a> {
    pub role_arn: &'a str,
    /// The team name, so that a role's trust policy can pin a team with `sts:RoleSessionName`.
    pub session_name: &'a str,
    pub duration_seconds: u32,
    pub external_id: Option<&'a str>,
}

impl AssumeRole<'_> {
    /// The form-encoded body of the `POST /`.
    pub fn form_body(&self) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", "AssumeRole")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", self.role_arn)
            .append_pair("RoleSessionName", self.session_name)
            .append_pair("DurationSeconds", &self.duration_seconds.to_string());
        if let Some(external_id) = self.external_id {
            form.append_pair("ExternalId", external_id);
        }
        form.finish()
    }
}

/// The body of `GetCallerIdentity`: it asks nothing of the rotator's policy, so any
/// working credentials get an answer, and with it AWS's `Date`.
pub const GET_CALLER_IDENTITY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// The media type STS's query protocol expects.
pub const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// Reads an `AssumeRole` answer: credentials on 200, a typed error otherwise.
pub fn parse_assume_role(response: &HttpResponse) -> Result<AssumedCredentials, AwsError> {
    if response.status != 200 {
        return Err(parse_error_answer(response, "an STS"));
    }
    let body = String::from_utf8_lossy(&response.body);
    // Nothing of the body goes into the error: on a 200 it holds credentials.
    let unreadable = || AwsError::Malformed {
        status: response.status,
        detail: "AssumeRoleResponse without readable Credentials".to_owned(),
    };
    let mut credentials = child_texts(&body, "Credentials").ok_or_else(unreadable)?;
    let mut field = |name: &str| {
        credentials
            .remove(name)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(unreadable)
    };
    let (access_key_id, secret_access_key, session_token, expiration) = (
        field("AccessKeyId")?,
        field("SecretAccessKey")?,
        field("SessionToken")?,
        field("Expiration")?,
    );
    let expiration = DateTime::parse_from_rfc3339(expiration.trim())
        .map_err(|error| AwsError::Malformed {
            status: response.status,
            detail: format!("Expiration is not an ISO 8601 date: {error}"),
        })?
        .with_timezone(&Utc);
    Ok(AssumedCredentials {
        access_key_id: access_key_id.trim().to_owned().into(),
        secret_access_key: secret_access_key.trim().to_owned().into(),
        session_token: session_token.trim().to_owned().into(),
        expiration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(status, body)
    }

    const SUCCESS: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <SourceIdentity>ci</SourceIdentity>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/demo/example-team</Arn>
      <AssumedRoleId>ARO123EXAMPLE123:example-team</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <SessionToken>IQoJb3JpZ2luX2VjEOz////////////wEXAMPLEtMSJHMEUCIDoKK3JH9uG</SessionToken>
      <Expiration>2019-11-09T13:34:41Z</Expiration>
    </Credentials>
    <PackedPolicySize>6</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata>
    <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
  </ResponseMetadata>
</AssumeRoleResponse>"#;

    #[test]
    fn form_body_is_form_encoded() {
        let request = AssumeRole {
            role_arn: "arn:aws:iam::123456789012:role/ci/machine-user",
            session_name: "example-team",
            duration_seconds: 7200,
            external_id: Some("a+b=c,d@e:f/g"),
        };
        assert_eq!(
            request.form_body(),
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fci%2Fmachine-user&RoleSessionName=example-team&DurationSeconds=7200&ExternalId=a%2Bb%3Dc%2Cd%40e%3Af%2Fg"
        );
        let without = AssumeRole {
            external_id: None,
            ..request
        };
        assert!(!without.form_body().contains("ExternalId"));
    }

    #[test]
    fn parses_credentials_and_expiration() {
        let credentials = parse_assume_role(&answer(200, SUCCESS)).unwrap();
        assert_eq!(
            credentials.access_key_id.expose_secret(),
            "ASIAIOSFODNN7EXAMPLE"
        );
        assert_eq!(
            credentials.secret_access_key.expose_secret(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
        );
        assert!(credentials
            .session_token
            .expose_secret()
            .starts_with("IQoJ"));
        assert_eq!(
            credentials.expiration.to_rfc3339(),
            "2019-11-09T13:34:41+00:00"
        );
    }

    #[test]
    fn parses_sts_errors() {
        let body = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code>
  <Message>User: arn:aws:iam::123456789012:user/rotator is not authorized to perform: sts:AssumeRole</Message></Error>
  <RequestId>1</RequestId></ErrorResponse>"#;
        let error = parse_assume_role(&answer(403, body)).unwrap_err();
        assert_eq!(error.code(), Some("AccessDenied"));
        assert!(!error.is_retryable());
        assert!(error
            .to_string()
            .contains("not authorized to perform: sts:AssumeRole"));

        let moto = r#"<?xml version="1.0" encoding="utf-8"?>
<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/rotator is not authorized</Message></Error></Errors></ErrorResponse>"#;
        assert_eq!(
            parse_assume_role(&answer(403, moto)).unwrap_err().code(),
            Some("AccessDenied")
        );

        let throttled = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>";
        assert!(parse_assume_role(&answer(400, throttled))
            .unwrap_err()
            .is_retryable());
    }

    #[test]
    fn garbage_and_truncated_answers_are_errors_not_panics() {
        for (status, body) in [
            (200, ""),
            (200, "<AssumeRoleResponse><AssumeRoleResult>"),
            (200, &SUCCESS[..SUCCESS.len() / 2]),
            (200, "\u{0}\u{1}garbage"),
            (200, "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>A</AccessKeyId><SecretAccessKey>S</SecretAccessKey><SessionToken>T</SessionToken><Expiration>tomorrow</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>"),
            (500, "<html>Bad gateway</html>"),
            (400, "<ErrorResponse><Error><Message>no code</Message></Error></ErrorResponse>"),
            (503, ""),
        ] {
            let error = parse_assume_role(&answer(status, body)).unwrap_err();
            assert!(matches!(error, AwsError::Malformed { .. }), "{body:?}: {error:?}");
        }
    }
}
