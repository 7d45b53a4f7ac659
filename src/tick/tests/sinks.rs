//! Parameter Store, alone and beside Secrets Manager.

use super::*;

#[test]
fn parameter_store_gets_tagged_parameters_then_overwrites_them() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let ssm = into("ssm");
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
    let both = into("both");
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
        ..into("ssm")
    };
    let (summary, events) = tick_with(&aws, &store, &rules);
    assert_eq!(summary.failed, ["awsteam/dev (SecretPath)"]);
    assert!(event_lines(&events).contains(r#"must not start with \"aws\" or \"ssm\""#));
    assert_eq!(summary.rotated, 1);
    assert_eq!(aws.count_calls("AssumeRole"), 1);
}

/// What Vault holds at a key (below the mount) and its team/account labels.
fn in_vault(aws: &FakeAws, key: &str) -> (serde_json::Value, serde_json::Value) {
    let secrets = aws.vault.secrets.borrow();
    let stored = &secrets[key];
    (
        stored.versions.last().unwrap().clone(),
        stored.labels.clone(),
    )
}

#[test]
fn vault_beside_secrets_manager_holds_the_same_set_labelled() {
    let aws = FakeAws::default();
    let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
    let rules = into("secretsmanager,vault");
    let (summary, events) = tick_with(&aws, &store, &rules);
    assert_eq!(summary.rotated, 1, "{}", event_lines(&events));
    let triple = aws.consistent_triple("/concourse/alpha/dev");
    for (suffix, value) in ["access-key", "secret-key", "session-token"]
        .iter()
        .zip(&triple)
    {
        let (data, labels) = in_vault(&aws, &format!("alpha/dev-{suffix}"));
        assert_eq!(data["value"], value.as_str(), "{suffix}");
        assert!(data["expiration"].as_str().unwrap().ends_with('Z'));
        assert_eq!(labels["concourse-sts:team"], "alpha");
        assert_eq!(labels["concourse-sts:account"], "dev");
    }
    let dev = &state(&store, "alpha").accounts["dev"];
    assert_eq!(
        dev.sinks.keys().collect::<Vec<_>>(),
        ["secretsmanager", "vault"]
    );
    assert_eq!(aws.vault.count("POST auth/approle/login"), 1);
    assert_eq!(
        aws.vault.live_tokens(aws.now()),
        1,
        "the tick's token is revoked"
    );

    aws.clock.advance(40 * MINUTE);
    let (summary, events) = tick_with(&aws, &store, &rules);
    assert_eq!(summary.rotated, 1);
    assert!(event_lines(&events).contains(r#""secrets_created":0"#));
    assert_eq!(
        aws.vault.secrets.borrow()["alpha/dev-access-key"]
            .versions
            .len(),
        2
    );
}

/// A sealed Vault fails the accounts it was to hold, not the tick: Secrets Manager gets
/// every set, and the next tick, Vault unsealed, repairs at once.
#[test]
fn a_sealed_vault_fails_its_accounts_and_the_next_tick_repairs() {
    let aws = FakeAws::default();
    aws.vault.sealed.set(true);
    let store = two_teams();
    let rules = into("secretsmanager,vault");
    let (summary, events) = tick_with(&aws, &store, &rules);
    assert_eq!(summary.failed.len(), 3, "{}", event_lines(&events));
    assert!(summary.failed.iter().all(|f| f.ends_with("(VaultSealed)")));
    aws.consistent_triple("/concourse/alpha/dev");
    aws.consistent_triple("/concourse/beta/lab");
    let failed = failure(&events);
    assert_eq!(failed["retryable"], true);
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("[not written: concourse/"));
    assert_eq!(aws.vault.count("POST auth/approle/login"), 3);
    let dev = &state(&store, "alpha").accounts["dev"];
    assert!(dev.incomplete);
    assert_eq!(dev.sinks.keys().collect::<Vec<_>>(), ["secretsmanager"]);

    aws.vault.sealed.set(false);
    aws.clock.advance(MINUTE);
    let (summary, events) = tick_with(&aws, &store, &rules);
    assert_eq!(summary.rotated, 3, "{}", event_lines(&events));
    let triple = aws.consistent_triple("/concourse/alpha/dev");
    assert_eq!(
        in_vault(&aws, "alpha/dev-session-token").0["value"],
        triple[2].as_str()
    );
}

/// Another writer stores a set between this tick's read of the metadata and its write:
/// a newer set is kept (and said), an older one is overwritten.
#[test]
fn a_check_and_set_conflict_keeps_a_newer_set_and_overwrites_an_older_one() {
    for (later, kept) in [
        (chrono::Duration::hours(5), true),
        (chrono::Duration::hours(-5), false),
    ] {
        let aws = FakeAws::default();
        let expiration = aws.now() + later;
        let raced = Cell::new(false);
        aws.vault.on_request(move |vault, request| {
            if request == "POST concourse/data/alpha/dev-access-key" && !raced.replace(true) {
                vault.write_as_another("alpha/dev-access-key", expiration);
            }
        });
        let store = MemoryStore::default().with("team/alpha", &team("alpha", &[("dev", "ci")]));
        let (summary, events) = tick_with(&aws, &store, &into("vault"));
        assert_eq!(summary.rotated, 1, "{}", event_lines(&events));
        let (data, _) = in_vault(&aws, "alpha/dev-access-key");
        assert_eq!(data["value"] == "another", kept, "{data}");
        let said = event_lines(&events).contains(r#""operation":"vault_check_and_set""#);
        assert_eq!(said, kept);
        assert_eq!(
            aws.vault.count("GET concourse/data/alpha/dev-access-key"),
            1
        );
    }
}

#[test]
fn a_path_the_policy_denies_fails_its_account_for_good_naming_the_path() {
    let aws = FakeAws::default();
    (aws.vault.denied.borrow_mut()).push("concourse/data/beta/".into());
    let store = two_teams();
    let (summary, events) = tick_with(&aws, &store, &into("vault"));
    assert_eq!(summary.rotated, 2);
    assert_eq!(summary.failed, ["beta/lab (VaultPermissionDenied)"]);
    let failed = failure(&events);
    assert_eq!(failed["permanent"], true);
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("permission denied (POST concourse/data/beta/lab-access-key)"),
        "{error}"
    );
    assert!(
        error.contains("concourse/beta/lab-session-token (vault)"),
        "{error}"
    );
}
