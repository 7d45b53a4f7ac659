"""The seeded chaos driver: what happens to the nodes, the store and the lease, and when.

Each cycle runs every disturbance once, in an order and with pauses drawn from the seed:

- kill: SIGKILL to a node's process group (spin up and its trigger processes), then a
  restart a moment later;
- freeze: SIGSTOP to a node's process group for longer than the lease lives, then SIGCONT;
- redis_restart: redis-server shut down and started again (its data kept in its
  append-only file), down for a second or more;
- skew_ahead, skew_behind: a node restarted with its wall clock minutes ahead (behind) for
  a while, then restarted with the true time;
- upgrade: a newer version's lease, the known fields plus one this version does not know,
  taken when the lease is free, held for a few seconds and released, and one team's state
  document rewritten with that field added.

A kill or a freeze aims at the node whose tick holds the lease (work in flight), waiting
for one for a while; without one it takes a node drawn from the seed. A kill lands
anywhere in the tick's first seconds; a freeze lands where the tick's first accounts are
past their AssumeRole (one answer delay in) and writing, where a node paused after the
lease's check does its harm. Nothing new starts in the run's last QUIET_TAIL_S seconds,
and every node runs unfrozen with the true time when the driver ends.
"""

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from store import LEASE_KEY
from soak_world import parse_time

DISTURBANCES = ("kill", "freeze", "redis_restart", "skew_ahead", "skew_behind", "upgrade")
# Minutes off, within AWS's five-minute window for a request's signing time.
SKEW_S = 240
SKEW_HOLD_S = 20
UPGRADE_HOLD_S = 10
# A freeze outlasts the lease by this much, so another node can take over.
FREEZE_MARGIN_S = 10
QUIET_TAIL_S = 20
# A thawed node is left alone this long, so that what its tick still does is seen.
AFTER_THAW_S = 15
# About how long a node takes to start (up to its scheduler's first line).
START_S = 5
# The field a newer version added to its documents.
NEWER_FIELD = {"epoch": 7}
NEWER_HOLDER = "v2-node"


def rfc3339(instant):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(instant))


