//! The benchmark behind `scripts/bench`: cron ticks of the real component in the real
//! Spin (`spin up` with the cron trigger plugin, as users run it) against a fast fake
//! AWS (`fake_aws`, in a child process), in these modes:
//!
//! - latency: N accounts, per-request latency L, concurrency C, write pacing lifted, on
//!   Spin's default SQLite store; the median of `--runs` ticks, each from freshly
//!   registered teams;
//! - idle: the tick right after, when every account is fresh;
//! - slow disk: latency mode with every fsync/fdatasync of Spin delayed 5 ms;
//! - Redis: latency mode with Redis as the store;
//! - Parameter Store: latency mode writing into Parameter Store (`secret_sink = ssm`);
//! - Vault: latency mode writing into OpenBao's dev server (`secret_sink = vault`);
//! - quota: the fake enforces 50 Secrets Manager writes per second, the component paces
//!   at its default 40;
//! - scrape: `GET /metrics` of 2,000 teams / 10,000 accounts on SQLite
//!   (`tests/bench/scrape.py`, on the integration tests' Spin harness, with this
//!   driver's fake AWS);
//! - scale: 2,000 teams / 10,000 accounts, the idle tick and a status call on SQLite and
//!   on Redis, and the ticks that rotate them all when they come due at once at the
//!   write quota (`tests/bench/scale.py`, the same way).
//!
//! It prints its figures, then one JSON object with all of them (keys sorted) as its
//! last line. A mode whose tick did not rotate every account gets `null`, and a line
//! that says why: never a made-up number.

mod fake_aws;
mod procfs;
mod spin;
mod store;
mod vault;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};

use fake_aws::FakeAws;
use spin::{App, Launch, Outcome, Runner};
use store::{Commits, RedisServer, Store};

#[derive(Parser)]
#[command(about = "Benchmark concourse-sts ticks in the real Spin against a fake AWS")]
struct Args {
    /// The project's manifest; its cron component's source is what runs.
    #[arg(long, default_value = "spin.toml")]
    manifest: PathBuf,
    /// cargo's release component, whose size is reported as `wasm_bytes`.
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/concourse_sts.wasm"
    )]
    cargo_wasm: PathBuf,
    /// The LD_PRELOAD shim built from tests/bench/slow_sync.c.
    #[arg(long, default_value = "target/slow_sync.so")]
    shim: PathBuf,
    /// N: accounts (in teams of 10).
    #[arg(long, default_value_t = 500)]
    accounts: usize,
    /// L: latency of every request, in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// C: accounts rotated at once (max_concurrency).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Latency-mode ticks on SQLite, each from freshly registered teams; the median is
    /// reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Skip the quota mode (it takes writes/40 seconds).
    #[arg(long)]
    skip_quota: bool,
    /// Skip the slow-disk mode.
    #[arg(long)]
    skip_slow_disk: bool,
    /// Skip the Redis mode (and so the need for redis-server).
    #[arg(long)]
    skip_redis: bool,
    /// Skip the Parameter Store mode.
    #[arg(long)]
    skip_ssm: bool,
    /// Skip the scale mode (2,000 teams / 10,000 accounts: the idle tick and a status
    /// call on SQLite and Redis, the ticks that rotate them all at the write quota).
    #[arg(long)]
    skip_scale: bool,
    /// Skip the scale mode's busy ticks (about a quarter of an hour).
    #[arg(long)]
    skip_scale_busy: bool,
    /// Skip the scrape mode (GET /metrics of 2,000 teams / 10,000 accounts).
    #[arg(long)]
    skip_scrape: bool,
    /// Skip the Vault mode (and so the need for OpenBao's `bao`).
    #[arg(long)]
    skip_vault: bool,
    /// OpenBao's `bao`, for the Vault mode.
    #[arg(long, default_value = ".venv/bin/bao")]
    bao: PathBuf,
    /// Internal: serve the fake AWS and print its port.
    #[arg(long, hide = true)]
    serve_fake: bool,
    /// Internal: with --serve-fake, the writes-per-second quota.
    #[arg(long, hide = true)]
    quota: Option<usize>,
}

