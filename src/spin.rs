//! The Spin side: the three entry points (the cron export, `wasi:cli/run` for the command
//! trigger, the admin API's HTTP handler) and adapters from Spin's key-value store,
//! variables and outbound HTTP to the traits the engine runs on. Nothing here decides
//! anything.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use spin_sdk::http::{IncomingRequest, IncomingResponse, Response};
use spin_sdk::key_value::Store;

use crate::api::{self, ApiRequest, Rotator};
use crate::aws::{AwsClient, HttpResponse, Transport, TransportError};
use crate::clock::Clock;
use crate::rotate::{Engine, Event, EventSink, TickSummary};
use crate::settings::{Settings, Variables};
use crate::store::KeyValue;

wit_bindgen::generate!({ world: "component", path: "wit", generate_all });

use spin_sdk::wit::wasi::keyvalue as wasi_keyvalue;

/// AWS's answers here are a few kilobytes; anything bigger is refused, not buffered.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

struct Component;

impl Guest for Component {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        spin_executor::run(tick()).map_err(Error::Other)
    }
}

/// The command trigger's entry point: one tick, the same as a cron event. The failure
/// summary is already logged; the exit status says whether there was one.
impl exports::wasi::cli::run::Guest for Component {
    fn run() -> Result<(), ()> {
        spin_executor::run(tick()).map_err(|_| ())
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
    let store = SpinStore::open().map_err(|e| format!("opening key-value store: {e:#}"))?;
    let runtime = Runtime::load()?;
    runtime
        .engine(&store, &StdoutSink)
        .run_tick()
        .await
        .map_err(|e| format!("{e:#}"))
}

/// The validated variables and the AWS client built from them.
struct Runtime {
    settings: Settings,
    client: AwsClient<SpinTransport>,
}

impl Runtime {
    fn load() -> Result<Self, String> {
        let settings = Settings::from_variables(&SpinVariables).map_err(|e| format!("{e:#}"))?;
        let transport = SpinTransport {
            timeout: settings.rules.request_timeout,
        };
        let client = AwsClient::new(
            transport,
            &settings.credentials,
            &settings.region,
            settings.endpoints.clone(),
        );
        Ok(Self { settings, client })
    }

    fn engine<'a>(
        &'a self,
        store: &'a SpinStore,
        sink: &'a dyn EventSink,
    ) -> Engine<'a, SpinTransport, WasiClock, SpinStore> {
        Engine {
            client: &self.client,
            clock: &WasiClock,
            store,
            sink,
            rules: &self.settings.rules,
        }
    }
}

/// The admin API (see [`crate::api`]): Spin's request in, the API's answer out.
#[spin_sdk::http_component]
async fn admin_api(request: IncomingRequest) -> Response {
    let method = request.method().to_string();
    let path = request.path_with_query().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default().to_owned();
    let authorization = request
        .headers()
        .get("authorization")
        .into_iter()
        .next()
        .and_then(|value| String::from_utf8(value).ok());
    let body = read_body(request).await;
    let token = SpinVariables.get("admin_token").ok().flatten();
    let answer = match SpinStore::open() {
        Ok(store) => {
            let api_request = ApiRequest {
                method: &method,
                path: &path,
                authorization: authorization.as_deref(),
                body: &body,
            };
            api::handle(
                &api_request,
                token.as_deref(),
                &store,
                &SpinRotator { store: &store },
            )
            .await
        }
        Err(error) => api::store_failed(error),
    };
    let mut response = Response::builder();
    response.status(answer.status);
    if let Some(body) = answer.body {
        response
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    response.build()
}

/// Reads at most one byte more than the API accepts, so an endless body cannot exhaust
/// memory and a too-large one is still recognised.
async fn read_body(request: IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    let mut stream = request.into_body_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = api::MAX_BODY_BYTES + 1 - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() > api::MAX_BODY_BYTES {
            break;
        }
    }
    body
}

/// Rotates one team for the API, logging as a tick does and collecting the events.
struct SpinRotator<'s> {
    store: &'s SpinStore,
}

impl Rotator for SpinRotator<'_> {
    async fn rotate(&self, team: Option<&str>) -> anyhow::Result<(TickSummary, Vec<Event>)> {
        let runtime = Runtime::load().map_err(anyhow::Error::msg)?;
        let sink = CollectingSink::default();
        let engine = runtime.engine(self.store, &sink);
        let summary = match team {
            Some(team) => engine.rotate_team(team).await?,
            None => engine.run_tick().await?,
        };
        Ok((summary, sink.0.into_inner()))
    }
}

/// Logs every event and keeps it for the API's answer.
#[derive(Default)]
struct CollectingSink(std::cell::RefCell<Vec<Event>>);

impl EventSink for CollectingSink {
    fn emit(&self, event: &Event) {
        StdoutSink.emit(event);
        self.0.borrow_mut().push(event.clone());
    }
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

/// Spin's outbound HTTP, with timeouts and a cap on the answer's size. The host enforces
/// `wasi:http` request options (connect, first byte, between bytes); a WASI timer also
/// bounds the whole exchange, body included, whatever the host honours.
struct SpinTransport {
    timeout: Duration,
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
            futures::future::Either::Right(_) => Err(TransportError(format!(
                "no complete answer within {}s",
                self.timeout.as_secs()
            ))),
        }
    }
}

/// `outgoing-handler.handle` with request options. (spin-sdk 5.2's `send` passes none.)
async fn send_with_options(
    request: http::Request<Vec<u8>>,
    timeout: Duration,
) -> Result<IncomingResponse, TransportError> {
    use spin_sdk::http::conversions::TryIntoOutgoingRequest;
    use spin_sdk::wit::wasi::http0_2_0::{outgoing_handler, types};
    let failed = |what: &str| TransportError(format!("sending the request: {what}"));
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
    let pending =
        outgoing_handler::handle(outgoing, Some(options)).map_err(|e| failed(&format!("{e:?}")))?;
    {
        let stream = outgoing_body.write().map_err(|()| failed("body stream"))?;
        // Bodies here are a few hundred bytes; the stream takes 4096 at a time.
        for chunk in body.unwrap_or_default().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| failed(&format!("{e:?}")))?;
        }
    }
    types::OutgoingBody::finish(outgoing_body, None).map_err(|e| failed(&format!("{e:?}")))?;
    let mut registration: Option<spin_executor::CancelOnDropToken> = None;
    futures::future::poll_fn(|cx| match pending.get() {
        Some(Ok(Ok(response))) => Poll::Ready(Ok(response)),
        Some(Ok(Err(code))) => Poll::Ready(Err(TransportError(format!("{code:?}")))),
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
