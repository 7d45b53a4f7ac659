"""Hostile input: no team document, name or template reaches another team's secrets, and
the operator's role allow-list, a team's external id and Spin's allowed_outbound_hosts hold."""

import json

import pytest

from emulator import HOME_ACCOUNT, account, hostile_teams, team

ALPHA = ["/concourse/alpha/dev-access-key", "/concourse/alpha/dev-secret-key", "/concourse/alpha/dev-session-token"]


def test_names_built_to_escape_are_refused_and_write_nothing(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    hostile = hostile_teams(role)
    raw = [(key, json.dumps(doc)) for key, doc in hostile.items()]
    run = aws.run(aws.variables(keys), [team("alpha", account("dev", role))], raw)
    assert run.returncode == 1
    assert run.rotated() == {("alpha", "dev")}
    assert aws.secret_names() == ALPHA
    invalid = {e["key"]: e["problems"] for e in run.of("team_invalid")}
    assert set(invalid) == set(hostile)
    assert invalid["team/evil"][0] == {
        "field": "accounts[0].name",
        "reason": "may hold only ASCII letters, digits, '_', '.' and '-', found '/'",
    }
    assert invalid["team/evil3"][0]["reason"].endswith("found U+000A")
    assert aws.caller(aws.triple("/concourse/alpha/dev")).endswith("assumed-role/concourse-ci/alpha")


@pytest.mark.component_logic
def test_templates_built_to_mix_teams_stop_the_tick(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    teams = [team("alpha", account("dev", role)), team("alph", account("adev", role))]
    for template in ["/concourse/{{.Team}}{{.Account}}", "/concourse/{{.Team}}-{{.Account}}", "/concourse/{{.Account}}/{{.Team}}/x"]:
        run = aws.run(aws.variables(keys, secret_path_template=template), teams)
        assert run.returncode == 1
        [failure] = run.of("tick_failed")
        assert "secret_path_template" in failure["error"]
    assert aws.secret_names() == []


@pytest.mark.component_logic
def test_roles_outside_allowed_role_arns_are_refused_before_sts(aws):
    allowed = aws.ci_role(HOME_ACCOUNT)
    other = aws.ci_role(HOME_ACCOUNT, "concourse-ci-other")
    keys = aws.rotator()
    aws.enforce()
    teams = [team("alpha", account("dev", allowed), account("other", other))]
    run = aws.run(aws.variables(keys, allowed_role_arns="arn:aws:iam::*:role/concourse-ci"), teams)
    assert run.returncode == 1
    assert run.rotated() == {("alpha", "dev")}
    [failure] = run.of("account_failed")
    assert (failure["account"], failure["stage"], failure["code"]) == ("other", "role_not_allowed", "RoleNotAllowed")
    assert aws.secret_names() == ALPHA


@pytest.mark.component_logic
def test_an_external_id_is_sent_to_sts(aws):
    role = aws.ci_role(HOME_ACCOUNT, trust_policy="ci-role-trust-policy-external-id.json")
    keys = aws.rotator()
    aws.enforce()
    # moto only evaluates sts:ExternalId when the request carries one (AWS also refuses a
    # missing one), so a wrong id being refused is what proves the id is sent.
    wrong = aws.run(aws.variables(keys), [team("alpha", account("dev", role, externalId="guess-1234"))])
    assert [e["code"] for e in wrong.of("account_failed")] == ["AccessDenied"]
    right = aws.run(aws.variables(keys), [team("alpha", account("dev", role, externalId="example-team-7d3c"))])
    assert right.returncode == 0, right.output
    assert aws.caller(aws.triple("/concourse/alpha/dev")).endswith("assumed-role/concourse-ci/alpha")


def test_an_endpoint_outside_allowed_outbound_hosts_is_refused_by_spin(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    # 127.0.0.2 is loopback too, but spin.toml admits only 127.0.0.1 and localhost.
    denied = "http://127.0.0.2:" + aws.url.rsplit(":", 1)[1]
    run = aws.run(aws.variables(keys, aws_endpoint_url=denied), [team("alpha", account("dev", role))])
    assert run.returncode == 1, run.output
    # The tick's first request (STS, for AWS's time) is refused: the tick fails naming
    # the host, before any lease, and no account is charged.
    [failed] = run.of("tick_failed")
    assert "HttpRequestDenied" in failed["error"] and "allowed_outbound_hosts" in failed["error"], failed
    assert run.of("account_failed") == []
    assert f"disallowed destination '{denied}'" in run.output
    assert f"allowed_outbound_hosts = [\"{denied}\"]" in run.output
    assert aws.secret_names() == []