/// Every fsync/fdatasync of the slow disk takes this much longer.
const SLOW_SYNC: Duration = Duration::from_millis(5);
/// Secrets Manager's write quota per second, which the fake enforces in quota mode.
const AWS_WRITE_QUOTA: usize = 50;
/// The component's default write pace (`secretsmanager_writes_per_second`).
const DEFAULT_PACE: f64 = 40.0;
/// `secret_sink` of every mode but the Parameter Store one.
const SECRETS_MANAGER: &str = "secretsmanager";

/// `--key-value` pairs registering `accounts` accounts in teams of 10.
fn teams(accounts: usize) -> Vec<String> {
    (0..accounts)
        .collect::<Vec<_>>()
        .chunks(10)
        .enumerate()
        .map(|(t, chunk)| {
            let name = format!("bench-{t:03}");
            let accounts: Vec<_> = chunk
                .iter()
                .map(|i| {
                    json!({"name": format!("acct-{i}"),
                           "roleArn": format!("arn:aws:iam::123456789012:role/bench-{i}")})
                })
                .collect();
            let document = json!({"name": name, "accounts": accounts});
            format!("team/{name}={document}")
        })
        .collect()
}

/// What one tick runs against.
struct Mode {
    store: Store,
    /// Spin's state directory (logs, the SQLite store): a fresh one, or a past tick's.
    state_dir: PathBuf,
    /// Register the teams with `--key-value` (a fresh store needs it).
    register: bool,
    /// Pace writes at the component's default instead of lifting the pace.
    paced: bool,
    /// `secret_sink`: where the credentials go.
    sink: &'static str,
    /// The fake's write quota per second.
    quota: Option<usize>,
    /// Measure the second tick of this `spin up`, not the first.
    warm_up: bool,
    /// Vault's URL, for `secret_sink = vault`.
    vault: Option<String>,
}

/// One tick and all that was measured about it.
struct Tick {
    /// Spin's state directory: the idle tick runs on the last latency tick's.
    state_dir: PathBuf,
    measured: spin::Measured,
    fake: fake_aws::Stats,
    /// SQLite only.
    commits: Option<Commits>,
}

impl Tick {
    /// The component's own wall time for the tick (`elapsed_ms` of `tick_finished`), if
    /// it rotated every account; else why there is no figure.
    fn wall_s(&self, accounts: usize) -> Result<f64, String> {
        match &self.measured.outcome {
            Outcome::Finished {
                elapsed_ms,
                rotated,
                ..
            } if *rotated as usize == accounts => Ok(*elapsed_ms as f64 / 1000.0),
            Outcome::Finished {
                rotated,
                failed,
                deferred,
                ..
            } => Err(format!(
                "only {rotated} of {accounts} accounts rotated ({failed} failed, {deferred} deferred)"
            )),
            Outcome::NotRun(why) => Err(format!("no account rotated: {why}")),
        }
    }

    /// One line for the progress log on stderr.
    fn summary(&self) -> String {
        let result = match &self.measured.outcome {
            Outcome::Finished {
                elapsed_ms,
                rotated,
                failed,
                deferred,
            } => {
                format!("{elapsed_ms} ms: {rotated} rotated, {failed} failed, {deferred} deferred")
            }
            Outcome::NotRun(why) => format!("did not run: {why}"),
        };
        let commits = self
            .commits
            .map_or(String::new(), |c| format!(", {} store commits", c.during));
        format!(
            "{result}; {} AWS calls, CPU {:.2} s{commits}",
            self.fake.calls(),
            self.measured.cpu.as_secs_f64()
        )
    }
}

/// Runs the ticks, one `spin up` each, in folders under `root`.
struct Bench {
    args: Args,
    runner: Runner,
    root: PathBuf,
    ticks: usize,
}

