"""Operating it: the admin API served by `spin up` with real HTTP requests, the command
entry point under Spin 4's command trigger with the shipped deploy/spinkube/spin-command.toml
(Spin 3 has none), and scripts/register-team."""

import json
import os
import subprocess

import pytest

from emulator import HOME_ACCOUNT, account, team
from spin import EVERY_SECOND, ROOT, SpinNode

TOKEN = "test-admin-token-5b1e"


@pytest.fixture
def api(aws):
    """The admin API serving against moto, with the rotator and one CI role ready."""
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    server, url = aws.serve(aws.variables(keys, admin_token=TOKEN))
    yield url, role
    aws.stop_serving(server)


def test_healthz_is_open_and_everything_else_needs_the_token(aws, api):
    url, _ = api
    assert aws.request("GET", f"{url}/healthz") == (200, {"status": "ok"})
    for token in (None, "wrong-token"):
        status, body = aws.request("GET", f"{url}/teams", token)
        assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert aws.request("GET", f"{url}/teams", TOKEN) == (200, {"teams": []})


def test_without_an_admin_token_the_api_is_off_and_says_how_to_enable_it(aws):
    keys = aws.rotator()
    aws.enforce()
    server, url = aws.serve(aws.variables(keys))
    try:
        status, body = aws.request("GET", f"{url}/teams", "anything")
    finally:
        aws.stop_serving(server)
    assert status == 403
    assert body["error"]["code"] == "admin_api_disabled"
    assert "admin_token" in body["error"]["message"]


def test_put_validates_and_stores_only_valid_documents(aws, api):
    url, role = api
    bad = {"name": "alpha", "accounts": [{"name": "../x", "roleArn": "arn:aws:s3:::bucket", "duration": 60}]}
    status, body = aws.request("PUT", f"{url}/teams/alpha", TOKEN, json.dumps(bad))
    assert status == 400
    assert [p["field"] for p in body["error"]["problems"]] == [
        "accounts[0].name", "accounts[0].roleArn", "accounts[0].duration",
    ]
    assert aws.request("GET", f"{url}/teams/alpha", TOKEN)[0] == 404
    good = team("alpha", account("dev", role))
    assert aws.request("PUT", f"{url}/teams/alpha", TOKEN, json.dumps(good)) == (201, {"team": "alpha", "accounts": 1})
    assert aws.request("GET", f"{url}/teams/alpha", TOKEN) == (200, good)
    assert aws.request("GET", f"{url}/teams", TOKEN) == (200, {"teams": ["alpha"]})
    status, body = aws.request("PUT", f"{url}/teams/alpha", TOKEN, "x" * (64 * 1024 + 10))
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    assert aws.request("DELETE", f"{url}/teams/alpha", TOKEN) == (204, None)
    assert aws.request("GET", f"{url}/teams/alpha", TOKEN)[0] == 404


def test_rotate_now_and_status(aws, api):
    url, role = api
    aws.request("PUT", f"{url}/teams/alpha", TOKEN, json.dumps(team("alpha", account("dev", role))))
    status, body = aws.request("GET", f"{url}/teams/alpha/status", TOKEN)
    assert status == 200
    assert body["accounts"][0]["last_written"] is None
    assert body["accounts"][0]["next_rotation_due"] == "next tick"

    status, body = aws.request("POST", f"{url}/teams/alpha/rotate", TOKEN)
    assert status == 200, body
    [outcome] = body["outcomes"]
    assert (outcome["event"], outcome["account"], outcome["reason"]) == ("account_rotated", "dev", "never_written")
    assert aws.caller(aws.triple("/concourse/alpha/dev")).endswith("assumed-role/concourse-ci/alpha")

    status, body = aws.request("GET", f"{url}/teams/alpha/status", TOKEN)
    [state] = body["accounts"]
    assert state["last_written"] and state["expiration"] and state["consecutive_failures"] == 0
    assert state["next_rotation_due"] < state["expiration"]
    status, body = aws.request("POST", f"{url}/teams/alpha/rotate", TOKEN)
    assert body["outcomes"][0]["reason"] == "written_recently", "the ten-minute rule holds"
    assert aws.request("POST", f"{url}/teams/nobody/rotate", TOKEN)[0] == 404
    status, body = aws.request("POST", f"{url}/rotate", TOKEN)
    assert status == 200 and body["team"] is None
    assert [(o["event"], o["account"]) for o in body["outcomes"]] == [("account_skipped", "dev")]


