//! The application variables, read once per tick and checked before any AWS call, so a
//! misconfiguration is one clear error naming the variable.

use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::aws::endpoints::{check_endpoint, EndpointOverrides, Endpoints};
use crate::aws::ssm;
use crate::aws::{CredentialsSource, RotatorCredentials, RotatorIdentity};
use crate::config::is_role_arn;
use crate::names::name_problem;
use crate::retry::RetryPolicy;
use crate::roles::AllowedRoles;
use crate::sink::{SecretSinks, Sink};
use crate::template::{SecretFormat, SecretPathTemplate};
use crate::timing::Timing;
use crate::vault::{self, KvVersion, VaultAuth, VaultSettings};

/// Reads one application variable; `None` (or an empty string) means unset.
pub trait Variables {
    fn get(&self, name: &str) -> anyhow::Result<Option<String>>;
}

/// The region used when `aws_region` is not set.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The EC2 instance metadata service, where every SDK looks for it.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// The longest session a role session may assume (AWS's cap on role chaining).
const CHAINED_SESSION_LIMIT_SECONDS: u32 = 3600;

/// What the operator decides about every tick.
#[derive(Debug, Clone)]
pub struct RotationRules {
    pub template: SecretPathTemplate,
    pub secret_format: SecretFormat,
    pub allowed_roles: AllowedRoles,
    pub max_concurrency: usize,
    pub timing: Timing,
    /// The whole tick, retries included, fits in this; the rest waits for the next tick.
    pub tick_budget: Duration,
    /// Where the credentials go: any of Secrets Manager, Parameter Store and Vault.
    pub sink: SecretSinks,
    /// Secrets Manager writes started per second at most; 0 lifts the limit.
    pub writes_per_second: u32,
    /// Parameter Store writes started per second at most; 0 lifts the limit.
    pub ssm_writes_per_second: u32,
    /// `ssm_kms_key_id`: the customer key parameters are encrypted under.
    pub ssm_key_id: Option<String>,
    pub retry: RetryPolicy,
    /// How long one AWS request may take; no account starts closer than this to the
    /// end of the budget.
    pub request_timeout: Duration,
    /// Set when the rotator is itself a role session, which AWS allows to assume roles
    /// for an hour at most: why it is one.
    pub role_session: Option<String>,
}

impl Default for RotationRules {
    fn default() -> Self {
        Self {
            template: SecretPathTemplate::default(),
            secret_format: SecretFormat::default(),
            allowed_roles: AllowedRoles::default(),
            max_concurrency: 32,
            timing: Timing::default(),
            // Four of the schedule's five minutes: a mass registration is covered at
            // the write pace within the issue's bound (README, "Simulation"), and a
            // tick is still done before the next begins.
            tick_budget: Duration::from_secs(240),
            sink: SecretSinks::default(),
            writes_per_second: 40,
            ssm_writes_per_second: ssm::DEFAULT_WRITES_PER_SECOND,
            ssm_key_id: None,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(20),
            role_session: None,
        }
    }
}

impl RotationRules {
    /// Refuses an account whose `duration` these rules cannot serve: before AWS would
    /// refuse it at 3 a.m., a session longer than the hour a role session may assume.
    pub fn check_duration(&self, duration_seconds: u32) -> Result<(), String> {
        if let Some(why) = &self.role_session {
            if duration_seconds > CHAINED_SESSION_LIMIT_SECONDS {
                return Err(format!(
                    "duration {duration_seconds}s is longer than the {CHAINED_SESSION_LIMIT_SECONDS}s AWS allows a role session to assume a role for, and the rotator is a role session ({why}); use a duration of at most {CHAINED_SESSION_LIMIT_SECONDS}s"
                ));
            }
        }
        self.timing.check(duration_seconds)
    }
}

/// The longest `store_prefix` accepted.
const MAX_STORE_PREFIX_LEN: usize = 128;

