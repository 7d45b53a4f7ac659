//! What a tick rotates and when: the layout, the schedule, the formats, the rules.

use super::*;

#[test]
fn rotates_every_account_of_every_team_into_the_lambda_layout() {
    let aws = FakeAws::default();
    let store = two_teams();
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.clone().into_result(), Ok(()));
    assert_eq!((summary.accounts, summary.rotated), (3, 3));
    assert_eq!(aws.secrets.borrow().len(), 9);
    aws.consistent_triple("/concourse/alpha/dev");
    aws.consistent_triple("/concourse/alpha/prod");
    let [_, _, token] = aws.consistent_triple("/concourse/beta/lab");
    assert!(
        token.ends_with("-beta"),
        "the session is named after the team"
    );
    assert!(rotated(&events)
        .iter()
        .all(|(_, _, reason)| *reason == RotateReason::NeverWritten));
    let alpha = state(&store, "alpha");
    let dev = &alpha.accounts["dev"];
    assert!(!dev.incomplete && dev.consecutive_failures == 0);
    assert_eq!(dev.written_at, Some(aws.clock.now()));
    assert!(matches!(
        events.first(),
        Some(Event::TickStarted { teams: 2 })
    ));
    assert!(matches!(
        events.last(),
        Some(Event::TickFinished {
            accounts: 3,
            rotated: 3,
            failed: 0,
            invalid_teams: 0,
            ..
        })
    ));
    assert!(store.text(LEASE_KEY).is_some(), "the lease was taken");
}

/// A mass registration never holds back credentials about to expire: accounts inside
/// their margin go first, earliest expiry first; then accounts never written (their
/// pipelines have nothing to lose yet); then accounts renewed early, whose first
/// credentials came due spread over their lifetime.
#[test]
fn accounts_about_to_expire_go_before_new_ones() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/beta", &team("beta", &[("lab", "ci")]));
    tick(&aws, &store);
    aws.clock.advance(10 * MINUTE);
    for (name, account) in [("gamma", "ops"), ("alpha", "dev")] {
        let document = team(name, &[(account, "ci")]);
        store
            .set(&format!("team/{name}"), document.as_bytes())
            .unwrap();
    }
    tick(&aws, &store);
    aws.clock.advance(20 * MINUTE);
    store
        .set("team/aaa", team("aaa", &[("new", "ci")]).as_bytes())
        .unwrap();
    let planned = plan(&load(&store).unwrap(), &rules(8), aws.now(), Scope::All);
    let order: Vec<String> = planned
        .jobs
        .iter()
        .map(|job| format!("{}/{}", job.team, job.account.name))
        .collect();
    // beta/lab expires in 30 minutes; alpha/dev and gamma/ops, in 40, came due early.
    assert_eq!(order, ["beta/lab", "aaa/new", "alpha/dev", "gamma/ops"]);
}

/// The quick check for work says what a whole plan says: before anything is due, once
/// something is, for one team, and when a team or an account is removed.
#[test]
fn has_work_agrees_with_the_plan() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    let agree = |scope: Scope| {
        let loaded = load(&store).unwrap();
        let planned = plan(&loaded, &rules(8), aws.now(), scope).has_work();
        assert_eq!(has_work(&loaded, &rules(8), aws.now(), scope), planned);
        planned
    };
    assert!(!agree(Scope::All), "everything written just now");
    assert!(
        !agree(Scope::Team("beta")),
        "not even asked for: ten minutes"
    );
    aws.clock.advance(12 * MINUTE);
    assert!(!agree(Scope::All), "fresh");
    assert!(agree(Scope::Team("beta")), "asked for");
    aws.clock.advance(13 * MINUTE);
    assert!(agree(Scope::All), "due by now");
    tick(&aws, &store);
    store
        .set("team/alpha", team("alpha", &[("dev", "ci")]).as_bytes())
        .unwrap();
    assert!(agree(Scope::All), "alpha/prod removed");
    store.delete("team/beta").unwrap();
    assert!(agree(Scope::All), "beta removed");
}

