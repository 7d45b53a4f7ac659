"""One full rotation against a local AWS emulator: the body of scripts/demo.

Starts moto_server, creates the rotator identity with deploy/iam/rotator-policy.json and a
CI role trusting it, turns on SigV4 and IAM checking, then runs the built app the way the
README does: `spin up --runtime-config-file runtime-config.toml --key-value
"team/example-team=..."` with the settings in SPIN_VARIABLE_* (in a temporary state
directory, from a copy of spin.toml that ticks a few seconds from now instead of every
five minutes). Once the first tick has rotated, it stops Spin and shows what Concourse
will read; then it serves the app again on the same store (every five minutes, as
spin.toml does) and prints the status page's URL. With --keep it leaves that running,
moto_server included, until Ctrl-C.
"""

import json
import shlex
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from emulator import HOME_ACCOUNT, Emulator, account, start_moto_server, team  # noqa: E402
from spin import find_spin  # noqa: E402

# The local demo's own token for the admin API and the status page: not a secret, it
# opens an app on 127.0.0.1 that runs against an emulator.
DEMO_TOKEN = "demo-token"
EVERY_FIVE_MINUTES = "0 */5 * * * *"


def main():
    keep = sys.argv[1:] == ["--keep"]
    if sys.argv[1:] and not keep:
        print("usage: scripts/demo [--keep]", file=sys.stderr)
        return 2
    spin, problem = find_spin()
    if spin is None:
        print(problem, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as work:
        with open(Path(work) / "moto.log", "w") as log:
            server, url = start_moto_server(log)
            aws = Emulator(url, Path(work), spin)
            try:
                failed, keys = demo(aws)
                return failed or serve(aws, keys, keep)
            finally:
                aws.close()
                server.terminate()
                server.wait(timeout=10)


def demo(aws):
    """One rotation; (exit status, the rotator's keys)."""
    print(f"AWS emulator (moto_server) on {aws.url}, signature and IAM checks on")
    role = aws.ci_role(HOME_ACCOUNT, "concourse-ci-example")
    keys = aws.rotator()
    aws.enforce()
    example = team("example-team", account("divx-lab", role, duration=3600))
    variables = aws.variables(keys)
    print(f"team/example-team -> {role}\n")
    shown = {name: ("…" if "KEY" in name or "TOKEN" in name else value) for name, value in variables.items()}
    print(" ".join(f"{name}={value}" for name, value in shown.items()))
    print(f"spin up --runtime-config-file runtime-config.toml --key-value {shlex.quote('team/example-team=' + json.dumps(example))}")
    print("  (from a copy of spin.toml that ticks a few seconds from now, with a temporary --state-dir)\n")
    run = aws.run(variables, [example])
    for event in run.events:
        print(json.dumps(event, separators=(",", ":")))
    if run.returncode != 0 or not run.rotated():
        print(f"the tick did not rotate: {run.error}\n{run.output}", file=sys.stderr)
        return 1, keys
    path = "/concourse/example-team/divx-lab"
    triple = aws.triple(path)
    print("\nsecrets written (read back with boto3):")
    for suffix, value in zip(("access-key", "secret-key", "session-token"), triple):
        print(f"  {path}-{suffix}  ({len(value)} characters)")
    print(f"\nthose credentials are: {aws.caller(triple)}")
    print("a pipeline reads them as ((divx-lab-access-key)), ((divx-lab-secret-key)), ((divx-lab-session-token))")
    return 0, keys


def serve(aws, keys, keep):
    """The same app on the same store, serving the admin API and the status page."""
    variables = aws.variables(keys, admin_token=DEMO_TOKEN)
    process = aws.main.serve(variables, schedule=EVERY_FIVE_MINUTES)
    try:
        request = urllib.request.Request(process.url + "/status", headers={"Authorization": f"Bearer {DEMO_TOKEN}"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            teams = json.load(answer)["teams"]
        states = [f"{t['team']}/{a['account']}: {a['state']}" for t in teams for a in t["accounts"]]
        print(f"\nstatus page: {process.url}/  (token {DEMO_TOKEN}; GET /status says {', '.join(states)})")
        print(f"metrics:     {process.url}/metrics")
        if not keep:
            print("scripts/demo --keep leaves the app running so that you can open it")
            return 0
        print("the app and the emulator keep running; Ctrl-C stops them")
        try:
            process.process.wait()
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        process.stop()


if __name__ == "__main__":
    sys.exit(main())
