//! Spin's key-value store through `wasi:keyvalue`: `store` for reads and writes, `batch`
//! for batched writes (Spin's SQLite store commits a `set-many` as one transaction, Redis
//! runs `MSET`), and `atomics` for compare-and-swap, whose answer is not used (see
//! [`KeyValue::swap`]).

use spin_sdk::wit::wasi::keyvalue::{atomics, batch, store};

use crate::store::{KeyValue, StoreError};

/// The component's `default` store.
pub struct SpinStore(store::Bucket);

impl SpinStore {
    pub fn open() -> Result<Self, StoreError> {
        store::open("default").map(Self).map_err(store_error)
    }
}

fn store_error(error: store::Error) -> StoreError {
    match error {
        store::Error::NoSuchStore => StoreError::Unavailable,
        store::Error::AccessDenied => StoreError::AccessDenied,
        store::Error::Other(message) => StoreError::Backend(message),
    }
}

impl KeyValue for SpinStore {
    fn keys(&self) -> Result<Vec<String>, StoreError> {
        // Spin answers with every key at once and supports no cursor.
        Ok(self.0.list_keys(None).map_err(store_error)?.keys)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key).map_err(store_error)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0.set(key, value).map_err(store_error)
    }

    fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        batch::set_many(&self.0, entries).map_err(store_error)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete(key).map_err(store_error)
    }

    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        batch::delete_many(&self.0, keys).map_err(store_error)
    }

    fn swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(), StoreError> {
        let atomic_error = |error: atomics::Error| StoreError::Backend(format!("{key}: {error:?}"));
        let cas = atomics::Cas::new(&self.0, key).map_err(atomic_error)?;
        if cas.current().map_err(atomic_error)?.as_deref() != expected {
            return Ok(());
        }
        match atomics::swap(cas, new) {
            // Spin's Redis store answers CasFailed after writing: only a read tells.
            Ok(()) | Err(atomics::CasError::CasFailed(_)) => Ok(()),
            Err(atomics::CasError::StoreError(error)) => Err(atomic_error(error)),
        }
    }
}
