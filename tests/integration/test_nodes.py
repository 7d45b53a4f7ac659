"""Several nodes: two `spin up` processes sharing one Redis as their key-value store, as
runtime-config.toml's Redis example configures them, ticking on the same schedule."""

import pytest

from emulator import HOME_ACCOUNT, OTHER_ACCOUNT, account, team
from faults import FaultProxy
from spin import redis_runtime_config, start_in_time

WORKING = {
    ("alpha", "dev"): f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("alpha", "prod"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("beta", "lab"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/beta",
}


@pytest.mark.xfail(
    strict=True,
    reason="Spin's Redis store answers every compare-and-swap with CasFailed after writing "
    "(DESIGN.md, 'Spin's Redis store and compare-and-swap'), so both nodes log lease_busy and "
    "nothing is rotated; fixed by issue #10's lease, which reads the key back",
)
def test_two_nodes_on_one_redis_rotate_every_account_exactly_once(aws, redis):
    home, other = aws.ci_role(HOME_ACCOUNT), aws.ci_role(OTHER_ACCOUNT)
    teams = [team("alpha", account("dev", home), account("prod", other)), team("beta", account("lab", other))]
    keys = aws.rotator()
    aws.enforce()
    config = redis_runtime_config(aws.tmp_path, redis.url)
    nodes = [aws.node("node-a", config), aws.node("node-b", config)]
    # Each request takes a second, so a tick lasts seconds: the two nodes' ticks, started
    # on the same second, overlap however late one of them starts.
    with FaultProxy(aws.url, kinds=["latency"], rate=1.0, latency=1.0) as proxy:
        variables = aws.variables(keys, aws_endpoint_url=proxy.url)
        processes = start_in_time(nodes, variables, teams)
        runs = [process.finish(process.first_tick()) for process in processes]
    assert not any(run.trapped for run in runs)
    assert {key for key in redis.contents() if key.startswith("team/")} == {"team/alpha", "team/beta"}
    rotated = sorted((e["team"], e["account"]) for run in runs for e in run.of("account_rotated"))
    assert rotated == sorted(WORKING), "every account rotated exactly once across both nodes"
    assert sorted(len(run.of("lease_busy")) for run in runs) == [0, 1], "the other node found the lease taken"
    assert [run.errors for run in runs] == [[], []]
    aws.assert_working({f"/concourse/{t}/{a}": arn for (t, a), arn in WORKING.items()})
