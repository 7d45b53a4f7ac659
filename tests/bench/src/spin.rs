//! One cron tick in the real Spin: `spin up` of a copy of the project's manifest whose
//! cron trigger fires exactly once, at a chosen second.
//!
//! Why once: the cron plugin starts a tick on schedule even while the previous one runs
//! (the late one only logs `lease_busy`), so any repeating schedule faster than the
//! slowest tick would overlap the tick being measured. A manifest whose
//! `cron_expression` names one second of the day (`S M H * * *`, UTC) runs exactly one
//! tick in this `spin up`; the tick after it (the idle tick) runs in a second `spin up`
//! on the same state, after one unmeasured idle tick of its own, so that it runs in a
//! process that has run a tick before, as every tick but the first does in production.
//! The second is chosen far enough ahead for Spin to start (both trigger processes
//! ready, their components compiled); if Spin was not ready a second before it, the
//! attempt is abandoned before it fires and retried with a longer lead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::timeout_at;

use crate::fake_aws::{epoch_us, ISSUED_SECRETS};
use crate::procfs;

/// The project's manifest, made runnable from anywhere: component sources absolute,
/// `[component.*.build]` removed (`scripts/bench` has built already).
pub struct App {
    manifest: toml_edit::DocumentMut,
    /// The cron component's `.wasm`.
    pub cron_source: PathBuf,
    has_http_trigger: bool,
}

impl App {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut manifest: toml_edit::DocumentMut = text.parse()?;
        let base = std::path::absolute(path)?
            .parent()
            .context("the manifest's folder")?
            .to_owned();
        let components = manifest["component"]
            .as_table_like_mut()
            .context("the manifest has no [component.*]")?;
        for (_, component) in components.iter_mut() {
            let component = component
                .as_table_like_mut()
                .context("a [component.*] that is not a table")?;
            component.remove("build");
            let source = component
                .get("source")
                .and_then(|s| s.as_str())
                .context("a component whose source is not a local file")?;
            let absolute = base.join(source).display().to_string();
            component.insert("source", toml_edit::value(absolute));
        }
        let cron_component = manifest["trigger"]["cron"]
            .as_array_of_tables()
            .and_then(|triggers| triggers.iter().next())
            .and_then(|trigger| trigger.get("component")?.as_str())
            .context("the manifest has no [[trigger.cron]] with a component")?;
        let cron_source = manifest["component"][cron_component]["source"]
            .as_str()
            .context("the cron component's source")?
            .into();
        let has_http_trigger = manifest["trigger"].get("http").is_some();
        Ok(Self {
            manifest,
            cron_source,
            has_http_trigger,
        })
    }

    /// Writes `spin.toml` into `dir` with every cron trigger firing once at each of
    /// `fires` (one trigger table per time: a cron expression cannot name two seconds
    /// in different minutes without also naming their cross product).
    fn write(&self, dir: &Path, fires: &[SystemTime]) -> anyhow::Result<PathBuf> {
        let mut manifest = self.manifest.clone();
        if let Some(triggers) = manifest["trigger"]["cron"].as_array_of_tables_mut() {
            let mut scheduled = toml_edit::ArrayOfTables::new();
            for trigger in triggers.iter() {
                for fire in fires {
                    let at = DateTime::<Utc>::from(*fire).format("%S %M %H * * *");
                    let mut trigger = trigger.clone();
                    trigger.insert("cron_expression", toml_edit::value(at.to_string()));
                    scheduled.push(trigger);
                }
            }
            *triggers = scheduled;
        }
        let path = dir.join("spin.toml");
        std::fs::write(&path, manifest.to_string())?;
        Ok(path)
    }
}

/// Which Spin runs the ticks, e.g. `spin 4.0.2 (bfc7543b 2026-06-23), trigger-cron 0.5.0`:
/// the `spin` on `PATH` (scripts/bench puts the generation asked for there) and the cron
/// plugin in its data dir. The figures differ little between generations, but they are
/// only comparable when they say which one they are.
pub fn version() -> anyhow::Result<String> {
    let output = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("spin")
            .args(args)
            .output()
            .context("running spin (is spin on PATH? scripts/bench finds it)")?;
        anyhow::ensure!(out.status.success(), "spin {} failed", args.join(" "));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let spin = output(&["--version"])?;
    let plugins = output(&["plugins", "list", "--installed"])?;
    let cron = plugins
        .lines()
        .find_map(|line| line.strip_prefix("trigger-cron "))
        .and_then(|rest| rest.split_whitespace().next())
        .context("spin has no trigger-cron plugin")?;
    Ok(format!("{}, trigger-cron {cron}", spin.trim()))
}

