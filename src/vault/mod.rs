//! Vault (and OpenBao, the same API) as the store of Concourse's `vault` credential
//! manager, spoken over the same HTTP transport as AWS with `serde_json`: no SDK.
//!
//! Concourse reads `((name))` at `<path prefix>/<team>/<name>` (its `--vault-path-prefix`
//! is `/concourse` by default), uses the secret's `value` field when it has one and reads
//! `((name.field))` as a field of the secret; it tells KV v1 from v2 itself, through
//! `sys/internal/ui/mounts/<path>`. So a rendered secret name's first segment (the
//! template's `/concourse`) maps onto [`VaultSettings::mount`] (`vault_kv_mount`), as the
//! path prefix does, and the rest is the key within it ([`KvKey`]).
//!
//! - [`client`]: the rotator's token (a login when a tick first needs Vault, renewed or
//!   replaced as it nears its end, revoked when the tick ends), the KV engine's layout,
//!   and every request with its token and namespace; writes pass the sink's gate.
//! - [`kv`]: writing one secret, over a `send` closure (v2 with check-and-set).
//! - [`auth`]: the three logins' requests and the token answers.
//! - [`answer`]: Vault's error answers, classified into the [`crate::aws::ErrorKind`]
//!   every AWS answer gets, so that retries, backoff and permanence keep one meaning.

pub mod answer;
pub mod auth;
pub mod client;
pub mod kv;

use secrecy::SecretString;

pub use client::VaultClient;

/// Writes per second to Vault that the rotation allows itself by default. Vault has no
/// fixed quota (an operator may set rate-limit quotas); this keeps a burst of rotations
/// from crowding out Concourse's own reads. 0 lifts the limit.
pub const DEFAULT_WRITES_PER_SECOND: u32 = 20;

/// The KV engine's version (`vault_kv_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvVersion {
    /// Asked of Vault, as Concourse does (`sys/internal/ui/mounts/<mount>`).
    Auto,
    V1,
    V2,
}

impl std::str::FromStr for KvVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "1" => Ok(Self::V1),
            "2" => Ok(Self::V2),
            other => Err(format!(
                "variable vault_kv_version must be auto, 1 or 2, got {other:?}"
            )),
        }
    }
}

/// How the rotator logs in to Vault (`vault_auth`).
#[derive(Debug, Clone)]
pub enum VaultAuth {
    /// Vault's AWS IAM auth method: the rotator's own AWS identity, proven by a signed
    /// `sts:GetCallerIdentity` that Vault replays to STS. No standing Vault secret.
    Aws {
        /// `vault_aws_auth_mount`.
        mount: String,
        /// `vault_aws_role`; Vault picks the role named after the principal without it.
        role: Option<String>,
        /// `vault_aws_server_id`: the signed `X-Vault-AWS-IAM-Server-ID` that a Vault
        /// configured with `iam_server_id_header_value` demands.
        server_id: Option<String>,
    },
    AppRole {
        role_id: String,
        secret_id: SecretString,
    },
    /// A token the operator gives (`vault_token`): renewed, never revoked.
    Token(SecretString),
}

/// What the `vault_*` variables say.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    /// `vault_url`: `http(s)://host[:port]`.
    pub url: String,
    /// `vault_namespace`: sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// `vault_kv_mount`: where the template's first segment goes (Concourse's path
    /// prefix without its leading `/`).
    pub mount: String,
    pub kv_version: KvVersion,
    pub writes_per_second: u32,
    pub auth: VaultAuth,
}

/// A secret's key within the KV mount: the rendered name without its first segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvKey(String);

impl KvKey {
    /// The key of a rendered name, or why it has none: `/concourse/alpha/dev-access-key`
    /// is `alpha/dev-access-key`.
    pub fn of(name: &str) -> Result<Self, String> {
        let path = name.strip_prefix('/').unwrap_or(name);
        let Some((_, key)) = path.split_once('/') else {
            return Err(
                "has nothing after its first segment, which maps onto vault_kv_mount".into(),
            );
        };
        if key.split('/').any(|part| matches!(part, "" | "." | "..")) {
            return Err("has an empty, '.' or '..' segment after its first".into());
        }
        Ok(Self(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a template cannot map onto a KV mount: its first segment, Concourse's path prefix,
/// must be literal text before `{{.Team}}`, or teams would be mounts.
pub fn template_problem(team_prefix: &str) -> Option<String> {
    let first = team_prefix.trim_start_matches('/').split('/').next();
    first.is_none_or(str::is_empty).then(|| {
        "with secret_sink vault, the template's first segment maps onto vault_kv_mount as Concourse's path prefix does, so it must be literal text before {{.Team}}, such as /concourse/{{.Team}}/{{.Account}}".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_segment_is_the_mount_and_the_rest_the_key() {
        let key = |name: &str| KvKey::of(name).map(|key| key.as_str().to_owned());
        assert_eq!(
            key("/concourse/alpha/dev-access-key"),
            Ok("alpha/dev-access-key".into())
        );
        assert_eq!(
            key("ci/concourse/alpha/dev"),
            Ok("concourse/alpha/dev".into())
        );
        for bad in [
            "/concourse",
            "/concourse//dev",
            "/c/./dev",
            "/c/a/",
            "/c/../x",
        ] {
            assert!(key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_template_needs_a_literal_first_segment() {
        assert_eq!(template_problem("/concourse/"), None);
        assert_eq!(template_problem("ci/"), None);
        assert!(template_problem("/").unwrap().contains("vault_kv_mount"));
    }

    #[test]
    fn kv_versions() {
        assert_eq!("auto".parse(), Ok(KvVersion::Auto));
        assert_eq!("2".parse(), Ok(KvVersion::V2));
        assert!("3"
            .parse::<KvVersion>()
            .unwrap_err()
            .contains("vault_kv_version"));
    }
}
