//! The tick lease. The cron host starts a tick on schedule even while the last one still
//! runs, and several nodes may share one store; two ticks interleaving writes to one
//! account would leave a mixed set. So a tick that has work to do takes the lease first,
//! and a tick that cannot take it returns.
//!
//! **Who holds it.** No store's compare-and-swap answer is trusted (Spin's Redis store
//! reports every swap as failed after writing it, and a lost race as success): a tick
//! holds the lease only when reading the key back shows the record it wrote, whose
//! holder id no other tick uses. Where the key does not exist yet, Spin's SQLite store
//! writes unconditionally, so two ticks creating it at once could both read their own
//! record back; the key is therefore never deleted (a release writes an expired record),
//! and a freshly created lease is trusted only [`SETTLE`] after it was written.
//!
//! **Until when.** A record's expiry is in AWS time (see [`crate::clock`]), which every
//! node learns from AWS's answers before it writes a lease or judges one expired, so a
//! node whose own clock runs minutes ahead neither takes a live lease nor, releasing,
//! blocks the others by its skew. The holder also keeps the monotonic twin of that
//! expiry: a node frozen mid-tick (SIGSTOP, a paused VM) wakes knowing how long it was
//! away, and writes nothing more until it has renewed the lease, which it cannot once
//! another node has taken it over.
//!
//! **Fencing.** Before every AWS write and every state batch the tick asks the lease
//! (see [`Lease::fence`] and [`Lease::confirm`]): the lease must be this tick's by the
//! monotonic clock with half its life left (renewed here otherwise), and read back from
//! the store within the last [`RECHECK`] (for a batch: just now). A record's fields that
//! this version does not know (written by a newer one during a rolling upgrade) are
//! kept, never a reason to call the record foreign.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::{chrono_duration, Clock, Instant, TimeSource};
use crate::store::{KeyValue, StoreError};

/// Where the lease lives in the key-value store (under the `store_prefix`).
pub const LEASE_KEY: &str = "lease/rotation";

/// How long a newly created lease key is given before it is trusted: far longer than the
/// two host calls between a competitor's read and its write, and short enough to hide
/// behind the first account's `AssumeRole` (only the store's very first tick waits).
pub const SETTLE: Duration = Duration::from_millis(100);

/// The longest a write relies on the last reading of the store: another writer that
/// took the key over (a store that lost the lease's last write in a restart) is noticed
/// within this.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The pauses between reads of the lease that fail, before it counts as lost: a store
/// that blinks (Redis restarted, back from its append-only file in a second or two) does
/// not end a tick. Three seconds in all, at most half of what the fence keeps beyond a
/// request's timeout (see [`LeasePolicy::for_requests`]), so a write the fence admits
/// after waiting them out still ends before the lease does.
const STORE_RETRY_PAUSES: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1500),
];

/// How long a lease lives: renewed when half is left, so that any write started under
/// it outlasts its request timeout with room to spare, and a holder that died blocks the
/// others for at most this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// How long a lease lives after it is written, in AWS time.
    pub ttl: Duration,
}

impl LeasePolicy {
    /// Kept between the end of any request the holder starts and the lease's end: room
    /// for the error in this node's idea of AWS time (whole-second `Date` headers) and
    /// for the store's own latency.
    pub const MARGIN: Duration = Duration::from_secs(5);
    /// The shortest lifetime: a lease renewed at most every fifteen seconds.
    pub const MIN_TTL: Duration = Duration::from_secs(30);

    /// A lease for requests of at most `request_timeout`: three times a request and its
    /// margin, so that the half left at renewal still covers one and a half.
    pub fn for_requests(request_timeout: Duration) -> Self {
        let needed = request_timeout + Self::MARGIN;
        Self {
            ttl: (needed * 3).max(Self::MIN_TTL),
        }
    }

    fn renew_below(&self) -> Duration {
        self.ttl / 2
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    expires_at: DateTime<Utc>,
    /// When the holder took the lease, kept through its renewals and dropped at its
    /// release: how long a tick has held it, for `/metrics`. Absent in the records of
    /// earlier versions (during a rolling upgrade, an earlier version that takes over an
    /// expired lease keeps the last holder's, as it keeps every field it does not know).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acquired_at: Option<DateTime<Utc>>,
    /// Fields a newer version wrote, kept as they are.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl LeaseRecord {
    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lease record is strings, a time and JSON values")
    }
}

