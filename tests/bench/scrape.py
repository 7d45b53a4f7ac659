"""The benchmark's scrape mode (scripts/bench runs it through the Rust driver, which puts
its figures into the one JSON line): GET /metrics of a deployment of 2,000 teams and
10,000 accounts on Spin's default SQLite store, under the real `spin up`.

The teams are registered with `--key-value` (teams of five accounts) and rotated by one
real tick against the benchmark's fast fake AWS (`concourse-sts-bench --serve-fake`, no
latency), so that every account has the state a rotation leaves. Then the same node
serves the admin API (a second `spin up` on the same state directory, as a restarted
node would) and /metrics is fetched: one unmeasured scrape to warm the instance, then
`--scrapes` measured ones, each timed from the request to the body's last byte.

Prints its progress on stderr, then on stdout one human line and, as its last line, one
JSON object.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from spin import SpinNode, find_spin, start_in_time  # noqa: E402

TOKEN = "bench-metrics-token"


def documents(teams, per_team, prefix="scrape"):
    return [
        {
            "name": f"{prefix}-{t:04d}",
            "accounts": [
                {"name": f"acct-{a}", "roleArn": f"arn:aws:iam::123456789012:role/{prefix}-{t}-{a}"}
                for a in range(per_team)
            ],
        }
        for t in range(teams)
    ]


def start_fake(driver, *flags):
    """The driver's fake AWS on a free port, answering at once (`flags`: its own, such as
    `--quota 50`)."""
    fake = subprocess.Popen([driver, "--serve-fake", "--latency-ms", "0", *flags], stdout=subprocess.PIPE, text=True)
    return fake, int(fake.stdout.readline())


def scrape(url):
    """Milliseconds from the request to the last byte, and the body."""
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        body = answer.read()
    return (time.perf_counter() - started) * 1000, body


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver", required=True, help="the concourse-sts-bench binary (its fake AWS)")
    parser.add_argument("--teams", type=int, default=2000)
    parser.add_argument("--accounts-per-team", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=5)
    args = parser.parse_args()
    spin, problem = find_spin()
    if spin is None:
        sys.exit(problem)
    accounts = args.teams * args.accounts_per_team
    fake, port = start_fake(args.driver)
    try:
        with tempfile.TemporaryDirectory(prefix="concourse-sts-scrape.") as work:
            node = SpinNode(spin, Path(work) / "node", outputs=[])
            variables = {
                "SPIN_VARIABLE_AWS_ACCESS_KEY_ID": "AKIDBENCHBENCHBENCH0",
                "SPIN_VARIABLE_AWS_SECRET_ACCESS_KEY": "bench-rotator-secret",
                "SPIN_VARIABLE_AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "SPIN_VARIABLE_ALLOWED_ENDPOINT_OVERRIDE": "http://127.0.0.1:*",
                "SPIN_VARIABLE_MAX_CONCURRENCY": "64",
                "SPIN_VARIABLE_TICK_BUDGET": "60m",
                "SPIN_VARIABLE_SECRETSMANAGER_WRITES_PER_SECOND": "0",
                "SPIN_VARIABLE_METRICS_TOKEN": TOKEN,
            }
            print(f"scrape mode: registering {args.teams} teams, {accounts} accounts, and rotating them once", file=sys.stderr)
            [process] = start_in_time([node], variables, documents(args.teams, args.accounts_per_team))
            events = process.first_tick()
            process.stop()
            finished = events[-1]
            if finished.get("event") != "tick_finished" or finished["rotated"] != accounts:
                sys.exit(f"the tick did not rotate every account: {finished}")
            served = node.serve(variables)
            try:
                scrape(served.url)
                timings, body = [], b""
                for _ in range(args.scrapes):
                    elapsed, body = scrape(served.url)
                    timings.append(elapsed)
            finally:
                served.stop()
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    median = statistics.median(timings)
    load = os.getloadavg()[0]
    print(
        f"scrape mode: GET /metrics of {args.teams} teams / {accounts} accounts (SQLite) in {median:.0f} ms"
        f" (median of {args.scrapes}: {', '.join(f'{t:.0f}' for t in timings)} ms), {len(body)} bytes,"
        f" {series} series; the tick that rotated them took {finished['elapsed_ms']} ms; load average {load:.2f}"
    )
    figures = {
        "metrics_scrape_ms": round(median, 1),
        "metrics_scrape_bytes": len(body),
        "metrics_scrape_series": series,
        "metrics_scrape_teams": args.teams,
        "metrics_scrape_accounts": accounts,
    }
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
