//! What can go wrong talking to AWS, classified once, where the answer is read: every
//! failure carries an [`ErrorKind`] that says what the caller does about it (retry,
//! create instead, correct the clock, stop the tick, give up), so that no other module
//! compares error codes.

use super::identity::IdentityError;
use super::transport::{HttpResponse, TransportError};

/// What a failed call means for whoever made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// AWS asks the caller to slow down: retried with backoff.
    Throttling,
    /// The secret or parameter does not exist (yet): create it.
    NotFound,
    /// A create found the name taken (another writer came first): overwrite it.
    AlreadyExists,
    /// AWS refused the request's time: the clock is corrected and the request sent again.
    ClockSkew,
    /// The rotator's own credentials were refused or could not be had: nothing it sends
    /// will work, so the tick stops and no account is charged.
    RotatorAuth,
    /// Only an operator can make it go away: a denied or missing role, a refused request,
    /// a secret scheduled for deletion, a host not allowed.
    Permanent,
    /// Passes by itself: HTTP 5xx, timeouts, broken connections, answers that cannot be
    /// read. Retried.
    Transient,
    /// Not sent: the lease is no longer this tick's.
    Halted,
    /// Anything else: neither retried nor known to be permanent.
    Other,
}

impl ErrorKind {
    /// The retryable classes of the AWS SDKs' standard mode.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Throttling | ErrorKind::Transient)
    }

    /// The class as the `outcome` of a counted request (see [`crate::deployment`]).
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Throttling => "throttled",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::ClockSkew => "clock_skew",
            ErrorKind::RotatorAuth => "rotator_refused",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Transient => "transient",
            ErrorKind::Halted => "halted",
            ErrorKind::Other => "other",
        }
    }
}

/// A failed AWS call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    /// The request never got a complete HTTP answer.
    #[error("transport error: {0}")]
    Transport(TransportError),
    /// AWS answered with an error document.
    #[error("{code} (HTTP {status}): {message}{}", request_id_note(request_id.as_deref()))]
    Service {
        status: u16,
        code: String,
        message: String,
        /// AWS's id of the request (`x-amzn-RequestId`), for a support case or CloudTrail.
        request_id: Option<String>,
        kind: ErrorKind,
    },
    /// The answer could not be understood (truncated, garbage, unexpected shape).
    #[error("unreadable answer (HTTP {status}): {detail}")]
    Malformed { status: u16, detail: String },
    /// The request could not be signed or built; retrying cannot help.
    #[error("request could not be built: {0}")]
    Request(String),
    /// The rotator's own credentials could not be had (IMDS, container endpoint, or
    /// `aws_role_arn`) or were refused by AWS; the next tick asks again.
    #[error("{0}")]
    Credentials(IdentityError),
    /// The request was not sent, for this reason (the lease was lost).
    #[error("not sent: {0}")]
    Halted(String),
}

fn request_id_note(request_id: Option<&str>) -> String {
    request_id.map_or_else(String::new, |id| format!(" (request id {id})"))
}

/// The error codes whose meaning is known, in either protocol and any of the three
/// services. A code not listed is classed by its status (see [`classify`]).
const KNOWN_CODES: [(&str, ErrorKind); 39] = [
    ("Throttling", ErrorKind::Throttling),
    ("ThrottlingException", ErrorKind::Throttling),
    ("RequestLimitExceeded", ErrorKind::Throttling),
    ("TooManyRequestsException", ErrorKind::Throttling),
    ("RequestThrottled", ErrorKind::Throttling),
    ("RequestThrottledException", ErrorKind::Throttling),
    // Parameter Store's answer to concurrent updates of one parameter: passes by itself.
    ("TooManyUpdates", ErrorKind::Throttling),
    ("ResourceNotFoundException", ErrorKind::NotFound),
    ("ParameterNotFound", ErrorKind::NotFound),
    ("ResourceExistsException", ErrorKind::AlreadyExists),
    ("ParameterAlreadyExists", ErrorKind::AlreadyExists),
    ("RequestTimeTooSkewed", ErrorKind::ClockSkew),
    ("RequestExpired", ErrorKind::ClockSkew),
    ("InvalidClientTokenId", ErrorKind::RotatorAuth),
    ("UnrecognizedClientException", ErrorKind::RotatorAuth),
    ("SignatureDoesNotMatch", ErrorKind::RotatorAuth),
    ("InvalidSignatureException", ErrorKind::RotatorAuth),
    ("IncompleteSignature", ErrorKind::RotatorAuth),
    ("MissingAuthenticationToken", ErrorKind::RotatorAuth),
    ("ExpiredToken", ErrorKind::RotatorAuth),
    ("ExpiredTokenException", ErrorKind::RotatorAuth),
    ("AccessDenied", ErrorKind::Permanent),
    ("AccessDeniedException", ErrorKind::Permanent),
    ("NoSuchEntity", ErrorKind::Permanent),
    ("ValidationError", ErrorKind::Permanent),
    ("ValidationException", ErrorKind::Permanent),
    ("RegionDisabledException", ErrorKind::Permanent),
    ("InvalidParameterException", ErrorKind::Permanent),
    // Secrets Manager's answer for a secret scheduled for deletion.
    ("InvalidRequestException", ErrorKind::Permanent),
    ("EncryptionFailure", ErrorKind::Permanent),
    // Parameter Store: 10,000 Standard parameters per account and region are in use.
    ("ParameterLimitExceeded", ErrorKind::Permanent),
    // Parameter Store: the oldest of the 100 kept versions has a label.
    ("ParameterMaxVersionLimitExceeded", ErrorKind::Permanent),
    ("HierarchyLevelLimitExceededException", ErrorKind::Permanent),
    // Parameter Store: a parameter of another type holds the name.
    ("HierarchyTypeMismatchException", ErrorKind::Permanent),
    // Parameter Store: `ssm_kms_key_id` names no usable key.
    ("InvalidKeyId", ErrorKind::Permanent),
    ("ParameterPatternMismatchException", ErrorKind::Permanent),
    ("UnsupportedParameterType", ErrorKind::Permanent),
    ("PackedPolicyTooLarge", ErrorKind::Permanent),
    ("MalformedPolicyDocument", ErrorKind::Permanent),
];