/// Why the lease could not be taken or kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("key {LEASE_KEY} holds a value concourse-sts did not write; it is left alone (give the app a store of its own, or a store_prefix, or remove that key)")]
    Foreign,
    #[error("the lease was taken over by {0}")]
    TakenOver(String),
    #[error("AWS's time is not known yet, and a lease is judged in AWS time")]
    TimeUnknown,
    #[error("key-value store: {0}")]
    Store(#[from] StoreError),
}

/// What became of an attempt to take the lease.
pub enum Acquired<'a, K, S> {
    Held(Lease<'a, K, S>),
    /// Another tick holds it (`holder` and `until` when known).
    Busy {
        holder: Option<String>,
        until: Option<DateTime<Utc>>,
    },
}

/// A lease this tick holds; give it back with [`Lease::release`].
#[must_use]
pub struct Lease<'a, K, S> {
    store: &'a K,
    clock: &'a Clock<S>,
    policy: LeasePolicy,
    /// The record as this tick last wrote it.
    written: RefCell<LeaseRecord>,
    /// This tick may write until then: the monotonic twin of the record's expiry, taken
    /// before the record was written.
    valid_until: Cell<Instant>,
    /// When the store last showed the record as this tick's.
    checked_at: Cell<Instant>,
    /// Not trusted before this (see [`SETTLE`]).
    trusted_from: Instant,
    /// Why the lease was lost, once it was: then always lost.
    lost: RefCell<Option<LeaseError>>,
}

