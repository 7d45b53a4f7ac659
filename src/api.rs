//! The admin API: register and inspect teams over HTTP, and rotate one team now.
//!
//! Routing, authorization and every answer live here, free of Spin, so they are tested
//! natively; `spin.rs` only turns Spin's incoming request into an [`ApiRequest`] and the
//! [`ApiResponse`] back. Team documents are validated by the same code as the tick, and
//! nothing invalid is stored.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | the status page (HTML, no token needed: it asks for one) |
//! | `GET /healthz` | 200, no token needed |
//! | `GET /metrics` | Prometheus' text format (`metrics_token` or the admin token) |
//! | `GET /status` | every team and account at once (`metrics_token` or the admin token) |
//! | `GET /teams` | the registered team names |
//! | `GET /teams/{name}` | the stored document |
//! | `PUT /teams/{name}` | validates and stores; 400 with every problem |
//! | `DELETE /teams/{name}` | removes the document (the secrets stay) |
//! | `GET /teams/{name}/status` | every account's rotation state, never a credential |
//! | `POST /teams/{name}/rotate` | rotates the team now, same path as a tick (409 when another tick holds or takes the lease) |
//! | `POST /rotate` | runs a full tick now (for hosts with no cron trigger) |

use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{parse_team, Problem, MAX_DOCUMENT_BYTES, TEAM_KEY_PREFIX};
use crate::events::Event;
use crate::metrics;
use crate::names::name_problem;
use crate::overview::{AccountView, Overview};
use crate::settings::RotationRules;
use crate::state::{AccountState, LastError, TeamState, STATE_PREFIX};
use crate::store::KeyValue;
use crate::tick::TickSummary;

/// The largest request body accepted: a team document's limit.
pub const MAX_BODY_BYTES: usize = MAX_DOCUMENT_BYTES;

/// An HTTP request as the API sees it before its body is read.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authorization: Option<&'a str>,
}

/// The status page: one document, its script and style inline (no other request but
/// its own `fetch` of `/status`), allowed by their hashes in [`PAGE_POLICY`].
const PAGE: &str = include_str!("api/status.html");

/// The page's `Content-Security-Policy`: nothing but its own script and style (by
/// hash, so an injected one cannot run) and requests to its own origin. A unit test
/// checks the hashes against the page.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'sha256-tndz8S6jG/i/V3SljM56tMqMQ6hPuWjZkCCSDYPVkDU='; style-src 'sha256-cMfxwY/FmFkFsd8B9XFVDh6n0lJqYfdKRALf9yKO2GY='; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What an answer carries: JSON (the API's own answers) or a document of another type.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Json(Value),
    Text {
        content_type: &'static str,
        /// Headers the document needs besides its type (the page's policy).
        headers: &'static [(&'static str, &'static str)],
        text: String,
    },
}

/// An answer: a status and a body (none for 204).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<Body>,
}

impl ApiResponse {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(Body::Json(body)),
        }
    }

    fn text(
        content_type: &'static str,
        headers: &'static [(&'static str, &'static str)],
        text: String,
    ) -> Self {
        Self {
            status: 200,
            body: Some(Body::Text {
                content_type,
                headers,
                text,
            }),
        }
    }

    /// Errors have one stable shape: `{"error": {"code", "message", "problems"?}}`.
    fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(
            status,
            json!({"error": {"code": code, "message": message.into()}}),
        )
    }

    fn invalid(problems: &[Problem]) -> Self {
        let message = "the team document is invalid; nothing was stored";
        Self::json(
            400,
            json!({"error": {"code": "invalid_team", "message": message, "problems": problems}}),
        )
    }
}

/// Rotates one team now (or, with `None`, runs a tick) and reports each account.
pub trait Rotator {
    fn rotate(
        &self,
        team: Option<&str>,
    ) -> impl Future<Output = anyhow::Result<(TickSummary, Vec<Event>)>>;
}

/// The bearer tokens configured: the admin token opens every route, the metrics token
/// only the read-only views of the whole deployment (`/metrics`, `/status`), so that a
/// scraper or a status screen never holds a token that can change teams.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokens<'a> {
    pub admin: Option<&'a str>,
    pub metrics: Option<&'a str>,
}

/// How `/metrics` and `/status` judge what they read: the rules the next tick applies
/// (`None` when the variables cannot be read; then the plan's refusals are unknown), and
/// the serving node's wall clock (the API makes no AWS call, so it has no AWS time).
pub struct Judgement {
    pub rules: Option<RotationRules>,
    pub now: DateTime<Utc>,
}

