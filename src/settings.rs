//! The application variables, read once per tick and checked before any AWS call, so a
//! misconfiguration is one clear error naming the variable.

use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::aws::client::EndpointOverrides;
use crate::aws::{Endpoints, RotatorCredentials};
use crate::roles::AllowedRoles;
use crate::rotate::RotationRules;
use crate::state::Timing;

/// Reads one application variable; `None` (or an empty string) means unset.
pub trait Variables {
    fn get(&self, name: &str) -> anyhow::Result<Option<String>>;
}

/// The region used when `aws_region` is not set.
pub const DEFAULT_REGION: &str = "us-east-1";
/// How many accounts are rotated at once when `max_concurrency` is not set.
pub const DEFAULT_MAX_CONCURRENCY: u64 = 32;
const MAX_CONCURRENCY_LIMIT: u64 = 256;

/// Everything a tick needs to know, validated.
#[derive(Debug)]
pub struct Settings {
    pub credentials: RotatorCredentials,
    pub region: String,
    pub endpoints: Endpoints,
    pub rules: RotationRules,
}

impl Settings {
    pub fn from_variables(variables: &impl Variables) -> anyhow::Result<Self> {
        let get = |name: &str| -> anyhow::Result<Option<String>> {
            let value = variables
                .get(name)
                .with_context(|| format!("reading variable {name}"))?;
            Ok(value.filter(|v| !v.trim().is_empty()))
        };
        let required = |name: &str| -> anyhow::Result<String> {
            get(name)?.with_context(|| format!("variable {name} is required but not set"))
        };
        let credentials = RotatorCredentials {
            access_key_id: required("aws_access_key_id")?.trim().to_owned().into(),
            secret_access_key: required("aws_secret_access_key")?.trim().to_owned().into(),
            session_token: get("aws_session_token")?.map(|t| t.trim().to_owned().into()),
        };
        let region = get("aws_region")?.unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let (aws, sts, secrets_manager) = (
            get("aws_endpoint_url")?,
            get("sts_endpoint_url")?,
            get("secretsmanager_endpoint_url")?,
        );
        let overrides = EndpointOverrides {
            aws: aws.as_deref(),
            sts: sts.as_deref(),
            secrets_manager: secrets_manager.as_deref(),
        };
        let endpoints =
            Endpoints::resolve(region.trim(), &overrides).map_err(anyhow::Error::msg)?;
        let defaults = RotationRules::default();
        let template = match get("secret_path_template")? {
            Some(text) => text.parse()?,
            None => defaults.template,
        };
        let secret_format = match get("secret_format")? {
            Some(text) => text.parse().map_err(anyhow::Error::msg)?,
            None => defaults.secret_format,
        };
        let allowed_roles = AllowedRoles::parse(&get("allowed_role_arns")?.unwrap_or_default())
            .map_err(anyhow::Error::msg)?;
        let number =
            |name: &str, range: RangeInclusive<u64>, default: u64| -> anyhow::Result<u64> {
                let Some(text) = get(name)? else {
                    return Ok(default);
                };
                match text.trim().parse::<u64>() {
                    Ok(n) if range.contains(&n) => Ok(n),
                    _ => bail!(
                        "variable {name} must be a whole number from {} to {}, got {text:?}",
                        range.start(),
                        range.end()
                    ),
                }
            };
        let duration = |name: &str,
                        range: RangeInclusive<Duration>,
                        default: Duration|
         -> anyhow::Result<Duration> {
            let Some(text) = get(name)? else {
                return Ok(default);
            };
            let text = text.trim();
            let parsed = match text.parse::<u64>() {
                Ok(seconds) => Ok(Duration::from_secs(seconds)),
                Err(_) => humantime::parse_duration(text),
            };
            match parsed {
                Ok(value) if range.contains(&value) => Ok(value),
                _ => bail!(
                    "variable {name} must be a duration from {} to {} (such as 30m or 1800), got {text:?}",
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end())
                ),
            }
        };
        let minutes = |m: u64| Duration::from_secs(m * 60);
        let rules = RotationRules {
            template,
            secret_format,
            allowed_roles,
            max_concurrency: number(
                "max_concurrency",
                1..=MAX_CONCURRENCY_LIMIT,
                DEFAULT_MAX_CONCURRENCY,
            )? as usize,
            timing: Timing {
                rotate_before_expiry: duration(
                    "rotate_before_expiry",
                    minutes(5)..=minutes(700),
                    defaults.timing.rotate_before_expiry,
                )?,
            },
            tick_budget: duration(
                "tick_budget",
                Duration::from_secs(30)..=minutes(60),
                defaults.tick_budget,
            )?,
            writes_per_second: number(
                "secretsmanager_writes_per_second",
                0..=50,
                u64::from(defaults.writes_per_second),
            )? as u32,
            request_timeout: duration(
                "request_timeout",
                Duration::from_secs(1)..=Duration::from_secs(60),
                defaults.request_timeout,
            )?,
            ..defaults
        };
        Ok(Self {
            credentials,
            region: region.trim().to_owned(),
            endpoints,
            rules,
        })
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
        assert!(settings
            .rules
            .allowed_roles
            .permits("arn:aws:iam::123456789012:role/any"));
        assert!(settings.credentials.session_token.is_none());
    }

    #[test]
    fn overrides() {
        let settings = with(&[
            ("aws_region", "eu-central-1"),
            ("aws_endpoint_url", "http://127.0.0.1:5000"),
            ("aws_session_token", "TOKEN"),
            ("secret_path_template", "/ci/{{.Team}}/{{.Account}}"),
            ("max_concurrency", "4"),
            ("allowed_role_arns", "arn:aws:iam::*:role/ci-*"),
            ("rotate_before_expiry", "20m"),
            ("tick_budget", "90"),
            ("request_timeout", "2s"),
            ("secretsmanager_writes_per_second", "0"),
            ("secret_format", "both"),
        ])
        .unwrap();
        assert_eq!(settings.region, "eu-central-1");
        assert_eq!(settings.endpoints.secrets_manager, "http://127.0.0.1:5000");
        assert!(settings.credentials.session_token.is_some());
        let rules = &settings.rules;
        assert_eq!(rules.template.render("t", "a").unwrap().as_str(), "/ci/t/a");
        assert_eq!(rules.max_concurrency, 4);
        assert!(!rules
            .allowed_roles
            .permits("arn:aws:iam::123456789012:role/admin"));
        assert_eq!(rules.timing.rotate_before_expiry, Duration::from_secs(1200));
        assert_eq!(rules.tick_budget, Duration::from_secs(90));
        assert_eq!(rules.request_timeout, Duration::from_secs(2));
        assert_eq!(rules.writes_per_second, 0);
        assert_eq!(rules.secret_format, crate::template::SecretFormat::Both);
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
            (("tick_budget", "soon"), "tick_budget"),
            (("request_timeout", "0"), "request_timeout"),
            (
                ("secretsmanager_writes_per_second", "51"),
                "secretsmanager_writes_per_second",
            ),
            (("secret_format", "xml"), "secret_format"),
        ] {
            let error = format!("{:#}", with(&[pair]).unwrap_err());
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("SECRET"), "{error}");
        }
    }
}
