//! Failing accounts, retries and backoff, half-written sets, the rotator's own failures.

use super::*;

#[test]
fn bad_teams_and_denied_roles_fail_alone_and_are_retried_next_tick() {
    let aws = FakeAws {
        denied_roles: [role("ci-prod")].into(),
        ..Default::default()
    };
    let store = two_teams()
        .with("team/broken", "{\"name\": \"broken\", ")
        .with("team/mismatch", &team("other", &[("x", "ci")]));
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 2);
    assert_eq!(summary.failed, ["alpha/prod (AccessDenied)"]);
    assert_eq!(summary.invalid_teams, ["team/broken", "team/mismatch"]);
    assert_eq!(
        summary.into_result().unwrap_err(),
        "1 of 3 accounts failed: alpha/prod (AccessDenied); 2 invalid team documents: team/broken, team/mismatch"
    );
    let failure = events
        .iter()
        .find(|e| matches!(e, Event::AccountFailed { .. }))
        .unwrap();
    let line = serde_json::to_value(failure).unwrap();
    assert_eq!(
        (
            &line["team"],
            &line["account"],
            &line["role_arn"],
            &line["stage"],
            &line["code"]
        ),
        (
            &"alpha".into(),
            &"prod".into(),
            &role("ci-prod").into(),
            &"assume_role".into(),
            &"AccessDenied".into()
        )
    );
    let prod = &state(&store, "alpha").accounts["prod"];
    assert_eq!(prod.consecutive_failures, 1);
    assert_eq!(
        prod.last_error.as_ref().unwrap().code.as_deref(),
        Some("AccessDenied")
    );

    aws.calls.borrow_mut().clear();
    let (summary, _) = tick(&aws, &store);
    assert_eq!(
        aws.calls.borrow().as_slice(),
        [format!("AssumeRole {}", role("ci-prod"))]
    );
    assert_eq!(
        state(&store, "alpha").accounts["prod"].consecutive_failures,
        2
    );
    assert_eq!(summary.skipped, 2);
}