impl Bench {
    async fn tick(&mut self, label: &str, mode: Mode) -> anyhow::Result<Tick> {
        self.ticks += 1;
        let dir = self.root.join(format!("{:02}-{label}", self.ticks));
        std::fs::create_dir_all(&dir)?;
        let fake = FakeAws::start(self.args.latency_ms, mode.quota).await?;
        let runtime_config = dir.join("runtime-config.toml");
        std::fs::write(&runtime_config, mode.store.runtime_config())?;
        let sync_log = dir.join("syncs.log");
        let mut env: Vec<(String, String)> = [
            ("AWS_ACCESS_KEY_ID", "AKIDBENCHBENCHBENCH0".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "bench-rotator-secret".to_owned()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", fake.port),
            ),
            // The documented override that admits a local endpoint (spin.toml admits AWS).
            ("ALLOWED_ENDPOINT_OVERRIDE", "http://127.0.0.1:*".to_owned()),
            ("MAX_CONCURRENCY", self.args.concurrency.to_string()),
            // Long enough that no account is deferred: the tick is measured whole.
            ("TICK_BUDGET", "60m".to_owned()),
            (
                "SECRETSMANAGER_WRITES_PER_SECOND",
                if mode.paced { "" } else { "0" }.to_owned(),
            ),
            (
                "SSM_WRITES_PER_SECOND",
                if mode.paced { "" } else { "0" }.to_owned(),
            ),
            ("SECRET_SINK", mode.sink.to_owned()),
        ]
        .into_iter()
        .chain(mode.vault.into_iter().flat_map(|url| {
            [
                ("VAULT_URL", url),
                ("VAULT_TOKEN", vault::ROOT_TOKEN.to_owned()),
                ("VAULT_WRITES_PER_SECOND", "0".to_owned()),
            ]
        }))
        .map(|(name, value)| (format!("SPIN_VARIABLE_{name}"), value))
        .collect();
        env.extend(mode.store.env(&self.args.shim, &sync_log));
        let key_values = if mode.register {
            teams(self.args.accounts)
        } else {
            Vec::new()
        };
        eprintln!("  tick {} ({label}) ...", self.ticks);
        let measured = self
            .runner
            .tick(&Launch {
                dir: &dir,
                state_dir: &mode.state_dir,
                runtime_config: &runtime_config,
                key_values: &key_values,
                env,
                warm_up: mode.warm_up,
            })
            .await?;
        let commits = matches!(mode.store, Store::Sqlite { .. }).then(|| {
            let database = store::sqlite_file(&mode.state_dir);
            store::count_commits(&sync_log, &database, measured.window_us)
        });
        let tick = Tick {
            state_dir: mode.state_dir,
            fake: fake.stats().await?,
            measured,
            commits,
        };
        eprintln!("    {}", tick.summary());
        Ok(tick)
    }

    /// A latency-mode tick (write pacing lifted) on a fresh store, into `sink`.
    async fn latency_tick(
        &mut self,
        label: &str,
        store: Store,
        sink: &'static str,
    ) -> anyhow::Result<Tick> {
        let state_dir = self.root.join(format!("state-{}", self.ticks + 1));
        let mode = Mode {
            store,
            state_dir,
            register: true,
            paced: false,
            sink,
            quota: None,
            warm_up: false,
            vault: None,
        };
        self.tick(label, mode).await
    }

    fn n(&self) -> usize {
        self.args.accounts
    }

    fn latency_s(&self) -> f64 {
        self.args.latency_ms as f64 / 1000.0
    }

    /// The floor of a latency-mode tick: `2·L·ceil(N/C)`.
    fn floor_s(&self) -> f64 {
        2.0 * self.latency_s() * (self.n() as f64 / self.args.concurrency as f64).ceil()
    }
}

/// Human lines and JSON figures, gathered mode by mode.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    figures: BTreeMap<&'static str, Value>,
}

impl Report {
    fn line(&mut self, line: String) {
        self.lines.push(line);
    }

    fn set(&mut self, key: &'static str, value: Value) {
        self.figures.insert(key, value);
    }

    /// A figure rounded to `places`, or null.
    fn set_f64(&mut self, key: &'static str, value: Option<f64>, places: i32) {
        let scale = 10f64.powi(places);
        self.set(key, json!(value.map(|v| (v * scale).round() / scale)));
    }
}

/// The one-minute load average: the figures mean little on a busy machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn or_unknown(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "?".to_owned(), format)
}

