//! `concourse-sts-host`: runs the component's command entry point (`wasi:cli/run`) as
//! Spin's command trigger does, for what the real Spin 3 cannot run (it has no command
//! trigger; cron ticks and the admin API are tested under `spin up`). `--validate FILE`
//! checks a team document with the component's own validation, natively.
//!
//! Variables come from `SPIN_VARIABLE_<NAME>` environment variables, as under `spin up`,
//! and from `--variable`; the key-value store is a JSON file that survives between runs.
//! Exit status: 0 when the run returned `Ok`, 1 when it returned an error or exited with a
//! failure status (or a document is invalid), 2 on a trap or a host failure.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use concourse_sts_host::{Host, KeyValue};

#[derive(Parser)]
#[command(about = "Run concourse-sts's command entry point (wasi:cli/run) in a wasmtime host")]
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
    /// Writes KEY=VALUE into the store before the run, like `spin up --key-value`.
    #[arg(long = "key-value", value_name = "KEY=VALUE")]
    key_values: Vec<String>,
    /// Sets an application variable, overriding SPIN_VARIABLE_<NAME>.
    #[arg(long = "variable", value_name = "NAME=VALUE")]
    variables: Vec<String>,
    /// Validate a team document file and exit (no component is run).
    #[arg(long, value_name = "FILE")]
    validate: Option<PathBuf>,
}

/// Checks a team file with the same code the component runs: 0 when valid, 1 if not.
fn validate(path: &Path) -> anyhow::Result<(u32, u32)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_owned))
        .unwrap_or_default();
    match concourse_sts::config::parse_team(&format!("team/{name}"), &bytes) {
        Ok(team) => {
            println!(
                "{}",
                serde_json::json!({"valid": true, "team": team.name, "accounts": team.accounts.len()})
            );
            Ok((0, 0))
        }
        Err(invalid) => {
            println!(
                "{}",
                serde_json::json!({"valid": false, "team": name, "problems": invalid.problems})
            );
            Ok((1, 0))
        }
    }
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
    if let Some(path) = &args.validate {
        return validate(path);
    }
    let store = load_store(args.kv.as_deref(), &args.key_values)?;
    let host = Host::new(&args.wasm, store.clone(), variables(&args.variables)?)?;
    let result = match host.run_command().await {
        Ok(Ok(())) => (0, 0),
        Ok(Err(())) => (1, 0),
        Err(trap) => {
            eprintln!("host: command trapped: {trap:#}");
            (0, 1)
        }
    };
    if let Some(path) = &args.kv {
        save_store(path, &store)?;
    }
    Ok(result)
}
