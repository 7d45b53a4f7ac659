//! The rotator's view of Vault for one tick: its token, the KV engine's layout, and every
//! request with the token and namespace.
//!
//! The token is had when the tick first needs Vault (a login; with `vault_token`, the
//! operator's token, looked up and renewed), shared by every write, renewed or replaced
//! by a new login once two thirds of its time are spent, replaced once when Vault no
//! longer knows it (a 403 that `lookup-self` confirms: Vault restarted from a backup, the
//! token revoked), and revoked when the tick ends (the operator's never). A login that
//! fails for good, or three times, fails every later request of the tick at once: a
//! Vault that is down costs its accounts, not the tick's budget.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::answer::{self, field, PERMISSION_DENIED};
use super::auth::{self, Grant};
use super::kv::{KvLayout, VaultRequest};
use super::{KvKey, KvVersion, VaultAuth, VaultSettings};
use crate::aws::{AwsClient, AwsError, ErrorKind, Gate, HttpResponse, Transport};
use crate::clock::{Clock, Instant, TimeSource};

/// The header a Vault configured with `iam_server_id_header_value` wants signed.
pub const SERVER_ID_HEADER: &str = "x-vault-aws-iam-server-id";

/// Failed logins a tick tries before it stops asking, as the standard mode's attempts.
const MAX_LOGINS: u32 = 3;

/// A token and how long it is good for.
struct Token {
    value: SecretString,
    renewable: bool,
    granted: Instant,
    /// `None`: it does not expire.
    ttl: Option<Duration>,
    /// Had by this tick's login, so revoked at its end; the operator's `vault_token` is
    /// not.
    owned: bool,
}

impl Token {
    /// Whether less than two thirds of its time are spent.
    fn fresh(&self, now: Instant) -> bool {
        self.ttl
            .is_none_or(|ttl| now.since(self.granted) < ttl * 2 / 3)
    }
}

/// Vault as one tick sees it.
pub struct VaultClient<'c, T, S> {
    transport: T,
    clock: &'c Clock<S>,
    /// Signs the AWS IAM login's `sts:GetCallerIdentity` as the rotator.
    aws: &'c AwsClient<'c, T, S>,
    settings: VaultSettings,
    token: RefCell<Option<Rc<Token>>>,
    /// Held while a token is had, so that concurrent writes wait for one login.
    refreshing: futures::lock::Mutex<()>,
    /// Why logging in failed, once the tick stopped trying.
    failure: RefCell<Option<AwsError>>,
    failed_logins: Cell<u32>,
    layout: RefCell<Option<Rc<KvLayout>>>,
    detecting: futures::lock::Mutex<()>,
    /// Every token and secret this client has held, scrubbed from error text.
    secrets: RefCell<Vec<String>>,
}

impl<'c, T: Transport, S: TimeSource> VaultClient<'c, T, S> {
    pub fn new(
        transport: T,
        clock: &'c Clock<S>,
        aws: &'c AwsClient<'c, T, S>,
        settings: VaultSettings,
    ) -> Self {
        let secrets = match &settings.auth {
            VaultAuth::AppRole { secret_id, .. } => vec![secret_id.expose_secret().to_owned()],
            VaultAuth::Token(token) => vec![token.expose_secret().to_owned()],
            VaultAuth::Aws { .. } => Vec::new(),
        };
        Self {
            transport,
            clock,
            aws,
            settings,
            token: RefCell::new(None),
            refreshing: futures::lock::Mutex::new(()),
            failure: RefCell::new(None),
            failed_logins: Cell::new(0),
            layout: RefCell::new(None),
            detecting: futures::lock::Mutex::new(()),
            secrets: RefCell::new(secrets),
        }
    }

    /// `vault_writes_per_second`.
    pub fn writes_per_second(&self) -> u32 {
        self.settings.writes_per_second
    }

    /// A key as a log line names it: `concourse/alpha/dev-access-key (vault)`.
    pub fn describe(&self, key: &KvKey) -> String {
        format!("{}/{} (vault)", self.settings.mount, key.as_str())
    }

    /// Sends one request with the tick's token; a write first waits at `gate` (its pace,
    /// then the lease), and only then takes the token, which a long wait in the pace could
    /// otherwise have let expire. A 403 for a token Vault no longer knows is sent once
    /// more with a new one.
    pub async fn send(
        &self,
        gate: &impl Gate,
        request: VaultRequest,
    ) -> Result<HttpResponse, AwsError> {
        let mut replaced = false;
        loop {
            if request.is_write() {
                gate.admit().await.map_err(AwsError::Halted)?;
            }
            let token = self.token().await?;
            match self.exchange(Some(&token.value), &request).await {
                Err(error) if denied(&error) && !replaced && self.forgotten(&token).await => {
                    replaced = true;
                    self.token
                        .borrow_mut()
                        .take_if(|held| Rc::ptr_eq(held, &token));
                }
                other => return other,
            }
        }
    }

