"""The core rotation, end to end: the built .wasm under `spin up` against moto_server with
signature checking and IAM authorization on."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from emulator import HOME_ACCOUNT, OTHER_ACCOUNT, account, team


def two_teams(aws):
    home = aws.ci_role(HOME_ACCOUNT)
    other = aws.ci_role(OTHER_ACCOUNT)
    other_lab = aws.ci_role(OTHER_ACCOUNT, "concourse-ci-lab")
    return [
        team("alpha", account("dev", home), account("prod", other, duration=7200)),
        team("beta", account("lab", other_lab, duration=2400)),
    ]


EXPECTED = {
    ("alpha", "dev"): f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("alpha", "prod"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("beta", "lab"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci-lab/beta",
}


def assert_working_triples(aws):
    aws.assert_working({f"/concourse/{team}/{account}": arn for (team, account), arn in EXPECTED.items()})


def test_two_teams_three_accounts_two_account_ids_rotate_in_one_tick(aws):
    teams = two_teams(aws)
    keys = aws.rotator()
    aws.enforce()
    run = aws.run(aws.variables(keys), teams)
    assert run.returncode == 0, run.output
    assert run.rotated() == set(EXPECTED)
    assert_working_triples(aws)
    now = datetime.now(timezone.utc)
    for event in run.of("account_rotated"):
        expiration = datetime.fromisoformat(event["expiration"].replace("Z", "+00:00"))
        wanted = {"dev": 3600, "prod": 7200, "lab": 2400}[event["account"]]
        assert abs((expiration - now) - timedelta(seconds=wanted)) < timedelta(seconds=60)
        assert event["secrets_created"] == 3
    assert run.of("tick_finished")[0]["rotated"] == 3


@pytest.mark.component_logic
def test_a_second_tick_replaces_every_value(aws):
    teams = two_teams(aws)
    keys = aws.rotator()
    aws.enforce()
    assert aws.run(aws.variables(keys), teams).returncode == 0
    first = {k: aws.triple(f"/concourse/{k[0]}/{k[1]}") for k in EXPECTED}
    # Teams are still in the store. Accounts rotate only when their credentials near
    # expiry, so the second tick runs 100 minutes later, when all three are due.
    second_run = aws.run(aws.variables(keys), later_s=100 * 60)
    assert second_run.returncode == 0, second_run.output
    for key, old in first.items():
        new = aws.triple(f"/concourse/{key[0]}/{key[1]}")
        assert all(a != b for a, b in zip(old, new)), f"{key} kept an old value"
    assert {e["secrets_created"] for e in second_run.of("account_rotated")} == {0}
    assert_working_triples(aws)


@pytest.mark.component_logic
def test_invalid_documents_and_a_denied_account_leave_every_other_account_rotated(aws):
    good = two_teams(aws)
    denied_role = aws.ci_role(HOME_ACCOUNT, "unrelated-admin")
    mixed = team("gamma", account("ok", aws.ci_role(HOME_ACCOUNT, "concourse-ci-gamma")), account("denied", denied_role))
    keys = aws.rotator()
    aws.enforce()
    raw = [
        ("team/broken", '{"name": "broken", "accounts": ['),
        ("team/impostor", json.dumps(team("alpha", account("x", denied_role)))),
        ("team/slow", json.dumps(team("slow", account("a", denied_role, duration=60)))),
    ]
    run = aws.run(aws.variables(keys), good + [mixed], raw)
    assert run.returncode == 1
    assert run.rotated() == set(EXPECTED) | {("gamma", "ok")}
    assert_working_triples(aws)
    assert aws.written("/concourse/gamma/denied") == []

    failed = run.of("account_failed")
    assert [(e["team"], e["account"], e["role_arn"], e["code"]) for e in failed] == [
        ("gamma", "denied", denied_role, "AccessDenied")
    ]
    invalid = {e["team"]: e["problems"] for e in run.of("team_invalid")}
    assert set(invalid) == {"broken", "impostor", "slow"}
    assert invalid["broken"][0]["field"] == "(document)"
    assert "not valid JSON" in invalid["broken"][0]["reason"]
    assert invalid["impostor"][0]["field"] == "name"
    assert invalid["slow"][0]["field"] == "accounts[0].duration"
    summary = run.error
    assert "1 of 5 accounts failed: gamma/denied (AccessDenied)" in summary
    assert "3 invalid team documents: team/broken, team/impostor, team/slow" in summary


@pytest.mark.component_logic
def test_a_rotator_identity_with_a_session_token_works(aws):
    keys = aws.rotator(session=True)
    assert keys[2], "the rotator must be a role session here"
    teams = two_teams(aws)
    aws.enforce()
    run = aws.run(aws.variables(keys), teams)
    assert run.returncode == 0, run.output
    assert_working_triples(aws)


@pytest.mark.component_logic
def test_a_wrong_secret_key_fails_the_tick_and_charges_no_account(aws):
    """AWS refuses the rotator's own keys (SignatureDoesNotMatch): nothing signed with
    them can work, so the tick fails once, naming where the keys come from, and no
    account is charged a failure or a backoff."""
    teams = two_teams(aws)
    access_key, _, _ = aws.rotator()
    aws.enforce()
    run = aws.run(aws.variables((access_key, "not-the-secret-key", None)), teams)
    assert run.returncode == 1, run.output
    assert not run.trapped, run.output
    [failed] = run.of("tick_failed")
    assert "static keys" in failed["error"] and "SignatureDoesNotMatch" in failed["error"], failed
    assert run.of("account_failed") == []
    assert not [key for key in aws.store() if key.startswith("state/")], "nothing charged"
    assert aws.written("/concourse/alpha/dev") == []


@pytest.mark.component_logic
def test_bad_variables_stop_the_tick_with_an_error_naming_the_variable(aws):
    teams = two_teams(aws)
    keys = aws.rotator()
    aws.enforce()
    run = aws.run(aws.variables(keys, secret_path_template="/concourse/{{.Team}}/{{.Acount}}"), teams)
    assert run.returncode == 1
    [failure] = run.of("tick_failed")
    assert "secret_path_template" in failure["error"] and "{{.Acount}}" in failure["error"]
    assert aws.all_secret_values() == []


@pytest.mark.component_logic
def test_a_custom_template_places_the_secrets(aws):
    teams = two_teams(aws)
    keys = aws.rotator()
    aws.enforce()
    run = aws.run(aws.variables(keys, secret_path_template="/concourse/{{ .Team }}/aws-{{.Account}}"), teams)
    assert run.returncode == 0, run.output
    triple = aws.triple("/concourse/alpha/aws-dev")
    assert aws.caller(triple) == EXPECTED[("alpha", "dev")]