#[test]
fn fresh_accounts_are_skipped_until_they_near_expiry() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    let first = aws.secrets.borrow().clone();
    aws.calls.borrow_mut().clear();

    let (summary, events) = tick(&aws, &store);
    assert_eq!((summary.rotated, summary.skipped), (0, 3));
    assert!(
        aws.calls.borrow().is_empty(),
        "a fresh tick makes no AWS call"
    );
    assert!(event_lines(&events).contains(r#""reason":"written_recently""#));

    let fresh_then_rotated = |fresh_for: Duration, due_after: Duration| {
        aws.clock.advance(fresh_for);
        let (summary, events) = tick(&aws, &store);
        assert_eq!(summary.skipped, 3);
        assert!(event_lines(&events).contains(r#""reason":"fresh""#));
        assert!(aws.calls.borrow().is_empty());
        aws.clock.advance(due_after);
        let (summary, events) = tick(&aws, &store);
        assert_eq!(summary.rotated, 3);
        assert!(rotated(&events)
            .iter()
            .all(|(_, _, reason)| *reason == RotateReason::ExpiresSoon));
        let writes = ["PutSecretValue", "CreateSecret"].map(|call| aws.count_calls(call));
        assert_eq!(writes, [9, 0]);
        aws.calls.borrow_mut().clear();
    };
    // First credentials come due anywhere from 10 to 30 minutes after the write: at 20
    // with the fake's chance of one half.
    fresh_then_rotated(15 * MINUTE, 5 * MINUTE);
    let second = aws.secrets.borrow().clone();
    assert!(first.iter().all(|(name, value)| second[name] != *value));
    // Later ones 30 minutes before expiry, less up to 5 minutes of jitter: at 27.5.
    fresh_then_rotated(27 * MINUTE, MINUTE);
    assert!(second
        .iter()
        .all(|(name, value)| aws.secrets.borrow()[name] != *value));
}

#[test]
fn a_changed_configuration_rotates_once_ten_minutes_have_passed() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    tick(&aws, &store);
    store
        .set("team/alpha", team("alpha", &[("dev", "ci-new")]).as_bytes())
        .unwrap();
    aws.clock.advance(5 * MINUTE);
    let (summary, _) = tick(&aws, &store);
    assert_eq!(summary.skipped, 1, "never twice within ten minutes");
    aws.clock.advance(5 * MINUTE);
    let (_, events) = tick(&aws, &store);
    assert_eq!(
        rotated(&events),
        [("alpha".into(), "dev".into(), RotateReason::ConfigChanged)]
    );
    assert!(aws
        .calls
        .borrow()
        .iter()
        .any(|c| c == &format!("AssumeRole {}", role("ci-new"))));
}

#[test]
fn what_does_not_fit_the_budget_is_deferred_and_leads_the_next_tick() {
    let aws = FakeAws {
        latency: Duration::from_secs(5),
        ..Default::default()
    };
    let accounts: Vec<(String, &str)> = (0..6).map(|i| (format!("a{i}"), "ci")).collect();
    let refs: Vec<(&str, &str)> = accounts.iter().map(|(a, r)| (a.as_str(), *r)).collect();
    let store = MemoryStore::default().with("team/wide", &team("wide", &refs));
    let tight = RotationRules {
        max_concurrency: 1,
        tick_budget: Duration::from_secs(60),
        ..RotationRules::default()
    };
    let (summary, events) = tick_with(&aws, &store, &tight);
    assert!(summary.rotated >= 1 && summary.deferred >= 1, "{summary:?}");
    assert_eq!(summary.rotated + summary.deferred, 6);
    assert!(event_lines(&events).contains(r#""event":"account_deferred""#));
    assert_eq!(summary.into_result(), Ok(()), "deferring is not failing");

    aws.calls.borrow_mut().clear();
    let (summary, events) = tick_with(&aws, &store, &tight);
    let first_rotated = rotated(&events);
    assert!(summary.rotated >= 1);
    assert!(first_rotated
        .iter()
        .all(|(_, _, reason)| *reason == RotateReason::NeverWritten));
}

#[test]
fn secrets_manager_writes_are_paced() {
    let aws = FakeAws::default();
    let store = two_teams();
    let slow = RotationRules {
        writes_per_second: 4,
        ..rules(8)
    };
    tick_with(&aws, &store, &slow);
    // Nine creations, one call each, at 4 per second.
    assert_eq!(aws.count_calls("CreateSecret"), 9);
    assert_eq!(aws.count_calls("PutSecretValue"), 0);
    assert!(
        aws.clock.slept() >= Duration::from_millis(8 * 250),
        "{:?}",
        aws.clock.slept()
    );
}

#[test]
fn the_json_format_writes_one_consistent_secret() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let json = RotationRules {
        secret_format: SecretFormat::Json,
        ..rules(8)
    };
    tick_with(&aws, &store, &json);
    assert_eq!(aws.secrets.borrow().len(), 1);
    let document: serde_json::Value =
        serde_json::from_str(&aws.secret("/concourse/alpha/dev").unwrap()).unwrap();
    let n: usize = document["access_key_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("ASIAFAKE")
        .parse()
        .unwrap();
    assert_eq!(document["secret_access_key"], format!("secret-{n}-alpha"));
    assert_eq!(document["session_token"], format!("token-{n}-alpha"));
    assert!(document["expiration"].as_str().unwrap().ends_with('Z'));

    let both = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    tick_with(
        &both,
        &store,
        &RotationRules {
            secret_format: SecretFormat::Both,
            ..rules(8)
        },
    );
    assert_eq!(both.secrets.borrow().len(), 4);
    both.consistent_triple("/concourse/alpha/dev");
}

#[test]
fn durations_that_would_force_rewrites_every_tick_are_refused_per_account() {
    let aws = FakeAws::default();
    let document = r#"{"name":"alpha","accounts":[
        {"name":"short","roleArn":"arn:aws:iam::123456789012:role/ci","duration":900},
        {"name":"ok","roleArn":"arn:aws:iam::123456789012:role/ci"}]}"#;
    let store = MemoryStore::default().with("team/alpha", document);
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 1);
    assert_eq!(summary.failed, ["alpha/short (Config)"]);
    assert!(event_lines(&events).contains("use a duration of at least 2400s"));
    assert_eq!(aws.count_calls("AssumeRole"), 1);
}

#[test]
fn removed_teams_and_accounts_lose_their_state_but_keep_their_secrets() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    store.delete("team/beta").unwrap();
    store
        .set("team/alpha", team("alpha", &[("dev", "ci")]).as_bytes())
        .unwrap();
    let (_, events) = tick(&aws, &store);
    assert!(events.contains(&Event::TeamRemoved {
        team: "beta".into()
    }));
    assert!(events.contains(&Event::AccountRemoved {
        team: "alpha".into(),
        account: "prod".into()
    }));
    assert!(store.text("state/beta").is_none());
    assert!(!state(&store, "alpha").accounts.contains_key("prod"));
    assert!(aws.secret("/concourse/beta/lab-access-key").is_some());
    let (_, again) = tick(&aws, &store);
    assert!(
        !again
            .iter()
            .any(|e| matches!(e, Event::TeamRemoved { .. } | Event::AccountRemoved { .. })),
        "said once"
    );
}

