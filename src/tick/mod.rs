//! One tick, top to bottom: load every team and its state, plan what is due, and when
//! something is, take the lease, execute the jobs within the budget and the concurrency
//! bound, and record the outcomes in batched commits.
//!
//! A tick with nothing due writes nothing and takes no lease: most ticks only read.

pub mod execute;
pub mod load;
pub mod plan;
pub mod record;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};

use crate::aws::{AwsClient, Transport};
use crate::clock::{chrono_duration, Clock};
use crate::events::{Event, EventSink};
use crate::lease::{Acquired, Lease};
use crate::pace::WritePacer;
use crate::settings::RotationRules;
use crate::store::{KeyValue, StoreError};

use execute::{Executor, Outcome};
use load::load;
use plan::{plan, Job, Plan, Scope};
use record::Record;

/// How often a long tick stores the outcomes it has so far, so that a host stopped late
/// in a long tick repairs little.
const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

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
pub struct Engine<'a, T, C, K> {
    pub client: &'a AwsClient<T>,
    pub clock: &'a C,
    pub store: &'a K,
    /// A trait object, so that the cron tick and the admin API (which also collects the
    /// events) share one copy of the engine in the component.
    pub sink: &'a dyn EventSink,
    pub rules: &'a RotationRules,
    /// This tick's id, unique among ticks: the lease's holder, and the `tick` of its log
    /// lines.
    pub tick: &'a str,
}

impl<T: Transport, C: Clock, K: KeyValue> Engine<'_, T, C, K> {
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
        let started = self.clock.now();
        let loaded = load(self.store).context("reading teams and state")?;
        let planned = plan(&loaded, self.rules, started, scope);
        if !planned.has_work() {
            let mut summary = self.report_plan(planned);
            self.finish(&mut summary, started);
            return Ok(summary);
        }
        // The rotator's own credentials first: without them nothing can be done, and a
        // failure to get them is the tick's, before any AWS call or lease.
        self.client.prepare().await?;
        let ttl = self.rules.lease_ttl();
        let lease = match Lease::acquire(self.store, self.clock, self.tick, ttl)? {
            Acquired::Held(lease) => lease,
            Acquired::Busy { holder, until } => {
                self.sink.emit(&Event::LeaseBusy { holder, until });
                return Ok(TickSummary {
                    lease_busy: true,
                    ..TickSummary::default()
                });
            }
        };
        let result = self.rotate(scope, started, &lease).await;
        lease.release().context("releasing the lease")?;
        // Said once the lease is given back: a host stopped right after this line leaves
        // no lease to wait for.
        let mut summary = result?;
        self.finish(&mut summary, started);
        Ok(summary)
    }

    /// The tick proper, under the lease: everything is read again, since another tick may
    /// have finished between the first look and the lease.
    async fn rotate(
        &self,
        scope: Scope<'_>,
        started: DateTime<Utc>,
        lease: &Lease<'_, K, C>,
    ) -> anyhow::Result<TickSummary> {
        let loaded = load(self.store).context("reading teams and state")?;
        let mut planned = plan(&loaded, self.rules, self.clock.now(), scope);
        let (mut record, batch) = Record::begin(loaded.states, &planned);
        let jobs = std::mem::take(&mut planned.jobs);
        let mut summary = self.report_plan(planned);
        self.store
            .set_many(&batch.writes)
            .context("marking due accounts")?;
        if !batch.deletes.is_empty() {
            self.store
                .delete_many(&batch.deletes)
                .context("removing the state of removed teams")?;
        }
        let deadline = started + chrono_duration(self.rules.tick_budget);
        self.execute(jobs, deadline, lease, &mut record, &mut summary)
            .await;
        self.flush(lease, &mut record)
            .await
            .context("storing the rotation state")?;
        // Credentials that could not be refreshed during the tick stopped it: the tick's
        // failure, naming the source, not the accounts'.
        if let Some(failure) = self.client.credentials_failure() {
            return Err(failure.into());
        }
        Ok(summary)
    }

    /// Runs the jobs, most urgent first, `max_concurrency` at a time, recording each
    /// outcome as it comes and storing them every [`FLUSH_INTERVAL`].
    async fn execute(
        &self,
        jobs: Vec<Job>,
        deadline: DateTime<Utc>,
        lease: &Lease<'_, K, C>,
        record: &mut Record,
        summary: &mut TickSummary,
    ) {
        let pacer = WritePacer::new(self.clock, self.rules.writes_per_second);
        let ssm_pacer = WritePacer::new(self.clock, self.rules.ssm_writes_per_second);
        let executor = Executor {
            client: self.client,
            clock: self.clock,
            rules: self.rules,
            sink: self.sink,
            pacer: &pacer,
            ssm_pacer: &ssm_pacer,
            lease,
            deadline,
        };
        let executor = &executor;
        let mut outcomes = stream::iter(jobs)
            .map(|job| async move {
                let outcome = executor.run(&job).await;
                (job, outcome)
            })
            .buffer_unordered(self.rules.max_concurrency.max(1));
        let mut flushed = self.clock.now();
        let mut lost = false;
        while let Some((job, outcome)) = outcomes.next().await {
            if let (Outcome::LeaseLost(reason), false) = (&outcome, lost) {
                lost = true;
                self.sink.emit(&Event::LeaseLost {
                    reason: reason.to_string(),
                });
            }
            let now = self.clock.now();
            let fraction = self.clock.random_fraction();
            let event = record.apply(&job, outcome, now, self.rules, fraction);
            self.report(summary, event);
            // A failed flush keeps the changes for the next one; the last one reports.
            if now - flushed >= chrono_duration(FLUSH_INTERVAL) {
                let _ = self.flush(lease, record).await;
                flushed = now;
            }
        }
    }

    /// Stores the changed state documents in one batch, if the lease is still this
    /// tick's; otherwise they are dropped, and the accounts stay marked for repair.
    async fn flush(&self, lease: &Lease<'_, K, C>, record: &mut Record) -> Result<(), StoreError> {
        if !record.has_changes() || lease.confirm().await.is_err() {
            return Ok(());
        }
        self.store.set_many(&record.changed())?;
        record.stored();
        Ok(())
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

    fn finish(&self, summary: &mut TickSummary, started: DateTime<Utc>) {
        summary.failed.sort();
        self.sink.emit(&Event::TickFinished {
            accounts: summary.accounts,
            rotated: summary.rotated,
            skipped: summary.skipped,
            deferred: summary.deferred,
            failed: summary.failed.len(),
            invalid_teams: summary.invalid_teams.len(),
            elapsed_ms: (self.clock.now() - started).num_milliseconds().max(0) as u64,
        });
    }
}

#[cfg(test)]
mod tests;
