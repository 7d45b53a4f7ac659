//! One tick, top to bottom: load every team and its state, plan what is due, and when
//! something is, take the lease, execute the jobs within the budget and the concurrency
//! bound, and record the outcomes in batched commits.
//!
//! A tick with nothing due takes no lease and writes one record, its own (for the
//! metrics' "last tick finished"): most ticks only read.

pub mod execute;
pub mod load;
pub mod plan;
pub mod record;

use std::time::Duration;

use anyhow::Context;
use futures::stream::{self, StreamExt};

use crate::aws::{AwsClient, Transport};
use crate::clock::{chrono_duration, Clock, Instant, TimeSource};
use crate::deployment::{LastTick, LAST_TICK_KEY};
use crate::events::{Event, EventSink};
use crate::lease::{Acquired, Lease, LeaseError, LeasePolicy};
use crate::pace::WritePacer;
use crate::retry::with_retries;
use crate::settings::RotationRules;
use crate::sink::parameter_store::ParameterStoreWriter;
use crate::sink::secrets_manager::SecretsManagerWriter;
use crate::sink::vault::VaultWriter;
use crate::sink::{Sink, SinkWriter};
use crate::store::{KeyValue, StoreError};
use crate::vault::VaultClient;

use execute::{Executor, Outcome, Stop, WriteGate};
use load::{load, load_again, Loaded};
use plan::{has_work, plan, Job, Plan, Scope};
use record::Record;

/// How often a long tick stores the outcomes it has so far, so that a host stopped late
/// in a long tick repairs little.
const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// How far this node's own clock may be from AWS's before it finds out: AWS refuses
/// requests signed further off (five minutes). A first look at the plan this much
/// ahead of the node's clock tells whether anything can be due; only then is AWS asked
/// what time it really is.
const SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// The tick's result: what the cron export turns into `Ok` or an error summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickSummary {
    pub accounts: usize,
    pub rotated: usize,
    pub skipped: usize,
    pub deferred: usize,
    /// `team/account (reason)` for each failed account.
    pub failed: Vec<String>,
    /// The keys of team documents that could not be used.
    pub invalid_teams: Vec<String>,
    /// Another tick held the lease.
    pub lease_busy: bool,
    /// Why the lease was lost during the tick: what it did not finish, another holder
    /// will.
    pub lease_lost: Option<String>,
}

impl TickSummary {
    /// `Ok` when nothing failed, else one line that counts and names the failures.
    pub fn into_result(self) -> Result<(), String> {
        let mut parts = Vec::new();
        if !self.failed.is_empty() {
            parts.push(format!(
                "{} of {} accounts failed: {}",
                self.failed.len(),
                self.accounts,
                self.failed.join(", ")
            ));
        }
        if !self.invalid_teams.is_empty() {
            parts.push(format!(
                "{} invalid team documents: {}",
                self.invalid_teams.len(),
                self.invalid_teams.join(", ")
            ));
        }
        if let Some(lost) = self.lease_lost {
            parts.push(format!(
                "the lease was lost ({lost}); {} accounts were left to its new holder",
                self.deferred
            ));
        }
        if parts.is_empty() {
            Ok(())
        } else {
            Err(parts.join("; "))
        }
    }

    fn count(&mut self, event: &Event) {
        match event {
            Event::AccountRotated { .. } => self.rotated += 1,
            Event::AccountSkipped { .. } => self.skipped += 1,
            Event::AccountDeferred { .. } => self.deferred += 1,
            Event::AccountFailed {
                team,
                account,
                code,
                stage,
                ..
            } => {
                let reason = code.clone().unwrap_or_else(|| format!("{stage:?}"));
                self.failed.push(format!("{team}/{account} ({reason})"));
            }
            _ => {}
        }
    }
}

/// Everything a tick runs on.
pub struct Engine<'a, T, S, K> {
    pub client: &'a AwsClient<'a, T, S>,
    pub clock: &'a Clock<S>,
    pub store: &'a K,
    /// A trait object, so that the cron tick and the admin API (which also collects the
    /// events) share one copy of the engine in the component.
    pub sink: &'a dyn EventSink,
    pub rules: &'a RotationRules,
    /// This tick's id, unique among ticks: the lease's holder, and the `tick` of its log
    /// lines.
    pub tick: &'a str,
    /// Vault's client, when `secret_sink` lists `vault`.
    pub vault: Option<&'a VaultClient<'a, T, S>>,
}

