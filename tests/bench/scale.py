"""The benchmark's scale mode (scripts/bench runs it through the Rust driver, which puts
its figures into the one JSON line): 2,000 teams and 10,000 accounts under the real
`spin up`, on Spin's default SQLite store and on Redis.

- idle: the teams are registered with `--key-value` (teams of five accounts) and rotated
  by one real tick against the driver's fast fake AWS (no latency, write pace lifted).
  Then a second `spin up` on the same store runs two ticks a minute apart, every account
  written minutes ago: the second (warm) tick's own `elapsed_ms` is the figure, and it
  must make no AWS call;
- status: that store's admin API, `GET /teams/<team>/status` of one team, median of five
  after one unmeasured call, from the request to the body's last byte;
- busy: on a fresh SQLite store, all 10,000 accounts due at once (registered, never
  written) against the fake enforcing Secrets Manager's 50 writes a second and answering
  `ThrottlingException` beyond, the component at its defaults (write pace, tick budget,
  concurrency): ticks one after another until every account is rotated. How many ticks,
  each one's time, and how many writes the fake throttled.

Prints its progress on stderr, then on stdout human lines and, as its last line, one JSON
object.
"""

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from redis_store import RedisServer  # noqa: E402
from scrape import documents, start_fake  # noqa: E402
from spin import TICK_ENDS, SpinNode, find_spin, redis_runtime_config, start_in_time  # noqa: E402

TOKEN = "bench-admin-token"
# Secrets Manager's write quota, which the fake enforces in the busy mode.
AWS_WRITE_QUOTA = 50
# The longest the busy mode goes on: a tick that rotates nothing means it never will.
BUSY_TICKS_AT_MOST = 20
# Spin's SQLite store (crates/key-value-spin, Spin 3.5), created the same way.
SQLITE_SCHEMA = """CREATE TABLE IF NOT EXISTS spin_key_value (
    store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key))"""


def variables(port, paced):
    """The application variables of a node against the fake on `port`."""
    chosen = {
        "SPIN_VARIABLE_AWS_ACCESS_KEY_ID": "AKIDBENCHBENCHBENCH0",
        "SPIN_VARIABLE_AWS_SECRET_ACCESS_KEY": "bench-rotator-secret",
        "SPIN_VARIABLE_AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "SPIN_VARIABLE_ALLOWED_ENDPOINT_OVERRIDE": "http://127.0.0.1:*",
        "SPIN_VARIABLE_ADMIN_TOKEN": TOKEN,
    }
    if not paced:
        chosen.update(
            {
                "SPIN_VARIABLE_MAX_CONCURRENCY": "64",
                "SPIN_VARIABLE_TICK_BUDGET": "60m",
                "SPIN_VARIABLE_SECRETSMANAGER_WRITES_PER_SECOND": "0",
            }
        )
    return chosen


def fake_stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as answer:
        return json.loads(answer.read())


def ends(events):
    """The line that ended each tick so far, in order."""
    return [e for e in events if e.get("event") in TICK_ENDS]


def timed_get(url, path):
    """Milliseconds from the request to the answer's last byte."""
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        answer.read()
    return (time.perf_counter() - started) * 1000


def entries(teams):
    """The teams' keys and documents, as `--key-value` stores them."""
    return [(f"team/{team['name']}", json.dumps(team)) for team in teams]


def register_sqlite(node, teams):
    """The teams in the node's SQLite store, in one transaction before Spin opens it.
    Not through `--key-value`: with 2,000 pairs, each its own commit, `spin up` stopped
    here with "failed to set key-value pair: database is locked" ("A trigger exited
    unexpectedly"), each of its two trigger processes being handed the pairs."""
    node.state.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(node.state / "sqlite_key_value.db") as db:
        db.execute(SQLITE_SCHEMA)
        rows = [(key, text.encode()) for key, text in entries(teams)]
        db.executemany("INSERT INTO spin_key_value VALUES ('default', ?, ?)", rows)


def rotate_all(node, chosen, accounts):
    """Rotates every registered account in one tick; its `tick_finished`."""
    [process] = start_in_time([node], chosen)
    finished = process.first_tick()[-1]
    process.stop()
    if finished.get("event") != "tick_finished" or finished["rotated"] != accounts:
        sys.exit(f"the tick did not rotate every account: {finished}")
    return finished


def idle_and_status(node, chosen, port, team):
    """A warm idle tick's `elapsed_ms`, and the median status call, on `node`'s store."""
    calls = fake_stats(port)
    [process] = start_in_time([node], chosen)
    process.wait_for(lambda: len(ends(process.events())) >= 2, "a second tick", 180)
    warm = ends(process.events())[1]
    process.stop()
    if warm.get("event") != "tick_finished" or warm["rotated"] != 0:
        sys.exit(f"the tick after the rotation was not idle: {warm}")
    if fake_stats(port) != calls:
        sys.exit("an idle tick called AWS")
    served = node.serve(chosen)
    try:
        timed_get(served.url, f"/teams/{team}/status")
        status = [timed_get(served.url, f"/teams/{team}/status") for _ in range(5)]
    finally:
        served.stop()
    return warm["elapsed_ms"], statistics.median(status)


