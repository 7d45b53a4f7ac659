//! Secret path templates, in the Lambda's Go-template spelling, and the secret formats.
//!
//! The Lambda accepted `/concourse/{{.Team}}/{{.Account}}`; so does this, and nothing
//! else: an unknown placeholder is an error at start-up rather than an empty string in a
//! secret name. The template is also checked for shape, so that whatever names teams
//! choose, one team's secrets can never land under another team's prefix.

use std::fmt;
use std::str::FromStr;

use crate::names::{describe_char, is_secret_name_char};

/// The Lambda's default, which is also Concourse's default team-level lookup path.
pub const DEFAULT_TEMPLATE: &str = "/concourse/{{.Team}}/{{.Account}}";

/// The suffixes of the three secrets written for every account.
pub const SECRET_SUFFIXES: [&str; 3] = ["-access-key", "-secret-key", "-session-token"];

/// The longest suffix, which bounds how long a rendered name is.
const LONGEST_SUFFIX: &str = "-session-token";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Team,
    Account,
}

/// A parsed and shape-checked secret path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPathTemplate {
    source: String,
    parts: Vec<Part>,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret_path_template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

impl FromStr for SecretPathTemplate {
    type Err = TemplateError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| TemplateError {
            template: source.to_owned(),
            reason,
        };
        let parts = tokenize(source).map_err(fail)?;
        check_shape(&parts).map_err(fail)?;
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }
}

impl Default for SecretPathTemplate {
    fn default() -> Self {
        DEFAULT_TEMPLATE
            .parse()
            .expect("the default template is valid")
    }
}

impl fmt::Display for SecretPathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn tokenize(source: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| "a '{{' is never closed by '}}'".to_owned())?;
        parts.push(match after[..close].trim() {
            ".Team" => Part::Team,
            ".Account" => Part::Account,
            other => {
                return Err(format!(
                    "unknown placeholder {{{{{other}}}}}: only {{{{.Team}}}} and {{{{.Account}}}} exist"
                ))
            }
        });
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// The rules that keep teams apart: `{{.Team}}` exactly once, as a whole path segment,
/// and `{{.Account}}` after it, with literal text only from the secret-name alphabet.
fn check_shape(parts: &[Part]) -> Result<(), String> {
    for part in parts {
        if let Part::Literal(text) = part {
            if let Some(bad) = text.chars().find(|c| !is_secret_name_char(*c)) {
                return Err(format!(
                    "{} is not allowed in a Secrets Manager name",
                    describe_char(bad)
                ));
            }
        }
    }
    let teams: Vec<usize> = positions(parts, &Part::Team);
    let [team] = teams[..] else {
        return Err("{{.Team}} must appear exactly once".to_owned());
    };
    // Concourse looks a secret up under `<prefix>/<team>/<pipeline>/...`: a placeholder
    // in front of the team would let team `evil` with an account named `victim` write
    // into team victim's lookup path (for a pipeline named `evil`).
    if positions(parts, &Part::Account).iter().any(|&i| i < team) {
        return Err(
            "{{.Account}} must not come before {{.Team}}: the team's segment has to be the first one a team name can fill, or one team could write into another's lookup path"
                .to_owned(),
        );
    }
    let literal_ends_with_slash =
        |part: Option<&Part>| matches!(part, Some(Part::Literal(text)) if text.ends_with('/'));
    let literal_starts_with_slash =
        |part: Option<&Part>| matches!(part, Some(Part::Literal(text)) if text.starts_with('/'));
    if !literal_ends_with_slash(team.checked_sub(1).and_then(|i| parts.get(i)))
        || !literal_starts_with_slash(parts.get(team + 1))
    {
        return Err(
            "{{.Team}} must be a whole path segment, between two '/', so that no team's secrets can land under another team's prefix"
                .to_owned(),
        );
    }
    if !positions(parts, &Part::Account).iter().any(|&i| i > team) {
        return Err(
            "{{.Account}} must appear after {{.Team}}, or accounts would overwrite each other"
                .to_owned(),
        );
    }
    Ok(())
}

