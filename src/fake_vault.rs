//! One fake Vault for the unit tests, reached through the fake AWS's transport at
//! `http://vault.test`: AppRole and AWS IAM logins, tokens with a TTL and a maximum on
//! the fake's clock, renewal, lookup and revocation, a KV engine of either version at
//! `concourse/` (v2 with check-and-set and custom metadata), paths a policy denies, and
//! a seal. Every request is logged as `METHOD path`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::aws::HttpResponse;
use crate::vault::{KvVersion, VaultAuth, VaultSettings};

pub const ROLE_ID: &str = "role-id-1";
pub const SECRET_ID: &str = "secret-id-CANARY";
/// The operator's token for `vault_auth = token`.
pub const OPERATOR_TOKEN: &str = "hvs.OPERATOR-CANARY";

/// A hook called with the fake and each request (`METHOD path`) before it is answered.
pub type OnRequest = Box<dyn Fn(&FakeVault, &str)>;

/// One token Vault knows.
#[derive(Debug, Clone)]
pub struct FakeToken {
    pub expires: Option<DateTime<Utc>>,
    /// Renewals stop here.
    pub max: Option<DateTime<Utc>>,
    pub ttl: i64,
    pub renewable: bool,
}

/// One secret of the KV engine: every version's data, and the custom metadata.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub versions: Vec<Value>,
    pub labels: Value,
}

pub struct FakeVault {
    pub version: Cell<u8>,
    pub secrets: RefCell<BTreeMap<String, Stored>>,
    pub tokens: RefCell<HashMap<String, FakeToken>>,
    /// What a login grants: TTL and maximum TTL in seconds (0: none).
    pub token_ttl: Cell<i64>,
    pub token_max_ttl: Cell<i64>,
    /// Paths (after `/v1/`) starting with one of these are denied.
    pub denied: RefCell<Vec<String>>,
    pub sealed: Cell<bool>,
    /// `iam_server_id_header_value` of the AWS auth method.
    pub server_id: RefCell<Option<String>>,
    pub requests: RefCell<Vec<String>>,
    /// Every namespace header seen.
    pub namespaces: RefCell<Vec<String>>,
    pub hook: RefCell<Option<OnRequest>>,
    /// Every answer is a refusal that quotes the request's token and body, as a hostile
    /// or careless server might.
    pub echo: Cell<bool>,
    issued: Cell<u32>,
}

impl Default for FakeVault {
    fn default() -> Self {
        let operator = FakeToken {
            expires: None,
            max: None,
            ttl: 0,
            renewable: false,
        };
        Self {
            version: Cell::new(2),
            secrets: RefCell::default(),
            tokens: RefCell::new(HashMap::from([(OPERATOR_TOKEN.to_owned(), operator)])),
            token_ttl: Cell::new(600),
            token_max_ttl: Cell::new(0),
            denied: RefCell::default(),
            sealed: Cell::new(false),
            server_id: RefCell::new(None),
            requests: RefCell::default(),
            namespaces: RefCell::default(),
            hook: RefCell::new(None),
            echo: Cell::new(false),
            issued: Cell::new(0),
        }
    }
}

/// The settings of a client of this fake, logging in with `auth`.
pub fn settings(auth: VaultAuth) -> VaultSettings {
    VaultSettings {
        url: "http://vault.test".into(),
        namespace: None,
        mount: "concourse".into(),
        kv_version: KvVersion::Auto,
        writes_per_second: 0,
        auth,
    }
}

pub fn approle() -> VaultAuth {
    VaultAuth::AppRole {
        role_id: ROLE_ID.into(),
        secret_id: SECRET_ID.to_owned().into(),
    }
}

fn reply(status: u16, body: Value) -> HttpResponse {
    HttpResponse::new(status, body.to_string())
}

fn refused(status: u16, message: &str) -> HttpResponse {
    reply(status, json!({ "errors": [message] }))
}

fn denied() -> HttpResponse {
    refused(403, "1 error occurred:\n\t* permission denied\n\n")
}

impl FakeVault {
    /// Calls `hook` with each request before it is answered.
    pub fn on_request(&self, hook: impl Fn(&FakeVault, &str) + 'static) {
        *self.hook.borrow_mut() = Some(Box::new(hook));
    }

