"""A host stopped in the middle of a rotation (a deploy, a restart) leaves whatever the
tick had half written: the next tick must find the mixed set and rewrite it once, from one
AssumeRole session. This test stops a real `spin up` while one secret's write is held,
and counts what moto holds: every secret's versions (`ListSecretVersionIds`) and which
issued session each written value belongs to (moto's own record of the sessions). The
fault proxy records the calls it saw by operation and target, never by value.
"""

import json
import threading
import urllib.request
from collections import Counter, namedtuple
from urllib.parse import parse_qs

from emulator import HOME_ACCOUNT, account, team
from faults import FaultProxy
from spin import start_in_time

MINUTES = 60
SUFFIXES = ("access-key", "secret-key", "session-token")
WRITES = ("PutSecretValue", "CreateSecret")

# One request as the proxy saw it: the operation, what it targets (a role ARN or a secret
# name) and, for a secret write, its ClientRequestToken. Never a value.
Call = namedtuple("Call", "operation target token")


def describe(headers, body):
    """The Call of one request to STS or Secrets Manager."""
    target = headers.get("X-Amz-Target")
    if target:
        request = json.loads(body)
        name = request.get("SecretId") or request.get("Name")
        return Call(target.rsplit(".", 1)[-1], name, request.get("ClientRequestToken"))
    form = parse_qs(body.decode())
    return Call(form["Action"][0], form.get("RoleArn", [None])[0], None)


class ScriptedProxy(FaultProxy):
    """A fault proxy that records every call and lets the test choose each call's fault:
    `script(call, nth)` returns a fault kind or None, `nth` counting the calls of that
    operation on that target so far (1 for the first)."""

    def __init__(self, upstream, script=None, **options):
        super().__init__(upstream, **options)
        self.script = script or (lambda call, nth: None)
        self.calls = []
        self.counted = Counter()
        self.scripting = threading.Lock()

    def choose(self, handler, body):
        call = describe(handler.headers, body)
        with self.scripting:
            self.calls.append(call)
            self.counted[call.operation, call.target] += 1
            kind = self.script(call, self.counted[call.operation, call.target])
        if kind is None:
            return super().choose(handler, body)
        with self.lock:
            self.injected.append(kind)
        return kind

    def count(self, *operations):
        """How many calls of these operations each target got."""
        return Counter(c.target for c in self.calls if c.operation in operations)

    def tokens(self):
        """Every secret write's ClientRequestToken, by secret: {name: {tokens}}."""
        tokens = {}
        for call in self.calls:
            if call.operation in WRITES:
                tokens.setdefault(call.target, set()).add(call.token)
        return tokens


def hold(operation, target):
    """A script that never answers the first `operation` call on `target` and never
    forwards it."""
    return lambda call, nth: "silent" if (call.operation, call.target, nth) == (operation, target, 1) else None


def secret_names(*paths):
    return [f"{path}-{suffix}" for path in paths for suffix in SUFFIXES]


def versions(aws, name):
    """A secret's versions as Secrets Manager lists them: {version id: [stages]}."""
    sm = aws.admin_client("secretsmanager")
    answer = sm.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)
    return {v["VersionId"]: sorted(v.get("VersionStages", [])) for v in answer["Versions"]}


def current_version(aws, name):
    [current] = [v for v, stages in versions(aws, name).items() if "AWSCURRENT" in stages]
    return current


def sessions(aws):
    """Moto's record of every AssumeRole session it issued: {credential value: (role ARN,
    session name, n)}, where n numbers that role's sessions for that name from 1, in the
    order they were issued."""
    data = json.loads(urllib.request.urlopen(aws.url + "/moto-api/data.json", timeout=10).read())
    numbered = Counter()
    index = {}
    for session in data.get("sts", {}).get("AssumedRole", []):
        key = (session["role_arn"], session["session_name"])
        numbered[key] += 1
        for field in ("access_key_id", "secret_access_key", "session_token"):
            index[session[field]] = (*key, numbered[key])
    return index


def written_sessions(aws, path):
    """Which issued session each of the path's three secrets holds (None: a value that is
    missing or that no session issued). It is safe to print: it holds no credential."""
    index = sessions(aws)
    return [index.get(value) for value in aws.triple(path)]


def test_a_host_stopped_halfway_leaves_a_mixed_set_that_the_next_tick_rewrites_once(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    teams = [team("alpha", account("dev", role))]
    path = "/concourse/alpha/dev"
    names = secret_names(path)
    keys = aws.rotator()
    aws.enforce()
    with ScriptedProxy(aws.url) as proxy:
        assert aws.run(aws.variables(keys, aws_endpoint_url=proxy.url), teams).returncode == 0
    assert written_sessions(aws, path) == [(role, "alpha", 1)] * 3

    # The next rotation writes the access key and the secret key. The session token's
    # write is held unanswered, and the host is stopped (a deploy, a restart).
    due = 45 * MINUTES
    with ScriptedProxy(aws.url, hold("PutSecretValue", f"{path}-session-token")) as proxy:
        [process] = start_in_time([aws.main], aws.variables(keys, aws_endpoint_url=proxy.url), later_s=due)
        landed = lambda: proxy.injected and all(len(versions(aws, name)) == 2 for name in names[:2])
        try:
            process.wait_for(landed, "two of three secrets rewritten, the third held", 240)
        finally:
            stopped = process.finish()
    assert stopped.of("account_rotated") == [] and stopped.of("tick_finished") == []
    assert written_sessions(aws, path) == [(role, "alpha", 2), (role, "alpha", 2), (role, "alpha", 1)]
    assert json.loads(aws.store()["state/alpha"])["accounts"]["dev"]["incomplete"] is True

    # The next tick rewrites the whole set once, from one new session. It runs after the
    # stopped tick's lease has expired (about 2.5 minutes with the defaults).
    with ScriptedProxy(aws.url) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url)
        repair = aws.run(variables, later_s=due + 4 * MINUTES)
        assert repair.returncode == 0, repair.output
        assert [(e["account"], e["reason"]) for e in repair.of("account_rotated")] == [("dev", "incomplete")]
        assert proxy.count("AssumeRole") == {role: 1}
        assert proxy.count(*WRITES) == {name: 1 for name in names}
        assert written_sessions(aws, path) == [(role, "alpha", 3)] * 3
        assert [len(versions(aws, name)) for name in names] == [3, 3, 2]

        # Repaired once: the tick after that finds the account written and calls nothing.
        calls = len(proxy.calls)
        after = aws.run(variables, later_s=due + 5 * MINUTES)
        assert [e["reason"] for e in after.of("account_skipped")] == ["written_recently"]
        assert len(proxy.calls) == calls
    assert json.loads(aws.store()["state/alpha"])["accounts"]["dev"]["incomplete"] is False
    aws.assert_working({path: f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha"})
