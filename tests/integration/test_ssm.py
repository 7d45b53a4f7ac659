"""Parameter Store as a sink (`secret_sink` = `ssm` | `both`), end to end: the built .wasm
under `spin up` against moto_server with signature checking and IAM authorization on, the
rotator holding the documented policies (deploy/iam/rotator-policy.json and
rotator-policy-ssm.json, loaded by emulator.py). Parameters are read back with an
independent boto3 client, decrypted, and their credentials must resolve to the team's
session.

Credential values are never put where pytest would print them: comparisons of values are
made into booleans or digests first, and STS is asked through `identity()`, which answers
with an ARN or an error code."""

import json
import threading
import time
from collections import Counter
from urllib.parse import parse_qs

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from emulator import (
    ALL_FIRST_DUE_S,
    HOME_ACCOUNT,
    OTHER_ACCOUNT,
    account,
    digest,
    hostile_teams,
    team,
    three_accounts,
)
from faults import FaultProxy

MINUTES = 60
SUFFIXES = ("access-key", "secret-key", "session-token")
SSM = {"secret_sink": "ssm", "ssm_writes_per_second": "0"}

# Each path's team, account and the session its credentials must be.
ACCOUNTS = {
    "/concourse/alpha/dev": ("alpha", "dev", f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha"),
    "/concourse/alpha/prod": ("alpha", "prod", f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/alpha"),
    "/concourse/beta/lab": ("beta", "lab", f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/beta"),
}
PATHS = list(ACCOUNTS)
ROTATED = {(t, a) for t, a, _ in ACCOUNTS.values()}
SPLIT_NAMES = sorted(f"{path}-{suffix}" for path in PATHS for suffix in SUFFIXES)


def ssm_rotator(aws):
    """The rotator with both documented policies, then moto's checks switched on."""
    keys = aws.rotator()
    aws.allow_parameter_store()
    aws.enforce()
    return keys


def identity(aws, triple):
    """Whom STS takes these credentials for, or why not; never the values themselves."""
    if not all(triple):
        return "missing"
    try:
        return aws.caller(triple)
    except ClientError as error:
        return f"refused: {error.response['Error']['Code']}"
    except BotoCoreError as error:
        return f"failed: {type(error).__name__}"


def json_triple(document):
    fields = ("access_key_id", "secret_access_key", "session_token")
    return tuple(document.get(field) for field in fields)


def described(aws):
    """{name: (Type, Version, KeyId)} of every parameter, as DescribeParameters lists them."""
    ssm = aws.admin_client("ssm")
    pages = ssm.get_paginator("describe_parameters").paginate()
    return {p["Name"]: (p["Type"], p["Version"], p.get("KeyId")) for page in pages for p in page["Parameters"]}


def tags(aws, name):
    answer = aws.admin_client("ssm").list_tags_for_resource(ResourceType="Parameter", ResourceId=name)
    return {tag["Key"]: tag["Value"] for tag in answer["TagList"]}


def versions(aws, name):
    ssm = aws.admin_client("ssm")
    pages = ssm.get_paginator("get_parameter_history").paginate(Name=name)
    return len([v for page in pages for v in page["Parameters"]])


def assert_parameters_work(aws, paths=PATHS):
    """Every path's three parameters resolve to the path's team session."""
    for path in paths:
        who = identity(aws, aws.parameter_triple(path))
        assert who == ACCOUNTS[path][2], path


def assert_secrets_work(aws):
    """Every path's three secrets in Secrets Manager resolve to the path's team session."""
    for path in PATHS:
        who = identity(aws, aws.triple(path))
        assert who == ACCOUNTS[path][2], path


def assert_tagged(aws, names):
    for name in names:
        team_name, account_name, _ = ACCOUNTS[next(p for p in PATHS if name.startswith(p))]
        found = tags(aws, name)
        assert found == {"concourse-sts:team": team_name, "concourse-sts:account": account_name}, name


class Recorder(FaultProxy):
    """A proxy in front of moto that records what each request was (never a value): the
    JSON target or the query action, and for a PutParameter its name, Overwrite and
    whether it carried Tags and a KeyId, for an AssumeRole its session name. With
    `throttle_first=n` it answers the first n PutParameter calls of each name with the
    fault proxy's throttling answer (chosen by X-Amz-Target: JSON 1.1
    `ThrottlingException`, Parameter Store's shape) and forwards everything else."""

    def __init__(self, upstream, throttle_first=0):
        super().__init__(upstream, kinds=["throttle"], rate=0.0)
        self.throttle_first = throttle_first
        self.requests = []
        self.decision = threading.local()

    def handle(self, handler, body):
        target = handler.headers.get("X-Amz-Target")
        record = {"at": time.monotonic(), "target": target}
        if target == "AmazonSSM.PutParameter":
            sent = json.loads(body)
            record.update(name=sent["Name"], overwrite=sent["Overwrite"], tagged="Tags" in sent, key_id=sent.get("KeyId"))
        elif target is None:
            form = parse_qs(body.decode())
            record["target"] = form.get("Action", ["?"])[0]
            record["session"] = form.get("RoleSessionName", [None])[0]
        with self.lock:
            earlier = sum(1 for r in self.requests if "name" in r and r["name"] == record.get("name"))
            record["throttled"] = "name" in record and earlier < self.throttle_first
            self.requests.append(record)
        self.decision.kind = "throttle" if record["throttled"] else None
        super().handle(handler, body)

    def draw(self):
        kind = self.decision.kind
        with self.lock:
            if kind:
                self.injected.append(kind)
            else:
                self.forwarded += 1
        return kind

    def of(self, target):
        return [r for r in self.requests if r["target"] == target]

    def targets(self):
        return Counter(r["target"] for r in self.requests)

    def sessions(self):
        return Counter(r["session"] for r in self.of("AssumeRole"))


def test_first_rotation_creates_tagged_secure_strings_and_a_later_one_overwrites_them(aws):
    teams = three_accounts(aws)
    keys = ssm_rotator(aws)
    with Recorder(aws.url) as proxy:
        # The default pace (ssm_writes_per_second = 2), as an operator runs it.
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, secret_sink="ssm")
        first = aws.run(variables, teams)
        assert first.returncode == 0, first.output
        assert first.rotated() == ROTATED
        assert {e["secrets_created"] for e in first.of("account_rotated")} == {3}
        created = proxy.of("AmazonSSM.PutParameter")
        # One tagged create per parameter, nothing else: no overwrite, no tagging call,
        # no Secrets Manager call.
        assert sorted(r["name"] for r in created) == SPLIT_NAMES
        assert all(r["tagged"] and r["overwrite"] is False for r in created), created
        assert proxy.targets() == {"GetCallerIdentity": 1, "AssumeRole": 3, "AmazonSSM.PutParameter": 9}
        # Nine writes at two a second: the ninth starts four seconds after the first.
        span = created[-1]["at"] - created[0]["at"]
        assert span > 3.5, f"nine writes within {span:.2f} s: not paced at 2/s"

        assert aws.parameter_names() == SPLIT_NAMES
        assert aws.secret_names() == [], "secret_sink=ssm wrote to Secrets Manager"
        assert {name: info[:2] for name, info in described(aws).items()} == {n: ("SecureString", 1) for n in SPLIT_NAMES}
        assert_parameters_work(aws)
        assert_tagged(aws, SPLIT_NAMES)
        assert all(set(s["sinks"]) == {"ssm"} and not s["incomplete"] for s in aws.account_states().values())

        # When every first credential has come due, each is overwritten once.
        proxy.requests.clear()
        spread = aws.run(variables, later_s=ALL_FIRST_DUE_S)
        assert spread.rotated() == ROTATED, spread.output
        overwritten = proxy.of("AmazonSSM.PutParameter")
        assert len(overwritten) == 9 and all(r["overwrite"] and not r["tagged"] for r in overwritten)
        before = {path: digest(aws.parameter_triple(path)) for path in PATHS}
        # Someone deletes one parameter by hand: the next rotation's overwrite creates it
        # again (version 1, untagged, as Parameter Store does) and then tags it.
        deleted = "/concourse/alpha/dev-session-token"
        aws.admin_client("ssm").delete_parameter(Name=deleted)

        # 40 minutes on, the one-hour accounts are due and prod (two hours) is not.
        proxy.requests.clear()
        second = aws.run(variables, later_s=ALL_FIRST_DUE_S + 40 * MINUTES)
        assert second.returncode == 0, second.output
        assert {(e["account"], e["reason"], e["secrets_created"]) for e in second.of("account_rotated")} == {
            ("dev", "expires_soon", 1),
            ("lab", "expires_soon", 0),
        }
        assert [(e["account"], e["reason"]) for e in second.of("account_skipped")] == [("prod", "fresh")]
        assert second.of("attempt_failed") == []
        overwritten = proxy.of("AmazonSSM.PutParameter")
        assert all(r["overwrite"] is True and not r["tagged"] for r in overwritten), overwritten
        assert proxy.targets() == {"GetCallerIdentity": 1, "AssumeRole": 2, "AmazonSSM.PutParameter": 6, "AmazonSSM.AddTagsToResource": 1}

    due = ["/concourse/alpha/dev", "/concourse/beta/lab"]
    for path in PATHS:
        changed = digest(aws.parameter_triple(path)) != before[path]
        history = [versions(aws, f"{path}-{suffix}") for suffix in SUFFIXES]
        if path == "/concourse/alpha/dev":
            assert changed and history == [3, 3, 1], (path, changed, history)
        elif path in due:
            assert changed and history == [3, 3, 3], (path, changed, history)
        else:
            assert not changed and history == [2, 2, 2], (path, changed, history)
    assert aws.parameter_names() == SPLIT_NAMES
    assert aws.secret_names() == []
    assert_parameters_work(aws)
    assert_tagged(aws, SPLIT_NAMES)


@pytest.mark.component_logic
def test_the_json_format_is_one_parameter_per_account(aws):
    teams = three_accounts(aws)
    keys = ssm_rotator(aws)
    with Recorder(aws.url) as proxy:
        variables = aws.variables(
            keys, aws_endpoint_url=proxy.url, secret_format="json", ssm_kms_key_id="alias/concourse-sts", **SSM
        )
        run = aws.run(variables, teams)
    assert run.returncode == 0, run.output
    assert {e["secrets_created"] for e in run.of("account_rotated")} == {1}
    assert aws.parameter_names() == sorted(PATHS)
    assert aws.secret_names() == []
    # The customer key is sent with the write and the parameter is under it.
    assert {r["key_id"] for r in proxy.of("AmazonSSM.PutParameter")} == {"alias/concourse-sts"}
    assert {info for info in described(aws).values()} == {("SecureString", 1, "alias/concourse-sts")}
    for path in PATHS:
        document = json.loads(aws.parameter(path))
        # Read into names first: pytest would print the document beside a failed assert.
        fields, expiration = sorted(document), document.get("expiration", "")
        assert fields == ["access_key_id", "expiration", "secret_access_key", "session_token"], path
        assert expiration.endswith("Z"), path
        who = identity(aws, json_triple(document))
        assert who == ACCOUNTS[path][2], path
    assert_tagged(aws, PATHS)


@pytest.mark.component_logic
def test_both_sinks_hold_the_same_working_credentials(aws):
    teams = three_accounts(aws)
    keys = ssm_rotator(aws)
    run = aws.run(aws.variables(keys, secret_sink="both", ssm_writes_per_second="0"), teams)
    assert run.returncode == 0, run.output
    assert run.rotated() == ROTATED
    assert {e["secrets_created"] for e in run.of("account_rotated")} == {6}
    assert aws.secret_names() == SPLIT_NAMES
    assert aws.parameter_names() == SPLIT_NAMES
    for path in PATHS:
        same = digest(aws.triple(path)) == digest(aws.parameter_triple(path))
        assert same, f"{path}: Secrets Manager and Parameter Store differ"
    assert_secrets_work(aws)
    assert_parameters_work(aws)
    assert all(set(s["sinks"]) == {"secretsmanager", "ssm"} for s in aws.account_states().values())


@pytest.mark.component_logic
def test_both_without_the_ssm_policy_fails_every_account_and_the_next_tick_repairs(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()  # only deploy/iam/rotator-policy.json: no Parameter Store
    aws.enforce()
    variables = aws.variables(keys, secret_sink="both", ssm_writes_per_second="0")
    denied = aws.run(variables, teams)
    assert denied.returncode == 1, denied.output
    assert not denied.trapped, denied.output
    failed = {(e["team"], e["account"]): e for e in denied.of("account_failed")}
    assert set(failed) == ROTATED
    for path, (team_name, account_name, _) in ACCOUNTS.items():
        event = failed[(team_name, account_name)]
        assert event["stage"] == "write_secrets", event
        assert event["code"].startswith("AccessDenied"), event
        assert event["permanent"] is True, event
        assert "ssm:PutParameter" in event["error"], event
        not_written = ", ".join(f"{path}-{suffix} (ssm)" for suffix in SUFFIXES)
        assert f"[not written: {not_written}]" in event["error"], event
    assert "3 of 3 accounts failed" in denied.error
    # Secrets Manager received every account's credentials; Parameter Store nothing.
    assert_secrets_work(aws)
    assert aws.parameter_names() == []
    for key, state in aws.account_states().items():
        assert state["incomplete"] is True, key
        assert set(state["sinks"]) == {"secretsmanager"}, key
        assert state["consecutive_failures"] == 1 and state["last_error"]["stage"] == "write_secrets", key
    store = aws.store()
    assert json.loads(store["state/alpha"])["accounts"]["dev"]["incomplete"] is True
    before = {path: digest(aws.triple(path)) for path in PATHS}

    aws.allow_parameter_store()
    repaired = aws.run(variables)
    assert repaired.returncode == 0, repaired.output
    assert {(e["team"], e["account"], e["reason"]) for e in repaired.of("account_rotated")} == {
        (t, a, "incomplete") for t, a in ROTATED
    }
    # Parameter Store's three are created; Secrets Manager's three overwritten.
    assert {e["secrets_created"] for e in repaired.of("account_rotated")} == {3}
    assert aws.parameter_names() == SPLIT_NAMES
    for path in PATHS:
        sm, ssm = digest(aws.triple(path)), digest(aws.parameter_triple(path))
        assert sm == ssm, f"{path}: the sinks differ"
        assert sm != before[path], f"{path}: the repair did not write one new triple to both"
    assert_secrets_work(aws)
    assert_parameters_work(aws)
    assert_tagged(aws, SPLIT_NAMES)
    for key, state in aws.account_states().items():
        assert not state["incomplete"] and state["consecutive_failures"] == 0, key
        assert set(state["sinks"]) == {"secretsmanager", "ssm"}, key


@pytest.mark.component_logic
def test_thirty_percent_faults_on_parameter_store_end_consistent_within_a_few_ticks(aws):
    teams = three_accounts(aws)
    keys = ssm_rotator(aws)
    # moto_server loads its Parameter Store backend on the first call it gets (1.6 s on
    # an idle machine), which would time out every write of the first tick beside the
    # faults counted: load it now.
    aws.parameter_names()
    with FaultProxy(aws.url, rate=0.3, seed=20261128, latency=0.05) as proxy:
        # Only Parameter Store's calls pass the proxy: STS answers every tick. Ticks eleven
        # minutes apart, past the backoff (capped at five minutes); a silent answer costs
        # request_timeout: five seconds, far above moto's answers.
        variables = aws.variables(
            keys, ssm_endpoint_url=proxy.url, failure_backoff_max="5m", request_timeout="5s", **SSM
        )
        runs = aws.run_until_settled(variables, teams, accounts=3)
    assert proxy.injected, "no fault was injected"
    attempts = [e for run in runs for e in run.of("attempt_failed")]
    assert attempts, "no failed attempt was logged"
    assert {e["operation"] for e in attempts} == {"put_parameter"}, attempts
    assert all(e["team"] and e["account"] and e["secret"] and e["error"] for e in attempts)
    assert len(attempts) <= len(proxy.injected)
    assert aws.settled(3), "still half written or failing after eight ticks"
    assert aws.parameter_names() == SPLIT_NAMES
    assert aws.secret_names() == []
    assert_parameters_work(aws)
    assert_tagged(aws, SPLIT_NAMES)


@pytest.mark.component_logic
def test_throttled_parameter_writes_are_retried_to_success(aws):
    teams = three_accounts(aws)
    keys = ssm_rotator(aws)
    # Each parameter's first two PutParameter calls are throttled; the third (the last
    # the standard mode allows) goes through.
    with Recorder(aws.url, throttle_first=2) as proxy:
        run = aws.run(aws.variables(keys, ssm_endpoint_url=proxy.url, **SSM), teams)
    assert run.returncode == 0, run.output
    assert not run.trapped, run.output
    assert run.rotated() == ROTATED
    attempts = run.of("attempt_failed")
    # The JSON 1.1 answer is read as Parameter Store's ThrottlingException (the XML one
    # would read as STS's "Throttling").
    assert {(e["operation"], e["code"]) for e in attempts} == {("put_parameter", "ThrottlingException")}
    assert sorted((e["secret"], e["attempt"]) for e in attempts) == sorted(
        (name, n) for name in SPLIT_NAMES for n in (1, 2)
    )
    assert all(e["retry_in_ms"] is not None for e in attempts), attempts
    assert len(proxy.injected) == 18
    writes = proxy.of("AmazonSSM.PutParameter")
    assert Counter(r["name"] for r in writes) == {name: 3 for name in SPLIT_NAMES}
    # Every attempt of a first write is the tagged create; nothing else was needed.
    assert all(r["tagged"] and r["overwrite"] is False for r in writes)
    assert proxy.targets() == {"AmazonSSM.PutParameter": 27}
    assert {info[:2] for info in described(aws).values()} == {("SecureString", 1)}
    assert_parameters_work(aws)
    assert_tagged(aws, SPLIT_NAMES)


@pytest.mark.component_logic
def test_templates_parameter_store_refuses_stop_the_tick_before_any_call(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = ssm_rotator(aws)
    teams = [team("alpha", account("dev", role))]
    plus = "/concourse/{{.Team}}/ci+{{.Account}}"
    sixteen_levels = "".join(f"/l{i}" for i in range(1, 15)) + "/{{.Team}}/{{.Account}}"
    refused = [
        # Valid for Secrets Manager, not for Parameter Store: '+', with either sink that
        # writes parameters.
        (plus, "ssm", "'+'"),
        (plus, "both", "'+'"),
        # A first segment Parameter Store reserves, and one level too many.
        ("/aws-ci/{{.Team}}/{{.Account}}", "ssm", "reserved"),
        (sixteen_levels, "ssm", "16 levels deep"),
    ]
    with Recorder(aws.url) as proxy:
        for template, sink, reason in refused:
            variables = aws.variables(keys, aws_endpoint_url=proxy.url, secret_path_template=template, secret_sink=sink)
            run = aws.run(variables, teams)
            assert run.returncode == 1, run.output
            [failure] = run.of("tick_failed")
            assert "secret_path_template" in failure["error"] and reason in failure["error"], failure
            assert not run.of("account_rotated") and not run.of("account_failed")
            assert "secret_path_template" in run.error
        assert proxy.requests == [], "a refused template still called AWS"
        # The control: Secrets Manager takes the '+' template.
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, secret_path_template=plus)
        control = aws.run(variables, teams)
    assert control.returncode == 0, control.output
    assert aws.secret_names() == [f"/concourse/alpha/ci+dev-{suffix}" for suffix in SUFFIXES]
    assert aws.parameter_names() == []


@pytest.mark.component_logic
def test_a_team_in_the_reserved_first_segment_fails_before_sts_and_others_rotate(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = ssm_rotator(aws)
    teams = [team(name, account("dev", role)) for name in ("alpha", "aws-ci", "SSMops", "awsome")]
    with Recorder(aws.url) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, secret_path_template="/{{.Team}}/{{.Account}}", **SSM)
        run = aws.run(variables, teams)
    assert run.returncode == 1, run.output
    assert run.rotated() == {("alpha", "dev")}
    failed = {e["team"]: e for e in run.of("account_failed")}
    assert set(failed) == {"aws-ci", "SSMops", "awsome"}
    for name, event in failed.items():
        assert (event["account"], event["stage"], event["permanent"]) == ("dev", "secret_path", True), event
        assert f'"/{name}/dev-access-key"' in event["error"] and "reserved" in event["error"], event
    assert proxy.sessions() == {"alpha": 1}, "STS was called for a refused account"
    assert aws.parameter_names() == [f"/alpha/dev-{suffix}" for suffix in SUFFIXES]
    who = identity(aws, aws.parameter_triple("/alpha/dev"))
    assert who == f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha"
    assert aws.secret_names() == []


@pytest.mark.component_logic
def test_names_built_to_escape_write_nothing_outside_the_team_in_parameter_store(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = ssm_rotator(aws)
    # The documents test_isolation.py registers, against Parameter Store.
    hostile = hostile_teams(role)
    raw = [(key, json.dumps(doc)) for key, doc in hostile.items()]
    with Recorder(aws.url) as proxy:
        run = aws.run(aws.variables(keys, aws_endpoint_url=proxy.url, **SSM), [team("alpha", account("dev", role))], raw)
    assert run.returncode == 1
    assert run.rotated() == {("alpha", "dev")}
    assert {e["key"] for e in run.of("team_invalid")} == set(hostile)
    assert proxy.sessions() == {"alpha": 1}
    assert sorted(r["name"] for r in proxy.of("AmazonSSM.PutParameter")) == [f"/concourse/alpha/dev-{s}" for s in SUFFIXES]
    assert aws.parameter_names() == [f"/concourse/alpha/dev-{s}" for s in SUFFIXES]
    assert aws.secret_names() == []
    assert_parameters_work(aws, ["/concourse/alpha/dev"])
