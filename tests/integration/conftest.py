"""Fixtures: the real Spin and one moto_server per session (behind the world's clock,
world.py), a fresh AWS world per test,
and after each test a check that no credential value reached anything spin printed, the
components logged, the admin API answered or the key-value store holds."""

import json

import pytest

from emulator import HOST, Emulator, start_moto_server
from redis_store import RedisServer
from spin import WASM, find_spin
from world import AwsFront


@pytest.fixture(scope="session")
def spin():
    path, problem = find_spin()
    if path is None:
        pytest.exit(problem, 2)
    return path


@pytest.fixture(scope="session")
def moto_url(spin, tmp_path_factory):
    for artifact in (WASM, HOST):
        if not artifact.exists():
            pytest.exit(f"{artifact} is missing: run scripts/test, which builds it", 2)
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
