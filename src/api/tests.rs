//! The admin API's routes, token check and answers, against an in-memory store.

use super::*;
use crate::events::RotateReason;
use crate::state::Stage;
use crate::store::tests::MemoryStore;
use std::cell::RefCell;

const TOKEN: &str = "s3cret-admin-token";
const TEAM: &str =
    r#"{"name":"alpha","accounts":[{"name":"dev","roleArn":"arn:aws:iam::123456789012:role/ci"}]}"#;

/// Records what it was asked to rotate and answers as told.
#[derive(Default)]
struct FakeRotator {
    asked: RefCell<Vec<String>>,
    busy: bool,
    lost: bool,
}

impl Rotator for FakeRotator {
    async fn rotate(&self, team: Option<&str>) -> anyhow::Result<(TickSummary, Vec<Event>)> {
        self.asked
            .borrow_mut()
            .push(team.unwrap_or("(all)").to_owned());
        let team = team.unwrap_or("alpha");
        let summary = TickSummary {
            rotated: 1,
            lease_busy: self.busy,
            lease_lost: self
                .lost
                .then(|| "the lease was taken over by tick-other".to_owned()),
            ..TickSummary::default()
        };
        let event = Event::AccountRotated {
            team: team.into(),
            account: "dev".into(),
            role_arn: "arn:aws:iam::123456789012:role/ci".into(),
            reason: RotateReason::Requested,
            secret_path: "/concourse/alpha/dev".into(),
            expiration: "2030-01-01T01:00:00Z".parse().unwrap(),
            rotate_after: "2030-01-01T00:30:00Z".parse().unwrap(),
            secrets_created: 0,
        };
        Ok((summary, vec![Event::TickStarted { teams: 1 }, event]))
    }
}

fn call(store: &MemoryStore, method: &str, path: &str, body: &str) -> ApiResponse {
    call_with(
        store,
        &FakeRotator::default(),
        Some(TOKEN),
        method,
        path,
        body,
        Some(&format!("Bearer {TOKEN}")),
    )
}

fn call_with(
    store: &MemoryStore,
    rotator: &FakeRotator,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
    authorization: Option<&str>,
) -> ApiResponse {
    let request = ApiRequest {
        method,
        path,
        authorization,
    };
    let read_body = || async { body.as_bytes().to_vec() };
    futures::executor::block_on(handle(
        &request,
        admin(token),
        &judgement(),
        read_body,
        || Ok(store),
        rotator,
    ))
}

fn admin(token: Option<&str>) -> Tokens<'_> {
    Tokens {
        admin: token,
        metrics: None,
    }
}

/// No rules (the plan's refusals unknown), at minute 40 of the test moment.
fn judgement() -> Judgement {
    Judgement {
        rules: None,
        now: crate::state::tests::at(40),
    }
}

impl ApiResponse {
    /// The JSON body of an answer that has one.
    fn into_json(self) -> Value {
        match self.body {
            Some(Body::Json(value)) => value,
            other => panic!("not JSON: {other:?}"),
        }
    }
}

fn code(response: &ApiResponse) -> &str {
    match &response.body {
        Some(Body::Json(value)) => value["error"]["code"].as_str().unwrap(),
        other => panic!("not JSON: {other:?}"),
    }
}

#[test]
fn healthz_needs_no_token() {
    let response = call_with(
        &MemoryStore::default(),
        &FakeRotator::default(),
        None,
        "GET",
        "/healthz",
        "",
        None,
    );
    assert_eq!(response, ApiResponse::json(200, json!({"status": "ok"})));
}

#[test]
fn without_a_configured_token_every_other_route_is_forbidden_and_says_why() {
    for token in [None, Some("")] {
        let response = call_with(
            &MemoryStore::default(),
            &FakeRotator::default(),
            token,
            "GET",
            "/teams",
            "",
            Some("Bearer x"),
        );
        assert_eq!(response.status, 403);
        assert_eq!(code(&response), "admin_api_disabled");
        let message = response.into_json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("admin_token"), "{message}");
    }
}

#[test]
fn a_missing_or_wrong_token_is_unauthorized() {
    let store = MemoryStore::default();
    for header in [
        None,
        Some("Bearer wrong"),
        Some(TOKEN),
        Some("Bearer "),
        Some("Basic czNjcmV0"),
    ] {
        let response = call_with(
            &store,
            &FakeRotator::default(),
            Some(TOKEN),
            "GET",
            "/teams",
            "",
            header,
        );
        assert_eq!(response.status, 401, "{header:?}");
        assert_eq!(code(&response), "unauthorized");
        assert!(
            !response.into_json().to_string().contains(TOKEN),
            "the token is never echoed"
        );
    }
}

