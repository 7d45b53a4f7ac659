"""What the operator-facing tests share: a deployment under `spin up` with a team that
rotates, a team whose role the rotator's policy denies and (where asked) an invalid team
document, served with both bearer tokens; Debian's Prometheus; the status page's URL."""

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from emulator import HOME_ACCOUNT, account, team
from spin import NEW_YEAR, ROOT, free_port

ADMIN_TOKEN = "test-admin-token-0c9d"
METRICS_TOKEN = "test-metrics-token-7e21"
RULES = ROOT / "deploy" / "prometheus" / "concourse-sts-rules.yaml"
# Screenshots and the like, kept after the run (CI can collect them).
ARTIFACTS = ROOT / "target" / "test-artifacts"
# The role the rotator's documented policy does not cover (it allows concourse-ci*).
LOCKED_ROLE = "locked-ci"


def poll(condition, what, timeout, failed=lambda: None, shows=lambda: ""):
    """`condition()`'s first true value, polled every 0.1 s; fails as soon as `failed()`
    says why, or after `timeout` seconds saying what `shows()` shows."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        problem = failed()
        if problem:
            raise RuntimeError(f"{problem} before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s; {shows()}")
        time.sleep(0.1)


class Deployment:
    """`spin up` serving the admin API, with alpha (rotates), gamma (its role denied) and,
    with `broken`, an invalid team document."""

    def __init__(self, aws, broken=False, schedule=NEW_YEAR):
        self.aws = aws
        role = aws.ci_role(HOME_ACCOUNT)
        self.locked = aws.ci_role(HOME_ACCOUNT, LOCKED_ROLE)
        self.keys = aws.rotator()
        aws.enforce()
        teams = [
            team("alpha", account("dev", role), account("prod", role, duration=7200)),
            team("gamma", account("denied", self.locked)),
        ]
        raw = [("team/broken", '{"name": "broken", ')] if broken else []
        variables = aws.variables(self.keys, admin_token=ADMIN_TOKEN, metrics_token=METRICS_TOKEN)
        self.process = aws.main.start(variables, teams, raw, schedule=schedule)
        self.process.wait_for_http()
        self.url = self.process.url

    def rotate(self, team=None):
        """A full tick through the admin API (or one team's rotation), answered when done."""
        path = f"/teams/{team}/rotate" if team else "/rotate"
        return self.aws.request("POST", self.url + path, ADMIN_TOKEN)

    def repair(self):
        """The operator's fix: the rotator may now assume gamma's role."""
        statement = {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": self.locked}
        document = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        iam = self.aws.admin_client("iam")
        iam.put_user_policy(UserName="concourse-sts", PolicyName="locked-ci", PolicyDocument=document)

    def get(self, path, token=METRICS_TOKEN):
        """(status, headers, body text); the body joins the leak check."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, head, text = answer.status, answer.headers, answer.read().decode()
        except urllib.error.HTTPError as error:
            status, head, text = error.code, error.headers, error.read().decode()
        self.aws.outputs.append(text)
        return status, head, text

    def stop(self):
        self.process.stop()


def quick_rules(directory, wait):
    """deploy/prometheus's rules with every `for` cut to `wait`: the shipped rules'
    expressions, labels and annotations, on a test's time scale (promtool test rules
    proves the shipped durations)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = wait
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


class Prometheus:
    """Debian's prometheus scraping the app's /metrics every second with the metrics
    token, evaluating `rules` every second."""

    def __init__(self, directory, target_url, rules):
        directory.mkdir(parents=True, exist_ok=True)
        token = directory / "token"
        token.write_text(METRICS_TOKEN)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "concourse-sts",
                    "authorization": {"type": "Bearer", "credentials_file": str(token)},
                    "static_configs": [{"targets": [target_url.split("://", 1)[1]]}],
                }
            ],
        }
        path = directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(directory / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={self.url.split('://', 1)[1]}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait(lambda: self.api("/-/ready", raw=True) is not None, "Prometheus ready", 60)

    def api(self, path, raw=False):
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        return text if raw else json.loads(text)["data"]

    def alerts(self):
        """{(alertname, team, account): state} of every active alert."""
        data = self.api("/api/v1/alerts") or {"alerts": []}
        return {
            (a["labels"]["alertname"], a["labels"].get("team"), a["labels"].get("account")): a["state"]
            for a in data["alerts"]
        }

    def wait(self, condition, what, timeout):
        def exited():
            if self.process.poll() is not None:
                return f"prometheus exited: {Path(self.log.name).read_text()[-2000:]}"

        return poll(condition, what, timeout, exited, lambda: f"alerts: {self.alerts()}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