/// Latency mode on SQLite: the median of `--runs` ticks. Answers the last tick's state
/// directory, for the idle tick.
async fn latency_mode(bench: &mut Bench, report: &mut Report) -> anyhow::Result<PathBuf> {
    let (n, runs) = (bench.n(), bench.args.runs.max(1));
    let (floor, lambda) = (bench.floor_s(), 7.0 * bench.latency_s() * n as f64);
    eprintln!("latency mode, SQLite ({runs} ticks)");
    let mut ticks = Vec::new();
    for _ in 0..runs {
        let store = Store::Sqlite {
            sync_delay: Duration::ZERO,
        };
        ticks.push(bench.latency_tick("sqlite", store, SECRETS_MANAGER).await?);
    }
    // Figures only when every tick rotated every account.
    let complete = ticks.iter().all(|t| t.wall_s(n).is_ok());
    let median_of = |figure: &dyn Fn(&Tick) -> Option<f64>| {
        median(ticks.iter().filter_map(figure).collect()).filter(|_| complete)
    };
    let wall = median_of(&|t| t.wall_s(n).ok());
    let cpu_ms = median_of(&|t| Some(t.measured.cpu.as_secs_f64() * 1000.0 / n as f64));
    let calls = median_of(&|t| Some(t.fake.calls() as f64 / n as f64));
    let peak_mb = median_of(&|t| Some(t.measured.peak_rss_kib? as f64 / 1024.0));
    let commits = median_of(&|t| Some(t.commits?.during as f64));
    let aws_span = median_of(&|t| Some(t.fake.span_s()));
    let each: Vec<String> = ticks
        .iter()
        .map(|t| t.wall_s(n).map_or_else(|why| why, |w| format!("{w:.3} s")))
        .collect();
    report.line(format!(
        "latency mode, SQLite store (Spin's default): N={n} L={}ms C={}, median of {runs} ticks ({})",
        bench.args.latency_ms,
        bench.args.concurrency,
        each.join(", ")
    ));
    report.line(format!(
        "  wall {}, floor 2·L·ceil(N/C) {floor:.3} s, ratio {}",
        or_unknown(wall, |w| format!("{w:.3} s")),
        or_unknown(wall, |w| format!("{:.3}", w / floor))
    ));
    report.line(format!(
        "  Lambda 7·L·N {lambda:.1} s, speed-up {}",
        or_unknown(wall, |w| format!("{:.1}x", lambda / w))
    ));
    report.line(format!(
        "  {} API calls per account; CPU {} ms per account (spin up and its trigger processes); peak RSS {} MB (the cron plugin's process)",
        or_unknown(calls, |c| format!("{c:.2}")),
        or_unknown(cpu_ms, |c| format!("{c:.3}")),
        or_unknown(peak_mb, |p| format!("{p:.1}"))
    ));
    report.line(format!(
        "  {} store commits per tick (syncs of {}), AWS traffic from first request to last answer {}",
        or_unknown(commits, |c| format!("{c}")),
        store::SQLITE_FILE,
        or_unknown(aws_span, |s| format!("{s:.3} s"))
    ));
    if let Some(first) = ticks[0].commits {
        report.line(format!(
            "  check of the count: {} team documents registered with --key-value before the first tick, {} commits counted (the first creates the table)",
            n.div_ceil(10),
            first.before
        ));
    }
    for key in ["wall_s", "spin_sqlite_wall_s"] {
        report.set_f64(key, wall, 3);
    }
    for key in ["ratio", "spin_sqlite_ratio"] {
        report.set_f64(key, wall.map(|w| w / floor), 3);
    }
    report.set_f64("lower_bound_s", Some(floor), 3);
    report.set_f64("lambda_s", Some(lambda), 1);
    report.set_f64("speedup", wall.map(|w| lambda / w), 1);
    report.set_f64("calls_per_account", calls, 2);
    report.set_f64("cpu_ms_per_account", cpu_ms, 3);
    report.set_f64("peak_rss_mb", peak_mb, 1);
    report.set("store_commits_per_tick", json!(commits.map(|c| c as u64)));
    Ok(ticks.pop().context("a latency tick")?.state_dir)
}

