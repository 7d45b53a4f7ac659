//! Parameter Store over the JSON 1.1 protocol, for Concourse's `ssm` credential manager:
//! `PutParameter` (a `SecureString` in the Standard tier) and, for a parameter that an
//! overwrite created, `AddTagsToResource`.
//!
//! Parameter Store refuses `Tags` together with `Overwrite=true` ("Invalid request: tags
//! and overwrite can't be used together", a `ValidationException`, whether or not the
//! parameter exists), and an `Overwrite=true` write of a missing name simply creates it,
//! untagged. So a write is one of two first calls, chosen by what the caller expects
//! ([`Expectation`]): an overwrite (no tags) for a parameter that exists, which is every
//! rotation after the first, or a tagged create (`Overwrite=false`) for one that does not.
//! A wrong guess costs one more call, never a lost value or a refused request; see
//! [`write_parameter`].
//!
//! Unlike Secrets Manager, `PutParameter` has no client token: every successful call adds
//! a version, so a retried write is harmless (same value) but not free. Parameter Store
//! keeps the 100 newest versions and drops the oldest on each new one, unless the oldest
//! carries a label (then `ParameterMaxVersionLimitExceeded`).

use std::future::Future;

use serde::Serialize;

use super::error::parse_error_answer;
// The JSON 1.1 operation shape (`X-Amz-Target` and body) is the one Secrets Manager uses.
use super::secrets::Operation;
use super::{AwsError, ErrorKind, Expectation, HttpResponse, Written};
use crate::names::describe_char;

/// The SigV4 signing name of the service (the endpoint is `ssm.<region>.amazonaws.com`).
pub const SERVICE: &str = "ssm";

/// The `X-Amz-Target` of a parameter write.
const PUT_PARAMETER: &str = "AmazonSSM.PutParameter";
/// The `X-Amz-Target` that tags an existing parameter.
const ADD_TAGS_TO_RESOURCE: &str = "AmazonSSM.AddTagsToResource";

/// The error code of a create (`Overwrite=false`) whose name is taken.
pub const ALREADY_EXISTS: &str = "ParameterAlreadyExists";

/// The largest value of a Standard-tier parameter, in bytes: "Standard parameters, which
/// cannot exceed 4096 bytes" (AWS KMS developer guide, "How AWS Systems Manager Parameter
/// Store uses AWS KMS"; the `PutParameter` reference says "a value limit of 4 KB").
pub const MAX_VALUE_BYTES: usize = 4096;

/// Parameter Store counts a name's whole ARN, `arn:aws:ssm:<region>:<account>:parameter`
/// included, against this limit ("The maximum length for a parameter name that you
/// specify is 1011 characters. This count of 1011 characters includes the characters in
/// the ARN that precede the name", `PutParameter` API reference).
pub const MAX_ARN_LEN: usize = 1011;

/// Room kept for the ARN before the name, whatever the partition and region: `arn:` (4),
/// a partition up to `aws-us-gov` (10), `:ssm:` (5), a region name (up to 20), `:` (1), an
/// account (12) and `:parameter` (10) make 62; a name's leading `/` is its own separator.
const ARN_PREFIX_ALLOWANCE: usize = 64;

/// The longest parameter name accepted, in characters, so that its ARN fits anywhere.
pub const MAX_NAME_LEN: usize = MAX_ARN_LEN - ARN_PREFIX_ALLOWANCE;

/// The deepest hierarchy Parameter Store accepts ("a maximum depth of fifteen levels"),
/// counted as the `/` in a name: the user guide's `/Level-1/L2/…/L14/parameter-name`
/// (15 of them) is valid and its example with 17 fails with
/// `HierarchyLevelLimitExceededException`; 16 is refused here too.
pub const MAX_DEPTH: usize = 15;

/// Writes per second that the rotation allows itself by default.
///
/// Parameter Store's throughput quota is per account and region and shared by every
/// caller in it. AWS's quota page (<https://docs.aws.amazon.com/general/latest/gr/ssm.html>)
/// is quoted for a default of 40 transactions per second shared by the reads
/// (`GetParameter`, `GetParameters`, `GetParametersByPath`); the `PutParameter` reference
/// says the throughput setting covers `PutParameter` too but gives no number
/// (<https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_PutParameter.html>). The figure AWS Support gave users is 3 per second at the default
/// throughput and 10 with higher throughput enabled
/// (<https://github.com/github-aws-runners/terraform-aws-github-runner/issues/2944>).
/// Two a second stays under the lowest of these and leaves room for the account's other
/// writers; `ThrottlingException` is retried anyway.
pub const DEFAULT_WRITES_PER_SECOND: u32 = 2;

