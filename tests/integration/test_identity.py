"""Where the rotator's own credentials come from (issue #11), end to end on the real Spin:
IMDSv2, a container credentials endpoint, `auto`, static keys, `aws_role_arn`, a refresh
in the middle of a long tick, a source that fails, and the one-hour cap of a role session.

The metadata fakes (metadata.py) hand out credentials moto issued for a rotator role, and
the CI roles trust only that role session, so moto checks every signature and every IAM
decision made with them. These runs set no `SPIN_VARIABLE_AWS_ACCESS_KEY_ID`: the only
credentials the component can have are the ones the fakes serve.
"""

import json
import time
import urllib.request

import pytest

from emulator import HOME_ACCOUNT, ROTATOR_USER, account, rotator_policy, team
from faults import FaultProxy
from metadata import IMDS_CREDENTIALS_PATH, IMDS_TOKEN_PATH, MetadataService, instance_role
from spin import free_port

INSTANCE_ROLE = "concourse-sts-instance"
# Seconds: the first credentials an IMDS fake hands out in the refresh test are good for
# five minutes and this much more, i.e. the component must fetch again after this long.
REFRESH_SLACK_S = 10


def platform_variables(aws, **extra):
    """aws.variables without static keys: the emulator's endpoint, the region and the
    loopback override (which also admits the metadata fakes on 127.0.0.1). Unless the
    test names one, the IMDS endpoint is a loopback port where nothing listens: a
    component that wrongly falls back to IMDS must fail here, not reach whatever
    answers at 169.254.169.254 on the machine running the tests."""
    extra.setdefault("aws_imds_endpoint", f"http://127.0.0.1:{free_port()}")
    env = aws.variables(("unused", "unused", None), **extra)
    del env["SPIN_VARIABLE_AWS_ACCESS_KEY_ID"], env["SPIN_VARIABLE_AWS_SECRET_ACCESS_KEY"]
    assert not [name for name in env if "ACCESS_KEY" in name or "SESSION_TOKEN" in name]
    return env


def ci_teams(aws):
    """Two teams, three accounts, on CI roles in the home account (where moto checks the
    roles' trust policies: they name the rotator's role session)."""
    return [
        team("alpha", account("dev", aws.ci_role(HOME_ACCOUNT)), account("lab", aws.ci_role(HOME_ACCOUNT, "concourse-ci-lab"))),
        team("beta", account("dev", aws.ci_role(HOME_ACCOUNT, "concourse-ci-beta"))),
    ]


CI_CALLERS = {
    "/concourse/alpha/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    "/concourse/alpha/lab": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci-lab/alpha",
    "/concourse/beta/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci-beta/beta",
}
ROTATED = {("alpha", "dev"), ("alpha", "lab"), ("beta", "dev")}


def moto_sessions(aws):
    """Every role session moto issued: (role ARN, session name)."""
    data = json.loads(urllib.request.urlopen(aws.url + "/moto-api/data.json", timeout=10).read())
    return [(s["role_arn"], s["session_name"]) for s in data.get("sts", {}).get("AssumedRole", [])]


def imds_requests(service):
    return [(asked.method, asked.path) for asked in service.asked]


IMDS_SEQUENCE = [
    ("PUT", IMDS_TOKEN_PATH),
    ("GET", IMDS_CREDENTIALS_PATH),
    ("GET", IMDS_CREDENTIALS_PATH + INSTANCE_ROLE),
]


def test_imds_v2_credentials_rotate_every_account_and_an_idle_tick_asks_for_none(aws):
    credentials = instance_role(aws)
    teams = ci_teams(aws)
    aws.enforce()
    with MetadataService("imds", credentials) as imds:
        variables = platform_variables(aws, aws_credentials_source="imds", aws_imds_endpoint=imds.url)
        run = aws.run(variables, teams)
        # The same host again, nothing due: no credentials are fetched.
        idle = aws.run(variables)
        aws.rotator_secrets.extend(imds.secrets())
    assert run.returncode == 0, run.output
    assert run.rotated() == ROTATED
    aws.assert_working(CI_CALLERS)
    # IMDSv2: the session token first, then the role and its credentials, each asked
    # with the token (a GET without it would have been answered 401); once per tick.
    assert imds_requests(imds) == IMDS_SEQUENCE
    assert [asked.status for asked in imds.asked] == [200, 200, 200]
    assert all(asked.authorized for asked in imds.asked)
    assert len(imds.fetches) == 1
    assert idle.returncode == 0, idle.output
    assert {(e["team"], e["account"]) for e in idle.of("account_skipped")} == ROTATED