def test_one_spin_up_serves_the_api_and_rotates_on_schedule(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    server, url = aws.serve(aws.variables(keys, admin_token=TOKEN), schedule=EVERY_SECOND)
    try:
        document = team("alpha", account("dev", role))
        assert aws.request("PUT", f"{url}/teams/alpha", TOKEN, json.dumps(document)) == (201, {"team": "alpha", "accounts": 1})
        rotated = lambda: [e for e in server.events() if e["event"] == "account_rotated"]
        [event] = server.wait_for(rotated, "a tick rotating the team registered through the API", 120)
        assert (event["team"], event["account"], event["reason"]) == ("alpha", "dev", "never_written")
        status, body = aws.request("GET", f"{url}/teams/alpha/status", TOKEN)
        assert status == 200
        assert body["accounts"][0]["last_written"] and body["accounts"][0]["consecutive_failures"] == 0
    finally:
        aws.stop_serving(server)
    assert aws.caller(aws.triple("/concourse/alpha/dev")).endswith("assumed-role/concourse-ci/alpha")


@pytest.mark.spin4_only(
    reason="Spin 3.5 has no command trigger: `spin up` of spin-command.toml answers "
    "\"No built-in trigger named 'command'\" (test_spin_3_has_no_command_trigger)"
)
def test_the_command_trigger_runs_one_tick_and_exits_with_its_outcome(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    variables = aws.variables(keys)
    alpha = team("alpha", account("dev", role))
    first = aws.main.command(variables, [alpha])
    assert first.returncode == 0, first.output
    assert len({e["tick"] for e in first.events}) == 1, "one run is one tick"
    assert first.rotated() == {("alpha", "dev")}
    aws.assert_working({"/concourse/alpha/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha"})

    # The same store at the CronJob's next run, five minutes on (not at once: AWS's Date
    # has whole seconds, so a process that learned AWS time from it can be a second behind
    # the last one, to which a lease released a moment ago still looks live: lease_busy).
    # alpha was written within ten minutes, and a team whose role the rotator may not
    # assume fails, so the run exits 1.
    denied = team("beta", account("denied", f"arn:aws:iam::{HOME_ACCOUNT}:role/unrelated-admin"))
    second = aws.main.command(variables, [denied], later_s=5 * 60)
    assert second.returncode == 1, second.output
    assert len({e["tick"] for e in second.events}) == 1
    [failed] = second.of("account_failed")
    assert (failed["team"], failed["account"], failed["code"]) == ("beta", "denied", "AccessDenied")
    assert [(e["account"], e["reason"]) for e in second.of("account_skipped")] == [("dev", "written_recently")]
    assert aws.written("/concourse/beta/denied") == []


@pytest.mark.spin3_only(reason="Spin 4 has the command trigger (test_the_command_trigger_runs_one_tick_and_exits_with_its_outcome)")
def test_spin_3_has_no_command_trigger(spin, tmp_path):
    run = SpinNode(spin, tmp_path / "node", outputs=[]).command({})
    assert run.returncode != 0
    assert "No built-in trigger named 'command'" in run.output


def test_register_team_validates_and_registers(aws, api, tmp_path):
    url, role = api
    script = str(ROOT / "scripts" / "register-team")
    good = tmp_path / "alpha.json"
    good.write_text(json.dumps(team("alpha", account("dev", role))))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(team("alpha", account("dev", role, duration=5))))
    env = {**os.environ, "CONCOURSE_STS_URL": url, "CONCOURSE_STS_ADMIN_TOKEN": TOKEN}

    refused = subprocess.run([script, str(bad)], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "accounts[0].duration" in refused.stderr
    assert aws.request("GET", f"{url}/teams/alpha", TOKEN)[0] == 404

    done = subprocess.run([script, str(good)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert aws.request("GET", f"{url}/teams/alpha", TOKEN)[0] == 200

    local = subprocess.run([script, "--local", str(good)], env=env, capture_output=True, text=True, timeout=120)
    assert local.stdout.strip() == f'spin up --key-value "team/alpha=$(cat {good})"'

    wrong = {**env, "CONCOURSE_STS_ADMIN_TOKEN": "nope"}
    denied = subprocess.run([script, str(good)], env=wrong, capture_output=True, text=True, timeout=120)
    assert denied.returncode == 1 and "401" in denied.stderr
