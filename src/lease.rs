//! The tick lease. The cron host starts a tick on schedule even while the last one still
//! runs, and several instances may share one store; two ticks interleaving writes to one
//! account would leave a mixed triple. So a tick that has work to do takes the lease
//! first, and a tick that cannot take it returns.
//!
//! No store's compare-and-swap answer is trusted (Spin's Redis store reports every swap as
//! failed after writing it, and a lost race as success): a tick holds the lease only when
//! reading the key back shows the value it wrote, which holds a holder id no other tick
//! uses. One race remains where the key does not exist yet: Spin's SQLite store writes an
//! absent key unconditionally, so two ticks creating it at once could both read their own
//! value back. The lease key is therefore never deleted (a release writes an expired
//! record), and a freshly created lease is trusted only [`SETTLE`] after it was written:
//! a competitor's write, which follows its read within that time, has landed by then.
//!
//! Before an account's secrets are written, [`Lease::confirm`] reads the key again (the
//! fence) and renews the lease when less than half its lifetime is left. A lifetime of
//! twice the longest an account's writes can take (see `RotationRules::lease_ttl`) means
//! a lease still held always outlives the writes it covers, however long the tick runs.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::{chrono_duration, Clock};
use crate::store::{KeyValue, StoreError};

/// Where the lease lives in the key-value store.
pub const LEASE_KEY: &str = "lease/rotation";

/// How long a newly created lease key is given before it is trusted: far longer than the
/// two host calls between a competitor's read and its write, and short enough to hide
/// behind the first account's `AssumeRole` (only the store's very first tick waits).
pub const SETTLE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseRecord {
    holder: String,
    expires_at: DateTime<Utc>,
}

impl LeaseRecord {
    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lease record is a string and a time")
    }
}

/// Why the lease could not be taken or kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("key {LEASE_KEY} holds a value concourse-sts did not write; it is left alone (give the app a store of its own, or remove that key)")]
    Foreign,
    #[error("the lease was taken over by {0}")]
    TakenOver(String),
    #[error("key-value store: {0}")]
    Store(#[from] StoreError),
}

/// What became of an attempt to take the lease.
pub enum Acquired<'a, K, C> {
    Held(Lease<'a, K, C>),
    /// Another tick holds it (`holder` and `until` when known).
    Busy {
        holder: Option<String>,
        until: Option<DateTime<Utc>>,
    },
}

/// A lease this tick holds; give it back with [`Lease::release`].
#[must_use]
pub struct Lease<'a, K, C> {
    store: &'a K,
    clock: &'a C,
    holder: String,
    ttl: Duration,
    /// The record as this tick last wrote it.
    written: RefCell<LeaseRecord>,
    /// Not trusted before this (see [`SETTLE`]).
    trusted_from: DateTime<Utc>,
    lost: Cell<bool>,
}