/// A free loopback port (free when asked; Spin or Redis binds it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How one `spin up` is started.
pub struct Launch<'a> {
    /// Where the manifest copy goes, and `spin up`'s working directory.
    pub dir: &'a Path,
    pub state_dir: &'a Path,
    pub runtime_config: &'a Path,
    /// `--key-value` pairs (`key=value`).
    pub key_values: &'a [String],
    /// `SPIN_VARIABLE_*` and the store's own (the shim).
    pub env: Vec<(String, String)>,
    /// Run one unmeasured tick first, [`WARM_UP_GAP`] before the measured one.
    pub warm_up: bool,
}

/// How long before the measured tick the warm-up tick fires: ample for an idle tick.
const WARM_UP_GAP: Duration = Duration::from_secs(2);

/// What the component reported for its tick.
#[derive(Debug, Clone)]
pub enum Outcome {
    Finished {
        elapsed_ms: u64,
        rotated: u64,
        failed: u64,
        deferred: u64,
    },
    /// The tick did not run through: `lease_busy`, `tick_failed`, a timeout, Spin exiting.
    NotRun(String),
}

/// One measured tick.
pub struct Measured {
    pub outcome: Outcome,
    /// CPU time of the whole `spin up` tree over the tick.
    pub cpu: Duration,
    /// Peak resident set of the cron plugin's process (`trigger-cron`), which runs the
    /// component.
    pub peak_rss_kib: Option<u64>,
    /// The tick's window on the wall clock, microseconds since the epoch: from just
    /// before the trigger fires to just after the tick's last store write.
    pub window_us: (u64, u64),
}

impl Measured {
    fn not_run(why: String) -> Self {
        Self {
            outcome: Outcome::NotRun(why),
            cpu: Duration::ZERO,
            peak_rss_kib: None,
            window_us: (0, 0),
        }
    }
}

/// Runs ticks one `spin up` at a time, learning how long Spin takes to start.
pub struct Runner {
    app: App,
    /// How far ahead of `spin up`'s start the trigger fires.
    lead: Duration,
}

/// How long after its outcome line a tick is given to release its lease.
const SETTLE: Duration = Duration::from_millis(300);
/// The longest a tick may take before it counts as hung.
const TICK_TIMEOUT: Duration = Duration::from_secs(600);

impl Runner {
    pub fn new(app: App) -> Self {
        Self {
            app,
            lead: Duration::from_secs(5),
        }
    }

    /// Starts `spin up`, lets its tick run (after the warm-up tick, if asked), measures
    /// it and stops Spin.
    pub async fn tick(&mut self, launch: &Launch<'_>) -> anyhow::Result<Measured> {
        for _ in 0..4 {
            let first = next_second(SystemTime::now() + self.lead);
            let mut fires = vec![first];
            if launch.warm_up {
                fires.push(first + WARM_UP_GAP);
            }
            let to_instant = |time: SystemTime| {
                let ahead = time.duration_since(SystemTime::now()).unwrap_or_default();
                Instant::now() + ahead
            };
            let (first, measured) = (to_instant(first), to_instant(fires[fires.len() - 1]));
            let mut spin = Spin::start(&self.app, launch, &fires).await?;
            let ready_by = first - Duration::from_secs(1);
            match spin.wait_ready(self.app.has_http_trigger, ready_by).await? {
                Some(startup) => {
                    self.lead = (startup * 2 + Duration::from_secs(1))
                        .clamp(Duration::from_secs(3), Duration::from_secs(60));
                    // The warm-up tick must be over before the measured one's window.
                    if launch.warm_up {
                        let warm_up = spin.next_outcome(measured - SETTLE).await;
                        if !matches!(warm_up, Some(Outcome::Finished { .. })) {
                            spin.stop().await;
                            let why = format!("the warm-up tick did not finish: {warm_up:?}");
                            return Ok(Measured::not_run(why));
                        }
                    }
                    return spin.measure(measured).await;
                }
                None => {
                    spin.stop().await;
                    self.lead = (self.lead * 2).min(Duration::from_secs(120));
                    eprintln!(
                        "  Spin was not ready in time; again with {} s of lead",
                        self.lead.as_secs()
                    );
                }
            }
        }
        anyhow::bail!("spin up never became ready in time")
    }
}