/// The class of an error answer: its code's, when the code is known; a signature refused
/// because it expired is the clock's fault, not the credentials'; an unknown code is
/// throttling on HTTP 429, transient on 5xx, else neither.
pub fn classify(status: u16, code: &str, message: &str) -> ErrorKind {
    let known = KNOWN_CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, kind)| *kind);
    match known {
        Some(ErrorKind::RotatorAuth) if message.contains("Signature expired") => {
            ErrorKind::ClockSkew
        }
        Some(kind) => kind,
        None if status == 429 => ErrorKind::Throttling,
        None if status >= 500 => ErrorKind::Transient,
        None => ErrorKind::Other,
    }
}

impl AwsError {
    /// An error answer from AWS, classified.
    pub fn service(status: u16, code: &str, message: &str, request_id: Option<String>) -> Self {
        AwsError::Service {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            request_id,
            kind: classify(status, code, message),
        }
    }

    /// What the caller does about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AwsError::Transport(error) if error.is_retryable() => ErrorKind::Transient,
            AwsError::Transport(_) | AwsError::Request(_) => ErrorKind::Permanent,
            AwsError::Service { kind, .. } => *kind,
            // The SDKs' standard mode retries an answer that cannot be read: whatever was
            // in the way (a proxy, a cut connection) is likely gone on the next attempt,
            // and every request the rotation retries is safe to repeat.
            AwsError::Malformed { .. } => ErrorKind::Transient,
            AwsError::Credentials(_) => ErrorKind::RotatorAuth,
            AwsError::Halted(_) => ErrorKind::Halted,
        }
    }

    /// Whether retrying within the tick could help (throttling, timeouts, 5xx).
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// Whether only an operator can make this go away.
    pub fn is_permanent(&self) -> bool {
        self.kind() == ErrorKind::Permanent
    }

    /// The AWS error code, when AWS sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Appends a note to the human-readable part, keeping the code and class.
    pub fn annotated(self, note: &str) -> Self {
        self.map_text(|text| format!("{text}{note}"))
    }

    /// Replaces every occurrence of the given secret values, so that an error message
    /// that echoes part of a request can be logged safely.
    pub fn redacted(self, secrets: &[&str]) -> Self {
        let scrub = |text: String| {
            secrets
                .iter()
                .filter(|secret| !secret.is_empty())
                .fold(text, |text, secret| text.replace(secret, "[REDACTED]"))
        };
        // An answer from a hostile endpoint could echo a secret in the code, too.
        match self.map_text(scrub) {
            AwsError::Service {
                status,
                code,
                message,
                request_id,
                kind,
            } => AwsError::Service {
                status,
                code: scrub(code),
                message,
                request_id: request_id.map(scrub),
                kind,
            },
            other => other,
        }
    }

    fn map_text(self, change: impl FnOnce(String) -> String) -> Self {
        match self {
            AwsError::Transport(error) => AwsError::Transport(error.scrubbed(change)),
            AwsError::Service {
                status,
                code,
                message,
                request_id,
                kind,
            } => AwsError::Service {
                status,
                code,
                message: change(message),
                request_id,
                kind,
            },
            AwsError::Malformed { status, detail } => AwsError::Malformed {
                status,
                detail: change(detail),
            },
            AwsError::Request(text) => AwsError::Request(change(text)),
            AwsError::Credentials(IdentityError { origin, reason }) => {
                AwsError::Credentials(IdentityError {
                    origin,
                    reason: change(reason),
                })
            }
            AwsError::Halted(text) => AwsError::Halted(change(text)),
        }
    }
}

