//! A fast fake of STS and Secrets Manager for the benchmark: answers `AssumeRole` with
//! well-formed credentials and every Secrets Manager write with success, after a fixed
//! latency. With a quota it enforces Secrets Manager's 50 writes per second the way AWS
//! does, answering `ThrottlingException` beyond it. It checks no signature: the
//! integration tests do that against moto.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the fake has seen, served as JSON at `GET /stats`.
#[derive(Default)]
pub struct Counters {
    pub sts: AtomicU64,
    pub writes: AtomicU64,
    pub throttled: AtomicU64,
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
        if request.uri().path() == "/stats" {
            let c = &self.counters;
            let stats = format!(
                r#"{{"sts":{},"writes":{},"throttled":{}}}"#,
                c.sts.load(Ordering::Relaxed),
                c.writes.load(Ordering::Relaxed),
                c.throttled.load(Ordering::Relaxed)
            );
            return reply(200, stats);
        }
        let is_write = request.headers().contains_key("x-amz-target");
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
         <SecretAccessKey>benchbenchbenchbenchbenchbenchbenchbench</SecretAccessKey>\
         <SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>",
        "b".repeat(400),
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
