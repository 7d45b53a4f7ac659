"""Months unattended, one disturbance at a time, on the real `spin up`: a node frozen
mid-write while another takes over, a lease lost at the last write, a node whose clock
runs minutes ahead, documents written by a newer version, two deployments on one Redis,
and a write whose answer cannot be read. scripts/soak runs them all at once, for longer.

Each of these once broke an invariant a pipeline relies on (issue "Months unattended");
each test here fails against the component from before it."""

import json
import time
from datetime import timedelta

import pytest

from emulator import HOME_ACCOUNT, OTHER_ACCOUNT, account, team, three_accounts
from faults import DropWriteAnswers, Watcher
from local_http import WORLD
from spin import redis_runtime_config, start_in_time

LEASE = "lease/rotation"
PATHS = {
    "/concourse/alpha/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    "/concourse/alpha/prod": f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/alpha",
    "/concourse/beta/lab": f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/beta",
}
# A short request timeout, and so the shortest lease (30 s): a freeze outlives it soon.
FAST = {"request_timeout": "3s"}
LEASE_S = 30


def lease_of(holder, **extra):
    """A lease record live for an hour in the world's time."""
    until = (WORLD.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"holder": holder, "expires_at": until, **extra})


def test_a_node_frozen_mid_write_sends_nothing_after_another_took_over(aws, redis):
    """Node A is frozen (SIGSTOP of its whole process tree) right as its first secret
    write goes out, for longer than its lease lives; node B takes over and repairs every
    account; then A is thawed. A's monotonic clock tells it its lease ran out: its timed
    out writes are not retried, nothing more is sent, and it says it lost the lease."""
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    config = redis_runtime_config(aws.tmp_path, redis.url)
    node_a, node_b = aws.node("node-a", config), aws.node("node-b", config)
    frozen = []
    with Watcher(aws.url, "secretsmanager.", lambda: (frozen.append(time.monotonic()), a.freeze()), latency=2.0) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, **FAST)
        [a] = start_in_time([node_a], variables, teams)
        a.wait_for(lambda: frozen, "node A's first write and freeze", 120)
        time.sleep(LEASE_S + 5)
        [b] = start_in_time([node_b], variables)
        taken = b.finish(b.first_tick())
        thawed = time.monotonic()
        a.thaw()
        lost = a.finish(a.first_tick())
        late = proxy.since(thawed, "secretsmanager.")
    assert taken.of("lease_busy") == [], taken.output
    assert {(e["team"], e["account"], e["reason"]) for e in taken.of("account_rotated")} == {
        (t, a_, "incomplete") for t, a_ in (("alpha", "dev"), ("alpha", "prod"), ("beta", "lab"))
    }
    assert late == [], f"node A wrote after the thaw: {late}"
    assert lost.of("lease_lost"), lost.output
    assert lost.rotated() == set()
    [finished] = lost.of("tick_finished")
    assert finished["lease_lost"] is True
    assert lost.errors, "the tick that lost its lease says so"
    aws.assert_working(PATHS)


@pytest.mark.component_logic
def test_a_lease_lost_at_the_last_write_is_an_error_and_stores_nothing(aws):
    """The lease is taken over while the tick's one write is on its way: the write lands
    (it left under the lease), the outcome is not stored, and the tick ends with
    `lease_lost` and an error, not a success that the next tick would contradict."""
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    usurp = lambda: aws.main.replace(LEASE, lease_of("tick-usurper"))
    with Watcher(aws.url, "secretsmanager.", usurp, latency=2.0) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, secret_format="json", **FAST)
        run = aws.run(variables, [team("alpha", account("dev", role))])
    assert run.of("lease_lost"), run.output
    [finished] = run.of("tick_finished")
    assert finished["lease_lost"] is True
    assert run.returncode == 1 and "lease was lost" in str(run.error), run.output
    [state] = json.loads(aws.store()["state/alpha"])["accounts"].values()
    assert (state["incomplete"], state["written_at"]) == (True, None), "no outcome stored"
    assert json.loads(aws.store()[LEASE])["holder"] == "tick-usurper", "left alone"


def test_a_node_minutes_ahead_neither_takes_a_live_lease_nor_blocks_the_others(aws, redis):
    """Node B's wall clock runs four minutes ahead of AWS (libfaketime). Started while
    node A holds the lease, it judges the lease in AWS's time (learned from the answers'
    Date) and waits; when it has rotated and released, A can take the lease at once."""
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    config = redis_runtime_config(aws.tmp_path, redis.url)
    node_a, node_b = aws.node("node-a", config), aws.node("node-b", config)
    ahead = 4 * 60
    started = []
    # Four seconds an answer: A's tick lasts some 16 s, B arrives while A holds the lease.
    with Watcher(aws.url, "sts.AssumeRole", lambda: started.append(True), latency=4.0) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, request_timeout="10s")
        [a] = start_in_time([node_a], variables, teams)
        a.wait_for(lambda: started, "node A's first AssumeRole", 120)
        [b] = start_in_time([node_b], variables, skew_s=ahead)
        waited = b.finish(b.first_tick())
        first = a.finish(a.first_tick())
    [busy] = waited.of("lease_busy")
    assert busy["holder"] == first.events[0]["tick"], waited.output
    assert waited.rotated() == set()
    assert first.rotated() == {("alpha", "dev"), ("alpha", "prod"), ("beta", "lab")}

    # B rotates a new team and gives the lease back; A, right after, is not blocked.
    gamma = team("gamma", account("dev", aws.ci_role(HOME_ACCOUNT, "concourse-ci-gamma")))
    delta = team("delta", account("dev", aws.ci_role(HOME_ACCOUNT, "concourse-ci-delta")))
    variables = aws.variables(keys)
    redis.command("SET", "team/gamma", json.dumps(gamma))
    released = node_b.run(variables, skew_s=ahead)
    assert released.rotated() == {("gamma", "dev")}, released.output
    redis.command("SET", "team/delta", json.dumps(delta))
    after = node_a.run(variables)
    assert after.of("lease_busy") == [], "the skewed node's release blocked the others"
    assert after.rotated() == {("delta", "dev")}


