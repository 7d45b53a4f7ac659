//! HTTP as the AWS code sees it: a request goes out through whatever [`Transport`] the
//! runtime supplies (Spin's outbound HTTP in the component, a fake in unit tests), and an
//! answer comes back whole, or a typed [`TransportError`] says why not.

use std::future::Future;

/// An HTTP answer, already read (up to the transport's size limit).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// Kept for what AWS says beside the body: its clock (`Date`) and the request id.
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: http::HeaderMap::new(),
            body: body.into(),
        }
    }

    /// A header's value, when it is present and readable text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// A request that got no (complete) HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The host would not send it: its address is not in `allowed_outbound_hosts`.
    /// Retrying cannot help; the manifest or the endpoint variable must change.
    #[error("the host refused to send the request: {0} (is the endpoint's host in allowed_outbound_hosts?)")]
    Refused(String),
    /// No complete answer in time: connecting, the first byte, or the whole exchange.
    #[error("{0}")]
    Timeout(String),
    /// The answer was larger than the transport accepts.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// Anything else on the way: refused or reset connections, DNS, TLS, a broken body.
    #[error("{0}")]
    Connection(String),
}

impl TransportError {
    /// Everything but a refusal by the host may be gone on the next attempt.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, TransportError::Refused(_))
    }

    fn map_text(self, change: impl FnOnce(String) -> String) -> Self {
        match self {
            TransportError::Refused(text) => TransportError::Refused(change(text)),
            TransportError::Timeout(text) => TransportError::Timeout(change(text)),
            TransportError::Connection(text) => TransportError::Connection(change(text)),
            too_large @ TransportError::TooLarge(_) => too_large,
        }
    }

    /// The same error with `scrub` applied to its text.
    pub(crate) fn scrubbed(self, scrub: impl FnOnce(String) -> String) -> Self {
        self.map_text(scrub)
    }
}

/// Sends one HTTP request. Implementations add nothing the signature does not cover.
pub trait Transport {
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> impl Future<Output = Result<HttpResponse, TransportError>>;
}
