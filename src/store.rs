//! The key-value store as the engine needs it: team documents, per-team rotation state
//! and the tick lease. Spin's store in the component, a map in unit tests.
//!
//! Three facts of Spin's stores shape this trait. Reads go one key at a time: Spin's Redis
//! store answers `wasi:keyvalue/batch`'s `get-many` with Redis's `KEYS` command (the key
//! pattern search) instead of `MGET`, which fails for more than one key and answers key
//! names for one (Spin 3.5, `crates/key-value-redis/src/store.rs`); reads commit nothing,
//! so this costs little. Every `set` on Spin's default SQLite store
//! is a commit with fsyncs while the whole component waits, so a tick writes through
//! [`KeyValue::set_many`], one commit for any number of documents. And no store's
//! compare-and-swap answer can be trusted (Spin's Redis store reports every swap as failed
//! after writing it, and a lost race as success), so [`KeyValue::swap`] answers nothing:
//! whoever swaps reads the key back.

/// Why a key-value call failed. Nothing retries these: the tick stops and says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The component may not use the store (not in `key_value_stores`, or not configured).
    #[error("the key-value store is not available to this component")]
    Unavailable,
    #[error("access to the key-value store was denied")]
    AccessDenied,
    /// Anything the backend reported (a lost connection, a full disk).
    #[error("{0}")]
    Backend(String),
}

/// A key-value store.
pub trait KeyValue {
    fn keys(&self) -> Result<Vec<String>, StoreError>;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Writes every entry in one commit where the store has commits (Spin's SQLite store).
    fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError>;
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError>;
    /// Writes `new` if `key` holds `expected` (`None`: absent). Whether it did is not
    /// reported, because no backend reports it reliably: read the key back.
    fn swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(), StoreError>;
}

/// A store seen under a key prefix (the `store_prefix` variable): the keys outside it do
/// not exist, and every key inside is seen without the prefix. An empty prefix is the
/// store itself.
pub struct Prefixed<K> {
    inner: K,
    prefix: String,
}

impl<K: KeyValue> Prefixed<K> {
    pub fn new(inner: K, prefix: &str) -> Self {
        Self {
            inner,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn keys_of(&self, keys: &[String]) -> Vec<String> {
        keys.iter().map(|key| self.key(key)).collect()
    }
}

impl<K: KeyValue> KeyValue for Prefixed<K> {
    fn keys(&self) -> Result<Vec<String>, StoreError> {
        let keys = self.inner.keys()?;
        Ok(keys
            .into_iter()
            .filter_map(|key| key.strip_prefix(&self.prefix).map(str::to_owned))
            .collect())
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(&self.key(key))
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.set(&self.key(key), value)
    }
    fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let entries: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|(key, value)| (self.key(key), value.clone()))
            .collect();
        self.inner.set_many(&entries)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(&self.key(key))
    }
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.inner.delete_many(&self.keys_of(keys))
    }
    fn swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(), StoreError> {
        self.inner.swap(&self.key(key), expected, new)
    }
}

/// An in-memory store with a true compare-and-swap, counting its commits: the unit
/// tests' store, and under the simulator's (feature `fakes`).
#[cfg(any(test, feature = "fakes"))]
pub mod memory {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    use super::{KeyValue, StoreError};

    /// An in-memory store with a true compare-and-swap, counting its commits.
    #[derive(Default)]
    pub struct MemoryStore {
        pub entries: RefCell<BTreeMap<String, Vec<u8>>>,
        /// Calls that would each be one commit on Spin's SQLite store.
        pub commits: Cell<usize>,
    }

