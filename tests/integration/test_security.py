"""The review findings of issue #11, end to end on the real Spin: template isolation,
secret names colliding under `secret_format = both`, egress without the loopback override,
the admin API's token handling, the signing clock corrected from AWS's `Date`, and AWS's
request id in errors."""

import json
import re
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest

from emulator import HOME_ACCOUNT, account, digest, team
from faults import ClockCheckingProxy, FaultProxy

ADMIN_TOKEN = "admin-token-3f9a0c71"


@pytest.mark.component_logic
def test_a_template_with_a_placeholder_before_the_team_is_refused_at_start(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    # With the first template, team "evil"'s account "alpha" would be written to
    # /concourse/alpha/evil/alpha-*: into team alpha's lookup path, for a pipeline of
    # alpha's named "evil".
    teams = [team("alpha", account("dev", role)), team("evil", account("alpha", role))]
    templates = {
        "/concourse/{{.Account}}/{{.Team}}/{{.Account}}": "{{.Account}} must not come before {{.Team}}",
        "/concourse/{{ .Account }}/{{ .Team }}/{{ .Account }}": "{{.Account}} must not come before {{.Team}}",
        "/concourse/{{.Team}}/{{.Team}}/{{.Account}}": "{{.Team}} must appear exactly once",
    }
    with FaultProxy(aws.url) as proxy:
        for template, reason in templates.items():
            variables = aws.variables(keys, aws_endpoint_url=proxy.url, secret_path_template=template)
            run = aws.run(variables, teams)
            [failure] = run.of("tick_failed")
            assert run.events == [failure], [e["event"] for e in run.events]
            assert "secret_path_template" in failure["error"] and reason in failure["error"], failure["error"]
            assert run.error == failure["error"]
        assert (proxy.forwarded, proxy.injected) == (0, [])
    assert aws.secret_names() == []
    assert sorted(aws.store()) == ["team/alpha", "team/evil"]


@pytest.mark.component_logic
def test_secret_format_both_refuses_a_team_whose_account_names_collide(aws):
    alpha_role = aws.ci_role(HOME_ACCOUNT)
    beta_role = aws.ci_role(HOME_ACCOUNT, "concourse-ci-beta")
    keys = aws.rotator()
    aws.enforce()
    # With both formats, account "a"'s access key secret /concourse/alpha/a-access-key
    # is account "a-access-key"'s JSON secret.
    alpha = team("alpha", account("a", alpha_role), account("a-access-key", alpha_role))
    beta = team("beta", account("dev", beta_role))
    run = aws.run(aws.variables(keys, secret_format="both"), [alpha, beta])
    assert run.returncode == 1
    assert run.rotated() == {("beta", "dev")}
    [invalid] = run.of("team_invalid")
    assert (invalid["team"], invalid["key"]) == ("alpha", "team/alpha")
    [problem] = invalid["problems"]
    assert problem["field"] == "accounts[1].name"
    assert "secret_format both" in problem["reason"] and "/concourse/alpha/a-access-key" in problem["reason"], problem
    assert "1 invalid team documents: team/alpha" in run.error
    assert aws.secret_names() == sorted(
        ["/concourse/beta/dev", "/concourse/beta/dev-access-key", "/concourse/beta/dev-secret-key", "/concourse/beta/dev-session-token"]
    )
    assert aws.caller(aws.triple("/concourse/beta/dev")).endswith("assumed-role/concourse-ci-beta/beta")
    assert digest(json.loads(aws.secret("/concourse/beta/dev"))["access_key_id"]) == digest(aws.secret("/concourse/beta/dev-access-key"))
    # The control: with the three secrets alone nothing collides, and the team rotates.
    split = aws.run(aws.variables(keys), [alpha])
    assert split.returncode == 0, split.output
    assert split.rotated() == {("alpha", "a"), ("alpha", "a-access-key")}
    aws.assert_working({path: f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha" for path in ("/concourse/alpha/a", "/concourse/alpha/a-access-key")})


def test_the_production_egress_does_not_admit_loopback(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    variables = aws.variables(keys)
    # allowed_endpoint_override left at its default, as in production.
    del variables["SPIN_VARIABLE_ALLOWED_ENDPOINT_OVERRIDE"]
    run = aws.run(variables, [team("alpha", account("dev", role))])
    assert run.returncode == 1, run.output
    [failed] = run.of("tick_failed")
    assert "allowed_outbound_hosts" in failed["error"], failed["error"]
    assert f"disallowed destination '{aws.url}'" in run.output
    assert aws.secret_names() == []


def ask(url, authorization=None):
    """GET `url`; returns (status, JSON); the answer joins the leak check's material."""
    headers = {"Authorization": authorization} if authorization else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    return status, (json.loads(text) if text else None), text


def raw_put_without_body(url, authorization, wait_s):
    """Sends the head of a PUT announcing a 100,000-byte body and no body; returns the
    socket and what was answered within `wait_s` seconds (b"" for nothing)."""
    address = urlparse(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    head = (
        f"PUT /teams/alpha HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: {authorization}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock, read_head(sock, wait_s)


def read_head(sock, wait_s):
    """What the socket answers until the end of the response head or `wait_s` seconds."""
    answer = b""
    deadline = time.monotonic() + wait_s
    while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            break
        if not chunk:
            break
        answer += chunk
    return answer


def test_admin_api_scheme_in_any_case_a_trimmed_token_checked_before_the_body(aws):
    keys = aws.rotator()
    aws.enforce()
    aws.rotator_secrets.append(ADMIN_TOKEN)
    # As a Kubernetes Secret made from a file gives it: with the file's last newline.
    server, url = aws.serve(aws.variables(keys, admin_token=ADMIN_TOKEN + "\n"))
    try:
        for scheme in ("Bearer", "bearer", "BEARER"):
            status, body, text = ask(f"{url}/teams", f"{scheme} {ADMIN_TOKEN}")
            aws.outputs.append(text)
            assert (status, body) == (200, {"teams": []}), scheme
        for authorization in (None, "Bearer wrong-token", f"Basic {ADMIN_TOKEN}", f"Bearer {ADMIN_TOKEN}x"):
            status, body, text = ask(f"{url}/teams", authorization)
            aws.outputs.append(text)
            assert (status, body["error"]["code"]) == (401, "unauthorized"), authorization

        # A wrong token announcing a body that never comes is answered at once: the
        # component refuses before it reads (or waits for) the body.
        started = time.monotonic()
        sock, answer = raw_put_without_body(url, "Bearer wrong-token", wait_s=10)
        sock.close()
        aws.outputs.append(answer.decode(errors="replace"))
        assert answer.startswith(b"HTTP/1.1 401"), answer[:40]
        assert time.monotonic() - started < 10
        # The control: with the right token the component waits for that body (nothing
        # can answer without it), and once it comes, refuses it as too large (64 KiB).
        sock, answer = raw_put_without_body(url, f"Bearer {ADMIN_TOKEN}", wait_s=2)
        try:
            assert answer == b"", answer[:40]
            sock.sendall(b"x" * 100000)
            answer = read_head(sock, wait_s=30)
        finally:
            sock.close()
        aws.outputs.append(answer.decode(errors="replace"))
        assert answer.startswith(b"HTTP/1.1 413"), answer[:40]
    finally:
        aws.stop_serving(server)


def clock_teams(aws):
    return [team("alpha", account("dev", aws.ci_role(HOME_ACCOUNT)), account("lab", aws.ci_role(HOME_ACCOUNT, "concourse-ci-lab")))]


ALPHA = {
    "/concourse/alpha/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    "/concourse/alpha/lab": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci-lab/alpha",
}
# The host's clock 20 minutes slow: every request it signs is refused by the proxy.
SLOW = -20 * 60


@pytest.mark.component_logic
def test_a_refused_request_time_corrects_the_signing_clock_from_the_answers_date(aws):
    teams = clock_teams(aws)
    late = team("beta", account("dev", aws.ci_role(HOME_ACCOUNT, "concourse-ci-beta")))
    keys = aws.rotator()
    aws.enforce()
    # The tick's first request asks STS for the time (GetCallerIdentity), signed by the
    # host's slow clock: refused with RequestTimeTooSkewed. The clock is corrected from
    # the answer's Date, the question asked again, and every later request of the tick
    # (STS and Secrets Manager, one account at a time) is signed on time.
    with ClockCheckingProxy(aws.url) as proxy:
        run = aws.run(aws.variables(keys, aws_endpoint_url=proxy.url, max_concurrency="1"), teams, skew_s=SLOW)
    assert run.returncode == 0, run.output
    assert run.rotated() == {("alpha", "dev"), ("alpha", "lab")}
    aws.assert_working(ALPHA)
    assert proxy.refused() == ["sts.GetCallerIdentity"]
    assert proxy.seen[0][:2] == ("sts.GetCallerIdentity", True) and abs(proxy.seen[0][2] - SLOW) < 60
    assert proxy.seen[1][:2] == ("sts.GetCallerIdentity", False)
    assert all(abs(skew) < 60 for _, refused, skew in proxy.seen if not refused)
    assert len(proxy.seen) >= 2 + 2 * (1 + 3)

    # With STS answering directly (moto checks no request time, and its Date sets the
    # clock), Secrets Manager behind the checking proxy never sees a request signed off:
    # the node knows AWS's time before its first write.
    with ClockCheckingProxy(aws.url) as proxy:
        variables = aws.variables(keys, secretsmanager_endpoint_url=proxy.url)
        run = aws.run(variables, [late], skew_s=SLOW)
    assert run.returncode == 0, run.output
    assert run.rotated() == {("beta", "dev")}
    assert aws.caller(aws.triple("/concourse/beta/dev")).endswith("assumed-role/concourse-ci-beta/beta")
    assert proxy.refused() == []
    assert len(proxy.seen) >= 3 and all(abs(skew) < 60 for _, _, skew in proxy.seen)


@pytest.mark.component_logic
def test_without_a_date_in_the_refusal_the_clock_cannot_be_corrected(aws):
    """The control of the test above: the same refusal without the answer's `Date`
    leaves the component nothing to learn AWS's time from, and a tick that cannot tell
    the time takes no lease and writes nothing: it fails, naming what it asked."""
    teams = [team("alpha", account("dev", aws.ci_role(HOME_ACCOUNT)))]
    keys = aws.rotator()
    aws.enforce()
    with ClockCheckingProxy(aws.url, send_date=False) as proxy:
        run = aws.run(aws.variables(keys, aws_endpoint_url=proxy.url), teams, skew_s=SLOW)
    assert run.returncode == 1
    [failed] = run.of("tick_failed")
    assert "GetCallerIdentity" in failed["error"] and "RequestTimeTooSkewed" in failed["error"], failed
    assert proxy.refused() == ["sts.GetCallerIdentity"]
    assert [refused for _, refused, _ in proxy.seen] == [True]
    assert aws.secret_names() == []
    assert "lease/rotation" not in aws.store()


@pytest.mark.component_logic
def test_an_aws_error_names_its_request_id(aws):
    denied = aws.ci_role(HOME_ACCOUNT, "unrelated-admin")
    keys = aws.rotator()
    aws.enforce()
    # The proxy forwards moto's answers with their headers and notes the request ids.
    with ClockCheckingProxy(aws.url) as proxy:
        run = aws.run(aws.variables(keys, aws_endpoint_url=proxy.url), [team("alpha", account("denied", denied))])
    assert run.returncode == 1
    # The time first (GetCallerIdentity), then the AssumeRole that was denied.
    [_, request_id] = proxy.request_ids
    assert re.fullmatch(r"[A-Za-z0-9-]{8,}", request_id), request_id
    [failure] = run.of("account_failed")
    assert (failure["code"], failure["stage"]) == ("AccessDenied", "assume_role")
    assert failure["error"].startswith("AccessDenied (HTTP 403): ")
    assert failure["error"].endswith(f" (request id {request_id})"), failure["error"]
    # The attempt's line and the stored state (which the status API serves) say it too.
    [attempt] = run.of("attempt_failed")
    assert attempt["error"] == failure["error"]
    stored = json.loads(aws.store()["state/alpha"])["accounts"]["denied"]["last_error"]
    assert stored["code"] == "AccessDenied" and stored["message"].endswith(f" (request id {request_id})"), stored
