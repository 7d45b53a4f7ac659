//! Property tests: every parser is total (any input gives a value or an error, never a
//! panic), and no accepted name or template lets one team's secrets reach another's path.

use concourse_sts::aws::secrets::check_write;
use concourse_sts::aws::sts::parse_assume_role;
use concourse_sts::aws::HttpResponse;
use concourse_sts::config::parse_team;
use concourse_sts::names::name_problem;
use concourse_sts::roles::AllowedRoles;
use concourse_sts::template::SecretPathTemplate;
use proptest::prelude::*;

const TEAM: &str = r#"{"name":"t1","accounts":[{"name":"a","roleArn":"arn:aws:iam::123456789012:role/r","duration":900,"externalId":"x-1"}]}"#;
const STS_OK: &str = "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>A</AccessKeyId><SecretAccessKey>S</SecretAccessKey><SessionToken>T</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>";
const STS_ERR: &str = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>";
const SM_ERR: &str =
    r#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","message":"missing"}"#;

/// A valid document with bytes replaced, inserted and deleted.
fn mutated(seed: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..8);
    edits.prop_map(move |edits| {
        let mut bytes = seed.as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let len = bytes.len();
            let i = at.index(len.max(1));
            match kind {
                0 if len > 0 => bytes[i.min(len - 1)] = byte,
                1 => bytes.insert(i.min(len), byte),
                _ if len > 0 => {
                    bytes.remove(i.min(len - 1));
                }
                _ => {}
            }
        }
        bytes
    })
}

fn any_input(seed: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated(seed)]
}

fn answer(status: u16, body: Vec<u8>) -> HttpResponse {
    HttpResponse::new(status, body)
}

fn valid_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9_.-]{1,20}".prop_filter("no '..'", |n| !n.contains(".."))
}

proptest! {
    #[test]
    fn team_documents_parse_or_fail_cleanly(bytes in any_input(TEAM)) {
        if let Ok(team) = parse_team("team/t1", &bytes) {
            prop_assert_eq!(team.name, "t1");
            prop_assert!(!team.accounts.is_empty());
        }
    }

    #[test]
    fn sts_answers_parse_or_fail_cleanly(status in prop_oneof![Just(200u16), 100u16..600], bytes in any_input(STS_OK)) {
        let _ = parse_assume_role(&answer(status, bytes));
    }

    #[test]
    fn sts_errors_parse_or_fail_cleanly(status in 400u16..600, bytes in any_input(STS_ERR)) {
        prop_assert!(parse_assume_role(&answer(status, bytes)).is_err());
    }

    #[test]
    fn secrets_manager_errors_parse_or_fail_cleanly(status in 300u16..600, bytes in any_input(SM_ERR)) {
        prop_assert!(check_write(&answer(status, bytes)).is_err());
    }

    #[test]
    fn templates_and_role_patterns_parse_or_fail_cleanly(text in ".{0,80}") {
        let _ = text.parse::<SecretPathTemplate>();
        let _ = AllowedRoles::parse(&text);
    }

    #[test]
    fn accepted_names_are_safe_in_a_path(name in ".{0,70}") {
        if name_problem(&name, 1).is_none() {
            prop_assert!(name.is_ascii());
            prop_assert!(!name.contains('/') && !name.contains(".."));
            prop_assert!(!name.chars().any(|c| c.is_whitespace() || c.is_control()));
        }
    }

    /// Two different teams never render to the same path, and every accepted template
    /// renders a team's paths inside its own lookup path: the literal text before
    /// `{{.Team}}`, then the team's name, then `/`. Templates that put a placeholder
    /// before the team (which would let team `evil` write `/concourse/victim/evil/...`,
    /// team victim's path for a pipeline named `evil`) are generated too, and refused.
    #[test]
    fn no_template_mixes_teams(
        template in prop_oneof![
            Just("/concourse/{{.Team}}/{{.Account}}".to_owned()),
            "/[a-z]{1,5}/\\{\\{\\.Team\\}\\}/[a-z-]{0,4}\\{\\{\\.Account\\}\\}[a-z-]{0,4}",
            "/[a-z]{1,5}/\\{\\{\\.Account\\}\\}[a-z-]{0,3}/\\{\\{\\.Team\\}\\}/\\{\\{\\.Account\\}\\}",
            "[a-z/{}.TeamAccount]{0,40}",
        ],
        teams in (valid_name(), valid_name()),
        accounts in (valid_name(), valid_name()),
    ) {
        let parsed = template.parse::<SecretPathTemplate>();
        let team_at = template.find("{{.Team}}");
        let account_first = template.find("{{.Account}}").is_some_and(|a| team_at.is_some_and(|t| a < t));
        prop_assert!(!(account_first && parsed.is_ok()), "accepted {}", template);
        let Ok(template_parsed) = parsed else { return Ok(()); };
        let prefix = &template[..team_at.unwrap()];
        let (t1, t2) = teams;
        prop_assume!(t1 != t2);
        let first = template_parsed.render(&t1, &accounts.0);
        let second = template_parsed.render(&t2, &accounts.1);
        prop_assert_ne!(first.as_str(), second.as_str());
        let owned = format!("{prefix}{t1}/");
        prop_assert!(first.as_str().starts_with(&owned));
        prop_assert!(!second.as_str().starts_with(&owned));
    }
}
