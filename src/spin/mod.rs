//! The Spin side: the three entry points (the cron export, `wasi:cli/run` for the command
//! trigger, the admin API's HTTP handler), each a few lines over the engine, and the
//! adapters it runs on: [`store`] (key-value), [`http`] (outbound HTTP with its timers),
//! [`time`] (clocks and chance). Nothing here decides anything.

mod http;
mod store;
mod time;

use futures::StreamExt;
use spin_sdk::http::{IncomingRequest, Response};

use crate::api::{self, ApiRequest, Body, Judgement, Rotator, Tokens};
use crate::aws::AwsClient;
use crate::clock::Clock;
use crate::events::{Event, EventSink, LogLine};
use crate::settings::{self, Settings, Variables};
use crate::store::Prefixed;
use crate::tick::{Engine, TickSummary};
use crate::vault::VaultClient;
use http::SpinTransport;
use store::SpinStore;
use time::WasiTime;

wit_bindgen::generate!({ world: "component", path: "wit", generate_all });

struct Component;

impl Guest for Component {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        spin_executor::run(tick()).map_err(Error::Other)
    }
}

/// The command trigger's entry point: one tick, the same as a cron event. The failure
/// summary is already logged; the exit status says whether there was one.
///
/// A failed tick ends through `wasi:cli/exit` instead of returning `Err`, because not every
/// host reads what `run` returns: SpinKube's Spin shim (trigger-command 0.5) drops it, and
/// its pod would end as Complete. An exit is a trap that every host sees.
impl exports::wasi::cli::run::Guest for Component {
    fn run() -> Result<(), ()> {
        if spin_executor::run(tick()).is_ok() {
            return Ok(());
        }
        // The exit skips Rust's own cleanup; the log lines must be out before it.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        wasi::cli::exit::exit(Err(()));
        Err(())
    }
}

export!(Component);

/// Failures of single teams or accounts are already logged by the engine; only a tick
/// that cannot run at all gets a `tick_failed` line here.
async fn tick() -> Result<(), String> {
    let log = StdoutLog::new();
    match rotate(&log, None).await {
        Ok(summary) => summary.into_result(),
        Err(error) => {
            let error = format!("{error:#}");
            log.emit(&Event::TickFailed {
                error: error.clone(),
            });
            Err(error)
        }
    }
}

/// A full tick, or with `team` one team's rotation, as configured by the variables.
async fn rotate(log: &StdoutLog, team: Option<&str>) -> anyhow::Result<TickSummary> {
    let store = open_store()?;
    let settings = Settings::from_variables(&SpinVariables)?;
    let transport = SpinTransport {
        timeout: settings.rules.request_timeout,
    };
    let clock = Clock::new(WasiTime);
    let client = AwsClient::new(
        transport,
        &clock,
        settings.identity,
        &settings.region,
        settings.endpoints,
    );
    let vault = settings.vault.map(|vault| {
        let transport = SpinTransport {
            timeout: settings.rules.request_timeout,
        };
        VaultClient::new(transport, &clock, &client, vault)
    });
    let engine = Engine {
        client: &client,
        clock: &clock,
        store: &store,
        sink: log,
        rules: &settings.rules,
        tick: &log.tick,
        vault: vault.as_ref(),
    };
    match team {
        None => engine.run_tick().await,
        Some(team) => engine.rotate_team(team).await,
    }
}

/// The `default` store, seen under the `store_prefix` variable.
fn open_store() -> anyhow::Result<Prefixed<SpinStore>> {
    let prefix = settings::store_prefix(&SpinVariables)?;
    Ok(Prefixed::new(SpinStore::open()?, &prefix))
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
    let variable = |name| SpinVariables.get(name).ok().flatten();
    let (admin, metrics) = (variable("admin_token"), variable("metrics_token"));
    let tokens = Tokens {
        admin: admin.as_deref(),
        metrics: metrics.as_deref(),
    };
    let judgement = Judgement {
        rules: Settings::from_variables(&SpinVariables)
            .ok()
            .map(|settings| settings.rules),
        now: time::now(),
    };
    let head = ApiRequest {
        method: &method,
        path: &path,
        authorization: authorization.as_deref(),
    };
    let body = || read_body(request);
    let answer = api::handle(&head, tokens, &judgement, body, open_store, &SpinRotator).await;
    let mut response = Response::builder();
    response.status(answer.status);
    match answer.body {
        Some(Body::Json(body)) => {
            response
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        Some(Body::Text {
            content_type,
            headers,
            text,
        }) => {
            response.header("content-type", content_type);
            for (name, value) in headers {
                response.header(*name, *value);
            }
            response.body(text);
        }
        None => {}
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

/// Rotates for the API, logging as a tick does and keeping the events for the answer.
struct SpinRotator;

impl Rotator for SpinRotator {
    async fn rotate(&self, team: Option<&str>) -> anyhow::Result<(TickSummary, Vec<Event>)> {
        let log = StdoutLog::new();
        let summary = rotate(&log, team).await?;
        Ok((summary, log.kept.into_inner()))
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

/// One JSON line per event on stdout, which Spin collects; the events are kept too, for
/// the admin API's answer.
struct StdoutLog {
    tick: String,
    kept: std::cell::RefCell<Vec<Event>>,
}

impl StdoutLog {
    fn new() -> Self {
        Self {
            tick: time::random_id(),
            kept: Default::default(),
        }
    }
}

impl EventSink for StdoutLog {
    fn emit(&self, event: &Event) {
        let line = LogLine {
            time: time::now(),
            level: event.level(),
            tick: &self.tick,
            event,
        };
        println!("{}", line.to_json());
        self.kept.borrow_mut().push(event.clone());
    }
}
