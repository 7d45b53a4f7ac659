//! Vault's answers: an error answer (`{"errors": [...]}` with a status) becomes the same
//! [`AwsError`] with the same [`ErrorKind`] an AWS answer gets, decided here once: 429 is
//! throttling and 5xx (a sealed Vault included) transient, both retried as AWS's are;
//! 403 is permanent and names the request's path; 404 is "not found".

use crate::aws::error::truncate;
use crate::aws::{AwsError, ErrorKind, HttpResponse};

/// The code of a KV v2 write whose `cas` was not the secret's current version.
pub const CAS_MISMATCH: &str = "VaultCasMismatch";
/// The code of a 403: a policy that does not allow the request, or a token Vault does
/// not know (expired, revoked).
pub const PERMISSION_DENIED: &str = "VaultPermissionDenied";

/// A JSON object with any fields.
pub type Object = serde_json::Map<String, serde_json::Value>;

/// The error of an answer with status 400 or more; `request` (`POST concourse/data/…`)
/// says what was asked, so that a denied write names its path.
pub fn error(response: &HttpResponse, request: &str) -> AwsError {
    let message = errors(&response.body);
    let sealed = message.contains("sealed");
    let (code, kind) = match response.status {
        400 if message.contains("check-and-set") => (CAS_MISMATCH, ErrorKind::Other),
        400 => ("VaultBadRequest", ErrorKind::Permanent),
        403 => (PERMISSION_DENIED, ErrorKind::Permanent),
        404 => ("VaultNotFound", ErrorKind::NotFound),
        // A performance standby that has not caught up yet.
        412 => ("VaultPreconditionFailed", ErrorKind::Transient),
        429 => ("VaultRateLimited", ErrorKind::Throttling),
        503 if sealed => ("VaultSealed", ErrorKind::Transient),
        500.. => ("VaultUnavailable", ErrorKind::Transient),
        _ => ("VaultError", ErrorKind::Other),
    };
    AwsError::Service {
        status: response.status,
        code: code.to_owned(),
        message: format!("{message} ({request})"),
        request_id: None,
        kind,
    }
}

/// Vault's `errors`, joined; the start of the body when it is not Vault's shape.
fn errors(body: &[u8]) -> String {
    let listed = serde_json::from_slice::<Object>(body)
        .ok()
        .and_then(|answer| {
            let errors = answer.get("errors")?.as_array()?;
            let texts: Vec<&str> = errors.iter().filter_map(|e| e.as_str()).collect();
            Some(texts.join("; "))
        });
    let text = listed.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    // "1 error occurred:\n\t* permission denied\n\n" reads as "permission denied".
    let text = text
        .lines()
        .map(|line| line.trim().trim_start_matches("* "))
        .filter(|line| !line.is_empty() && !line.ends_with("error occurred:"))
        .collect::<Vec<_>>()
        .join(" ");
    truncate(&text, 300)
}

/// A successful answer's JSON object; one that cannot be read is `Malformed` (retried:
/// whatever was in the way may be gone next time).
pub fn object(response: &HttpResponse, what: &str) -> Result<Object, AwsError> {
    serde_json::from_slice(&response.body).map_err(|_| AwsError::Malformed {
        status: response.status,
        detail: format!("{what}: not a JSON object"),
    })
}

/// The object at `path` (field names, outermost first) of a successful answer.
pub fn field<'a>(answer: &'a Object, path: &[&str]) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(answer.get(*first)?, |value, name| value.get(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> AwsError {
        error(&HttpResponse::new(status, body), "POST concourse/data/t/a")
    }

    /// Every class, from the answers OpenBao and Vault give.
    #[test]
    fn answers_are_classified_as_aws_answers_are() {
        use ErrorKind::*;
        let cases = [
            (
                403,
                "{\"errors\":[\"1 error occurred:\\n\\t* permission denied\\n\\n\"]}",
                PERMISSION_DENIED,
                Permanent,
            ),
            (
                400,
                "{\"errors\":[\"check-and-set parameter did not match the current version\"]}",
                CAS_MISMATCH,
                Other,
            ),
            (
                400,
                "{\"errors\":[\"no data provided\"]}",
                "VaultBadRequest",
                Permanent,
            ),
            (404, "{\"errors\":[]}", "VaultNotFound", NotFound),
            (
                429,
                "{\"errors\":[\"request path \\\"x\\\": rate limit quota exceeded\"]}",
                "VaultRateLimited",
                Throttling,
            ),
            (
                503,
                "{\"errors\":[\"Vault is sealed\"]}",
                "VaultSealed",
                Transient,
            ),
            (
                502,
                "<html>bad gateway</html>",
                "VaultUnavailable",
                Transient,
            ),
            (
                500,
                "{\"errors\":[\"internal error\"]}",
                "VaultUnavailable",
                Transient,
            ),
            (412, "", "VaultPreconditionFailed", Transient),
            (418, "", "VaultError", Other),
        ];
        for (status, body, code, kind) in cases {
            let error = answer(status, body);
            assert_eq!(
                (error.code(), error.kind()),
                (Some(code), kind),
                "{status} {body}"
            );
        }
        assert!(answer(503, "{\"errors\":[\"Vault is sealed\"]}").is_retryable());
        assert!(answer(429, "").is_retryable());
    }

    #[test]
    fn a_denied_request_names_its_path() {
        let denied = answer(
            403,
            "{\"errors\":[\"1 error occurred:\\n\\t* permission denied\\n\\n\"]}",
        );
        assert_eq!(
            denied.to_string(),
            "VaultPermissionDenied (HTTP 403): permission denied (POST concourse/data/t/a)"
        );
        assert!(denied.is_permanent());
    }

    #[test]
    fn fields_are_found_by_path() {
        let answer: Object =
            serde_json::from_str(r#"{"data":{"metadata":{"version":3}}}"#).unwrap();
        assert_eq!(
            field(&answer, &["data", "metadata", "version"]),
            Some(&3.into())
        );
        assert_eq!(field(&answer, &["data", "nothing"]), None);
        assert!(matches!(
            object(&HttpResponse::new(200, "[1]"), "x"),
            Err(AwsError::Malformed { .. })
        ));
    }
}