#[test]
fn a_half_written_triple_is_rewritten_whole_by_the_next_tick() {
    let aws = FakeAws {
        failing_secrets: ["/concourse/beta/lab-session-token".to_owned()].into(),
        ..Default::default()
    };
    let store = two_teams();
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.failed, ["beta/lab (AccessDeniedException)"]);
    let line = event_lines(&events);
    assert!(line.contains(r#""stage":"write_secrets""#), "{line}");
    assert!(
        line.contains("[not written: /concourse/beta/lab-session-token]"),
        "{line}"
    );
    assert!(state(&store, "beta").accounts["lab"].incomplete);
    assert!(
        aws.secret("/concourse/beta/lab-access-key").is_some(),
        "the partial write happened"
    );

    let fixed = FakeAws {
        secrets: RefCell::new(aws.secrets.borrow().clone()),
        issued: Cell::new(aws.issued.get()),
        ..Default::default()
    };
    fixed.clock.advance(MINUTE);
    let (_, events) = tick(&fixed, &store);
    assert_eq!(
        rotated(&events),
        [("beta".into(), "lab".into(), RotateReason::Incomplete)]
    );
    fixed.consistent_triple("/concourse/beta/lab");
    assert!(!state(&store, "beta").accounts["lab"].incomplete);
}

#[test]
fn transient_failures_are_retried_with_one_line_per_attempt() {
    let aws = FakeAws::default();
    aws.flaky.borrow_mut().insert(role("ci"), 2);
    aws.flaky
        .borrow_mut()
        .insert("/concourse/alpha/dev-secret-key".into(), 1);
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 1);
    let attempts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::AttemptFailed {
                operation,
                attempt,
                retry_in_ms,
                ..
            } => Some((*operation, *attempt, retry_in_ms.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(
        attempts,
        [
            ("assume_role", 1, true),
            ("assume_role", 2, true),
            ("write_secret", 1, true)
        ]
    );
    aws.consistent_triple("/concourse/alpha/dev");

    let stubborn = FakeAws::default();
    stubborn.flaky.borrow_mut().insert(role("ci"), 10);
    let (summary, events) = tick(
        &stubborn,
        &MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")])),
    );
    assert_eq!(summary.failed, ["alpha/dev (Throttling)"]);
    assert_eq!(
        stubborn.count_calls("AssumeRole"),
        6,
        "bounded attempts: three, and three more after the other accounts"
    );
    let last = events
        .iter()
        .rev()
        .find(|e| matches!(e, Event::AttemptFailed { .. }))
        .unwrap();
    assert!(matches!(
        last,
        Event::AttemptFailed {
            attempt: 3,
            retry_in_ms: None,
            ..
        }
    ));
}

#[test]
fn a_failing_account_backs_off_and_says_whether_it_can_heal() {
    let aws = FakeAws {
        denied_roles: [role("ci")].into(),
        ..Default::default()
    };
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let (_, events) = tick(&aws, &store);
    let line = failure(&events);
    assert_eq!(line["permanent"], true, "AccessDenied needs an operator");
    assert!(
        line.get("next_attempt").is_none(),
        "the first retry is the next tick"
    );

    aws.clock.advance(MINUTE);
    let (_, events) = tick(&aws, &store);
    let next = aws.clock.now() + chrono::Duration::minutes(5);
    assert_eq!(failure(&events)["next_attempt"], serde_json::json!(next));
    assert_eq!(
        state(&store, "alpha").accounts["dev"].next_attempt,
        Some(next)
    );

    aws.calls.borrow_mut().clear();
    aws.clock.advance(MINUTE);
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.skipped, 1);
    assert!(event_lines(&events).contains(r#""reason":"backing_off""#));
    assert!(aws.calls.borrow().is_empty(), "backing off calls nothing");

    aws.clock.advance(4 * MINUTE);
    tick(&aws, &store);
    assert_eq!(
        aws.count_calls("AssumeRole"),
        1,
        "tried again once the wait is over"
    );
    let third = state(&store, "alpha").accounts["dev"].clone();
    assert_eq!(third.consecutive_failures, 3);
    assert_eq!(
        third.next_attempt,
        Some(aws.clock.now() + chrono::Duration::minutes(10))
    );

    // A changed team document starts over: tried at once...
    store
        .set(
            "team/alpha",
            team("alpha", &[("dev", "ci"), ("new", "ci-new")]).as_bytes(),
        )
        .unwrap();
    aws.calls.borrow_mut().clear();
    let (_, events) = tick(&aws, &store);
    assert!(aws
        .calls
        .borrow()
        .contains(&format!("AssumeRole {}", role("ci"))));
    // ... and a failure then is the first again: retried at the next tick.
    assert!(failure(&events).get("next_attempt").is_none());
    assert_eq!(
        state(&store, "alpha").accounts["dev"].consecutive_failures,
        1
    );
}

#[test]
fn throttling_that_outlasts_the_retries_is_not_permanent() {
    let aws = FakeAws::default();
    aws.flaky.borrow_mut().insert(role("ci"), 10);
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let (_, events) = tick(&aws, &store);
    let line = failure(&events);
    assert_eq!(
        (&line["retryable"], &line["permanent"]),
        (&true.into(), &false.into())
    );
}

#[test]
fn a_repair_that_keeps_failing_rewrites_the_siblings_at_most_every_ten_minutes() {
    let aws = FakeAws {
        failing_secrets: ["/concourse/beta/lab-session-token".to_owned()].into(),
        ..Default::default()
    };
    let store = MemoryStore::default().with("team/beta", &team("beta", &[("lab", "ci")]));
    // Each rotation writes its own credentials, with a request token of their own.
    let writes_of_access_key = || {
        let tokens = aws.tokens.borrow();
        let of_access_key = tokens
            .iter()
            .filter(|(name, _)| name == "/concourse/beta/lab-access-key");
        of_access_key
            .map(|(_, token)| token)
            .collect::<HashSet<_>>()
            .len()
    };
    tick(&aws, &store);
    aws.clock.advance(MINUTE);
    let (_, events) = tick(&aws, &store);
    assert_eq!(rotated(&events), [], "the first repair fails too");
    assert_eq!(
        writes_of_access_key(),
        2,
        "the first write and the first repair"
    );
    for _ in 0..9 {
        aws.clock.advance(MINUTE);
        tick(&aws, &store);
    }
    assert_eq!(writes_of_access_key(), 2, "nothing for ten minutes");
    aws.clock.advance(MINUTE);
    tick(&aws, &store);
    assert_eq!(writes_of_access_key(), 3);
}

#[test]
fn every_write_carries_a_request_token_that_its_retries_repeat() {
    let aws = FakeAws::default();
    aws.flaky
        .borrow_mut()
        .insert("/concourse/alpha/dev-secret-key".into(), 1);
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    tick(&aws, &store);
    let tokens = aws.tokens.borrow();
    assert!(tokens.iter().all(|(_, token)| token.len() == 36));
    let of = |name: &str| -> HashSet<String> {
        tokens
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .collect()
    };
    let secret_key = of("/concourse/alpha/dev-secret-key");
    assert_eq!(secret_key.len(), 1, "the retry reuses the token");
    assert_ne!(secret_key, of("/concourse/alpha/dev-access-key"));
    assert_eq!(
        tokens.len(),
        4,
        "three creates, and the retried one: {tokens:?}"
    );
}

#[test]
fn without_the_rotators_credentials_the_tick_fails_before_any_aws_call() {
    let aws = FakeAws::default();
    let store = two_teams();
    let client = imds_client(&aws);
    let (result, _) = run_blocking(&client, &aws, &store, &rules(4), "tick-test");
    let error = result.unwrap_err();
    assert_eq!(
        format!("{error:#}"),
        "getting the rotator's credentials from IMDS at http://imds.test: asking for the session token: HTTP 500"
    );
    assert_eq!(aws.calls.borrow().as_slice(), ["IMDS"], "no AWS call");
    assert!(store.text(LEASE_KEY).is_none(), "no lease taken");
}

#[test]
fn credentials_that_cannot_be_refreshed_stop_the_tick_without_charging_accounts() {
    // Good for five more minutes and ten seconds: fetched before the lease, and again
    // at the first account's request, when IMDS has nothing more to give.
    let aws = FakeAws::default();
    let expiration = aws.now() + chrono::Duration::minutes(5) + chrono::Duration::seconds(10);
    aws.imds_expirations.borrow_mut().push(expiration);
    // Twenty seconds pass while STS tells the time: the credentials are then within the
    // five minutes that call for a refresh.
    aws.on_request(|aws, call| {
        if call == "GetCallerIdentity" {
            aws.clock.advance(Duration::from_secs(20));
        }
    });
    let store = two_teams();
    let client = imds_client(&aws);
    let (result, events) = run_blocking(&client, &aws, &store, &rules(1), "tick-test");
    let error = format!("{:#}", result.unwrap_err());
    assert!(
        error.starts_with("getting the rotator's credentials from IMDS at http://imds.test"),
        "{error}"
    );
    let imds_calls = aws.calls.borrow().iter().filter(|c| *c == "IMDS").count();
    assert_eq!(
        imds_calls,
        4,
        "one whole fetch, then one refused ask: {:?}",
        aws.calls.borrow()
    );
    assert_eq!(aws.count_calls("AssumeRole"), 0);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::AccountDeferred { .. }))
            .count(),
        3
    );
    for team in ["alpha", "beta"] {
        for account in state(&store, team).accounts.values() {
            assert_eq!(account.consecutive_failures, 0, "not charged");
            assert!(!account.incomplete, "nothing was written");
        }
    }
}