/// `store_prefix`: every key this deployment reads and writes lives under it (empty by
/// default), so that two deployments, staging and production, can share one Redis
/// database without rotating each other's teams. Printable ASCII without spaces.
pub fn store_prefix(variables: &impl Variables) -> anyhow::Result<String> {
    let prefix = Reader(variables)
        .optional("store_prefix")?
        .unwrap_or_default();
    if prefix.len() > MAX_STORE_PREFIX_LEN || !prefix.chars().all(|c| c.is_ascii_graphic()) {
        bail!("variable store_prefix must be at most {MAX_STORE_PREFIX_LEN} printable ASCII characters without spaces, such as \"prod/\", got {prefix:?}");
    }
    Ok(prefix)
}

/// Everything a tick needs to know, validated.
#[derive(Debug)]
pub struct Settings {
    pub identity: RotatorIdentity,
    pub region: String,
    pub endpoints: Endpoints,
    pub rules: RotationRules,
    /// Set when `secret_sink` lists `vault`.
    pub vault: Option<VaultSettings>,
}

impl Settings {
    pub fn from_variables(variables: &impl Variables) -> anyhow::Result<Self> {
        let read = Reader(variables);
        let region = read
            .optional("aws_region")?
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let identity = identity(&read)?;
        let rules = RotationRules {
            role_session: identity.role_session(),
            ..rules(&read)?
        };
        let vault = match rules.sink.contains(Sink::Vault) {
            true => Some(vault(&read, &rules.template)?),
            false => None,
        };
        Ok(Self {
            identity,
            endpoints: endpoints(&read, &region)?,
            region,
            rules,
            vault,
        })
    }
}

/// Where the rotator's credentials come from (`aws_credentials_source`); `auto` follows
/// the SDKs' chain: static keys when `aws_access_key_id` is set, else the container
/// endpoint when its URI is set, else IMDS.
fn identity(read: &Reader<'_, impl Variables>) -> anyhow::Result<RotatorIdentity> {
    let chosen = read.optional("aws_credentials_source")?;
    let source = match chosen.as_deref().unwrap_or("auto") {
        "static" => static_keys(read)?,
        "imds" => imds(read)?,
        "container" => container(read)?,
        "auto" if read.optional("aws_access_key_id")?.is_some() => static_keys(read)?,
        "auto"
            if read
                .optional("aws_container_credentials_full_uri")?
                .is_some() =>
        {
            container(read)?
        }
        "auto" => imds(read)?,
        other => bail!(
            "variable aws_credentials_source must be auto, static, imds or container, got {other:?}"
        ),
    };
    let role_arn = read.optional("aws_role_arn")?;
    if let Some(arn) = role_arn.as_deref().filter(|arn| !is_role_arn(arn)) {
        bail!("variable aws_role_arn must be an IAM role ARN such as arn:aws:iam::123456789012:role/concourse-sts, got {arn:?}");
    }
    Ok(RotatorIdentity { source, role_arn })
}

fn static_keys(read: &Reader<'_, impl Variables>) -> anyhow::Result<CredentialsSource> {
    Ok(CredentialsSource::Static(RotatorCredentials {
        access_key_id: read.required("aws_access_key_id")?.into(),
        secret_access_key: read.required("aws_secret_access_key")?.into(),
        session_token: read.optional("aws_session_token")?.map(Into::into),
    }))
}

fn imds(read: &Reader<'_, impl Variables>) -> anyhow::Result<CredentialsSource> {
    let endpoint = read
        .optional("aws_imds_endpoint")?
        .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned());
    Ok(CredentialsSource::Imds {
        endpoint: check_endpoint("aws_imds_endpoint", &endpoint).map_err(anyhow::Error::msg)?,
    })
}

fn container(read: &Reader<'_, impl Variables>) -> anyhow::Result<CredentialsSource> {
    let uri = read.required("aws_container_credentials_full_uri")?;
    let valid = uri.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
    });
    if !valid {
        bail!("variable aws_container_credentials_full_uri must be an http:// or https:// URL such as http://169.254.170.23/v1/credentials, got {uri:?}");
    }
    Ok(CredentialsSource::Container {
        uri,
        authorization: read
            .optional("aws_container_authorization_token")?
            .map(Into::into),
    })
}