/// The first whole second after `time`.
fn next_second(time: SystemTime) -> SystemTime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs() + 1)
}

/// A running `spin up`, in a process group of its own so that it can be stopped with
/// all its trigger processes; the whole group is killed if it is dropped unstopped.
struct Spin {
    child: tokio::process::Child,
    pid: u32,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line seen, for the error message when something goes wrong.
    seen: Vec<String>,
    stopped: bool,
    launched: Instant,
}

impl Spin {
    async fn start(app: &App, launch: &Launch<'_>, fires: &[SystemTime]) -> anyhow::Result<Self> {
        let manifest = app.write(launch.dir, fires)?;
        let mut command = tokio::process::Command::new("spin");
        command
            .arg("up")
            .arg("-f")
            .arg(&manifest)
            .arg("--state-dir")
            .arg(launch.state_dir)
            .arg("--runtime-config-file")
            .arg(launch.runtime_config);
        for pair in launch.key_values {
            command.arg("--key-value").arg(pair);
        }
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                command.env_remove(name);
            }
        }
        // `spin up --listen` would also reach the cron plugin, which refuses the flag
        // and stops the whole app; the HTTP trigger reads this variable instead.
        command.env(
            "SPIN_HTTP_LISTEN_ADDR",
            format!("127.0.0.1:{}", free_port()?),
        );
        // The cron plugin logs "Job scheduler started" at info level.
        command.env("RUST_LOG", "trigger_cron=info");
        command.envs(launch.env.iter().map(|(k, v)| (k, v)));
        let mut child = command
            .current_dir(launch.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("starting spin up (is spin on PATH? scripts/bench finds it)")?;
        let pid = child.id().context("spin up's pid")?;
        let (sender, lines) = mpsc::unbounded_channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            child,
            pid,
            lines,
            seen: Vec::new(),
            stopped: false,
            launched: Instant::now(),
        })
    }

    /// The next line, unless `deadline` comes first or Spin has closed both outputs.
    async fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let line = timeout_at(deadline.into(), self.lines.recv())
            .await
            .ok()??;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Waits until the cron scheduler runs (and the HTTP trigger serves, when the app has
    /// one); `None` if that took past `deadline`. Answers how long start-up took.
    async fn wait_ready(
        &mut self,
        needs_http: bool,
        deadline: Instant,
    ) -> anyhow::Result<Option<Duration>> {
        let (mut cron, mut http) = (false, !needs_http);
        while !(cron && http) {
            let Some(line) = self.next_line(deadline).await else {
                if Instant::now() < deadline {
                    let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                    anyhow::bail!("spin up exited while starting:\n{}", self.tail());
                }
                return Ok(None);
            };
            cron |= line.contains("Job scheduler started");
            http |= line.starts_with("Serving http://");
        }
        Ok(Some(self.launched.elapsed()))
    }

    /// Measures the tick that fires at `fire`, then stops Spin.
    async fn measure(mut self, fire: Instant) -> anyhow::Result<Measured> {
        // Start-up is over; what the tree does from here on is the tick.
        tokio::time::sleep_until((fire - SETTLE).into()).await;
        let from_us = epoch_us(SystemTime::now());
        let cpu_before = procfs::cpu_time(&procfs::tree(self.pid));
        let deadline = fire + TICK_TIMEOUT;
        let outcome = match self.next_outcome(deadline).await {
            Some(outcome) => outcome,
            None if Instant::now() >= deadline => Outcome::NotRun(format!(
                "no tick_finished within {} s",
                TICK_TIMEOUT.as_secs()
            )),
            None => Outcome::NotRun(format!("spin up exited:\n{}", self.tail())),
        };
        // The lease is given back after tick_finished.
        tokio::time::sleep(SETTLE).await;
        let tree = procfs::tree(self.pid);
        let measured = Measured {
            cpu: procfs::cpu_time(&tree).saturating_sub(cpu_before),
            peak_rss_kib: procfs::find(&tree, "trigger-cron").and_then(procfs::peak_rss_kib),
            window_us: (from_us, epoch_us(SystemTime::now())),
            outcome,
        };
        self.stop().await;
        Ok(measured)
    }

    /// The component's next verdict on a tick, unless `deadline` comes first or Spin
    /// has closed its outputs.
    async fn next_outcome(&mut self, deadline: Instant) -> Option<Outcome> {
        loop {
            if let Some(outcome) = outcome_of(&self.next_line(deadline).await?) {
                return Some(outcome);
            }
        }
    }

    /// The last lines Spin printed, without anything the fake issued as a secret.
    fn tail(&self) -> String {
        let start = self.seen.len().saturating_sub(20);
        let mut text = self.seen[start..].join("\n");
        for secret in ISSUED_SECRETS {
            text = text.replace(secret, "[redacted]");
        }
        text
    }

    /// SIGINT to the group (as Ctrl-C would), SIGKILL to whatever is left after 5 s.
    async fn stop(&mut self) {
        self.signal(libc::SIGINT);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        self.signal(libc::SIGKILL);
        let _ = self.child.wait().await;
        self.stopped = true;
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory preconditions; the group is the one spin up leads.
        unsafe { libc::kill(-(self.pid as libc::pid_t), signal) };
    }
}

