"""One full rotation against a local AWS emulator: the body of scripts/demo.

Starts moto_server, creates the rotator identity with deploy/iam/rotator-policy.json and a
CI role trusting it, turns on SigV4 and IAM checking, registers example-team, runs one
cron tick of the real component in the project's host, then shows what Concourse will read.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from emulator import HOME_ACCOUNT, Emulator, account, start_moto_server, team  # noqa: E402


def main():
    with tempfile.TemporaryDirectory() as work:
        with open(Path(work) / "moto.log", "w") as log:
            server, url = start_moto_server(log)
            try:
                return demo(url, Path(work))
            finally:
                server.terminate()
                server.wait(timeout=10)


def demo(url, work):
    print(f"AWS emulator (moto_server) on {url}, signature and IAM checks on")
    aws = Emulator(url, work)
    role = aws.ci_role(HOME_ACCOUNT, "concourse-ci-example")
    keys = aws.rotator()
    aws.enforce()
    example = team("example-team", account("divx-lab", role, duration=3600))
    print(f"registered team/example-team -> {role}\n")
    run = aws.run(aws.variables(keys), [example])
    print(run.stdout, end="")
    print(run.stderr, end="")
    if run.returncode != 0:
        print("the tick failed", file=sys.stderr)
        return run.returncode
    path = "/concourse/example-team/divx-lab"
    triple = aws.triple(path)
    print("\nsecrets written (read back with boto3):")
    for suffix, value in zip(("access-key", "secret-key", "session-token"), triple):
        print(f"  {path}-{suffix}  ({len(value)} characters)")
    print(f"\nthose credentials are: {aws.caller(triple)}")
    print("a pipeline reads them as ((divx-lab-access-key)), ((divx-lab-secret-key)), ((divx-lab-session-token))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