impl<'a, K: KeyValue, C: Clock> Lease<'a, K, C> {
    /// Takes the lease for `ttl` unless a live one is held by another tick. An expired
    /// lease is taken over: a tick that died leaves one behind.
    pub fn acquire(
        store: &'a K,
        clock: &'a C,
        holder: &str,
        ttl: Duration,
    ) -> Result<Acquired<'a, K, C>, LeaseError> {
        let now = clock.now();
        let current = store.get(LEASE_KEY)?;
        let record = current.as_deref().map(read_record).transpose()?;
        if let Some(live) = record.filter(|r| r.expires_at > now && r.holder != holder) {
            return Ok(Acquired::Busy {
                holder: Some(live.holder),
                until: Some(live.expires_at),
            });
        }
        let wanted = LeaseRecord {
            holder: holder.to_owned(),
            expires_at: now + chrono_duration(ttl),
        };
        store.swap(LEASE_KEY, current.as_deref(), &wanted.to_bytes())?;
        let stored = store.get(LEASE_KEY)?;
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
            holder: holder.to_owned(),
            ttl,
            written: RefCell::new(wanted),
            trusted_from: now + chrono_duration(settle),
            lost: Cell::new(false),
        }))
    }

    /// The fence before an account's writes: the lease is still this tick's, with at least
    /// half its lifetime left (renewed here otherwise). Once lost, always lost.
    pub async fn confirm(&self) -> Result<(), LeaseError> {
        if let Ok(wait) = (self.trusted_from - self.clock.now()).to_std() {
            self.clock.sleep(wait).await;
        }
        self.check(|| self.still_mine())?;
        let left = self.written.borrow().expires_at - self.clock.now();
        if left < chrono_duration(self.ttl / 2) {
            self.renew()?;
        }
        Ok(())
    }

    /// Whether the lease is known to be lost (then nothing more is started).
    pub fn is_lost(&self) -> bool {
        self.lost.get()
    }

    /// Extends the lease by its lifetime from now.
    pub fn renew(&self) -> Result<(), LeaseError> {
        self.check(|| {
            let old = self.written.borrow().to_bytes();
            let renewed = LeaseRecord {
                holder: self.holder.clone(),
                expires_at: self.clock.now() + chrono_duration(self.ttl),
            };
            self.store
                .swap(LEASE_KEY, Some(&old), &renewed.to_bytes())?;
            *self.written.borrow_mut() = renewed;
            self.still_mine()
        })
    }

    /// Ends the lease now, unless someone has taken it over meanwhile.
    pub fn release(self) -> Result<(), StoreError> {
        if self.lost.get() {
            return Ok(());
        }
        let ended = LeaseRecord {
            holder: self.holder.clone(),
            expires_at: self.clock.now(),
        };
        let old = self.written.borrow().to_bytes();
        self.store.swap(LEASE_KEY, Some(&old), &ended.to_bytes())
    }

    /// Runs a check; any failure loses the lease for good.
    fn check(&self, check: impl FnOnce() -> Result<(), LeaseError>) -> Result<(), LeaseError> {
        if self.lost.get() {
            return Err(LeaseError::TakenOver("another tick".into()));
        }
        check().inspect_err(|_| self.lost.set(true))
    }

    fn still_mine(&self) -> Result<(), LeaseError> {
        let stored = self.store.get(LEASE_KEY)?;
        if stored.as_deref() == Some(&self.written.borrow().to_bytes()[..]) {
            return Ok(());
        }
        let other = stored.as_deref().and_then(|bytes| read_record(bytes).ok());
        Err(LeaseError::TakenOver(
            other.map_or_else(|| "another tick".to_owned(), |r| r.holder),
        ))
    }
}