/// The rotator's own keys refused mid-tick: the account at hand and every later one are
/// deferred, none charged, and the tick fails naming the rotator's credentials.
#[test]
fn the_rotators_own_failures_defer_accounts_uncharged() {
    let aws = FakeAws::default();
    aws.on_request(|aws, call| {
        if call.starts_with("AssumeRole") {
            aws.refuse_keys.set(true);
        }
    });
    let store = two_teams();
    let client = test_client(&aws);
    let (result, events) = run_blocking(&client, &aws, &store, &rules(1), "tick-test");
    let error = format!("{:#}", result.unwrap_err());
    assert!(
        error.contains("the static keys") && error.contains("AWS refused them"),
        "{error}"
    );
    assert!(!error.contains("ROTATORSECRET") && !error.contains("AKIDROTATOR"));
    let deferred = events
        .iter()
        .filter(|e| matches!(e, Event::AccountDeferred { .. }))
        .count();
    assert_eq!(deferred, 3);
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::AccountFailed { .. })));
    for team in ["alpha", "beta"] {
        for account in state(&store, team).accounts.values() {
            assert_eq!(account.consecutive_failures, 0, "not charged");
            assert_eq!(account.next_attempt, None, "no backoff");
        }
    }
    assert_eq!(aws.count_calls("AssumeRole"), 1, "nothing more was sent");
}

