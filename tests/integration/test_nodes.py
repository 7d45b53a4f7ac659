"""Several nodes: two `spin up` processes sharing one key-value store, ticking on the same
schedule. On Redis, as runtime-config.toml's example configures it, for several
machines, where Spin's compare-and-swap answers lie (DESIGN.md, "Spin's Redis store and
compare-and-swap") and the lease holds by reading the key back; and on one SQLite file
shared by two processes of one machine."""

import json

from emulator import HOME_ACCOUNT, OTHER_ACCOUNT, account, team
from faults import FaultProxy
from spin import redis_runtime_config, sqlite_store, start_in_time

WORKING = {
    ("alpha", "dev"): f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("alpha", "prod"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("beta", "lab"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/beta",
}


def two_nodes_tick_at_once(aws, runtime_config):
    """Both nodes' first ticks, started on the same second; returns their runs."""
    home, other = aws.ci_role(HOME_ACCOUNT), aws.ci_role(OTHER_ACCOUNT)
    teams = [team("alpha", account("dev", home), account("prod", other)), team("beta", account("lab", other))]
    keys = aws.rotator()
    aws.enforce()
    nodes = [aws.node("node-a", runtime_config), aws.node("node-b", runtime_config)]
    # Each request takes a second, so a tick lasts seconds: the two nodes' ticks, started
    # on the same second, overlap however late one of them starts.
    with FaultProxy(aws.url, kinds=["latency"], rate=1.0, latency=1.0) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url)
        processes = start_in_time(nodes, variables, teams)
        return [process.finish(process.first_tick()) for process in processes]


def assert_rotated_once_across(aws, runs):
    assert not any(run.trapped for run in runs)
    rotated = sorted((e["team"], e["account"]) for run in runs for e in run.of("account_rotated"))
    assert rotated == sorted(WORKING), "every account rotated exactly once across both nodes"
    assert sorted(len(run.of("lease_busy")) for run in runs) == [0, 1], "the other node found the lease taken"
    assert [run.errors for run in runs] == [[], []]
    aws.assert_working({f"/concourse/{t}/{a}": arn for (t, a), arn in WORKING.items()})


def test_two_nodes_on_one_redis_rotate_every_account_exactly_once(aws, redis):
    runs = two_nodes_tick_at_once(aws, redis_runtime_config(aws.tmp_path, redis.url))
    assert {key for key in redis.contents() if key.startswith("team/")} == {"team/alpha", "team/beta"}
    assert_rotated_once_across(aws, runs)


def test_two_processes_on_one_sqlite_file_rotate_every_account_exactly_once(aws):
    database = aws.tmp_path / "shared.db"
    shared = aws.tmp_path / "shared.toml"
    shared.write_text(f'[key_value_store.default]\ntype = "spin"\npath = "{database}"\n')
    runs = two_nodes_tick_at_once(aws, shared)
    aws.outputs.append(json.dumps(sqlite_store(database)))
    assert "lease/rotation" in sqlite_store(database)
    assert_rotated_once_across(aws, runs)