def test_container_endpoint_with_its_authorization_token(aws):
    credentials = instance_role(aws, name="concourse-sts-task", session="ecs-task-0f1e2d")
    teams = ci_teams(aws)
    aws.enforce()
    token = "pod-identity-token-8c41d0"
    with MetadataService("container", credentials, role="concourse-sts-task", authorization=token) as endpoint:
        variables = platform_variables(
            aws,
            aws_credentials_source="container",
            aws_container_credentials_full_uri=endpoint.full_uri,
            # As a Kubernetes Secret made from a file would give it.
            aws_container_authorization_token=token + "\n",
        )
        run = aws.run(variables, teams)
        aws.rotator_secrets.extend(endpoint.secrets())
    assert run.returncode == 0, run.output
    assert run.rotated() == ROTATED
    aws.assert_working(CI_CALLERS)
    assert [(a.method, a.path, a.authorized, a.status) for a in endpoint.asked] == [("GET", "/v1/credentials", True, 200)]


@pytest.mark.component_logic
def test_auto_takes_the_container_endpoint_when_its_uri_is_set_else_imds(aws):
    credentials = instance_role(aws)
    teams = ci_teams(aws)
    late = team("gamma", account("dev", aws.ci_role(HOME_ACCOUNT, "concourse-ci-gamma")))
    aws.enforce()
    with MetadataService("container", credentials) as endpoint, MetadataService("imds", credentials) as imds:
        # No aws_credentials_source (auto), no keys, an ECS task role's URI (no token).
        both = platform_variables(aws, aws_container_credentials_full_uri=endpoint.full_uri, aws_imds_endpoint=imds.url)
        run = aws.run(both, teams)
        assert run.returncode == 0, run.output
        assert run.rotated() == ROTATED
        assert len(endpoint.fetches) == 1 and imds.asked == []
        # Without the URI, auto falls back to IMDS (a new team makes the tick fetch).
        run = aws.run(platform_variables(aws, aws_imds_endpoint=imds.url), [late])
        aws.rotator_secrets.extend(imds.secrets())
    assert run.returncode == 0, run.output
    assert run.rotated() == {("gamma", "dev")}
    assert imds_requests(imds) == IMDS_SEQUENCE
    assert len(endpoint.asked) == 1
    aws.assert_working({**CI_CALLERS, "/concourse/gamma/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci-gamma/gamma"})


@pytest.mark.component_logic
def test_static_keys_win_over_the_metadata_services(aws):
    keys = aws.rotator()
    teams = ci_teams(aws)
    aws.enforce()
    # Fakes that would hand out nothing usable: the component must not even ask them.
    bogus = [("ASIABOGUSBOGUSBOGUS0", "bogus-secret", "bogus-token")]
    with MetadataService("container", bogus) as endpoint, MetadataService("imds", bogus) as imds:
        variables = aws.variables(keys, aws_container_credentials_full_uri=endpoint.full_uri, aws_imds_endpoint=imds.url)
        run = aws.run(variables, teams)
    assert run.returncode == 0, run.output
    assert run.rotated() == ROTATED
    aws.assert_working(CI_CALLERS)
    assert endpoint.asked == [] and imds.asked == []


