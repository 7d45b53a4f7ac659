//! Parameter Store, alone and beside Secrets Manager.

use super::*;

#[test]
fn parameter_store_gets_tagged_parameters_then_overwrites_them() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let ssm = into(SecretSink::Ssm);
    let (summary, events) = tick_with(&aws, &store, &ssm);
    assert_eq!(summary.rotated, 1, "{}", event_lines(&events));
    assert!(
        aws.secrets.borrow().is_empty(),
        "nothing in Secrets Manager"
    );
    let first = aws.consistent_parameters("/concourse/alpha/dev");
    assert_eq!(aws.count_calls("PutParameter"), 3, "one tagged create each");
    let tags = aws.parameters.borrow()["/concourse/alpha/dev-session-token"]
        .2
        .clone();
    assert_eq!(
        tags,
        ["concourse-sts:team=alpha", "concourse-sts:account=dev"]
    );
    let dev = &state(&store, "alpha").accounts["dev"];
    assert_eq!(dev.sinks.keys().collect::<Vec<_>>(), ["ssm"]);

    aws.calls.borrow_mut().clear();
    aws.clock.advance(40 * MINUTE);
    let (summary, _) = tick_with(&aws, &store, &ssm);
    assert_eq!(summary.rotated, 1);
    assert_eq!(aws.count_calls("PutParameter"), 3, "one overwrite each");
    let second = aws.consistent_parameters("/concourse/alpha/dev");
    assert!(first.iter().zip(&second).all(|(a, b)| a != b));
    assert_eq!(
        aws.parameters.borrow()["/concourse/alpha/dev-access-key"].1,
        2
    );
}

#[test]
fn with_both_sinks_an_account_is_rotated_only_when_both_hold_it() {
    let denied = FakeAws {
        ssm_denied: true,
        ..Default::default()
    };
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let both = into(SecretSink::Both);
    let (summary, events) = tick_with(&denied, &store, &both);
    assert_eq!(summary.failed, ["alpha/dev (AccessDeniedException)"]);
    assert!(event_lines(&events).contains("[not written: /concourse/alpha/dev-access-key (ssm)"));
    denied.consistent_triple("/concourse/alpha/dev");
    let dev = &state(&store, "alpha").accounts["dev"];
    assert!(dev.incomplete);
    assert_eq!(dev.sinks.keys().collect::<Vec<_>>(), ["secretsmanager"]);

    let aws = FakeAws {
        secrets: RefCell::new(denied.secrets.borrow().clone()),
        issued: Cell::new(denied.issued.get()),
        ..Default::default()
    };
    aws.clock.advance(MINUTE);
    let (summary, _) = tick_with(&aws, &store, &both);
    assert_eq!(summary.rotated, 1);
    let in_secrets = aws.consistent_triple("/concourse/alpha/dev");
    assert_eq!(
        in_secrets,
        aws.consistent_parameters("/concourse/alpha/dev")
    );
    let dev = &state(&store, "alpha").accounts["dev"];
    assert_eq!(dev.sinks.len(), 2);
}

#[test]
fn names_parameter_store_would_refuse_fail_their_account_before_sts() {
    let aws = FakeAws::default();
    let store = MemoryStore::default()
        .with("team/awsteam", &team("awsteam", &[("dev", "ci")]))
        .with("team/beta", &team("beta", &[("lab", "ci")]));
    let rules = RotationRules {
        template: "/{{.Team}}/{{.Account}}".parse().unwrap(),
        ..into(SecretSink::Ssm)
    };
    let (summary, events) = tick_with(&aws, &store, &rules);
    assert_eq!(summary.failed, ["awsteam/dev (SecretPath)"]);
    assert!(event_lines(&events).contains(r#"must not start with \"aws\" or \"ssm\""#));
    assert_eq!(summary.rotated, 1);
    assert_eq!(aws.count_calls("AssumeRole"), 1);
}