/// Answers one request. The token is checked before `read_body` or `open_store` runs, so
/// a caller without it cannot make the component read, or wait for, a body, nor learn
/// anything of the store (not even its error). `read_body` gives at most
/// `MAX_BODY_BYTES + 1` bytes: one byte more than allowed means "too large".
pub async fn handle<B, K>(
    request: &ApiRequest<'_>,
    tokens: Tokens<'_>,
    judgement: &Judgement,
    read_body: impl FnOnce() -> B,
    open_store: impl FnOnce() -> anyhow::Result<K>,
    rotator: &impl Rotator,
) -> ApiResponse
where
    B: Future<Output = Vec<u8>>,
    K: KeyValue,
{
    let segments: Vec<&str> = request
        .path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .collect();
    match (segments.as_slice(), request.method) {
        (["healthz"], "GET") => return ApiResponse::json(200, json!({"status": "ok"})),
        ([], "GET") => {
            return ApiResponse::text("text/html; charset=utf-8", PAGE_HEADERS, PAGE.to_owned())
        }
        (["metrics" | "status"], "GET") => {
            let accepted = [tokens.metrics, tokens.admin];
            return match authorize(request.authorization, &accepted, METRICS_OFF) {
                Ok(()) => overview(&segments, open_store, judgement),
                Err(refusal) => refusal,
            };
        }
        _ => {}
    }
    if let Err(refusal) = authorize(request.authorization, &[tokens.admin], ADMIN_OFF) {
        return refusal;
    }
    let store = match open_store() {
        Ok(store) => store,
        Err(error) => return store_failed(format!("{error:#}")),
    };
    let store = &store;
    let body = read_body().await;
    let result = match (segments.as_slice(), request.method) {
        (["teams"], "GET") => list_teams(store),
        (["teams", name], method) => team_name(name).and_then(|name| match method {
            "GET" => get_team(store, name),
            "PUT" => put_team(store, name, &body),
            "DELETE" => delete_team(store, name),
            _ => Err(not_allowed()),
        }),
        (["teams", name, "status"], "GET") => {
            team_name(name).and_then(|name| team_status(store, name))
        }
        (["teams", name, "rotate"], "POST") => {
            match team_name(name).and_then(|name| stored_document(store, name).map(|_| name)) {
                Ok(name) => rotate(rotator, Some(name)).await,
                Err(refusal) => Err(refusal),
            }
        }
        (["rotate"], "POST") => rotate(rotator, None).await,
        (["teams", _, "status" | "rotate"], _)
        | (["teams"] | ["rotate"] | ["metrics"] | ["status"] | [], _) => Err(not_allowed()),
        _ => Err(ApiResponse::error(
            404,
            "not_found",
            format!("no route for {}", request.path),
        )),
    };
    result.unwrap_or_else(|refusal| refusal)
}

