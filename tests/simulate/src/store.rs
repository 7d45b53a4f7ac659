//! The key-value store the simulated nodes share: a map with a true compare-and-swap,
//! counting commits (each call that is one transaction on Spin's SQLite store) and reads
//! (each a round trip to Spin's Redis store, which reads one key at a time). Store calls
//! take no simulated time. What the store keeps is charged to nobody; what a tick reads
//! out of it is the tick's.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use concourse_sts::store::{KeyValue, StoreError};

use crate::memory::NOBODY;

#[derive(Default)]
pub struct MemoryStore {
    entries: RefCell<BTreeMap<String, Vec<u8>>>,
    commits: Cell<u64>,
    reads: Cell<u64>,
}

/// What the store did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub commits: u64,
    /// Key reads and listings.
    pub reads: u64,
}

impl MemoryStore {
    pub fn usage(&self) -> Usage {
        Usage {
            commits: self.commits.get(),
            reads: self.reads.get(),
        }
    }

    /// The bytes stored under every key that starts with `prefix`.
    pub fn sizes(&self, prefix: &str) -> Vec<usize> {
        let entries = self.entries.borrow();
        let matching = entries.range(prefix.to_owned()..);
        matching
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, value)| value.len())
            .collect()
    }

    fn commit(&self, change: impl FnOnce(&mut BTreeMap<String, Vec<u8>>)) {
        self.commits.set(self.commits.get() + 1);
        NOBODY.run(|| change(&mut self.entries.borrow_mut()));
    }

    fn read(&self) {
        self.reads.set(self.reads.get() + 1);
    }
}

impl KeyValue for MemoryStore {
    fn keys(&self) -> Result<Vec<String>, StoreError> {
        self.read();
        Ok(self.entries.borrow().keys().cloned().collect())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read();
        Ok(self.entries.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.commit(|entries| {
            entries.insert(key.to_owned(), value.to_vec());
        });
        Ok(())
    }

    fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        self.commit(|stored| stored.extend(entries.iter().cloned()));
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.delete_many(&[key.to_owned()])
    }

    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.commit(|entries| {
            for key in keys {
                entries.remove(key);
            }
        });
        Ok(())
    }

    fn swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(), StoreError> {
        if self.entries.borrow().get(key).map(Vec::as_slice) == expected {
            self.set(key, new)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_one_commit_and_reads_are_counted() {
        let store = MemoryStore::default();
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
