//! The client's token and layout against the fake Vault, on the fake AWS's clock.

use std::time::Duration;

use futures::executor::block_on;

use super::*;
use crate::aws::{CredentialsSource, RotatorCredentials};
use crate::clock::tests::ManualTime;
use crate::fake_aws::FakeAws;
use crate::fake_vault::{self, FakeToken, OPERATOR_TOKEN, SECRET_ID};

type Aws<'a> = AwsClient<'a, &'a FakeAws, ManualTime>;
type Vault<'a> = VaultClient<'a, &'a FakeAws, ManualTime>;

fn rotator(aws: &FakeAws) -> Aws<'_> {
    aws.client_as(CredentialsSource::Static(RotatorCredentials {
        access_key_id: "AKIDROTATOR".into(),
        secret_access_key: "ROTATORSECRET".into(),
        session_token: None,
    }))
}

fn vault<'a>(aws: &'a FakeAws, client: &'a Aws<'a>, auth: VaultAuth) -> Vault<'a> {
    VaultClient::new(aws, &aws.clock, client, fake_vault::settings(auth))
}

fn write(vault: &Vault<'_>, path: &str) -> Result<HttpResponse, AwsError> {
    let body = json!({"data": {"value": "v"}, "options": {"cas": 0}});
    block_on(vault.send(&(), VaultRequest::post(path.into(), body)))
}

const SECONDS: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn one_login_serves_every_concurrent_request_and_is_revoked_at_the_end() {
    let aws = FakeAws::default();
    let client = rotator(&aws);
    let vault = vault(&aws, &client, fake_vault::approle());
    let reads = (0..5).map(|_| vault.send(&(), VaultRequest::get("concourse/metadata/x".into())));
    let answers = block_on(futures::future::join_all(reads));
    assert!(answers
        .iter()
        .all(|a| matches!(a, Err(e) if e.kind() == ErrorKind::NotFound)));
    assert_eq!(aws.vault.count("POST auth/approle/login"), 1);
    assert_eq!(
        aws.vault.live_tokens(aws.now()),
        2,
        "the operator's and the login's"
    );
    block_on(vault.close());
    assert_eq!(aws.vault.count("POST auth/token/revoke-self"), 1);
    assert_eq!(
        aws.vault.live_tokens(aws.now()),
        1,
        "only the operator's is left"
    );
}

/// A token is renewed once two thirds of its TTL are spent, and replaced by a new login
/// when a renewal no longer gives it half of what it had (its maximum TTL is near).
#[test]
fn a_token_nearing_its_end_is_renewed_then_replaced() {
    let aws = FakeAws::default();
    aws.vault.token_ttl.set(60);
    aws.vault.token_max_ttl.set(100);
    let client = rotator(&aws);
    let vault = vault(&aws, &client, fake_vault::approle());
    let step = |seconds: u64| {
        aws.clock.advance(SECONDS(seconds));
        let answer = write(&vault, "concourse/data/x");
        assert!(
            answer.is_ok() || matches!(&answer, Err(e) if e.code() == Some("VaultCasMismatch"))
        );
        (
            aws.vault.count("POST auth/approle/login"),
            aws.vault.count("POST auth/token/renew-self"),
        )
    };
    assert_eq!(step(0), (1, 0));
    assert_eq!(step(30), (1, 0), "half its time left: kept");
    assert_eq!(step(15), (1, 1), "two thirds spent: renewed, to 55 s");
    assert_eq!(step(37), (2, 2), "renewed only to its maximum: a new login");
    assert_eq!(aws.vault.count("GET auth/token/lookup-self"), 0);
}

