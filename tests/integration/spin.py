"""The real Spin as the host of the integration tests and the demo.

Every run is `spin up` as the README tells users: the project's own `spin.toml` and
`runtime-config.toml`, teams registered with `--key-value`, settings in `SPIN_VARIABLE_*`
environment variables (nothing else of the caller's environment but PATH, HOME and the
like), the admin API served by the same `spin up`. Only the schedule differs: `spin up`
loads a copy of the manifest whose `cron_expression` the test chooses (the copy names the
built `.wasm` by its absolute path and has no build section, since it lives in a temporary
directory).

A node is one state directory: `--state-dir` holds Spin's default key-value store
(`sqlite_key_value.db`, because runtime-config.toml leaves the default store to Spin) and
the component's logs (`logs/concourse-sts_stdout.txt`, where both trigger processes, cron
and HTTP, append the component's lines). `spin up` can run on one node any
number of times, as a machine restarting would; a node on Redis shares its store with
other nodes.

How a tick is delimited. The cron host starts a tick on schedule even while the previous
one runs; every log line names its tick (`tick`), so the lines of one tick are told apart
from the others'. A run that wants one tick gets a schedule that fires once a minute, at a
second computed when `spin up` starts (`S * * * * *`, S a little ahead). The cron plugin
logs "Job scheduler started" (at info level, hence RUST_LOG=trigger_cron=info) once the
schedule is set; if that line comes later than S, the tick would only come a minute
later, so the run is stopped and started again with twice the lead. The first tick is the
tick of the first line; it is over at its `tick_finished`, `tick_failed` or `lease_busy`
line. When its lines say it returned an error (`tick_failed`, failed accounts or invalid
teams), the run also waits for the cron plugin's `Component concourse-sts failed: ...`
line, which is how the export's result is seen; a tick that returns `Ok` leaves no line.
Then `spin up` is stopped (SIGINT to its process group, so that the trigger processes stop
too; SIGKILL if it lingers).

Runs that want overlapping ticks use the every-second schedule and wait for the event they
need. "Later" moves the whole world: AWS's answers (their `Date`, and the `Expiration` of
the credentials moto issues; see world.py), and the host's wall clock with Debian's
libfaketime preloaded into `spin up` (LD_PRELOAD, FAKETIME): the wall clock of spin and
its trigger processes (and so the component's) moves ahead, timers do not
(FAKETIME_DONT_FAKE_MONOTONIC=1). A host whose clock is wrong (`skew_s`) moves only its
own wall clock: the component then learns the world's time from AWS's answers. Not the
`faketime` wrapper: it names a semaphore after its pid and leaves it behind when it is
killed, and a later wrapper that gets the same pid refuses to start.

Two Spin generations. Every node runs one `Generation`: Spin 3.5 with trigger-cron 0.3, or
Spin 4 with the cron (0.5) and command (0.6) triggers of spin-trigger-plugins. Both ship a
plugin named trigger-cron, so each generation names the plugin data dir it was installed
into (`SPIN_DATA_DIR`), and `spin up` gets that one and no other: which plugin a run
loads never depends on PATH or the caller's environment. scripts/test finds both and
passes them in SPIN3_BIN/SPIN3_DATA_DIR and SPIN4_BIN/SPIN4_DATA_DIR. The two cron plugins
log the same lines (`trigger_cron` target: "Job scheduler started", "Component … failed:
…"), so a tick is delimited the same way on both.
"""

import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from local_http import WORLD

ROOT = Path(__file__).resolve().parents[2]
# What `spin build` produces and spin.toml loads.
WASM = ROOT / "target" / "wasm32-wasip2" / "release" / "concourse_sts.wasm"
MANIFEST = ROOT / "spin.toml"
# The rotation as a one-shot command (Spin 4's command trigger), as SpinKube runs it.
COMMAND_MANIFEST = ROOT / "deploy" / "spinkube" / "spin-command.toml"
RUNTIME_CONFIG = ROOT / "runtime-config.toml"
# One component serves both triggers.
COMPONENT = "concourse-sts"