fn endpoints(read: &Reader<'_, impl Variables>, region: &str) -> anyhow::Result<Endpoints> {
    let (aws, sts, secrets_manager, ssm) = (
        read.optional("aws_endpoint_url")?,
        read.optional("sts_endpoint_url")?,
        read.optional("secretsmanager_endpoint_url")?,
        read.optional("ssm_endpoint_url")?,
    );
    let overrides = EndpointOverrides {
        aws: aws.as_deref(),
        sts: sts.as_deref(),
        secrets_manager: secrets_manager.as_deref(),
        ssm: ssm.as_deref(),
    };
    Endpoints::resolve(region, &overrides).map_err(anyhow::Error::msg)
}

fn rules(read: &Reader<'_, impl Variables>) -> anyhow::Result<RotationRules> {
    let defaults = RotationRules::default();
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let seconds = Duration::from_secs;
    let sink = read.parsed("secret_sink")?.unwrap_or(defaults.sink);
    let template: SecretPathTemplate = read
        .parsed("secret_path_template")?
        .unwrap_or(defaults.template);
    let writes_parameters = sink.contains(Sink::ParameterStore);
    if let Some(problem) = template
        .parameter_store_problem()
        .filter(|_| writes_parameters)
    {
        bail!(problem);
    }
    Ok(RotationRules {
        template,
        secret_format: read
            .parsed("secret_format")?
            .unwrap_or(defaults.secret_format),
        allowed_roles: AllowedRoles::parse(
            &read.optional("allowed_role_arns")?.unwrap_or_default(),
        )
        .map_err(anyhow::Error::msg)?,
        max_concurrency: read.number("max_concurrency", 1..=256, 32)? as usize,
        timing: Timing {
            rotate_before_expiry: read.duration(
                "rotate_before_expiry",
                minutes(5)..=minutes(700),
                defaults.timing.rotate_before_expiry,
            )?,
            failure_backoff_max: read.duration(
                "failure_backoff_max",
                minutes(5)..=minutes(24 * 60),
                defaults.timing.failure_backoff_max,
            )?,
        },
        tick_budget: read.duration(
            "tick_budget",
            seconds(30)..=minutes(60),
            defaults.tick_budget,
        )?,
        sink,
        writes_per_second: read.number(
            "secretsmanager_writes_per_second",
            0..=50,
            defaults.writes_per_second.into(),
        )? as u32,
        ssm_writes_per_second: read.number(
            "ssm_writes_per_second",
            0..=100,
            defaults.ssm_writes_per_second.into(),
        )? as u32,
        ssm_key_id: ssm_key_id(read)?,
        request_timeout: read.duration(
            "request_timeout",
            seconds(1)..=seconds(60),
            defaults.request_timeout,
        )?,
        ..defaults
    })
}

/// The `vault_*` variables, read when `secret_sink` lists `vault`.
fn vault(
    read: &Reader<'_, impl Variables>,
    template: &SecretPathTemplate,
) -> anyhow::Result<VaultSettings> {
    if let Some(problem) = vault::template_problem(template.team_prefix()) {
        bail!("secret_path_template {:?}: {problem}", template.to_string());
    }
    // The manifest's default (an `.invalid` host, RFC 6761) is there only because an
    // allowed host that renders empty stops Spin: it names no Vault.
    let url = read
        .optional("vault_url")?
        .filter(|url| !url.trim_end_matches('/').ends_with(".invalid"))
        .context("variable vault_url is required when secret_sink lists vault, such as https://vault.example.com:8200")?;
    let mount = read
        .optional("vault_kv_mount")?
        .unwrap_or_else(|| "concourse".to_owned());
    Ok(VaultSettings {
        url: check_endpoint("vault_url", &url).map_err(anyhow::Error::msg)?,
        namespace: read.optional("vault_namespace")?,
        mount: mount_path("vault_kv_mount", mount)?,
        kv_version: read.parsed("vault_kv_version")?.unwrap_or(KvVersion::Auto),
        writes_per_second: read.number(
            "vault_writes_per_second",
            0..=1000,
            vault::DEFAULT_WRITES_PER_SECOND.into(),
        )? as u32,
        auth: vault_auth(read)?,
    })
}

