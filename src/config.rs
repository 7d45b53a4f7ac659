//! Team documents: the Lambda's JSON, parsed and validated without any I/O.
//!
//! A team registers itself by storing `{"name", "accounts": [{"name", "roleArn",
//! "duration"?, "externalId"?}]}` under `team/<name>`. serde derives the shape (unknown
//! fields are refused, so a typo such as `rolearn` is never ignored); [`validate`] then
//! collects every remaining problem with the field it concerns, so one bad document
//! produces one clear error and nothing else is skipped.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::names::name_problem;

/// The key prefix under which team documents live in the key-value store.
pub const TEAM_KEY_PREFIX: &str = "team/";
/// STS's default session length, and the Lambda's.
pub const DEFAULT_DURATION_SECONDS: u32 = 3600;
/// STS accepts 900 to 43200 seconds (and at most the role's own maximum).
pub const DURATION_RANGE: std::ops::RangeInclusive<u32> = 900..=43200;
/// A team document larger than this is refused before it is parsed.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// How many accounts one team may list.
pub const MAX_ACCOUNTS_PER_TEAM: usize = 100;
/// `sts:ExternalId` is 2 to 1224 characters of `[\w+=,.@:/-]`.
const EXTERNAL_ID_LEN: std::ops::RangeInclusive<usize> = 2..=1224;
/// The field name used for problems with the document as a whole.
const WHOLE_DOCUMENT: &str = "(document)";

/// A validated team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamDocument {
    pub name: String,
    pub accounts: Vec<AccountConfig>,
}

/// One account of a team: where its credentials come from and how long they live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    pub name: String,
    pub role_arn: String,
    pub duration_seconds: u32,
    pub external_id: Option<String>,
}

/// The document as written. Required fields are `Option`s so that a missing one is a
/// problem [`validate`] reports beside the others rather than the first and only error;
/// `duration` keeps the JSON value as given so that its problem can echo it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct RawTeam {
    name: Option<String>,
    accounts: Option<Vec<RawAccount>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a JSON object"
)]
struct RawAccount {
    name: Option<String>,
    role_arn: Option<String>,
    #[serde(default, deserialize_with = "given")]
    duration: Option<Value>,
    external_id: Option<String>,
}

/// Keeps an explicit `null` as `Some(Value::Null)`, so that only an absent field means
/// "use the default".
fn given<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// One thing wrong with a team document: the field (a JSON path) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

/// A team document that cannot be used, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTeam {
    /// The key-value key the document was read from.
    pub key: String,
    pub problems: Vec<Problem>,
}

impl InvalidTeam {
    /// The team name the key claims, which is what an operator searches logs for.
    pub fn team(&self) -> &str {
        self.key.strip_prefix(TEAM_KEY_PREFIX).unwrap_or(&self.key)
    }
}

impl fmt::Display for InvalidTeam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "team {:?} (key {:?}) is invalid: ",
            self.team(),
            self.key
        )?;
        for (i, problem) in self.problems.iter().enumerate() {
            let separator = if i == 0 { "" } else { "; " };
            write!(f, "{separator}{}: {}", problem.field, problem.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidTeam {}

/// Collects problems while validating a document.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// `value` when no problem was added since `before`.
    fn unless_added_since<T>(&self, before: usize, value: T) -> Option<T> {
        (self.0.len() == before).then_some(value)
    }
}

/// Parses and validates the document stored under `key`.
pub fn parse_team(key: &str, bytes: &[u8]) -> Result<TeamDocument, InvalidTeam> {
    let invalid = |problems| InvalidTeam {
        key: key.to_owned(),
        problems,
    };
    let raw = deserialize(bytes).map_err(|problem| invalid(vec![problem]))?;
    let mut problems = Problems::default();
    match validate(key, raw, &mut problems) {
        Some(team) if problems.0.is_empty() => Ok(team),
        _ => Err(invalid(problems.0)),
    }
}

/// The shape: size, JSON syntax, types and field names. Stops at the first problem, which
/// names the field it was found at.
fn deserialize(bytes: &[u8]) -> Result<RawTeam, Problem> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(Problem {
            field: WHOLE_DOCUMENT.into(),
            reason: format!(
                "is {} bytes, more than the {MAX_DOCUMENT_BYTES} allowed",
                bytes.len()
            ),
        });
    }
    // serde also reads a struct from an array, by position; a document is an object.
    if bytes.trim_ascii_start().starts_with(b"[") {
        return Err(Problem {
            field: WHOLE_DOCUMENT.into(),
            reason: "must be a JSON object".into(),
        });
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let raw = serde_path_to_error::deserialize(&mut json).map_err(|error| {
        let field = error.path().to_string();
        shape_problem(field, error.into_inner())
    })?;
    json.end()
        .map_err(|error| shape_problem(String::new(), error))?;
    Ok(raw)
}

