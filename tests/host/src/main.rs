//! `concourse-sts-host`: run cron ticks of the component from the command line.
//!
//! Variables come from `SPIN_VARIABLE_<NAME>` environment variables, as under `spin up`,
//! and from `--variable`; the key-value store is a JSON file that survives between runs.
//! Exit status: 0 when every tick returned `Ok`, 1 when one returned an error, 2 on a
//! trap or a host failure.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;
use concourse_sts_host::{Host, KeyValue};

#[derive(Parser)]
#[command(about = "Run concourse-sts cron ticks in a wasmtime host")]
struct Args {
    /// The component to run.
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/concourse_sts.wasm"
    )]
    wasm: PathBuf,
    /// A JSON file holding the key-value store ({"key": "value"}); created if missing.
    #[arg(long)]
    kv: Option<PathBuf>,
    /// Writes KEY=VALUE into the store before the first tick, like `spin up --key-value`.
    #[arg(long = "key-value", value_name = "KEY=VALUE")]
    key_values: Vec<String>,
    /// Sets an application variable, overriding SPIN_VARIABLE_<NAME>.
    #[arg(long = "variable", value_name = "NAME=VALUE")]
    variables: Vec<String>,
    /// How many ticks to run.
    #[arg(long, default_value_t = 1)]
    ticks: u32,
    /// Start a tick every this many milliseconds without waiting for the last one, as the
    /// cron host does; 0 runs the ticks one after another.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Shift the component's wall clock this many seconds ahead, to run a tick "later".
    #[arg(long, default_value_t = 0)]
    clock_offset: u64,
}

fn split_pair(pair: &str) -> anyhow::Result<(&str, &str)> {
    pair.split_once('=')
        .with_context(|| format!("{pair:?} is not NAME=VALUE"))
}

fn load_store(path: Option<&Path>, pairs: &[String]) -> anyhow::Result<KeyValue> {
    let mut entries = BTreeMap::new();
    if let Some(path) = path.filter(|p| p.exists()) {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let map: BTreeMap<String, String> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        entries.extend(map.into_iter().map(|(k, v)| (k, v.into_bytes())));
    }
    for pair in pairs {
        let (key, value) = split_pair(pair)?;
        entries.insert(key.to_owned(), value.as_bytes().to_vec());
    }
    Ok(Arc::new(Mutex::new(entries)))
}

fn save_store(path: &Path, store: &KeyValue) -> anyhow::Result<()> {
    let entries = store.lock().unwrap_or_else(|p| p.into_inner());
    let map: BTreeMap<&String, String> = entries
        .iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(v).into_owned()))
        .collect();
    std::fs::write(path, serde_json::to_string_pretty(&map)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn variables(pairs: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut variables: HashMap<String, String> = std::env::vars()
        .filter_map(|(name, value)| {
            let name = name.strip_prefix("SPIN_VARIABLE_")?;
            Some((name.to_ascii_lowercase(), value))
        })
        .collect();
    for pair in pairs {
        let (name, value) = split_pair(pair)?;
        variables.insert(name.to_owned(), value.to_owned());
    }
    Ok(variables)
}

/// Runs one tick and reports it on stderr.
async fn run_one(host: &Host, n: u32) -> anyhow::Result<Result<(), String>> {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let outcome = host.tick(timestamp).await;
    match &outcome {
        Ok(Ok(())) => eprintln!("host: tick {n}: ok"),
        Ok(Err(message)) => eprintln!("host: tick {n}: returned error: {message}"),
        Err(trap) => eprintln!("host: tick {n}: trapped: {trap:#}"),
    }
    outcome
}

/// Runs the ticks; returns (ticks that returned an error, ticks that trapped).
async fn run_ticks(host: Arc<Host>, ticks: u32, interval: Duration) -> (u32, u32) {
    let mut outcomes = Vec::new();
    if interval.is_zero() {
        for n in 1..=ticks {
            outcomes.push(run_one(&host, n).await);
        }
    } else {
        let handles: Vec<_> = (1..=ticks)
            .map(|n| {
                let host = host.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(interval * (n - 1)).await;
                    run_one(&host, n).await
                })
            })
            .collect();
        for handle in handles {
            outcomes.push(handle.await.unwrap_or_else(|e| Err(e.into())));
        }
    }
    let errors = outcomes.iter().filter(|o| matches!(o, Ok(Err(_)))).count();
    let traps = outcomes.iter().filter(|o| o.is_err()).count();
    (errors as u32, traps as u32)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok((0, 0)) => std::process::ExitCode::SUCCESS,
        Ok((_, 0)) => std::process::ExitCode::from(1),
        Ok(_) => std::process::ExitCode::from(2),
        Err(error) => {
            eprintln!("host: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<(u32, u32)> {
    let args = Args::parse();
    if args.ticks == 0 {
        bail!("--ticks must be at least 1");
    }
    let store = load_store(args.kv.as_deref(), &args.key_values)?;
    let host = Host::new(&args.wasm, store.clone(), variables(&args.variables)?)?
        .with_clock_offset(Duration::from_secs(args.clock_offset));
    let host = Arc::new(host);
    let result = run_ticks(host, args.ticks, Duration::from_millis(args.interval_ms)).await;
    if let Some(path) = &args.kv {
        save_store(path, &store)?;
    }
    Ok(result)
}
