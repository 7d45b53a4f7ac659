//! Team documents: the Lambda's JSON, parsed and validated without any I/O.
//!
//! A team registers itself by storing `{"name", "accounts": [{"name", "roleArn",
//! "duration"?}]}` under `team/<name>`. Validation collects every problem with the field
//! it concerns, so one bad document produces one clear error and nothing else is skipped.

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Value};

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

/// Collects problems while walking a document.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// Parses and validates the document stored under `key`.
pub fn parse_team(key: &str, bytes: &[u8]) -> Result<TeamDocument, InvalidTeam> {
    let mut problems = Problems::default();
    let team = parse_document(key, bytes, &mut problems);
    match team {
        Some(team) if problems.0.is_empty() => Ok(team),
        _ => Err(InvalidTeam {
            key: key.to_owned(),
            problems: problems.0,
        }),
    }
}

fn parse_document(key: &str, bytes: &[u8], problems: &mut Problems) -> Option<TeamDocument> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        problems.add(
            "(document)",
            format!(
                "is {} bytes, more than the {MAX_DOCUMENT_BYTES} allowed",
                bytes.len()
            ),
        );
        return None;
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(error) => {
            problems.add("(document)", format!("is not valid JSON: {error}"));
            return None;
        }
    };
    let Some(object) = value.as_object() else {
        problems.add("(document)", "must be a JSON object");
        return None;
    };
    reject_unknown_fields(object, "", &["name", "accounts"], problems);
    let name = team_name(key, object, problems);
    let accounts = accounts(object, problems);
    Some(TeamDocument {
        name: name?,
        accounts: accounts?,
    })
}

fn reject_unknown_fields(
    object: &Map<String, Value>,
    prefix: &str,
    known: &[&str],
    problems: &mut Problems,
) {
    for field in object
        .keys()
        .filter(|field| !known.contains(&field.as_str()))
    {
        problems.add(
            format!("{prefix}{field}"),
            format!("unknown field (known: {})", known.join(", ")),
        );
    }
}

fn required_string<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    path: &str,
    problems: &mut Problems,
) -> Option<&'a str> {
    match object.get(field) {
        Some(Value::String(text)) => Some(text),
        Some(_) => {
            problems.add(path, "must be a string");
            None
        }
        None => {
            problems.add(path, "is missing");
            None
        }
    }
}

fn team_name(key: &str, object: &Map<String, Value>, problems: &mut Problems) -> Option<String> {
    let name = required_string(object, "name", "name", problems)?;
    if let Some(reason) = name_problem(name, 2) {
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
    Some(name.to_owned())
}

fn accounts(object: &Map<String, Value>, problems: &mut Problems) -> Option<Vec<AccountConfig>> {
    let list = match object.get("accounts") {
        Some(Value::Array(list)) => list,
        Some(_) => {
            problems.add("accounts", "must be an array");
            return None;
        }
        None => {
            problems.add("accounts", "is missing");
            return None;
        }
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
        .iter()
        .enumerate()
        .filter_map(|(i, value)| account(&format!("accounts[{i}]"), value, problems))
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
    (problems.0.len() == before).then_some(accounts)
}

fn account(path: &str, value: &Value, problems: &mut Problems) -> Option<AccountConfig> {
    let Some(object) = value.as_object() else {
        problems.add(path, "must be a JSON object");
        return None;
    };
    let prefix = format!("{path}.");
    reject_unknown_fields(
        object,
        &prefix,
        &["name", "roleArn", "duration", "externalId"],
        problems,
    );
    let name = account_name(object, &prefix, problems);
    let role_arn = role_arn(object, &prefix, problems);
    let duration_seconds = duration(object, &prefix, problems);
    let external_id = external_id(object, &prefix, problems);
    Some(AccountConfig {
        name: name?,
        role_arn: role_arn?,
        duration_seconds: duration_seconds?,
        external_id: external_id?,
    })
}

fn account_name(
    object: &Map<String, Value>,
    prefix: &str,
    problems: &mut Problems,
) -> Option<String> {
    let field = format!("{prefix}name");
    let name = required_string(object, "name", &field, problems)?;
    if let Some(reason) = name_problem(name, 1) {
        problems.add(field, reason);
        return None;
    }
    Some(name.to_owned())
}

fn role_arn(object: &Map<String, Value>, prefix: &str, problems: &mut Problems) -> Option<String> {
    let field = format!("{prefix}roleArn");
    let arn = required_string(object, "roleArn", &field, problems)?;
    if let Some(reason) = role_arn_problem(arn) {
        problems.add(field, reason);
        return None;
    }
    Some(arn.to_owned())
}

/// An IAM role ARN: `arn:<partition>:iam::<12 digits>:role/<path and name>`.
fn role_arn_problem(arn: &str) -> Option<String> {
    let expected = "must be an IAM role ARN, arn:aws:iam::123456789012:role/name";
    let fields: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = fields[..] else {
        return Some(expected.to_owned());
    };
    let valid = prefix == "arn"
        && matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.strip_prefix("role/").is_some_and(|name| {
            !name.is_empty() && name.len() <= 512 && name.chars().all(is_role_name_char)
        });
    (!valid).then(|| expected.to_owned())
}

fn is_role_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '=' | ',' | '.' | '@' | '_' | '-' | '/')
}

fn duration(object: &Map<String, Value>, prefix: &str, problems: &mut Problems) -> Option<u32> {
    let field = format!("{prefix}duration");
    let Some(value) = object.get("duration") else {
        return Some(DEFAULT_DURATION_SECONDS);
    };
    let seconds = value.as_u64().and_then(|n| u32::try_from(n).ok());
    match seconds {
        Some(seconds) if DURATION_RANGE.contains(&seconds) => Some(seconds),
        _ => {
            problems.add(
                field,
                format!(
                    "must be a whole number of seconds from {} to {}, got {value}",
                    DURATION_RANGE.start(),
                    DURATION_RANGE.end()
                ),
            );
            None
        }
    }
}

fn external_id(
    object: &Map<String, Value>,
    prefix: &str,
    problems: &mut Problems,
) -> Option<Option<String>> {
    let field = format!("{prefix}externalId");
    let Some(value) = object.get("externalId") else {
        return Some(None);
    };
    let valid = value.as_str().filter(|id| {
        EXTERNAL_ID_LEN.contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c))
    });
    if valid.is_none() {
        problems.add(
            field,
            "must be a string of 2 to 1224 characters from ASCII letters, digits and _+=,.@:/-",
        );
    }
    valid.map(|id| Some(id.to_owned()))
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
        let found = problems("team/t1", "{\"name\": \"t1\", ");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "(document)");
        assert!(
            found[0].reason.starts_with("is not valid JSON"),
            "{found:?}"
        );
        assert_eq!(fields("team/t1", "[1,2]"), ["(document)"]);
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
        let doc = r#"{"name":"t1","acounts":[],"accounts":[{"name":"a","rolearn":"x","roleArn":"arn:aws:iam::123456789012:role/r"}]}"#;
        assert_eq!(fields("team/t1", doc), ["acounts", "accounts[0].rolearn"]);
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