/// A problem serde found at `field` (`.` or empty for the whole document).
fn shape_problem(field: String, error: serde_json::Error) -> Problem {
    if error.is_syntax() || error.is_eof() {
        return Problem {
            field: WHOLE_DOCUMENT.to_owned(),
            reason: format!("is not valid JSON: {error}"),
        };
    }
    let field = match field.as_str() {
        "" | "." => WHOLE_DOCUMENT.to_owned(),
        _ => field,
    };
    Problem {
        field,
        reason: error.to_string(),
    }
}

/// Checks everything serde cannot: names, ARNs, ranges, uniqueness, the key. Every
/// problem is added; `None` when any was found.
fn validate(key: &str, raw: RawTeam, problems: &mut Problems) -> Option<TeamDocument> {
    let name = team_name(key, raw.name, problems);
    let accounts = accounts(raw.accounts, problems);
    Some(TeamDocument {
        name: name?,
        accounts: accounts?,
    })
}

fn team_name(key: &str, name: Option<String>, problems: &mut Problems) -> Option<String> {
    let Some(name) = name else {
        problems.add("name", "is missing");
        return None;
    };
    if let Some(reason) = name_problem(&name, 2) {
        problems.add("name", reason);
        return None;
    }
    let key_name = key.strip_prefix(TEAM_KEY_PREFIX).unwrap_or(key);
    if key_name != name {
        problems.add(
            "name",
            format!("is {name:?} but the document is stored under key {key:?}; they must match"),
        );
        return None;
    }
    Some(name)
}

fn accounts(list: Option<Vec<RawAccount>>, problems: &mut Problems) -> Option<Vec<AccountConfig>> {
    let Some(list) = list else {
        problems.add("accounts", "is missing");
        return None;
    };
    if list.is_empty() {
        problems.add("accounts", "must list at least one account");
    }
    if list.len() > MAX_ACCOUNTS_PER_TEAM {
        problems.add(
            "accounts",
            format!(
                "lists {} accounts, more than the {MAX_ACCOUNTS_PER_TEAM} allowed",
                list.len()
            ),
        );
        return None;
    }
    let before = problems.0.len();
    let accounts: Vec<AccountConfig> = list
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| account(&format!("accounts[{i}]."), raw, problems))
        .collect();
    let mut seen = HashSet::new();
    for (i, account) in accounts.iter().enumerate() {
        if !seen.insert(account.name.as_str()) {
            problems.add(
                format!("accounts[{i}].name"),
                format!(
                    "{:?} is listed twice; account names must be unique within a team",
                    account.name
                ),
            );
        }
    }
    problems.unless_added_since(before, accounts)
}

fn account(prefix: &str, raw: RawAccount, problems: &mut Problems) -> Option<AccountConfig> {
    let before = problems.0.len();
    let field = |name: &str| format!("{prefix}{name}");
    let name = required(raw.name, &field("name"), problems);
    if let Some(reason) = name.as_deref().and_then(|name| name_problem(name, 1)) {
        problems.add(field("name"), reason);
    }
    let role_arn = required(raw.role_arn, &field("roleArn"), problems);
    if role_arn.as_deref().is_some_and(|arn| !is_role_arn(arn)) {
        problems.add(
            field("roleArn"),
            "must be an IAM role ARN, arn:aws:iam::123456789012:role/name",
        );
    }
    let duration_seconds = duration(raw.duration.as_ref(), &field("duration"), problems);
    if raw
        .external_id
        .as_deref()
        .is_some_and(|id| !is_external_id(id))
    {
        problems.add(
            field("externalId"),
            "must be a string of 2 to 1224 characters from ASCII letters, digits and _+=,.@:/-",
        );
    }
    problems.unless_added_since(
        before,
        AccountConfig {
            name: name?,
            role_arn: role_arn?,
            duration_seconds: duration_seconds?,
            external_id: raw.external_id,
        },
    )
}