fn not_allowed() -> ApiResponse {
    ApiResponse::error(
        405,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// What a route answers when none of the tokens it accepts is configured.
struct Off {
    code: &'static str,
    message: &'static str,
    send: &'static str,
}

const ADMIN_OFF: Off = Off {
    code: "admin_api_disabled",
    message: "the admin API is off: set the secret variable admin_token (e.g. SPIN_VARIABLE_ADMIN_TOKEN) to enable it",
    send: "send Authorization: Bearer <admin_token>",
};

const METRICS_OFF: Off = Off {
    code: "metrics_disabled",
    message: "metrics and status are off: set the secret variable metrics_token (or admin_token) to enable them",
    send: "send Authorization: Bearer <metrics_token or admin_token>",
};

/// The page's headers besides its type: its policy, and nothing cached or sniffed.
const PAGE_HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", PAGE_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// Checks `Authorization: Bearer <token>` against every configured token of `accepted`
/// in constant time (comparing digests, and all of them, so neither the content nor the
/// length of a token leaks through timing). The scheme is matched without regard to
/// case, as HTTP says; a configured token is trimmed, as a Kubernetes Secret made from a
/// file keeps the file's last newline.
fn authorize(header: Option<&str>, accepted: &[Option<&str>], off: Off) -> Result<(), ApiResponse> {
    let configured: Vec<&str> = accepted
        .iter()
        .flatten()
        .map(|token| token.trim())
        .filter(|token| !token.is_empty())
        .collect();
    if configured.is_empty() {
        return Err(ApiResponse::error(403, off.code, off.message));
    }
    let given = header
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    let given_digest = Sha256::digest(given.as_bytes());
    let matches = configured
        .iter()
        .fold(subtle::Choice::from(0), |found, token| {
            found | given_digest.ct_eq(&Sha256::digest(token.as_bytes()))
        });
    if given.is_empty() || !bool::from(matches) {
        return Err(ApiResponse::error(401, "unauthorized", off.send));
    }
    Ok(())
}

/// `/metrics` or `/status`: the whole deployment, read at once.
fn overview<K: KeyValue>(
    segments: &[&str],
    open_store: impl FnOnce() -> anyhow::Result<K>,
    judgement: &Judgement,
) -> ApiResponse {
    let read = open_store().and_then(|store| {
        Ok(Overview::read(
            &store,
            judgement.rules.as_ref(),
            judgement.now,
        )?)
    });
    let overview = match read {
        Ok(overview) => overview,
        Err(error) => return store_failed(format!("{error:#}")),
    };
    match segments {
        ["metrics"] => ApiResponse::text(
            metrics::CONTENT_TYPE,
            &[],
            metrics::exposition(&overview, judgement.now),
        ),
        _ => ApiResponse::json(200, deployment_status(&overview, judgement.now)),
    }
}

/// Every team and account, with the team status's fields and each account's `state`.
fn deployment_status(overview: &Overview, now: DateTime<Utc>) -> Value {
    let teams: Vec<Value> = overview
        .teams
        .iter()
        .map(|team| {
            let accounts: Vec<Value> = team.accounts.iter().map(view_status).collect();
            json!({"team": team.name, "invalid": team.invalid, "accounts": accounts})
        })
        .collect();
    json!({"now": now, "teams": teams})
}

fn view_status(view: &AccountView) -> Value {
    let role_arn = view.role_arn.as_deref();
    let condition = Some(view.condition.as_str());
    account_status(
        &view.name,
        role_arn,
        &view.state,
        view.last_error(),
        condition,
    )
}

fn team_name(name: &str) -> Result<&str, ApiResponse> {
    match name_problem(name, 2) {
        None => Ok(name),
        Some(reason) => Err(ApiResponse::error(
            400,
            "invalid_name",
            format!("team name {reason}"),
        )),
    }
}

/// The answer when the key-value store cannot be reached.
fn store_failed(error: impl std::fmt::Display) -> ApiResponse {
    ApiResponse::error(
        503,
        "store_unavailable",
        format!("key-value store: {error}"),
    )
}

fn list_teams(store: &impl KeyValue) -> Result<ApiResponse, ApiResponse> {
    let mut teams: Vec<String> = store
        .keys()
        .map_err(store_failed)?
        .into_iter()
        .filter_map(|key| key.strip_prefix(TEAM_KEY_PREFIX).map(str::to_owned))
        .collect();
    teams.sort();
    Ok(ApiResponse::json(200, json!({"teams": teams})))
}

fn stored_document(store: &impl KeyValue, name: &str) -> Result<Vec<u8>, ApiResponse> {
    store
        .get(&format!("{TEAM_KEY_PREFIX}{name}"))
        .map_err(store_failed)?
        .ok_or_else(|| {
            ApiResponse::error(
                404,
                "team_not_found",
                format!("no team {name:?} is registered"),
            )
        })
}

fn get_team(store: &impl KeyValue, name: &str) -> Result<ApiResponse, ApiResponse> {
    let document = stored_document(store, name)?;
    let value = serde_json::from_slice(&document)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&document).into_owned()));
    Ok(ApiResponse::json(200, value))
}

fn put_team(store: &impl KeyValue, name: &str, body: &[u8]) -> Result<ApiResponse, ApiResponse> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiResponse::error(
            413,
            "body_too_large",
            format!("a team document is at most {MAX_BODY_BYTES} bytes"),
        ));
    }
    let key = format!("{TEAM_KEY_PREFIX}{name}");
    let team = parse_team(&key, body).map_err(|invalid| ApiResponse::invalid(&invalid.problems))?;
    let existed = store.get(&key).map_err(store_failed)?.is_some();
    store.set(&key, body).map_err(store_failed)?;
    let status = if existed { 200 } else { 201 };
    Ok(ApiResponse::json(
        status,
        json!({"team": team.name, "accounts": team.accounts.len()}),
    ))
}