/// Reads an AWS error answer into a typed error: the JSON 1.1 shape, or the query
/// protocol's XML `ErrorResponse/Error/{Code,Message}` (also the shape moto uses for
/// authorization failures of every service). Anything else is `Malformed`, quoting the
/// start of the body; `service` names what was expected there.
pub(crate) fn parse_error_answer(response: &HttpResponse, service: &str) -> AwsError {
    json_error(response)
        .or_else(|| xml_error(response))
        .unwrap_or_else(|| AwsError::Malformed {
            status: response.status,
            detail: format!(
                "not {service} error document: {:?}",
                truncate(&String::from_utf8_lossy(&response.body), 200)
            ),
        })
}

/// Both spellings of the message are separate fields: moto sends `message` and `Message`
/// side by side on some Parameter Store errors, which a serde alias refuses as a
/// duplicate field.
#[derive(serde::Deserialize, Default)]
struct JsonError {
    #[serde(rename = "__type", default)]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "Message", default)]
    capitalized_message: Option<String>,
}

/// The JSON 1.1 error as smithy's awsJson protocols read it: the code from the
/// `x-amzn-ErrorType` header, else the body's `code`, else its `__type`, each cut down
/// to the name between a `prefix#` and a `:suffix`.
fn json_error(response: &HttpResponse) -> Option<AwsError> {
    let body = serde_json::from_slice::<JsonError>(&response.body).ok();
    let header = response.header("x-amzn-errortype").map(str::to_owned);
    let body = body.unwrap_or_default();
    let code = [header, body.code, body.kind]
        .into_iter()
        .flatten()
        .map(|code| error_name(&code).to_owned())
        .find(|code| !code.is_empty())?;
    let message = body
        .message
        .or(body.capitalized_message)
        .unwrap_or_default();
    Some(AwsError::service(
        response.status,
        &truncate(&code, 100),
        &truncate(&message, 500),
        request_id(response),
    ))
}

/// `aws.protocoltests#FooError:http://internal.amazon.com/coral/` reads `FooError`.
fn error_name(code: &str) -> &str {
    let code = code.split(':').next().unwrap_or_default();
    code.rsplit('#').next().unwrap_or_default().trim()
}

fn xml_error(response: &HttpResponse) -> Option<AwsError> {
    let body = String::from_utf8_lossy(&response.body);
    let mut error = super::xml::child_texts(&body, "Error")?;
    let code = error
        .remove("Code")
        .filter(|code| !code.trim().is_empty())?;
    Some(AwsError::service(
        response.status,
        &truncate(code.trim(), 100),
        &truncate(error.remove("Message").unwrap_or_default().trim(), 500),
        request_id(response),
    ))
}

/// The request id AWS sends with every answer, in either protocol's header spelling.
fn request_id(response: &HttpResponse) -> Option<String> {
    ["x-amzn-requestid", "x-amz-request-id"]
        .iter()
        .find_map(|name| response.header(name))
        .map(|id| truncate(id, 100))
}

