//! The tick lease. The cron host starts a tick on schedule even while the last one still
//! runs, and several instances may share one store; two ticks interleaving writes to one
//! account would leave a mixed triple. A tick therefore takes a lease with
//! compare-and-swap before it touches anything, and a tick that cannot take it returns.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::KeyValue;

/// Where the lease lives in the key-value store.
pub const LEASE_KEY: &str = "lease/rotation";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    #[serde(with = "crate::clock::rfc3339")]
    expires_at: DateTime<Utc>,
}

/// A lease this tick holds; give it back with [`release`].
#[must_use]
#[derive(Debug)]
pub struct Lease {
    holder: String,
    written: Vec<u8>,
}

/// What became of an attempt to take the lease.
#[derive(Debug)]
pub enum Acquired {
    Yes(Lease),
    /// Another tick holds it (`holder` and `until` when known).
    Busy {
        holder: Option<String>,
        until: Option<DateTime<Utc>>,
    },
}

/// Takes the lease unless a live one is held. An expired or unreadable lease is taken
/// over: a tick that died leaves one behind, and it must not block rotation forever.
pub fn acquire(
    store: &impl KeyValue,
    holder: &str,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
) -> anyhow::Result<Acquired> {
    let current = store.get(LEASE_KEY)?;
    let live = current
        .as_deref()
        .and_then(|bytes| serde_json::from_slice::<LeaseRecord>(bytes).ok())
        .filter(|record| record.expires_at > now);
    if let Some(record) = live {
        return Ok(Acquired::Busy {
            holder: Some(record.holder),
            until: Some(record.expires_at),
        });
    }
    let written = serde_json::to_vec(&LeaseRecord {
        holder: holder.to_owned(),
        expires_at: now + ttl,
    })?;
    if store.compare_and_swap(LEASE_KEY, current.as_deref(), &written)? {
        Ok(Acquired::Yes(Lease {
            holder: holder.to_owned(),
            written,
        }))
    } else {
        Ok(Acquired::Busy {
            holder: None,
            until: None,
        })
    }
}

/// Ends the lease now, unless someone has taken it over meanwhile.
pub fn release(store: &impl KeyValue, lease: Lease, now: DateTime<Utc>) -> anyhow::Result<()> {
    let ended = serde_json::to_vec(&LeaseRecord {
        holder: lease.holder,
        expires_at: now,
    })?;
    store.compare_and_swap(LEASE_KEY, Some(&lease.written), &ended)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::MemoryStore;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + seconds, 0).unwrap()
    }

    const TTL: chrono::Duration = chrono::Duration::seconds(300);

    #[test]
    fn one_holder_at_a_time() {
        let store = MemoryStore::default();
        let Acquired::Yes(first) = acquire(&store, "a", at(0), TTL).unwrap() else {
            panic!("the first tick must get the lease")
        };
        match acquire(&store, "b", at(10), TTL).unwrap() {
            Acquired::Busy { holder, until } => {
                assert_eq!(holder.as_deref(), Some("a"));
                assert_eq!(until, Some(at(300)));
            }
            Acquired::Yes(_) => panic!("two ticks held the lease"),
        }
        release(&store, first, at(20)).unwrap();
        assert!(matches!(
            acquire(&store, "b", at(21), TTL).unwrap(),
            Acquired::Yes(_)
        ));
    }

    #[test]
    fn an_expired_or_unreadable_lease_is_taken_over() {
        let store = MemoryStore::default();
        let _abandoned = acquire(&store, "dead", at(0), TTL).unwrap();
        assert!(matches!(
            acquire(&store, "b", at(301), TTL).unwrap(),
            Acquired::Yes(_)
        ));
        let store = MemoryStore::default().with(LEASE_KEY, "garbage");
        assert!(matches!(
            acquire(&store, "b", at(0), TTL).unwrap(),
            Acquired::Yes(_)
        ));
    }

    #[test]
    fn a_lost_compare_and_swap_is_busy() {
        /// A store where another writer always gets in between the read and the swap.
        struct Racing(MemoryStore);
        impl KeyValue for Racing {
            fn keys(&self) -> anyhow::Result<Vec<String>> {
                self.0.keys()
            }
            fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
                self.0.get(key)
            }
            fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
                self.0.set(key, value)
            }
            fn delete(&self, key: &str) -> anyhow::Result<()> {
                self.0.delete(key)
            }
            fn compare_and_swap(
                &self,
                _: &str,
                _: Option<&[u8]>,
                _: &[u8],
            ) -> anyhow::Result<bool> {
                Ok(false)
            }
        }
        let outcome = acquire(&Racing(MemoryStore::default()), "b", at(0), TTL).unwrap();
        assert!(matches!(outcome, Acquired::Busy { holder: None, .. }));
    }

    #[test]
    fn release_leaves_a_taken_over_lease_alone() {
        let store = MemoryStore::default();
        let Acquired::Yes(old) = acquire(&store, "slow", at(0), TTL).unwrap() else {
            panic!()
        };
        let Acquired::Yes(_new) = acquire(&store, "next", at(400), TTL).unwrap() else {
            panic!()
        };
        release(&store, old, at(401)).unwrap();
        assert!(store.text(LEASE_KEY).unwrap().contains("\"next\""));
    }
}
