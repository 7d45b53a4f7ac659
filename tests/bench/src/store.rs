//! The key-value stores a tick runs against, and the count of SQLite commits.
//!
//! - SQLite, Spin's default: no `[key_value_store.default]` in the runtime config, so
//!   the store is `<state-dir>/sqlite_key_value.db`. Every `spin up` process gets the
//!   `slow_sync.c` shim through `LD_PRELOAD` (inherited by the trigger processes): it
//!   logs every `fsync`/`fdatasync` with the file it syncs, and on the slow disk also
//!   sleeps before each.
//! - Redis: a `redis-server` of our own on a free loopback port, without persistence.
//!
//! In its default rollback-journal mode SQLite syncs the main database file exactly once
//! per committed write transaction (after syncing the journal, before deleting it), so
//! the syncs of `sqlite_key_value.db` itself count commits; the journal's and the
//! directory's syncs are left out.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

/// The database file of Spin's default store, inside the state directory.
pub const SQLITE_FILE: &str = "sqlite_key_value.db";

pub enum Store {
    /// Spin's default SQLite store; every fsync/fdatasync delayed by `sync_delay`.
    Sqlite { sync_delay: Duration },
    /// Redis at this URL.
    Redis { url: String },
}

impl Store {
    /// The runtime configuration file's text.
    pub fn runtime_config(&self) -> String {
        match self {
            Store::Sqlite { .. } => "# Spin's default SQLite key-value store\n".to_owned(),
            Store::Redis { url } => {
                format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n")
            }
        }
    }

    /// The environment `spin up` needs for this store: the shim, for SQLite.
    pub fn env(&self, shim: &Path, sync_log: &Path) -> Vec<(String, String)> {
        match self {
            Store::Sqlite { sync_delay } => vec![
                ("LD_PRELOAD".into(), shim.display().to_string()),
                ("BENCH_SYNC_LOG".into(), sync_log.display().to_string()),
                (
                    "BENCH_SYNC_DELAY_US".into(),
                    sync_delay.as_micros().to_string(),
                ),
            ],
            Store::Redis { .. } => Vec::new(),
        }
    }
}

/// Commits of the SQLite database file, before a time and within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commits {
    pub before: u64,
    pub during: u64,
}

/// Counts the syncs of `database` in the shim's log (lines `<epoch ns> <pid> <call>
/// <path>`): those before the window, and those within it (microseconds since the Unix
/// epoch). A missing log means nothing was synced.
pub fn count_commits(log: &Path, database: &Path, (from_us, to_us): (u64, u64)) -> Commits {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut commits = Commits {
        before: 0,
        during: 0,
    };
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        let (Some(ns), Some(_pid), Some(_call), Some(path)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(us) = ns.parse::<u64>().map(|ns| ns / 1000) else {
            continue;
        };
        if Path::new(path) != database {
            continue;
        }
        if us < from_us {
            commits.before += 1;
        } else if us <= to_us {
            commits.during += 1;
        }
    }
    commits
}

/// A `redis-server` of the benchmark's own, killed when dropped.
pub struct RedisServer {
    _child: tokio::process::Child,
    pub url: String,
}

impl RedisServer {
    /// Starts one on a free loopback port, in-memory only, and waits until it accepts
    /// connections.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = crate::spin::free_port()?;
        std::fs::create_dir_all(dir)?;
        let child = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (scripts/bench installs it with apt-get)")?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Self {
                    _child: child,
                    url: format!("redis://127.0.0.1:{port}/0"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("redis-server did not accept connections on port {port} within 10 s")
    }
}

/// The database file of the default store in a state directory.
pub fn sqlite_file(state_dir: &Path) -> PathBuf {
    state_dir.join(SQLITE_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_syncs_of_the_database_file_in_the_window_are_commits() {
        let dir = std::env::temp_dir().join(format!("bench-commits-test.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("syncs.log");
        let db = "/s/sqlite_key_value.db";
        let lines = [
            format!("1000000 7 fsync {db}"), // before the window
            "2000000 7 fsync /s/sqlite_key_value.db-journal".into(), // the journal
            format!("2000000 7 fdatasync {db}"),
            "2000000 7 fsync /s".into(), // the folder
            format!("3000000 8 fsync {db}"),
            format!("9000000 8 fsync {db}"), // after the window
            "garbage".into(),
        ];
        std::fs::write(&log, lines.join("\n")).unwrap();
        let commits = count_commits(&log, Path::new(db), (2_000, 3_000));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            commits,
            Commits {
                before: 1,
                during: 2
            }
        );
    }
}