#[test]
fn an_invalid_document_keeps_its_teams_state() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    store.set("team/beta", b"{oops").unwrap();
    let (_, events) = tick(&aws, &store);
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::TeamRemoved { .. })));
    assert!(store.text("state/beta").is_some());
}

#[test]
fn events_never_carry_credential_values() {
    let aws = FakeAws {
        denied_roles: [role("ci-prod")].into(),
        failing_secrets: ["/concourse/beta/lab-secret-key".to_owned()].into(),
        ..Default::default()
    };
    aws.flaky
        .borrow_mut()
        .insert("/concourse/alpha/dev-session-token".into(), 1);
    let store = two_teams();
    let (_, events) = tick(&aws, &store);
    let lines = event_lines(&events);
    let debug = format!("{events:?}");
    let states = format!("{:?}", store.entries.borrow());
    let mut values = aws.issued_values.borrow().clone();
    assert_eq!(values.len(), 6, "two accounts got credentials");
    values.extend(["ROTATORSECRET".to_owned(), "AKIDROTATOR".to_owned()]);
    for value in &values {
        assert!(
            !lines.contains(value.as_str()),
            "{value} leaked into {lines}"
        );
        assert!(
            !debug.contains(value.as_str()),
            "{value} leaked into {debug}"
        );
        assert!(
            !states.contains(value.as_str()),
            "{value} leaked into the state"
        );
    }
}

