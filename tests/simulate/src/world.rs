//! The teams a simulated platform registers: `accounts` accounts spread over `teams`
//! teams, each account in an AWS account of its own, with a mix of session durations.

use serde_json::{json, Value};

use crate::chance::Chance;

/// The longest session AWS issues (12 h).
pub const LONGEST_DURATION: u32 = 43_200;
/// The session `duration` a team document that names none gets.
pub const DEFAULT_DURATION: u32 = 3_600;
/// The share of accounts whose document names no `duration`.
const SHARE_WITHOUT_DURATION: f64 = 0.4;

/// One registered account.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub team: String,
    pub name: String,
    pub duration: u32,
}

/// What is registered: every account, and the team documents as stored.
pub struct Registration {
    pub accounts: Vec<Account>,
    /// `team/<name>` keys and their documents.
    pub documents: Vec<(String, Vec<u8>)>,
}

/// Durations from `shortest` to 12 h, spread evenly over their logarithm (as many
/// accounts between 1 h and 2 h as between 6 h and 12 h), in whole minutes; a share
/// of the documents names none and gets the default hour.
fn duration(chance: &Chance, shortest: u32) -> Option<u32> {
    if chance.fraction() < SHARE_WITHOUT_DURATION {
        return None;
    }
    let span = f64::from(LONGEST_DURATION) / f64::from(shortest);
    let seconds = f64::from(shortest) * span.powf(chance.fraction());
    Some(((seconds / 60.0).round() as u32 * 60).clamp(shortest, LONGEST_DURATION))
}

/// Registers `accounts` accounts in `teams` teams (as even as they divide), durations
/// drawn from `shortest` up.
pub fn register(teams: usize, accounts: usize, shortest: u32, chance: &Chance) -> Registration {
    let mut members: Vec<Vec<Value>> = vec![Vec::new(); teams.max(1)];
    let mut registered = Vec::with_capacity(accounts);
    for i in 0..accounts {
        let team = i % members.len();
        let name = format!("acct-{i:05}");
        let role = format!("arn:aws:iam::{:012}:role/concourse-ci", 100_000_000_000 + i);
        let drawn = duration(chance, shortest);
        let mut account = json!({"name": name, "roleArn": role});
        if let Some(seconds) = drawn {
            account["duration"] = json!(seconds);
        }
        members[team].push(account);
        registered.push(Account {
            team: team_name(team),
            name,
            duration: drawn.unwrap_or(DEFAULT_DURATION),
        });
    }
    let documents = members
        .into_iter()
        .enumerate()
        .map(|(team, accounts)| {
            let name = team_name(team);
            let document = json!({"name": name, "accounts": accounts});
            (format!("team/{name}"), document.to_string().into_bytes())
        })
        .collect();
    Registration {
        accounts: registered,
        documents,
    }
}

fn team_name(team: usize) -> String {
    format!("team-{team:04}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use concourse_sts::config::parse_team;

    #[test]
    fn every_document_is_valid_and_durations_stay_in_range() {
        let registered = register(4, 10, 2_400, &Chance::new(1, 0));
        assert_eq!(registered.documents.len(), 4);
        for (key, document) in &registered.documents {
            let team = parse_team(key, document).expect("valid");
            assert!(team.accounts.len() == 2 || team.accounts.len() == 3);
        }
        assert!(registered
            .accounts
            .iter()
            .all(|a| (2_400..=LONGEST_DURATION).contains(&a.duration) && a.duration % 60 == 0));
    }

    #[test]
    fn durations_spread_over_their_logarithm() {
        let chance = Chance::new(3, 0);
        let drawn: Vec<u32> = (0..20_000).filter_map(|_| duration(&chance, 900)).collect();
        let share = |low: u32, high: u32| {
            drawn.iter().filter(|d| (low..high).contains(*d)).count() as f64 / drawn.len() as f64
        };
        // 900 s to 43,200 s is a factor of 48: a factor of 2 is ln 2 / ln 48 of it.
        let expected = 2f64.ln() / 48f64.ln();
        for (low, high) in [(3_600, 7_200), (21_600, 43_200)] {
            let share = share(low, high);
            assert!((share - expected).abs() < 0.02, "{low}..{high}: {share}");
        }
    }
}
