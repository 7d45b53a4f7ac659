"""scripts/soak: months of operation squeezed into minutes, on the real Spin.

Two (or --nodes N) `spin up` nodes of the project's own manifest (the harness's copy with
a ten-second schedule) share one redis-server run as an operator would (append-only
file on). AWS is moto_server with signature and IAM checking on, behind the fault proxy
(--fault-rate of the requests fail in one of its ways; every answer delayed --delay
seconds). Teams are registered one by one over most of the run; each has two
accounts with 900-second credentials (the AWS minimum), rotated 5 minutes before expiry
(the shortest the rules allow for them), written in both formats. Meanwhile the chaos
driver (chaos.py) kills, freezes and restarts nodes, restarts Redis, runs nodes with
their clocks off and plays a newer version's rolling upgrade, and the reader (reader.py)
reads every account every second as Concourse would.

Progress goes to stderr (and soak.log in the run's directory, target/soak/seed-<seed>);
the last line on stdout is one JSON object with every figure. The exit status is 1 when
an invariant is broken, each named on stderr; 2 when the soak could not run at all.
"""

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "integration")]

from chaos import DISTURBANCES, QUIET_TAIL_S, Chaos  # noqa: E402
from emulator import Emulator, start_moto_server  # noqa: E402
from figures import broken, event_figures, reader_figures  # noqa: E402
from nodes import LogWatch, Node  # noqa: E402
from reader import Reader, json_credentials  # noqa: E402
from records import (  # noqa: E402
    claim,
    early_landings,
    landings,
    leaked_bytes,
    most_in_ten_minutes,
    read_texts,
    secret_history,
    secret_names,
)
from redis_store import RedisServer  # noqa: E402
from spin import ROOT, find_spin, redis_runtime_config  # noqa: E402
from settings import PERIOD_S, ROTATE_BEFORE_EXPIRY_S, SCHEDULE, SETTINGS, TICK_BUDGET_S, lease_ttl_s  # noqa: E402
from store import Store  # noqa: E402
from soak_world import Registrar, SessionRecordingProxy, build_world, team_names  # noqa: E402


def arguments(argv):
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60, help="how long the chaos and the reader run (60)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the chaos, the faults and the draws (1)")
    parser.add_argument("--nodes", type=int, default=2, help="spin up nodes on the one Redis (2)")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of AWS requests the proxy fails (0.2)")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds every AWS answer is held (1.0)")
    parser.add_argument("--teams", type=int, default=6, help="teams of two accounts each (6)")
    parser.add_argument("--store-prefix", default="", help="the deployment's store_prefix (none)")
    parser.add_argument(
        "--disturbances",
        default=",".join(DISTURBANCES),
        help=f"the disturbances to cycle through, comma-separated (all: {','.join(DISTURBANCES)})",
    )
    args = parser.parse_args(argv)
    args.disturbances = tuple(filter(None, args.disturbances.split(",")))
    if not set(args.disturbances) <= set(DISTURBANCES):
        parser.error(f"--disturbances takes names among {','.join(DISTURBANCES)}")
    if args.nodes < 1 or args.teams < 1 or args.minutes <= 0 or not 0 <= args.fault_rate <= 1:
        parser.error("--nodes and --teams must be at least 1, --minutes positive, --fault-rate within 0..1")
    return args


