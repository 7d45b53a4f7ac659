//! SigV4 for the component's own requests: a thin wrapper over `aws-sigv4`.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use secrecy::ExposeSecret;

use super::{AwsError, RotatorCredentials};

/// Signs requests as the rotator identity in one region.
pub struct Signer {
    identity: aws_smithy_runtime_api::client::identity::Identity,
    region: String,
}

impl Signer {
    pub fn new(credentials: &RotatorCredentials, region: &str) -> Self {
        let credentials = Credentials::new(
            credentials.access_key_id.expose_secret(),
            credentials.secret_access_key.expose_secret(),
            credentials
                .session_token
                .as_ref()
                .map(|token| token.expose_secret().to_owned()),
            None,
            "concourse-sts",
        );
        Self {
            identity: credentials.into(),
            region: region.to_owned(),
        }
    }

    /// Adds `x-amz-date`, `authorization` and, for a session, `x-amz-security-token`.
    /// Every header already on the request (including `content-length`) is signed.
    pub fn sign(
        &self,
        service: &str,
        request: &mut http::Request<Vec<u8>>,
        time: SystemTime,
    ) -> Result<(), AwsError> {
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(service)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|error| AwsError::Request(format!("signing parameters: {error}")))?
            .into();
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| Ok((name.as_str(), value.to_str()?)))
            .collect::<Result<Vec<_>, http::header::ToStrError>>()
            .map_err(|error| AwsError::Request(format!("header value: {error}")))?;
        let signable = SignableRequest::new(
            request.method().as_str(),
            request.uri().to_string(),
            headers.into_iter(),
            SignableBody::Bytes(request.body()),
        )
        .map_err(|error| AwsError::Request(format!("signable request: {error}")))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|error| AwsError::Request(format!("signing: {error}")))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn signer(token: Option<&str>) -> Signer {
        Signer::new(
            &RotatorCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
                session_token: token.map(Into::into),
            },
            "us-east-1",
        )
    }

    fn request() -> http::Request<Vec<u8>> {
        http::Request::post("https://sts.us-east-1.amazonaws.com/")
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .header("content-length", "43")
            .body(b"Action=GetCallerIdentity&Version=2011-06-15".to_vec())
            .unwrap()
    }

    /// 2015-08-30T12:36:00Z, the date of AWS's published SigV4 test suite.
    fn time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    #[test]
    fn signs_with_scope_and_signed_headers() {
        let mut request = request();
        signer(None).sign("sts", &mut request, time()).unwrap();
        let authorization = request.headers()["authorization"].to_str().unwrap();
        assert!(authorization.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sts/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-date, Signature="
        ), "{authorization}");
        assert_eq!(request.headers()["x-amz-date"], "20150830T123600Z");
        assert!(request.headers().get("x-amz-security-token").is_none());
    }

    #[test]
    fn a_session_token_is_sent_and_signed() {
        let mut request = request();
        signer(Some("SESSIONTOKEN"))
            .sign("secretsmanager", &mut request, time())
            .unwrap();
        assert_eq!(request.headers()["x-amz-security-token"], "SESSIONTOKEN");
        let authorization = request.headers()["authorization"].to_str().unwrap();
        assert!(authorization.contains("/secretsmanager/aws4_request"));
        assert!(
            authorization.contains("x-amz-security-token"),
            "{authorization}"
        );
    }

    #[test]
    fn signature_depends_on_the_body() {
        let mut first = request();
        let mut second = request();
        *second.body_mut() = b"Action=GetCallerIdentity&Version=2011-06-16".to_vec();
        signer(None).sign("sts", &mut first, time()).unwrap();
        signer(None).sign("sts", &mut second, time()).unwrap();
        assert_ne!(
            first.headers()["authorization"],
            second.headers()["authorization"]
        );
    }
}
