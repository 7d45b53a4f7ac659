//! Rotating one due account: `AssumeRole`, then every secret of the account's format
//! written concurrently into every sink ([`crate::sink`]), each request through its
//! service's [`WriteGate`]: its turn in the pace, then the lease's fence.
//! Each AWS call is retried in the standard mode within the tick's budget and every
//! failed attempt is reported as it happens; the account itself ends in one [`Outcome`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};

use crate::aws::sts::AssumeRole;
use crate::aws::{AssumedCredentials, AwsClient, AwsError, ErrorKind, Gate, Transport, Written};
use crate::clock::{Clock, Instant, TimeSource};
use crate::events::{Event, EventSink};
use crate::lease::{Lease, LeaseError};
use crate::pace::WritePacer;
use crate::retry::{with_retries, FailedAttempt};
use crate::settings::RotationRules;
use crate::sink::{secret_set, Sink, SinkWriter, WriteRequest};
use crate::state::Stage;
use crate::store::KeyValue;

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
        /// The sinks that did receive every secret.
        complete: Vec<Sink>,
    },
    /// Not finished, and not the account's fault: it is not charged.
    Stopped {
        why: Stop,
        /// Writes had begun, so some may have landed: the account stays marked for
        /// repair.
        writing_started: bool,
    },
}

impl Outcome {
    /// A failure that passes by itself (throttling, a timeout, a server error): worth
    /// another attempt later in the same tick.
    pub fn passes_by_itself(&self) -> bool {
        matches!(self, Outcome::Failed { error, .. } if error.is_retryable())
    }

    /// Stopped before this attempt wrote anything: it tells nothing of the account.
    pub fn stopped_before_writing(&self) -> bool {
        matches!(
            self,
            Outcome::Stopped {
                writing_started: false,
                ..
            }
        )
    }
}

/// Why an account was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The tick's budget ran out before it started.
    Budget,
    /// The rotator's own credentials could not be had or were refused.
    Rotator,
    /// The lease is no longer this tick's: nothing more is written.
    LeaseLost(LeaseError),
}

/// The gate of one service's writes: the request waits for its turn in the service's
/// pace, then the lease must still be this tick's, right before it is sent.
pub struct WriteGate<'a, K, S> {
    pub pacer: WritePacer<'a, S>,
    pub lease: &'a Lease<'a, K, S>,
}

impl<K: KeyValue, S: TimeSource> Gate for WriteGate<'_, K, S> {
    async fn admit(&self) -> Result<(), String> {
        self.pacer.wait_turn().await;
        self.lease.fence().await.map_err(|lost| lost.to_string())
    }
}

/// What every account of a tick runs with.
pub struct Executor<'a, T, S, K> {
    pub client: &'a AwsClient<'a, T, S>,
    pub clock: &'a Clock<S>,
    pub rules: &'a RotationRules,
    pub sink: &'a dyn EventSink,
    /// Every sink of `secret_sink`, each writing through its own gate: each service has
    /// its own quota.
    pub writers: &'a [&'a dyn SinkWriter],
    pub lease: &'a Lease<'a, K, S>,
    /// Accounts whose attempt failed half-way in a way that passes by itself, by team
    /// and account, for their second attempt to finish.
    pub unfinished: RefCell<HashMap<(String, String), Unfinished>>,
    /// No account starts, and no attempt is retried, past this.
    pub deadline: Instant,
}

/// What an account's first attempt in a tick left to do: the credentials it was writing
/// and the writes that landed. A second attempt finishes that set, so a secret already
/// written gets no second version within seconds.
pub struct Unfinished {
    credentials: AssumedCredentials,
    /// The sink and name of every secret written.
    landed: Vec<(Sink, String)>,
    created: usize,
}

