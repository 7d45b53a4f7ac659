"""Secret hygiene under every failure class: whatever AWS (or the network) answers, the
component reports it in a log line, never traps, and never prints a credential. The aws
fixture checks the last part after every test, against all values moto issued."""

import pytest

from emulator import HOME_ACCOUNT, account, team
from faults import KINDS, THE_TIME, FaultProxy

EXPECTED_CODES = {
    "http500": None,
    "http503": None,
    "throttle": "Throttling",
    "reset": None,
    "truncated": None,
    "garbage": None,
    "huge": None,
    "silent": None,
}


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "latency"])
def test_every_fault_class_is_reported_without_a_trap_or_a_leak(aws, kind):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    with FaultProxy(aws.url, kinds=[kind], rate=1.0, spare=[THE_TIME]) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, request_timeout="2s")
        run = aws.run(variables, [team("alpha", account("dev", role))])
    assert run.returncode == 1, run.output
    assert not run.trapped, run.output
    [failure] = run.of("account_failed")
    assert failure["stage"] == "assume_role"
    assert failure.get("code") == EXPECTED_CODES[kind]
    assert failure["error"]
    assert proxy.injected, "the proxy injected nothing"


def test_a_silent_endpoint_cannot_hold_a_tick(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    with FaultProxy(aws.url, kinds=["silent"], rate=1.0, spare=[THE_TIME]) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, request_timeout="2s")
        # The proxy would stay silent for a minute; each request gives up after two
        # seconds, so the tick ends (the host's own run is not what stops it).
        run = aws.run(variables, [team("alpha", account("dev", role))])
    assert run.returncode == 1
    attempts = run.of("attempt_failed")
    assert len(attempts) == 6, "three attempts, and three more after the tick's other accounts"
    # Whichever gives up first: the host enforcing the request options' first-byte
    # timeout, or the component's own timer around the whole exchange.
    timeouts = ("ErrorCode::ConnectionReadTimeout", "no complete answer within 2s")
    assert all(any(t in a["error"] for t in timeouts) for a in attempts), attempts
    assert run.of("tick_finished")


def test_failures_after_credentials_were_issued_do_not_leak_them(aws):
    """Secrets Manager fails after STS handed out credentials: the log names the secrets
    not written and holds none of the values (the fixture checks the values themselves)."""
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    run = aws.run(aws.variables(keys, secretsmanager_endpoint_url="http://127.0.0.1:9"), [team("alpha", account("dev", role))])
    assert run.returncode == 1
    [failure] = run.of("account_failed")
    assert failure["stage"] == "write_secrets"
    assert "not written: /concourse/alpha/dev-access-key" in failure["error"]
    assert failure["retryable"] is True


@pytest.mark.component_logic
def test_latency_is_only_slower(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    with FaultProxy(aws.url, kinds=["latency"], rate=1.0, latency=0.1) as proxy:
        run = aws.run(aws.variables(keys, aws_endpoint_url=proxy.url), [team("alpha", account("dev", role))])
    assert run.returncode == 0, run.output
    assert aws.caller(aws.triple("/concourse/alpha/dev")).endswith("assumed-role/concourse-ci/alpha")