EVERY_SECOND = "* * * * * *"
# Midnight on January 1st: never within a test. (The cron plugin takes no year field: a
# seventh field stops spin up with "Error: ParseSchedule".)
NEW_YEAR = "0 0 0 1 1 *"

# The cron plugin's own lines (spinframework/spin-trigger-cron 0.3).
SCHEDULER_STARTED = "Job scheduler started"
EXPORT_FAILED = re.compile(r"Component concourse-sts failed: Error::Other\((.*)\)\s*$")
# Where a panic inside the component shows: its stderr (the plugin drops the trap itself).
PANICKED = "panicked at"

# Variables of the caller's environment that `spin up` may see besides SPIN_VARIABLE_*
# (and the generation's SPIN_DATA_DIR): where Spin caches compiled components.
PASSED_THROUGH = ("PATH", "HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "TMPDIR", "LANG")

FIRST_LEAD_S = 1.5
# Starting Spin compiles the component once per build (then Wasmtime's cache has it).
START_TIMEOUT_S = 300
# Longer than the component's own tick budget (3 minutes by default).
TICK_TIMEOUT_S = 240
STOP_TIMEOUT_S = 20

INSTALL_HELP = {
    "3": """\
Spin 3.5 with the cron trigger plugin is needed (tested with Spin 3.5.0 and trigger-cron 0.3.0):
  install Spin 3.x from https://github.com/spinframework/spin/releases, then
  spin plugins install --url https://github.com/spinframework/spin-trigger-cron/releases/download/v0.3.0/trigger-cron.json
scripts/test finds it on PATH or installs it from ../shared/spin.""",
    "4": """\
Spin 4 with the cron and command trigger plugins is needed (tested with Spin 4.0.2,
trigger-cron 0.5.0 and trigger-command 0.6.0 from https://github.com/spinframework/spin-trigger-plugins),
in a plugin data dir of its own (SPIN_DATA_DIR): Spin 3.5's trigger-cron has the same name.
scripts/test finds it on PATH or installs it from ../shared/spin4.""",
}


@dataclass(frozen=True)
class Generation:
    """One Spin generation: its `spin` and the plugin data dir it was installed into
    (None: Spin's default, `~/.local/share/spin/plugins`)."""

    major: str
    binary: str
    data_dir: str | None = None

    # The trigger plugins each generation must have, each from the version that is its
    # own: Spin 3 has no command trigger, and Spin 4 also loads Spin 3.5's trigger-cron 0.3
    # (its manifest allows Spin >=3.0), which a shared data dir would hand it.
    PLUGINS = {"3": {"trigger-cron": (0,)}, "4": {"trigger-cron": (0, 5), "trigger-command": (0,)}}

    def env(self, base):
        """`base` (an environment) with this generation's plugin data dir, and no other."""
        env = {name: value for name, value in base.items() if name != "SPIN_DATA_DIR"}
        if self.data_dir:
            env["SPIN_DATA_DIR"] = self.data_dir
        return env

    def problem(self):
        """Why this `spin` cannot run the tests (None when it can): not this generation,
        or a trigger plugin missing from its data dir."""
        env = self.env(os.environ)
        try:
            version = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=60, env=env)
            plugins = subprocess.run(
                [self.binary, "plugins", "list", "--installed"], capture_output=True, text=True, timeout=60, env=env
            )
        except OSError as error:
            return f"{self.binary}: {error}\n" + INSTALL_HELP[self.major]
        if not version.stdout.startswith(f"spin {self.major}."):
            return f"{self.binary} is {version.stdout.strip() or 'not spin'}, not Spin {self.major}.\n" + INSTALL_HELP[self.major]
        # Spin lists a plugin it refuses to run as "[installed] [requires Spin …]".
        usable = {
            name: tuple(int(part) for part in re.findall(r"\d+", version))
            for name, version in re.findall(r"^(\S+) (\S+) \[installed\]$", plugins.stdout, re.MULTILINE)
        }
        needed = self.PLUGINS[self.major]
        missing = [
            name if floor == (0,) else f"{name} {'.'.join(map(str, floor))} or later"
            for name, floor in needed.items()
            if usable.get(name, (-1,)) < floor
        ]
        if missing:
            where = self.data_dir or "Spin's default data dir"
            return f"{self.binary} has no usable {', '.join(missing)} plugin in {where}.\n" + INSTALL_HELP[self.major]
        return None


