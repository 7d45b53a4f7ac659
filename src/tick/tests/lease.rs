//! The lease, overlapping ticks, stopped hosts and shared stores.

use super::*;
use crate::lease::LeasePolicy;
use std::rc::Rc;

#[test]
fn a_tick_that_finds_the_lease_held_does_nothing() {
    let aws = FakeAws::default();
    let until = aws.clock.now() + chrono::Duration::minutes(3);
    let store = two_teams().with(
        LEASE_KEY,
        &format!(
            r#"{{"holder":"tick-other","expires_at":"{}"}}"#,
            until.to_rfc3339()
        ),
    );
    let (summary, events) = tick(&aws, &store);
    assert!(summary.lease_busy);
    assert_eq!(summary.into_result(), Ok(()));
    assert_eq!(
        aws.calls.borrow().as_slice(),
        ["GetCallerIdentity"],
        "only the time was asked, to judge the lease"
    );
    assert_eq!(
        events,
        [Event::LeaseBusy {
            holder: Some("tick-other".into()),
            until: Some(until)
        }]
    );
    aws.clock.advance(4 * MINUTE);
    let (summary, _) = tick(&aws, &store);
    assert_eq!(summary.rotated, 3, "an expired lease is taken over");
}

#[test]
fn store_commits_do_not_grow_with_accounts() {
    for n in [3, 120] {
        let aws = FakeAws::default();
        let store = many_accounts(n);
        let unpaced = RotationRules {
            writes_per_second: 0,
            ..rules(32)
        };
        let (summary, _) = tick_with(&aws, &store, &unpaced);
        assert_eq!(summary.rotated, n);
        // Take the lease, mark the due accounts, store the outcomes, release.
        assert_eq!(store.commits.get(), 4, "{n} accounts");
        store.commits.set(0);
        let (summary, _) = tick_with(&aws, &store, &unpaced);
        assert_eq!(summary.skipped, n);
        assert_eq!(
            store.commits.get(),
            1,
            "an idle tick writes its own record only"
        );
    }
}

#[test]
fn an_idle_tick_takes_no_lease() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    let lease = store.text(LEASE_KEY);
    let busy = format!(
        r#"{{"holder":"tick-other","expires_at":"{}"}}"#,
        (aws.clock.now() + chrono::Duration::minutes(3)).to_rfc3339()
    );
    store.set(LEASE_KEY, busy.as_bytes()).unwrap();
    let (summary, events) = tick(&aws, &store);
    assert!(!summary.lease_busy, "nothing due, so no lease was needed");
    assert_eq!(summary.skipped, 3);
    assert!(!events.iter().any(|e| matches!(e, Event::LeaseBusy { .. })));
    assert_ne!(store.text(LEASE_KEY), lease);
}

#[test]
fn two_overlapping_ticks_rotate_each_account_once() {
    let aws = FakeAws {
        latency: Duration::from_millis(300),
        ..Default::default()
    };
    let store = many_accounts(20);
    let rules = rules(4);
    let (first, second) = futures::executor::block_on(async {
        let one = async { with_engine_async(&aws, &store, &rules, "tick-one").await };
        let other = async {
            YieldOnce(false).await;
            with_engine_async(&aws, &store, &rules, "tick-other").await
        };
        futures::join!(one, other)
    });
    let busy = [&first, &second]
        .iter()
        .filter(|(summary, _)| summary.lease_busy)
        .count();
    assert_eq!(busy, 1, "one of the two ticks found the lease held");
    assert_eq!(first.0.rotated + second.0.rotated, 20);
    assert_eq!(aws.count_calls("AssumeRole"), 20, "no account twice");
    for t in 0..2 {
        for a in 0..10 {
            aws.consistent_triple(&format!("/concourse/t{t:03}/a{a}"));
        }
    }
}