    /// Where keys are written: `vault_kv_version`, or with `auto` what Vault says of
    /// `vault_kv_mount` (its mount and version), asked once per tick.
    pub async fn layout(&self) -> Result<Rc<KvLayout>, AwsError> {
        if let Some(layout) = self.layout.borrow().clone() {
            return Ok(layout);
        }
        let _only_one = self.detecting.lock().await;
        if let Some(layout) = self.layout.borrow().clone() {
            return Ok(layout);
        }
        let mount = &self.settings.mount;
        let layout = Rc::new(match self.settings.kv_version {
            KvVersion::Auto => self.detect().await?,
            version => KvLayout {
                mount: mount.clone(),
                below: String::new(),
                version,
            },
        });
        *self.layout.borrow_mut() = Some(layout.clone());
        Ok(layout)
    }

    /// Gives back the token this tick logged in for (`revoke-self`); the operator's
    /// `vault_token` is kept. A token that cannot be revoked ends at its TTL.
    pub async fn close(&self) {
        let token = self.token.borrow_mut().take();
        if let Some(token) = token.filter(|token| token.owned) {
            let revoke = VaultRequest::post("auth/token/revoke-self".into(), json!({}));
            let _ = self.exchange(Some(&token.value), &revoke).await;
        }
    }

    /// What Vault says of `vault_kv_mount`, as Concourse asks it: the engine's mount and
    /// version; an older Vault without the endpoint has KV v1.
    async fn detect(&self) -> Result<KvLayout, AwsError> {
        let mount = &self.settings.mount;
        let request = VaultRequest::get(format!("sys/internal/ui/mounts/{mount}"));
        let token = self.token().await?;
        let answer = match self.exchange(Some(&token.value), &request).await {
            Ok(answer) => answer::object(&answer, "Vault's mount")?,
            Err(error) if error.kind() == ErrorKind::NotFound => answer::Object::new(),
            Err(error) => return Err(error),
        };
        let text = |path: &[&str]| field(&answer, path).and_then(|value| value.as_str());
        let found = text(&["data", "path"])
            .map(|path| path.trim_end_matches('/'))
            .filter(|path| !path.is_empty() && mount.starts_with(path))
            .unwrap_or(mount);
        let version = match text(&["data", "options", "version"]) {
            Some("2") => KvVersion::V2,
            _ => KvVersion::V1,
        };
        Ok(KvLayout {
            mount: found.to_owned(),
            below: mount[found.len()..].trim_start_matches('/').to_owned(),
            version,
        })
    }

    /// The tick's token: the one held while it is fresh, else renewed, else a new login.
    async fn token(&self) -> Result<Rc<Token>, AwsError> {
        if let Some(token) = self.current()? {
            return Ok(token);
        }
        let _only_one = self.refreshing.lock().await;
        if let Some(token) = self.current()? {
            return Ok(token);
        }
        let held = self.token.borrow_mut().take();
        let renewed = match held.filter(|token| token.renewable) {
            Some(token) => self.renew(&token).await.ok().filter(|renewed| {
                // Less than half of what it had: its maximum TTL is near.
                renewed
                    .ttl
                    .is_none_or(|ttl| token.ttl.is_some_and(|had| ttl * 2 >= had))
            }),
            None => None,
        };
        let token = match renewed {
            Some(token) => token,
            None => self
                .login()
                .await
                .map_err(|error| self.login_failed(error))?,
        };
        let token = Rc::new(token);
        *self.token.borrow_mut() = Some(token.clone());
        Ok(token)
    }

    fn current(&self) -> Result<Option<Rc<Token>>, AwsError> {
        if let Some(failure) = self.failure.borrow().clone() {
            return Err(failure);
        }
        let now = self.clock.instant();
        Ok(self.token.borrow().clone().filter(|token| token.fresh(now)))
    }

    /// Counts a failed login; one that cannot pass, or the third, is the tick's answer to
    /// every later request.
    fn login_failed(&self, error: AwsError) -> AwsError {
        let failed = self.failed_logins.get() + 1;
        self.failed_logins.set(failed);
        if !error.is_retryable() || failed >= MAX_LOGINS {
            *self.failure.borrow_mut() = Some(error.clone());
        }
        error
    }