def generations_from_env():
    """{major: Generation} named by SPIN3_BIN/SPIN3_DATA_DIR and SPIN4_BIN/SPIN4_DATA_DIR
    (scripts/test sets them); without either, the `spin` on PATH, as whichever generation
    it is, with the caller's SPIN_DATA_DIR."""
    found = {}
    for major in ("3", "4"):
        spin = os.environ.get(f"SPIN{major}_BIN")
        if spin:
            found[major] = Generation(major, spin, os.environ.get(f"SPIN{major}_DATA_DIR") or None)
    spin = shutil.which("spin")
    if not found and spin:
        version = subprocess.run([spin, "--version"], capture_output=True, text=True, timeout=60).stdout
        major = version.removeprefix("spin ")[:1]
        if major in ("3", "4"):
            found[major] = Generation(major, spin, os.environ.get("SPIN_DATA_DIR") or None)
    return found


def find_spin(major=None):
    """The Generation `major` (default: SPIN_GENERATION, which scripts/lib.sh's ensure_spin
    sets, else 3) from the environment, or an explanation of what is missing."""
    major = major or os.environ.get("SPIN_GENERATION", "3")
    generation = generations_from_env().get(major)
    if generation is None:
        return None, f"no Spin {major} (SPIN{major}_BIN, or `spin` on PATH).\n" + INSTALL_HELP[major]
    problem = generation.problem()
    return (None, problem) if problem else (generation, None)


def libfaketime():
    """Debian's libfaketime (package faketime), which moves a process's wall clock."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert found, "libfaketime is missing: scripts/test installs Debian's faketime"
    return found[0]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def once_a_minute_at(instant):
    """A schedule firing at `instant`'s second of every minute (UTC)."""
    return f"{int(instant) % 60} * * * * *"


def manifest_copy(directory, schedule):
    """spin.toml, with only the schedule changed, written into `directory`: the component
    is named by its absolute path and the build section (which runs in the project) goes."""
    text = MANIFEST.read_text()
    text, crons = re.subn(r'^cron_expression = ".*"$', f'cron_expression = "{schedule}"', text, flags=re.MULTILINE)
    text, sources = absolute_source(text, MANIFEST)
    text, builds = re.subn(r"^\[component\.[a-z-]+\.build\]\n(?:[^\[].*\n|\n)*", "", text, flags=re.MULTILINE)
    assert (crons, sources, builds) == (1, 1, 1), "spin.toml no longer has the shape the tests copy"
    path = directory / "spin.toml"
    path.write_text(text)
    return path


def command_manifest_copy(directory):
    """deploy/spinkube/spin-command.toml as shipped, written into `directory` with the
    component named by its absolute path: nothing else differs."""
    text, sources = absolute_source(COMMAND_MANIFEST.read_text(), COMMAND_MANIFEST)
    assert sources == 1, "spin-command.toml no longer loads the built component"
    path = directory / "spin-command.toml"
    path.write_text(text)
    return path


def absolute_source(text, manifest):
    """A manifest's text with its `source = "<path of WASM relative to the manifest>"` made
    absolute, and how many there were."""
    relative = f'source = "{os.path.relpath(WASM, manifest.parent)}"'
    return text.replace(relative, f'source = "{WASM}"'), text.count(relative)