/// An account failing while its current credentials run short is tried at every tick
/// until they expire, whatever its backoff would say; after that it backs off.
#[test]
fn backing_off_never_lets_working_credentials_run_out() {
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let written = FakeAws::default();
    tick(&written, &store);
    let aws = FakeAws {
        denied_roles: [role("ci")].into(),
        ..Default::default()
    };
    aws.clock.advance(31 * MINUTE);
    for _ in 0..4 {
        tick(&aws, &store);
        assert_eq!(state(&store, "alpha").accounts["dev"].next_attempt, None);
        aws.clock.advance(5 * MINUTE);
    }
    assert_eq!(aws.count_calls("AssumeRole"), 4, "every tick tried");
    aws.clock.advance(10 * MINUTE);
    tick(&aws, &store);
    let dev = &state(&store, "alpha").accounts["dev"];
    assert!(dev.expiration.unwrap() < aws.now(), "expired by now");
    assert!(dev.next_attempt.is_some(), "backing off again");
}

/// A half-written set whose write failed for a reason that passes is repaired at the
/// very next tick, even within ten minutes and after several failures.
#[test]
fn a_transiently_half_written_set_is_repaired_at_the_next_tick() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/beta", &team("beta", &[("lab", "ci")]));
    let token = "/concourse/beta/lab-session-token".to_owned();
    // Twelve server errors: two passes of three attempts in each of the first two ticks.
    aws.flaky.borrow_mut().insert(token.clone(), 12);
    tick(&aws, &store);
    let lab = state(&store, "beta").accounts["lab"].clone();
    assert!(lab.incomplete && lab.next_attempt.is_none(), "{lab:?}");
    aws.clock.advance(MINUTE);
    let (summary, _) = tick(&aws, &store);
    assert_eq!(summary.failed, ["beta/lab (InternalServiceError)"]);
    let lab = state(&store, "beta").accounts["lab"].clone();
    assert_eq!((lab.consecutive_failures, lab.next_attempt), (2, None));
    aws.clock.advance(MINUTE);
    let (_, events) = tick(&aws, &store);
    assert_eq!(
        rotated(&events),
        [("beta".into(), "lab".into(), RotateReason::Incomplete)],
        "repaired two minutes after the first write"
    );
    aws.consistent_triple("/concourse/beta/lab");
}

/// A write that landed but whose answer could not be read is sent again, with the same
/// request token, so it adds no second version; the account is rotated, not failed.
#[test]
fn an_unreadable_answer_to_a_write_is_retried_with_its_token() {
    let aws = FakeAws::default();
    let name = "/concourse/alpha/dev-secret-key".to_owned();
    aws.garbled.borrow_mut().insert(name.clone(), 1);
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 1, "{}", event_lines(&events));
    assert!(event_lines(&events).contains("unreadable answer"));
    let tokens: HashSet<String> = aws
        .tokens
        .borrow()
        .iter()
        .filter(|(secret, _)| *secret == name)
        .map(|(_, token)| token.clone())
        .collect();
    assert_eq!(tokens.len(), 1, "the retry repeats the token");
    // The retried create finds the secret, and the new version with that token is the
    // one already there.
    assert_eq!(aws.count_calls(&format!("CreateSecret {name}")), 2);
    assert_eq!(aws.count_calls(&format!("PutSecretValue {name}")), 1);
    aws.consistent_triple("/concourse/alpha/dev");
}

