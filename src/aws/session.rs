//! The rotator's own signing session: the credentials its requests are signed with,
//! fetched when first needed and again only when they would expire within five minutes
//! (one fetch for all concurrent requests); why they could not be had, or that AWS
//! refused them; and every credential value held, so that error text can be scrubbed.
//!
//! Once the credentials have failed, every later request fails the same way without
//! asking again: a tick stops at that, charging no account, and the next tick starts a
//! new session.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::identity::{IdentityError, RotatorIdentity, SessionCredentials};
use super::signing::Signer;
use super::AwsError;
use crate::clock::chrono_duration;

/// Credentials this close to their expiration are replaced before the next request.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// What requests are signed with now.
pub struct Keys {
    pub signer: Signer,
    expiration: Option<DateTime<Utc>>,
}

impl Keys {
    fn fresh(&self, now: DateTime<Utc>) -> bool {
        self.expiration
            .is_none_or(|expiration| expiration - now > chrono_duration(REFRESH_BEFORE))
    }
}

/// The rotator's session for one tick.
pub struct Session {
    identity: RotatorIdentity,
    region: String,
    keys: RefCell<Option<Rc<Keys>>>,
    /// Held while new credentials are being fetched, so concurrent requests wait for
    /// one fetch instead of each making their own.
    refreshing: futures::lock::Mutex<()>,
    /// Why the credentials failed: the session asks no more.
    failure: RefCell<Option<IdentityError>>,
    /// Every credential value this session has held, scrubbed from error text.
    redact: RefCell<Vec<String>>,
}

impl Session {
    pub fn new(identity: RotatorIdentity, region: &str) -> Self {
        Self {
            identity,
            region: region.to_owned(),
            keys: RefCell::new(None),
            refreshing: futures::lock::Mutex::new(()),
            failure: RefCell::new(None),
            redact: RefCell::new(Vec::new()),
        }
    }

    pub fn identity(&self) -> &RotatorIdentity {
        &self.identity
    }

    /// The keys to sign with at `now`; `open` gets new credentials when the ones held
    /// are not good for five more minutes. A failed `open` fails the session.
    pub async fn keys<F>(
        &self,
        now: DateTime<Utc>,
        open: impl FnOnce() -> F,
    ) -> Result<Rc<Keys>, IdentityError>
    where
        F: Future<Output = Result<SessionCredentials, IdentityError>>,
    {
        if let Some(keys) = self.current(now)? {
            return Ok(keys);
        }
        let _only_one_fetch = self.refreshing.lock().await;
        if let Some(keys) = self.current(now)? {
            return Ok(keys);
        }
        let fetched = open()
            .await
            .inspect_err(|failure| *self.failure.borrow_mut() = Some(failure.clone()))?;
        let keys = Rc::new(self.keys_of(&fetched));
        *self.keys.borrow_mut() = Some(keys.clone());
        Ok(keys)
    }

    fn current(&self, now: DateTime<Utc>) -> Result<Option<Rc<Keys>>, IdentityError> {
        if let Some(failure) = self.failure() {
            return Err(failure);
        }
        Ok(self.keys.borrow().clone().filter(|keys| keys.fresh(now)))
    }

    /// Signing keys for `credentials`, whose values are scrubbed from then on.
    pub fn keys_of(&self, source: &SessionCredentials) -> Keys {
        let values = source.credentials.secret_values();
        self.redact
            .borrow_mut()
            .extend(values.into_iter().map(str::to_owned));
        Keys {
            signer: Signer::new(&source.credentials, &self.region),
            expiration: source.expiration,
        }
    }

    /// Why the credentials could not be had or were refused, once they were.
    pub fn failure(&self) -> Option<IdentityError> {
        self.failure.borrow().clone()
    }

    /// AWS refused the credentials (`error`, of kind `RotatorAuth`): nothing signed with
    /// them will work, so every later request fails with what this returns.
    pub fn refuse(&self, error: &AwsError) -> IdentityError {
        let refused = IdentityError {
            origin: self.describe(),
            reason: format!("AWS refused them: {error}"),
        };
        *self.failure.borrow_mut() = Some(refused.clone());
        refused
    }

    /// Where the credentials come from, and the role they assume if any.
    fn describe(&self) -> String {
        let source = self.identity.source.describe();
        match &self.identity.role_arn {
            Some(role) => format!("{source} as aws_role_arn {role}"),
            None => source,
        }
    }

    /// `error` with every credential value this session has held replaced.
    pub fn redacted(&self, error: AwsError) -> AwsError {
        self.scrubbing(|secrets| error.redacted(secrets))
    }

    /// Runs `scrub` with every credential value this session has held.
    fn scrubbing<R>(&self, scrub: impl FnOnce(&[&str]) -> R) -> R {
        let values = self.redact.borrow();
        let secrets: Vec<&str> = values.iter().map(String::as_str).collect();
        scrub(&secrets)
    }
}
