//! Where STS and Secrets Manager are reached: the regional AWS endpoints, unless the
//! operator overrides one or both (a local emulator, a VPC endpoint).

/// Where the two services are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub sts: String,
    pub secrets_manager: String,
    pub ssm: String,
}

/// The endpoint overrides, as the variables name them.
#[derive(Debug, Clone, Default)]
pub struct EndpointOverrides<'a> {
    /// `aws_endpoint_url`: every service, like the SDKs' `AWS_ENDPOINT_URL`.
    pub aws: Option<&'a str>,
    /// `sts_endpoint_url`.
    pub sts: Option<&'a str>,
    /// `secretsmanager_endpoint_url`.
    pub secrets_manager: Option<&'a str>,
    /// `ssm_endpoint_url`.
    pub ssm: Option<&'a str>,
}

impl Endpoints {
    /// The regional AWS endpoints, unless overridden (the per-service override wins).
    pub fn resolve(region: &str, overrides: &EndpointOverrides) -> Result<Self, String> {
        let valid_region = !region.is_empty()
            && region.len() <= 32
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_region {
            return Err(format!(
                "aws_region {region:?} is not an AWS region name such as us-east-1"
            ));
        }
        let domain = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        let pick =
            |variable: &str, specific: Option<&str>, service: &str| match (specific, overrides.aws)
            {
                (Some(url), _) => check_endpoint(variable, url),
                (None, Some(url)) => check_endpoint("aws_endpoint_url", url),
                (None, None) => Ok(format!("https://{service}.{region}.{domain}")),
            };
        Ok(Self {
            sts: pick("sts_endpoint_url", overrides.sts, "sts")?,
            secrets_manager: pick(
                "secretsmanager_endpoint_url",
                overrides.secrets_manager,
                "secretsmanager",
            )?,
            ssm: pick("ssm_endpoint_url", overrides.ssm, "ssm")?,
        })
    }
}

/// An endpoint is `http(s)://host[:port]`, with nothing after it but an optional `/`.
pub fn check_endpoint(variable: &str, url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    let uri: http::Uri = trimmed
        .parse()
        .map_err(|error| format!("{variable} {url:?} is not a URL: {error}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let bare = uri
        .path_and_query()
        .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty());
    if !scheme_ok || uri.host().is_none() || !bare {
        return Err(format!(
            "{variable} {url:?} must be http:// or https:// followed by a host and optional port, with no path"
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regional_endpoints_by_default() {
        let endpoints = Endpoints::resolve("eu-west-1", &EndpointOverrides::default()).unwrap();
        assert_eq!(endpoints.sts, "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(
            endpoints.secrets_manager,
            "https://secretsmanager.eu-west-1.amazonaws.com"
        );
        assert_eq!(endpoints.ssm, "https://ssm.eu-west-1.amazonaws.com");
        let china = Endpoints::resolve("cn-north-1", &EndpointOverrides::default()).unwrap();
        assert_eq!(china.sts, "https://sts.cn-north-1.amazonaws.com.cn");
    }

    #[test]
    fn one_override_for_both_and_one_each_that_wins() {
        let both = EndpointOverrides {
            aws: Some("http://127.0.0.1:5000/"),
            ..Default::default()
        };
        let endpoints = Endpoints::resolve("us-east-1", &both).unwrap();
        assert_eq!(endpoints.sts, "http://127.0.0.1:5000");
        assert_eq!(endpoints.secrets_manager, "http://127.0.0.1:5000");
        let specific = EndpointOverrides {
            sts: Some("https://sts.example.internal:8443"),
            ..both
        };
        let endpoints = Endpoints::resolve("us-east-1", &specific).unwrap();
        assert_eq!(endpoints.sts, "https://sts.example.internal:8443");
        assert_eq!(endpoints.secrets_manager, "http://127.0.0.1:5000");
        assert_eq!(endpoints.ssm, "http://127.0.0.1:5000");
    }

    #[test]
    fn bad_endpoints_and_regions_name_their_variable() {
        for (overrides, variable) in [
            (
                EndpointOverrides {
                    aws: Some("127.0.0.1:5000"),
                    ..Default::default()
                },
                "aws_endpoint_url",
            ),
            (
                EndpointOverrides {
                    sts: Some("ftp://host"),
                    ..Default::default()
                },
                "sts_endpoint_url",
            ),
            (
                EndpointOverrides {
                    secrets_manager: Some("http://host/path"),
                    ..Default::default()
                },
                "secretsmanager_endpoint_url",
            ),
        ] {
            let error = Endpoints::resolve("us-east-1", &overrides).unwrap_err();
            assert!(error.starts_with(variable), "{error}");
        }
        for region in ["", "US-EAST-1", "us east 1", "us-east-1.evil.com/"] {
            let error = Endpoints::resolve(region, &EndpointOverrides::default()).unwrap_err();
            assert!(error.starts_with("aws_region"), "{error}");
        }
    }
}