/// The tag set on a parameter when it is created that names its team.
pub const TEAM_TAG: &str = "concourse-sts:team";
/// The tag set on a parameter when it is created that names its account.
pub const ACCOUNT_TAG: &str = "concourse-sts:account";

/// Characters Parameter Store accepts in a name: `a-zA-Z0-9_.-/`.
pub fn is_parameter_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

/// Why Parameter Store would refuse this name, phrased to follow "parameter name …", or
/// `None` when it is valid. Stricter than Parameter Store where the rule is vague: an
/// empty path segment (`//`, a trailing `/`) is refused too.
pub fn parameter_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Some(format!(
            "is {len} characters long; Parameter Store allows {MAX_NAME_LEN} (its limit of {MAX_ARN_LEN} includes the ARN)"
        ));
    }
    if let Some(bad) = name.chars().find(|c| !is_parameter_name_char(*c)) {
        return Some(format!(
            "may hold only ASCII letters, digits, '_', '.', '-' and '/', found {}",
            describe_char(bad)
        ));
    }
    let depth = name.matches('/').count();
    let path = match name.strip_prefix('/') {
        Some(path) => path,
        None if depth > 0 => return Some("must start with '/' when it contains a '/'".to_owned()),
        None => name,
    };
    if path.split('/').any(str::is_empty) {
        return Some("has an empty path segment ('//' or a trailing '/')".to_owned());
    }
    if depth > MAX_DEPTH {
        return Some(format!(
            "is {depth} levels deep; Parameter Store allows {MAX_DEPTH}"
        ));
    }
    first_segment_problem(path)
}

/// Names whose first segment begins with `aws` or `ssm`, in any case and after the
/// leading '/', are reserved (`/aws/service/…` holds AWS's public parameters).
fn first_segment_problem(path: &str) -> Option<String> {
    let first = path.split('/').next().unwrap_or_default();
    let lower = first.to_ascii_lowercase();
    (lower.starts_with("aws") || lower.starts_with("ssm")).then(|| {
        format!(
            "must not start with \"aws\" or \"ssm\" (reserved by Parameter Store), found {first:?}"
        )
    })
}

/// Why Parameter Store would refuse this value as a Standard-tier parameter. The message
/// never quotes the value, which is a credential.
pub fn value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("value is empty; Parameter Store needs at least one character".to_owned());
    }
    if value.len() > MAX_VALUE_BYTES {
        return Some(format!(
            "value is {} bytes; a Standard-tier parameter holds at most {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    // "You can't include values wrapped in double brackets {{}} or {{ssm:parameter-name}}
    // in a parameter value" (`PutParameter` reference).
    if value.contains("{{") {
        return Some("value contains '{{', which Parameter Store refuses".to_owned());
    }
    None
}

/// The longest `KeyId` Parameter Store accepts.
pub const MAX_KEY_ID_LEN: usize = 256;

/// Why Parameter Store would refuse this `KeyId` (the `ssm_kms_key_id` variable): a key
/// id, key ARN, alias name or alias ARN of 1 to 256 characters from `a-zA-Z0-9:/_-` (the
/// pattern of `KeyId` in the service model). Whether the key exists and may be used is
/// only known when a write tries it (`InvalidKeyId`, `AccessDeniedException`).
pub fn key_id_problem(key_id: &str) -> Option<String> {
    let len = key_id.chars().count();
    if len == 0 || len > MAX_KEY_ID_LEN {
        return Some(format!(
            "must be 1 to {MAX_KEY_ID_LEN} characters long, got {len}"
        ));
    }
    key_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '_' | '-')))
        .map(|bad| {
            format!(
                "may hold only ASCII letters, digits, ':', '/', '_' and '-', found {}",
                describe_char(bad)
            )
        })
}

/// One parameter write, checked against Parameter Store's limits before anything is sent.
pub struct ParameterWrite<'a> {
    pub name: &'a str,
    pub value: &'a str,
    /// `ssm_kms_key_id`: the customer key to encrypt under; `None` uses the account's
    /// `alias/aws/ssm`. Sent on every write, so an overwrite never falls back to the
    /// default key.
    pub key_id: Option<&'a str>,
    /// Set on every write, so that whoever finds the parameter knows what writes it.
    pub description: String,
    pub team: &'a str,
    pub account: &'a str,
}