@pytest.mark.component_logic
def test_a_source_that_fails_is_one_tick_failed_naming_it_and_no_aws_call(aws):
    credentials = instance_role(aws)
    teams = [team("alpha", account("dev", aws.ci_role(HOME_ACCOUNT)))]
    keys = aws.rotator()  # a user that may assume concourse-ci* roles only
    aws.enforce()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    wrong = "not-the-pod-token-71f3"
    aws.rotator_secrets.append(wrong)
    refused_role = f"arn:aws:iam::{HOME_ACCOUNT}:role/concourse-sts-elsewhere"
    with FaultProxy(aws.url) as proxy, MetadataService("container", credentials, authorization="pod-token-2b9e") as endpoint:
        cases = [
            # (variables, the source named, AWS calls: none, or the refused AssumeRole)
            (
                platform_variables(aws, aws_endpoint_url=proxy.url, aws_credentials_source="imds", aws_imds_endpoint=closed),
                f"IMDS at {closed}: asking for the session token",
                0,
            ),
            (
                platform_variables(
                    aws, aws_endpoint_url=proxy.url, aws_container_credentials_full_uri=endpoint.full_uri, aws_container_authorization_token=wrong
                ),
                f"the container credentials endpoint {endpoint.full_uri}: asking for the credentials: HTTP 403",
                0,
            ),
            (
                aws.variables(keys, aws_endpoint_url=proxy.url, aws_role_arn=refused_role),
                f"aws_role_arn {refused_role}: AccessDenied (HTTP 403)",
                1,
            ),
        ]
        for variables, origin, calls in cases:
            run = aws.run(variables, teams)
            [failure] = run.of("tick_failed")
            assert run.events == [failure], [e["event"] for e in run.events]
            assert failure["level"] == "error"
            assert failure["error"].startswith("getting the rotator's credentials from " + origin), failure["error"]
            assert run.error == failure["error"]
            # No AWS call beyond getting the credentials, no lease, no state: the store
            # holds only the team document.
            assert (proxy.forwarded, proxy.injected) == (calls, [])
            assert sorted(aws.store()) == ["team/alpha"]
        assert [(a.status, a.authorized) for a in endpoint.asked] == [(403, False)]
    assert aws.secret_names() == []


@pytest.mark.component_logic
def test_aws_role_arn_is_assumed_first_as_concourse_sts_and_rotated_as(aws):
    iam = aws.admin_client("iam")
    chained = f"arn:aws:iam::{HOME_ACCOUNT}:role/concourse-sts"
    # The static identity may only assume the rotator's role: no CI role, no secret.
    only_the_role = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": chained}]}
    iam.create_user(UserName=ROTATOR_USER)
    iam.put_user_policy(UserName=ROTATOR_USER, PolicyName="assume", PolicyDocument=json.dumps(only_the_role))
    key = iam.create_access_key(UserName=ROTATOR_USER)["AccessKey"]
    keys = (key["AccessKeyId"], key["SecretAccessKey"], None)
    aws.rotator_secrets.extend(keys[:2])
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{HOME_ACCOUNT}:user/{ROTATOR_USER}"}, "Action": "sts:AssumeRole"}],
    }
    iam.create_role(RoleName="concourse-sts", AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName="concourse-sts", PolicyName="rotator", PolicyDocument=rotator_policy())
    # The CI roles trust only the session named concourse-sts of that role (moto compares
    # the caller's session ARN with the principal).
    aws.rotator_principal = f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-sts/concourse-sts"
    role = aws.ci_role(HOME_ACCOUNT)
    long_role = aws.ci_role(HOME_ACCOUNT, "concourse-ci-long")
    aws.enforce()
    teams = [team("alpha", account("dev", role), account("long", long_role, duration=7200))]
    run = aws.run(aws.variables(keys, aws_role_arn=chained), teams)
    assert run.returncode == 1, run.output
    assert run.rotated() == {("alpha", "dev")}
    aws.assert_working({"/concourse/alpha/dev": CI_CALLERS["/concourse/alpha/dev"]})
    sessions = moto_sessions(aws)
    assert sessions.count((chained, "concourse-sts")) == 1, sessions
    # A chained session may assume a role for an hour at most: refused before STS.
    [failure] = run.of("account_failed")
    assert (failure["account"], failure["stage"]) == ("long", "config")
    assert "3600s" in failure["error"] and "aws_role_arn is set" in failure["error"], failure["error"]
    assert [s for s in sessions if s[0] == long_role] == []
    assert aws.written("/concourse/alpha/long") == []


