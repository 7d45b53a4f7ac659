//! What can go wrong talking to AWS, typed so that callers can branch on it: retry or
//! not, secret missing or some other failure.

/// A failed AWS call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    /// The request never got an HTTP answer: connection refused or reset, timeout.
    #[error("transport error: {0}")]
    Transport(String),
    /// AWS answered with an error document.
    #[error("{code} (HTTP {status}): {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
    /// The answer could not be understood (truncated, garbage, unexpected shape).
    #[error("unreadable answer (HTTP {status}): {detail}")]
    Malformed { status: u16, detail: String },
    /// The request could not be signed or built; retrying cannot help.
    #[error("request could not be built: {0}")]
    Request(String),
}

/// Error codes AWS documents as throttling, in either protocol.
const THROTTLING_CODES: [&str; 5] = [
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
];

impl AwsError {
    /// The retryable classes of the AWS SDKs' standard mode: transport failures, HTTP 5xx
    /// and 429, and the throttling codes. An unreadable 5xx counts too: it is the shape a
    /// proxy's or load balancer's failure takes.
    pub fn is_retryable(&self) -> bool {
        match self {
            AwsError::Transport(_) => true,
            AwsError::Service { status, code, .. } => {
                *status >= 500 || *status == 429 || THROTTLING_CODES.contains(&code.as_str())
            }
            AwsError::Malformed { status, .. } => *status >= 500 || *status == 429,
            AwsError::Request(_) => false,
        }
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
            } => AwsError::Service {
                status,
                code: scrub(code),
                message,
            },
            other => other,
        }
    }

    fn map_text(self, change: impl FnOnce(String) -> String) -> Self {
        match self {
            AwsError::Transport(text) => AwsError::Transport(change(text)),
            AwsError::Service {
                status,
                code,
                message,
            } => AwsError::Service {
                status,
                code,
                message: change(message),
            },
            AwsError::Malformed { status, detail } => AwsError::Malformed {
                status,
                detail: change(detail),
            },
            AwsError::Request(text) => AwsError::Request(change(text)),
        }
    }
}

/// Reads an XML error document: AWS's `ErrorResponse/Error/{Code,Message}`, and the
/// `ErrorResponse/Errors/Error` shape moto uses for authorization failures of every service.
pub(crate) fn parse_xml_error(status: u16, body: &str) -> Option<AwsError> {
    let mut error = super::xml::child_texts(body, "Error")?;
    let code = error
        .remove("Code")
        .filter(|code| !code.trim().is_empty())?;
    Some(AwsError::Service {
        status,
        code: truncate(code.trim(), 100),
        message: truncate(error.remove("Message").unwrap_or_default().trim(), 500),
    })
}

/// Cuts text from an answer down to a loggable size without splitting a character.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: &str) -> AwsError {
        AwsError::Service {
            status,
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn retryable_classes_follow_the_standard_mode() {
        assert!(AwsError::Transport("reset".into()).is_retryable());
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
    fn redaction_scrubs_every_secret() {
        let error = AwsError::Service {
            status: 403,
            code: "SignatureDoesNotMatch".into(),
            message: "key AKIDX with token TOK and again AKIDX".into(),
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
        }
        .redacted(&["TOK"]);
        assert_eq!(echoed.code(), Some("Bad-[REDACTED]"));
        let transport = AwsError::Transport("reset after TOK".into()).redacted(&["TOK"]);
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