impl<'a> ParameterWrite<'a> {
    /// Refuses, as a [`AwsError::Request`] (permanent, never retried), a name, value or
    /// key id that Parameter Store would refuse.
    pub fn new(
        name: &'a str,
        value: &'a str,
        key_id: Option<&'a str>,
        team: &'a str,
        account: &'a str,
    ) -> Result<Self, AwsError> {
        let refused = |problem: String| AwsError::Request(format!("parameter {name:?}: {problem}"));
        if let Some(problem) = parameter_name_problem(name) {
            return Err(refused(format!("name {problem}")));
        }
        if let Some(problem) = value_problem(value) {
            return Err(refused(problem));
        }
        if let Some(problem) = key_id.and_then(key_id_problem) {
            return Err(refused(format!("KeyId {problem}")));
        }
        Ok(Self {
            name,
            value,
            key_id,
            description: format!(
                "Temporary AWS credentials for Concourse team {team}, account {account}; rotated by concourse-sts"
            ),
            team,
            account,
        })
    }

    fn tags(&self) -> [Tag<'a>; 2] {
        [
            Tag {
                key: TEAM_TAG,
                value: self.team,
            },
            Tag {
                key: ACCOUNT_TAG,
                value: self.account,
            },
        ]
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Tag<'a> {
    key: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutParameter<'a> {
    name: &'a str,
    value: &'a str,
    r#type: &'static str,
    tier: &'static str,
    overwrite: bool,
    description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    /// Only ever on a create: Parameter Store refuses tags with `Overwrite=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<[Tag<'a>; 2]>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AddTagsToResource<'a> {
    resource_type: &'static str,
    resource_id: &'a str,
    tags: [Tag<'a>; 2],
}

fn put_parameter(write: &ParameterWrite, overwrite: bool) -> Operation {
    Operation::new(
        PUT_PARAMETER,
        &PutParameter {
            name: write.name,
            value: write.value,
            r#type: "SecureString",
            tier: "Standard",
            overwrite,
            description: &write.description,
            key_id: write.key_id,
            tags: (!overwrite).then(|| write.tags()),
        },
    )
}

/// A parameter that does not exist yet, tagged with its team and account. Answers
/// [`ALREADY_EXISTS`] when the name is taken, and leaves that parameter as it was.
pub fn create_parameter(write: &ParameterWrite) -> Operation {
    put_parameter(write, false)
}

/// A new version of the parameter, or the parameter itself (untagged, version 1) when it
/// does not exist.
pub fn overwrite_parameter(write: &ParameterWrite) -> Operation {
    put_parameter(write, true)
}

/// The team and account tags on an existing parameter (added or overwritten).
pub fn tag_parameter(write: &ParameterWrite) -> Operation {
    Operation::new(
        ADD_TAGS_TO_RESOURCE,
        &AddTagsToResource {
            resource_type: "Parameter",
            resource_id: write.name,
            tags: write.tags(),
        },
    )
}

/// A JSON object with any fields.
type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Reads a `PutParameter` answer: the new version on a 2xx that names one (a garbled 200
/// from a proxy is not success), a typed error otherwise.
pub fn check_put(response: &HttpResponse) -> Result<u64, AwsError> {
    if !(200..300).contains(&response.status) {
        return Err(parse_error_answer(response, "a Parameter Store"));
    }
    // Read as an object first: serde would also fill a struct from a JSON array.
    serde_json::from_slice::<JsonObject>(&response.body)
        .ok()
        .and_then(|answer| answer.get("Version")?.as_u64())
        .filter(|version| *version > 0)
        .ok_or_else(|| AwsError::Malformed {
            status: response.status,
            detail: "PutParameter answered without the parameter's version".to_owned(),
        })
}

/// Reads an `AddTagsToResource` answer: an empty JSON object on success.
pub fn check_tagged(response: &HttpResponse) -> Result<(), AwsError> {
    if !(200..300).contains(&response.status) {
        return Err(parse_error_answer(response, "a Parameter Store"));
    }
    serde_json::from_slice::<JsonObject>(&response.body)
        .map(drop)
        .map_err(|_| AwsError::Malformed {
            status: response.status,
            detail: "AddTagsToResource answered with something other than a JSON object".to_owned(),
        })
}

/// How a parameter write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParameterWritten {
    /// A new version of an existing parameter.
    Updated { version: u64 },
    /// The parameter did not exist and was created with its tags.
    Created,
    /// An overwrite created the parameter (it was expected to exist) and tagging it
    /// afterwards failed. The value is in place and usable; only the tags are missing,
    /// and later overwrites will not add them.
    CreatedUntagged { tagging: AwsError },
}

impl ParameterWritten {
    /// The outcome in the terms shared with Secrets Manager writes.
    pub fn written(&self) -> Written {
        match self {
            ParameterWritten::Updated { .. } => Written::Updated,
            ParameterWritten::Created | ParameterWritten::CreatedUntagged { .. } => {
                Written::Created
            }
        }
    }
}

/// Writes one parameter in the fewest calls for what the caller expects, through `send`,
/// which signs (service [`SERVICE`]), paces and sends one [`Operation`] and returns the
/// whole answer.
///
/// - [`Expectation::Exists`]: an overwrite, one call. If its answer is version 1, the
///   parameter did not exist and this call created it, untagged; an `AddTagsToResource`
///   follows, whose failure is reported in the outcome rather than as a failed write.
/// - [`Expectation::Missing`]: a tagged create, one call. If the name is taken
///   ([`ALREADY_EXISTS`]), an overwrite follows and the existing tags stay as they are.
///
/// A retry of the whole write after a lost answer is safe from either side: the create
/// finds the name taken and overwrites, the overwrite adds one more version.
pub async fn write_parameter<S, F>(
    write: &ParameterWrite<'_>,
    expectation: Expectation,
    mut send: S,
) -> Result<ParameterWritten, AwsError>
where
    S: FnMut(Operation) -> F,
    F: Future<Output = Result<HttpResponse, AwsError>>,
{
    if expectation == Expectation::Missing {
        match send(create_parameter(write))
            .await
            .and_then(|answer| check_put(&answer))
        {
            Ok(_) => return Ok(ParameterWritten::Created),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
    }
    let version = check_put(&send(overwrite_parameter(write)).await?)?;
    if version > 1 {
        return Ok(ParameterWritten::Updated { version });
    }
    let tagged = send(tag_parameter(write))
        .await
        .and_then(|answer| check_tagged(&answer));
    Ok(match tagged {
        Ok(()) => ParameterWritten::Created,
        Err(tagging) => ParameterWritten::CreatedUntagged { tagging },
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;
    use crate::aws::error::tests::service;
    use crate::aws::TransportError;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(status, body)
    }

    fn write<'a>(name: &'a str, value: &'a str, key_id: Option<&'a str>) -> ParameterWrite<'a> {
        ParameterWrite::new(name, value, key_id, "example-team", "divx-lab").unwrap()
    }

    fn body(operation: &Operation) -> String {
        String::from_utf8(operation.body.clone()).unwrap()
    }

    const DESCRIPTION: &str = "Temporary AWS credentials for Concourse team example-team, account divx-lab; rotated by concourse-sts";

    #[test]
    fn builds_the_create_body_with_tags_and_without_overwrite() {
        let write = write(
            "/concourse/example-team/divx-lab-access-key",
            "AS\"IA",
            None,
        );
        let create = create_parameter(&write);
        assert_eq!(create.target, "AmazonSSM.PutParameter");
        assert_eq!(
            body(&create),
            format!(
                r#"{{"Name":"/concourse/example-team/divx-lab-access-key","Value":"AS\"IA","Type":"SecureString","Tier":"Standard","Overwrite":false,"Description":"{DESCRIPTION}","Tags":[{{"Key":"concourse-sts:team","Value":"example-team"}},{{"Key":"concourse-sts:account","Value":"divx-lab"}}]}}"#
            )
        );
    }

    #[test]
    fn builds_the_overwrite_body_without_tags_and_with_the_key_on_every_write() {
        let key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let write = write("/concourse/example-team/divx-lab", "{\"a\":1}", Some(key));
        let overwrite = overwrite_parameter(&write);
        assert_eq!(overwrite.target, "AmazonSSM.PutParameter");
        assert_eq!(
            body(&overwrite),
            format!(
                r#"{{"Name":"/concourse/example-team/divx-lab","Value":"{{\"a\":1}}","Type":"SecureString","Tier":"Standard","Overwrite":true,"Description":"{DESCRIPTION}","KeyId":"{key}"}}"#
            )
        );
        let create: serde_json::Value =
            serde_json::from_slice(&create_parameter(&write).body).unwrap();
        assert_eq!(create["KeyId"], key);
    }

    #[test]
    fn tags_and_overwrite_never_travel_together() {
        let write = write("/concourse/t/a", "v", None);
        for operation in [create_parameter(&write), overwrite_parameter(&write)] {
            let sent: serde_json::Value = serde_json::from_slice(&operation.body).unwrap();
            assert_ne!(
                sent["Overwrite"].as_bool().unwrap(),
                sent.get("Tags").is_some(),
                "{sent}"
            );
        }
    }

    #[test]
    fn builds_the_tagging_body() {
        let tag = tag_parameter(&write("/concourse/t/a", "v", None));
        assert_eq!(tag.target, "AmazonSSM.AddTagsToResource");
        assert_eq!(
            body(&tag),
            r#"{"ResourceType":"Parameter","ResourceId":"/concourse/t/a","Tags":[{"Key":"concourse-sts:team","Value":"example-team"},{"Key":"concourse-sts:account","Value":"divx-lab"}]}"#
        );
    }

    #[test]
    fn success_is_a_2xx_naming_the_new_version() {
        assert_eq!(
            check_put(&answer(200, r#"{"Version": 1, "Tier": "Standard"}"#)),
            Ok(1)
        );
        assert_eq!(
            check_put(&answer(200, r#"{"Tier":"Standard","Version":42}"#)),
            Ok(42)
        );
        for garbled in [
            "",
            "{}",
            r#"{"Version":0}"#,
            r#"{"Version":-1}"#,
            r#"{"Version":"2"}"#,
            r#"{"Version":1.5}"#,
            "[1]",
            "\u{1}\u{2}",
            r#"{"Version": 3"#,
        ] {
            let error = check_put(&answer(200, garbled)).unwrap_err();
            assert!(
                matches!(error, AwsError::Malformed { status: 200, .. }),
                "{garbled:?}: {error:?}"
            );
        }
        assert_eq!(check_tagged(&answer(200, "{}")), Ok(()));
        for garbled in ["", "[]", "null", "<ok/>"] {
            let error = check_tagged(&answer(200, garbled)).unwrap_err();
            assert!(
                matches!(error, AwsError::Malformed { status: 200, .. }),
                "{garbled:?}"
            );
        }
    }

    #[test]
    fn reads_json_errors_in_every_spelling() {
        // moto 5.2.5, byte for byte: both spellings of the message side by side.
        let taken = r#"{"__type": "ParameterAlreadyExists", "message": "The parameter already exists. To overwrite this value, set the overwrite option in the request to true.", "Message": "The parameter already exists. To overwrite this value, set the overwrite option in the request to true."}"#;
        let error = check_put(&answer(400, taken)).unwrap_err();
        assert_eq!(error.code(), Some(ALREADY_EXISTS));
        assert!(error.to_string().contains("set the overwrite option"));

        let cases = [
            (
                400,
                r#"{"__type":"com.amazonaws.ssm#TooManyUpdates","message":"There are concurrent updates"}"#,
                "TooManyUpdates",
                "concurrent updates",
            ),
            (
                400,
                r#"{"__type":"ThrottlingException","Message":"Rate exceeded"}"#,
                "ThrottlingException",
                "Rate exceeded",
            ),
            (
                400,
                r#"{"__type": "ValidationException", "Message": "Invalid request: tags and overwrite can't be used together."}"#,
                "ValidationException",
                "tags and overwrite",
            ),
            (
                400,
                r#"{"__type":"ParameterLimitExceeded"}"#,
                "ParameterLimitExceeded",
                "",
            ),
            (
                500,
                r#"{"__type":"InternalServerError","message":"oops"}"#,
                "InternalServerError",
                "oops",
            ),
        ];
        for (status, body, code, message) in cases {
            let error = check_put(&answer(status, body)).unwrap_err();
            assert_eq!(error.code(), Some(code), "{body}");
            assert!(error.to_string().contains(message), "{error}");
        }
        let mut denied = answer(
            400,
            r#"{"__type":"AccessDeniedException","Message":"User is not authorized to perform: ssm:AddTagsToResource"}"#,
        );
        denied
            .headers
            .insert("x-amzn-RequestId", "8b1f-4c".parse().unwrap());
        let error = check_tagged(&denied).unwrap_err();
        assert_eq!(error.code(), Some("AccessDeniedException"));
        assert!(error.to_string().ends_with("(request id 8b1f-4c)"));
    }

    #[test]
    fn reads_the_xml_authorization_failure() {
        // moto's answer to a rotator without ssm:PutParameter, byte for byte.
        let body = r#"<?xml version="1.0" encoding="utf-8"?>
<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/concourse-sts is not authorized to perform: ssm:PutParameter</Message><Type>Sender</Type></Error></Errors></ErrorResponse>"#;
        let error = check_put(&answer(403, body)).unwrap_err();
        assert_eq!(error.code(), Some("AccessDenied"));
        assert!(error.to_string().contains("ssm:PutParameter"));
        assert!(error.is_permanent() && !error.is_retryable());
    }

    #[test]
    fn unreadable_errors_are_malformed() {
        for body in [
            "",
            "<html>502 Bad Gateway</html>",
            r#"{"message":"no type"}"#,
            r#"{"__type":""}"#,
            r#"{"__type":5}"#,
            "[1]",
            "\u{0}\u{ff}",
        ] {
            for check in [check_put, |r: &HttpResponse| check_tagged(r).map(|()| 0)] {
                let error = check(&answer(502, body)).unwrap_err();
                assert!(
                    matches!(error, AwsError::Malformed { status: 502, .. }),
                    "{body:?}: {error:?}"
                );
            }
        }
    }

    #[test]
    fn throttling_and_conflicts_are_retried_limits_are_not() {
        for code in ["ThrottlingException", "TooManyUpdates"] {
            let error = service(400, code);
            assert!(error.is_retryable() && !error.is_permanent(), "{code}");
        }
        assert!(service(500, "InternalServerError").is_retryable());
        for code in [
            "ParameterLimitExceeded",
            "ParameterMaxVersionLimitExceeded",
            "HierarchyLevelLimitExceededException",
            "HierarchyTypeMismatchException",
            "InvalidKeyId",
            "ParameterPatternMismatchException",
            "UnsupportedParameterType",
            "AccessDeniedException",
            "AccessDenied",
            "ValidationException",
        ] {
            let error = service(400, code);
            assert!(error.is_permanent() && !error.is_retryable(), "{code}");
        }
        let too_big = ParameterWrite::new("/c/t/a", &"x".repeat(5000), None, "t", "a")
            .err()
            .unwrap();
        assert!(too_big.is_permanent() && !too_big.is_retryable());
    }

    #[test]
    fn names_follow_parameter_store_rules() {
        for name in [
            "/concourse/example-team/divx-lab-session-token",
            "/concourse/Team_1.prod/a",
            "plain-name",
            "/a",
            "/concourse/aws/ssm",
            "/awx/a",
        ] {
            assert_eq!(parameter_name_problem(name), None, "{name}");
        }
        let cases = [
            ("", "must not be empty"),
            ("/concourse/t/a b", "found U+0020"),
            ("/concourse/t/a+b", "found '+'"),
            ("/concourse/t/a@b", "found '@'"),
            ("/concourse/t/a=b", "found '='"),
            ("/concourse/t/é", "found U+00E9"),
            ("/concourse/{{.Team}}", "found '{'"),
            ("concourse/t/a", "must start with '/'"),
            ("/concourse//a", "empty path segment"),
            ("/concourse/t/", "empty path segment"),
            ("/", "empty path segment"),
            ("/aws/service/x", "\"aws\""),
            ("/AWSome/x", "reserved"),
            ("/ssm-team/x", "reserved"),
            ("SSMparameter", "reserved"),
            ("awsTestParameter", "reserved"),
        ];
        for (name, expected) in cases {
            let problem = parameter_name_problem(name).unwrap_or_default();
            assert!(problem.contains(expected), "{name:?}: {problem:?}");
        }
    }

    #[test]
    fn depth_and_length_limits_are_exact() {
        let levels = |n: usize| (1..=n).map(|i| format!("/l{i}")).collect::<String>();
        assert_eq!(parameter_name_problem(&levels(MAX_DEPTH)), None);
        assert!(parameter_name_problem(&levels(MAX_DEPTH + 1))
            .unwrap()
            .contains("16 levels deep"));
        let longest = format!("/{}", "a".repeat(MAX_NAME_LEN - 1));
        assert_eq!(parameter_name_problem(&longest), None);
        assert!(parameter_name_problem(&format!("{longest}b"))
            .unwrap()
            .contains(&format!("is {} characters long", MAX_NAME_LEN + 1)));
        // The ARN of the longest name fits in the longest partition and region.
        let arn = format!("arn:aws-us-gov:ssm:us-gov-northwest-99:123456789012:parameter{longest}");
        assert!(arn.len() <= MAX_ARN_LEN, "{}", arn.len());
    }

    #[test]
    fn values_are_checked_in_bytes_before_sending() {
        assert_eq!(value_problem(&"a".repeat(MAX_VALUE_BYTES)), None);
        assert!(value_problem(&"a".repeat(MAX_VALUE_BYTES + 1))
            .unwrap()
            .contains("4097 bytes"));
        // 2,049 characters, 4,098 bytes.
        assert!(value_problem(&"é".repeat(2049)).is_some());
        assert!(value_problem("").unwrap().contains("empty"));
        assert!(value_problem("x{{ssm:other}}").unwrap().contains("'{{'"));
        assert_eq!(
            value_problem(r#"{"AccessKeyId":"ASIA","SecretAccessKey":"a/b+c="}"#),
            None
        );

        let secret = "S3CR3T".repeat(700);
        let error = ParameterWrite::new("/concourse/t/a", &secret, None, "t", "a")
            .err()
            .unwrap();
        let text = error.to_string();
        assert!(matches!(error, AwsError::Request(_)));
        assert!(
            text.contains("/concourse/t/a") && text.contains("4200 bytes"),
            "{text}"
        );
        assert!(!text.contains("S3CR3T"), "the value stays out of the error");
        let error = ParameterWrite::new("/concourse/t/a b", "v", None, "t", "a")
            .err()
            .unwrap();
        assert!(error.to_string().contains("name may hold only"), "{error}");
    }

    #[test]
    fn key_ids_follow_the_service_model() {
        for key_id in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "alias/concourse-sts",
            "arn:aws:kms:us-east-1:123456789012:alias/concourse_sts",
        ] {
            assert_eq!(key_id_problem(key_id), None, "{key_id}");
        }
        assert!(key_id_problem("").unwrap().contains("got 0"));
        assert!(key_id_problem(&"k".repeat(257))
            .unwrap()
            .contains("got 257"));
        assert!(key_id_problem("alias/my key").unwrap().contains("U+0020"));
        assert!(key_id_problem("alias/a.b").unwrap().contains("'.'"));
        let error = ParameterWrite::new("/c/t/a", "v", Some("alias/a b"), "t", "a")
            .err()
            .unwrap();
        assert!(error.to_string().contains("KeyId may hold only"), "{error}");
    }

    /// A scripted `send`: records each operation and answers from a list.
    struct Script {
        answers: RefCell<VecDeque<Result<HttpResponse, AwsError>>>,
        sent: RefCell<Vec<(&'static str, serde_json::Value)>>,
    }

    impl Script {
        fn new(answers: Vec<Result<HttpResponse, AwsError>>) -> Self {
            Self {
                answers: RefCell::new(answers.into()),
                sent: RefCell::default(),
            }
        }

        fn run(&self, expectation: Expectation) -> Result<ParameterWritten, AwsError> {
            let write = write("/concourse/example-team/divx-lab", "v", None);
            futures::executor::block_on(write_parameter(&write, expectation, |operation| {
                let sent = serde_json::from_slice(&operation.body).unwrap();
                self.sent.borrow_mut().push((operation.target, sent));
                let answer = self.answers.borrow_mut().pop_front().expect("an answer");
                async move { answer }
            }))
        }

        /// Each call as "Put(overwrite)", "Put(create, tagged)" or "Tag".
        fn calls(&self) -> Vec<&'static str> {
            self.sent
                .borrow()
                .iter()
                .map(
                    |(target, body)| match (*target, body["Overwrite"].as_bool()) {
                        ("AmazonSSM.PutParameter", Some(true)) => "overwrite",
                        ("AmazonSSM.PutParameter", Some(false)) => "create",
                        ("AmazonSSM.AddTagsToResource", None) => "tag",
                        other => panic!("unexpected call {other:?}"),
                    },
                )
                .collect()
        }
    }

    fn version(n: u64) -> Result<HttpResponse, AwsError> {
        Ok(answer(
            200,
            &format!(r#"{{"Version":{n},"Tier":"Standard"}}"#),
        ))
    }

    fn error(status: u16, code: &str) -> Result<HttpResponse, AwsError> {
        Ok(answer(
            status,
            &format!(r#"{{"__type":"{code}","message":"m"}}"#),
        ))
    }

    #[test]
    fn a_rotation_overwrites_in_one_call() {
        let script = Script::new(vec![version(7)]);
        let written = script.run(Expectation::Exists).unwrap();
        assert_eq!(written, ParameterWritten::Updated { version: 7 });
        assert_eq!(written.written(), Written::Updated);
        assert_eq!(script.calls(), ["overwrite"]);
        assert!(script.sent.borrow()[0].1.get("Tags").is_none());
    }

    #[test]
    fn a_first_write_creates_tagged_in_one_call() {
        let script = Script::new(vec![version(1)]);
        let written = script.run(Expectation::Missing).unwrap();
        assert_eq!(written, ParameterWritten::Created);
        assert_eq!(written.written(), Written::Created);
        assert_eq!(script.calls(), ["create"]);
        assert_eq!(script.sent.borrow()[0].1["Tags"][0]["Key"], TEAM_TAG);
    }

    #[test]
    fn a_create_that_finds_the_name_taken_overwrites() {
        let script = Script::new(vec![error(400, ALREADY_EXISTS), version(3)]);
        assert_eq!(
            script.run(Expectation::Missing),
            Ok(ParameterWritten::Updated { version: 3 })
        );
        assert_eq!(script.calls(), ["create", "overwrite"]);
    }

    #[test]
    fn an_overwrite_that_created_the_parameter_tags_it() {
        let script = Script::new(vec![version(1), Ok(answer(200, "{}"))]);
        assert_eq!(
            script.run(Expectation::Exists),
            Ok(ParameterWritten::Created)
        );
        assert_eq!(script.calls(), ["overwrite", "tag"]);

        // Taken, then deleted before the overwrite: version 1 again, so tagged.
        let script = Script::new(vec![
            error(400, ALREADY_EXISTS),
            version(1),
            Ok(answer(200, "{}")),
        ]);
        assert_eq!(
            script.run(Expectation::Missing),
            Ok(ParameterWritten::Created)
        );
        assert_eq!(script.calls(), ["create", "overwrite", "tag"]);
    }

    #[test]
    fn a_failed_tagging_does_not_fail_a_landed_value() {
        let denied = Script::new(vec![version(1), error(400, "AccessDeniedException")]);
        let written = denied.run(Expectation::Exists).unwrap();
        assert_eq!(written.written(), Written::Created);
        let ParameterWritten::CreatedUntagged { tagging } = &written else {
            panic!("{written:?}");
        };
        assert_eq!(tagging.code(), Some("AccessDeniedException"));

        let lost = Script::new(vec![
            version(1),
            Err(AwsError::Transport(TransportError::Timeout(
                "slow TOKEN".into(),
            ))),
        ]);
        let written = lost.run(Expectation::Exists).unwrap();
        assert_eq!(
            written,
            ParameterWritten::CreatedUntagged {
                tagging: AwsError::Transport(TransportError::Timeout("slow TOKEN".into()))
            }
        );
    }

    #[test]
    fn failures_end_the_write_without_further_calls() {
        let script = Script::new(vec![error(400, "AccessDeniedException")]);
        assert_eq!(
            script.run(Expectation::Missing).unwrap_err().code(),
            Some("AccessDeniedException")
        );
        assert_eq!(script.calls(), ["create"]);

        let script = Script::new(vec![error(400, "ThrottlingException")]);
        let throttled = script.run(Expectation::Exists).unwrap_err();
        assert!(throttled.is_retryable());
        assert_eq!(script.calls(), ["overwrite"]);

        let script = Script::new(vec![Err(AwsError::Transport(TransportError::Connection(
            "reset".into(),
        )))]);
        assert!(matches!(
            script.run(Expectation::Exists),
            Err(AwsError::Transport(_))
        ));

        let script = Script::new(vec![Ok(answer(200, "<html>proxy</html>"))]);
        assert!(matches!(
            script.run(Expectation::Missing),
            Err(AwsError::Malformed { status: 200, .. })
        ));
    }
}