class Progress:
    """Progress lines on stderr and in the run's soak.log (which the leak check reads)."""

    def __init__(self, path):
        self.file = open(path, "w")
        self.started = time.time()

    def __call__(self, text):
        line = f"[soak {time.time() - self.started:7.1f}s] {text}"
        print(line, file=sys.stderr, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def main(argv):
    args = arguments(argv)
    workdir = ROOT / "target" / "soak" / f"seed-{args.seed}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    log = Progress(workdir / "soak.log")
    spin, problem = find_spin()
    if spin is None:
        print(problem, file=sys.stderr)
        return 2
    log(f"run directory {workdir}")
    with open(workdir / "moto.log", "w") as moto_log:
        server, url = start_moto_server(moto_log)
    aws = Emulator(url, workdir, spin)
    redis = None
    try:
        keys, documents, accounts = build_world(aws, team_names(args.teams))
        redis = RedisServer(workdir, appendonly=True)
        with SessionRecordingProxy(url, args.fault_rate, args.seed, args.delay) as proxy:
            figures, values = Soak(args, aws, keys, documents, accounts, redis, proxy, workdir, log).run()
    finally:
        aws.close()
        if redis:
            redis.stop()
        server.terminate()
        server.wait(timeout=30)
    return report(figures, values, workdir, log)


@dataclass
class Soak:
    """One run: the nodes, the chaos, the reader and the registrations on a world that
    main() set up (moto with the roles and the rotator, Redis, the proxy)."""

    args: argparse.Namespace
    aws: Emulator
    keys: tuple
    documents: dict
    accounts: list
    redis: RedisServer
    proxy: SessionRecordingProxy
    workdir: Path
    log: Progress
    nodes: list = field(default_factory=list)

    @property
    def store(self):
        return Store(self.redis, self.args.store_prefix)

    def variables(self):
        extra = dict(SETTINGS, aws_endpoint_url=self.proxy.url)
        if self.args.store_prefix:
            extra["store_prefix"] = self.args.store_prefix
        return self.aws.variables(self.keys, **extra)

    def run(self):
        """Starts the nodes, runs the chaos, the reader and the registrations for the
        run's minutes, stops everything; returns (figures, credential values)."""
        config = redis_runtime_config(self.workdir, self.redis.url)
        variables = self.variables()
        self.nodes = [
            Node(f"node-{i}", self.aws.node(f"node-{i}", config), variables, SCHEDULE, self.log)
            for i in range(self.args.nodes)
        ]
        self.log(f"starting {len(self.nodes)} spin up nodes on one redis-server (lease lifetime {lease_ttl_s():.1f} s)")
        for node in self.nodes:
            node.start()
        self.started = time.time()
        reader = self.disturb(self.started + self.args.minutes * 60)
        self.log("reading Secrets Manager's version history")
        figures = self.figures(reader)
        values = self.credential_values(reader)
        figures["leaked_bytes"] = leaked_bytes(values, self.outputs())
        return figures, values

    def disturb(self, deadline):
        """The run proper, until `deadline`; returns the stopped reader."""
        # The teams arrive over most of the run (at most ten minutes, one rotation
        # interval): their first rotations are the work the chaos lands in.
        spread = min(0.75 * (deadline - self.started - QUIET_TAIL_S), 600) / len(self.documents)
        watch = LogWatch(self.nodes)
        watch.start()
        reader = Reader(self.aws, self.accounts, self.proxy.session).start()
        self.registrar = Registrar(self.store, self.documents, spread, self.log)
        self.registrar.start()
        rng = random.Random(self.args.seed)
        wait_for_work_s = min(60.0, max(10.0, spread / 2))
        self.chaos = Chaos(
            self.nodes, self.store, self.redis, rng, lease_ttl_s(), self.args.delay, deadline, wait_for_work_s, self.log,
            self.args.disturbances,
        )
        self.chaos.run()
        self.log("chaos over; the nodes run undisturbed until the end")
        self.chaos.idle(max(0.0, deadline - time.time()))
        self.registrar.stop.set()
        reader.stop()
        self.ended = time.time()
        self.log("stopping the nodes")
        for node in self.nodes:
            node.stop()
        watch.stopping.set()
        for node in self.nodes:
            node.drain()
        return reader

    def events(self):
        return sorted((e for node in self.nodes for e in node.all_events()), key=lambda e: e["seen"])

    def figures(self, reader):
        events = self.events()
        counts = self.chaos.counts
        figures = {
            "minutes": self.args.minutes,
            "seed": self.args.seed,
            "nodes": self.args.nodes,
            "fault_rate": self.args.fault_rate,
            "delay_s": self.args.delay,
            "teams": len(self.documents),
            "accounts": len(self.accounts),
            "period_s": PERIOD_S,
            "rotate_before_expiry_s": ROTATE_BEFORE_EXPIRY_S,
            "tick_budget_s": TICK_BUDGET_S,
            "lease_ttl_s": round(lease_ttl_s(), 1),
            "lease_ttl_observed_s": round(self.chaos.observed_ttl_s, 1),
            "kills": counts["kills"],
            "kills_mid_tick": counts["kills_mid_tick"],
            "freezes": counts["freezes"],
            "freezes_mid_tick": counts["freezes_mid_tick"],
            "redis_restarts": counts["redis_restarts"],
            "skewed_runs": counts["skew_ahead"] + counts["skew_behind"],
            "upgrades": counts["upgrades"],
            "unexpected_exits": counts["unexpected_exits"],
            "sessions_issued": len(self.proxy.all_sessions()),
            "faults_injected": len(self.proxy.injected),
            "unknown_fields_dropped": self.unknown_fields_dropped(),
            "disturbances": ",".join(self.args.disturbances),
            "disturbances_missing": [kind for kind in self.args.disturbances if not self.done(kind)],
            "unparsed_log_lines": sum(node.follower.unparsed for node in self.nodes),
        }
        parts = [
            reader_figures(
                reader.watches, reader.lag_max, self.registrar.registered, self.started, self.ended, self.chaos.outages
            ),
            event_figures(events, self.chaos.upgrades, self.chaos.freezes),
            self.aws_figures(events),
        ]
        for part, notes in parts:
            figures.update(part)
            for note in notes:
                self.log(note)
        figures["wall_s"] = round(time.time() - self.started, 1)
        return figures

    def done(self, kind):
        counted = {"kill": "kills", "freeze": "freezes", "redis_restart": "redis_restarts", "upgrade": "upgrades"}
        return self.chaos.counts[counted.get(kind, kind)] > 0

    def aws_figures(self, events):
        """Rotations, early ones and versions, from Secrets Manager's records; and notes
        on the early ones."""
        client = self.aws.admin_client("secretsmanager")
        existing = secret_names(client)
        rotations, unclaimed, early, versions = 0, 0, [], 0
        for account in self.accounts:
            histories = {name: secret_history(client, name) if name in existing else [] for name in account.secret_names}
            versions = max([versions] + [most_in_ten_minutes([t for t, _ in h]) for h in histories.values()])
            rotated = [e for e in events if e["event"] == "account_rotated" and (e["team"], e["account"]) == (account.team, account.name)]
            found = claim(landings(histories[account.path], access_key_of), rotated, self.proxy.session)
            rotations += len(found)
            unclaimed += sum(1 for landing in found if landing.reason is None)
            early += [(account, previous, landing) for previous, landing in early_landings(found)]
        figures = {
            "rotations": rotations,
            "unclaimed_landings": unclaimed,
            "rotated_twice": sum(1 for _, _, landing in early if landing.reason is not None),
            "unclaimed_early_writes": sum(1 for _, _, landing in early if landing.reason is None),
            "max_versions_per_10min": versions,
        }
        notes = [
            f"{account.path}: rotated again {landing.landed - previous.landed:.0f} s after the last landing"
            f" ({landing.reason or 'claimed by no tick'}; {previous.reason or 'unclaimed'} before it)"
            for account, previous, landing in early
        ]
        return figures, notes

    def unknown_fields_dropped(self):
        """Upgraded state documents that a node rewrote without the newer field."""
        dropped = 0
        for upgrade in self.chaos.upgrades:
            if upgrade["document"] is None:
                continue
            now = self.store.get_json(f"state/{upgrade['team']}")
            dropped += now != upgrade["document"] and not set(upgrade["document"]) <= set(now or {})
        return dropped

    def credential_values(self, reader):
        """The rotator's keys, every session STS issued, every secret value stored and
        every credential the reader saw."""
        values = set(self.aws.issued_credentials())
        values.update(v for session in self.proxy.all_sessions() for v in session.values())
        values.update(v for watch in reader.watches for v in watch.values)
        return values

    def outputs(self):
        """What the nodes printed and logged (spin's stdout and stderr, the component's
        logs), Redis's log and what the store holds. The soak's own output is checked
        last, in report()."""
        paths = [p for node in self.nodes for p in node.spin_node.directory.rglob("*") if p.suffix in (".txt", ".stdout", ".stderr")]
        return read_texts(paths + [self.workdir / "redis.log"]) + [json.dumps(self.store.contents())]


def access_key_of(text):
    values, _ = json_credentials(text or "")
    return values[0] if values else None


def report(figures, values, workdir, log):
    """Prints the figures' line, after checking it and the soak's own progress lines
    for credential values."""
    own = [json.dumps(figures, sort_keys=True)] + read_texts([workdir / "soak.log"])
    figures["leaked_bytes"] += leaked_bytes(values, own)
    failures = broken(figures)
    figures["broken"] = [name for name, _, _ in failures]
    for name, value, target in failures:
        log(f"BROKEN: {name} = {json.dumps(value)} (target {target})")
    if failures:
        log(f"logs and records of this run: {workdir}")
    else:
        log("every invariant held")
    print(json.dumps(figures, sort_keys=True), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