/// The tick right after, on the same store: every account fresh. It runs in a new
/// `spin up`, after one unmeasured idle tick there, so that its process is warm.
async fn idle_mode(
    bench: &mut Bench,
    report: &mut Report,
    state_dir: PathBuf,
) -> anyhow::Result<()> {
    eprintln!("idle tick");
    let mode = Mode {
        store: Store::Sqlite {
            sync_delay: Duration::ZERO,
        },
        state_dir,
        register: false,
        paced: false,
        sink: SECRETS_MANAGER,
        quota: None,
        warm_up: true,
        vault: None,
    };
    let idle = bench.tick("idle", mode).await?;
    let wall_ms = match &idle.measured.outcome {
        Outcome::Finished {
            elapsed_ms,
            rotated: 0,
            ..
        } => {
            report.line(format!(
                "idle tick right after: wall {elapsed_ms} ms, {} AWS calls, {} store commits",
                idle.fake.calls(),
                idle.commits.map_or(0, |c| c.during)
            ));
            Some(*elapsed_ms as f64)
        }
        Outcome::Finished { rotated, .. } => {
            report.line(format!(
                "idle tick right after: not idle, it rotated {rotated} accounts"
            ));
            None
        }
        Outcome::NotRun(why) => {
            report.line(format!("idle tick right after: did not run: {why}"));
            None
        }
    };
    for key in ["idle_wall_ms", "spin_idle_wall_ms"] {
        report.set_f64(key, wall_ms, 1);
    }
    report.set("idle_calls", json!(idle.fake.calls()));
    Ok(())
}

/// A latency-mode tick on another store than plain SQLite.
struct Variant {
    label: &'static str,
    /// The JSON keys of its wall time and ratio.
    keys: [&'static str; 2],
    /// What a `lease_busy` outcome means on this store.
    lease_busy: &'static str,
}

const SLOW_DISK: Variant = Variant {
    label: "slow disk (SQLite, every fsync/fdatasync of spin up delayed 5 ms)",
    keys: ["spin_slow_disk_wall_s", "spin_slow_disk_ratio"],
    lease_busy: "",
};

const REDIS: Variant = Variant {
    label: "Redis store",
    keys: ["spin_redis_wall_s", "spin_redis_ratio"],
    lease_busy: " (Spin's Redis CAS bug, issue #10: every compare-and-swap reports failure)",
};

const SSM: Variant = Variant {
    label: "Parameter Store sink (secret_sink=ssm, SQLite store, its pace lifted)",
    keys: ["spin_ssm_wall_s", "spin_ssm_ratio"],
    lease_busy: "",
};

const VAULT: Variant = Variant {
    label: "Vault sink (secret_sink=vault, OpenBao's dev server with KV v2, SQLite store, its pace lifted)",
    keys: ["spin_vault_wall_s", "spin_vault_ratio"],
    lease_busy: "",
};

/// A latency-mode tick into OpenBao's dev server: AWS answers after L as in every mode,
/// Vault as fast as a local OpenBao does (a metadata read and a check-and-set write per
/// secret, and the labels on a new one).
async fn vault_mode(bench: &mut Bench) -> anyhow::Result<Tick> {
    eprintln!("Vault");
    let server = vault::OpenBao::start(&bench.args.bao).await?;
    let mode = Mode {
        store: Store::Sqlite {
            sync_delay: Duration::ZERO,
        },
        state_dir: bench.root.join("state-vault"),
        register: true,
        paced: false,
        sink: "vault",
        quota: None,
        warm_up: false,
        vault: Some(server.url.clone()),
    };
    bench.tick("vault", mode).await
}

/// Reports a variant's tick (`None`: skipped) against the latency floor.
fn report_variant(bench: &Bench, report: &mut Report, variant: &Variant, tick: Option<Tick>) {
    let label = variant.label;
    let floor = bench.floor_s();
    let wall = tick.as_ref().and_then(|t| t.wall_s(bench.n()).ok());
    match (&tick, wall) {
        (None, _) => report.line(format!("{label}: skipped")),
        (Some(tick), Some(wall)) => report.line(format!(
            "{label}: wall {wall:.3} s, ratio {:.3}{}",
            wall / floor,
            tick.commits
                .map_or(String::new(), |c| format!(", {} store commits", c.during))
        )),
        (Some(tick), None) => {
            let busy =
                matches!(&tick.measured.outcome, Outcome::NotRun(why) if why == "lease_busy");
            let note = if busy { variant.lease_busy } else { "" };
            let why = tick.wall_s(bench.n()).err().unwrap_or_default();
            report.line(format!("{label}: {why}{note}"));
        }
    }
    report.set_f64(variant.keys[0], wall, 3);
    report.set_f64(variant.keys[1], wall.map(|w| w / floor), 3);
}

/// The fake enforces AWS's write quota; the component paces itself at its default.
async fn quota_mode(bench: &mut Bench, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("quota mode");
    let mode = Mode {
        store: Store::Sqlite {
            sync_delay: Duration::ZERO,
        },
        state_dir: bench.root.join("state-quota"),
        register: true,
        paced: true,
        sink: SECRETS_MANAGER,
        quota: Some(AWS_WRITE_QUOTA),
        warm_up: false,
        vault: None,
    };
    let tick = bench.tick("quota", mode).await?;
    let floor = tick.fake.writes as f64 / DEFAULT_PACE;
    let wall = tick.wall_s(bench.n());
    match &wall {
        Ok(wall) => report.line(format!(
            "quota mode: wall {wall:.2} s, floor writes/40 {floor:.2} s, ratio {:.3}, {} of {} writes throttled",
            wall / floor,
            tick.fake.throttled,
            tick.fake.writes + tick.fake.throttled
        )),
        Err(why) => report.line(format!("quota mode: {why}")),
    }
    let wall = wall.ok();
    report.set_f64("quota_wall_s", wall, 3);
    report.set_f64("quota_floor_s", wall.map(|_| floor), 3);
    report.set("throttled_requests", json!(tick.fake.throttled));
    Ok(())
}

/// A mode measured by a Python script beside the driver, on the integration tests' Spin
/// harness, with this driver's fake AWS: its lines go into the report, the figures of
/// its last line into the JSON.
struct PythonMode {
    name: &'static str,
    /// Relative to the manifest's project.
    script: &'static str,
    figures: &'static [&'static str],
    skip: bool,
    args: Vec<&'static str>,
}

