//! What AWS answers, as the fakes send it: the bodies of STS's query protocol and of the
//! JSON 1.1 services (Secrets Manager, Parameter Store), and the `Date` header every
//! answer carries. One copy for the unit tests' fake AWS and the simulator
//! (`tests/simulate`, through the `fakes` feature); the component reads answers and never
//! makes one, so it is built without this.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

/// The `Date` header of an answer made at `time` (whole seconds, as AWS sends it).
pub fn http_date(time: DateTime<Utc>) -> String {
    time.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// An `AssumeRole` answer with these credentials.
pub fn assume_role(
    access_key_id: &str,
    secret_access_key: &str,
    session_token: &str,
    expiration: DateTime<Utc>,
) -> String {
    let expiration = expiration.to_rfc3339_opts(SecondsFormat::Secs, true);
    format!(
        "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
         <AccessKeyId>{access_key_id}</AccessKeyId><SecretAccessKey>{secret_access_key}</SecretAccessKey>\
         <SessionToken>{session_token}</SessionToken><Expiration>{expiration}</Expiration>\
         </Credentials></AssumeRoleResult></AssumeRoleResponse>"
    )
}

/// A `GetCallerIdentity` answer naming `arn`.
pub fn caller_identity(arn: &str) -> String {
    format!(
        "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>{arn}</Arn>\
         </GetCallerIdentityResult></GetCallerIdentityResponse>"
    )
}

/// An STS error (query protocol): `ErrorResponse/Error/{Type,Code,Message}`.
pub fn sts_error(code: &str, message: &str) -> String {
    format!(
        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>\
         <Message>{message}</Message></Error></ErrorResponse>"
    )
}

/// A JSON 1.1 error: `__type` and `message`.
pub fn json_error(code: &str, message: &str) -> String {
    json!({"__type": code, "message": message}).to_string()
}

/// Secrets Manager's answer to a `PutSecretValue` or `CreateSecret` of `name`.
pub fn secret_written(name: &str) -> String {
    let arn = format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf");
    json!({"ARN": arn, "Name": name}).to_string()
}

/// Parameter Store's answer to a `PutParameter` that made `version`.
pub fn parameter_written(version: u64) -> String {
    json!({"Version": version, "Tier": "Standard"}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::secrets::check_write;
    use crate::aws::sts::parse_assume_role;
    use crate::aws::{ErrorKind, HttpResponse};

    /// The engine reads every shape the fakes send as AWS's own.
    #[test]
    fn the_engine_reads_every_answer() {
        let expiration = DateTime::parse_from_rfc3339("2030-01-01T01:00:00Z")
            .unwrap()
            .to_utc();
        let sts = HttpResponse::new(200, assume_role("ASIAX", "s", "t", expiration));
        assert_eq!(parse_assume_role(&sts).unwrap().expiration, expiration);
        let denied = HttpResponse::new(403, sts_error("AccessDenied", "no"));
        assert_eq!(
            parse_assume_role(&denied).unwrap_err().code(),
            Some("AccessDenied")
        );
        assert!(check_write(&HttpResponse::new(200, secret_written("/concourse/t/a"))).is_ok());
        let throttled = HttpResponse::new(400, json_error("ThrottlingException", "slow down"));
        assert_eq!(
            check_write(&throttled).unwrap_err().kind(),
            ErrorKind::Throttling
        );
        assert_eq!(http_date(expiration), "Tue, 01 Jan 2030 01:00:00 GMT");
    }
}
