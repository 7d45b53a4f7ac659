"""Issue #10 on the real `spin up`: the lease (a lease left by a dead tick, a lease key
that is not ours, a lease taken over in the middle of a tick and the fence before an
account's writes), idempotent secret writes when an answer is lost, backing off from
failures, a shared Redis store that keeps what others wrote, and store commits that do
not grow with the number of accounts.

Overlapping ticks on one node and two nodes on one store are in test_engine.py and
test_nodes.py; this file does not repeat them."""

import json
import re
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from emulator import HOME_ACCOUNT, OTHER_ACCOUNT, account, team
from faults import THE_TIME, DropWriteAnswers, FaultProxy, Watcher
from spin import ROOT, redis_runtime_config, start_in_time

MINUTE = 60
HOUR = 60 * MINUTE
LEASE = "lease/rotation"
TOKEN = "test-admin-token-10"

WORKING = {
    ("alpha", "dev"): f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("alpha", "prod"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("beta", "lab"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/beta",
}
PATHS = {f"/concourse/{t}/{a}": arn for (t, a), arn in WORKING.items()}
SUFFIXES = ("access-key", "secret-key", "session-token")
SECRETS = sorted(f"{path}-{suffix}" for path in PATHS for suffix in SUFFIXES)


def three_accounts(aws):
    home, other = aws.ci_role(HOME_ACCOUNT), aws.ci_role(OTHER_ACCOUNT)
    return [
        team("alpha", account("dev", home), account("prod", other)),
        team("beta", account("lab", other)),
    ]


def at(text):
    """An RFC 3339 time of a log line, a state document or an API answer."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def rfc3339(instant):
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def host_now(later_s=0):
    """The wall clock of a `spin up` run `later_s` seconds in the future."""
    return datetime.now(timezone.utc) + timedelta(seconds=later_s)


def tick(node, variables, teams=(), raw=(), later_s=0, lease=None):
    """One tick on `node`, as SpinNode.run, and the lease it took seen released before
    `spin up` is stopped (the component gives it back before `tick_finished`; a lease
    still held would make the next run's tick `lease_busy` for minutes). `lease` reads
    the lease key (default: the node's SQLite store)."""
    [process] = start_in_time([node], variables, teams, raw, later_s)
    events = process.first_tick()
    read = lease or (lambda: node.store().get(LEASE))
    finished = [e for e in events if e["event"] == "tick_finished"]

    def released():
        try:
            record = json.loads(read() or "null")
        except ValueError:
            return True
        if not finished or not isinstance(record, dict) or record.get("holder") != finished[0]["tick"]:
            return True
        # A released record expires when the tick ended; a held one a lifetime later.
        return at(record["expires_at"]) < at(finished[0]["time"]) + timedelta(seconds=10)

    process.wait_for(released, "the lease's release", 60)
    return process.finish(events)


# 1. The lease


@pytest.mark.component_logic
def test_a_lease_left_by_a_dead_tick_blocks_until_it_expires_then_is_taken_over(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    expires = host_now().replace(microsecond=0) + timedelta(hours=1)
    dead = json.dumps({"holder": "tick-dead", "expires_at": rfc3339(expires)})
    with FaultProxy(aws.url) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url)
        blocked = tick(aws.main, variables, teams, raw=[(LEASE, dead)])
        [busy] = blocked.of("lease_busy")
        assert (busy["holder"], at(busy["until"])) == ("tick-dead", expires)
        assert [e["event"] for e in blocked.events] == ["lease_busy"], "nothing started, nothing rotated"
        assert blocked.errors == [], blocked.output
        assert proxy.forwarded == 1, "a tick without the lease asked AWS only the time (to judge the lease)"
        assert aws.store()[LEASE] == dead
        assert not [key for key in aws.store() if key.startswith("state/")]

        # The same node two hours later: the dead tick's lease has expired.
        later_s = 2 * HOUR
        taken = tick(aws.main, variables, later_s=later_s)
    assert taken.rotated() == set(WORKING), taken.output
    assert taken.errors == [] and taken.of("lease_busy") == []
    [holder] = {e["tick"] for e in taken.events}
    record = json.loads(aws.store()[LEASE])
    assert set(record) == {"holder", "expires_at"} and record["holder"] == holder
    # Released: the record stays, expired when it was given back, just before the tick's
    # last line (not a lease lifetime ahead). The record is in AWS's time, which the node
    # knows to the second from the answers' Date; its log lines are in its own.
    [started] = taken.of("tick_started")
    [finished] = taken.of("tick_finished")
    second = timedelta(seconds=1)
    assert at(started["time"]) - second <= at(record["expires_at"]) <= at(finished["time"]) + second
    aws.assert_working(PATHS)


@pytest.mark.component_logic
def test_a_lease_key_holding_something_else_is_left_alone_and_the_tick_fails(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    with FaultProxy(aws.url) as proxy:
        run = tick(aws.main, aws.variables(keys, aws_endpoint_url=proxy.url), teams, raw=[(LEASE, "someone else's")])
        assert proxy.forwarded == 1, "only AWS's time was asked"
    [failed] = run.of("tick_failed")
    assert LEASE in failed["error"]
    assert run.rotated() == set()
    assert run.errors and LEASE in str(run.error)
    assert aws.store()[LEASE] == "someone else's"
    assert aws.secret_names() == []


def test_two_nodes_on_one_redis_take_over_an_expired_lease_once(aws, redis):
    """The takeover path (the key exists, so each node's swap expects the dead tick's
    record) raced by two nodes on Spin's Redis store, whose swap answers are wrong either
    way (DESIGN.md): exactly one node holds the lease and rotates every account once."""
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    expired = json.dumps({"holder": "tick-dead", "expires_at": rfc3339(host_now().replace(microsecond=0) - timedelta(hours=1))})
    redis.command("SET", LEASE, expired)
    config = redis_runtime_config(aws.tmp_path, redis.url)
    nodes = [aws.node("node-a", config), aws.node("node-b", config)]
    # Each request takes a second, so the two ticks, started on the same second, overlap.
    with FaultProxy(aws.url, kinds=["latency"], rate=1.0, latency=1.0) as proxy:
        processes = start_in_time(nodes, aws.variables(keys, aws_endpoint_url=proxy.url), teams)
        runs = [process.finish(process.first_tick()) for process in processes]
    rotated = sorted((e["team"], e["account"]) for run in runs for e in run.of("account_rotated"))
    assert rotated == sorted(WORKING), "every account rotated exactly once across both nodes"
    [winner] = [run for run in runs if run.of("tick_finished")]
    [busy] = [e for run in runs for e in run.of("lease_busy")]
    assert busy["holder"] == winner.events[0]["tick"], "the loser saw the winner's lease, not the dead one"
    assert [run.errors for run in runs] == [[], []]
    aws.assert_working(PATHS)


def test_a_tick_whose_lease_is_taken_over_writes_nothing_more_and_the_next_tick_repairs(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()
    aws.enforce()
    usurper = json.dumps({"holder": "tick-usurper", "expires_at": rfc3339(host_now().replace(microsecond=0) + timedelta(hours=1))})
    # Every request takes three seconds, and the lease is taken over (as another node
    # would once it presumed this tick dead) as the first AssumeRole arrives: the tick is
    # still waiting for the answers. The fence before each write must see it.
    usurp = lambda: aws.main.replace(LEASE, usurper)
    with Watcher(aws.url, "sts.AssumeRole", usurp, latency=3.0) as proxy:
        [process] = start_in_time([aws.main], aws.variables(keys, aws_endpoint_url=proxy.url), teams)
        fenced = process.finish(process.first_tick())
    assert [operation for _, operation in proxy.seen] == ["sts.GetCallerIdentity"] + ["sts.AssumeRole"] * 3, (
        "only the time and the three AssumeRole calls were asked"
    )
    assert fenced.rotated() == set()
    [lost] = fenced.of("lease_lost")
    assert "tick-usurper" in lost["reason"]
    assert fenced.errors, "a tick that lost its lease returns an error"
    assert {(e["team"], e["account"]) for e in fenced.of("account_deferred")} == set(WORKING)
    assert aws.secret_names() == [], "no secret is written past the fence"
    assert aws.store()[LEASE] == usurper, "the new holder's lease is left alone"
    # Nothing stored after the lease was lost: every account still carries the mark set
    # before any AWS call, so the next tick rewrites whole triples.
    states = [json.loads(aws.store()[f"state/{t}"]) for t in ("alpha", "beta")]
    assert [(a["incomplete"], a["written_at"]) for s in states for a in s["accounts"].values()] == [(True, None)] * 3

    repaired = tick(aws.main, aws.variables(keys), later_s=2 * HOUR)
    assert {(e["team"], e["account"], e["reason"]) for e in repaired.of("account_rotated")} == {
        (t, a, "incomplete") for t, a in WORKING
    }
    aws.assert_working(PATHS)


# 2. Idempotent writes


def versions(aws, name):
    sm = aws.admin_client("secretsmanager")
    return sm.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)["Versions"]


def version_counts(aws):
    return {name: len(versions(aws, name)) for name in aws.secret_names() if name.startswith("/concourse/")}


def rotate_losing_answers(aws, variables, dropped, teams=(), later_s=0):
    """One tick through a proxy that drops the answer of one accepted Secrets Manager
    write for each of `dropped` secrets; returns the run and the writes the proxy saw."""
    with DropWriteAnswers(aws.url, dropped) as proxy:
        run = tick(aws.main, dict(variables, SPIN_VARIABLE_AWS_ENDPOINT_URL=proxy.url), teams, later_s=later_s)
    assert proxy.injected == ["drop_answer"] * dropped, "the answers were not dropped"
    return run, proxy.writes


def assert_lost_answers_retried_with_their_token(writes):
    for i, lost in enumerate(writes):
        if not lost["dropped"]:
            continue
        again = [w for w in writes[i + 1 :] if w["secret"] == lost["secret"]]
        assert again, f"{lost['secret']}: the write whose answer was lost was not sent again"
        same = [w for w in writes if w["secret"] == lost["secret"]]
        assert {w["token"] for w in same} == {lost["token"]}, "every attempt carries the same ClientRequestToken"
    assert all(w["token"] for w in writes), "every write carries a ClientRequestToken"


@pytest.mark.component_logic
def test_a_write_whose_answer_was_lost_adds_no_second_version(aws):
    teams = three_accounts(aws)
    keys = aws.rotator()
    # The control: moto keeps one version per ClientRequestToken, and a write sent again
    # without the same token (boto3 draws a new one per call) adds a second version. So a
    # component that resent lost writes without a stable token would be counted here.
    # (Its values join the leak check as every secret's do: not words Spin prints, such as
    # Spin 4's "Preparing Wasm modules is taking a few seconds...".)
    sm = aws.admin_client("secretsmanager")
    older, newer = "control-value-1", "control-value-2"
    sm.create_secret(Name="control/tokens", SecretString=older, ClientRequestToken="c" * 32)
    sm.put_secret_value(SecretId="control/tokens", SecretString=newer, ClientRequestToken="d" * 32)
    sm.put_secret_value(SecretId="control/tokens", SecretString=newer, ClientRequestToken="d" * 32)
    assert len(versions(aws, "control/tokens")) == 2
    sm.put_secret_value(SecretId="control/tokens", SecretString=newer)
    assert len(versions(aws, "control/tokens")) == 3
    aws.enforce()
    variables = aws.variables(keys, secretsmanager_writes_per_second="0")

    # First rotation: the answers of four CreateSecret calls are lost.
    first, writes = rotate_losing_answers(aws, variables, 4, teams)
    assert first.rotated() == set(WORKING), first.output
    assert {w["operation"] for w in writes if w["dropped"]} == {"CreateSecret"}
    assert len([e for e in first.of("attempt_failed") if e["operation"] == "write_secret"]) == 4
    assert aws.secret_names() == sorted(SECRETS + ["control/tokens"])
    assert version_counts(aws) == {name: 1 for name in SECRETS}
    assert_lost_answers_retried_with_their_token(writes)
    aws.assert_working(PATHS)

    # Second rotation, when the credentials are due: four PutSecretValue answers lost.
    second, writes = rotate_losing_answers(aws, variables, 4, later_s=40 * MINUTE)
    assert {(e["team"], e["account"]) for e in second.of("account_rotated")} == set(WORKING), second.output
    assert {w["operation"] for w in writes if w["dropped"]} == {"PutSecretValue"}
    assert version_counts(aws) == {name: 2 for name in SECRETS}
    assert_lost_answers_retried_with_their_token(writes)
    aws.assert_working(PATHS)


# 3. Backing off from failures


@pytest.mark.component_logic
def test_a_failing_account_backs_off_shows_it_and_a_changed_document_tries_it_at_once(aws):
    denied = aws.ci_role(HOME_ACCOUNT, "unrelated-admin")  # outside the rotator's policy
    good = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    with FaultProxy(aws.url) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url, admin_token=TOKEN)

        first = tick(aws.main, variables, [team("gamma", account("denied", denied))])
        [failed] = first.of("account_failed")
        assert (failed["stage"], failed["code"], failed["permanent"], failed["retryable"]) == (
            "assume_role", "AccessDenied", True, False,
        )
        assert "next_attempt" not in failed, "the first failure is retried at the next tick"

        # A minute later: tried again, fails again, and now waits five minutes.
        second = tick(aws.main, variables, later_s=1 * MINUTE)
        [failed] = second.of("account_failed")
        assert failed["permanent"] is True
        next_attempt = at(failed["next_attempt"])
        assert abs((next_attempt - at(failed["time"])).total_seconds() - 5 * MINUTE) < 5
        calls = proxy.forwarded

        # Before that: skipped until then, without a call to AWS.
        early = tick(aws.main, variables, later_s=3 * MINUTE + 30)
        [skipped] = early.of("account_skipped")
        assert (skipped["account"], skipped["reason"], at(skipped["until"])) == ("denied", "backing_off", next_attempt)
        assert early.of("account_failed") == [] and early.errors == []
        assert proxy.forwarded == calls + 1, "an account backing off is not called (only the time is asked)"

        server, url = aws.serve(variables)
        try:
            status, body = aws.request("GET", f"{url}/teams/gamma/status", TOKEN)
        finally:
            aws.stop_serving(server)
        assert status == 200
        [state] = body["accounts"]
        assert at(state["next_attempt"]) == next_attempt
        assert (state["consecutive_failures"], state["last_error"]["code"], state["last_error"]["permanent"]) == (
            2, "AccessDenied", True,
        )

        # After it: tried again (and the wait doubles).
        after = tick(aws.main, variables, later_s=7 * MINUTE)
        [failed] = after.of("account_failed")
        assert proxy.forwarded > calls
        assert abs((at(failed["next_attempt"]) - at(failed["time"])).total_seconds() - 10 * MINUTE) < 5

        # The team's document changes (an account added): the backoff starts over, and the
        # failing account is tried in the very next tick.
        calls = proxy.forwarded
        changed = team("gamma", account("denied", denied), account("dev", good))
        reset = tick(aws.main, variables, [changed], later_s=8 * MINUTE)
    assert [(e["account"], e["code"]) for e in reset.of("account_failed")] == [("denied", "AccessDenied")]
    assert reset.of("account_skipped") == []
    assert reset.rotated() == {("gamma", "dev")}
    assert proxy.forwarded > calls
    aws.assert_working({"/concourse/gamma/dev": f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/gamma"})


@pytest.mark.component_logic
def test_throttling_that_outlasts_the_retries_is_not_permanent(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    with FaultProxy(aws.url, kinds=["throttle"], rate=1.0, spare=[THE_TIME]) as proxy:
        run = tick(aws.main, aws.variables(keys, aws_endpoint_url=proxy.url), [team("delta", account("dev", role))])
    # Three attempts, as the SDKs' standard mode, and three more after the tick's other
    # accounts: throttling passes by itself.
    assert proxy.injected == ["throttle"] * 6
    assert [e["attempt"] for e in run.of("attempt_failed")] == [1, 2, 3] * 2
    [failed] = run.of("account_failed")
    assert (failed["stage"], failed["code"], failed["retryable"], failed["permanent"]) == (
        "assume_role", "Throttling", True, False,
    )
    assert "next_attempt" not in failed


# 4. A shared store keeps what others wrote


def test_a_shared_redis_keeps_what_others_wrote_and_prunes_only_its_own_state(aws, redis):
    home, other = aws.ci_role(HOME_ACCOUNT), aws.ci_role(OTHER_ACCOUNT)
    teams = [team("alpha", account("dev", home)), team("beta", account("lab", other))]
    keys = aws.rotator()
    aws.enforce()
    foreign = {
        "state/ghost": '{"their":"document"}',  # a state-like document without our mark
        "state/beta": "not json",  # the state key of a registered team, not ours
        "unrelated/key": "another application's value",
    }
    for key, value in foreign.items():
        redis.command("SET", key, value)
    theirs = lambda: {key: redis.command("GET", key) for key in foreign}
    node = aws.node("redis-node", redis_runtime_config(aws.tmp_path, redis.url))
    variables = aws.variables(keys)
    lease = lambda: redis.command("GET", LEASE)

    first = tick(node, variables, teams, lease=lease)
    assert theirs() == foreign
    assert first.rotated() == {("alpha", "dev")}
    [failed] = first.of("account_failed")
    assert (failed["team"], failed["account"], failed["stage"]) == ("beta", "lab", "state")
    assert "state/beta" in failed["error"]
    assert json.loads(redis.command("GET", "state/alpha"))["writer"] == "concourse-sts"
    assert set(json.loads(redis.command("GET", LEASE))) == {"holder", "expires_at"}

    # Team alpha is removed: its state (ours) goes, nobody else's.
    redis.command("DEL", "team/alpha")
    second = tick(node, variables, lease=lease)
    assert [e["team"] for e in second.of("team_removed")] == ["alpha"]
    assert [(e["team"], e["stage"]) for e in second.of("account_failed")] == [("beta", "state")]
    contents = redis.contents()
    assert "state/alpha" not in contents
    assert theirs() == foreign
    # Besides: the deployment's counters and its last tick's record (README, "Metrics").
    assert set(contents) == set(foreign) | {"team/beta", LEASE, "metrics/counters", "metrics/last_tick"}
    assert all(aws.triple("/concourse/alpha/dev")), "a removed team's secrets stay"


# 5. Store commits do not grow with accounts


def sync_shim(directory):
    """tests/bench/slow_sync.c built as the benchmark builds it: an LD_PRELOAD shim that
    logs every fsync/fdatasync with the path it syncs."""
    shim = directory / "slow_sync.so"
    source = ROOT / "tests" / "bench" / "slow_sync.c"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], check=True, timeout=120)
    return shim


def teams_of(accounts, role, count=3):
    """`accounts` accounts spread over `count` teams (the same number of team documents
    whatever the number of accounts)."""
    names = [f"team-{i}" for i in range(count)]
    members = {name: [] for name in names}
    for i in range(accounts):
        members[names[i % count]].append(account(f"acct-{i:02d}", role))
    return [team(name, *found) for name, found in members.items()]


def scheduled_instant(node, events):
    """When the cron plugin fired the run's tick: the second its one-shot schedule names
    (spin.py writes it into the node's manifest copy), last reached before the tick's
    first line."""
    [second] = re.findall(r'^cron_expression = "(\d+) \* \* \* \* \*"$', (node.directory / "spin.toml").read_text(), re.M)
    instant = at(events[0]["time"]).replace(microsecond=0)
    while instant.second != int(second):
        instant -= timedelta(seconds=1)
    return instant.timestamp()


def test_store_commits_per_tick_do_not_grow_with_accounts(aws):
    """Spin's SQLite store (the default) syncs the database file itself exactly once per
    committed write transaction in its rollback-journal mode (README, "Counting store
    commits"), so the syncs of sqlite_key_value.db that the benchmark's LD_PRELOAD shim
    logs are the store's commits: those before the scheduled second are `--key-value`
    writing the team documents, those after it the tick's."""
    shim = sync_shim(aws.tmp_path)
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    commits = {}
    for accounts in (3, 40):
        node = aws.node(f"commits-{accounts}")
        log = node.directory / "syncs.log"
        variables = aws.variables(keys, secretsmanager_writes_per_second="0")
        variables.update(LD_PRELOAD=str(shim), BENCH_SYNC_LOG=str(log))
        run = tick(node, variables, teams_of(accounts, role))
        assert len(run.rotated()) == accounts, run.output
        assert {key for key in node.store() if key.startswith("state/")} == {f"state/team-{i}" for i in range(3)}
        database = str(node.state / "sqlite_key_value.db")
        syncs = [line.split() for line in log.read_text().splitlines()]
        times = [int(fields[0]) / 1e9 for fields in syncs if fields[-1] == database]
        fired = scheduled_instant(node, run.events)
        before = len([t for t in times if t < fired])
        # A tick also stores its outcomes every 10 s it runs (README): not per account.
        [finished] = run.of("tick_finished")
        flushes = finished["elapsed_ms"] // 10_000
        commits[accounts] = {"team documents": before, "tick": len(times) - before - flushes}
    # The counter counts: each of the three team documents `--key-value` wrote is a commit
    # of its own (and the first also creates the table).
    assert commits[3]["team documents"] >= 3, commits
    assert commits[40] == commits[3], commits
    # Taking the lease, marking the due accounts, storing the outcomes, releasing: at
    # least the lease and the state documents the tick wrote, at most those four.
    assert 2 <= commits[3]["tick"] <= 4, commits


@pytest.mark.component_logic
def test_a_registered_teams_state_key_holding_someone_elses_json_is_left_alone(aws):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = aws.rotator()
    aws.enforce()
    theirs = '{"their":"document"}'
    run = tick(aws.main, aws.variables(keys), [team("gamma", account("dev", role))], raw=[("state/gamma", theirs)])
    assert aws.store()["state/gamma"] == theirs
    assert [(e["account"], e["stage"]) for e in run.of("account_failed")] == [("dev", "state")]