    /// A new token by `vault_auth`'s method.
    async fn login(&self) -> Result<Token, AwsError> {
        let (path, body) = match &self.settings.auth {
            VaultAuth::Token(token) => return self.adopt(token).await.map_err(logging_in),
            VaultAuth::AppRole { role_id, secret_id } => (
                "auth/approle/login".to_owned(),
                auth::approle(role_id, secret_id.expose_secret()),
            ),
            VaultAuth::Aws {
                mount,
                role,
                server_id,
            } => {
                let headers: Vec<(&str, &str)> = (server_id.iter())
                    .map(|id| (SERVER_ID_HEADER, id.as_str()))
                    .collect();
                let signed = self.aws.signed_caller_identity(&headers).await?;
                (
                    format!("auth/{mount}/login"),
                    auth::aws(&signed, role.as_deref()),
                )
            }
        };
        let answer = self
            .exchange(None, &VaultRequest::post(path, body))
            .await
            .map_err(|error| logging_in(self.aws.redacted(error)))?;
        self.granted(&answer, true)
    }

    /// The operator's token, looked up (is it valid, does it end) and renewed when it
    /// can be.
    async fn adopt(&self, token: &SecretString) -> Result<Token, AwsError> {
        let lookup = VaultRequest::get("auth/token/lookup-self".into());
        let answer = self.exchange(Some(token), &lookup).await?;
        let grant = Grant::from_lookup(&answer::object(&answer, "Vault's token lookup")?);
        let adopted = Token {
            value: token.clone(),
            renewable: grant.renewable,
            granted: self.clock.instant(),
            ttl: grant.ttl,
            owned: false,
        };
        match adopted.renewable && adopted.ttl.is_some() {
            true => self.renew(&adopted).await,
            false => Ok(adopted),
        }
    }

    async fn renew(&self, token: &Token) -> Result<Token, AwsError> {
        let renew = VaultRequest::post("auth/token/renew-self".into(), json!({}));
        let answer = self.exchange(Some(&token.value), &renew).await?;
        self.granted(&answer, token.owned)
    }

    /// The token a login or renewal answered with, scrubbed from every later error.
    fn granted(&self, answer: &HttpResponse, owned: bool) -> Result<Token, AwsError> {
        let (value, grant) = Grant::from_auth(&answer::object(answer, "Vault's token answer")?)?;
        (self.secrets.borrow_mut()).push(value.expose_secret().to_owned());
        Ok(Token {
            value,
            renewable: grant.renewable,
            granted: self.clock.instant(),
            ttl: grant.ttl,
            owned,
        })
    }

    /// Whether Vault no longer knows `token` (its own lookup is refused too), as opposed
    /// to a policy that refuses one request.
    async fn forgotten(&self, token: &Token) -> bool {
        let lookup = VaultRequest::get("auth/token/lookup-self".into());
        let looked_up = self.exchange(Some(&token.value), &lookup).await;
        matches!(looked_up, Err(error) if denied(&error))
    }

    /// One request; an answer of 400 or more is a classified, scrubbed error.
    async fn exchange(
        &self,
        token: Option<&SecretString>,
        request: &VaultRequest,
    ) -> Result<HttpResponse, AwsError> {
        let body = (request.body.as_ref())
            .map(|body| body.to_string().into_bytes())
            .unwrap_or_default();
        let url = format!("{}/v1/{}", self.settings.url, request.path);
        let mut builder = http::Request::builder()
            .method(request.method.clone())
            .uri(url)
            .header(http::header::CONTENT_LENGTH, body.len());
        if request.body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = token {
            builder = builder.header("x-vault-token", token.expose_secret());
        }
        if let Some(namespace) = &self.settings.namespace {
            builder = builder.header("x-vault-namespace", namespace);
        }
        let sent = builder
            .body(body)
            .map_err(|error| AwsError::Request(format!("a Vault request: {error}")))?;
        let answer = self.transport.send(sent).await;
        let answer = answer.map_err(|error| self.redacted(AwsError::Transport(error)))?;
        match answer.status {
            400.. => Err(self.redacted(answer::error(&answer, &request.describe()))),
            _ => Ok(answer),
        }
    }

    fn redacted(&self, error: AwsError) -> AwsError {
        let secrets = self.secrets.borrow();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        error.redacted(&secrets)
    }
}

fn denied(error: &AwsError) -> bool {
    error.code() == Some(PERMISSION_DENIED)
}

/// A login's error says it was one.
fn logging_in(error: AwsError) -> AwsError {
    error.annotated(" [logging in to Vault]")
}

#[cfg(test)]
mod tests;