@pytest.mark.component_logic
def test_documents_a_newer_version_wrote_are_respected_and_kept(aws):
    """A rolling upgrade: a newer version's lease (with a field this version does not
    know) is a lease, not a foreign value; its state document's fields survive a tick."""
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    variables = aws.variables(keys)
    held = aws.run(variables, teams, raw=[(LEASE, lease_of("v2-node", epoch=7))])
    [busy] = held.of("lease_busy")
    assert busy["holder"] == "v2-node"
    assert held.of("tick_failed") == [] and held.errors == [], held.output

    expired = json.dumps({"holder": "v2-node", "expires_at": "2020-01-01T00:00:00Z", "epoch": 7})
    state = {"writer": "concourse-sts", "document": "v2", "epoch": 3,
             "accounts": {"lab": {"fingerprint": "v2", "vault_version": 5}}}
    run = aws.run(variables, raw=[(LEASE, expired), ("state/beta", json.dumps(state))])
    assert run.rotated() == {("alpha", "dev"), ("alpha", "prod"), ("beta", "lab")}, run.output
    stored = json.loads(aws.store()["state/beta"])
    assert (stored["epoch"], stored["accounts"]["lab"]["vault_version"]) == (3, 5)
    assert json.loads(aws.store()[LEASE])["epoch"] == 7
    aws.assert_working(PATHS)


def test_two_deployments_on_one_redis_keep_to_their_own_keys(aws, redis):
    """Staging and production share a Redis database, each under its `store_prefix`:
    each rotates only its own teams (same team name, different roles and secret paths),
    holds its own lease, and writes no key outside its prefix."""
    keys = aws.rotator()
    staging_role = aws.ci_role(HOME_ACCOUNT, "concourse-ci-staging")
    prod_role = aws.ci_role(HOME_ACCOUNT, "concourse-ci-prod")
    aws.enforce()
    redis.command("SET", "staging/team/alpha", json.dumps(team("alpha", account("dev", staging_role))))
    redis.command("SET", "prod/team/alpha", json.dumps(team("alpha", account("dev", prod_role))))
    config = redis_runtime_config(aws.tmp_path, redis.url)
    nodes = [aws.node("staging", config), aws.node("prod", config)]
    deployments = [("staging/", "/staging/{{.Team}}/{{.Account}}"), ("prod/", "/concourse/{{.Team}}/{{.Account}}")]
    # Every answer half a second late: both ticks, started on the same second, overlap.
    with Watcher(aws.url, "none", lambda: None, latency=0.5) as proxy:
        variables = [
            aws.variables(keys, aws_endpoint_url=proxy.url, store_prefix=prefix, secret_path_template=template)
            for prefix, template in deployments
        ]
        processes = start_in_time(nodes, variables)
        runs = [process.finish(process.first_tick()) for process in processes]
    assert [run.rotated() for run in runs] == [{("alpha", "dev")}] * 2, [run.output for run in runs]
    assert [run.of("lease_busy") for run in runs] == [[], []], "the deployments share no lease"
    aws.assert_working({
        "/staging/alpha/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci-staging/alpha",
        "/concourse/alpha/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci-prod/alpha",
    })
    stored = set(redis.contents())
    assert {"staging/state/alpha", "prod/state/alpha", "staging/lease/rotation", "prod/lease/rotation"} <= stored
    assert all(key.startswith(("staging/", "prod/")) for key in stored), sorted(stored)


def versions(aws, name):
    sm = aws.admin_client("secretsmanager")
    return sm.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)["Versions"]


@pytest.mark.component_logic
def test_a_write_whose_answer_cannot_be_read_is_sent_again_with_its_token(aws):
    """Moto accepts four writes whose answers then arrive whole but unreadable: as the
    AWS SDKs do, each is retried (the same ClientRequestToken), the accounts rotate,
    and no secret gets a second version."""
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    with DropWriteAnswers(aws.url, 4, garble=True) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, secretsmanager_writes_per_second="0")
        run = aws.run(variables, teams)
    assert proxy.injected == ["garble_answer"] * 4
    assert run.returncode == 0 and run.rotated() == {(t, a) for t, a in (("alpha", "dev"), ("alpha", "prod"), ("beta", "lab"))}, run.output
    unreadable = [e for e in run.of("attempt_failed") if "unreadable answer" in e["error"]]
    assert len(unreadable) == 4
    for lost in [w for w in proxy.writes if w["dropped"]]:
        same = [w for w in proxy.writes if w["secret"] == lost["secret"]]
        assert len(same) >= 2 and {w["token"] for w in same} == {lost["token"]}, lost["secret"]
    names = [f"{path}-{suffix}" for path in PATHS for suffix in ("access-key", "secret-key", "session-token")]
    assert {name: len(versions(aws, name)) for name in names} == {name: 1 for name in names}
    aws.assert_working(PATHS)
