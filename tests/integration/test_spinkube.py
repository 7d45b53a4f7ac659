"""The rotation on SpinKube's runtime: the image pushed with `spin registry push` from the
shipped deploy/spinkube/spin-command.toml, run by containerd's Spin shim exactly as the
CronJob in deploy/spinkube/cronjob-rotate.yaml runs it (its environment, its command, the
runtime config from the Secret in runtime-config-secret.yaml at /runtime-config.toml, the
rotator's keys from the Vault that config names), against moto_server with SigV4 and IAM
checked. What is run is read from those files (spinkube.py), so a change there that would
break a cluster breaks a test here. containerd starts once per session; a pod takes
about a second."""

import pytest

from emulator import HOME_ACCOUNT, OTHER_ACCOUNT, account, digest, team, three_accounts
from faults import THE_TIME, Rendezvous
from spinkube import FAILED_STATUS, Cluster, PushedImage, SpinKubeNode, missing_tools

WORKING = {
    ("alpha", "dev"): f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("alpha", "prod"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("beta", "lab"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/beta",
}
PATHS = {f"/concourse/{t}/{a}": arn for (t, a), arn in WORKING.items()}


@pytest.fixture(scope="session")
def image(spin, tmp_path_factory):
    """The image in a registry of the session's own."""
    problem = missing_tools()
    if problem:
        pytest.exit(problem, 2)
    image = PushedImage(tmp_path_factory.mktemp("registry"), spin)
    yield image
    image.stop()


def start_node(image, tmp_path_factory, name):
    return SpinKubeNode(tmp_path_factory.mktemp(name, numbered=False), image)


@pytest.fixture(scope="session")
def node(image, tmp_path_factory):
    """containerd with the Spin shim, the image pulled: once per session."""
    node = start_node(image, tmp_path_factory, "node-a")
    yield node
    node.stop()


@pytest.fixture(scope="session")
def other_node(image, tmp_path_factory):
    """A second node, for pods that start at the same moment (see the test using it)."""
    node = start_node(image, tmp_path_factory, "node-b")
    yield node
    node.stop()


@pytest.fixture
def cluster(aws, redis, node, tmp_path):
    cluster = Cluster(node, aws, redis, tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


def rotating(cluster, aws, teams):
    """The usual world: `teams` registered, the rotator's keys in Vault, moto enforcing."""
    cluster.rotator()
    aws.enforce()
    cluster.register(teams)


def test_a_pod_rotates_every_account_and_the_next_pod_skips_them(cluster, aws):
    rotating(cluster, aws, three_accounts(aws))
    first = cluster.run()
    assert first.returncode == 0, first.output
    assert first.rotated() == set(WORKING), first.output
    aws.assert_working(PATHS)
    written = digest([aws.triple(path) for path in PATHS])

    second = cluster.run()
    assert second.returncode == 0, second.output
    assert second.rotated() == set()
    skipped = {(e["team"], e["account"]): e["reason"] for e in second.of("account_skipped")}
    assert skipped == {key: "written_recently" for key in WORKING}
    assert digest([aws.triple(path) for path in PATHS]) == written, "nothing rewritten"
    assert {key for key in cluster.redis.contents() if key.startswith("state/")} == {"state/alpha", "state/beta"}


def test_a_failing_account_fails_the_pod_and_only_that_account(cluster, aws):
    denied = aws.ci_role(HOME_ACCOUNT, "unrelated-admin")
    working = aws.ci_role(HOME_ACCOUNT)
    rotating(cluster, aws, [team("alpha", account("dev", working), account("denied", denied))])
    run = cluster.run()
    assert run.returncode == FAILED_STATUS, run.output
    assert run.rotated() == {("alpha", "dev")}
    [failed] = run.of("account_failed")
    assert (failed["account"], failed["code"]) == ("denied", "AccessDenied")
    aws.assert_working({"/concourse/alpha/dev": WORKING[("alpha", "dev")]})
    assert aws.written("/concourse/alpha/denied") == []


# The second case: the shim also makes a container variable named like an app variable,
# upper-cased and without the prefix, into that app variable, over SPIN_VARIABLE_<NAME>.
@pytest.mark.parametrize(
    "env",
    [{"SPIN_VARIABLE_MAX_CONCURRENCY": "abc"}, {"SPIN_VARIABLE_MAX_CONCURRENCY": "8", "MAX_CONCURRENCY": "abc"}],
    ids=["prefixed", "plain-name-wins"],
)
def test_a_bad_variable_fails_the_pod_before_any_aws_call(cluster, aws, env):
    rotating(cluster, aws, three_accounts(aws))
    run = cluster.run(**env)
    assert run.returncode == FAILED_STATUS, run.output
    [failure] = run.of("tick_failed")
    assert "max_concurrency" in failure["error"]
    assert run.rotated() == set()
    assert aws.all_secret_values() == []


def test_two_pods_at_once_on_one_redis_rotate_every_account_once(cluster, aws, other_node):
    """Two pods started at the same moment on two nodes sharing the Redis store, as two
    clusters sharing one store, or a Job started by hand beside the CronJob's. On two
    nodes, because two pods of one image starting together on one node race in the shim
    (deploy/README.md: one of them fails with 137 before the component runs)."""
    rotating(cluster, aws, three_accounts(aws))
    # Both pods first ask AWS the time: they meet there, however late the second one
    # starts, and each answer then takes a second, so their ticks overlap.
    with Rendezvous(aws.url, THE_TIME, 2, latency=1.0) as proxy:
        pods = [cluster.start(proxy.url), cluster.start(proxy.url, node=other_node)]
        runs = [cluster.finish(pod) for pod in pods]
    assert [run.returncode for run in runs] == [0, 0], [run.output for run in runs]
    rotated = sorted(key for run in runs for key in run.rotated())
    assert rotated == sorted(WORKING), "every account rotated exactly once across both pods"
    assert sorted(len(run.of("lease_busy")) for run in runs) == [0, 1]
    aws.assert_working(PATHS)


def test_vault_unreachable_fails_the_pod(cluster, aws):
    """Spin asks the runtime config's Vault for every variable before the environment, and
    an error from Vault is the variable's error: a Vault outage is a failed Job."""
    rotating(cluster, aws, three_accounts(aws))
    cluster.vault.stop()
    run = cluster.run()
    assert run.returncode == FAILED_STATUS, run.output
    [failure] = run.of("tick_failed")
    assert "Vault" in failure["error"]
    assert aws.all_secret_values() == []


def test_without_the_runtime_config_a_pod_has_an_empty_store_of_its_own(cluster, aws):
    """The shim has no --state-dir: the default store is SQLite in the container's
    writable layer, which no other pod sees, and which the CronJob's pods lose."""
    rotating(cluster, aws, three_accounts(aws))
    run = cluster.run(files={})
    assert run.returncode == 0, run.output
    assert 'Storing default key-value data to "/.spin/sqlite_key_value.db"' in run.output
    [finished] = run.of("tick_finished")
    assert finished["accounts"] == 0
    assert set(cluster.redis.contents()) == {"team/alpha", "team/beta"}, "the shared store untouched"