    impl MemoryStore {
        pub fn with(self, key: &str, value: &str) -> Self {
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), value.as_bytes().to_vec());
            self
        }

        pub fn text(&self, key: &str) -> Option<String> {
            self.entries
                .borrow()
                .get(key)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        }

        fn commit(&self) {
            self.commits.set(self.commits.get() + 1);
        }
    }

    impl KeyValue for MemoryStore {
        fn keys(&self) -> Result<Vec<String>, StoreError> {
            Ok(self.entries.borrow().keys().cloned().collect())
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.entries.borrow().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.commit();
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), value.to_vec());
            Ok(())
        }
        fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            self.commit();
            self.entries.borrow_mut().extend(entries.iter().cloned());
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.delete_many(&[key.to_owned()])
        }
        fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
            self.commit();
            let mut entries = self.entries.borrow_mut();
            for key in keys {
                entries.remove(key);
            }
            Ok(())
        }
        fn swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(), StoreError> {
            if self.entries.borrow().get(key).map(Vec::as_slice) == expected {
                self.set(key, new)?;
            }
            Ok(())
        }
    }

    impl KeyValue for &MemoryStore {
        fn keys(&self) -> Result<Vec<String>, StoreError> {
            (**self).keys()
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            (**self).get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            (**self).set(key, value)
        }
        fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            (**self).set_many(entries)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            (**self).delete(key)
        }
        fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
            (**self).delete_many(keys)
        }
        fn swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(), StoreError> {
            (**self).swap(key, expected, new)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    pub use super::memory::MemoryStore;
    use super::*;
    use std::cell::Cell;

    /// A hook into a [`RacedStore`]'s calls: the inner store and the key.
    pub type Hook = Box<dyn Fn(&MemoryStore, &str)>;

    /// A [`MemoryStore`] another writer can step into, as races do: right before a read,
    /// or right after a swap (Spin's Redis store: a swap whose answer lies).
    #[derive(Default)]
    pub struct RacedStore {
        pub inner: MemoryStore,
        pub before_get: Option<Hook>,
        pub after_swap: Option<Hook>,
        /// Reads answered so far.
        pub gets: Cell<usize>,
        /// The next this many reads fail, as a store that blinks does.
        pub failing_gets: Cell<u32>,
    }

    impl KeyValue for RacedStore {
        fn keys(&self) -> Result<Vec<String>, StoreError> {
            self.inner.keys()
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            if let Some(hook) = &self.before_get {
                hook(&self.inner, key);
            }
            if self.failing_gets.get() > 0 {
                self.failing_gets.set(self.failing_gets.get() - 1);
                return Err(StoreError::Backend("connection reset".into()));
            }
            self.gets.set(self.gets.get() + 1);
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.inner.set(key, value)
        }
        fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            self.inner.set_many(entries)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key)
        }
        fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
            self.inner.delete_many(keys)
        }
        fn swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(), StoreError> {
            self.inner.swap(key, expected, new)?;
            if let Some(hook) = &self.after_swap {
                hook(&self.inner, key);
            }
            Ok(())
        }
    }

    /// Two deployments on one store: each sees and writes only its own keys.
    #[test]
    fn a_prefixed_store_sees_only_its_own_keys() {
        let shared = MemoryStore::default()
            .with("team/unprefixed", "u")
            .with("prod/team/a", "p")
            .with("staging/team/a", "s");
        let prod = Prefixed::new(&shared, "prod/");
        assert_eq!(prod.keys().unwrap(), ["team/a"]);
        assert_eq!(prod.get("team/a").unwrap().as_deref(), Some(&b"p"[..]));
        prod.set_many(&[("state/a".into(), b"1".to_vec())]).unwrap();
        prod.swap("lease/rotation", None, b"l").unwrap();
        prod.delete_many(&["team/a".into()]).unwrap();
        assert_eq!(
            shared.entries.borrow().keys().collect::<Vec<_>>(),
            [
                "prod/lease/rotation",
                "prod/state/a",
                "staging/team/a",
                "team/unprefixed"
            ]
        );
        let all = Prefixed::new(&shared, "");
        assert_eq!(
            all.keys().unwrap().len(),
            4,
            "an empty prefix is the store itself"
        );
    }
}