/// `vault_auth`: `aws`, `approle` or `token`; unset, AppRole when `vault_role_id` is
/// set, the token when `vault_token` is, else AWS (no standing Vault secret).
fn vault_auth(read: &Reader<'_, impl Variables>) -> anyhow::Result<VaultAuth> {
    let chosen = read.optional("vault_auth")?;
    let method = match chosen.as_deref() {
        Some(method) => method,
        None if read.optional("vault_role_id")?.is_some() => "approle",
        None if read.optional("vault_token")?.is_some() => "token",
        None => "aws",
    };
    Ok(match method {
        "aws" => VaultAuth::Aws {
            mount: mount_path(
                "vault_aws_auth_mount",
                read.optional("vault_aws_auth_mount")?
                    .unwrap_or_else(|| "aws".to_owned()),
            )?,
            role: read.optional("vault_aws_role")?,
            server_id: read.optional("vault_aws_server_id")?,
        },
        "approle" => VaultAuth::AppRole {
            role_id: read.required("vault_role_id")?,
            secret_id: read.required("vault_secret_id")?.into(),
        },
        "token" => VaultAuth::Token(read.required("vault_token")?.into()),
        other => bail!("variable vault_auth must be aws, approle or token, got {other:?}"),
    })
}

/// A mount path such as `concourse` or `secret/concourse`: segments of the name alphabet
/// (ASCII letters, digits, `_`, `.` and `-`), separated by `/`.
fn mount_path(variable: &str, path: String) -> anyhow::Result<String> {
    if let Some(problem) = path.split('/').find_map(|segment| name_problem(segment, 1)) {
        bail!("variable {variable} must be a Vault path such as concourse or secret/concourse: each segment {problem}; got {path:?}");
    }
    Ok(path)
}

fn ssm_key_id(read: &Reader<'_, impl Variables>) -> anyhow::Result<Option<String>> {
    let key_id = read.optional("ssm_kms_key_id")?;
    if let Some(problem) = key_id.as_deref().and_then(ssm::key_id_problem) {
        bail!("variable ssm_kms_key_id {problem}");
    }
    Ok(key_id)
}

/// Reads variables, trimmed, with errors that name the variable and never its value
/// when the variable is a secret.
struct Reader<'v, V>(&'v V);