/// What a tick's accounts have come to so far, and when it was last stored.
struct Progress<'a> {
    record: &'a mut Record,
    summary: &'a mut TickSummary,
    flushed: Instant,
}

impl<T: Transport, S: TimeSource, K: KeyValue> Engine<'_, T, S, K> {
    /// Runs one tick, unless another holds the lease.
    pub async fn run_tick(&self) -> anyhow::Result<TickSummary> {
        self.run(Scope::All).await
    }

    /// Rotates one team now, through the same steps as a tick (lease included). Accounts
    /// written within the last ten minutes are still skipped.
    pub async fn rotate_team(&self, team: &str) -> anyhow::Result<TickSummary> {
        self.run(Scope::Team(team)).await
    }

    async fn run(&self, scope: Scope<'_>) -> anyhow::Result<TickSummary> {
        if self.rules.sink.contains(Sink::Vault) && self.vault.is_none() {
            anyhow::bail!("secret_sink lists vault, but no Vault client was set up");
        }
        let started = self.clock.instant();
        let loaded = load(self.store).context("reading teams and state")?;
        if let Some(idle) = self.idle(&loaded, scope, started).await? {
            return Ok(idle);
        }
        let policy = LeasePolicy::for_requests(self.rules.request_timeout);
        let lease = match Lease::acquire(self.store, self.clock, self.tick, policy).await? {
            Acquired::Held(lease) => lease,
            Acquired::Busy { holder, until } => {
                self.sink.emit(&Event::LeaseBusy { holder, until });
                return Ok(TickSummary {
                    lease_busy: true,
                    ..TickSummary::default()
                });
            }
        };
        let result = self.rotate(scope, started, &lease, loaded).await;
        // The tick's own Vault token (never the operator's) is given back.
        if let Some(vault) = self.vault {
            vault.close().await;
        }
        lease.release().context("releasing the lease")?;
        // Said once the lease is given back: a host stopped right after this line leaves
        // no lease to wait for.
        let mut summary = result?;
        self.finish(&mut summary, started);
        Ok(summary)
    }

    /// The finished summary of a tick with nothing to write, reported here; `None` when
    /// there is work. Anything that may be due gets the rotator's credentials and AWS's
    /// time first (a failure to get them is the tick's, before any lease), and the plan
    /// is made again in AWS time: nodes agree on what is due whatever their own clocks
    /// say.
    async fn idle(
        &self,
        loaded: &Loaded,
        scope: Scope<'_>,
        started: Instant,
    ) -> anyhow::Result<Option<TickSummary>> {
        let maybe = plan(loaded, self.rules, self.clock.now() + SKEW_ALLOWANCE, scope);
        let planned = match maybe.has_work() {
            false => maybe,
            true => {
                self.client.prepare().await?;
                self.learn_time(started).await?;
                let now = self.clock.now();
                if has_work(loaded, self.rules, now, scope) {
                    return Ok(None);
                }
                plan(loaded, self.rules, now, scope)
            }
        };
        let mut summary = self.report_plan(planned);
        if scope == Scope::All {
            let record = self.last_tick(&summary, started).to_bytes();
            self.store
                .set(LAST_TICK_KEY, &record)
                .context("storing the tick's record")?;
        }
        self.finish(&mut summary, started);
        Ok(Some(summary))
    }

    /// AWS's time, from `sts:GetCallerIdentity` unless an answer already gave it,
    /// retried in the standard mode.
    async fn learn_time(&self, started: Instant) -> anyhow::Result<()> {
        let deadline = started + self.rules.tick_budget;
        let learned = with_retries(
            &self.rules.retry,
            self.clock,
            deadline,
            || self.client.learn_time(),
            |_| {},
        )
        .await;
        if let Some(failure) = self.client.credentials_failure() {
            return Err(failure.into());
        }
        learned.context("asking STS for AWS's time (sts:GetCallerIdentity)")
    }

    /// The tick proper, under the lease: everything is read again, since another tick may
    /// have finished between the `first` look and the lease (parsed again only if so).
    async fn rotate(
        &self,
        scope: Scope<'_>,
        started: Instant,
        lease: &Lease<'_, K, S>,
        first: Loaded,
    ) -> anyhow::Result<TickSummary> {
        let loaded = load_again(self.store, first).context("reading teams and state")?;
        let mut planned = plan(&loaded, self.rules, self.clock.now(), scope);
        let (mut record, batch) = Record::begin(loaded.states, loaded.counters, &planned);
        let jobs = std::mem::take(&mut planned.jobs);
        let mut summary = self.report_plan(planned);
        // The marks go first, under the lease: a tick stopped from here on leaves every
        // due account marked for repair.
        match lease.confirm().await {
            Ok(()) => {
                self.store
                    .set_many(&batch.writes)
                    .context("marking due accounts")?;
                if !batch.deletes.is_empty() {
                    self.store
                        .delete_many(&batch.deletes)
                        .context("removing the state of removed teams")?;
                }
            }
            Err(lost) => self.lost(&mut summary, &lost),
        }
        let deadline = started + self.rules.tick_budget;
        self.execute(jobs, deadline, lease, &mut record, &mut summary)
            .await;
        if scope == Scope::All {
            record.finish(self.last_tick(&summary, started));
        }
        match self.flush(lease, &mut record).await {
            Err(Unstored::Lost(lost)) => self.lost(&mut summary, &lost),
            Err(Unstored::Store(error)) => {
                return Err(error).context("storing the rotation state");
            }
            Ok(()) => {}
        }
        // Credentials that could not be had or were refused during the tick stopped it:
        // the tick's failure, naming the source, not the accounts'.
        if let Some(failure) = self.client.credentials_failure() {
            return Err(failure.into());
        }
        Ok(summary)
    }

    /// Runs the jobs, most urgent first, `max_concurrency` at a time, recording each
    /// outcome as it comes and storing them every [`FLUSH_INTERVAL`]. An account whose
    /// attempt failed in a way that passes by itself (throttling, a timeout, a 5xx, after
    /// the standard mode's retries) is tried once more after the others, within the
    /// budget: waiting for the next tick would cost it a whole schedule period of its
    /// credentials' margin.
    async fn execute(
        &self,
        jobs: Vec<Job>,
        deadline: Instant,
        lease: &Lease<'_, K, S>,
        record: &mut Record,
        summary: &mut TickSummary,
    ) {
        let gate = |per_second| WriteGate {
            pacer: WritePacer::new(self.clock, per_second),
            lease,
        };
        let secrets_manager = SecretsManagerWriter {
            client: self.client,
            gate: gate(self.rules.writes_per_second),
        };
        let parameter_store = ParameterStoreWriter {
            client: self.client,
            gate: gate(self.rules.ssm_writes_per_second),
            key_id: self.rules.ssm_key_id.as_deref(),
        };
        let vault = self.vault.map(|client| VaultWriter {
            client,
            gate: gate(client.writes_per_second()),
        });
        let writers: Vec<&dyn SinkWriter> = (self.rules.sink.sinks().iter())
            .filter_map(|sink| match sink {
                Sink::SecretsManager => Some(&secrets_manager as &dyn SinkWriter),
                Sink::ParameterStore => Some(&parameter_store as &dyn SinkWriter),
                Sink::Vault => vault.as_ref().map(|vault| vault as &dyn SinkWriter),
            })
            .collect();
        let executor = Executor {
            client: self.client,
            clock: self.clock,
            rules: self.rules,
            sink: self.sink,
            writers: &writers,
            lease,
            unfinished: Default::default(),
            deadline,
        };
        let mut progress = Progress {
            record,
            summary,
            flushed: self.clock.instant(),
        };
        let first = jobs.into_iter().map(|job| (job, None)).collect();
        let again = self.round(&executor, first, &mut progress).await;
        let again = again.into_iter().map(|(job, failed)| (job, Some(failed)));
        self.round(&executor, again.collect(), &mut progress).await;
    }

    /// One pass over `jobs`, each with its first attempt's failure when this is its
    /// second. Returns the jobs of a first pass whose failure passes by itself, unrecorded,
    /// for a second; a second attempt stopped before it wrote anything (the budget, the
    /// lease, the rotator's credentials) is recorded as the first failure, which says what
    /// was written.
    async fn round(
        &self,
        executor: &Executor<'_, T, S, K>,
        jobs: Vec<(Job, Option<Outcome>)>,
        progress: &mut Progress<'_>,
    ) -> Vec<(Job, Outcome)> {
        let mut outcomes = stream::iter(jobs)
            .map(|(job, first)| async move {
                let outcome = executor.run(&job).await;
                (job, first, outcome)
            })
            .buffer_unordered(self.rules.max_concurrency.max(1));
        let mut again = Vec::new();
        while let Some((job, first, outcome)) = outcomes.next().await {
            if let Outcome::Stopped {
                why: Stop::LeaseLost(lost),
                ..
            } = &outcome
            {
                self.lost(progress.summary, lost);
            }
            let outcome = match first {
                None if outcome.passes_by_itself() => {
                    again.push((job, outcome));
                    continue;
                }
                Some(first) if outcome.stopped_before_writing() => first,
                _ => outcome,
            };
            self.record(&job, outcome, executor.lease, progress).await;
        }
        again
    }

    /// Records one account's outcome, and stores what changed every [`FLUSH_INTERVAL`].
    async fn record(
        &self,
        job: &Job,
        outcome: Outcome,
        lease: &Lease<'_, K, S>,
        progress: &mut Progress<'_>,
    ) {
        let fraction = self.clock.random_fraction();
        let event = (progress.record).apply(job, outcome, self.clock.now(), self.rules, fraction);
        self.report(progress.summary, event);
        // A failed flush keeps the changes for the next one; the last one reports.
        if self.clock.instant().since(progress.flushed) >= FLUSH_INTERVAL {
            let _ = self.flush(lease, progress.record).await;
            progress.flushed = self.clock.instant();
        }
    }

    /// Stores the changed state documents in one batch, if the lease is still this
    /// tick's; otherwise they are dropped, and the accounts stay marked for repair.
    async fn flush(&self, lease: &Lease<'_, K, S>, record: &mut Record) -> Result<(), Unstored> {
        record.count_requests(self.client.take_request_counts());
        if !record.has_changes() {
            return Ok(());
        }
        lease.confirm().await.map_err(Unstored::Lost)?;
        self.store
            .set_many(&record.changed())
            .map_err(Unstored::Store)?;
        record.stored();
        Ok(())
    }

    /// Notes (once) that the lease was lost: from here on nothing more is written.
    fn lost(&self, summary: &mut TickSummary, lost: &LeaseError) {
        if summary.lease_lost.is_none() {
            summary.lease_lost = Some(lost.to_string());
            self.sink.emit(&Event::LeaseLost {
                reason: lost.to_string(),
            });
        }
    }

    /// Reports what the plan decided before any AWS call.
    fn report_plan(&self, planned: Plan) -> TickSummary {
        self.sink.emit(&Event::TickStarted {
            teams: planned.teams,
        });
        let mut summary = TickSummary {
            accounts: planned.accounts,
            invalid_teams: planned.invalid_teams,
            ..TickSummary::default()
        };
        for event in planned.events {
            self.report(&mut summary, event);
        }
        summary
    }

    fn report(&self, summary: &mut TickSummary, event: Event) {
        summary.count(&event);
        self.sink.emit(&event);
    }

    /// The record of a full tick that ends now.
    fn last_tick(&self, summary: &TickSummary, started: Instant) -> LastTick {
        let elapsed = self.clock.instant().since(started);
        let finished_at = self.clock.now();
        LastTick {
            started_at: finished_at - chrono_duration(elapsed),
            finished_at,
            duration_ms: elapsed.as_millis() as u64,
            accounts: summary.accounts as u64,
            rotated: summary.rotated as u64,
            skipped: summary.skipped as u64,
            deferred: summary.deferred as u64,
            failed: summary.failed.len() as u64,
            invalid_teams: summary.invalid_teams.len() as u64,
            ..LastTick::default()
        }
    }

    fn finish(&self, summary: &mut TickSummary, started: Instant) {
        summary.failed.sort();
        self.sink.emit(&Event::TickFinished {
            accounts: summary.accounts,
            rotated: summary.rotated,
            skipped: summary.skipped,
            deferred: summary.deferred,
            failed: summary.failed.len(),
            invalid_teams: summary.invalid_teams.len(),
            lease_lost: summary.lease_lost.is_some(),
            elapsed_ms: self.clock.instant().since(started).as_millis() as u64,
        });
    }
}

/// Why a batch of state documents was not stored.
enum Unstored {
    /// The lease is no longer this tick's.
    Lost(LeaseError),
    Store(StoreError),
}

#[cfg(test)]
mod tests;
