//! What can go wrong talking to AWS, typed so that callers can branch on it: retry or
//! not, heal by itself or not, secret missing or some other failure.

use super::identity::IdentityError;
use super::transport::{HttpResponse, TransportError};

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
    },
    /// The answer could not be understood (truncated, garbage, unexpected shape).
    #[error("unreadable answer (HTTP {status}): {detail}")]
    Malformed { status: u16, detail: String },
    /// The request could not be signed or built; retrying cannot help.
    #[error("request could not be built: {0}")]
    Request(String),
    /// The rotator's own credentials could not be had (IMDS, container endpoint, or
    /// `aws_role_arn`); the next tick asks again.
    #[error("{0}")]
    Credentials(IdentityError),
}

fn request_id_note(request_id: Option<&str>) -> String {
    request_id.map_or_else(String::new, |id| format!(" (request id {id})"))
}

/// Error codes AWS documents as throttling, in either protocol, and Parameter Store's
/// answer to concurrent updates of one parameter, which passes by itself too.
const THROTTLING_CODES: [&str; 6] = [
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "TooManyUpdates",
];

/// Error codes of failures that cannot heal by themselves: the role, its trust policy,
/// the rotator's policy or keys, the request or the secret has to be changed by someone.
const PERMANENT_CODES: [&str; 18] = [
    "AccessDenied",
    "AccessDeniedException",
    "NoSuchEntity",
    "ValidationError",
    "ValidationException",
    "RegionDisabledException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    // Secrets Manager's answer for a secret scheduled for deletion.
    "InvalidRequestException",
    // Parameter Store: 10,000 Standard parameters per account and region are in use.
    "ParameterLimitExceeded",
    // Parameter Store: the oldest of the 100 kept versions has a label.
    "ParameterMaxVersionLimitExceeded",
    "HierarchyLevelLimitExceededException",
    // Parameter Store: a parameter of another type holds the name.
    "HierarchyTypeMismatchException",
    // Parameter Store: `ssm_kms_key_id` names no usable key.
    "InvalidKeyId",
    "ParameterPatternMismatchException",
    "UnsupportedParameterType",
];

impl AwsError {
    /// The retryable classes of the AWS SDKs' standard mode: transport failures, HTTP 5xx
    /// and 429, and the throttling codes. An unreadable 5xx counts too: it is the shape a
    /// proxy's or load balancer's failure takes.
    pub fn is_retryable(&self) -> bool {
        match self {
            AwsError::Transport(error) => error.is_retryable(),
            AwsError::Service { status, code, .. } => {
                *status >= 500 || *status == 429 || THROTTLING_CODES.contains(&code.as_str())
            }
            AwsError::Malformed { status, .. } => *status >= 500 || *status == 429,
            AwsError::Request(_) | AwsError::Credentials(_) => false,
        }
    }

    /// Whether only an operator can make this go away (as opposed to throttling, outages
    /// and timeouts, which pass).
    pub fn is_permanent(&self) -> bool {
        match self {
            AwsError::Transport(error) => !error.is_retryable(),
            AwsError::Service { code, .. } => PERMANENT_CODES.contains(&code.as_str()),
            AwsError::Malformed { .. } | AwsError::Credentials(_) => false,
            AwsError::Request(_) => true,
        }
    }

    /// The AWS error code, when AWS sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether AWS refused the request because the signing clock is off: a request time
    /// too far from AWS's own, or a signature expired for that reason.
    pub fn is_clock_skew(&self) -> bool {
        match self {
            AwsError::Service { code, message, .. } => {
                code == "RequestTimeTooSkewed"
                    || (matches!(
                        code.as_str(),
                        "SignatureDoesNotMatch" | "InvalidSignatureException"
                    ) && message.contains("Signature expired"))
            }
            _ => false,
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
            } => AwsError::Service {
                status,
                code: scrub(code),
                message,
                request_id: request_id.map(scrub),
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
            } => AwsError::Service {
                status,
                code,
                message: change(message),
                request_id,
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
        }
    }
}