impl<V: Variables> Reader<'_, V> {
    /// The value, or `None` when it is unset or blank.
    fn optional(&self, name: &str) -> anyhow::Result<Option<String>> {
        let value = self
            .0
            .get(name)
            .with_context(|| format!("reading variable {name}"))?;
        Ok(value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()))
    }

    fn required(&self, name: &str) -> anyhow::Result<String> {
        self.optional(name)?
            .with_context(|| format!("variable {name} is required but not set"))
    }

    /// A value parsed with its type's own `FromStr`, whose error names the variable.
    fn parsed<T>(&self, name: &str) -> anyhow::Result<Option<T>>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.optional(name)?
            .map(|text| text.parse().map_err(|e: T::Err| anyhow::anyhow!("{e}")))
            .transpose()
    }

    fn number(&self, name: &str, range: RangeInclusive<u64>, default: u64) -> anyhow::Result<u64> {
        let Some(text) = self.optional(name)? else {
            return Ok(default);
        };
        match text.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => bail!(
                "variable {name} must be a whole number from {} to {}, got {text:?}",
                range.start(),
                range.end()
            ),
        }
    }

    /// A duration such as `30m` or `90s`; a bare number is seconds.
    fn duration(
        &self,
        name: &str,
        range: RangeInclusive<Duration>,
        default: Duration,
    ) -> anyhow::Result<Duration> {
        let Some(text) = self.optional(name)? else {
            return Ok(default);
        };
        let parsed = match text.parse::<u64>() {
            Ok(seconds) => Ok(Duration::from_secs(seconds)),
            Err(_) => humantime::parse_duration(&text),
        };
        match parsed {
            Ok(value) if range.contains(&value) => Ok(value),
            _ => bail!(
                "variable {name} must be a duration from {} to {} (such as 30m or 1800), got {text:?}",
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end())
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Variables from a list of pairs, as a test's fake of Spin's variables.
    pub struct FakeVariables(pub HashMap<String, String>);

    impl FakeVariables {
        pub fn new(pairs: &[(&str, &str)]) -> Self {
            Self(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        }
    }

    impl Variables for FakeVariables {
        fn get(&self, name: &str) -> anyhow::Result<Option<String>> {
            Ok(self.0.get(name).cloned())
        }
    }

    const KEYS: [(&str, &str); 2] = [
        ("aws_access_key_id", "AKID"),
        ("aws_secret_access_key", "SECRET"),
    ];

    fn with(extra: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let mut pairs = KEYS.to_vec();
        pairs.extend_from_slice(extra);
        Settings::from_variables(&FakeVariables::new(&pairs))
    }

    #[test]
    fn defaults() {
        let settings = with(&[("aws_session_token", "")]).unwrap();
        assert_eq!(settings.region, "us-east-1");
        assert_eq!(
            settings.endpoints.sts,
            "https://sts.us-east-1.amazonaws.com"
        );
        assert_eq!(
            settings.rules.template,
            crate::template::SecretPathTemplate::default()
        );
        assert_eq!(settings.rules.max_concurrency, 32);
        assert_eq!(settings.rules.timing, Timing::default());
        assert!(settings
            .rules
            .allowed_roles
            .permits("arn:aws:iam::123456789012:role/any"));
        let CredentialsSource::Static(keys) = &settings.identity.source else {
            panic!("static keys when aws_access_key_id is set");
        };
        assert!(keys.session_token.is_none());
        assert_eq!(settings.rules.role_session, None);
    }

    #[test]
    fn overrides() {
        let settings = with(&[
            ("aws_region", " eu-central-1 "),
            ("aws_endpoint_url", "http://127.0.0.1:5000"),
            ("aws_session_token", "TOKEN"),
            ("secret_path_template", "/ci/{{.Team}}/{{.Account}}"),
            ("max_concurrency", "4"),
            ("allowed_role_arns", "arn:aws:iam::*:role/ci-*"),
            ("rotate_before_expiry", "20m"),
            ("failure_backoff_max", "2h"),
            ("tick_budget", "90"),
            ("request_timeout", "2s"),
            ("secretsmanager_writes_per_second", "0"),
            ("secret_format", "both"),
            ("secret_sink", "both"),
            ("ssm_writes_per_second", "5"),
            ("ssm_kms_key_id", "alias/concourse"),
            ("ssm_endpoint_url", "http://127.0.0.1:5001"),
        ])
        .unwrap();
        assert_eq!(settings.region, "eu-central-1");
        assert_eq!(settings.endpoints.secrets_manager, "http://127.0.0.1:5000");
        let CredentialsSource::Static(keys) = &settings.identity.source else {
            panic!("static keys");
        };
        assert!(keys.session_token.is_some());
        let rules = &settings.rules;
        assert_eq!(rules.template.render("t", "a").as_str(), "/ci/t/a");
        assert_eq!(rules.max_concurrency, 4);
        assert!(!rules
            .allowed_roles
            .permits("arn:aws:iam::123456789012:role/admin"));
        assert_eq!(rules.timing.rotate_before_expiry, Duration::from_secs(1200));
        assert_eq!(rules.timing.failure_backoff_max, Duration::from_secs(7200));
        assert_eq!(rules.tick_budget, Duration::from_secs(90));
        assert_eq!(rules.request_timeout, Duration::from_secs(2));
        assert_eq!(rules.writes_per_second, 0);
        assert_eq!(rules.secret_format, crate::template::SecretFormat::Both);
        assert_eq!(rules.sink, "both".parse().unwrap());
        assert_eq!(rules.ssm_writes_per_second, 5);
        assert_eq!(rules.ssm_key_id.as_deref(), Some("alias/concourse"));
        assert_eq!(settings.endpoints.ssm, "http://127.0.0.1:5001");
    }

    #[test]
    fn errors_name_the_variable_and_never_a_secret() {
        let missing =
            Settings::from_variables(&FakeVariables::new(&[("aws_access_key_id", "AKID")]))
                .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "variable aws_secret_access_key is required but not set"
        );
        for (pair, expected) in [
            (
                ("secret_path_template", "/c/{{.Team}}/{{.Nope}}"),
                "secret_path_template",
            ),
            (("max_concurrency", "0"), "max_concurrency"),
            (("aws_region", "Mars"), "aws_region"),
            (("sts_endpoint_url", "nope"), "sts_endpoint_url"),
            (("allowed_role_arns", "*"), "allowed_role_arns"),
            (("rotate_before_expiry", "1m"), "rotate_before_expiry"),
            (("failure_backoff_max", "2d"), "failure_backoff_max"),
            (("tick_budget", "soon"), "tick_budget"),
            (("request_timeout", "0"), "request_timeout"),
            (
                ("secretsmanager_writes_per_second", "51"),
                "secretsmanager_writes_per_second",
            ),
            (("secret_format", "xml"), "secret_format"),
            (
                ("aws_credentials_source", "vault"),
                "aws_credentials_source",
            ),
            (("aws_role_arn", "arn:aws:iam::1:user/x"), "aws_role_arn"),
        ] {
            let error = format!("{:#}", with(&[pair]).unwrap_err());
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("SECRET"), "{error}");
        }
    }

    fn source(pairs: &[(&str, &str)]) -> String {
        let settings = Settings::from_variables(&FakeVariables::new(pairs)).unwrap();
        match settings.identity.source {
            CredentialsSource::Static(_) => "static".to_owned(),
            CredentialsSource::Imds { endpoint } => format!("imds {endpoint}"),
            CredentialsSource::Container { uri, authorization } => {
                format!("container {uri} {}", authorization.is_some())
            }
        }
    }

    #[test]
    fn auto_follows_the_sdks_chain() {
        let uri = (
            "aws_container_credentials_full_uri",
            "http://169.254.170.23/v1/credentials",
        );
        let token = ("aws_container_authorization_token", "pod-token");
        assert_eq!(source(&[KEYS[0], KEYS[1], uri]), "static");
        assert_eq!(
            source(&[uri, token]),
            "container http://169.254.170.23/v1/credentials true"
        );
        assert_eq!(source(&[]), "imds http://169.254.169.254");
        assert_eq!(
            source(&[
                ("aws_credentials_source", "imds"),
                ("aws_imds_endpoint", "http://127.0.0.1:8111/"),
                KEYS[0],
                KEYS[1]
            ]),
            "imds http://127.0.0.1:8111"
        );
        let error =
            Settings::from_variables(&FakeVariables::new(&[("aws_credentials_source", "static")]))
                .unwrap_err()
                .to_string();
        assert_eq!(error, "variable aws_access_key_id is required but not set");
        let error = Settings::from_variables(&FakeVariables::new(&[(
            "aws_credentials_source",
            "container",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("aws_container_credentials_full_uri"),
            "{error}"
        );
        let error = Settings::from_variables(&FakeVariables::new(&[(
            "aws_imds_endpoint",
            "169.254.169.254",
        )]))
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("aws_imds_endpoint"), "{error}");
    }

    #[test]
    fn a_role_session_rotator_refuses_durations_over_an_hour() {
        let imds = Settings::from_variables(&FakeVariables::new(&[])).unwrap();
        let error = imds.rules.check_duration(7200).unwrap_err();
        assert!(error.contains("at most 3600s"), "{error}");
        assert!(error.contains("IMDS at http://169.254.169.254"), "{error}");
        assert!(imds.rules.check_duration(3600).is_ok());
        let chained = with(&[("aws_role_arn", "arn:aws:iam::123456789012:role/rotator")]).unwrap();
        assert!(chained
            .rules
            .check_duration(7200)
            .unwrap_err()
            .contains("aws_role_arn is set"));
        let keys = with(&[]).unwrap();
        assert!(
            keys.rules.check_duration(43200).is_ok(),
            "static keys are not capped"
        );
    }

    #[test]
    fn parameter_store_names_are_checked_at_start() {
        let template = ("secret_path_template", "/ci+prod/{{.Team}}/{{.Account}}");
        assert!(with(&[template]).is_ok(), "Secrets Manager takes '+'");
        let error = with(&[template, ("secret_sink", "ssm")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("secret_path_template") && error.contains("'+'"),
            "{error}"
        );
    }

    fn vault(extra: &[(&str, &str)]) -> anyhow::Result<VaultSettings> {
        let mut pairs = vec![
            ("secret_sink", "secretsmanager,vault"),
            ("vault_url", "https://vault.example.com:8200/"),
        ];
        pairs.extend_from_slice(extra);
        Ok(with(&pairs)?.vault.expect("secret_sink lists vault"))
    }

    #[test]
    fn vault_settings_default_to_concourses_layout_and_the_aws_login() {
        let settings = vault(&[]).unwrap();
        assert_eq!(settings.url, "https://vault.example.com:8200");
        assert_eq!(settings.mount, "concourse");
        assert_eq!(settings.kv_version, KvVersion::Auto);
        assert_eq!(settings.writes_per_second, vault::DEFAULT_WRITES_PER_SECOND);
        assert!(matches!(
            settings.auth,
            VaultAuth::Aws { ref mount, role: None, server_id: None } if mount == "aws"
        ));
        assert!(
            with(&[]).unwrap().vault.is_none(),
            "read only for the vault sink"
        );
        let set = vault(&[
            ("vault_namespace", "platform"),
            ("vault_kv_mount", "secret/concourse"),
            ("vault_kv_version", "1"),
            ("vault_writes_per_second", "0"),
            ("vault_aws_auth_mount", "aws-prod"),
            ("vault_aws_role", "concourse-sts"),
            ("vault_aws_server_id", "vault.example.com"),
        ])
        .unwrap();
        assert_eq!(set.namespace.as_deref(), Some("platform"));
        assert_eq!(
            (set.mount.as_str(), set.kv_version),
            ("secret/concourse", KvVersion::V1)
        );
        assert_eq!(set.writes_per_second, 0);
        let VaultAuth::Aws {
            mount,
            role,
            server_id,
        } = set.auth
        else {
            panic!("aws");
        };
        assert_eq!(mount, "aws-prod");
        assert_eq!(role.as_deref(), Some("concourse-sts"));
        assert_eq!(server_id.as_deref(), Some("vault.example.com"));
    }

    #[test]
    fn the_vault_login_follows_what_is_set() {
        let approle = vault(&[("vault_role_id", "r"), ("vault_secret_id", "S3CRET")]).unwrap();
        assert!(matches!(approle.auth, VaultAuth::AppRole { ref role_id, .. } if role_id == "r"));
        let token = vault(&[("vault_token", "hvs.T0KEN")]).unwrap();
        assert!(matches!(token.auth, VaultAuth::Token(_)));
        let printed = format!("{approle:?} {token:?}");
        assert!(
            !printed.contains("S3CRET") && !printed.contains("T0KEN"),
            "{printed}"
        );
    }

    #[test]
    fn vault_errors_name_the_variable_and_never_a_secret() {
        let cases: [(&[(&str, &str)], &str); 8] = [
            (&[("vault_url", "")], "variable vault_url is required"),
            (
                &[("vault_url", "https://vault.invalid")],
                "variable vault_url is required",
            ),
            (&[("vault_url", "vault:8200")], "vault_url"),
            (
                &[("vault_kv_mount", "/concourse")],
                "variable vault_kv_mount",
            ),
            (&[("vault_kv_version", "3")], "variable vault_kv_version"),
            (&[("vault_auth", "userpass")], "variable vault_auth"),
            (
                &[("vault_auth", "approle"), ("vault_secret_id", "S3CRET")],
                "variable vault_role_id is required",
            ),
            (
                &[("secret_path_template", "/{{.Team}}/{{.Account}}")],
                "maps onto vault_kv_mount",
            ),
        ];
        for (pairs, expected) in cases {
            let error = format!("{:#}", vault(pairs).unwrap_err());
            assert!(error.contains(expected), "{pairs:?}: {error}");
            assert!(!error.contains("S3CRET"), "{error}");
        }
        let error = format!("{:#}", with(&[("secret_sink", "vault")]).unwrap_err());
        assert!(error.contains("vault_url"), "{error}");
    }

    #[test]
    fn the_store_prefix_is_optional_and_printable() {
        let prefix = |value: &str| store_prefix(&FakeVariables::new(&[("store_prefix", value)]));
        assert_eq!(store_prefix(&FakeVariables::new(&[])).unwrap(), "");
        assert_eq!(prefix("prod/").unwrap(), "prod/");
        for bad in ["two words/", "ta\tb", "\u{e9}t\u{e9}/", &"x".repeat(129)] {
            let error = prefix(bad).unwrap_err().to_string();
            assert!(error.contains("store_prefix"), "{error}");
        }
    }
}