/// `GET /metrics` of 2,000 teams / 10,000 accounts on SQLite.
fn scrape(args: &Args) -> PythonMode {
    PythonMode {
        name: "scrape",
        script: "tests/bench/scrape.py",
        figures: &[
            "metrics_scrape_ms",
            "metrics_scrape_bytes",
            "metrics_scrape_series",
            "metrics_scrape_teams",
            "metrics_scrape_accounts",
        ],
        skip: args.skip_scrape,
        args: Vec::new(),
    }
}

/// 2,000 teams / 10,000 accounts: the idle tick and a status call on SQLite and Redis,
/// and the ticks that rotate them all at AWS's write quota.
fn scale(args: &Args) -> PythonMode {
    let mut flags = Vec::new();
    if args.skip_redis {
        flags.push("--skip-redis");
    }
    if args.skip_scale_busy {
        flags.push("--skip-busy");
    }
    PythonMode {
        name: "scale",
        script: "tests/bench/scale.py",
        figures: &[
            "scale_teams",
            "scale_accounts",
            "spin_idle_10k_ms_sqlite",
            "spin_status_10k_ms_sqlite",
            "spin_rotate_10k_s_sqlite",
            "spin_idle_10k_ms_redis",
            "spin_status_10k_ms_redis",
            "spin_rotate_10k_s_redis",
            "spin_busy_10k_ticks",
            "spin_busy_10k_tick_s",
            "spin_busy_10k_throttled",
        ],
        skip: args.skip_scale,
        args: flags,
    }
}