def redis_runtime_config(directory, url):
    """runtime-config.toml with its commented Redis example switched on, pointing at `url`:
    the configuration the README gives for several nodes."""
    lines = RUNTIME_CONFIG.read_text().splitlines()
    start = lines.index("# [key_value_store.default]")
    table = [line[2:] for line in lines[start : start + 3]]
    assert table[1] == 'type = "redis"' and table[2].startswith("url = "), table
    path = directory / "runtime-config-redis.toml"
    path.write_text("\n".join(table[:2] + [f'url = "{url}"']) + "\n")
    return path


class SpinExited(RuntimeError):
    """`spin up` ended by itself."""


# The lines that end a tick.
TICK_ENDS = ("tick_finished", "tick_failed", "lease_busy")


def first_tick(events):
    """The lines of the first tick, once it is over (None while it runs)."""
    if not events:
        return None
    tick = [e for e in events if e.get("tick") == events[0].get("tick")]
    return tick if tick[-1]["event"] in TICK_ENDS else None


def tick_returned_error(events):
    """What a tick's own lines say about its export's result."""
    last = events[-1]
    if last["event"] == "tick_failed":
        return True
    return last["event"] == "tick_finished" and (
        last["failed"] > 0 or last["invalid_teams"] > 0 or last.get("lease_lost", False)
    )


class Outcomes:
    """What a run's `events` say, whatever ran the component."""

    def of(self, kind):
        return [e for e in self.events if e.get("event") == kind]

    def rotated(self):
        return {(e["team"], e["account"]) for e in self.of("account_rotated")}


@dataclass
class Run(Outcomes):
    """One `spin up` on a node, from start to stop."""

    events: list
    # What the export returned, for each tick that returned an error.
    errors: list
    # Everything spin printed and the components logged (stdout and stderr) meanwhile.
    output: str
    trapped: bool = False
    # `spin up`'s own exit status, when it ended by itself (the command trigger).
    exit_status: int | None = None

    @property
    def returncode(self):
        """The command trigger's exit status; for a cron tick, the one the command entry
        point gives for the same tick: 0 when the export returned Ok, 1 when it returned
        an error."""
        if self.exit_status is not None:
            return self.exit_status
        return 1 if self.errors else 0

    @property
    def error(self):
        return self.errors[-1] if self.errors else None