@dataclass
class Chaos:
    nodes: list
    store: object
    redis: object
    rng: random.Random
    lease_ttl_s: float
    # How long AWS takes to answer (the proxy's delay).
    delay_s: float
    deadline: float
    wait_for_work_s: float
    log: object
    # The disturbances to cycle through (the names in DISTURBANCES).
    kinds: tuple = DISTURBANCES
    # The longest lifetime seen in a lease record (its expiry less its tick's start).
    observed_ttl_s: float = 0.0
    counts: Counter = field(default_factory=Counter)
    # (due, node, skew): restarts that end a skewed run.
    pending: list = field(default_factory=list)
    # For each upgrade: when, the team and the state document written.
    upgrades: list = field(default_factory=list)
    # (from, to) of every stop of a node (a kill, a freeze, a restart) and of Redis.
    outages: list = field(default_factory=list)
    # (node, from, to) of every freeze.
    freezes: list = field(default_factory=list)

    def outage(self, act):
        """Runs `act` (which stops something and starts it again) and notes when."""
        start = time.time()
        act()
        self.outages.append((start, time.time()))

    def run(self):
        """Disturbs until the quiet tail; then undoes what is still in effect. A cycle
        after the first starts only with time for all of it; within a cycle, what would
        run into the tail is left out."""
        if not self.kinds:
            return
        first = True
        while first or time.time() + sum(map(self.needs, self.kinds)) < self.deadline - QUIET_TAIL_S:
            first = False
            kinds = list(self.kinds)
            self.rng.shuffle(kinds)
            for kind in kinds:
                pause = self.rng.uniform(2, 6)
                if time.time() + pause + self.needs(kind) <= self.deadline - QUIET_TAIL_S:
                    self.idle(pause)
                    getattr(self, kind)()
        self.run_pending(everything=True)

    def needs(self, kind):
        """About the longest a disturbance takes, waits and what undoes it included."""
        aimed = self.wait_for_work_s + 2 * self.delay_s + 0.5
        return {
            "kill": aimed + 3 + START_S,
            "freeze": aimed + self.freeze_s() + AFTER_THAW_S,
            "redis_restart": 3 + 2,
            "skew_ahead": SKEW_HOLD_S + 2 * START_S,
            "skew_behind": SKEW_HOLD_S + 2 * START_S,
            "upgrade": 2 * self.wait_for_work_s + UPGRADE_HOLD_S + 1,
        }[kind]

    def idle(self, seconds, pending=True):
        """Waits, ending skewed runs that are due and restarting a node that died on its own."""
        until = time.time() + seconds
        while time.time() < until:
            if pending:
                self.run_pending()
            for node in self.nodes:
                if node.died():
                    self.log(f"{node.name}: spin up exited by itself; starting it again")
                    self.counts["unexpected_exits"] += 1
                    node.stopped()
                    node.start()
            time.sleep(0.1)

    def run_pending(self, everything=False):
        """Ends the skewed runs that are due (all of them, `everything`)."""
        for entry in list(self.pending):
            due, node, skew = entry
            if everything or time.time() >= due:
                self.pending.remove(entry)
                self.outage(lambda: node.restart(skew))
                self.log(f"{node.name}: restarted with the true time")

    def freeze_s(self):
        """Longer than the lease lives: by the settings, or as seen, whichever is longer."""
        return max(self.lease_ttl_s, self.observed_ttl_s) + FREEZE_MARGIN_S

    def holder_in_flight(self):
        """(node, tick) whose tick holds the lease and runs, else (None, None)."""
        lease = self.store.get_json(LEASE_KEY)
        holder = lease.get("holder") if isinstance(lease, dict) else None
        for node in self.nodes:
            if holder and not node.frozen and node.in_flight(holder):
                # A skewed node's lines are in its own time, the lease in AWS's.
                if not node.skew:
                    self.observe_ttl(lease, node.started_at.get(holder))
                return node, holder
        return None, None

    def observe_ttl(self, lease, started):
        try:
            lifetime = parse_time(lease["expires_at"]) - parse_time(started)
        except (KeyError, TypeError, ValueError, AttributeError):
            return
        self.observed_ttl_s = max(self.observed_ttl_s, lifetime)

    def target(self, into):
        """The node with work in flight, waited for, `into` (low, high) seconds into its
        tick; else one drawn from the seed. Returns (node, tick in flight or None)."""
        until = time.time() + self.wait_for_work_s
        while time.time() < until:
            node, tick = self.holder_in_flight()
            if node:
                time.sleep(self.rng.uniform(*into))
                return node, tick
            self.idle(0.1)
        return self.rng.choice(self.nodes), None

    def kill(self):
        node, tick = self.target(into=(0, 2.5))
        mid_tick = tick is not None and node.in_flight(tick)
        killed_at = time.time()
        node.kill()
        self.outages.append((killed_at, killed_at))
        self.counts["kills"] += 1
        self.counts["kills_mid_tick"] += mid_tick
        self.log(f"{node.name}: killed (SIGKILL){' mid-tick' if mid_tick else ''}")
        self.idle(self.rng.uniform(1, 3))
        node.start()
        self.log(f"{node.name}: started again")

    def freeze(self):
        node, tick = self.target(into=(self.delay_s, 2 * self.delay_s + 0.5))
        mid_tick = tick is not None and node.in_flight(tick)
        frozen_for = self.freeze_s()
        frozen_at = time.time()
        node.freeze()
        self.counts["freezes"] += 1
        self.counts["freezes_mid_tick"] += mid_tick
        self.log(f"{node.name}: frozen (SIGSTOP) for {frozen_for:.0f} s{' mid-tick' if mid_tick else ''}")
        self.idle(frozen_for, pending=False)
        node.thaw()
        self.outages.append((frozen_at, time.time()))
        self.freezes.append((node.name, frozen_at, time.time()))
        self.log(f"{node.name}: thawed (SIGCONT)")
        self.idle(AFTER_THAW_S, pending=False)

    def redis_restart(self):
        down_s = self.rng.uniform(1, 3)
        self.outage(lambda: self.redis.restart(down_s))
        self.counts["redis_restarts"] += 1
        self.log(f"redis-server restarted (down {down_s:.1f} s)")

    def skew_ahead(self):
        self.skew(+SKEW_S)

    def skew_behind(self):
        self.skew(-SKEW_S)

    def skew(self, seconds):
        """A node with the true time, if any, runs `seconds` off for SKEW_HOLD_S."""
        true_time = [n for n in self.nodes if n.skew == 0]
        if not true_time:
            self.log("every node's clock is already off; no skew this time")
            return
        node = self.rng.choice(true_time)
        self.outage(lambda: node.restart(seconds))
        self.counts["skew_ahead" if seconds > 0 else "skew_behind"] += 1
        self.pending.append((time.time() + SKEW_HOLD_S, node, 0))
        self.log(f"{node.name}: restarted with its clock {seconds:+d} s off")

    def upgrade(self):
        """A newer node takes the free lease, rewrites a state document and releases,
        each document carrying a field this version does not know."""
        lease = self.free_lease()
        # It means to release it after UPGRADE_HOLD_S; it would run out FREEZE_MARGIN_S later.
        held = {"holder": NEWER_HOLDER, "expires_at": rfc3339(time.time() + UPGRADE_HOLD_S + FREEZE_MARGIN_S), **NEWER_FIELD}
        if lease is False or not self.store.replace(LEASE_KEY, lease, held):
            self.log("upgrade: the lease stayed busy; skipped")
            return
        team = self.state_to_upgrade()
        current = self.store.get_json(f"state/{team}") if team else None
        written = None
        if isinstance(current, dict):
            written = {**current, **NEWER_FIELD}
            self.store.put(f"state/{team}", written)
        self.upgrades.append({"at": time.time(), "team": team, "document": written})
        self.counts["upgrades"] += 1
        self.log(f"upgrade: a newer node holds the lease{f' and rewrote state/{team}' if written else ''}")
        self.idle(UPGRADE_HOLD_S)
        released = {**held, "expires_at": rfc3339(time.time())}
        if self.store.replace(LEASE_KEY, json.dumps(held), released):
            self.log("upgrade: the newer node released the lease")
        else:
            self.log("upgrade: the newer node's lease was taken over before it released it")

    def free_lease(self):
        """The lease's text once no tick in flight holds it (None: no lease yet); False
        when it stays busy. A tick's end is read from its node's log, not from the
        record's expiry, which a skewed node writes in its own time."""
        until = time.time() + 2 * self.wait_for_work_s
        while time.time() < until:
            text = self.store.get(LEASE_KEY)
            node, _ = self.holder_in_flight()
            if node is None and self.store.get(LEASE_KEY) == text:
                return text
            self.idle(0.1)
        return False

    def state_to_upgrade(self):
        prefix = self.store.prefix + "state/"
        teams = sorted(key[len(prefix) :] for key in self.store.contents() if key.startswith(prefix))
        return self.rng.choice(teams) if teams else None
