"""The engine against moto: rotation only when due, ticks that overlap, faults, and the
single-secret JSON format."""

import json
from datetime import datetime, timedelta

import pytest

from emulator import ALL_FIRST_DUE_S, HOME_ACCOUNT, OTHER_ACCOUNT, digest, three_accounts
from faults import FaultProxy
from spin import EVERY_SECOND

MINUTES = 60


WORKING = {
    "/concourse/alpha/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    "/concourse/alpha/prod": f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/alpha",
    "/concourse/beta/lab": f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/beta",
}
PATHS = list(WORKING)


def assert_all_working(aws):
    aws.assert_working(WORKING)


def test_accounts_rotate_only_when_due_and_the_log_says_why(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    with FaultProxy(aws.url) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url)
        first = aws.run(variables, teams)
        assert first.returncode == 0, first.output
        assert_first_credentials_come_due_spread(first)
        calls_after_first = proxy.forwarded

        again = aws.run(variables)
        assert again.returncode == 0
        assert proxy.forwarded == calls_after_first, "a tick with nothing due calls AWS"
        assert {e["reason"] for e in again.of("account_skipped")} == {"written_recently"}

        spread = aws.run(variables, later_s=ALL_FIRST_DUE_S)
        assert {(e["account"], e["reason"]) for e in spread.of("account_rotated")} == {
            ("dev", "expires_soon"),
            ("prod", "expires_soon"),
            ("lab", "expires_soon"),
        }
        calls_after_spread = proxy.forwarded
        values = {path: aws.triple(path) for path in PATHS}

        # 15 minutes on, nothing is due, nor within the 5 minutes in which a tick asks
        # AWS's time first (the earliest due time, with the most jitter, is 25 minutes on).
        later = aws.run(variables, later_s=ALL_FIRST_DUE_S + 15 * MINUTES)
        assert {e["reason"] for e in later.of("account_skipped")} == {"fresh"}
        assert proxy.forwarded == calls_after_spread

        due = aws.run(variables, later_s=ALL_FIRST_DUE_S + 40 * MINUTES)
        assert {(e["team"], e["account"], e["reason"]) for e in due.of("account_rotated")} == {
            ("alpha", "dev", "expires_soon"),
            ("beta", "lab", "expires_soon"),
        }
        assert [(e["account"], e["reason"]) for e in due.of("account_skipped")] == [("prod", "fresh")]
    assert digest(aws.triple("/concourse/alpha/dev")) != digest(values["/concourse/alpha/dev"])
    assert digest(aws.triple("/concourse/alpha/prod")) == digest(values["/concourse/alpha/prod"])
    state = json.loads(aws.store()["state/alpha"])
    assert state["accounts"]["dev"]["consecutive_failures"] == 0
    assert not any(secret in json.dumps(aws.store()) for triple in values.values() for secret in triple)
    assert_all_working(aws)


@pytest.mark.component_logic
def test_a_removed_team_loses_its_state_and_keeps_its_secrets(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    assert aws.run(aws.variables(keys), teams).returncode == 0
    aws.main.delete("team/beta")
    run = aws.run(aws.variables(keys))
    assert [e["team"] for e in run.of("team_removed")] == ["beta"]
    assert "state/beta" not in aws.store()
    assert aws.written("/concourse/beta/lab") == ["access-key", "secret-key", "session-token"]


def assert_first_credentials_come_due_spread(run):
    """Every first rotation's next one is due between ten minutes after the write and 30
    minutes before expiry (whole seconds)."""
    at = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))
    for rotated in run.of("account_rotated"):
        written, due = at(rotated["time"]), at(rotated["rotate_after"])
        latest = at(rotated["expiration"]) - timedelta(minutes=30)
        assert written + timedelta(minutes=10) - timedelta(seconds=1) <= due <= latest, rotated


def test_overlapping_ticks_never_interleave_writes(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    # Every request takes a second and a half, so the rotating tick holds the lease for at
    # least three (AssumeRole, then CreateSecret), and Spin starts a new tick every second
    # regardless.
    with FaultProxy(aws.url, kinds=["latency"], rate=1.0, latency=1.5) as proxy:
        node = aws.main.start(aws.variables(keys, aws_endpoint_url=proxy.url), teams, schedule=EVERY_SECOND)
        node.wait_for(lambda: any(e["event"] == "tick_finished" for e in node.events()), "a finished tick", 240)
        run = node.finish()
    assert not run.trapped, run.output
    finished = next(i for i, e in enumerate(run.events) if e["event"] == "tick_finished")
    first_tick = run.events[: finished + 1]
    assert run.of("tick_started")[0] == run.events[0], "the first tick took the lease"
    assert [e["event"] for e in first_tick].count("tick_started") == 1
    assert [e["event"] for e in first_tick].count("lease_busy") >= 2
    assert first_tick[-1]["rotated"] == 3
    assert sorted((e["team"], e["account"]) for e in run.of("account_rotated")) == [
        ("alpha", "dev"), ("alpha", "prod"), ("beta", "lab"),
    ]
    assert run.errors == [], run.output
    assert_all_working(aws)


@pytest.mark.component_logic
def test_thirty_percent_faults_end_consistent_within_a_few_ticks(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    with FaultProxy(aws.url, rate=0.3, seed=20261127, latency=0.05) as proxy:
        # Ticks eleven minutes apart, past the backoff (capped at five minutes here).
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, failure_backoff_max="5m")
        runs = aws.run_until_settled(variables, teams, accounts=3)
    assert proxy.injected, "no fault was injected"
    attempts = [e for run in runs for e in run.of("attempt_failed")]
    assert attempts, "no failed attempt was logged"
    assert all(e["team"] and e["account"] and e["operation"] and e["error"] for e in attempts)
    assert len(attempts) <= len(proxy.injected)
    assert aws.settled(3), "still half written or failing after eight ticks"
    assert_all_working(aws)


@pytest.mark.component_logic
def test_the_json_format_holds_a_working_set_in_one_secret(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    run = aws.run(aws.variables(keys, secret_format="both"), teams)
    assert run.returncode == 0, run.output
    document = json.loads(aws.secret("/concourse/alpha/dev"))
    triple = (document["access_key_id"], document["secret_access_key"], document["session_token"])
    assert digest(triple) == digest(aws.triple("/concourse/alpha/dev"))
    assert aws.caller(triple).endswith("assumed-role/concourse-ci/alpha")
    assert document["expiration"].endswith("Z")