class SpinUp:
    """One `spin up` process on a node."""

    def __init__(self, node, args, env, url):
        self.node = node
        self.url = url
        number = len(node.processes)
        self.stdout_path = node.directory / f"spin-up-{number}.stdout"
        self.stderr_path = node.directory / f"spin-up-{number}.stderr"
        # The component logs grow over the node's runs: this run's part starts here.
        self.log_offsets = {path.name: path.stat().st_size for path in node.logs.glob("*.txt")}
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                args, stdout=stdout, stderr=stderr, env=env, cwd=node.directory, start_new_session=True
            )
        self.stopped = False

    def component_log(self, component, stream="stdout"):
        path = self.node.logs / f"{component}_{stream}.txt"
        if not path.exists():
            return ""
        with open(path, "rb") as log:
            log.seek(self.log_offsets.get(path.name, 0))
            text = log.read().decode(errors="replace")
        # Only whole lines: the last one may still be being written.
        return text[: text.rfind("\n") + 1]

    def spin_output(self):
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def events(self):
        events = []
        for line in self.component_log(COMPONENT).splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def export_errors(self):
        errors = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            match = EXPORT_FAILED.search(line)
            if match:
                try:
                    errors.append(json.loads(match.group(1)))
                except json.JSONDecodeError:
                    errors.append(match.group(1))
        return errors

    def trapped(self):
        return PANICKED in self.component_log(COMPONENT, "stderr")

    def wait_for(self, condition, what, timeout):
        """Polls `condition()` until it holds; fails if spin exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                raise SpinExited(f"spin up exited ({self.process.returncode}) before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self):
        text = self.spin_output() + self.component_log(COMPONENT)
        return "\n".join(text.splitlines()[-30:])

    def scheduled_in_time(self, instant):
        """Whether the cron plugin had its schedule before `instant` (a time.time() value)."""
        self.wait_for(lambda: SCHEDULER_STARTED in self.stderr_path.read_text(errors="replace"), "a started cron scheduler", START_TIMEOUT_S)
        return time.time() < instant - 0.25

    def first_tick(self):
        """Waits for the first tick to end (and for its error line, when it returned one);
        returns the events up to its end."""

        def ended():
            events = first_tick(self.events())
            return (events,) if events is not None else self.trapped()

        found = self.wait_for(ended, "end of the first tick", TICK_TIMEOUT_S)
        if found is True:
            return self.events()
        events = found[0]
        if tick_returned_error(events):
            self.wait_for(self.export_errors, "`Component concourse-sts failed` line", 60)
        return events

    def wait_for_http(self):
        """Waits until the admin API answers /healthz."""

        def answers():
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=5) as response:
                    return response.status == 200
            except (OSError, urllib.error.HTTPError):
                return False

        self.wait_for(answers, "answer on /healthz", START_TIMEOUT_S)

    def freeze(self):
        """Stops spin and its trigger processes where they are (SIGSTOP to the process
        group), as a paused VM or a stopped container would be."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self):
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self):
        """Stops spin and its trigger processes; returns the run."""
        if not self.stopped:
            self.stopped = True
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
            # Whatever is left of the group (a trigger process that ignored SIGINT).
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=STOP_TIMEOUT_S)
        output = self.spin_output()
        for stream in ("stdout", "stderr"):
            output += self.component_log(COMPONENT, stream)
        self.node.outputs.append(output)
        return output

    def finish(self, events=None):
        """Stops spin; returns the run with `events` (default: every cron event)."""
        exit_status = self.process.poll()
        output = self.stop()
        return Run(
            events=self.events() if events is None else events,
            errors=self.export_errors(),
            output=output,
            trapped=self.trapped(),
            exit_status=exit_status,
        )

    def exited(self):
        """Waits for `spin up` to end by itself (the command trigger's one run); returns
        the run."""
        try:
            self.process.wait(timeout=TICK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"spin up still runs after {TICK_TIMEOUT_S} s:\n{self.tail()}") from None
        return self.finish()


