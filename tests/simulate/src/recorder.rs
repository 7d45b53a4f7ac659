//! What the ticks said: the engine's events, kept as the figures need them. One recorder
//! serves every tick of every node, as one log collector would.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use chrono::{DateTime, Utc};
use concourse_sts::events::{Event, EventSink, RotateReason};
use concourse_sts::tick::TickSummary;

use crate::aws::AwsModel;
use crate::memory::NOBODY;
use crate::world::Account;

/// One tick that ran (held the lease or found nothing due).
#[derive(Debug, Clone, Copy)]
pub struct TickRecord {
    pub elapsed_ms: u64,
    pub deferred: usize,
    pub rotated: usize,
}

/// Everything recorded.
#[derive(Debug, Default)]
pub struct Log {
    pub ticks: Vec<TickRecord>,
    pub lease_busy: u64,
    pub lease_lost: u64,
    /// Ticks that ended in an error of their own (not an account's), with why.
    pub tick_errors: BTreeMap<String, u64>,
    /// Accounts that failed, by stage and code.
    pub failures: BTreeMap<String, u64>,
    /// Failed attempts (each retried or not), by code.
    pub attempts_failed: BTreeMap<String, u64>,
    /// Rotations by reason.
    pub rotations: BTreeMap<String, u64>,
    /// Accounts rotated again, other than to repair, by a session asked for before the
    /// due time their previous rotation set.
    pub rotated_twice: BTreeSet<u32>,
    /// The heap each tick held at its peak.
    pub tick_peak_bytes: Vec<u64>,
    /// Each account's due time, as its last rotation set it.
    due: Vec<Option<DateTime<Utc>>>,
}

pub struct Recorder {
    aws: Rc<AwsModel>,
    epoch: DateTime<Utc>,
    /// Account numbers by team and name.
    index: HashMap<String, HashMap<String, u32>>,
    log: RefCell<Log>,
}

impl Recorder {
    pub fn new(aws: Rc<AwsModel>, epoch: DateTime<Utc>, accounts: &[Account]) -> Self {
        let mut index: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for (number, account) in accounts.iter().enumerate() {
            let team = index.entry(account.team.clone()).or_default();
            team.insert(account.name.clone(), number as u32);
        }
        let log = Log {
            due: vec![None; accounts.len()],
            ..Log::default()
        };
        Self {
            aws,
            epoch,
            index,
            log: RefCell::new(log),
        }
    }

    pub fn log(&self) -> std::cell::Ref<'_, Log> {
        self.log.borrow()
    }

    /// A tick ended, with its summary or its error, having held `peak_bytes` at most.
    pub fn tick_ended(&self, peak_bytes: u64, result: &anyhow::Result<TickSummary>) {
        NOBODY.run(|| {
            let mut log = self.log.borrow_mut();
            log.tick_peak_bytes.push(peak_bytes);
            if let Err(error) = result {
                *log.tick_errors.entry(format!("{error:#}")).or_default() += 1;
            }
        });
    }

    fn record(&self, event: &Event) {
        let mut log = self.log.borrow_mut();
        match event {
            Event::TickFinished {
                elapsed_ms,
                deferred,
                rotated,
                ..
            } => log.ticks.push(TickRecord {
                elapsed_ms: *elapsed_ms,
                deferred: *deferred,
                rotated: *rotated,
            }),
            Event::LeaseBusy { .. } => log.lease_busy += 1,
            Event::LeaseLost { .. } => log.lease_lost += 1,
            Event::AccountFailed { stage, code, .. } => {
                let code = code.as_deref().unwrap_or("none");
                *log.failures.entry(format!("{stage:?}/{code}")).or_default() += 1;
            }
            Event::AttemptFailed { code, .. } => {
                let code = code.as_deref().unwrap_or("transport");
                *log.attempts_failed.entry(code.to_owned()).or_default() += 1;
            }
            Event::AccountRotated {
                team,
                account,
                reason,
                rotate_after,
                ..
            } => {
                let number = self.index[team][account];
                self.rotated(&mut log, number, *reason, *rotate_after);
            }
            _ => {}
        }
    }

    /// Counts a rotation and checks it against the due time the one before set.
    fn rotated(&self, log: &mut Log, account: u32, reason: RotateReason, due: DateTime<Utc>) {
        let name = serde_json::to_value(reason).expect("a reason is a string");
        let name = name.as_str().unwrap_or_default().to_owned();
        *log.rotations.entry(name).or_default() += 1;
        let repair = reason == RotateReason::Incomplete;
        let issued = self.aws.rotated(account, repair);
        let slot = &mut log.due[account as usize];
        let asked_at = issued.map(|ms| self.epoch + chrono::Duration::milliseconds(ms as i64));
        if let (false, Some(asked_at), Some(previous_due)) = (repair, asked_at, *slot) {
            if asked_at < previous_due {
                log.rotated_twice.insert(account);
            }
        }
        *slot = Some(due);
    }
}

impl EventSink for Recorder {
    fn emit(&self, event: &Event) {
        if matches!(event, Event::AccountSkipped { .. }) {
            return;
        }
        NOBODY.run(|| self.record(event));
    }
}