/// A write that waits long in its pace (found on the real OpenBao: tokens of 4 s, writes
/// at one a second) takes its token after the wait, so it never goes out expired.
#[test]
fn a_write_takes_its_token_after_waiting_in_the_pace() {
    struct Paced<'a>(&'a FakeAws);
    impl Gate for Paced<'_> {
        async fn admit(&self) -> Result<(), String> {
            self.0.clock.advance(SECONDS(5));
            Ok(())
        }
    }
    let aws = FakeAws::default();
    aws.vault.token_ttl.set(4);
    let client = rotator(&aws);
    let vault = vault(&aws, &client, fake_vault::approle());
    write(&vault, "concourse/data/a").unwrap();
    for key in ["b", "c"] {
        let body = json!({"data": {"value": "v"}, "options": {"cas": 0}});
        let request = VaultRequest::post(format!("concourse/data/{key}"), body);
        block_on(vault.send(&Paced(&aws), request)).unwrap();
    }
    assert_eq!(
        aws.vault.count("GET auth/token/lookup-self"),
        0,
        "no 403 met"
    );
}

/// Vault restarted from scratch (or the token revoked): a 403 that the token's own
/// lookup confirms gets a new login and the request again; a policy's 403 does not.
#[test]
fn a_forgotten_token_is_replaced_and_a_denied_path_is_not() {
    let aws = FakeAws::default();
    let client = rotator(&aws);
    let vault = vault(&aws, &client, fake_vault::approle());
    write(&vault, "concourse/data/a").unwrap();
    aws.vault
        .tokens
        .borrow_mut()
        .retain(|token, _| token == OPERATOR_TOKEN);
    write(&vault, "concourse/data/b").unwrap();
    assert_eq!(aws.vault.count("POST auth/approle/login"), 2);
    assert_eq!(aws.vault.count("POST concourse/data/b"), 2);

    aws.vault
        .denied
        .borrow_mut()
        .push("concourse/data/locked/".into());
    let denied = write(&vault, "concourse/data/locked/x").unwrap_err();
    assert!(denied.is_permanent());
    assert_eq!(
        denied.to_string(),
        "VaultPermissionDenied (HTTP 403): permission denied (POST concourse/data/locked/x)"
    );
    assert_eq!(
        aws.vault.count("POST auth/approle/login"),
        2,
        "no new login"
    );
    assert_eq!(aws.vault.count("GET auth/token/lookup-self"), 2);
}

#[test]
fn the_operators_token_is_looked_up_renewed_and_never_revoked() {
    let aws = FakeAws::default();
    let expires = aws.now() + chrono::Duration::seconds(100);
    aws.vault.tokens.borrow_mut().insert(
        OPERATOR_TOKEN.into(),
        FakeToken {
            expires: Some(expires),
            max: None,
            ttl: 3600,
            renewable: true,
        },
    );
    let client = rotator(&aws);
    let token = VaultAuth::Token(OPERATOR_TOKEN.to_owned().into());
    let vault = vault(&aws, &client, token);
    write(&vault, "concourse/data/a").unwrap();
    block_on(vault.close());
    let requests = aws.vault.requests.borrow().clone();
    assert_eq!(
        requests,
        [
            "GET auth/token/lookup-self",
            "POST auth/token/renew-self",
            "POST concourse/data/a"
        ]
    );
    let renewed = aws.vault.tokens.borrow()[OPERATOR_TOKEN].expires.unwrap();
    assert!(renewed > expires, "renewed to its TTL");
}

#[test]
fn a_refused_login_fails_every_request_at_once() {
    let aws = FakeAws::default();
    let client = rotator(&aws);
    let vault = vault(
        &aws,
        &client,
        VaultAuth::Token("hvs.UNKNOWN".to_owned().into()),
    );
    for _ in 0..3 {
        let error = write(&vault, "concourse/data/a").unwrap_err();
        assert!(error.is_permanent());
        assert!(
            error.to_string().ends_with("[logging in to Vault]"),
            "{error}"
        );
    }
    assert_eq!(
        aws.vault.requests.borrow().len(),
        1,
        "one lookup, then nothing"
    );
}