fn read_record(bytes: &[u8]) -> Result<LeaseRecord, LeaseError> {
    serde_json::from_slice(bytes).map_err(|_| LeaseError::Foreign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::tests::ManualClock;
    use crate::store::tests::{MemoryStore, RacedStore};

    const TTL: Duration = Duration::from_secs(300);

    fn held<'a>(
        store: &'a MemoryStore,
        clock: &'a ManualClock,
        holder: &str,
    ) -> Lease<'a, MemoryStore, ManualClock> {
        match Lease::acquire(store, clock, holder, TTL).unwrap() {
            Acquired::Held(lease) => lease,
            Acquired::Busy { .. } => panic!("{holder} did not get the lease"),
        }
    }

    fn busy_holder(
        result: Result<Acquired<'_, MemoryStore, ManualClock>, LeaseError>,
    ) -> Option<String> {
        match result.unwrap() {
            Acquired::Busy { holder, .. } => holder,
            Acquired::Held(_) => panic!("two ticks held the lease"),
        }
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(future)
    }

    #[test]
    fn one_holder_at_a_time_and_a_release_keeps_the_key() {
        let (store, clock) = (MemoryStore::default(), ManualClock::new(0.0));
        let first = held(&store, &clock, "a");
        clock.advance(Duration::from_secs(10));
        assert_eq!(
            busy_holder(Lease::acquire(&store, &clock, "b", TTL)).as_deref(),
            Some("a")
        );
        first.release().unwrap();
        assert!(store.text(LEASE_KEY).is_some(), "never deleted");
        let _second = held(&store, &clock, "b");
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_a_foreign_value_is_left_alone() {
        let (store, clock) = (MemoryStore::default(), ManualClock::new(0.0));
        let _abandoned = held(&store, &clock, "dead");
        clock.advance(TTL + Duration::from_secs(1));
        let _next = held(&store, &clock, "next");
        let foreign = MemoryStore::default().with(LEASE_KEY, "garbage");
        assert_eq!(
            Lease::acquire(&foreign, &clock, "b", TTL).err(),
            Some(LeaseError::Foreign)
        );
        assert_eq!(foreign.text(LEASE_KEY).as_deref(), Some("garbage"));
    }

    /// Spin's Redis store reports a swap as failed after writing, and a lost race as
    /// success: neither answer is used, so only what is read back counts.
    #[test]
    fn only_what_is_read_back_counts() {
        let clock = ManualClock::new(0.0);
        let honest = MemoryStore::default();
        assert!(matches!(
            Lease::acquire(&honest, &clock, "a", TTL).unwrap(),
            Acquired::Held(_)
        ));
        let other = LeaseRecord {
            holder: "racer".into(),
            expires_at: clock.now() + chrono_duration(TTL),
        }
        .to_bytes();
        let raced = RacedStore {
            after_swap: Some(Box::new(move |inner, key| inner.set(key, &other).unwrap())),
            ..RacedStore::default()
        };
        match Lease::acquire(&raced, &clock, "a", TTL).unwrap() {
            Acquired::Busy { holder, .. } => assert_eq!(holder.as_deref(), Some("racer")),
            Acquired::Held(_) => panic!("a lost race was taken for a win"),
        }
    }

    #[test]
    fn a_new_lease_is_trusted_only_after_it_settled_and_a_takeover_is_noticed() {
        let (store, clock) = (MemoryStore::default(), ManualClock::new(0.0));
        let lease = held(&store, &clock, "a");
        block_on(lease.confirm()).unwrap();
        assert_eq!(clock.slept(), SETTLE, "a created key waits to settle");
        block_on(lease.confirm()).unwrap();
        assert_eq!(clock.slept(), SETTLE, "only once");
        // A competitor that read "absent" before our write overwrites it.
        let theirs = LeaseRecord {
            holder: "b".into(),
            expires_at: clock.now() + chrono_duration(TTL),
        };
        store.set(LEASE_KEY, &theirs.to_bytes()).unwrap();
        assert_eq!(
            block_on(lease.confirm()),
            Err(LeaseError::TakenOver("b".into()))
        );
        assert!(lease.renew().is_err(), "once lost, always lost");
        lease.release().unwrap();
        assert!(
            store.text(LEASE_KEY).unwrap().contains("\"b\""),
            "left alone"
        );
    }

    #[test]
    fn a_long_tick_renews_its_lease() {
        let (store, clock) = (MemoryStore::default(), ManualClock::new(0.0));
        let lease = held(&store, &clock, "a");
        block_on(lease.confirm()).unwrap();
        clock.advance(TTL * 3 / 4);
        block_on(lease.confirm()).unwrap();
        let record: LeaseRecord = serde_json::from_str(&store.text(LEASE_KEY).unwrap()).unwrap();
        assert_eq!(record.expires_at, clock.now() + chrono_duration(TTL));
        clock.advance(TTL / 2);
        assert_eq!(
            busy_holder(Lease::acquire(&store, &clock, "b", TTL)).as_deref(),
            Some("a"),
            "the renewed lease still holds past its first lifetime"
        );
        lease.renew().unwrap();
    }
}