fn delete_team(store: &impl KeyValue, name: &str) -> Result<ApiResponse, ApiResponse> {
    stored_document(store, name)?;
    store
        .delete(&format!("{TEAM_KEY_PREFIX}{name}"))
        .map_err(store_failed)?;
    Ok(ApiResponse {
        status: 204,
        body: None,
    })
}

/// Every account of the team with its rotation state; accounts never rotated show only
/// their configuration.
fn team_status(store: &impl KeyValue, name: &str) -> Result<ApiResponse, ApiResponse> {
    let document = stored_document(store, name)?;
    let team = parse_team(&format!("{TEAM_KEY_PREFIX}{name}"), &document)
        .map_err(|invalid| ApiResponse::invalid(&invalid.problems))?;
    let state = store
        .get(&format!("{STATE_PREFIX}{name}"))
        .map_err(store_failed)?
        .and_then(|bytes| TeamState::read(&bytes))
        .unwrap_or_default();
    let accounts: Vec<Value> = team
        .accounts
        .iter()
        .map(|account| {
            let current = state
                .accounts
                .get(&account.name)
                .cloned()
                .unwrap_or_default();
            let last_error = current.last_error.as_ref();
            let role_arn = Some(account.role_arn.as_str());
            account_status(&account.name, role_arn, &current, last_error, None)
        })
        .collect();
    Ok(ApiResponse::json(
        200,
        json!({"team": name, "accounts": accounts}),
    ))
}

/// One account's rotation state as the status routes answer it; never a credential.
/// A derived shape rather than `json!`: the component's size is bounded, and this is
/// the smaller code.
#[derive(serde::Serialize)]
struct AccountStatus<'a> {
    account: &'a str,
    role_arn: Option<&'a str>,
    last_written: Option<DateTime<Utc>>,
    expiration: Option<DateTime<Utc>>,
    next_rotation_due: Value,
    next_attempt: Option<DateTime<Utc>>,
    consecutive_failures: u32,
    incomplete: bool,
    last_error: Option<&'a LastError>,
    /// The account's [`crate::overview::Condition`] (`/status` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
}

fn account_status(
    name: &str,
    role_arn: Option<&str>,
    state: &AccountState,
    last_error: Option<&LastError>,
    condition: Option<&'static str>,
) -> Value {
    let status = AccountStatus {
        account: name,
        role_arn,
        last_written: state.written_at,
        expiration: state.expiration,
        next_rotation_due: next_rotation_due(state),
        next_attempt: state.next_attempt,
        consecutive_failures: state.consecutive_failures,
        incomplete: state.incomplete,
        last_error,
        state: condition,
    };
    serde_json::to_value(status).expect("an account's status is strings, numbers and times")
}

/// When the account is next rotated: its backoff's end, "next tick" when it is due now,
/// else its planned rotation.
fn next_rotation_due(state: &AccountState) -> Value {
    if let Some(next) = state.next_attempt {
        return json!(next);
    }
    let due_now = state.written_at.is_none() || state.incomplete || state.consecutive_failures > 0;
    if due_now {
        json!("next tick")
    } else {
        json!(state.rotate_after)
    }
}

async fn rotate(rotator: &impl Rotator, team: Option<&str>) -> Result<ApiResponse, ApiResponse> {
    let (summary, events) = rotator
        .rotate(team)
        .await
        .map_err(|error| ApiResponse::error(503, "rotation_unavailable", format!("{error:#}")))?;
    if summary.lease_busy {
        return Err(ApiResponse::error(
            409,
            "rotation_in_progress",
            "a tick is running; try again when it has finished",
        ));
    }
    if let Some(lost) = &summary.lease_lost {
        return Err(ApiResponse::error(
            409,
            "lease_lost",
            format!("{lost}; the new holder finishes the rotation"),
        ));
    }
    let outcomes: Vec<&Event> = events
        .iter()
        .filter(|event| event.is_account_outcome())
        .collect();
    let status = if summary.failed.is_empty() && summary.invalid_teams.is_empty() {
        200
    } else {
        502
    };
    Ok(ApiResponse::json(
        status,
        json!({"team": team, "rotated": summary.rotated, "failed": summary.failed, "outcomes": outcomes}),
    ))
}

#[cfg(test)]
mod tests;