fn positions(parts: &[Part], wanted: &Part) -> Vec<usize> {
    parts
        .iter()
        .enumerate()
        .filter(|(_, part)| *part == wanted)
        .map(|(i, _)| i)
        .collect()
}

impl SecretPathTemplate {
    /// Renders the path of one account. Names are validated before they get here; what
    /// each sink makes of the names is checked by [`SecretPath::problem`].
    pub fn render(&self, team: &str, account: &str) -> SecretPath {
        SecretPath(
            self.parts
                .iter()
                .map(|part| match part {
                    Part::Literal(text) => text.as_str(),
                    Part::Team => team,
                    Part::Account => account,
                })
                .collect(),
        )
    }
}

impl SecretPathTemplate {
    /// The literal text before `{{.Team}}`, such as `/concourse/`: what Concourse's path
    /// prefix matches.
    pub fn team_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(text)) => text,
            _ => "",
        }
    }

    /// Why Parameter Store could not take this template's names, whatever the teams
    /// (its alphabet is narrower than Secrets Manager's: no `+`, `=` or `@`; names in a
    /// hierarchy start with `/`; at most 15 levels; no `aws`/`ssm` first segment).
    /// Checked at start when `secret_sink` includes Parameter Store; each rendered name is
    /// checked again before it is written, for what only the names decide (length, a team
    /// name in the first segment).
    pub fn parameter_store_problem(&self) -> Option<TemplateError> {
        let sample = self.render("team", "account");
        let longest = format!("{}{LONGEST_SUFFIX}", sample.as_str());
        crate::aws::ssm::parameter_name_problem(&longest).map(|reason| TemplateError {
            template: self.source.clone(),
            reason: format!("with secret_sink ssm, a rendered parameter name {reason}"),
        })
    }
}

/// How an account's credentials are laid out (`secret_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecretFormat {
    /// The Lambda's layout: `<path>-access-key`, `<path>-secret-key`, `<path>-session-token`.
    #[default]
    Split,
    /// One secret at `<path>` holding a JSON object, written atomically.
    Json,
    /// Both of the above.
    Both,
}

impl FromStr for SecretFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "split" => Ok(Self::Split),
            "json" => Ok(Self::Json),
            "both" => Ok(Self::Both),
            other => Err(format!(
                "secret_format {other:?} must be split, json or both"
            )),
        }
    }
}

impl SecretFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Split => "split",
            Self::Json => "json",
            Self::Both => "both",
        }
    }

    pub fn split(self) -> bool {
        matches!(self, Self::Split | Self::Both)
    }

    pub fn json(self) -> bool {
        matches!(self, Self::Json | Self::Both)
    }
}

/// The rendered path of one account; the three secret names hang off it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct SecretPath(String);

impl SecretPath {
    /// The three secret names in the Lambda's layout, in the order of [`SECRET_SUFFIXES`].
    pub fn secret_names(&self) -> [String; 3] {
        SECRET_SUFFIXES.map(|suffix| format!("{}{suffix}", self.0))
    }

