//! The alphabets of the names that end up in AWS requests and secret paths.
//!
//! Team and account names become part of a Secrets Manager name and the team name is the
//! STS `RoleSessionName`, so both are held to one small, documented alphabet: ASCII
//! letters, digits, `_`, `.` and `-`, starting with a letter or digit, with no `..`. That
//! keeps every rendered path inside its team's prefix and every session name valid.

/// The longest team or account name accepted (the `RoleSessionName` limit).
pub const MAX_NAME_LEN: usize = 64;

/// Why a name was refused, phrased to follow the field name in an error message.
pub fn name_problem(value: &str, min_len: usize) -> Option<String> {
    let len = value.len();
    if len < min_len || len > MAX_NAME_LEN {
        return Some(format!(
            "must be {min_len} to {MAX_NAME_LEN} characters long, got {}",
            value.chars().count()
        ));
    }
    if let Some(bad) = value.chars().find(|c| !is_name_char(*c)) {
        return Some(format!(
            "may hold only ASCII letters, digits, '_', '.' and '-', found {}",
            describe_char(bad)
        ));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("must start with an ASCII letter or digit".to_owned());
    }
    if value.contains("..") {
        return Some("must not contain '..'".to_owned());
    }
    None
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Shows a refused character without echoing control characters into a log line.
pub fn describe_char(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("'{c}'")
    } else {
        format!("U+{:04X}", c as u32)
    }
}

/// Characters Secrets Manager accepts in a secret name.
pub fn is_secret_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '+' | '=' | '.' | '@' | '-')
}

/// The longest secret name Secrets Manager accepts.
pub const MAX_SECRET_NAME_LEN: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_examples_are_valid() {
        assert_eq!(name_problem("example-team", 2), None);
        assert_eq!(name_problem("divx-lab", 1), None);
        assert_eq!(name_problem("a", 1), None);
        assert_eq!(name_problem("Team_1.prod", 2), None);
    }

    #[test]
    fn hostile_names_are_refused() {
        let cases = [
            ("", "must be 2 to 64"),
            ("a", "must be 2 to 64"),
            ("team/other", "found '/'"),
            ("..", "must start with"),
            ("a..b", "'..'"),
            ("te am", "found U+0020"),
            ("tab\tx", "found U+0009"),
            ("équipe", "found U+00E9"),
            ("-leading", "must start with"),
            ("x{{.Team}}", "found '{'"),
        ];
        for (name, expected) in cases {
            let problem = name_problem(name, 2).unwrap_or_default();
            assert!(problem.contains(expected), "{name:?}: {problem}");
        }
        assert!(name_problem(&"a".repeat(65), 1).is_some());
        assert!(name_problem(&"a".repeat(64), 1).is_none());
    }

    #[test]
    fn secret_name_alphabet_matches_secrets_manager() {
        assert!("/concourse/a_b+c=d.e@f-g".chars().all(is_secret_name_char));
        for c in [' ', '{', '}', '*', '\n', 'é', '\\'] {
            assert!(!is_secret_name_char(c), "{c:?}");
        }
    }
}
