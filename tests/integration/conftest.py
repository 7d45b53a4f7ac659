"""Fixtures: the real Spin, in both generations, and one moto_server per session (behind
the world's clock, world.py), a fresh AWS world per test, and after each test a check that no credential value reached anything
spin printed, the components logged, the admin API answered or the key-value store holds.

Every test that uses `aws` runs once per Spin generation (ids `spin3`, `spin4`), unless
it is marked:

- `spin3_only(reason)` or `spin4_only(reason)`: it cannot run on the other generation
  (Spin 3.5 has no command trigger);
- `component_logic`: it checks the component's own decisions (templates, names, retries,
  backoff, leases, identity selection) with nothing of the host in play that the
  scenarios running on both generations do not already exercise (the cron trigger and
  its overlapping ticks, the HTTP trigger, the SQLite and Redis stores, outbound HTTP and
  its errors, `allowed_outbound_hosts`, the metadata endpoints, stopping and restarting
  `spin up`). It runs on Spin 3.5 only, which keeps scripts/test under 30 minutes on two
  cores; `pytest --every-generation` runs it on Spin 4 too.

On the generation it does not run on, a test is skipped with its reason, which
`pytest -rs` prints. A generation that is not available (neither SPIN<major>_BIN nor
the `spin` on PATH) stops the session, as a missing Spin always has: a run without the
real host is not a pass."""

import json

import pytest

from emulator import Emulator, start_moto_server
from redis_store import RedisServer
from spin import WASM, find_spin
from world import AwsFront

GENERATIONS = ("3", "4")
NAMES = {"3": "Spin 3.5", "4": "Spin 4"}


COMPONENT_LOGIC = (
    "component logic, no host behaviour the scenarios run on both generations leave out; "
    "run once, on Spin 3.5, to keep scripts/test under 30 minutes on 2 cores "
    "(pytest --every-generation runs it here too)"
)


def pytest_addoption(parser):
    parser.addoption(
        "--every-generation",
        action="store_true",
        help="run component_logic scenarios on Spin 4 as well as on Spin 3.5",
    )


def pytest_configure(config):
    for major in GENERATIONS:
        config.addinivalue_line(
            "markers", f"spin{major}_only(reason): runs on {NAMES[major]} only; the reason says why not on the other"
        )
    config.addinivalue_line("markers", f"component_logic: runs on Spin 3.5 only: {COMPONENT_LOGIC}")


def pytest_collection_modifyitems(config, items):
    """Skips a scenario on the generation it does not run on, with the reason."""
    every_generation = config.getoption("--every-generation")
    for item in items:
        generation = getattr(item, "callspec", None) and item.callspec.params.get("spin")
        if generation is None:
            continue
        reason = generation_skipped(item, generation, every_generation)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def generation_skipped(item, generation, every_generation):
    """Why `item` does not run on `generation`, or None when it does."""
    for major in GENERATIONS:
        marker = item.get_closest_marker(f"spin{major}_only")
        if marker is not None and generation != major:
            return f"{NAMES[major]} only: {marker.kwargs.get('reason') or marker.args[0]}"
    if item.get_closest_marker("component_logic") and generation != "3" and not every_generation:
        return f"{NAMES['3']} only: {COMPONENT_LOGIC}"
    return None


@pytest.fixture(scope="session", params=GENERATIONS, ids=lambda major: f"spin{major}")
def spin(request):
    """The Spin generation this test runs on (spin.Generation)."""
    generation, problem = find_spin(request.param)
    if generation is None:
        pytest.exit(problem, 2)
    return generation


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    if not WASM.exists():
        pytest.exit(f"{WASM} is missing: run scripts/test, which builds it", 2)
    with open(tmp_path_factory.mktemp("moto") / "moto.log", "w") as log:
        server, url = start_moto_server(log)
        with AwsFront(url) as front:
            yield front.url
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def aws(moto_url, spin, tmp_path):
    """A fresh AWS world; afterwards, stops what still runs and proves no credential
    reached the output or the store."""
    emulator = Emulator(moto_url, tmp_path, spin)
    try:
        yield emulator
    finally:
        emulator.close()
    secrets = emulator.issued_credentials()
    assert secrets, "moto issued no credentials to look for"
    kept = "\n".join(emulator.outputs + [json.dumps(node.store()) for node in emulator.nodes])
    # A count, not the list: pytest would print the values it found.
    leaked = sum(1 for s in secrets if s in kept)
    assert leaked == 0, f"{leaked} credential values appear in the output or the store"


@pytest.fixture
def redis(aws, tmp_path):
    """A redis-server of this test's own; its contents join the leak check."""
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        aws.close()
        aws.outputs.append(json.dumps(server.contents()))
        server.stop()