impl Drop for Spin {
    fn drop(&mut self) {
        if !self.stopped {
            self.signal(libc::SIGKILL);
        }
    }
}

/// The component's verdict on its tick, if `line` is one: it logs one JSON object per
/// line, which Spin passes on (possibly behind a prefix).
fn outcome_of(line: &str) -> Option<Outcome> {
    let event: serde_json::Value = serde_json::from_str(&line[line.find('{')?..]).ok()?;
    let count = |field: &str| event[field].as_u64().unwrap_or(0);
    match event["event"].as_str()? {
        "tick_finished" => Some(Outcome::Finished {
            elapsed_ms: count("elapsed_ms"),
            rotated: count("rotated"),
            failed: count("failed"),
            deferred: count("deferred"),
        }),
        "lease_busy" => Some(Outcome::NotRun("lease_busy".into())),
        "tick_failed" => Some(Outcome::NotRun(format!(
            "tick_failed: {}",
            event["error"].as_str().unwrap_or("")
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_read_from_the_component_lines_only() {
        let finished = r#"{"time":"2026-11-28T00:08:50Z","level":"info","event":"tick_finished","accounts":5,"rotated":4,"skipped":0,"deferred":0,"failed":1,"invalid_teams":0,"elapsed_ms":13}"#;
        assert!(matches!(
            outcome_of(finished),
            Some(Outcome::Finished {
                elapsed_ms: 13,
                rotated: 4,
                failed: 1,
                deferred: 0
            })
        ));
        let busy = r#"{"time":"t","level":"warn","event":"lease_busy","holder":null}"#;
        assert!(matches!(outcome_of(busy), Some(Outcome::NotRun(why)) if why == "lease_busy"));
        let failed = r#"{"event":"tick_failed","error":"aws_region: bad"}"#;
        assert!(
            matches!(outcome_of(failed), Some(Outcome::NotRun(why)) if why == "tick_failed: aws_region: bad")
        );
        for other in [
            r#"{"event":"tick_started","teams":1}"#,
            "2026-11-28T00:08:50Z ERROR trigger_cron: Component concourse-sts failed: Error::Other(\"{x}\")",
            "Serving http://127.0.0.1:3000",
        ] {
            assert!(outcome_of(other).is_none(), "{other}");
        }
    }

    #[test]
    fn the_manifest_copy_runs_from_anywhere_and_fires_once_per_time() {
        let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spin.toml");
        let app = App::load(&project).unwrap();
        assert!(app.cron_source.is_absolute());
        let dir = std::env::temp_dir().join(format!("bench-manifest-test.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000); // 08:00:00 UTC
        let path = app.write(&dir, &[at, at + WARM_UP_GAP]).unwrap();
        let copy: toml_edit::DocumentMut = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let expressions: Vec<_> = copy["trigger"]["cron"]
            .as_array_of_tables()
            .unwrap()
            .iter()
            .map(|t| t["cron_expression"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(expressions, ["00 00 08 * * *", "02 00 08 * * *"]);
        for (_, component) in copy["component"].as_table().unwrap() {
            assert!(component.get("build").is_none());
            assert!(Path::new(component["source"].as_str().unwrap()).is_absolute());
        }
    }
}