    /// Every secret name `format` writes for this path.
    pub fn names(&self, format: SecretFormat) -> Vec<String> {
        let mut names = Vec::new();
        if format.split() {
            names.extend(self.secret_names());
        }
        if format.json() {
            names.push(self.0.clone());
        }
        names
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(template: &str) -> String {
        template
            .parse::<SecretPathTemplate>()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn default_renders_the_lambda_layout() {
        let path = SecretPathTemplate::default().render("example-team", "divx-lab");
        assert_eq!(path.as_str(), "/concourse/example-team/divx-lab");
        assert_eq!(
            path.secret_names(),
            [
                "/concourse/example-team/divx-lab-access-key",
                "/concourse/example-team/divx-lab-secret-key",
                "/concourse/example-team/divx-lab-session-token",
            ]
        );
    }

    #[test]
    fn go_template_spacing_and_other_layouts_are_accepted() {
        let template: SecretPathTemplate = "ci/{{ .Team }}/aws/{{.Account}}".parse().unwrap();
        assert_eq!(template.render("t1", "a").as_str(), "ci/t1/aws/a");
        let template: SecretPathTemplate = "/concourse/{{.Team}}/{{.Account}}-{{.Account}}"
            .parse()
            .unwrap();
        assert_eq!(template.render("t1", "a").as_str(), "/concourse/t1/a-a");
    }

    #[test]
    fn unknown_placeholders_are_errors_not_empty_strings() {
        assert!(
            reason("/concourse/{{.Team}}/{{.Acount}}").contains("unknown placeholder {{.Acount}}")
        );
        assert!(reason("/concourse/{{.Team}}/{{.Account}}{{.Region}}").contains("{{.Region}}"));
        assert!(reason("/concourse/{{.Team}}/{{.Account").contains("never closed"));
    }

    #[test]
    fn templates_that_could_mix_teams_are_refused() {
        for template in [
            "/concourse/{{.Team}}{{.Account}}",
            "/concourse/{{.Team}}-{{.Account}}",
            "/concourse/x{{.Team}}/{{.Account}}",
            "{{.Team}}/{{.Account}}",
            "/concourse/{{.Account}}/{{.Team}}/",
            "/concourse/{{.Team}}/{{.Team}}/{{.Account}}",
            "/concourse/{{.Team}}/static",
            "/concourse/{{.Account}}/{{.Team}}/{{.Account}}",
            "/{{.Account}}x/{{.Team}}/{{.Account}}",
        ] {
            assert!(
                template.parse::<SecretPathTemplate>().is_err(),
                "{template}"
            );
        }
    }

    #[test]
    fn no_placeholder_may_come_before_the_team() {
        let error = reason("/concourse/{{.Account}}/{{.Team}}/{{.Account}}");
        assert!(error.contains("must not come before {{.Team}}"), "{error}");
    }

    #[test]
    fn names_follow_the_format() {
        let path = SecretPathTemplate::default().render("t", "a");
        assert_eq!(path.names(SecretFormat::Split), path.secret_names());
        assert_eq!(path.names(SecretFormat::Json), ["/concourse/t/a"]);
        assert_eq!(path.names(SecretFormat::Both).len(), 4);
    }

    #[test]
    fn literal_text_must_be_a_valid_secret_name() {
        assert!(reason("/concourse space/{{.Team}}/{{.Account}}").contains("U+0020"));
        assert!(reason("/concourse/{{.Team}}/*{{.Account}}").contains("'*'"));
    }

    #[test]
    fn secret_formats() {
        assert_eq!("split".parse(), Ok(SecretFormat::Split));
        assert_eq!(" json ".parse(), Ok(SecretFormat::Json));
        assert_eq!("both".parse(), Ok(SecretFormat::Both));
        assert!("yaml"
            .parse::<SecretFormat>()
            .unwrap_err()
            .contains("secret_format"));
        assert!(SecretFormat::Both.split() && SecretFormat::Both.json());
        assert!(!SecretFormat::Json.split() && !SecretFormat::Split.json());
    }

    #[test]
    fn parameter_store_takes_a_narrower_alphabet_and_a_leading_slash() {
        assert_eq!(
            SecretPathTemplate::default().parameter_store_problem(),
            None
        );
        for (template, expected) in [
            ("/ci+x/{{.Team}}/{{.Account}}", "found '+'"),
            ("ci/{{.Team}}/{{.Account}}", "must start with '/'"),
            ("/aws/{{.Team}}/{{.Account}}", "must not start with \"aws\""),
            (
                "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/{{.Team}}/{{.Account}}",
                "levels deep",
            ),
        ] {
            let template: SecretPathTemplate = template.parse().unwrap();
            let problem = template.parameter_store_problem().unwrap().to_string();
            assert!(problem.contains(expected), "{template}: {problem}");
            assert!(problem.contains("secret_path_template"), "{problem}");
        }
    }

    #[test]
    fn the_team_prefix_is_the_literal_before_the_team() {
        assert_eq!(SecretPathTemplate::default().team_prefix(), "/concourse/");
        let template: SecretPathTemplate = "ci/{{.Team}}/{{.Account}}".parse().unwrap();
        assert_eq!(template.team_prefix(), "ci/");
    }
}
