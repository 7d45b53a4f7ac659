//! Rotating one due account: `AssumeRole`, the lease's fence, then every secret of the
//! account's format written concurrently. Each AWS call is retried in the standard mode
//! within the tick's budget and every failed attempt is reported as it happens; the
//! account itself ends in one [`Outcome`].

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::aws::secrets::SecretWrite;
use crate::aws::sts::AssumeRole;
use crate::aws::{AssumedCredentials, AwsClient, AwsError, Transport, Written};
use crate::clock::{chrono_duration, Clock};
use crate::events::{Event, EventSink};
use crate::lease::{Lease, LeaseError};
use crate::pace::WritePacer;
use crate::retry::{with_retries, FailedAttempt};
use crate::settings::RotationRules;
use crate::state::Stage;
use crate::store::KeyValue;
use crate::template::{SecretFormat, SecretPath};

use super::plan::Job;

/// How one account's rotation ended.
#[derive(Debug)]
pub enum Outcome {
    Rotated {
        expiration: DateTime<Utc>,
        secrets_created: usize,
    },
    Failed {
        stage: Stage,
        error: AwsError,
        /// Some of the account's secrets were written, but not all.
        wrote_some: bool,
    },
    /// Not started: the tick's budget ran out first.
    Deferred,
    /// Not written: the lease could not be confirmed.
    LeaseLost(LeaseError),
}

/// What every account of a tick runs with.
pub struct Executor<'a, T, C, K> {
    pub client: &'a AwsClient<T>,
    pub clock: &'a C,
    pub rules: &'a RotationRules,
    pub sink: &'a dyn EventSink,
    pub pacer: &'a WritePacer<'a, C>,
    pub lease: &'a Lease<'a, K, C>,
    /// No account starts, and no attempt is retried, past this.
    pub deadline: DateTime<Utc>,
}

impl<T: Transport, C: Clock, K: KeyValue> Executor<'_, T, C, K> {
    pub async fn run(&self, job: &Job) -> Outcome {
        if self.clock.now() + chrono_duration(self.rules.request_timeout) > self.deadline {
            return Outcome::Deferred;
        }
        if self.lease.is_lost() {
            return Outcome::LeaseLost(LeaseError::TakenOver("another tick".into()));
        }
        let credentials = match self.assume_role(job).await {
            Ok(credentials) => credentials,
            Err(error) => {
                return Outcome::Failed {
                    stage: Stage::AssumeRole,
                    error,
                    wrote_some: false,
                }
            }
        };
        if let Err(lost) = self.lease.confirm().await {
            return Outcome::LeaseLost(lost);
        }
        match self.write_all(job, &credentials).await {
            Ok(secrets_created) => Outcome::Rotated {
                expiration: credentials.expiration,
                secrets_created,
            },
            Err((error, wrote_some)) => Outcome::Failed {
                stage: Stage::WriteSecrets,
                error,
                wrote_some,
            },
        }
    }

    async fn assume_role(&self, job: &Job) -> Result<AssumedCredentials, AwsError> {
        let request = AssumeRole {
            role_arn: &job.account.role_arn,
            session_name: &job.team,
            duration_seconds: job.account.duration_seconds,
            external_id: job.account.external_id.as_deref(),
        };
        with_retries(
            &self.rules.retry,
            self.clock,
            self.deadline,
            || self.client.assume_role(&request),
            |failed| self.attempt_failed(job, "assume_role", None, failed),
        )
        .await
    }

    /// Writes every secret of the account's format concurrently. On failure the error
    /// names every secret that was not written, so a partial write is visible in the log;
    /// with it comes whether any was written.
    async fn write_all(
        &self,
        job: &Job,
        credentials: &AssumedCredentials,
    ) -> Result<usize, (AwsError, bool)> {
        let targets = secret_targets(&job.path, self.rules.secret_format, credentials);
        let values = credentials.secret_values();
        let requests: Vec<SecretWrite> = targets
            .iter()
            .map(|(name, value)| {
                SecretWrite::new(
                    name,
                    value.expose_secret(),
                    credentials,
                    &job.team,
                    &job.account.name,
                )
            })
            .collect();
        let writes = requests.iter().map(|write| {
            with_retries(
                &self.rules.retry,
                self.clock,
                self.deadline,
                move || {
                    let sent = self.client.write_secret(self.pacer, write);
                    async move { sent.await.map_err(|error| error.redacted(&values)) }
                },
                |failed| self.attempt_failed(job, "write_secret", Some(write.name), failed),
            )
        });
        let results = futures::future::join_all(writes).await;
        let mut created = 0;
        let mut not_written = Vec::new();
        let mut first_error = None;
        for ((name, _), result) in targets.iter().zip(results) {
            match result {
                Ok(Written::Created) => created += 1,
                Ok(Written::Updated) => {}
                Err(error) => {
                    not_written.push(name.as_str());
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            None => Ok(created),
            Some(error) => {
                let wrote_some = not_written.len() < targets.len();
                let note = format!(" [not written: {}]", not_written.join(", "));
                Err((error.annotated(&note), wrote_some))
            }
        }
    }

    fn attempt_failed(
        &self,
        job: &Job,
        operation: &'static str,
        secret: Option<&str>,
        failed: FailedAttempt<'_>,
    ) {
        self.sink.emit(&Event::AttemptFailed {
            team: job.team.clone(),
            account: job.account.name.clone(),
            operation,
            secret: secret.map(str::to_owned),
            attempt: failed.attempt,
            code: failed.error.code().map(str::to_owned),
            retry_in_ms: failed.retry_in.map(|wait| wait.as_millis() as u64),
            error: failed.error.to_string(),
        });
    }
}

/// The secrets of one account in the chosen format, with their values.
fn secret_targets(
    path: &SecretPath,
    format: SecretFormat,
    credentials: &AssumedCredentials,
) -> Vec<(String, SecretString)> {
    let mut targets = Vec::new();
    if format.split() {
        let [access, secret, token] = credentials.secret_values();
        for (name, value) in path.secret_names().into_iter().zip([access, secret, token]) {
            targets.push((name, SecretString::from(value.to_owned())));
        }
    }
    if format.json() {
        targets.push((path.as_str().to_owned(), credentials.json_document()));
    }
    targets
}
