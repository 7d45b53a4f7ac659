//! The admin API: register and inspect teams over HTTP, and rotate one team now.
//!
//! Routing, authorization and every answer live here, free of Spin, so they are tested
//! natively; `spin.rs` only turns Spin's incoming request into an [`ApiRequest`] and the
//! [`ApiResponse`] back. Team documents are validated by the same code as the tick, and
//! nothing invalid is stored.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /healthz` | 200, no token needed |
//! | `GET /teams` | the registered team names |
//! | `GET /teams/{name}` | the stored document |
//! | `PUT /teams/{name}` | validates and stores; 400 with every problem |
//! | `DELETE /teams/{name}` | removes the document (the secrets stay) |
//! | `GET /teams/{name}/status` | every account's rotation state, never a credential |
//! | `POST /teams/{name}/rotate` | rotates the team now, same path as a tick (409 when another tick holds or takes the lease) |
//! | `POST /rotate` | runs a full tick now (for hosts with no cron trigger) |

use std::future::Future;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{parse_team, Problem, MAX_DOCUMENT_BYTES, TEAM_KEY_PREFIX};
use crate::events::Event;
use crate::names::name_problem;
use crate::state::{AccountState, TeamState, STATE_PREFIX};
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

/// An answer: a status and a JSON body (none for 204).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<Value>,
}

impl ApiResponse {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
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

/// Answers one request. The token is checked before `read_body` or `open_store` runs, so
/// a caller without it cannot make the component read, or wait for, a body, nor learn
/// anything of the store (not even its error). `read_body` gives at most
/// `MAX_BODY_BYTES + 1` bytes: one byte more than allowed means "too large".
pub async fn handle<B, K>(
    request: &ApiRequest<'_>,
    admin_token: Option<&str>,
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
    if let (["healthz"], "GET") = (segments.as_slice(), request.method) {
        return ApiResponse::json(200, json!({"status": "ok"}));
    }
    if let Err(refusal) = authorize(request.authorization, admin_token) {
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
        (["teams", _, "status" | "rotate"], _) | (["teams"] | ["rotate"], _) => Err(not_allowed()),
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

/// Checks `Authorization: Bearer <admin_token>` in constant time (comparing digests, so
/// neither the content nor the length of the token leaks through timing). The scheme is
/// matched without regard to case, as HTTP says; the configured token is trimmed, as a
/// Kubernetes Secret made from a file keeps the file's last newline.
fn authorize(header: Option<&str>, admin_token: Option<&str>) -> Result<(), ApiResponse> {
    let Some(expected) = admin_token.map(str::trim).filter(|t| !t.is_empty()) else {
        return Err(ApiResponse::error(
            403,
            "admin_api_disabled",
            "the admin API is off: set the secret variable admin_token (e.g. SPIN_VARIABLE_ADMIN_TOKEN) to enable it",
        ));
    };
    let given = header
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    let matches: bool = Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into();
    if given.is_empty() || !matches {
        return Err(ApiResponse::error(
            401,
            "unauthorized",
            "send Authorization: Bearer <admin_token>",
        ));
    }
    Ok(())
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
            json!({
                "account": account.name,
                "role_arn": account.role_arn,
                "last_written": current.written_at,
                "expiration": current.expiration,
                "next_rotation_due": next_rotation_due(&current),
                "next_attempt": current.next_attempt,
                "consecutive_failures": current.consecutive_failures,
                "incomplete": current.incomplete,
                "last_error": current.last_error,
            })
        })
        .collect();
    Ok(ApiResponse::json(
        200,
        json!({"team": name, "accounts": accounts}),
    ))
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
