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
use crate::clock::Clock;
use crate::rotate::{Engine, Event, EventSink, TickSummary};
use crate::settings::{Settings, Variables};
use crate::store::KeyValue;

wit_bindgen::generate!({ world: "spin-cron", path: "wit" });

use spin_sdk::wit::wasi::keyvalue as wasi_keyvalue;

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
    let store = SpinStore::open().map_err(|e| format!("opening key-value store: {e:#}"))?;
    let transport = SpinTransport {
        timeout: settings.rules.request_timeout,
    };
    let client = AwsClient::new(
        transport,
        &settings.credentials,
        &settings.region,
        settings.endpoints.clone(),
    );
    let engine = Engine {
        client: &client,
        clock: &WasiClock,
        store: &store,
        sink: &StdoutSink,
        rules: &settings.rules,
    };
    engine.run_tick().await.map_err(|e| format!("{e:#}"))
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

/// Spin's default store, and the same store through `wasi:keyvalue` for its
/// compare-and-swap, which Spin's own interface lacks.
struct SpinStore {
    store: Store,
    bucket: wasi_keyvalue::store::Bucket,
}

impl SpinStore {
    fn open() -> anyhow::Result<Self> {
        Ok(Self {
            store: Store::open_default()?,
            bucket: wasi_keyvalue::store::open("default").map_err(|e| anyhow::anyhow!("{e:?}"))?,
        })
    }
}

impl KeyValue for SpinStore {
    fn keys(&self) -> anyhow::Result<Vec<String>> {
        self.store
            .get_keys()
            .map_err(|e| anyhow::anyhow!("listing keys: {e}"))
    }

    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.store
            .get(key)
            .map_err(|e| anyhow::anyhow!("reading {key}: {e}"))
    }

    fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.store
            .set(key, value)
            .map_err(|e| anyhow::anyhow!("writing {key}: {e}"))
    }

    fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.store
            .delete(key)
            .map_err(|e| anyhow::anyhow!("deleting {key}: {e}"))
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> anyhow::Result<bool> {
        use wasi_keyvalue::atomics::{swap, Cas, CasError};
        let cas = Cas::new(&self.bucket, key).map_err(|e| anyhow::anyhow!("{key}: {e:?}"))?;
        let current = cas.current().map_err(|e| anyhow::anyhow!("{key}: {e:?}"))?;
        if current.as_deref() != expected {
            return Ok(false);
        }
        match swap(cas, new) {
            Ok(()) => Ok(true),
            Err(CasError::CasFailed(_)) => Ok(false),
            Err(CasError::StoreError(e)) => Err(anyhow::anyhow!("{key}: {e:?}")),
        }
    }
}

/// Time from WASI's clocks, chance from its random source.
struct WasiClock;

impl Clock for WasiClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    async fn sleep(&self, duration: Duration) {
        Sleep::new(duration).await
    }

    fn random_fraction(&self) -> f64 {
        (wasi::random::random::get_random_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct StdoutSink;

impl EventSink for StdoutSink {
    fn emit(&self, event: &Event) {
        println!("{}", event.to_log_line(chrono::Utc::now()));
    }
}

/// Spin's outbound HTTP, with a deadline and a cap on the answer's size. spin-sdk 5.2's
/// `send` takes no `wasi:http` request options, so the deadline races a WASI timer: it
/// covers connecting, the first byte and the whole body alike.
struct SpinTransport {
    timeout: Duration,
}

impl Transport for SpinTransport {
    async fn send(&self, request: http::Request<Vec<u8>>) -> Result<HttpResponse, TransportError> {
        let exchange = async {
            let response: IncomingResponse = spin_sdk::http::send(request)
                .await
                .map_err(|e| TransportError(e.to_string()))?;
            read_limited(response).await
        };
        futures::pin_mut!(exchange);
        match futures::future::select(exchange, Sleep::new(self.timeout)).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right(_) => Err(TransportError(format!(
                "no complete answer within {}s",
                self.timeout.as_secs()
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
