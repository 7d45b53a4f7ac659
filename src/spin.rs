//! The Spin side: the cron export and adapters from Spin's key-value store, variables and
//! outbound HTTP to the traits the engine runs on. Nothing here decides anything.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use spin_sdk::http::IncomingResponse;
use spin_sdk::key_value::Store;

use crate::aws::{AwsClient, HttpResponse, Transport, TransportError};
use crate::rotate::{run_tick, Event, EventSink, TeamStore, TickSummary};
use crate::settings::{Settings, Variables};

wit_bindgen::generate!({ world: "spin-cron", path: "wit" });

/// How long one AWS request may take before it counts as a transport failure: a silent
/// endpoint must not hold a tick (the host starts the next one regardless).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// AWS's answers here are a few kilobytes; anything bigger is refused, not buffered.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

struct Component;

impl Guest for Component {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        spin_executor::run(tick()).map_err(Error::Other)
    }
}

export!(Component);

/// Failures of single teams or accounts are already logged by the engine; only a tick
/// that cannot run at all gets a `tick_failed` line here.
async fn tick() -> Result<(), String> {
    match run().await {
        Ok(summary) => summary.into_result(),
        Err(error) => {
            StdoutSink.emit(&Event::TickFailed {
                error: error.clone(),
            });
            Err(error)
        }
    }
}

async fn run() -> Result<TickSummary, String> {
    let settings = Settings::from_variables(&SpinVariables).map_err(|e| format!("{e:#}"))?;
    let store = Store::open_default().map_err(|e| format!("opening key-value store: {e}"))?;
    let client = AwsClient::new(
        SpinTransport,
        &settings.credentials,
        &settings.region,
        settings.endpoints.clone(),
    );
    run_tick(&store, &client, &settings.rules, &StdoutSink)
        .await
        .map_err(|e| format!("{e:#}"))
}

struct SpinVariables;

impl Variables for SpinVariables {
    fn get(&self, name: &str) -> anyhow::Result<Option<String>> {
        match spin_sdk::variables::get(name) {
            Ok(value) => Ok(Some(value)),
            Err(spin_sdk::variables::Error::Undefined(_)) => Ok(None),
            Err(error) => Err(anyhow::anyhow!("{error}")),
        }
    }
}

impl TeamStore for Store {
    fn keys(&self) -> anyhow::Result<Vec<String>> {
        self.get_keys()
            .map_err(|e| anyhow::anyhow!("listing keys: {e}"))
    }

    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Store::get(self, key).map_err(|e| anyhow::anyhow!("reading {key}: {e}"))
    }
}

struct StdoutSink;

impl EventSink for StdoutSink {
    fn emit(&self, event: &Event) {
        println!("{}", event.to_log_line(chrono::Utc::now()));
    }
}

/// Spin's outbound HTTP, with a deadline and a cap on the answer's size.
struct SpinTransport;

impl Transport for SpinTransport {
    async fn send(&self, request: http::Request<Vec<u8>>) -> Result<HttpResponse, TransportError> {
        let exchange = async {
            let response: IncomingResponse = spin_sdk::http::send(request)
                .await
                .map_err(|e| TransportError(e.to_string()))?;
            read_limited(response).await
        };
        futures::pin_mut!(exchange);
        match futures::future::select(exchange, Sleep::new(REQUEST_TIMEOUT)).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right(_) => Err(TransportError(format!(
                "no complete answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }
}

async fn read_limited(response: IncomingResponse) -> Result<HttpResponse, TransportError> {
    let status = response.status();
    let mut body = Vec::new();
    let mut stream = response.take_body_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| TransportError(format!("reading answer: {e}")))?;
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(TransportError(format!(
                "answer larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpResponse { status, body })
}

/// A timer on WASI's monotonic clock, driven by Spin's executor.
struct Sleep {
    deadline: u64,
    registration: Option<spin_executor::CancelOnDropToken>,
}

impl Sleep {
    fn new(duration: Duration) -> Self {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Self {
            deadline: wasi::clocks::monotonic_clock::now().saturating_add(nanos),
            registration: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if wasi::clocks::monotonic_clock::now() >= self.deadline {
            return Poll::Ready(());
        }
        let pollable = wasi::clocks::monotonic_clock::subscribe_instant(self.deadline);
        let token = spin_executor::push_waker_and_get_token(pollable, cx.waker().clone());
        // Replacing the token cancels the previous registration.
        self.registration = Some(token.into());
        Poll::Pending
    }
}