    pub fn count(&self, request: &str) -> usize {
        let requests = self.requests.borrow();
        requests.iter().filter(|r| r.starts_with(request)).count()
    }

    /// The latest data of a key (below the mount).
    pub fn data(&self, key: &str) -> Option<Value> {
        let secrets = self.secrets.borrow();
        secrets.get(key)?.versions.last().cloned()
    }

    /// A token that is valid now.
    pub fn live_tokens(&self, now: DateTime<Utc>) -> usize {
        let tokens = self.tokens.borrow();
        tokens
            .values()
            .filter(|t| t.expires.is_none_or(|e| e > now))
            .count()
    }

    pub fn answer(&self, request: &http::Request<Vec<u8>>, now: DateTime<Utc>) -> HttpResponse {
        let path = request.uri().path().trim_start_matches("/v1/").to_owned();
        let call = format!("{} {path}", request.method());
        if let Some(namespace) = request.headers().get("x-vault-namespace") {
            let namespace = namespace.to_str().unwrap().to_owned();
            self.namespaces.borrow_mut().push(namespace);
        }
        if let Some(hook) = self.hook.borrow().as_ref() {
            hook(self, &call);
        }
        self.requests.borrow_mut().push(call);
        if self.sealed.get() {
            return refused(503, "Vault is sealed");
        }
        let body: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
        if self.echo.get() {
            let token = request.headers().get("x-vault-token");
            return refused(400, &format!("{token:?} {body}"));
        }
        match path.as_str() {
            "auth/approle/login" => return self.approle_login(&body, now),
            "auth/aws/login" => return self.aws_login(&body, now),
            _ => {}
        }
        let token = request.headers().get("x-vault-token");
        let token = token.map(|t| t.to_str().unwrap().to_owned());
        let Some(token) = token.filter(|t| self.valid(t, now)) else {
            return denied();
        };
        if self.denied.borrow().iter().any(|p| path.starts_with(p)) {
            return denied();
        }
        match (request.method().as_str(), path.as_str()) {
            ("GET", "auth/token/lookup-self") => self.lookup(&token, now),
            ("POST", "auth/token/renew-self") => self.renew(&token, now),
            ("POST", "auth/token/revoke-self") => {
                self.tokens.borrow_mut().remove(&token);
                HttpResponse::new(204, "")
            }
            ("GET", mounts) if mounts.starts_with("sys/internal/ui/mounts/concourse") => {
                let version = self.version.get().to_string();
                reply(
                    200,
                    json!({"data": {"path": "concourse/", "type": "kv", "options": {"version": version}}}),
                )
            }
            (method, path) => match path.strip_prefix("concourse/") {
                Some(rest) => self.kv(method, rest, body),
                None => refused(404, "no handler for route"),
            },
        }
    }

    fn valid(&self, token: &str, now: DateTime<Utc>) -> bool {
        let tokens = self.tokens.borrow();
        tokens
            .get(token)
            .is_some_and(|t| t.expires.is_none_or(|e| e > now))
    }

    fn grant(&self, now: DateTime<Utc>) -> HttpResponse {
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let token = format!("hvs.LOGIN-{n}-CANARY");
        let (ttl, max) = (self.token_ttl.get(), self.token_max_ttl.get());
        let after = |seconds: i64| (seconds > 0).then(|| now + chrono::Duration::seconds(seconds));
        let granted = FakeToken {
            expires: after(ttl),
            max: after(max),
            ttl,
            renewable: true,
        };
        self.tokens.borrow_mut().insert(token.clone(), granted);
        reply(
            200,
            json!({"auth": {"client_token": token, "lease_duration": ttl, "renewable": true}}),
        )
    }

    fn approle_login(&self, body: &Value, now: DateTime<Utc>) -> HttpResponse {
        if body["role_id"] != ROLE_ID || body["secret_id"] != SECRET_ID {
            return refused(400, "invalid role or secret ID");
        }
        self.grant(now)
    }

