//! Outgoing HTTP as Spin 3 sends it: one pooled hyper client shared by every instance, so
//! requests to the same host reuse connections (spinframework/spin#3229 and #3240).
//! wasmtime's default opens a connection per request, which would make the benchmark
//! measure TCP handshakes rather than the component. HTTPS, which the tests never use,
//! goes through that default.

use std::future::Future;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// wasmtime's default when the guest sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

#[derive(Clone)]
pub struct PooledHttp {
    client: Client<HttpConnector, WasiBody>,
}

impl Default for PooledHttp {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl WasiHttpHooks for PooledHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            return Box::new(async move {
                let (response, io) =
                    wasmtime_wasi_http::default_send_request(request, options).await?;
                Ok((
                    response.map(BodyExt::boxed_unsync),
                    Box::new(io) as Box<dyn Future<Output = _> + Send>,
                ))
            });
        }
        let client = self.client.clone();
        Box::new(async move {
            // Connecting and the first byte share one deadline: a pooled connection
            // may already be open.
            let options = options.unwrap_or_default();
            let deadline = options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT)
                + options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
            let response = tokio::time::timeout(deadline, client.request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?
                .map_err(|error| {
                    if error.is_connect() {
                        Error::ConnectionRefused
                    } else {
                        Error::ConnectionTerminated
                    }
                })?;
            let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