async fn python_mode(bench: &Bench, report: &mut Report, mode: PythonMode) -> anyhow::Result<()> {
    let mut figures = serde_json::Map::new();
    if mode.skip {
        report.line(format!("{} mode: skipped", mode.name));
    } else {
        eprintln!("{} mode", mode.name);
        let project = bench.args.manifest.parent().unwrap_or(Path::new("."));
        let output = tokio::process::Command::new("python3")
            .arg(project.join(mode.script))
            .arg("--driver")
            .arg(std::env::current_exe()?)
            .args(&mode.args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .with_context(|| format!("running {} with python3", mode.script))?;
        anyhow::ensure!(output.status.success(), "the {} mode failed", mode.name);
        let text = String::from_utf8(output.stdout)?;
        let mut lines: Vec<&str> = text.lines().collect();
        figures = serde_json::from_str(lines.pop().context("no figures")?)?;
        lines
            .into_iter()
            .for_each(|line| report.line(line.to_owned()));
    }
    for key in mode.figures {
        report.set(key, figures.remove(*key).unwrap_or(Value::Null));
    }
    Ok(())
}

async fn bench(mut args: Args, root: &Path) -> anyhow::Result<()> {
    let app = App::load(&args.manifest)?;
    // LD_PRELOAD needs an absolute path: spin up runs in another folder.
    args.shim = std::path::absolute(&args.shim)?;
    anyhow::ensure!(
        args.shim.is_file(),
        "{} is missing (scripts/bench builds it with cc)",
        args.shim.display()
    );
    let wasm_bytes = std::fs::metadata(&args.cargo_wasm)
        .with_context(|| format!("{} (scripts/bench builds it)", args.cargo_wasm.display()))?
        .len();
    let load_at_start = load_average();
    let spin_version = spin::version()?;
    let mut report = Report::default();
    report.line(format!("spin: {spin_version}"));
    report.set("spin", json!(spin_version));
    report.line(format!(
        "component: {} ({} bytes); cargo's {}: wasm_bytes {wasm_bytes}, {} the 1 MiB bound (1048576)",
        app.cron_source.display(),
        std::fs::metadata(&app.cron_source).map_or(0, |m| m.len()),
        args.cargo_wasm.display(),
        if wasm_bytes < 1 << 20 { "under" } else { "OVER" }
    ));
    report.set("wasm_bytes", json!(wasm_bytes));
    report.set("n", json!(args.accounts));
    report.set("latency_ms", json!(args.latency_ms));
    report.set("concurrency", json!(args.concurrency));
    let mut bench = Bench {
        args,
        runner: Runner::new(app),
        root: root.to_owned(),
        ticks: 0,
    };

    let state_dir = latency_mode(&mut bench, &mut report).await?;
    idle_mode(&mut bench, &mut report, state_dir).await?;

    let slow = if bench.args.skip_slow_disk {
        None
    } else {
        eprintln!("slow disk");
        let store = Store::Sqlite {
            sync_delay: SLOW_SYNC,
        };
        Some(
            bench
                .latency_tick("slow-disk", store, SECRETS_MANAGER)
                .await?,
        )
    };
    report_variant(&bench, &mut report, &SLOW_DISK, slow);

    let redis = if bench.args.skip_redis {
        None
    } else {
        eprintln!("Redis");
        let server = RedisServer::start(&bench.root.join("redis")).await?;
        let store = Store::Redis {
            url: server.url.clone(),
        };
        Some(bench.latency_tick("redis", store, SECRETS_MANAGER).await?)
    };
    report_variant(&bench, &mut report, &REDIS, redis);

    let ssm = if bench.args.skip_ssm {
        None
    } else {
        eprintln!("Parameter Store");
        let store = Store::Sqlite {
            sync_delay: Duration::ZERO,
        };
        Some(bench.latency_tick("ssm", store, "ssm").await?)
    };
    report_variant(&bench, &mut report, &SSM, ssm);

    let vault = match bench.args.skip_vault {
        true => None,
        false => Some(vault_mode(&mut bench).await?),
    };
    report_variant(&bench, &mut report, &VAULT, vault);

    if bench.args.skip_quota {
        report.line("quota mode: skipped".into());
        for key in ["quota_wall_s", "quota_floor_s", "throttled_requests"] {
            report.set(key, Value::Null);
        }
    } else {
        quota_mode(&mut bench, &mut report).await?;
    }
    python_mode(&bench, &mut report, scrape(&bench.args)).await?;
    python_mode(&bench, &mut report, scale(&bench.args)).await?;

    report.line(format!(
        "machine: {} cores, load average {load_at_start} at the start, {} at the end",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    ));
    for line in &report.lines {
        println!("{line}");
    }
    println!("{}", serde_json::to_string(&report.figures)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: the driver mostly waits, and the fake AWS (a child process) answers a
    // few thousand small requests a second on one core, leaving the other to Spin.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if args.serve_fake {
            let latency = Duration::from_millis(args.latency_ms);
            println!("{}", fake_aws::serve(latency, args.quota).await?);
            std::future::pending::<()>().await;
        }
        let root = std::env::temp_dir().join(format!("concourse-sts-bench.{}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        // Ctrl-C drops the bench, and with it every Spin, fake and Redis it started.
        let result = tokio::select! {
            result = bench(args, &root) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        match &result {
            Ok(()) => std::fs::remove_dir_all(&root)?,
            Err(_) => eprintln!(
                "Spin's manifests, state and logs are kept in {}",
                root.display()
            ),
        }
        result
    })
}