#[test]
fn accounts_run_concurrently_within_the_bound() {
    let many: Vec<(String, String)> = (0..12)
        .map(|i| (format!("a{i}"), "ci".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(a, r)| (a.as_str(), r.as_str())).collect();
    let store = MemoryStore::default().with("team/wide", &team("wide", &refs));
    let aws = FakeAws::default();
    let (summary, _) = tick_with(
        &aws,
        &store,
        &RotationRules {
            writes_per_second: 0,
            ..rules(4)
        },
    );
    assert_eq!(summary.rotated, 12);
    // Four accounts at once, each with up to three parallel writes.
    let peak = aws.max_in_flight.get();
    assert!(peak > 4 && peak <= 12, "peak in flight {peak}");
    let serial = FakeAws::default();
    let store = MemoryStore::default().with("team/wide", &team("wide", &refs));
    tick_with(
        &serial,
        &store,
        &RotationRules {
            writes_per_second: 0,
            ..rules(1)
        },
    );
    assert!(serial.max_in_flight.get() <= 3);
}

#[test]
fn roles_outside_the_allow_list_never_reach_sts() {
    let rules = RotationRules {
        allowed_roles: AllowedRoles::parse(&role("ci")).unwrap(),
        ..rules(4)
    };
    let aws = FakeAws::default();
    let (summary, events) = tick_with(&aws, &two_teams(), &rules);
    assert_eq!(summary.rotated, 2);
    assert_eq!(summary.failed, ["alpha/prod (RoleNotAllowed)"]);
    assert!(
        !aws.calls.borrow().iter().any(|c| c.contains("ci-prod")),
        "STS was called"
    );
    assert!(event_lines(&events).contains(r#""stage":"role_not_allowed""#));
}

#[test]
fn no_teams_is_a_quiet_success() {
    let (summary, events) = tick(&FakeAws::default(), &MemoryStore::default());
    assert_eq!(summary.into_result(), Ok(()));
    assert_eq!(events.len(), 2);
}

#[test]
fn rotating_one_team_touches_only_that_team_and_keeps_the_ten_minute_rule() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    aws.clock.advance(11 * MINUTE);
    aws.calls.borrow_mut().clear();
    let one_team = rules(8);
    let run = |team: &str| with_engine(&aws, &store, &one_team, Some(team));
    let (summary, events) = run("beta");
    assert_eq!(summary.rotated, 1);
    assert_eq!(
        rotated(&events),
        [("beta".into(), "lab".into(), RotateReason::Requested)]
    );
    assert!(
        aws.calls.borrow().iter().all(|c| !c.contains("alpha")),
        "only beta was touched"
    );
    let (summary, events) = run("beta");
    assert_eq!(
        summary.skipped, 1,
        "never twice within ten minutes, even on request"
    );
    assert!(event_lines(&events).contains("written_recently"));
    store.delete("team/alpha").unwrap();
    run("beta");
    assert!(
        store.text("state/alpha").is_some(),
        "a one-team run prunes no other team"
    );
}

#[test]
fn accounts_whose_secrets_would_collide_make_their_team_invalid() {
    let aws = FakeAws::default();
    let store = MemoryStore::default()
        .with(
            "team/alpha",
            &team("alpha", &[("a", "ci"), ("a-access-key", "ci")]),
        )
        .with("team/beta", &team("beta", &[("lab", "ci")]));
    let both = RotationRules {
        secret_format: SecretFormat::Both,
        ..rules(4)
    };
    let (summary, events) = tick_with(&aws, &store, &both);
    assert_eq!(summary.invalid_teams, ["team/alpha"]);
    assert_eq!(summary.rotated, 1, "the other team goes on");
    assert!(event_lines(&events).contains(
        r#""field":"accounts[1].name","reason":"with secret_format both, its secret /concourse/alpha/a-access-key is also a secret of account \"a\"; rename one of them""#
    ), "{}", event_lines(&events));
    assert!(
        !aws.calls.borrow().iter().any(|c| c.contains("alpha")),
        "nothing of alpha written"
    );
    let fresh = MemoryStore::default().with(
        "team/alpha",
        &team("alpha", &[("a", "ci"), ("a-access-key", "ci")]),
    );
    let (summary, _) = tick_with(&FakeAws::default(), &fresh, &rules(4));
    assert_eq!(summary.rotated, 2, "with one format the names are distinct");
}