class SpinNode:
    """One Spin host: a directory with the manifest copy and spin's output, a state
    directory (store and component logs), and a runtime config."""

    def __init__(self, generation, directory, outputs, runtime_config=None):
        self.generation = generation
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.state = directory / "state"
        self.logs = self.state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runtime_config = runtime_config or RUNTIME_CONFIG
        # Everything printed, for the leak check.
        self.outputs = outputs
        self.processes = []

    def start(self, variables, teams=(), raw=(), schedule=NEW_YEAR, later_s=0, skew_s=0):
        """Starts `spin up`; `teams` are documents registered under team/<name>, `raw`
        (key, text) pairs stored as they are; `later_s` moves the world (AWS's answers
        and the host's clock) ahead, `skew_s` the host's clock alone (back, when
        negative)."""
        port = free_port()
        manifest = manifest_copy(self.directory, schedule)
        args = self.up_args(manifest, teams, raw) + ["--listen", f"127.0.0.1:{port}"]
        process = SpinUp(self, args, self.up_env(variables, later_s, skew_s), f"http://127.0.0.1:{port}")
        self.processes.append(process)
        return process

    def command(self, variables, teams=(), raw=(), later_s=0):
        """`spin up` of the shipped command manifest (deploy/spinkube/spin-command.toml),
        which the command trigger runs once, as a SpinKube CronJob's pod does, `later_s`
        in the world's future; returns the run when spin has exited by itself."""
        manifest = command_manifest_copy(self.directory)
        process = SpinUp(self, self.up_args(manifest, teams, raw), self.up_env(variables, later_s), url=None)
        self.processes.append(process)
        return process.exited()

    def up_args(self, manifest, teams, raw):
        """`spin up` of `manifest` on this node's state directory and runtime config, with
        `teams` and `raw` (key, text) pairs as --key-value."""
        args = [self.generation.binary, "up", "-f", str(manifest), "--state-dir", str(self.state)]
        args += ["--runtime-config-file", str(self.runtime_config)]
        entries = [(f"team/{t['name']}", json.dumps(t)) for t in teams] + list(raw)
        for key, text in entries:
            args += ["--key-value", f"{key}={text}"]
        return args

    def up_env(self, variables, later_s=0, skew_s=0):
        """The environment of `spin up`: what Spin itself needs, the generation's plugin
        data dir, the application variables, and its clock (`later_s` also moves the
        world's)."""
        WORLD.shift_s = later_s
        env = self.generation.env({name: os.environ[name] for name in PASSED_THROUGH if name in os.environ})
        env.update(variables)
        # For the plugin's "Job scheduler started". Only its target: with RUST_LOG=spin=info
        # the triggers' launch metadata (which spin up reads from their stderr as JSON) no
        # longer parses, spin up then hands --listen to the cron trigger, and it refuses.
        env["RUST_LOG"] = "trigger_cron=info"
        if later_s + skew_s:
            env["LD_PRELOAD"] = libfaketime()
            # A signed offset in seconds: "+6000" is later, "-1200" earlier.
            env["FAKETIME"] = f"{int(later_s + skew_s):+d}"
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        return env

    def run(self, variables, teams=(), raw=(), later_s=0, skew_s=0):
        """One tick: `spin up` until its first tick has ended, then stopped."""
        [process] = start_in_time([self], variables, teams, raw, later_s, skew_s)
        events = process.first_tick()
        return process.finish(events)

    def serve(self, variables, schedule=NEW_YEAR):
        """`spin up` answering on its HTTP address; the caller stops it."""
        process = self.start(variables, schedule=schedule)
        process.wait_for_http()
        return process

    def stop_all(self):
        for process in self.processes:
            process.stop()

    def store(self):
        """The default key-value store, when it is Spin's SQLite under --state-dir."""
        return sqlite_store(self.state / "sqlite_key_value.db")

    def replace(self, key, text):
        """Overwrites a key of the node's SQLite store while `spin up` runs, as another node
        sharing the store would."""
        with sqlite3.connect(self.state / "sqlite_key_value.db", timeout=30) as db:
            changed = db.execute(
                "UPDATE spin_key_value SET value = ? WHERE store = 'default' AND key = ?", (text.encode(), key)
            ).rowcount
        assert changed == 1, f"no {key} to replace"

    def delete(self, key):
        """Removes a key from the store, with spin stopped."""
        with sqlite3.connect(self.state / "sqlite_key_value.db") as db:
            db.execute("DELETE FROM spin_key_value WHERE store = 'default' AND key = ?", (key,))


def sqlite_store(path):
    """Spin's SQLite key-value database's default store, {key: text} (read with spin
    stopped or running)."""
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, value FROM spin_key_value WHERE store = 'default'").fetchall()
    return {key: bytes(value).decode() for key, value in rows}


def start_in_time(nodes, variables, teams=(), raw=(), later_s=0, skew_s=0):
    """Starts `spin up` on every node with one schedule firing a little ahead, so that
    all of them tick at the same second; starts again with more lead if any node had its
    schedule too late for it. `variables` is one dict for all, or a list of one per node."""
    each = variables if isinstance(variables, list) else [variables] * len(nodes)
    lead = FIRST_LEAD_S
    while True:
        instant = math.ceil(time.time() + lead)
        schedule = once_a_minute_at(instant + later_s + skew_s)
        processes = [node.start(v, teams, raw, schedule, later_s, skew_s) for node, v in zip(nodes, each)]
        if all([process.scheduled_in_time(instant) for process in processes]):
            return processes
        for process in processes:
            process.stop()
        if lead > START_TIMEOUT_S:
            raise TimeoutError("spin up never started before its schedule")
        lead *= 2
