//! The deployment's counters and the tick's own record, carried by the batches a tick
//! writes anyway.

use super::*;
use crate::deployment::{Counters, LastTick, COUNTERS_KEY, LAST_TICK_KEY};

fn counters(store: &MemoryStore) -> Counters {
    let text = store.text(COUNTERS_KEY).expect("counters were stored");
    Counters::read(Some(text.as_bytes())).unwrap()
}

fn last_tick(store: &MemoryStore) -> LastTick {
    LastTick::read(store.text(LAST_TICK_KEY).unwrap().as_bytes()).unwrap()
}

#[test]
fn a_tick_counts_rotations_failures_and_requests_without_a_commit_of_their_own() {
    let aws = FakeAws {
        denied_roles: [role("ci-prod")].into(),
        flaky: RefCell::new([(role("ci"), 1)].into()),
        ..Default::default()
    };
    let store = two_teams();
    let (summary, _) = tick(&aws, &store);
    assert_eq!(summary.rotated, 2);
    assert_eq!(
        store.commits.get(),
        4,
        "the lease, the marks, the outcomes, the release"
    );
    let counted = counters(&store);
    assert_eq!(counted.rotations(), 2);
    assert_eq!(counted.failures().collect::<Vec<_>>(), [("assume_role", 1)]);
    // GetCallerIdentity, then two AssumeRole answered, one throttled, one denied; three
    // secrets of two accounts created, one call each (never written, so expected missing).
    assert_eq!(
        counted.requests().collect::<Vec<_>>(),
        [
            ("secretsmanager", "ok", 6),
            ("sts", "ok", 3),
            ("sts", "permanent", 1),
            ("sts", "throttled", 1),
        ]
    );
    let tick_record = last_tick(&store);
    assert_eq!(
        (
            tick_record.accounts,
            tick_record.rotated,
            tick_record.failed
        ),
        (3, 2, 1)
    );
    assert_eq!(tick_record.finished_at, aws.clock.now());
    assert!(tick_record.started_at <= tick_record.finished_at);

    aws.clock.advance(MINUTE);
    tick(&aws, &store);
    let again = counters(&store);
    assert_eq!(again.rotations(), 2, "counts survive from tick to tick");
    assert_eq!(again.failures().collect::<Vec<_>>(), [("assume_role", 2)]);
    let denied = again
        .requests()
        .find(|(_, outcome, _)| *outcome == "permanent");
    assert_eq!(denied, Some(("sts", "permanent", 2)));
}

#[test]
fn an_idle_tick_stores_its_record_alone_and_a_team_rotation_none() {
    let aws = FakeAws::default();
    let store = two_teams();
    tick(&aws, &store);
    let before = counters(&store);
    aws.clock.advance(MINUTE);
    store.commits.set(0);
    tick(&aws, &store);
    assert_eq!(store.commits.get(), 1);
    let idle = last_tick(&store);
    assert_eq!((idle.skipped, idle.rotated), (3, 0));
    assert_eq!(idle.finished_at, aws.clock.now());
    assert_eq!(counters(&store), before, "an idle tick counts nothing");

    aws.clock.advance(11 * MINUTE);
    with_engine(&aws, &store, &rules(8), Some("alpha"));
    assert_eq!(counters(&store).rotations(), 5, "a team's rotation counts");
    assert_eq!(last_tick(&store), idle, "but is not a tick");
}

#[test]
fn counters_this_version_cannot_read_are_left_alone() {
    let aws = FakeAws::default();
    let store = two_teams().with(COUNTERS_KEY, "[\"a newer format\"]");
    let (summary, _) = tick(&aws, &store);
    assert_eq!(summary.rotated, 3);
    assert_eq!(store.text(COUNTERS_KEY).unwrap(), "[\"a newer format\"]");
}