fn required(value: Option<String>, field: &str, problems: &mut Problems) -> Option<String> {
    if value.is_none() {
        problems.add(field, "is missing");
    }
    value
}

/// An IAM role ARN: `arn:<partition>:iam::<12 digits>:role/<path and name>`.
pub fn is_role_arn(arn: &str) -> bool {
    let fields: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = fields[..] else {
        return false;
    };
    prefix == "arn"
        && matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.strip_prefix("role/").is_some_and(|name| {
            !name.is_empty() && name.len() <= 512 && name.chars().all(is_role_name_char)
        })
}

fn is_role_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '=' | ',' | '.' | '@' | '_' | '-' | '/')
}

fn is_external_id(id: &str) -> bool {
    EXTERNAL_ID_LEN.contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c))
}

/// The session length: absent means STS's default; anything but a whole number of seconds
/// within STS's range is a problem that quotes what was given.
fn duration(value: Option<&Value>, field: &str, problems: &mut Problems) -> Option<u32> {
    let Some(value) = value else {
        return Some(DEFAULT_DURATION_SECONDS);
    };
    let seconds = value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|seconds| DURATION_RANGE.contains(seconds));
    if seconds.is_none() {
        problems.add(
            field,
            format!(
                "must be a whole number of seconds from {} to {}, got {value}",
                DURATION_RANGE.start(),
                DURATION_RANGE.end()
            ),
        );
    }
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"name": "example-team", "accounts": [{"name": "divx-lab", "roleArn": "arn:aws:iam::123456789999:role/machine-user-example", "duration": 7200}]}"#;

    fn problems(key: &str, document: &str) -> Vec<Problem> {
        parse_team(key, document.as_bytes()).unwrap_err().problems
    }

    fn fields(key: &str, document: &str) -> Vec<String> {
        problems(key, document)
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn parses_the_lambda_document() {
        let team = parse_team("team/example-team", EXAMPLE.as_bytes()).unwrap();
        assert_eq!(team.name, "example-team");
        assert_eq!(
            team.accounts,
            vec![AccountConfig {
                name: "divx-lab".into(),
                role_arn: "arn:aws:iam::123456789999:role/machine-user-example".into(),
                duration_seconds: 7200,
                external_id: None,
            }]
        );
    }

    #[test]
    fn duration_defaults_to_an_hour_and_external_id_is_optional() {
        let doc = r#"{"name":"t1","accounts":[{"name":"a","roleArn":"arn:aws-cn:iam::123456789012:role/ci/deployer","externalId":"team-t1"}]}"#;
        let account = &parse_team("team/t1", doc.as_bytes()).unwrap().accounts[0];
        assert_eq!(account.duration_seconds, 3600);
        assert_eq!(account.external_id.as_deref(), Some("team-t1"));
    }

    #[test]
    fn malformed_json_is_one_clear_problem() {
        for broken in ["{\"name\": \"t1\", ", "{} trailing", "", "\u{1}"] {
            let found = problems("team/t1", broken);
            assert_eq!(found.len(), 1, "{broken:?}");
            assert_eq!(found[0].field, "(document)");
            assert!(
                found[0].reason.starts_with("is not valid JSON"),
                "{found:?}"
            );
        }
        for other in ["[1,2]", " [\"t1\", []]", "5", "\"t1\""] {
            let found = problems("team/t1", other);
            assert_eq!(found[0].field, "(document)", "{other}");
            assert!(found[0].reason.contains("JSON object"), "{found:?}");
        }
    }

    #[test]
    fn missing_fields_are_named() {
        assert_eq!(fields("team/t1", "{}"), ["name", "accounts"]);
        assert_eq!(
            fields("team/t1", r#"{"name":"t1","accounts":[{}]}"#),
            ["accounts[0].name", "accounts[0].roleArn"]
        );
    }

    #[test]
    fn wrong_types_name_their_field() {
        let found = problems("team/t1", r#"{"name":5,"accounts":[]}"#);
        assert_eq!(found[0].field, "name");
        assert!(found[0].reason.contains("expected a string"), "{found:?}");
        let found = problems(
            "team/t1",
            r#"{"name":"t1","accounts":[{"name":"a","roleArn":"arn:aws:iam::123456789012:role/r","externalId":7}]}"#,
        );
        assert_eq!(found[0].field, "accounts[0].externalId");
        let found = problems("team/t1", r#"{"name":"t1","accounts":{}}"#);
        assert_eq!(found[0].field, "accounts");
    }

    #[test]
    fn the_key_and_the_name_must_agree() {
        let found = problems("team/other", EXAMPLE);
        assert_eq!(found[0].field, "name");
        assert!(found[0].reason.contains("\"team/other\""), "{found:?}");
    }

    #[test]
    fn duplicate_accounts_are_refused() {
        let doc = r#"{"name":"t1","accounts":[
            {"name":"a","roleArn":"arn:aws:iam::123456789012:role/r"},
            {"name":"a","roleArn":"arn:aws:iam::123456789012:role/s"}]}"#;
        let found = problems("team/t1", doc);
        assert_eq!(found[0].field, "accounts[1].name");
        assert!(found[0].reason.contains("listed twice"));
    }

    #[test]
    fn durations_outside_sts_limits_are_refused() {
        for duration in [
            "899",
            "43201",
            "-1",
            "3600.5",
            "\"3600\"",
            "null",
            "99999999999",
        ] {
            let doc = format!(
                r#"{{"name":"t1","accounts":[{{"name":"a","roleArn":"arn:aws:iam::123456789012:role/r","duration":{duration}}}]}}"#
            );
            let found = problems("team/t1", &doc);
            assert_eq!(found[0].field, "accounts[0].duration", "{duration}");
            assert!(found[0].reason.contains("900 to 43200"), "{found:?}");
            assert!(found[0].reason.ends_with(duration), "{found:?}");
        }
        for duration in [900, 43200] {
            let doc = format!(
                r#"{{"name":"t1","accounts":[{{"name":"a","roleArn":"arn:aws:iam::123456789012:role/r","duration":{duration}}}]}}"#
            );
            assert!(parse_team("team/t1", doc.as_bytes()).is_ok());
        }
    }

    #[test]
    fn unknown_fields_are_refused_so_typos_are_not_ignored() {
        let doc = r#"{"name":"t1","accounts":[{"name":"a","rolearn":"x","roleArn":"arn:aws:iam::123456789012:role/r"}]}"#;
        let found = problems("team/t1", doc);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "accounts[0].rolearn");
        assert!(
            found[0]
                .reason
                .starts_with("unknown field `rolearn`, expected one of"),
            "{found:?}"
        );
        assert_eq!(
            fields("team/t1", r#"{"name":"t1","acounts":[]}"#),
            ["acounts"]
        );
    }

    #[test]
    fn role_arns_must_be_iam_roles() {
        for arn in [
            "arn:aws:iam::12345678901:role/r",
            "arn:aws:iam::123456789012:user/r",
            "arn:aws:s3:::bucket",
            "arn:evil:iam::123456789012:role/r",
            "arn:aws:iam:us-east-1:123456789012:role/r",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/r x",
            "role/r",
        ] {
            let doc = format!(r#"{{"name":"t1","accounts":[{{"name":"a","roleArn":"{arn}"}}]}}"#);
            assert_eq!(fields("team/t1", &doc), ["accounts[0].roleArn"], "{arn}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let doc = r#"{"name":"t 1","accounts":[{"name":"../b","roleArn":"nope","duration":5,"externalId":"x"}]}"#;
        assert_eq!(
            fields("team/t 1", doc),
            [
                "name",
                "accounts[0].name",
                "accounts[0].roleArn",
                "accounts[0].duration",
                "accounts[0].externalId"
            ]
        );
    }

    #[test]
    fn limits_are_enforced() {
        let big = format!(
            r#"{{"name":"t1","pad":"{}"}}"#,
            "x".repeat(MAX_DOCUMENT_BYTES)
        );
        assert_eq!(fields("team/t1", &big), ["(document)"]);
        let account = r#"{"name":"a","roleArn":"arn:aws:iam::123456789012:role/r"}"#;
        let many = format!(
            r#"{{"name":"t1","accounts":[{}]}}"#,
            vec![account; MAX_ACCOUNTS_PER_TEAM + 1].join(",")
        );
        assert_eq!(fields("team/t1", &many), ["accounts"]);
        assert_eq!(
            fields("team/t1", r#"{"name":"t1","accounts":[]}"#),
            ["accounts"]
        );
    }

    #[test]
    fn display_names_the_team_and_each_field() {
        let error =
            parse_team("team/t1", br#"{"name":"t1","accounts":[{"name":"a"}]}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"team "t1" (key "team/t1") is invalid: accounts[0].roleArn: is missing"#
        );
    }
}