/// An account whose attempt failed in a way that passes by itself is tried again after
/// the tick's other accounts, not a schedule period later: one failure of the standard
/// mode's three attempts costs seconds of the credentials' margin, not five minutes.
#[test]
fn a_transient_failure_is_tried_again_within_the_tick() {
    let aws = FakeAws::default();
    // Three throttled answers: the whole first attempt of `dev`, none of the second.
    aws.flaky.borrow_mut().insert(role("ci"), 3);
    let store = MemoryStore::default().with(
        "team/alpha",
        &team("alpha", &[("dev", "ci"), ("prod", "other")]),
    );
    let (summary, events) = tick_with(&aws, &store, &rules(1));
    assert_eq!(
        (summary.rotated, summary.failed.len()),
        (2, 0),
        "{summary:?}"
    );
    assert_eq!(aws.count_calls(&format!("AssumeRole {}", role("ci"))), 4);
    let order: Vec<_> = (events.iter())
        .filter_map(|e| match e {
            Event::AccountRotated { account, .. } => Some(account.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["prod", "dev"], "tried again after the others");
    let dev = &state(&store, "alpha").accounts["dev"];
    assert_eq!((dev.consecutive_failures, dev.incomplete), (0, false));
    aws.consistent_triple("/concourse/alpha/dev");
}

/// A second attempt that the budget stops before it starts leaves the first attempt's
/// failure recorded, with what it wrote: a half-written set stays marked for repair.
#[test]
fn a_second_attempt_past_the_budget_keeps_the_first_failure() {
    let aws = FakeAws {
        latency: Duration::from_secs(10),
        ..Default::default()
    };
    let token = "/concourse/beta/lab-session-token".to_owned();
    aws.flaky.borrow_mut().insert(token, 3);
    let store = MemoryStore::default().with("team/beta", &team("beta", &[("lab", "ci")]));
    let tight = RotationRules {
        tick_budget: Duration::from_secs(60),
        ..rules(8)
    };
    let (summary, _) = tick_with(&aws, &store, &tight);
    assert_eq!(summary.failed, ["beta/lab (InternalServiceError)"]);
    assert_eq!(summary.deferred, 0);
    let lab = &state(&store, "beta").accounts["lab"];
    assert!(lab.incomplete && lab.consecutive_failures == 1, "{lab:?}");
    assert_eq!(aws.count_calls("AssumeRole"), 1, "no second attempt");
}

/// The second attempt of a half-written set finishes it with the same credentials: the
/// secrets that landed get no second version, and the set is consistent.
#[test]
fn a_second_attempt_finishes_the_half_written_set_with_the_same_credentials() {
    let aws = FakeAws::default();
    let token = "/concourse/alpha/dev-session-token";
    aws.flaky.borrow_mut().insert(token.into(), 3);
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let (summary, _) = tick(&aws, &store);
    assert_eq!(
        (summary.rotated, summary.failed.len()),
        (1, 0),
        "{summary:?}"
    );
    assert_eq!(
        aws.count_calls("AssumeRole"),
        1,
        "one session for the whole set"
    );
    for secret in ["access-key", "secret-key"] {
        let name = format!("/concourse/alpha/dev-{secret}");
        assert_eq!(
            aws.count_calls(&format!("CreateSecret {name}")),
            1,
            "{name}"
        );
    }
    assert_eq!(aws.count_calls(&format!("CreateSecret {token}")), 4);
    aws.consistent_triple("/concourse/alpha/dev");
    let dev = &state(&store, "alpha").accounts["dev"];
    assert_eq!((dev.consecutive_failures, dev.incomplete), (0, false));
}
