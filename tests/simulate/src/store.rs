//! The key-value store the simulated nodes share: the unit tests' in-memory store (a true
//! compare-and-swap, counting commits: each call that is one transaction on Spin's SQLite
//! store), counting reads as well (each a round trip to Spin's Redis store, which reads
//! one key at a time). Store calls take no simulated time. What the store keeps is
//! charged to nobody; what a tick reads out of it is the tick's.

use std::cell::Cell;

use concourse_sts::store::memory::MemoryStore;
use concourse_sts::store::{KeyValue, StoreError};

use crate::memory::NOBODY;

#[derive(Default)]
pub struct SharedStore {
    inner: MemoryStore,
    reads: Cell<u64>,
}

/// What the store did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub commits: u64,
    /// Key reads and listings.
    pub reads: u64,
}

impl SharedStore {
    pub fn usage(&self) -> Usage {
        Usage {
            commits: self.inner.commits.get() as u64,
            reads: self.reads.get(),
        }
    }

    /// The bytes stored under every key that starts with `prefix`.
    pub fn sizes(&self, prefix: &str) -> Vec<usize> {
        let entries = self.inner.entries.borrow();
        let matching = entries.range(prefix.to_owned()..);
        matching
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, value)| value.len())
            .collect()
    }

    fn read(&self) {
        self.reads.set(self.reads.get() + 1);
    }
}

impl KeyValue for SharedStore {
    fn keys(&self) -> Result<Vec<String>, StoreError> {
        self.read();
        self.inner.keys()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read();
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        NOBODY.run(|| self.inner.set(key, value))
    }

    fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        NOBODY.run(|| self.inner.set_many(entries))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        NOBODY.run(|| self.inner.delete(key))
    }

    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        NOBODY.run(|| self.inner.delete_many(keys))
    }

    fn swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(), StoreError> {
        NOBODY.run(|| self.inner.swap(key, expected, new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_one_commit_and_reads_are_counted() {
        let store = SharedStore::default();
        let batch = [
            ("state/a".to_owned(), b"12".to_vec()),
            ("state/b".to_owned(), b"3".to_vec()),
        ];
        store.set_many(&batch).unwrap();
        store.swap("lease", None, b"mine").unwrap();
        store.swap("lease", None, b"theirs").unwrap();
        assert_eq!(store.get("lease").unwrap().as_deref(), Some(&b"mine"[..]));
        assert_eq!(store.sizes("state/"), [2, 1]);
        assert_eq!(
            store.usage(),
            Usage {
                commits: 2,
                reads: 1
            }
        );
    }
}