#[test]
fn the_scheme_is_any_case_and_the_configured_token_is_trimmed() {
    let store = MemoryStore::default();
    for (configured, header) in [
        (TOKEN.to_owned(), format!("bearer {TOKEN}")),
        (TOKEN.to_owned(), format!("BEARER  {TOKEN} ")),
        (format!("{TOKEN}\n"), format!("Bearer {TOKEN}")),
        (format!("  {TOKEN}\r\n"), format!("Bearer {TOKEN}")),
    ] {
        let response = call_with(
            &store,
            &FakeRotator::default(),
            Some(&configured),
            "GET",
            "/teams",
            "",
            Some(&header),
        );
        assert_eq!(response.status, 200, "{configured:?} / {header:?}");
    }
    let blank = call_with(
        &store,
        &FakeRotator::default(),
        Some(" \n"),
        "GET",
        "/teams",
        "",
        Some("Bearer "),
    );
    assert_eq!(blank.status, 403, "a blank token turns the API off");
}

#[test]
fn the_body_is_not_read_before_the_token_is_checked() {
    let store = MemoryStore::default();
    let read = std::cell::Cell::new(false);
    let request = ApiRequest {
        method: "PUT",
        path: "/teams/alpha",
        authorization: Some("Bearer wrong"),
    };
    let read_body = || async {
        read.set(true);
        TEAM.as_bytes().to_vec()
    };
    let opened = std::cell::Cell::new(false);
    let open_store = || {
        opened.set(true);
        anyhow::Ok(&store)
    };
    let response = futures::executor::block_on(handle(
        &request,
        admin(Some(TOKEN)),
        &judgement(),
        read_body,
        open_store,
        &FakeRotator::default(),
    ));
    assert_eq!(response.status, 401);
    assert!(
        !read.get(),
        "the body was read for a caller without the token"
    );
    assert!(
        !opened.get(),
        "the store was opened for a caller without the token"
    );
}

/// A store that cannot be opened is an answer for an authorized caller only: the
/// others learn nothing of it, not even its error.
#[test]
fn the_store_is_opened_only_after_authorization() {
    let request = |authorization| ApiRequest {
        method: "GET",
        path: "/teams",
        authorization,
    };
    let broken = || -> anyhow::Result<&MemoryStore> {
        anyhow::bail!("redis://10.0.0.7: connection refused")
    };
    let bearer = format!("Bearer {TOKEN}");
    let answer = |authorization| {
        futures::executor::block_on(handle(
            &request(authorization),
            admin(Some(TOKEN)),
            &judgement(),
            || async { Vec::new() },
            broken,
            &FakeRotator::default(),
        ))
    };
    let stranger = answer(None);
    assert_eq!(stranger.status, 401);
    assert!(!stranger.into_json().to_string().contains("redis"));
    let operator = answer(Some(&bearer));
    assert_eq!(operator.status, 503);
    assert!(operator
        .into_json()
        .to_string()
        .contains("connection refused"));
}

#[test]
fn put_validates_stores_and_lists() {
    let store = MemoryStore::default();
    let created = call(&store, "PUT", "/teams/alpha", TEAM);
    assert_eq!(
        created,
        ApiResponse::json(201, json!({"team": "alpha", "accounts": 1}))
    );
    assert_eq!(store.text("team/alpha").as_deref(), Some(TEAM));
    assert_eq!(call(&store, "PUT", "/teams/alpha", TEAM).status, 200);
    assert_eq!(
        call(&store, "GET", "/teams", "").into_json(),
        json!({"teams": ["alpha"]})
    );
    assert_eq!(
        call(&store, "GET", "/teams/alpha", "").into_json(),
        serde_json::from_str::<Value>(TEAM).unwrap()
    );
}