impl<T: Transport, S: TimeSource, K: KeyValue> Executor<'_, T, S, K> {
    pub async fn run(&self, job: &Job) -> Outcome {
        let stopped = |why| Outcome::Stopped {
            why,
            writing_started: false,
        };
        if self.clock.instant() + self.rules.request_timeout > self.deadline {
            return stopped(Stop::Budget);
        }
        if let Some(lost) = self.lease.lost() {
            return stopped(Stop::LeaseLost(lost));
        }
        if self.client.credentials_failure().is_some() {
            return stopped(Stop::Rotator);
        }
        let key = (job.team.clone(), job.account.name.clone());
        let resumed = self.unfinished.borrow_mut().remove(&key);
        let unfinished = match resumed {
            Some(unfinished) => unfinished,
            None => match self.assume_role(job).await {
                Ok(credentials) => Unfinished {
                    credentials,
                    landed: Vec::new(),
                    created: 0,
                },
                Err(error) => {
                    return self.stopped(&error, false).unwrap_or(Outcome::Failed {
                        stage: Stage::AssumeRole,
                        error,
                        wrote_some: false,
                        complete: Vec::new(),
                    })
                }
            },
        };
        let Unfinished {
            credentials,
            landed,
            created,
        } = unfinished;
        match self.write_all(job, &credentials, &landed).await {
            Ok(secrets_created) => Outcome::Rotated {
                expiration: credentials.expiration,
                secrets_created: created + secrets_created,
            },
            Err(failure) => {
                if let Some(stopped) = self.stopped(&failure.error, true) {
                    return stopped;
                }
                let wrote_some = !failure.landed.is_empty();
                if failure.error.is_retryable() {
                    let unfinished = Unfinished {
                        credentials,
                        landed: failure.landed,
                        created: created + failure.created,
                    };
                    self.unfinished.borrow_mut().insert(key, unfinished);
                }
                Outcome::Failed {
                    stage: Stage::WriteSecrets,
                    error: failure.error,
                    wrote_some,
                    complete: failure.complete,
                }
            }
        }
    }

    /// The outcome of an error that is not the account's: the rotator's credentials
    /// failed (the tick stops), or a write was held back because the lease was lost.
    fn stopped(&self, error: &AwsError, writing_started: bool) -> Option<Outcome> {
        let why = match error.kind() {
            ErrorKind::RotatorAuth => Stop::Rotator,
            ErrorKind::Halted => Stop::LeaseLost(
                self.lease
                    .lost()
                    .unwrap_or_else(|| LeaseError::TakenOver("another tick".into())),
            ),
            _ => return None,
        };
        Some(Outcome::Stopped {
            why,
            writing_started,
        })
    }

    async fn assume_role(&self, job: &Job) -> Result<AssumedCredentials, AwsError> {
        let request = AssumeRole {
            role_arn: &job.account.role_arn,
            session_name: &job.team,
            duration_seconds: job.account.duration_seconds,
            external_id: job.account.external_id.as_deref(),
        };
        self.retried(job, "assume_role", None, || {
            self.client.assume_role(&request)
        })
        .await
    }

    /// `attempt`, retried in the standard mode within the tick's deadline; every failed
    /// attempt is reported as `operation` (on `secret`, when it writes one).
    async fn retried<R, Fut>(
        &self,
        job: &Job,
        operation: &'static str,
        secret: Option<&str>,
        attempt: impl FnMut() -> Fut,
    ) -> Result<R, AwsError>
    where
        Fut: Future<Output = Result<R, AwsError>>,
    {
        let report =
            |failed: FailedAttempt<'_>| self.attempt_failed(job, operation, secret, failed);
        with_retries(
            &self.rules.retry,
            self.clock,
            self.deadline,
            attempt,
            report,
        )
        .await
    }

    /// Writes every secret of the account's format into every sink, concurrently, but
    /// those `landed` before. On failure the error names every secret that was not
    /// written, so a partial write is visible in the log.
    async fn write_all(
        &self,
        job: &Job,
        credentials: &AssumedCredentials,
        landed: &[(Sink, String)],
    ) -> Result<usize, WriteFailure> {
        let set = secret_set(&job.path, self.rules.secret_format);
        let requests: Vec<WriteRequest<'_>> = set
            .iter()
            .map(|secret| WriteRequest {
                secret,
                credentials,
                team: &job.team,
                account: &job.account.name,
                written_before: job.written_before,
            })
            .collect();
        let targets: Vec<(&dyn SinkWriter, &WriteRequest<'_>)> = self
            .writers
            .iter()
            .flat_map(|writer| requests.iter().map(move |request| (*writer, request)))
            .filter(|(writer, request)| {
                let sink = writer.sink();
                !(landed.iter()).any(|(s, name)| *s == sink && *name == request.secret.name)
            })
            .collect();
        let writes = targets
            .iter()
            .map(|(writer, request)| self.write(job, *writer, request));
        let results = futures::future::join_all(writes).await;
        let mut created = 0;
        let mut not_written = Vec::new();
        let mut first_error = None;
        let mut landed = landed.to_vec();
        for ((writer, request), result) in targets.iter().zip(results) {
            if result.is_ok() {
                landed.push((writer.sink(), request.secret.name.clone()));
            }
            match result {
                Ok(Written::Created) => created += 1,
                Ok(Written::Updated) => {}
                Err(error) => {
                    not_written.push((writer.sink(), writer.describe(&request.secret.name)));
                    first_error.get_or_insert(error);
                }
            }
        }
        let Some(error) = first_error else {
            return Ok(created);
        };
        let names: Vec<&str> = not_written.iter().map(|(_, name)| name.as_str()).collect();
        let complete = self
            .writers
            .iter()
            .map(|writer| writer.sink())
            .filter(|sink| !not_written.iter().any(|(failed, _)| failed == sink))
            .collect();
        Err(WriteFailure {
            error: error.annotated(&format!(" [not written: {}]", names.join(", "))),
            landed,
            created,
            complete,
        })
    }

    /// One secret into one sink, retried in the standard mode; what the sink noted beside
    /// a landed value is reported as a failed attempt of its own.
    async fn write(
        &self,
        job: &Job,
        writer: &dyn SinkWriter,
        request: &WriteRequest<'_>,
    ) -> Result<Written, AwsError> {
        let values = request.values();
        let name = Some(request.secret.name.as_str());
        let attempt = || {
            let sent = writer.write(request);
            async { sent.await.map_err(|error| error.redacted(&values)) }
        };
        let landed = self
            .retried(job, writer.sink().operation(), name, attempt)
            .await?;
        if let Some(note) = landed.note {
            let failed = FailedAttempt {
                attempt: 1,
                error: &note.error.redacted(&values),
                retry_in: None,
            };
            self.attempt_failed(job, note.operation, name, failed);
        }
        Ok(landed.written)
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

/// An account's writes that did not all land.
struct WriteFailure {
    error: AwsError,
    /// Every secret of the set written so far, in this attempt or before.
    landed: Vec<(Sink, String)>,
    created: usize,
    complete: Vec<Sink>,
}
