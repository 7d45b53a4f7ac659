//! `concourse-sts-host`: run the component from the command line as Spin would: cron
//! ticks (the default), the command entry point (`--command`), or the admin API's HTTP
//! handler (`--serve ADDR`). `--validate FILE` checks a team document with the
//! component's own validation, natively.
//!
//! Variables come from `SPIN_VARIABLE_<NAME>` environment variables, as under `spin up`,
//! and from `--variable`; the key-value store is a JSON file that survives between runs.
//! Exit status: 0 when every run returned `Ok`, 1 when one returned an error (or a
//! document is invalid), 2 on a trap or a host failure.

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
    /// Run the command entry point (wasi:cli/run) instead of cron ticks.
    #[arg(long, conflicts_with = "serve")]
    command: bool,
    /// Serve the admin API on this address (e.g. 127.0.0.1:3000) until stopped.
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// Validate a team document file and exit (no component is run).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["serve", "command"])]
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

/// Serves the admin API until the process is stopped, saving the store after every
/// request so that other processes can read it.
async fn serve(host: Arc<Host>, address: &str, kv: Option<PathBuf>) -> anyhow::Result<(u32, u32)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let (host, kv) = (host.clone(), kv.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (host, kv) = (host.clone(), kv.clone());
                async move {
                    let response = host.handle_http(request).await;
                    if let Some(path) = &kv {
                        save_store(path, host.key_value())?;
                    }
                    response
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                eprintln!("host: connection: {error}");
            }
        });
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
    if let Some(path) = &args.validate {
        return validate(path);
    }
    if args.ticks == 0 {
        bail!("--ticks must be at least 1");
    }
    let store = load_store(args.kv.as_deref(), &args.key_values)?;
    let host = Host::new(&args.wasm, store.clone(), variables(&args.variables)?)?
        .with_clock_offset(Duration::from_secs(args.clock_offset));
    let host = Arc::new(host);
    if let Some(address) = &args.serve {
        return serve(host, address, args.kv.clone()).await;
    }
    let result = if args.command {
        match host.run_command().await {
            Ok(Ok(())) => (0, 0),
            Ok(Err(())) => (1, 0),
            Err(trap) => {
                eprintln!("host: command trapped: {trap:#}");
                (0, 1)
            }
        }
    } else {
        run_ticks(host, args.ticks, Duration::from_millis(args.interval_ms)).await
    };
    if let Some(path) = &args.kv {
        save_store(path, &store)?;
    }
    Ok(result)
}
