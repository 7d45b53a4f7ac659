//! The operator's allow-list of CI roles (`allowed_role_arns`): a second fence, inside the
//! component, so that a team document naming some other role is refused before STS is
//! ever called, whatever the rotator's IAM policy would allow.

use wildmatch::WildMatch;

/// Role ARN patterns; `*` matches any run of characters, `?` one character.
#[derive(Debug, Clone, Default)]
pub struct AllowedRoles(Vec<WildMatch>);

impl AllowedRoles {
    /// Parses a comma- or whitespace-separated list; empty means every role is allowed.
    pub fn parse(list: &str) -> Result<Self, String> {
        let patterns: Vec<&str> = list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        for pattern in &patterns {
            if !pattern.starts_with("arn:") || !pattern.contains(":role/") {
                return Err(format!(
                    "allowed_role_arns: {pattern:?} is not a role ARN pattern such as arn:aws:iam::*:role/concourse-*"
                ));
            }
        }
        Ok(Self(patterns.into_iter().map(WildMatch::new).collect()))
    }

    pub fn permits(&self, role_arn: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|pattern| pattern.matches(role_arn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_allows_everything() {
        assert!(AllowedRoles::parse("")
            .unwrap()
            .permits("arn:aws:iam::123456789012:role/x"));
    }

    #[test]
    fn patterns_allow_only_what_they_match() {
        let allowed = AllowedRoles::parse(
            "arn:aws:iam::*:role/concourse-*, arn:aws:iam::111111111111:role/legacy",
        )
        .unwrap();
        assert!(allowed.permits("arn:aws:iam::123456789012:role/concourse-ci"));
        assert!(allowed.permits("arn:aws:iam::111111111111:role/legacy"));
        assert!(!allowed.permits("arn:aws:iam::111111111111:role/legacy-admin"));
        assert!(!allowed.permits("arn:aws:iam::123456789012:role/admin"));
        assert!(!allowed.permits("arn:aws:iam::123456789012:role/ci/concourse-ci"));
    }

    #[test]
    fn patterns_must_look_like_role_arns() {
        assert!(AllowedRoles::parse("*")
            .unwrap_err()
            .contains("allowed_role_arns"));
        assert!(AllowedRoles::parse("arn:aws:s3:::bucket").is_err());
    }
}