impl<'a, K: KeyValue, S: TimeSource> Lease<'a, K, S> {
    /// Takes the lease unless a live one is held by another tick. An expired lease is
    /// taken over: a tick that died leaves one behind.
    pub async fn acquire(
        store: &'a K,
        clock: &'a Clock<S>,
        holder: &str,
        policy: LeasePolicy,
    ) -> Result<Acquired<'a, K, S>, LeaseError> {
        if !clock.knows_aws_time() {
            return Err(LeaseError::TimeUnknown);
        }
        let started = clock.instant();
        let now = clock.now();
        let current = read_retrying(store, clock).await?;
        let record = current.as_deref().map(read_record).transpose()?;
        if let Some(live) = record
            .as_ref()
            .filter(|r| r.expires_at > now && r.holder != holder)
        {
            return Ok(Acquired::Busy {
                holder: Some(live.holder.clone()),
                until: Some(live.expires_at),
            });
        }
        let wanted = LeaseRecord {
            holder: holder.to_owned(),
            expires_at: now + chrono_duration(policy.ttl),
            acquired_at: Some(now),
            other: record.map(|r| r.other).unwrap_or_default(),
        };
        store.swap(LEASE_KEY, current.as_deref(), &wanted.to_bytes())?;
        let stored = read_retrying(store, clock).await?;
        if stored.as_deref() != Some(&wanted.to_bytes()[..]) {
            let other = stored.as_deref().and_then(|bytes| read_record(bytes).ok());
            return Ok(Acquired::Busy {
                holder: other.as_ref().map(|r| r.holder.clone()),
                until: other.map(|r| r.expires_at),
            });
        }
        let settle = if current.is_none() {
            SETTLE
        } else {
            Duration::ZERO
        };
        Ok(Acquired::Held(Lease {
            store,
            clock,
            policy,
            written: RefCell::new(wanted),
            valid_until: Cell::new(started + policy.ttl),
            checked_at: Cell::new(started),
            trusted_from: started + settle,
            lost: RefCell::new(None),
        }))
    }

    /// The fence before an AWS write: the lease is this tick's with half its life left
    /// on the monotonic clock (renewed otherwise), and the store showed it so within the
    /// last [`RECHECK`]. Once lost, always lost.
    pub async fn fence(&self) -> Result<(), LeaseError> {
        self.keep(false).await
    }

    /// The fence before a state batch: as [`Lease::fence`], with the store read now.
    pub async fn confirm(&self) -> Result<(), LeaseError> {
        self.keep(true).await
    }

    /// Why the lease is lost, if it is (then nothing more is started).
    pub fn lost(&self) -> Option<LeaseError> {
        self.lost.borrow().clone()
    }

    /// Extends the lease by its lifetime from now.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        self.checked(async {
            let started = self.clock.instant();
            let old = self.written.borrow().to_bytes();
            let renewed = LeaseRecord {
                expires_at: self.clock.now() + chrono_duration(self.policy.ttl),
                ..self.written.borrow().clone()
            };
            self.store
                .swap(LEASE_KEY, Some(&old), &renewed.to_bytes())?;
            *self.written.borrow_mut() = renewed;
            self.still_mine().await?;
            self.valid_until.set(started + self.policy.ttl);
            Ok(())
        })
        .await
    }

    /// Ends the lease now (in AWS time), unless someone has taken it over meanwhile. A
    /// lease lost only because the store could not be read is given back too, if the
    /// store shows it again: the next tick need not wait for it to expire to repair what
    /// this one left.
    pub fn release(self) -> Result<(), StoreError> {
        if matches!(
            *self.lost.borrow(),
            Some(LeaseError::TakenOver(_) | LeaseError::Foreign | LeaseError::TimeUnknown)
        ) {
            return Ok(());
        }
        // Without its holder's start: a released lease is held by no one, whatever the
        // clock of a node that reads it says of its expiry.
        let ended = LeaseRecord {
            expires_at: self.clock.now(),
            acquired_at: None,
            ..self.written.borrow().clone()
        };
        let old = self.written.borrow().to_bytes();
        self.store.swap(LEASE_KEY, Some(&old), &ended.to_bytes())
    }

    async fn keep(&self, read_now: bool) -> Result<(), LeaseError> {
        self.clock.sleep_until(self.trusted_from).await;
        let now = self.clock.instant();
        if now + self.policy.renew_below() > self.valid_until.get() {
            return self.renew().await;
        }
        let recheck = read_now || now.since(self.checked_at.get()) >= RECHECK;
        self.checked(async {
            if recheck {
                self.still_mine().await?;
            }
            Ok(())
        })
        .await
    }

    /// Runs a check; any failure loses the lease for good.
    async fn checked(
        &self,
        check: impl std::future::Future<Output = Result<(), LeaseError>>,
    ) -> Result<(), LeaseError> {
        if let Some(lost) = self.lost() {
            return Err(lost);
        }
        check
            .await
            .inspect_err(|error| *self.lost.borrow_mut() = Some(error.clone()))
    }

    async fn still_mine(&self) -> Result<(), LeaseError> {
        let read_at = self.clock.instant();
        let stored = read_retrying(self.store, self.clock).await?;
        if stored.as_deref() == Some(&self.written.borrow().to_bytes()[..]) {
            self.checked_at.set(read_at);
            return Ok(());
        }
        let other = stored.as_deref().and_then(|bytes| read_record(bytes).ok());
        Err(LeaseError::TakenOver(
            other.map_or_else(|| "another tick".to_owned(), |r| r.holder),
        ))
    }
}

/// The lease key's value, read again after each of [`STORE_RETRY_PAUSES`] while the
/// store fails.
async fn read_retrying<S: TimeSource>(
    store: &impl KeyValue,
    clock: &Clock<S>,
) -> Result<Option<Vec<u8>>, StoreError> {
    for pause in STORE_RETRY_PAUSES {
        match store.get(LEASE_KEY) {
            Err(_) => clock.sleep(pause).await,
            result => return result,
        }
    }
    store.get(LEASE_KEY)
}

/// The lease as the stored record shows it, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub expires_at: DateTime<Utc>,
    pub acquired_at: Option<DateTime<Utc>>,
}

/// Reads the lease record; `None` when there is none, or none of this application's.
pub fn holding(store: &impl KeyValue) -> Result<Option<Holding>, StoreError> {
    let record = store.get(LEASE_KEY)?;
    Ok(record
        .and_then(|bytes| read_record(&bytes).ok())
        .map(|record| Holding {
            expires_at: record.expires_at,
            acquired_at: record.acquired_at,
        }))
}