@pytest.mark.component_logic
def test_the_one_hour_cap_of_a_role_session_is_a_config_error_before_sts(aws):
    credentials = instance_role(aws)
    hour = aws.ci_role(HOME_ACCOUNT)
    two_hours = aws.ci_role(HOME_ACCOUNT, "concourse-ci-long")
    aws.enforce()
    teams = [team("alpha", account("hour", hour, duration=3600), account("two-hours", two_hours, duration=7200))]
    with MetadataService("imds", credentials) as imds:
        run = aws.run(platform_variables(aws, aws_credentials_source="imds", aws_imds_endpoint=imds.url), teams)
        aws.rotator_secrets.extend(imds.secrets())
    assert run.returncode == 1
    assert run.rotated() == {("alpha", "hour")}
    assert aws.caller(aws.triple("/concourse/alpha/hour")).endswith("assumed-role/concourse-ci/alpha")
    [failure] = run.of("account_failed")
    assert (failure["account"], failure["stage"], failure["role_arn"]) == ("two-hours", "config", two_hours)
    assert "duration 7200s is longer than the 3600s" in failure["error"], failure["error"]
    assert f"IMDS at {imds.url}" in failure["error"]
    assert [s for s in moto_sessions(aws) if s[0] == two_hours] == []
    assert "alpha/two-hours" in run.error


class SigningRecorder(FaultProxy):
    """A FaultProxy that forwards everything (rate 0) and notes, per request, when it
    arrived and which of `sets` signed it (its index, None for another key). With
    `hold_first_until` (a function giving a time.time() instant, asked when the first
    request arrives), the first request is forwarded only once that instant has passed."""

    def __init__(self, upstream, sets, hold_first_until=None):
        super().__init__(upstream)
        self.keys = [key for key, _, _ in sets]
        self.hold_first_until = hold_first_until
        self.held_s = None
        self.signed = []

    def handle(self, handler, body):
        key = handler.headers.get("Authorization", "").partition("Credential=")[2].partition("/")[0]
        with self.lock:
            first = not self.signed
            self.signed.append((time.monotonic(), self.keys.index(key) if key in self.keys else None))
        if first and self.hold_first_until is not None:
            until = self.hold_first_until()
            self.held_s = until - time.time()
            while time.time() < until and not self.stopping.is_set():
                self.stopping.wait(min(0.1, max(0.0, until - time.time())))
        super().handle(handler, body)


@pytest.mark.component_logic
def test_credentials_expiring_during_a_long_tick_are_fetched_again(aws):
    first, second = instance_role(aws, count=2)
    teams = ci_teams(aws)
    aws.enforce()
    # The first credentials expire in 5 minutes and REFRESH_SLACK_S seconds; the
    # component's margin is five minutes, so REFRESH_SLACK_S seconds after they were
    # fetched they no longer count. The proxy holds the tick's first request until then:
    # everything the tick (one account at a time) signs after it must be signed with
    # credentials fetched anew.
    with MetadataService("imds", [first, second], expires_in=[300 + REFRESH_SLACK_S, 6 * 3600]) as imds:
        lapse = lambda: imds.fetches[0].expiration.timestamp() - 300 + 1
        with SigningRecorder(aws.url, [first, second], hold_first_until=lapse) as proxy:
            variables = platform_variables(
                aws, aws_credentials_source="imds", aws_imds_endpoint=imds.url, aws_endpoint_url=proxy.url, max_concurrency="1"
            )
            run = aws.run(variables, teams)
        aws.rotator_secrets.extend(imds.secrets())
    assert run.returncode == 0, run.output
    assert run.rotated() == ROTATED
    aws.assert_working(CI_CALLERS)
    assert 0 < proxy.held_s <= REFRESH_SLACK_S + 1, f"the first request came {proxy.held_s:.1f} s before the lapse"
    # Fetched when the tick began and once more mid-tick: two full IMDSv2 exchanges.
    assert [fetch.index for fetch in imds.fetches] == [0, 1]
    assert imds_requests(imds) == IMDS_SEQUENCE * 2
    assert all(asked.authorized for asked in imds.asked)
    which = [index for _, index in proxy.signed]
    assert which[0] == 0, "the first request is signed with the first credentials"
    assert len(which) > 1 and set(which[1:]) == {1}, f"credential set per request: {which}"
    refetched = imds.fetches[1].at
    assert all(at > refetched for at, _ in proxy.signed[1:])
