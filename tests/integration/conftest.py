"""Fixtures: one moto_server per session, a fresh AWS world per test, and after each test
a check that no credential value reached anything the host printed."""

import pytest

from emulator import HOST, WASM, Emulator, start_moto_server


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    for artifact in (WASM, HOST):
        if not artifact.exists():
            pytest.exit(f"{artifact} is missing: run scripts/test, which builds it", 2)
    with open(tmp_path_factory.mktemp("moto") / "moto.log", "w") as log:
        server, url = start_moto_server(log)
        yield url
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def aws(moto_url, tmp_path):
    """A fresh AWS world; afterwards, proves no credential reached the host's output."""
    emulator = Emulator(moto_url, tmp_path)
    yield emulator
    secrets = emulator.issued_credentials()
    assert secrets, "moto issued no credentials to look for"
    printed = "\n".join(emulator.outputs)
    leaked = [s for s in secrets if s in printed]
    assert not leaked, f"{len(leaked)} credential values appear in the host's output"