def idle_mode(spin, work, store, teams, accounts, driver):
    """Registration, rotation, a warm idle tick and status calls on one store."""
    fake, port = start_fake(driver)
    try:
        with registered(spin, work, store, teams) as node:
            chosen = variables(port, paced=False)
            print(f"scale mode ({store}): {len(teams)} teams, {accounts} accounts, rotated once", file=sys.stderr)
            rotated = rotate_all(node, chosen, accounts)
            idle_ms, status_ms = idle_and_status(node, chosen, port, teams[0]["name"])
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    print(
        f"scale mode, {store}: {len(teams)} teams / {accounts} accounts: idle tick {idle_ms} ms,"
        f" GET /teams/<team>/status {status_ms:.0f} ms (median of 5);"
        f" the tick that first rotated them {rotated['elapsed_ms'] / 1000:.1f} s"
    )
    return {
        f"spin_idle_10k_ms_{store}": idle_ms,
        f"spin_status_10k_ms_{store}": round(status_ms, 1),
        f"spin_rotate_10k_s_{store}": round(rotated["elapsed_ms"] / 1000, 1),
    }


@contextlib.contextmanager
def registered(spin, work, store, teams):
    """A node whose store holds `teams`: Spin's default SQLite store, or a redis-server of
    this mode's own (the teams set with one MSET), stopped afterwards."""
    if store == "sqlite":
        node = SpinNode(spin, work / store, outputs=[])
        register_sqlite(node, teams)
        yield node
        return
    server = RedisServer(work)
    try:
        server.command("MSET", *[word for entry in entries(teams) for word in entry])
        yield SpinNode(spin, work / store, outputs=[], runtime_config=redis_runtime_config(work, server.url))
    finally:
        server.stop()


def busy_mode(spin, work, teams, accounts, driver):
    """Every account due at once at AWS's write quota: ticks until all are rotated."""
    fake, port = start_fake(driver, "--quota", str(AWS_WRITE_QUOTA))
    ticks = []
    try:
        node = SpinNode(spin, work / "busy", outputs=[])
        register_sqlite(node, teams)
        chosen = variables(port, paced=True)
        rotated = 0
        while rotated < accounts and len(ticks) < BUSY_TICKS_AT_MOST:
            print(f"scale mode (busy): tick {len(ticks) + 1}, {rotated} of {accounts} rotated", file=sys.stderr)
            run = node.run(chosen)
            finished = run.of("tick_finished")[-1]
            ticks.append(finished)
            # First rotations only: from the second tick on, the first credentials of
            # the accounts written early come due too (spread from ten minutes on).
            first = [e for e in run.of("account_rotated") if e["reason"] == "never_written"]
            rotated += len(first)
            if not first:
                break
        throttled = fake_stats(port)["throttled"]
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    seconds = [round(t["elapsed_ms"] / 1000, 1) for t in ticks]
    print(
        f"scale mode, busy: {accounts} accounts due at once at {AWS_WRITE_QUOTA} writes/s: {rotated} rotated"
        f" in {len(ticks)} ticks of {', '.join(map(str, seconds))} s; {throttled} writes throttled"
    )
    return {
        "spin_busy_10k_ticks": len(ticks) if rotated == accounts else None,
        "spin_busy_10k_tick_s": seconds,
        "spin_busy_10k_throttled": throttled,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver", required=True, help="the concourse-sts-bench binary (its fake AWS)")
    parser.add_argument("--teams", type=int, default=2000)
    parser.add_argument("--accounts-per-team", type=int, default=5)
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--skip-busy", action="store_true", help="skip the busy ticks (about a quarter of an hour)")
    args = parser.parse_args()
    spin, problem = find_spin()
    if spin is None:
        sys.exit(problem)
    teams = documents(args.teams, args.accounts_per_team, prefix="scale")
    accounts = args.teams * args.accounts_per_team
    figures = {"scale_teams": args.teams, "scale_accounts": accounts}
    stores = ["sqlite"] + ([] if args.skip_redis else ["redis"])
    with tempfile.TemporaryDirectory(prefix="concourse-sts-scale.") as work:
        for store in stores:
            figures |= idle_mode(spin, Path(work), store, teams, accounts, args.driver)
        if not args.skip_busy:
            figures |= busy_mode(spin, Path(work), teams, accounts, args.driver)
    print(f"scale mode: load average {os.getloadavg()[0]:.2f} at the end")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
