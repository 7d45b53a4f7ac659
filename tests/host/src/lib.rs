//! A small wasmtime host for what the real Spin 3 cannot do: run the component's command
//! entry point (`wasi:cli/run`; Spin 3 has no command trigger). It gives the component
//! what Spin does: WASI 0.2, outgoing `wasi:http`, Spin's variables and its key-value
//! store through `wasi:keyvalue`. Cron ticks, the admin API and everything else are tested
//! under the real `spin up` (tests/integration).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod outbound;

wasmtime::component::bindgen!({
    path: "wit",
    world: "command-host",
    with: {
        "wasi:keyvalue/store.bucket": KeyValueHandle,
        "wasi:keyvalue/atomics.cas": CasHandle,
    },
});

use fermyon::spin::variables;
use wasi::keyvalue::{atomics, batch, store as wasi_store};

/// The key-value store, shared by every tick of one host the way Spin shares its default
/// store between invocations.
pub type KeyValue = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// The guest's handle to an open store; only `default` exists.
pub struct KeyValueHandle;

/// A compare-and-swap in progress: the key and the value it held when it began.
pub struct CasHandle {
    key: String,
    seen: Option<Vec<u8>>,
}

/// Per-tick state, like one Spin invocation's.
struct TickState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: outbound::PooledHttp,
    table: ResourceTable,
    key_value: KeyValue,
    variables: Arc<HashMap<String, String>>,
}

impl WasiView for TickState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for TickState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl variables::Host for TickState {
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        let valid = !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(variables::Error::InvalidName(name));
        }
        self.variables
            .get(&name)
            .cloned()
            .ok_or(variables::Error::Undefined(name))
    }
}

impl wasi_store::Host for TickState {
    fn open(&mut self, identifier: String) -> Result<Resource<KeyValueHandle>, wasi_store::Error> {
        self.open_default(&identifier)
            .map_err(|e| e.map_or(wasi_store::Error::NoSuchStore, wasi_store::Error::Other))
    }
}

