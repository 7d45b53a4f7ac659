//! The key-value store as the engine needs it: team documents, per-team rotation state
//! and the tick lease. Spin's store in the component, a map in unit tests.

/// A key-value store with one atomic operation.
pub trait KeyValue {
    fn keys(&self) -> anyhow::Result<Vec<String>>;
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;
    fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()>;
    fn delete(&self, key: &str) -> anyhow::Result<()>;
    /// Writes `new` only if `key` still holds `expected` (`None`: absent). `Ok(false)` when
    /// another writer got there first.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> anyhow::Result<bool>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// An in-memory store.
    #[derive(Default)]
    pub struct MemoryStore(pub RefCell<BTreeMap<String, Vec<u8>>>);

    impl MemoryStore {
        pub fn with(self, key: &str, value: &str) -> Self {
            self.0
                .borrow_mut()
                .insert(key.to_owned(), value.as_bytes().to_vec());
            self
        }

        pub fn text(&self, key: &str) -> Option<String> {
            self.0
                .borrow()
                .get(key)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        }
    }

    impl KeyValue for MemoryStore {
        fn keys(&self) -> anyhow::Result<Vec<String>> {
            Ok(self.0.borrow().keys().cloned().collect())
        }
        fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
            Ok(self.0.borrow().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
            self.0.borrow_mut().insert(key.to_owned(), value.to_vec());
            Ok(())
        }
        fn delete(&self, key: &str) -> anyhow::Result<()> {
            self.0.borrow_mut().remove(key);
            Ok(())
        }
        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: &[u8],
        ) -> anyhow::Result<bool> {
            let mut map = self.0.borrow_mut();
            if map.get(key).map(Vec::as_slice) != expected {
                return Ok(false);
            }
            map.insert(key.to_owned(), new.to_vec());
            Ok(true)
        }
    }
}
