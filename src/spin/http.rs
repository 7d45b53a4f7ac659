//! Spin's outbound HTTP as the AWS code's [`Transport`]: request options for the host's
//! own timeouts, a timer around the whole exchange, a cap on the answer's size, and the
//! host's error codes turned into [`TransportError`]s.

use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use spin_sdk::http::IncomingResponse;
use spin_sdk::wit::wasi::http0_2_0::types::ErrorCode;

use crate::aws::{HttpResponse, Transport, TransportError};

use super::time::Sleep;

/// AWS's answers here are a few kilobytes; anything bigger is refused, not buffered.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Spin's outbound HTTP. The host enforces `wasi:http` request options (connect, first
/// byte, between bytes); a WASI timer also bounds the whole exchange, body included,
/// whatever the host honours.
pub struct SpinTransport {
    pub timeout: Duration,
}

impl Transport for SpinTransport {
    async fn send(&self, request: http::Request<Vec<u8>>) -> Result<HttpResponse, TransportError> {
        let exchange = async {
            let response = send_with_options(request, self.timeout).await?;
            read_limited(response).await
        };
        futures::pin_mut!(exchange);
        match futures::future::select(exchange, Sleep::new(self.timeout)).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right(_) => Err(TransportError::Timeout(format!(
                "no complete answer within {}s",
                self.timeout.as_secs()
            ))),
        }
    }
}

/// What the host's error code means for the caller; `destination` names where the
/// request was going.
fn transport_error(code: ErrorCode, destination: &str) -> TransportError {
    let text = format!("{code:?}");
    match code {
        ErrorCode::HttpRequestDenied => {
            TransportError::Refused(format!("{text} for {destination}"))
        }
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout => TransportError::Timeout(text),
        _ => TransportError::Connection(text),
    }
}

/// `outgoing-handler.handle` with request options. (spin-sdk 5.2's `send` passes none.)
async fn send_with_options(
    request: http::Request<Vec<u8>>,
    timeout: Duration,
) -> Result<IncomingResponse, TransportError> {
    use spin_sdk::http::conversions::TryIntoOutgoingRequest;
    use spin_sdk::wit::wasi::http0_2_0::{outgoing_handler, types};
    let failed = |what: &str| TransportError::Connection(format!("sending the request: {what}"));
    let destination = format!(
        "{}://{}",
        request.uri().scheme_str().unwrap_or("http"),
        request.uri().authority().map_or("", |a| a.as_str())
    );
    let transport_error = |code| transport_error(code, &destination);
    let (outgoing, body) = request
        .try_into_outgoing_request()
        .map_err(|e| failed(&e.to_string()))?;
    let options = types::RequestOptions::new();
    let nanos = Some(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
    // A host that does not support one of these refuses it; the timer still applies.
    let _ = options.set_connect_timeout(nanos);
    let _ = options.set_first_byte_timeout(nanos);
    let _ = options.set_between_bytes_timeout(nanos);
    let outgoing_body = outgoing.body().map_err(|()| failed("no request body"))?;
    let pending = outgoing_handler::handle(outgoing, Some(options)).map_err(transport_error)?;
    {
        let stream = outgoing_body.write().map_err(|()| failed("body stream"))?;
        // Bodies here are a few hundred bytes; the stream takes 4096 at a time.
        for chunk in body.unwrap_or_default().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| failed(&format!("{e:?}")))?;
        }
    }
    types::OutgoingBody::finish(outgoing_body, None).map_err(transport_error)?;
    let mut registration: Option<spin_executor::CancelOnDropToken> = None;
    futures::future::poll_fn(|cx| match pending.get() {
        Some(Ok(Ok(response))) => Poll::Ready(Ok(response)),
        Some(Ok(Err(code))) => Poll::Ready(Err(transport_error(code))),
        Some(Err(())) => Poll::Ready(Err(failed("the response was already taken"))),
        None => {
            let token =
                spin_executor::push_waker_and_get_token(pending.subscribe(), cx.waker().clone());
            registration = Some(token.into());
            Poll::Pending
        }
    })
    .await
}

/// The whole answer, headers kept, unless it is larger than [`MAX_RESPONSE_BYTES`].
async fn read_limited(response: IncomingResponse) -> Result<HttpResponse, TransportError> {
    let status = response.status();
    let mut headers = http::HeaderMap::new();
    for (name, value) in response.headers().entries() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    let mut body = Vec::new();
    let mut stream = response.take_body_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| TransportError::Connection(format!("reading answer: {e}")))?;
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(TransportError::TooLarge(MAX_RESPONSE_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}