#[test]
fn an_invalid_document_is_refused_with_every_problem_and_not_stored() {
    let store = MemoryStore::default();
    let body = r#"{"name":"other","accounts":[{"name":"a/b","roleArn":"nope","duration":5}]}"#;
    let response = call(&store, "PUT", "/teams/alpha", body);
    assert_eq!(response.status, 400);
    assert_eq!(code(&response), "invalid_team");
    let problems = &response.into_json()["error"]["problems"];
    let fields: Vec<&str> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "name",
            "accounts[0].name",
            "accounts[0].roleArn",
            "accounts[0].duration"
        ]
    );
    assert!(store.text("team/alpha").is_none());
    assert_eq!(call(&store, "PUT", "/teams/alpha", "{not json").status, 400);
}

#[test]
fn oversized_bodies_are_refused() {
    let store = MemoryStore::default();
    let body = format!(
        r#"{{"name":"alpha","pad":"{}"}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    let response = call(&store, "PUT", "/teams/alpha", &body);
    assert_eq!(response.status, 413);
    assert_eq!(code(&response), "body_too_large");
    assert!(store.text("team/alpha").is_none());
}

#[test]
fn delete_removes_the_document() {
    let store = MemoryStore::default().with("team/alpha", TEAM);
    assert_eq!(call(&store, "DELETE", "/teams/alpha", "").status, 204);
    assert!(store.text("team/alpha").is_none());
    assert_eq!(
        code(&call(&store, "DELETE", "/teams/alpha", "")),
        "team_not_found"
    );
}

#[test]
fn status_shows_state_but_never_credentials() {
    let state = r#"{"accounts":{"dev":{"fingerprint":"f","written_at":"2030-01-01T00:00:00Z","expiration":"2030-01-01T01:00:00Z","rotate_after":"2030-01-01T00:28:00Z","consecutive_failures":1,"last_error":{"at":"2030-01-01T00:05:00Z","stage":"assume_role","code":"AccessDenied","message":"denied"},"incomplete":false}}}"#;
    let store = MemoryStore::default()
        .with("team/alpha", TEAM)
        .with("state/alpha", state);
    let response = call(&store, "GET", "/teams/alpha/status", "");
    assert_eq!(response.status, 200);
    let account = &response.into_json()["accounts"][0];
    assert_eq!(account["account"], "dev");
    assert_eq!(account["last_written"], "2030-01-01T00:00:00Z");
    assert_eq!(account["expiration"], "2030-01-01T01:00:00Z");
    assert_eq!(
        account["next_rotation_due"], "next tick",
        "a failed account is due at once"
    );
    assert_eq!(account["consecutive_failures"], 1);
    assert_eq!(account["last_error"]["code"], "AccessDenied");
    assert_eq!(account["last_error"]["stage"], json!(Stage::AssumeRole));

    let fresh = MemoryStore::default().with("team/alpha", TEAM).with(
        "state/alpha",
        &state.replace("\"consecutive_failures\":1", "\"consecutive_failures\":0"),
    );
    let response = call(&fresh, "GET", "/teams/alpha/status", "");
    assert_eq!(
        response.into_json()["accounts"][0]["next_rotation_due"],
        "2030-01-01T00:28:00Z"
    );
}

#[test]
fn rotate_runs_the_team_and_reports_each_account() {
    let store = MemoryStore::default().with("team/alpha", TEAM);
    let rotator = FakeRotator::default();
    let authorization = format!("Bearer {TOKEN}");
    let response = call_with(
        &store,
        &rotator,
        Some(TOKEN),
        "POST",
        "/teams/alpha/rotate",
        "",
        Some(&authorization),
    );
    assert_eq!(response.status, 200);
    assert_eq!(rotator.asked.borrow().as_slice(), ["alpha"]);
    let body = response.into_json();
    assert_eq!(body["rotated"], 1);
    assert_eq!(
        body["outcomes"].as_array().unwrap().len(),
        1,
        "only per-account outcomes"
    );
    assert_eq!(body["outcomes"][0]["event"], "account_rotated");
    assert_eq!(body["outcomes"][0]["reason"], "requested");

    let busy = FakeRotator {
        busy: true,
        ..Default::default()
    };
    let response = call_with(
        &store,
        &busy,
        Some(TOKEN),
        "POST",
        "/teams/alpha/rotate",
        "",
        Some(&authorization),
    );
    assert_eq!(
        (response.status, code(&response)),
        (409, "rotation_in_progress")
    );
    let lost = FakeRotator {
        lost: true,
        ..Default::default()
    };
    let response = call_with(
        &store,
        &lost,
        Some(TOKEN),
        "POST",
        "/teams/alpha/rotate",
        "",
        Some(&authorization),
    );
    assert_eq!((response.status, code(&response)), (409, "lease_lost"));
    let unknown = call_with(
        &store,
        &rotator,
        Some(TOKEN),
        "POST",
        "/teams/beta/rotate",
        "",
        Some(&authorization),
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(
        rotator.asked.borrow().len(),
        1,
        "an unknown team is not rotated"
    );
    let all = call_with(
        &store,
        &rotator,
        Some(TOKEN),
        "POST",
        "/rotate",
        "",
        Some(&authorization),
    );
    assert_eq!(all.status, 200);
    assert_eq!(all.into_json()["team"], Value::Null);
    assert_eq!(
        rotator.asked.borrow().last().map(String::as_str),
        Some("(all)")
    );
    let anonymous = call_with(&store, &rotator, Some(TOKEN), "POST", "/rotate", "", None);
    assert_eq!(anonymous.status, 401);
}

#[test]
fn bad_names_unknown_routes_and_methods_have_clear_errors() {
    let store = MemoryStore::default();
    assert_eq!(code(&call(&store, "GET", "/teams/..", "")), "invalid_name");
    assert_eq!(
        code(&call(&store, "GET", "/teams/a%2Fb", "")),
        "invalid_name"
    );
    assert_eq!(
        code(&call(&store, "GET", "/teams/alpha", "")),
        "team_not_found"
    );
    assert_eq!(code(&call(&store, "GET", "/nope", "")), "not_found");
    assert_eq!(
        code(&call(&store, "POST", "/teams", "")),
        "method_not_allowed"
    );
    assert_eq!(
        code(&call(&store, "PATCH", "/teams/alpha", "")),
        "method_not_allowed"
    );
    assert_eq!(
        code(&call(&store, "GET", "/teams/alpha/rotate", "")),
        "method_not_allowed"
    );
}

proptest::proptest! {
    /// Any method, path, header and body gets an answer with the stable error shape,
    /// never a panic.
    #[test]
    fn every_request_gets_an_answer(
        method in "(GET|PUT|POST|DELETE|PATCH|[A-Z]{0,8})",
        path in "(/teams(/[a-zA-Z0-9._%-]{0,12}(/(status|rotate|[a-z]{0,6}))?)?|/rotate|/healthz|/[ -~]{0,20})",
        authorization in proptest::option::of("(Bearer )?[ -~]{0,24}"),
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
    ) {
        let store = MemoryStore::default().with("team/alpha", TEAM);
        let rotator = FakeRotator::default();
        let request = ApiRequest { method: &method, path: &path, authorization: authorization.as_deref() };
        let response = futures::executor::block_on(handle(&request, admin(Some(TOKEN)), &judgement(), || async { body.clone() }, || Ok(&store), &rotator));
        if response.status >= 400 {
            let body = response.into_json();
            proptest::prop_assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string());
        }
    }
}

// The whole deployment: the page, /status and /metrics.

const METRICS: &str = "m3trics-token";

fn overview_call(tokens: Tokens<'_>, path: &str, authorization: Option<&str>) -> ApiResponse {
    let store = crate::overview::tests::every_condition();
    let request = ApiRequest {
        method: "GET",
        path,
        authorization,
    };
    let judgement = Judgement {
        rules: Some(crate::overview::tests::allow_list()),
        now: crate::state::tests::at(40),
    };
    let read_body = || async { Vec::new() };
    let rotator = FakeRotator::default();
    futures::executor::block_on(handle(
        &request,
        tokens,
        &judgement,
        read_body,
        || Ok(&store),
        &rotator,
    ))
}

fn text(response: &ApiResponse) -> (&'static str, &'static [(&'static str, &'static str)], &str) {
    match &response.body {
        Some(Body::Text {
            content_type,
            headers,
            text,
        }) => (content_type, headers, text),
        other => panic!("not a document: {other:?}"),
    }
}

#[test]
fn the_page_needs_no_token_and_its_policy_allows_its_own_script_and_style_only() {
    let response = overview_call(Tokens::default(), "/", None);
    assert_eq!(response.status, 200);
    let (content_type, headers, page) = text(&response);
    assert_eq!(content_type, "text/html; charset=utf-8");
    let policy = headers
        .iter()
        .find(|(name, _)| *name == "content-security-policy")
        .map(|(_, value)| *value)
        .unwrap();
    assert!(policy.starts_with("default-src 'none'; "), "{policy}");
    for tag in ["script", "style"] {
        let inline = page.split(&format!("<{tag}>")).nth(1).unwrap();
        let inline = inline.split(&format!("</{tag}>")).next().unwrap();
        let hash = aws_smithy_types::base64::encode(Sha256::digest(inline.as_bytes()));
        assert!(
            policy.contains(&format!("{tag}-src 'sha256-{hash}'")),
            "the page's {tag} changed: its hash is now sha256-{hash}"
        );
    }
    for outside in ["src=", "href=", "http:", "https:", "innerHTML"] {
        assert!(!page.contains(outside), "{outside} in the page");
    }
    assert!(page.contains("sessionStorage") && !page.contains("localStorage"));
}

#[test]
fn metrics_and_status_take_either_token_and_the_metrics_token_nothing_else() {
    let both = Tokens {
        admin: Some(TOKEN),
        metrics: Some(METRICS),
    };
    let bearer = |token: &str| format!("Bearer {token}");
    for path in ["/metrics", "/status"] {
        for token in [METRICS, TOKEN] {
            let response = overview_call(both, path, Some(&bearer(token)));
            assert_eq!(response.status, 200, "{path}");
        }
        let stranger = overview_call(both, path, Some("Bearer nope"));
        assert_eq!((stranger.status, code(&stranger)), (401, "unauthorized"));
        let off = overview_call(Tokens::default(), path, Some(&bearer(METRICS)));
        assert_eq!((off.status, code(&off)), (403, "metrics_disabled"));
    }
    let admin_only = overview_call(both, "/teams", Some(&bearer(METRICS)));
    assert_eq!(
        admin_only.status, 401,
        "the metrics token opens no admin route"
    );
    let metrics_only = Tokens {
        admin: None,
        metrics: Some(METRICS),
    };
    assert_eq!(
        overview_call(metrics_only, "/metrics", Some(&bearer(METRICS))).status,
        200
    );
    let teams = overview_call(metrics_only, "/teams", Some(&bearer(METRICS)));
    assert_eq!((teams.status, code(&teams)), (403, "admin_api_disabled"));
}

#[test]
fn metrics_are_the_exposition_of_the_store() {
    let response = overview_call(
        admin(Some(TOKEN)),
        "/metrics",
        Some(&format!("Bearer {TOKEN}")),
    );
    let (content_type, _, exposition) = text(&response);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(exposition.contains("concourse_sts_team_invalid{team=\"beta\"} 1\n"));
}

#[test]
fn status_shows_every_team_and_account_with_its_state_and_never_a_credential() {
    let response = overview_call(
        admin(Some(TOKEN)),
        "/status",
        Some(&format!("Bearer {TOKEN}")),
    );
    let body = response.into_json();
    assert_eq!(body["now"], "2030-03-17T18:26:40Z");
    let rows: Vec<(String, bool, String, String)> = body["teams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|team| {
            let name = team["team"].as_str().unwrap().to_owned();
            let invalid = team["invalid"].as_bool().unwrap();
            team["accounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |account| {
                    let state = account["state"].as_str().unwrap().to_owned();
                    (
                        name.clone(),
                        invalid,
                        account["account"].as_str().unwrap().to_owned(),
                        state,
                    )
                })
        })
        .collect();
    let expected = [
        ("alpha", false, "fresh", "fresh"),
        ("alpha", false, "due", "due"),
        ("alpha", false, "failing", "failing"),
        ("alpha", false, "backing-off", "backing_off"),
        ("alpha", false, "half", "half_written"),
        ("alpha", false, "new", "due"),
        ("gamma", false, "dev", "failing"),
        ("beta", true, "old", "invalid_team"),
    ];
    let expected: Vec<(String, bool, String, String)> = expected
        .iter()
        .map(|(t, i, a, s)| (t.to_string(), *i, a.to_string(), s.to_string()))
        .collect();
    assert_eq!(rows, expected);
    let gamma = &body["teams"][1]["accounts"][0];
    assert_eq!(gamma["last_error"]["stage"], "role_not_allowed");
    assert_eq!(gamma["last_error"]["permanent"], true);
    let fields: Vec<&String> = body["teams"][0]["accounts"][0]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        fields,
        [
            "account",
            "consecutive_failures",
            "expiration",
            "incomplete",
            "last_error",
            "last_written",
            "next_attempt",
            "next_rotation_due",
            "role_arn",
            "state"
        ]
    );
}