/// A sealed Vault is asked three times, as the standard mode would, then no more this
/// tick; its failures stay retryable, for the next tick.
#[test]
fn a_sealed_vault_gets_three_logins_per_tick() {
    let aws = FakeAws::default();
    aws.vault.sealed.set(true);
    let client = rotator(&aws);
    let vault = vault(&aws, &client, fake_vault::approle());
    for _ in 0..5 {
        let error = write(&vault, "concourse/data/a").unwrap_err();
        assert_eq!(error.code(), Some("VaultSealed"));
        assert!(error.is_retryable());
    }
    assert_eq!(aws.vault.count("POST auth/approle/login"), 3);
}

#[test]
fn the_aws_login_signs_the_server_id_vault_wants() {
    let aws = FakeAws::default();
    *aws.vault.server_id.borrow_mut() = Some("vault.example.com".into());
    let client = rotator(&aws);
    let with = |server_id: Option<&str>| VaultAuth::Aws {
        mount: "aws".into(),
        role: Some("concourse-sts".into()),
        server_id: server_id.map(str::to_owned),
    };
    let signed = vault(&aws, &client, with(Some("vault.example.com")));
    write(&signed, "concourse/data/a").unwrap();
    assert_eq!(aws.vault.count("POST auth/aws/login"), 1);
    let unsigned = vault(&aws, &client, with(None));
    let error = write(&unsigned, "concourse/data/b").unwrap_err();
    assert!(
        error.to_string().contains("X-Vault-AWS-IAM-Server-ID"),
        "{error}"
    );
    assert!(error.is_permanent());
}

#[test]
fn tokens_and_secret_ids_never_reach_an_error() {
    let aws = FakeAws::default();
    let client = rotator(&aws);
    let vault = vault(&aws, &client, fake_vault::approle());
    write(&vault, "concourse/data/a").unwrap();
    aws.vault.echo.set(true);
    let error = write(&vault, "concourse/data/b").unwrap_err().to_string();
    assert!(
        error.contains("[REDACTED]") && !error.contains("CANARY"),
        "{error}"
    );
    let fresh = self::vault(&aws, &client, fake_vault::approle());
    let error = write(&fresh, "concourse/data/c").unwrap_err().to_string();
    assert!(
        !error.contains(SECRET_ID) && !error.contains("CANARY"),
        "{error}"
    );
}

#[test]
fn the_layout_is_what_vault_says_of_the_mount() {
    let aws = FakeAws::default();
    let client = rotator(&aws);
    let layout = |mount: &str, version: u8| {
        aws.vault.version.set(version);
        let mut settings = fake_vault::settings(fake_vault::approle());
        settings.mount = mount.into();
        let vault = VaultClient::new(&aws, &aws.clock, &client, settings);
        let layout = block_on(vault.layout()).unwrap();
        let key = KvKey::of("/c/t/a").unwrap();
        block_on(vault.layout()).unwrap();
        (layout.data(&key), layout.version)
    };
    assert_eq!(
        layout("concourse", 2),
        ("concourse/data/t/a".into(), KvVersion::V2)
    );
    assert_eq!(
        layout("concourse", 1),
        ("concourse/t/a".into(), KvVersion::V1)
    );
    assert_eq!(
        layout("concourse/ci", 2),
        ("concourse/data/ci/t/a".into(), KvVersion::V2)
    );
    assert_eq!(
        aws.vault.count("GET sys/internal/ui/mounts/"),
        3,
        "once per client"
    );
}

#[test]
fn the_namespace_goes_with_every_request() {
    let aws = FakeAws::default();
    let client = rotator(&aws);
    let mut settings = fake_vault::settings(fake_vault::approle());
    settings.namespace = Some("platform/ci".into());
    let vault = VaultClient::new(&aws, &aws.clock, &client, settings);
    write(&vault, "concourse/data/a").unwrap();
    let namespaces = aws.vault.namespaces.borrow().clone();
    assert_eq!(
        namespaces,
        ["platform/ci", "platform/ci"],
        "login and write"
    );
}
