//! A fast fake of STS, Secrets Manager and Parameter Store for the benchmark: answers
//! `AssumeRole` with well-formed credentials and every write with success, after a fixed
//! latency. With a quota it enforces Secrets Manager's 50 writes per second the way AWS
//! does, answering `ThrottlingException` beyond it. It checks no signature: the
//! integration tests do that against moto. It runs in a child process of the benchmark,
//! on one thread, so that its CPU time is never counted as Spin's.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The credentials the fake issues. Dummies, but the benchmark still never prints them:
/// it scrubs them from any Spin output it shows.
pub const ISSUED_SECRETS: [&str; 2] = [SECRET_ACCESS_KEY, SESSION_TOKEN];
const SECRET_ACCESS_KEY: &str = "benchbenchbenchbenchbenchbenchbenchbench";
const SESSION_TOKEN: &str = concat!(
    "FwoGZXIvYXdzEBenchSessionTokenBenchSessionTokenBenchSessionTokenBenchSessionToken",
    "BenchSessionTokenBenchSessionTokenBenchSessionTokenBenchSessionTokenBenchSessionToken",
    "BenchSessionTokenBenchSessionTokenBenchSessionTokenBenchSessionTokenBenchSessionToken",
    "BenchSessionTokenBenchSessionTokenBenchSessionTokenBenchSessionTokenBenchSessionToken",
    "BenchSessionTokenBenchSessionTokenBenchSessionTokenBenchSessionTokenBenchSessionToken"
);

/// What the fake has seen, served as JSON at `GET /stats`.
#[derive(Default)]
struct Counters {
    sts: AtomicU64,
    writes: AtomicU64,
    throttled: AtomicU64,
    /// Wall-clock times (microseconds since the Unix epoch) of the first request's
    /// arrival and the last answer; 0 before any.
    first_request_us: AtomicU64,
    last_answer_us: AtomicU64,
}

/// Microseconds since the Unix epoch: comparable with the benchmark's own clock readings.
pub fn epoch_us(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

struct Fake {
    latency: Duration,
    writes_per_second: Option<usize>,
    recent_writes: Mutex<VecDeque<Instant>>,
    counters: Counters,
}

impl Fake {
    /// Admits a write unless `writes_per_second` already started within the last second.
    fn admit_write(&self) -> bool {
        let Some(limit) = self.writes_per_second else {
            return true;
        };
        let now = Instant::now();
        let mut recent = self.recent_writes.lock().unwrap_or_else(|p| p.into_inner());
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            recent.pop_front();
        }
        if recent.len() >= limit {
            return false;
        }
        recent.push_back(now);
        true
    }

    async fn answer(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let c = &self.counters;
        if request.uri().path() == "/stats" {
            let stats = format!(
                r#"{{"sts":{},"writes":{},"throttled":{},"first_request_us":{},"last_answer_us":{}}}"#,
                c.sts.load(Ordering::Relaxed),
                c.writes.load(Ordering::Relaxed),
                c.throttled.load(Ordering::Relaxed),
                c.first_request_us.load(Ordering::Relaxed),
                c.last_answer_us.load(Ordering::Relaxed),
            );
            return reply(200, stats);
        }
        let arrived = epoch_us(SystemTime::now());
        let _ =
            c.first_request_us
                .compare_exchange(0, arrived, Ordering::Relaxed, Ordering::Relaxed);
        let answer = self.aws(request).await;
        c.last_answer_us
            .fetch_max(epoch_us(SystemTime::now()), Ordering::Relaxed);
        answer
    }

    async fn aws(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let target = request.headers().get("x-amz-target").cloned();
        let is_write = target.is_some();
        let is_parameter = target.is_some_and(|t| t.as_bytes().starts_with(b"AmazonSSM."));
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        tokio::time::sleep(self.latency).await;
        if is_write {
            if !self.admit_write() {
                self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                return reply(
                    400,
                    r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into(),
                );
            }
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
            if is_parameter {
                return reply(200, r#"{"Version":1,"Tier":"Standard"}"#.into());
            }
            return reply(200, r#"{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:bench-AbCdEf","Name":"bench","VersionId":"v"}"#.into());
        }
        self.counters.sts.fetch_add(1, Ordering::Relaxed);
        reply(200, assume_role_answer(&body))
    }
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn assume_role_answer(body: &[u8]) -> String {
    let duration = String::from_utf8_lossy(body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("DurationSeconds="))
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(3600);
    let expires = chrono::Utc::now() + chrono::Duration::seconds(duration);
    format!(
        "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIABENCHBENCHBENCH0</AccessKeyId>\
         <SecretAccessKey>{SECRET_ACCESS_KEY}</SecretAccessKey>\
         <SessionToken>{SESSION_TOKEN}</SessionToken><Expiration>{}</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>",
        expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Serves the fake on a free loopback port until the process ends; returns the port.
pub async fn serve(latency: Duration, writes_per_second: Option<usize>) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let fake = Arc::new(Fake {
        latency,
        writes_per_second,
        recent_writes: Mutex::default(),
        counters: Counters::default(),
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let fake = fake.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(fake.answer(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// The fake in a child process (this binary with `--serve-fake`), killed when dropped.
pub struct FakeAws {
    _child: tokio::process::Child,
    pub port: u16,
}

/// What the fake saw: calls by kind, and when traffic began and ended.
pub struct Stats {
    pub sts: u64,
    pub writes: u64,
    pub throttled: u64,
    first_request_us: u64,
    last_answer_us: u64,
}

impl Stats {
    pub fn calls(&self) -> u64 {
        self.sts + self.writes + self.throttled
    }

    /// Seconds from the first request to the last answer.
    pub fn span_s(&self) -> f64 {
        self.last_answer_us.saturating_sub(self.first_request_us) as f64 / 1e6
    }
}

impl FakeAws {
    pub async fn start(latency_ms: u64, quota: Option<usize>) -> anyhow::Result<Self> {
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.args(["--serve-fake", "--latency-ms", &latency_ms.to_string()]);
        if let Some(quota) = quota {
            command.args(["--quota", &quota.to_string()]);
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("fake AWS stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await?;
        Ok(Self {
            _child: child,
            port: line.trim().parse().context("fake AWS port")?,
        })
    }

    pub async fn stats(&self) -> anyhow::Result<Stats> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream
            .write_all(b"GET /stats HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        let body = answer.split("\r\n\r\n").nth(1).context("stats body")?;
        let stats: serde_json::Value = serde_json::from_str(body)?;
        let field = |name: &str| stats[name].as_u64().unwrap_or(0);
        Ok(Stats {
            sts: field("sts"),
            writes: field("writes"),
            throttled: field("throttled"),
            first_request_us: field("first_request_us"),
            last_answer_us: field("last_answer_us"),
        })
    }
}
