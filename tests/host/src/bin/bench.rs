//! The benchmark behind `scripts/bench`: one tick of the real `.wasm` in the project's
//! host against a fast fake AWS (`fake_aws`, in a child process so that the host's CPU
//! time is the host's alone), in three modes:
//!
//! - latency: N accounts, per-request latency L, concurrency C, write pacing lifted;
//! - idle: the tick right after, when every account is fresh;
//! - quota: the fake enforces 50 Secrets Manager writes per second, the component paces
//!   at its default 40.
//!
//! It prints its figures, then one JSON object with all of them as its last line.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use concourse_sts_host::{fake_aws, Host};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[derive(Parser, Clone)]
#[command(about = "Benchmark one concourse-sts tick against a fake AWS")]
struct Args {
    #[arg(long, default_value = "target/concourse-sts.wasm")]
    wasm: PathBuf,
    /// cargo's component before wasm-opt, whose size is printed beside it.
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/concourse_sts.wasm"
    )]
    cargo_wasm: PathBuf,
    /// N: accounts (in teams of 10).
    #[arg(long, default_value_t = 500)]
    accounts: usize,
    /// L: latency of every request, in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// C: accounts rotated at once (max_concurrency).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Latency-mode runs, each from freshly registered teams; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip the quota mode (it takes writes/40 seconds).
    #[arg(long)]
    skip_quota: bool,
    /// Run the host on tokio's multi-threaded runtime, as Spin does, instead of one
    /// thread. On a small machine the threads mostly hand wake-ups to each other, which
    /// adds host CPU time that is not the component's (about a fifth on 2 cores).
    #[arg(long)]
    multi_thread: bool,
    /// Internal: serve the fake AWS and print its port.
    #[arg(long, hide = true)]
    serve_fake: bool,
    /// Internal: with --serve-fake, the writes-per-second quota.
    #[arg(long, hide = true)]
    quota: Option<usize>,
}

/// The fake AWS in a child process.
struct FakeAws {
    /// Held so the fake is killed when the benchmark drops it.
    _child: tokio::process::Child,
    port: u16,
}