fn read_record(bytes: &[u8]) -> Result<LeaseRecord, LeaseError> {
    serde_json::from_slice(bytes).map_err(|_| LeaseError::Foreign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::tests::ManualClock;
    use crate::store::tests::{MemoryStore, RacedStore};

    const POLICY: LeasePolicy = LeasePolicy {
        ttl: Duration::from_secs(300),
    };
    const TTL: Duration = POLICY.ttl;

    /// A clock that knows AWS's time (as every tick's does before it takes the lease).
    fn clock() -> ManualClock {
        let clock = ManualClock::manual(0.0);
        learn(&clock);
        clock
    }

    fn learn(clock: &ManualClock) {
        let date = clock.true_now().format("%a, %d %b %Y %H:%M:%S GMT");
        clock.observe_date(&date.to_string(), Duration::ZERO);
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(future)
    }

    fn acquire<'a, K: KeyValue>(
        store: &'a K,
        clock: &'a ManualClock,
        holder: &str,
    ) -> Result<Acquired<'a, K, crate::clock::tests::ManualTime>, LeaseError> {
        block_on(Lease::acquire(store, clock, holder, POLICY))
    }

    fn held<'a, K: KeyValue>(
        store: &'a K,
        clock: &'a ManualClock,
        holder: &str,
    ) -> Lease<'a, K, crate::clock::tests::ManualTime> {
        match acquire(store, clock, holder).unwrap() {
            Acquired::Held(lease) => lease,
            Acquired::Busy { .. } => panic!("{holder} did not get the lease"),
        }
    }

    fn busy_holder<K>(
        result: Result<Acquired<'_, K, crate::clock::tests::ManualTime>, LeaseError>,
    ) -> Option<String> {
        match result.unwrap() {
            Acquired::Busy { holder, .. } => holder,
            Acquired::Held(_) => panic!("two ticks held the lease"),
        }
    }

    fn record(store: &MemoryStore) -> serde_json::Value {
        serde_json::from_str(&store.text(LEASE_KEY).unwrap()).unwrap()
    }

    #[test]
    fn one_holder_at_a_time_and_a_release_keeps_the_key() {
        let (store, clock) = (MemoryStore::default(), clock());
        let first = held(&store, &clock, "a");
        clock.advance(Duration::from_secs(10));
        assert_eq!(
            busy_holder(acquire(&store, &clock, "b")).as_deref(),
            Some("a")
        );
        first.release().unwrap();
        assert!(store.text(LEASE_KEY).is_some(), "never deleted");
        let _second = held(&store, &clock, "b");
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_a_foreign_value_is_left_alone() {
        let (store, clock) = (MemoryStore::default(), clock());
        let _abandoned = held(&store, &clock, "dead");
        clock.advance(TTL + Duration::from_secs(1));
        let _next = held(&store, &clock, "next");
        for foreign in ["garbage", r#"{"their":"document"}"#, r#"{"holder":5}"#] {
            let store = MemoryStore::default().with(LEASE_KEY, foreign);
            assert_eq!(
                acquire(&store, &clock, "b").err(),
                Some(LeaseError::Foreign)
            );
            assert_eq!(store.text(LEASE_KEY).as_deref(), Some(foreign));
        }
    }

    /// A rolling upgrade: a newer version's record, with a field this one does not know,
    /// is a lease like any other, waited for while live, and its field survives a takeover.
    #[test]
    fn a_newer_versions_lease_is_respected_and_its_fields_kept() {
        let clock = clock();
        let newer = serde_json::json!({
            "holder": "v2-node",
            "expires_at": clock.now() + chrono::Duration::seconds(30),
            "epoch": 7,
        });
        let store = MemoryStore::default().with(LEASE_KEY, &newer.to_string());
        assert_eq!(
            busy_holder(acquire(&store, &clock, "a")).as_deref(),
            Some("v2-node")
        );
        clock.advance(Duration::from_secs(31));
        let lease = held(&store, &clock, "a");
        assert_eq!(record(&store)["epoch"], 7);
        block_on(lease.renew()).unwrap();
        assert_eq!(record(&store)["epoch"], 7, "kept through a renewal");
        lease.release().unwrap();
        assert_eq!(record(&store)["epoch"], 7, "and a release");
    }

    #[test]
    fn when_the_holder_took_the_lease_is_kept_through_its_renewals() {
        let (store, clock) = (MemoryStore::default(), clock());
        let taken = clock.now();
        let lease = held(&store, &clock, "a");
        clock.advance(Duration::from_secs(200));
        block_on(lease.renew()).unwrap();
        let renewed = holding(&store).unwrap().unwrap();
        assert_eq!(renewed.acquired_at, Some(taken));
        assert_eq!(renewed.expires_at, clock.now() + chrono_duration(TTL));
        lease.release().unwrap();
        let released = holding(&store).unwrap().unwrap();
        assert_eq!(
            (released.acquired_at, released.expires_at),
            (None, clock.now())
        );
        store
            .set(
                LEASE_KEY,
                br#"{"holder":"old","expires_at":"2030-01-01T00:00:00Z"}"#,
            )
            .unwrap();
        let older = holding(&store).unwrap().unwrap();
        assert_eq!(older.acquired_at, None, "an earlier version's record");
    }

    /// Spin's Redis store reports a swap as failed after writing, and a lost race as
    /// success: neither answer is used, so only what is read back counts.
    #[test]
    fn only_what_is_read_back_counts() {
        let clock = clock();
        let honest = MemoryStore::default();
        assert!(matches!(
            acquire(&honest, &clock, "a").unwrap(),
            Acquired::Held(_)
        ));
        let other = LeaseRecord {
            holder: "racer".into(),
            expires_at: clock.now() + chrono_duration(TTL),
            acquired_at: None,
            other: Default::default(),
        }
        .to_bytes();
        let raced = RacedStore {
            after_swap: Some(Box::new(move |inner, key| inner.set(key, &other).unwrap())),
            ..RacedStore::default()
        };
        assert_eq!(
            busy_holder(acquire(&raced, &clock, "a")).as_deref(),
            Some("racer"),
            "a lost race was taken for a win"
        );
    }

    #[test]
    fn a_new_lease_is_trusted_only_after_it_settled_and_a_takeover_is_noticed() {
        let (store, clock) = (MemoryStore::default(), clock());
        let lease = held(&store, &clock, "a");
        block_on(lease.fence()).unwrap();
        assert_eq!(clock.slept(), SETTLE, "a created key waits to settle");
        block_on(lease.fence()).unwrap();
        assert_eq!(clock.slept(), SETTLE, "only once");
        // A competitor that read "absent" before our write overwrites it.
        let theirs = LeaseRecord {
            holder: "b".into(),
            expires_at: clock.now() + chrono_duration(TTL),
            acquired_at: None,
            other: Default::default(),
        };
        store.set(LEASE_KEY, &theirs.to_bytes()).unwrap();
        assert_eq!(
            block_on(lease.confirm()),
            Err(LeaseError::TakenOver("b".into()))
        );
        assert!(block_on(lease.renew()).is_err(), "once lost, always lost");
        lease.release().unwrap();
        assert_eq!(record(&store)["holder"], "b", "left alone");
    }

    /// The fence reads the store at most once per [`RECHECK`], and always for a batch.
    #[test]
    fn writes_rely_on_a_recent_reading_and_batches_on_a_fresh_one() {
        let store = RacedStore::default();
        let clock = clock();
        let lease = held(&store, &clock, "a");
        let reads = || store.gets.get();
        let before = reads();
        block_on(lease.fence()).unwrap();
        block_on(lease.fence()).unwrap();
        assert_eq!(reads(), before, "read back at acquire, within RECHECK");
        block_on(lease.confirm()).unwrap();
        assert_eq!(reads(), before + 1, "a batch reads now");
        clock.advance(RECHECK);
        block_on(lease.fence()).unwrap();
        assert_eq!(reads(), before + 2, "a write after RECHECK reads again");
    }

    #[test]
    fn a_long_tick_renews_its_lease() {
        let (store, clock) = (MemoryStore::default(), clock());
        let lease = held(&store, &clock, "a");
        block_on(lease.fence()).unwrap();
        clock.advance(TTL * 3 / 4);
        block_on(lease.fence()).unwrap();
        let expires: DateTime<Utc> =
            serde_json::from_value(record(&store)["expires_at"].clone()).unwrap();
        assert_eq!(expires, clock.now() + chrono_duration(TTL));
        clock.advance(TTL / 2);
        assert_eq!(
            busy_holder(acquire(&store, &clock, "b")).as_deref(),
            Some("a"),
            "the renewed lease still holds past its first lifetime"
        );
        block_on(lease.renew()).unwrap();
    }

    /// A node frozen (SIGSTOP) past its lease while another took it over: its monotonic
    /// clock ran on, so its next write first renews, finds the other holder, and stops.
    #[test]
    fn a_node_frozen_past_its_lease_writes_nothing_more() {
        let (store, clock) = (MemoryStore::default(), clock());
        let frozen = held(&store, &clock, "frozen");
        block_on(frozen.fence()).unwrap();
        clock.advance(TTL + Duration::from_secs(30));
        let _taker = held(&store, &clock, "taker");
        assert_eq!(
            block_on(frozen.fence()),
            Err(LeaseError::TakenOver("taker".into()))
        );
        assert!(frozen.lost().is_some());
        frozen.release().unwrap();
        assert_eq!(record(&store)["holder"], "taker");
    }

    /// A node whose wall clock runs four minutes ahead judges and writes expiries in AWS
    /// time: it waits for a live lease, and its release does not block the others.
    #[test]
    fn a_node_minutes_ahead_judges_and_releases_in_aws_time() {
        let store = MemoryStore::default();
        let honest = clock();
        let _live = held(&store, &honest, "honest");
        let ahead = ManualClock::manual(0.0);
        ahead.skew_wall(chrono::Duration::minutes(4));
        assert_eq!(
            acquire(&store, &ahead, "ahead").err(),
            Some(LeaseError::TimeUnknown),
            "no lease is judged before AWS's time is known"
        );
        learn(&ahead);
        assert_eq!(
            busy_holder(acquire(&store, &ahead, "ahead")).as_deref(),
            Some("honest")
        );
        let released_store = MemoryStore::default();
        let lease = held(&released_store, &ahead, "ahead");
        lease.release().unwrap();
        let expires: DateTime<Utc> =
            serde_json::from_value(record(&released_store)["expires_at"].clone()).unwrap();
        assert!((expires - ahead.true_now()).abs() <= chrono::Duration::seconds(1));
        let _next = held(&released_store, &honest, "honest");
    }

    /// A store that blinks is read again, for three seconds, before the lease counts as
    /// lost; a lease lost so is given back once the store answers again.
    #[test]
    fn store_read_errors_are_retried_before_the_lease_counts_as_lost() {
        let store = RacedStore::default();
        let clock = clock();
        let lease = held(&store, &clock, "a");
        let retries = STORE_RETRY_PAUSES.len() as u32;
        store.failing_gets.set(retries);
        block_on(lease.confirm()).unwrap();
        assert!(lease.lost().is_none());
        let waited: Duration = STORE_RETRY_PAUSES.iter().sum();
        assert_eq!(waited, Duration::from_secs(3));
        store.failing_gets.set(retries + 1);
        assert!(matches!(
            block_on(lease.confirm()),
            Err(LeaseError::Store(_))
        ));
        lease.release().unwrap();
        let record: serde_json::Value =
            serde_json::from_slice(&store.inner.get(LEASE_KEY).unwrap().unwrap()).unwrap();
        let expires: DateTime<Utc> = serde_json::from_value(record["expires_at"].clone()).unwrap();
        assert_eq!(
            expires,
            clock.now(),
            "given back: the next tick need not wait"
        );
    }

    #[test]
    fn the_lifetime_covers_a_request_and_its_margin_half_over() {
        let short = LeasePolicy::for_requests(Duration::from_secs(3));
        assert_eq!(short.ttl, LeasePolicy::MIN_TTL);
        assert_eq!(short.ttl, Duration::from_secs(30));
        let default = LeasePolicy::for_requests(Duration::from_secs(20));
        assert_eq!(default.ttl, Duration::from_secs(75));
        let store_waits: Duration = STORE_RETRY_PAUSES.iter().sum();
        for (policy, timeout) in [
            (short, 3),
            (default, 20),
            (LeasePolicy::for_requests(Duration::from_secs(1)), 1),
        ] {
            let needed = Duration::from_secs(timeout) + LeasePolicy::MARGIN;
            assert!(policy.renew_below() >= needed + needed / 2);
            assert!(
                store_waits <= needed / 2,
                "a blinking store's wait fits the margin"
            );
        }
    }
}