/// Reads an AWS error answer into a typed error: the JSON 1.1 shape (`__type`, which may
/// carry a `prefix#`, and `message`/`Message`), or the query protocol's XML
/// `ErrorResponse/Error/{Code,Message}` (also the shape moto uses for authorization
/// failures of every service). Anything else is `Malformed`, quoting the start of the
/// body; `service` names what was expected there.
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
#[derive(serde::Deserialize)]
struct JsonError {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "Message", default)]
    capitalized_message: Option<String>,
}

fn json_error(response: &HttpResponse) -> Option<AwsError> {
    let error = serde_json::from_slice::<JsonError>(&response.body)
        .ok()
        .filter(|error| !error.kind.is_empty())?;
    Some(AwsError::Service {
        status: response.status,
        code: truncate(error.kind.rsplit('#').next().unwrap_or_default(), 100),
        message: truncate(
            &error
                .message
                .or(error.capitalized_message)
                .unwrap_or_default(),
            500,
        ),
        request_id: request_id(response),
    })
}

fn xml_error(response: &HttpResponse) -> Option<AwsError> {
    let body = String::from_utf8_lossy(&response.body);
    let mut error = super::xml::child_texts(&body, "Error")?;
    let code = error
        .remove("Code")
        .filter(|code| !code.trim().is_empty())?;
    Some(AwsError::Service {
        status: response.status,
        code: truncate(code.trim(), 100),
        message: truncate(error.remove("Message").unwrap_or_default().trim(), 500),
        request_id: request_id(response),
    })
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
        AwsError::Service {
            status,
            code: code.into(),
            message: String::new(),
            request_id: None,
        }
    }

    #[test]
    fn retryable_classes_follow_the_standard_mode() {
        assert!(AwsError::Transport(TransportError::Connection("reset".into())).is_retryable());
        assert!(AwsError::Transport(TransportError::Timeout("slow".into())).is_retryable());
        let refused = AwsError::Transport(TransportError::Refused("http://elsewhere".into()));
        assert!(!refused.is_retryable() && refused.is_permanent());
        assert!(service(500, "InternalFailure").is_retryable());
        assert!(service(503, "ServiceUnavailable").is_retryable());
        assert!(service(429, "Anything").is_retryable());
        for code in THROTTLING_CODES {
            assert!(service(400, code).is_retryable(), "{code}");
        }
        assert!(AwsError::Malformed {
            status: 502,
            detail: String::new()
        }
        .is_retryable());
        assert!(!AwsError::Malformed {
            status: 200,
            detail: String::new()
        }
        .is_retryable());
        assert!(!service(403, "AccessDenied").is_retryable());
        assert!(!service(400, "ValidationError").is_retryable());
        assert!(!service(404, "ResourceNotFoundException").is_retryable());
        assert!(!AwsError::Request("bad".into()).is_retryable());
    }

    #[test]
    fn permanent_failures_are_told_from_passing_ones() {
        for code in [
            "AccessDenied",
            "ValidationError",
            "InvalidRequestException",
            "NoSuchEntity",
        ] {
            assert!(service(400, code).is_permanent(), "{code}");
        }
        for code in ["Throttling", "InternalFailure", "ServiceUnavailable"] {
            assert!(!service(500, code).is_permanent(), "{code}");
        }
        assert!(!AwsError::Transport(TransportError::Timeout("slow".into())).is_permanent());
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
        let error = AwsError::Service {
            status: 403,
            code: "SignatureDoesNotMatch".into(),
            message: "key AKIDX with token TOK and again AKIDX".into(),
            request_id: None,
        }
        .redacted(&["AKIDX", "TOK", ""]);
        assert_eq!(
            error.to_string(),
            "SignatureDoesNotMatch (HTTP 403): key [REDACTED] with token [REDACTED] and again [REDACTED]"
        );
        let echoed = AwsError::Service {
            status: 400,
            code: "Bad-TOK".into(),
            message: String::new(),
            request_id: None,
        }
        .redacted(&["TOK"]);
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