impl FakeAws {
    async fn start(latency_ms: u64, quota: Option<usize>) -> anyhow::Result<Self> {
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.args(["--serve-fake", "--latency-ms", &latency_ms.to_string()]);
        if let Some(quota) = quota {
            command.args(["--quota", &quota.to_string()]);
        }
        let mut child = command.stdout(Stdio::piped()).kill_on_drop(true).spawn()?;
        let stdout = child.stdout.take().context("fake AWS stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await?;
        Ok(Self {
            _child: child,
            port: line.trim().parse().context("fake AWS port")?,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (AssumeRole calls, writes accepted, writes throttled) so far.
    async fn stats(&self) -> anyhow::Result<(u64, u64, u64)> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream
            .write_all(b"GET /stats HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        let body = answer.split("\r\n\r\n").nth(1).context("stats body")?;
        let stats: serde_json::Value = serde_json::from_str(body)?;
        let field = |name: &str| stats[name].as_u64().unwrap_or(0);
        Ok((field("sts"), field("writes"), field("throttled")))
    }
}

fn teams(accounts: usize) -> BTreeMap<String, Vec<u8>> {
    let mut store = BTreeMap::new();
    for (t, chunk) in (0..accounts).collect::<Vec<_>>().chunks(10).enumerate() {
        let name = format!("bench-{t:03}");
        let accounts: Vec<_> = chunk
            .iter()
            .map(|i| json!({"name": format!("acct-{i}"), "roleArn": format!("arn:aws:iam::123456789012:role/concourse-ci-{i}")}))
            .collect();
        let document = json!({"name": name, "accounts": accounts}).to_string();
        store.insert(format!("team/{name}"), document.into_bytes());
    }
    store
}

fn prepare_host(
    wasm: &Path,
    fake: &FakeAws,
    args: &Args,
    writes_per_second: u32,
) -> anyhow::Result<Host> {
    let variables: HashMap<String, String> = [
        ("aws_access_key_id", "AKIDBENCH".to_owned()),
        ("aws_secret_access_key", "bench-secret".to_owned()),
        ("aws_endpoint_url", fake.url()),
        ("max_concurrency", args.concurrency.to_string()),
        ("tick_budget", "60m".to_owned()),
        (
            "secretsmanager_writes_per_second",
            writes_per_second.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(Host::new(wasm, Arc::new(Mutex::new(teams(args.accounts))), variables)?.quiet())
}

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The process's peak resident set, from /proc/self/status.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn tick(host: &Host) -> anyhow::Result<Duration> {
    let started = Instant::now();
    match host.tick(0).await? {
        Ok(()) => Ok(started.elapsed()),
        Err(message) => anyhow::bail!("the tick failed: {message}"),
    }
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let n = args.accounts as f64;
    let latency = args.latency_ms as f64 / 1000.0;
    let wasm_bytes = std::fs::metadata(&args.wasm)
        .with_context(|| {
            format!(
                "{} (run scripts/bench, which builds it)",
                args.wasm.display()
            )
        })?
        .len();

    let fake = FakeAws::start(args.latency_ms, None).await?;
    let host = prepare_host(&args.wasm, &fake, &args, 0)?;
    // Each run starts from the freshly registered teams; the median run is reported.
    let mut runs = Vec::new();
    for _ in 0..args.runs.max(1) {
        *host.key_value().lock().unwrap_or_else(|p| p.into_inner()) = teams(args.accounts);
        let cpu_before = cpu_time();
        let wall = tick(&host).await?.as_secs_f64();
        runs.push((wall, (cpu_time() - cpu_before).as_secs_f64()));
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let wall = median(runs.iter().map(|run| run.0).collect());
    let cpu = median(runs.iter().map(|run| run.1).collect());
    let (sts, writes, throttled) = fake.stats().await?;
    let calls = (sts + writes + throttled) as f64 / runs.len() as f64;
    let lower_bound = 2.0 * latency * (n / args.concurrency as f64).ceil();
    let lambda = 7.0 * latency * n;
    println!(
        "latency mode: N={} L={}ms C={}, median of {} runs, {} runtime",
        args.accounts,
        args.latency_ms,
        args.concurrency,
        runs.len(),
        if args.multi_thread {
            "multi-threaded"
        } else {
            "single-threaded"
        }
    );
    println!(
        "  wall {wall:.3}s, floor 2·L·ceil(N/C) {lower_bound:.3}s, ratio {:.3}",
        wall / lower_bound
    );
    println!(
        "  Lambda 7·L·N {lambda:.1}s, speed-up {:.1}x",
        lambda / wall
    );
    println!(
        "  {:.2} API calls per account, host CPU {:.3} ms per account",
        calls / n,
        cpu * 1000.0 / n
    );

    let idle = tick(&host).await?.as_secs_f64();
    let (sts2, writes2, throttled2) = fake.stats().await?;
    let idle_calls = (sts2 + writes2 + throttled2 - sts - writes - throttled) as f64;
    println!(
        "idle mode: wall {:.1} ms, {idle_calls} AWS calls",
        idle * 1000.0
    );
    drop(host);
    drop(fake);

    let (quota_wall, quota_floor, quota_throttled) = if args.skip_quota {
        (None, None, None)
    } else {
        let fake = FakeAws::start(args.latency_ms, Some(50)).await?;
        let host = prepare_host(&args.wasm, &fake, &args, 40)?;
        let wall = tick(&host).await?.as_secs_f64();
        let (_, writes, throttled) = fake.stats().await?;
        let floor = writes as f64 / 40.0;
        println!(
            "quota mode: wall {wall:.2}s, floor writes/40 {floor:.2}s, ratio {:.3}, {throttled} of {} writes throttled",
            wall / floor,
            writes + throttled
        );
        (Some(round(wall, 3)), Some(round(floor, 3)), Some(throttled))
    };

    let peak = peak_rss_mb();
    let cargo_bytes = std::fs::metadata(&args.cargo_wasm).map(|m| m.len()).ok();
    println!(
        "peak RSS {peak:.1} MB, .wasm {wasm_bytes} bytes ({} KiB; cargo's output before wasm-opt: {} bytes)",
        wasm_bytes / 1024,
        cargo_bytes.map_or("unknown".to_owned(), |b| b.to_string())
    );
    let figures = json!({
        "n": args.accounts,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "wall_s": round(wall, 3),
        "lower_bound_s": round(lower_bound, 3),
        "ratio": round(wall / lower_bound, 3),
        "lambda_s": round(lambda, 1),
        "speedup": round(lambda / wall, 1),
        "calls_per_account": round(calls / n, 2),
        "cpu_ms_per_account": round(cpu * 1000.0 / n, 3),
        "peak_rss_mb": round(peak, 1),
        "wasm_bytes": wasm_bytes,
        "cargo_wasm_bytes": cargo_bytes,
        "idle_wall_ms": round(idle * 1000.0, 1),
        "idle_calls": idle_calls,
        "quota_wall_s": quota_wall,
        "quota_floor_s": quota_floor,
        "throttled_requests": quota_throttled,
    });
    println!("{figures}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The fake AWS (a child process, not measured, started without --multi-thread) runs
    // on one thread, leaving the other core to the host; it answers a few thousand small
    // requests a second.
    let runtime = if args.multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()?;
    runtime.block_on(async {
        if args.serve_fake {
            let port = fake_aws::serve(Duration::from_millis(args.latency_ms), args.quota).await?;
            println!("{port}");
            std::future::pending::<()>().await;
        }
        bench(args).await
    })
}