    /// What Vault's AWS auth checks before it asks STS: a signed `GetCallerIdentity`,
    /// and the server id header, signed, when one is configured.
    fn aws_login(&self, body: &Value, now: DateTime<Utc>) -> HttpResponse {
        use aws_smithy_types::base64;
        let decoded = |field: &str| {
            let text = body[field].as_str().unwrap_or_default();
            String::from_utf8(base64::decode(text).unwrap_or_default()).unwrap_or_default()
        };
        if decoded("iam_request_body") != crate::aws::sts::GET_CALLER_IDENTITY {
            return refused(400, "iam_request_body is not sts:GetCallerIdentity");
        }
        let headers: Value = serde_json::from_str(&decoded("iam_request_headers")).unwrap();
        let authorization = headers["authorization"][0].as_str().unwrap_or_default();
        if let Some(id) = self.server_id.borrow().as_ref() {
            let signed = authorization.contains("x-vault-aws-iam-server-id");
            if headers["x-vault-aws-iam-server-id"][0] != id.as_str() || !signed {
                return refused(400, "error validating X-Vault-AWS-IAM-Server-ID header");
            }
        }
        self.grant(now)
    }

    fn lookup(&self, token: &str, now: DateTime<Utc>) -> HttpResponse {
        let known = self.tokens.borrow()[token].clone();
        let ttl = known.expires.map_or(0, |e| (e - now).num_seconds());
        reply(
            200,
            json!({"data": {"ttl": ttl, "renewable": known.renewable}}),
        )
    }

    fn renew(&self, token: &str, now: DateTime<Utc>) -> HttpResponse {
        let mut tokens = self.tokens.borrow_mut();
        let known = tokens.get_mut(token).unwrap();
        if !known.renewable {
            return refused(400, "lease is not renewable");
        }
        let mut expires = now + chrono::Duration::seconds(known.ttl);
        if let Some(max) = known.max {
            expires = expires.min(max);
        }
        known.expires = Some(expires);
        let ttl = (expires - now).num_seconds();
        reply(
            200,
            json!({"auth": {"client_token": token, "lease_duration": ttl, "renewable": true}}),
        )
    }

    fn kv(&self, method: &str, rest: &str, body: Value) -> HttpResponse {
        let mut secrets = self.secrets.borrow_mut();
        if self.version.get() == 1 {
            return match method {
                "POST" => {
                    secrets.entry(rest.to_owned()).or_default().versions = vec![body];
                    HttpResponse::new(204, "")
                }
                _ => refused(405, "unsupported"),
            };
        }
        let (api, key) = rest.split_once('/').unwrap();
        let stored = secrets.get(key);
        let current = stored.map_or(0, |s| s.versions.len());
        match (method, api) {
            ("GET", "metadata") => match stored {
                None => refused(404, ""),
                Some(s) => reply(
                    200,
                    json!({"data": {"current_version": current, "custom_metadata": s.labels}}),
                ),
            },
            ("POST", "metadata") => {
                let entry = secrets.entry(key.to_owned()).or_default();
                entry.labels = body["custom_metadata"].clone();
                HttpResponse::new(204, "")
            }
            ("GET", "data") => match stored.and_then(|s| s.versions.last()) {
                None => refused(404, ""),
                Some(data) => reply(
                    200,
                    json!({"data": {"data": data, "metadata": {"version": current}}}),
                ),
            },
            ("POST", "data") => {
                if body["options"]["cas"].as_u64() != Some(current as u64) {
                    return refused(
                        400,
                        "check-and-set parameter did not match the current version",
                    );
                }
                let entry = secrets.entry(key.to_owned()).or_default();
                entry.versions.push(body["data"].clone());
                reply(200, json!({"data": {"version": current + 1}}))
            }
            _ => refused(405, "unsupported"),
        }
    }

    /// Another writer's set at `key`, expiring at `expiration`, written as a KV v2
    /// write on the current version would.
    pub fn write_as_another(&self, key: &str, expiration: DateTime<Utc>) {
        let mut secrets = self.secrets.borrow_mut();
        let entry = secrets.entry(key.to_owned()).or_default();
        let data = json!({"value": "another", "expiration": expiration.to_rfc3339()});
        entry.versions.push(data);
    }
}
