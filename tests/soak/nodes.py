"""The soak's Spin nodes: each a SpinNode of the integration harness (the project's own
manifest, copied with the soak's schedule, on the shared Redis) that the chaos driver
kills, freezes, thaws and restarts, some runs with the wall clock moved by libfaketime.

The component's log of a node (one file over all its `spin up` runs) is followed as it
grows: every event is kept with the node's name, the clock skew of the run that logged
it and when the soak read it (`seen`, the soak's own clock, since a skewed node's `time`
is not). Which ticks are in flight is known from these lines alone: a tick is open from
its `tick_started` until its `tick_finished` or `tick_failed`, or until its node is
killed.
"""

import json
import os
import signal
import threading
import time

from spin import COMPONENT, SCHEDULER_STARTED, START_TIMEOUT_S

TICK_ENDS = ("tick_finished", "tick_failed")


class LogFollower:
    """Reads the whole lines appended to a file since the last read. A line cut short by
    a kill and continued by the next run does not parse and is counted, not kept."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.unparsed = 0

    def new_events(self):
        if not self.path.exists():
            return []
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            data = log.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        events = []
        for line in filter(None, lines):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                events.append(event)
            else:
                self.unparsed += 1
        return events


class Node:
    """One node: `spin up` started again and again on one state directory."""

    def __init__(self, name, spin_node, variables, schedule, log):
        self.name = name
        self.spin_node = spin_node
        self.variables = variables
        self.schedule = schedule
        self.log = log
        self.skew = 0
        self.process = None
        self.frozen = False
        # Killed on purpose and not started again yet.
        self.down = False
        self.follower = LogFollower(spin_node.logs / f"{COMPONENT}_stdout.txt")
        self.lock = threading.Lock()
        self.events = []
        self.open_ticks = set()
        # tick id -> the `time` of its tick_started line (the node's own clock).
        self.started_at = {}
        self.starts = 0

    def start(self):
        """Starts `spin up` with the node's skew; returns once the cron scheduler runs."""
        self.process = self.spin_node.start(self.variables, schedule=self.schedule, skew_s=self.skew)
        self.down = False
        self.starts += 1
        started = lambda: SCHEDULER_STARTED in self.process.stderr_path.read_text(errors="replace")
        self.process.wait_for(started, "a started cron scheduler", START_TIMEOUT_S)

    def died(self):
        """Whether `spin up` ended without being killed or stopped on purpose."""
        return not (self.down or self.frozen or self.process.stopped) and self.process.process.poll() is not None

    def kill(self):
        """SIGKILL to the whole process group (`spin up` and its trigger processes), as a
        machine that dies: nothing is given back, nothing is flushed."""
        self.down = True
        os.killpg(self.process.process.pid, signal.SIGKILL)
        self.process.process.wait(timeout=60)
        self.frozen = False
        self.stopped()

    def stop(self):
        """SIGINT, as a deploy stops a node (the harness's stop)."""
        if self.frozen:
            self.thaw()
        self.stopped()

    def stopped(self):
        self.process.stop()
        self.drain()
        with self.lock:
            self.open_ticks.clear()

    def restart(self, skew):
        """Stops the node and starts it with its wall clock `skew` seconds off."""
        self.stop()
        self.skew = skew
        self.start()

    def freeze(self):
        self.process.freeze()
        self.frozen = True

    def thaw(self):
        self.process.thaw()
        self.frozen = False

    def drain(self):
        """Takes in the lines logged since the last call."""
        with self.lock:
            seen = time.time()
            for event in self.follower.new_events():
                event.update(node=self.name, skew=self.skew, seen=seen)
                self.events.append(event)
                tick = event.get("tick")
                if event["event"] == "tick_started":
                    self.open_ticks.add(tick)
                    self.started_at[tick] = event["time"]
                elif event["event"] in TICK_ENDS:
                    self.open_ticks.discard(tick)

    def in_flight(self, tick):
        with self.lock:
            return tick in self.open_ticks

    def all_events(self):
        with self.lock:
            return list(self.events)


class LogWatch(threading.Thread):
    """Drains every node's log four times a second, so that `seen` is close to when a
    line was written and the driver knows which ticks are in flight."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes = nodes
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(0.25):
            for node in self.nodes:
                node.drain()