/// Cuts text from an answer down to a loggable size without splitting a character.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An AWS error answer with `code` and no message.
    pub(crate) fn service(status: u16, code: &str) -> AwsError {
        AwsError::service(status, code, "", None)
    }

    /// Every class, from the answers that decide it.
    #[test]
    fn answers_are_classified_once() {
        use ErrorKind::*;
        let cases: [(u16, &str, &str, ErrorKind); 20] = [
            (400, "Throttling", "Rate exceeded", Throttling),
            (400, "ThrottlingException", "", Throttling),
            (400, "TooManyUpdates", "", Throttling),
            (429, "Anything", "", Throttling),
            (404, "ResourceNotFoundException", "", NotFound),
            (400, "ParameterNotFound", "", NotFound),
            (400, "ResourceExistsException", "", AlreadyExists),
            (400, "ParameterAlreadyExists", "", AlreadyExists),
            (403, "RequestTimeTooSkewed", "", ClockSkew),
            (
                400,
                "InvalidSignatureException",
                "Signature expired: 20300101T000000Z is now earlier than ...",
                ClockSkew,
            ),
            (403, "SignatureDoesNotMatch", "Signature expired", ClockSkew),
            (
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match",
                RotatorAuth,
            ),
            (403, "InvalidClientTokenId", "", RotatorAuth),
            (400, "UnrecognizedClientException", "", RotatorAuth),
            (400, "ExpiredToken", "", RotatorAuth),
            (403, "AccessDenied", "", Permanent),
            (
                400,
                "InvalidRequestException",
                "scheduled for deletion",
                Permanent,
            ),
            (500, "InternalFailure", "", Transient),
            (503, "ServiceUnavailable", "", Transient),
            (400, "SomethingNew", "", Other),
        ];
        for (status, code, message, kind) in cases {
            assert_eq!(classify(status, code, message), kind, "{status} {code}");
        }
        let transport = |error| AwsError::Transport(error).kind();
        assert_eq!(
            transport(TransportError::Connection("reset".into())),
            Transient
        );
        assert_eq!(transport(TransportError::Timeout("slow".into())), Transient);
        assert_eq!(
            transport(TransportError::Refused("http://x".into())),
            Permanent
        );
        for status in [200, 403, 502] {
            let detail = String::new();
            let unreadable = AwsError::Malformed { status, detail };
            assert_eq!(
                unreadable.kind(),
                Transient,
                "unreadable {status} is retried"
            );
        }
        assert_eq!(AwsError::Request("bad".into()).kind(), Permanent);
        assert_eq!(AwsError::Halted("lease lost".into()).kind(), Halted);
        assert!(Throttling.is_retryable() && Transient.is_retryable());
        for kind in [
            NotFound,
            AlreadyExists,
            ClockSkew,
            RotatorAuth,
            Permanent,
            Halted,
            Other,
        ] {
            assert!(!kind.is_retryable(), "{kind:?}");
        }
    }

    /// smithy's awsJson rules: the `x-amzn-ErrorType` header first, then `code`, then
    /// `__type`, each without a `prefix#` or a `:suffix`.
    #[test]
    fn json_error_codes_are_read_as_smithy_reads_them() {
        let read = |header: Option<&str>, body: &str| {
            let mut answer = HttpResponse::new(400, body);
            if let Some(header) = header {
                answer
                    .headers
                    .insert("x-amzn-ErrorType", header.parse().unwrap());
            }
            parse_error_answer(&answer, "a Secrets Manager")
        };
        let cases = [
            (
                None,
                r#"{"__type":"ThrottlingException"}"#,
                "ThrottlingException",
            ),
            (
                None,
                r#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","message":"m"}"#,
                "ResourceNotFoundException",
            ),
            (
                None,
                r#"{"__type":"aws.protocoltests#FooError:http://internal.amazon.com/coral/"}"#,
                "FooError",
            ),
            (
                None,
                r#"{"code":"ThrottlingException","__type":"Other"}"#,
                "ThrottlingException",
            ),
            (
                Some("ResourceExistsException:http://internal.amazon.com/"),
                r#"{"__type":"Other"}"#,
                "ResourceExistsException",
            ),
            (Some("ParameterAlreadyExists"), "", "ParameterAlreadyExists"),
        ];
        for (header, body, code) in cases {
            assert_eq!(read(header, body).code(), Some(code), "{header:?} {body}");
        }
        let error = read(
            Some("ThrottlingException"),
            r#"{"Message":"Rate exceeded"}"#,
        );
        assert_eq!(error.kind(), ErrorKind::Throttling);
        assert!(error.to_string().contains("Rate exceeded"));
        assert!(matches!(
            read(None, r#"{"message":"no type"}"#),
            AwsError::Malformed { .. }
        ));
    }

    #[test]
    fn the_request_id_is_read_from_the_answer_and_shown() {
        let mut answer = HttpResponse::new(
            403,
            "<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>",
        );
        answer
            .headers
            .insert("x-amzn-RequestId", "c6104cbe-af31".parse().unwrap());
        let error = parse_error_answer(&answer, "an STS");
        assert_eq!(
            error.to_string(),
            "AccessDenied (HTTP 403): no (request id c6104cbe-af31)"
        );
    }

    #[test]
    fn redaction_scrubs_every_secret() {
        let error = AwsError::service(
            403,
            "SignatureDoesNotMatch",
            "key AKIDX with token TOK and again AKIDX",
            None,
        )
        .redacted(&["AKIDX", "TOK", ""]);
        assert_eq!(
            error.to_string(),
            "SignatureDoesNotMatch (HTTP 403): key [REDACTED] with token [REDACTED] and again [REDACTED]"
        );
        let echoed = AwsError::service(400, "Bad-TOK", "", None).redacted(&["TOK"]);
        assert_eq!(echoed.code(), Some("Bad-[REDACTED]"));
        let transport = AwsError::Transport(TransportError::Connection("reset after TOK".into()))
            .redacted(&["TOK"]);
        assert_eq!(
            transport.to_string(),
            "transport error: reset after [REDACTED]"
        );
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