#[test]
fn a_host_stopped_mid_tick_leaves_every_due_account_marked_for_repair() {
    let hung = FakeAws {
        hang_writes: true,
        ..Default::default()
    };
    let store = two_teams();
    futures::executor::block_on(async {
        let client = test_client(&hung);
        let rules = rules(8);
        let tick = run_engine(&client, &hung, &store, &rules, "tick-stopped", None);
        futures::pin_mut!(tick);
        for _ in 0..50 {
            assert!(futures::poll!(tick.as_mut()).is_pending());
        }
        // The tick is dropped here, as a stopped host drops it.
    });
    assert_eq!(
        hung.count_calls("AssumeRole"),
        3,
        "every account got that far"
    );
    for (team, account) in [("alpha", "dev"), ("alpha", "prod"), ("beta", "lab")] {
        assert!(
            state(&store, team).accounts[account].incomplete,
            "{team}/{account}"
        );
    }
    // The next tick, once the lease of the stopped one has expired, repairs all of them.
    let aws = FakeAws::default();
    aws.clock
        .advance(LeasePolicy::for_requests(RotationRules::default().request_timeout).ttl + MINUTE);
    let (summary, events) = tick(&aws, &store);
    assert_eq!(summary.rotated, 3);
    assert!(rotated(&events)
        .iter()
        .all(|(_, _, reason)| *reason == RotateReason::Incomplete));
}

/// Another holder's record, live for an hour.
fn taken_over_by(holder: &str, aws: &FakeAws) -> Vec<u8> {
    let until = aws.now() + chrono::Duration::hours(1);
    serde_json::json!({"holder": holder, "expires_at": until})
        .to_string()
        .into_bytes()
}

/// The fence is per request, not per account: once the store shows another holder, the
/// account's next request (here the retry of a write that failed) is held back and no
/// other account starts.
#[test]
fn a_tick_whose_lease_is_taken_over_writes_no_more() {
    let aws = FakeAws {
        latency: Duration::from_secs(1),
        ..Default::default()
    };
    let access_key = "/concourse/t000/a0-access-key";
    aws.flaky.borrow_mut().insert(access_key.into(), 1);
    let store = Rc::new(many_accounts(5));
    let taken = store.clone();
    aws.on_request(move |aws, call| {
        if call == format!("CreateSecret {access_key}") {
            taken
                .set(LEASE_KEY, &taken_over_by("tick-other", aws))
                .unwrap();
        }
    });
    let client = test_client(&aws);
    let (summary, events) = run_blocking(&client, &aws, &*store, &rules(1), "tick-test");
    let summary = summary.unwrap();
    assert_eq!((summary.rotated, summary.deferred), (0, 5));
    assert!(events.contains(&Event::LeaseLost {
        reason: "the lease was taken over by tick-other".into()
    }));
    let error = summary.into_result().unwrap_err();
    assert!(error.contains("the lease was lost"), "{error}");
    assert_eq!(
        aws.count_calls(&format!("CreateSecret {access_key}")),
        1,
        "its retry held back at its gate"
    );
    assert_eq!(aws.count_calls("AssumeRole"), 1, "no other account started");
    let kept = state(&store, "t000");
    assert!(
        kept.accounts
            .values()
            .all(|a| a.incomplete && a.written_at.is_none()),
        "a lost tick records no outcome: {kept:?}"
    );
    assert!(store.text(LEASE_KEY).unwrap().contains("tick-other"));
}