impl wasi_store::HostBucket for TickState {
    fn get(
        &mut self,
        _: Resource<KeyValueHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, wasi_store::Error> {
        Ok(self.entries().get(&key).cloned())
    }

    fn set(
        &mut self,
        _: Resource<KeyValueHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), wasi_store::Error> {
        self.entries().insert(key, value);
        Ok(())
    }

    fn delete(
        &mut self,
        _: Resource<KeyValueHandle>,
        key: String,
    ) -> Result<(), wasi_store::Error> {
        self.entries().remove(&key);
        Ok(())
    }

    fn exists(
        &mut self,
        _: Resource<KeyValueHandle>,
        key: String,
    ) -> Result<bool, wasi_store::Error> {
        Ok(self.entries().contains_key(&key))
    }

    fn list_keys(
        &mut self,
        _: Resource<KeyValueHandle>,
        _cursor: Option<String>,
    ) -> Result<wasi_store::KeyResponse, wasi_store::Error> {
        Ok(wasi_store::KeyResponse {
            keys: self.entries().keys().cloned().collect(),
            cursor: None,
        })
    }

    fn drop(&mut self, handle: Resource<KeyValueHandle>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl batch::Host for TickState {
    /// Answers only the keys found, as Spin's SQLite store does.
    fn get_many(
        &mut self,
        _: Resource<KeyValueHandle>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, wasi_store::Error> {
        let entries = self.entries();
        Ok(keys
            .into_iter()
            .filter_map(|key| entries.get(&key).map(|v| (key, Some(v.clone()))))
            .collect())
    }

    fn set_many(
        &mut self,
        _: Resource<KeyValueHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), wasi_store::Error> {
        self.entries().extend(key_values);
        Ok(())
    }

    fn delete_many(
        &mut self,
        _: Resource<KeyValueHandle>,
        keys: Vec<String>,
    ) -> Result<(), wasi_store::Error> {
        let mut entries = self.entries();
        for key in keys {
            entries.remove(&key);
        }
        Ok(())
    }
}

impl atomics::Host for TickState {
    fn increment(
        &mut self,
        _: Resource<KeyValueHandle>,
        key: String,
        delta: i64,
    ) -> Result<i64, wasi_store::Error> {
        let mut entries = self.entries();
        let current = entries
            .get(&key)
            .map(|v| String::from_utf8_lossy(v).parse::<i64>())
            .transpose()
            .map_err(|e| wasi_store::Error::Other(format!("{key} is not a number: {e}")))?
            .unwrap_or(0);
        let next = current.wrapping_add(delta);
        entries.insert(key, next.to_string().into_bytes());
        Ok(next)
    }

    /// Writes only if the key still holds what the `cas` saw, all under one lock.
    fn swap(&mut self, cas: Resource<CasHandle>, value: Vec<u8>) -> Result<(), atomics::CasError> {
        let handle = self
            .table
            .delete(cas)
            .map_err(|e| atomics::CasError::StoreError(wasi_store::Error::Other(e.to_string())))?;
        let mut entries = self.key_value.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(&handle.key) == handle.seen.as_ref() {
            entries.insert(handle.key, value);
            return Ok(());
        }
        let seen = entries.get(&handle.key).cloned();
        drop(entries);
        let retry = self
            .table
            .push(CasHandle {
                key: handle.key,
                seen,
            })
            .map_err(|e| atomics::CasError::StoreError(wasi_store::Error::Other(e.to_string())))?;
        Err(atomics::CasError::CasFailed(retry))
    }
}

impl atomics::HostCas for TickState {
    fn new(
        &mut self,
        _: Resource<KeyValueHandle>,
        key: String,
    ) -> Result<Resource<CasHandle>, wasi_store::Error> {
        let seen = self.entries().get(&key).cloned();
        self.table
            .push(CasHandle { key, seen })
            .map_err(|e| wasi_store::Error::Other(e.to_string()))
    }

    fn current(&mut self, cas: Resource<CasHandle>) -> Result<Option<Vec<u8>>, wasi_store::Error> {
        let handle = self
            .table
            .get(&cas)
            .map_err(|e| wasi_store::Error::Other(e.to_string()))?;
        Ok(handle.seen.clone())
    }

    fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl TickState {
    /// Opens the one store there is: `Err(None)` for any other label, `Err(Some(reason))`
    /// when the handle cannot be made.
    fn open_default(&mut self, label: &str) -> Result<Resource<KeyValueHandle>, Option<String>> {
        if label != "default" {
            return Err(None);
        }
        self.table
            .push(KeyValueHandle)
            .map_err(|e| Some(e.to_string()))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.key_value
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A compiled component, ready to run its command entry point.
pub struct Host {
    engine: Engine,
    command: CommandPre<TickState>,
    key_value: KeyValue,
    variables: Arc<HashMap<String, String>>,
    /// Shared by every instance, as Spin shares its outbound connection pool.
    outbound: outbound::PooledHttp,
}

impl Host {
    /// Compiles the component once; every tick instantiates it afresh, as Spin does.
    pub fn new(
        wasm: &Path,
        key_value: KeyValue,
        variables: HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let config = Config::new();
        let engine = Engine::new(&config)?;
        let component = Component::from_file(&engine, wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("loading component {}", wasm.display()))?;
        let mut linker = Linker::<TickState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        variables::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        wasi_store::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        atomics::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        batch::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        let instance_pre = linker.instantiate_pre(&component)?;
        // wasmtime-wasi's own command world (wasi:cli@0.2.12), as Spin's command trigger
        // binds it: the component's wasi:cli/run@0.2.0 export is found by semver.
        let command = CommandPre::new(instance_pre)?;
        Ok(Self {
            engine,
            command,
            key_value,
            variables: Arc::new(variables),
            outbound: outbound::PooledHttp::default(),
        })
    }

    pub fn key_value(&self) -> &KeyValue {
        &self.key_value
    }

    fn wasi_context(&self) -> WasiCtx {
        WasiCtx::builder().inherit_stdout().inherit_stderr().build()
    }

    fn new_store(&self) -> Store<TickState> {
        let state = TickState {
            wasi: self.wasi_context(),
            http: WasiHttpCtx::new(),
            outbound: self.outbound.clone(),
            table: ResourceTable::new(),
            key_value: self.key_value.clone(),
            variables: self.variables.clone(),
        };
        Store::new(&self.engine, state)
    }

    /// Runs the command entry point (`wasi:cli/run`), as Spin's command trigger does.
    /// The outer error is a trap; the inner one the component's failure status, whether
    /// `run` returned it or the component ended through `wasi:cli/exit` (as it does when a
    /// tick fails).
    pub async fn run_command(&self) -> anyhow::Result<Result<(), ()>> {
        let mut store = self.new_store();
        let command = self.command.instantiate_async(&mut store).await?;
        match command.wasi_cli_run().call_run(&mut store).await {
            Err(trap) => match trap.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) if exit.0 == 0 => Ok(Ok(())),
                Some(_) => Ok(Err(())),
                None => Err(trap.into()),
            },
            Ok(status) => Ok(status),
        }
    }
}