/// A node frozen mid-write (SIGSTOP, a paused VM), after its writes passed the fence,
/// for longer than the lease lives, while another node takes over: it wakes knowing,
/// from its monotonic clock, that its lease has run out, and sends nothing more, not
/// even the rest of the account's writes or their retries.
#[test]
fn a_node_frozen_mid_write_sends_nothing_once_it_wakes() {
    let aws = FakeAws::default();
    // Every first attempt fails, so that each write has a retry to hold back.
    let names = ["access-key", "secret-key", "session-token"]
        .map(|suffix| format!("/concourse/alpha/dev-{suffix}"));
    aws.flaky
        .borrow_mut()
        .extend(names.iter().map(|name| (name.clone(), 1)));
    let store = Rc::new(two_teams());
    let taken = store.clone();
    let ttl = LeasePolicy::for_requests(rules(1).request_timeout).ttl;
    aws.on_request(move |aws, call| {
        if call.starts_with("CreateSecret") && aws.count_calls("CreateSecret") == 0 {
            aws.clock.advance(ttl + Duration::from_secs(30));
            taken
                .set(LEASE_KEY, &taken_over_by("tick-taker", aws))
                .unwrap();
        }
    });
    let client = test_client(&aws);
    let (summary, events) = run_blocking(&client, &aws, &*store, &rules(1), "tick-frozen");
    let summary = summary.unwrap();
    for name in &names {
        assert!(
            aws.count_calls(&format!("CreateSecret {name}")) <= 1,
            "only what was in flight: no retry after the thaw"
        );
    }
    assert_eq!(
        aws.count_calls("AssumeRole"),
        1,
        "no account after the thaw"
    );
    assert!(summary.lease_lost.is_some());
    assert!(event_lines(&events).contains(r#""event":"lease_lost""#));
    assert!(matches!(
        events.last(),
        Some(Event::TickFinished {
            lease_lost: true,
            rotated: 0,
            ..
        })
    ));
    assert!(store.text(LEASE_KEY).unwrap().contains("tick-taker"));
}

/// The lease lost after the last write and before the outcomes are stored: the tick
/// stores nothing and says so, instead of reporting success.
#[test]
fn a_lease_lost_at_the_last_write_is_lease_lost_not_success() {
    let aws = FakeAws::default();
    let store =
        Rc::new(MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")])));
    let taken = store.clone();
    aws.on_request(move |aws, call| {
        if call.starts_with("CreateSecret") {
            taken
                .set(LEASE_KEY, &taken_over_by("tick-other", aws))
                .unwrap();
        }
    });
    let json = RotationRules {
        secret_format: SecretFormat::Json,
        ..rules(1)
    };
    let client = test_client(&aws);
    let (summary, events) = run_blocking(&client, &aws, &*store, &json, "tick-test");
    let summary = summary.unwrap();
    assert_eq!(
        aws.count_calls("CreateSecret"),
        1,
        "the write landed under the lease"
    );
    assert!(summary.lease_lost.is_some());
    assert!(summary.clone().into_result().is_err(), "never success");
    assert!(event_lines(&events).contains(r#""event":"lease_lost""#));
    let dev = &state(&store, "alpha").accounts["dev"];
    assert!(
        dev.incomplete && dev.written_at.is_none(),
        "nothing stored: {dev:?}"
    );
}

/// A competitor that read the lease key as absent before this tick wrote it, and wrote
/// after this tick read it back (the race the settle time is for): the marks of the due
/// accounts are not written, nor anything else.
#[test]
fn the_marks_are_written_only_under_a_confirmed_lease() {
    let aws = FakeAws::default();
    let ours_seen = Cell::new(0);
    let racer = taken_over_by("tick-racer", &aws);
    let store = RacedStore {
        inner: two_teams(),
        before_get: Some(Box::new(move |inner, key| {
            let ours = inner
                .text(key)
                .is_some_and(|lease| lease.contains("tick-test"));
            if key == LEASE_KEY && ours {
                ours_seen.set(ours_seen.get() + 1);
                if ours_seen.get() == 2 {
                    inner.set(LEASE_KEY, &racer).unwrap();
                }
            }
        })),
        ..RacedStore::default()
    };
    let client = test_client(&aws);
    let (summary, _) = run_blocking(&client, &aws, &store, &rules(4), "tick-test");
    let summary = summary.unwrap();
    assert!(summary.lease_lost.is_some());
    assert_eq!(summary.deferred, 3);
    assert!(
        store.inner.text("state/alpha").is_none(),
        "no marks written"
    );
    assert_eq!(aws.count_calls("AssumeRole"), 0);
}

/// A node whose clock runs four minutes ahead plans in AWS time: it does not rotate
/// what the others see as not yet due; one four minutes behind still sees what is due.
#[test]
fn nodes_whose_clocks_are_off_plan_in_aws_time() {
    let honest = FakeAws::default();
    let store = two_teams();
    tick(&honest, &store);
    // 26 minutes later: one-hour credentials are due 25 to 30 minutes after a write.
    let due = |store: &MemoryStore| {
        let states = [state(store, "alpha"), state(store, "beta")];
        states
            .iter()
            .flat_map(|s| s.accounts.values().map(|a| a.rotate_after.unwrap()))
            .min()
            .unwrap()
    };
    let first_due = due(&store);
    let ahead = FakeAws {
        secrets: RefCell::new(honest.secrets.borrow().clone()),
        ..Default::default()
    };
    ahead
        .clock
        .advance((first_due - ahead.now()).to_std().unwrap() - 2 * MINUTE);
    ahead.clock.skew_wall(chrono::Duration::minutes(4));
    let (summary, _) = tick(&ahead, &store);
    assert_eq!(summary.rotated, 0, "nothing is due in AWS time");
    assert_eq!(ahead.count_calls("AssumeRole"), 0);
    assert!(
        store.text(LEASE_KEY).unwrap().contains("tick-test"),
        "no lease taken"
    );

    let behind = FakeAws::default();
    behind
        .clock
        .advance((first_due - behind.now()).to_std().unwrap() + MINUTE);
    behind.clock.skew_wall(chrono::Duration::minutes(-4));
    let (summary, _) = tick(&behind, &store);
    assert!(summary.rotated >= 1, "what is due is rotated: {summary:?}");
}

/// A rolling upgrade: state documents a newer version wrote keep its fields through
/// this version's ticks.
#[test]
fn a_newer_versions_state_fields_survive_a_tick() {
    let aws = FakeAws::default();
    let newer = r#"{"writer":"concourse-sts","document":"old","epoch":7,"accounts":{"dev":{"fingerprint":"x","vault_version":3}}}"#;
    let store = MemoryStore::default()
        .with("team/alpha", &team("alpha", &[("dev", "ci")]))
        .with("state/alpha", newer);
    let (summary, _) = tick(&aws, &store);
    assert_eq!(summary.rotated, 1);
    let stored: serde_json::Value =
        serde_json::from_str(&store.text("state/alpha").unwrap()).unwrap();
    assert_eq!(stored["epoch"], 7);
    assert_eq!(stored["accounts"]["dev"]["vault_version"], 3);
    assert!(stored["accounts"]["dev"]["written_at"].is_string());
}

#[test]
fn a_shared_store_keeps_what_others_wrote() {
    let aws = FakeAws::default();
    let foreign_state = r#"{"their":"document"}"#;
    let store = two_teams()
        .with("state/gone-but-not-ours", foreign_state)
        .with("state/beta", "not json at all");
    let (summary, events) = tick(&aws, &store);
    assert_eq!(
        store.text("state/gone-but-not-ours").as_deref(),
        Some(foreign_state)
    );
    assert_eq!(store.text("state/beta").as_deref(), Some("not json at all"));
    assert_eq!(summary.failed, ["beta/lab (State)"]);
    assert!(
        event_lines(&events).contains("key state/beta holds a value concourse-sts did not write")
    );
    assert_eq!(summary.rotated, 2, "the other team is not held up");
    assert_eq!(store.text("unrelated/key").as_deref(), Some("not a team"));

    let foreign_lease = MemoryStore::default()
        .with("team/alpha", &team("alpha", &[("dev", "ci")]))
        .with(LEASE_KEY, "someone else's");
    let client = test_client(&aws);
    let (result, _) = run_blocking(&client, &aws, &foreign_lease, &rules(4), "tick-test");
    let error = result.unwrap_err();
    assert!(
        format!("{error:#}").contains("lease/rotation holds a value concourse-sts did not write")
    );
    assert_eq!(
        foreign_lease.text(LEASE_KEY).as_deref(),
        Some("someone else's")
    );
}
