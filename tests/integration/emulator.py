"""The AWS world of the integration tests and the demo: moto_server on 127.0.0.1, an
independent boto3 client, and runs of the project's host with the built .wasm.

Each world is built with moto's authorization off, then `enforce()` turns SigV4 and IAM
checking on (moto's /moto-api/reset-auth) before the component runs, so every request
the component makes is signature-checked and authorized against the rotator's policy.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "target" / "wasm32-wasip2" / "release" / "concourse_sts.wasm"
HOST = ROOT / "target" / "host" / "concourse-sts-host"
IAM_DIR = ROOT / "deploy" / "iam"
REGION = "us-east-1"
HOME_ACCOUNT = "123456789012"
OTHER_ACCOUNT = "222222222222"
ROTATOR_USER = "concourse-sts"


def start_moto_server(log):
    """Starts moto_server on a free loopback port; returns (process, url)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
            return server, url
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)


def moto_api(url, path, body=""):
    request = urllib.request.Request(
        url + path, data=body.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request, timeout=10).read()


def policy(name, **replacements):
    text = (IAM_DIR / name).read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def rotator_policy():
    """deploy/iam/rotator-policy.json as moto can evaluate it. moto authorizes Secrets
    Manager calls against the resource "*" (it names no secret ARN), so the secret-write
    statement's resource is widened here; the AssumeRole statement, which moto checks per
    role ARN, is used exactly as documented."""
    document = json.loads(policy("rotator-policy.json"))
    for statement in document["Statement"]:
        if statement["Sid"] == "WriteConcourseSecrets":
            assert statement["Resource"] == "arn:aws:secretsmanager:*:*:secret:/concourse/*"
            statement["Resource"] = "*"
    return json.dumps(document)


@dataclass
class Run:
    """One host run: exit status, the component's JSON log lines, everything printed."""

    returncode: int
    stdout: str
    stderr: str
    events: list = field(default_factory=list)

    def of(self, kind):
        return [e for e in self.events if e.get("event") == kind]

    def rotated(self):
        return {(e["team"], e["account"]) for e in self.of("account_rotated")}


class Emulator:
    """The AWS world of one test, and the runs of the host in it."""

    def __init__(self, url, tmp_path):
        self.url = url
        self.tmp_path = tmp_path
        self.kv = tmp_path / "kv.json"
        self.outputs = []
        self.rotator_secrets = []
        # Whom the CI roles trust: the documented rotator user unless the test makes
        # the rotator a role session (moto checks trust policies within an account).
        self.rotator_principal = f"arn:aws:iam::{HOME_ACCOUNT}:user/{ROTATOR_USER}"
        moto_api(url, "/moto-api/reset")
        moto_api(url, "/moto-api/reset-auth", "inf")
        bootstrap = self.client("iam", "AKIDBOOTSTRAP", "bootstrap")
        allow_all = json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        )
        bootstrap.create_user(UserName="test-admin")
        bootstrap.put_user_policy(UserName="test-admin", PolicyName="all", PolicyDocument=allow_all)
        key = bootstrap.create_access_key(UserName="test-admin")["AccessKey"]
        self.admin = (key["AccessKeyId"], key["SecretAccessKey"], None)

    def client(self, service, access_key, secret_key, token=None):
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=token,
        )

    def admin_client(self, service):
        return self.client(service, *self.admin)

    def iam_in(self, account):
        """An IAM client acting in `account` (moto maps assumed-role keys to the role's account)."""
        if account == HOME_ACCOUNT:
            return self.admin_client("iam")
        creds = self.admin_client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/bootstrap", RoleSessionName="setup"
        )["Credentials"]
        return self.client("iam", creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])

    def ci_role(self, account, name="concourse-ci", trust_policy="ci-role-trust-policy.json"):
        """A team's CI role, trusting the rotator as the documented trust policy does."""
        documented = f"arn:aws:iam::{HOME_ACCOUNT}:user/{ROTATOR_USER}"
        trust = policy(trust_policy, **{documented: self.rotator_principal})
        role = self.iam_in(account).create_role(RoleName=name, AssumeRolePolicyDocument=trust)
        return role["Role"]["Arn"]

    def rotator(self, session=False):
        """The rotator identity with the documented policy; as a role session if asked."""
        iam = self.admin_client("iam")
        document = rotator_policy()
        if session:
            trust = policy("ci-role-trust-policy.json", **{"user/concourse-sts": "user/test-admin"})
            iam.create_role(RoleName="concourse-sts", AssumeRolePolicyDocument=trust)
            # AWS accepts the role's ARN or the session's here; moto only the session's.
            self.rotator_principal = f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-sts/rotator"
            iam.put_role_policy(RoleName="concourse-sts", PolicyName="rotator", PolicyDocument=document)
            creds = self.admin_client("sts").assume_role(
                RoleArn=f"arn:aws:iam::{HOME_ACCOUNT}:role/concourse-sts", RoleSessionName="rotator"
            )["Credentials"]
            keys = (creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
        else:
            iam.create_user(UserName=ROTATOR_USER)
            iam.put_user_policy(UserName=ROTATOR_USER, PolicyName="rotator", PolicyDocument=document)
            key = iam.create_access_key(UserName=ROTATOR_USER)["AccessKey"]
            keys = (key["AccessKeyId"], key["SecretAccessKey"], None)
        self.rotator_secrets.extend(k for k in keys if k)
        return keys

    def enforce(self):
        """From here on moto checks every signature and every IAM permission."""
        moto_api(self.url, "/moto-api/reset-auth", "0")

    def variables(self, keys, **extra):
        access_key, secret_key, token = keys
        env = {
            "SPIN_VARIABLE_AWS_ACCESS_KEY_ID": access_key,
            "SPIN_VARIABLE_AWS_SECRET_ACCESS_KEY": secret_key,
            "SPIN_VARIABLE_AWS_REGION": REGION,
            "SPIN_VARIABLE_AWS_ENDPOINT_URL": self.url,
        }
        if token:
            env["SPIN_VARIABLE_AWS_SESSION_TOKEN"] = token
        env.update({f"SPIN_VARIABLE_{k.upper()}": v for k, v in extra.items()})
        return env

    def run(self, variables, teams=(), raw=(), ticks=1, interval_ms=0, later_s=0):
        """Runs the host: `teams` are documents registered under team/<name>, `raw` are
        (key, text) pairs stored as they are; `later_s` runs the tick that many seconds
        in the component's future."""
        args = [str(HOST), "--wasm", str(WASM), "--kv", str(self.kv), "--ticks", str(ticks)]
        args += ["--interval-ms", str(interval_ms), "--clock-offset", str(later_s)]
        entries = [(f"team/{t['name']}", json.dumps(t)) for t in teams] + list(raw)
        for key, text in entries:
            args += ["--key-value", f"{key}={text}"]
        env = {"PATH": os.environ.get("PATH", ""), **variables}
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        run = Run(done.returncode, done.stdout, done.stderr)
        for line in done.stdout.splitlines():
            try:
                run.events.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        self.outputs.append(done.stdout + done.stderr)
        return run

    def secret(self, name):
        sm = self.admin_client("secretsmanager")
        try:
            return sm.get_secret_value(SecretId=name)["SecretString"]
        except sm.exceptions.ResourceNotFoundException:
            return None

    def triple(self, path):
        return tuple(self.secret(f"{path}-{suffix}") for suffix in ("access-key", "secret-key", "session-token"))

    def caller(self, triple):
        """Who the credentials in a triple are, according to STS."""
        return self.client("sts", *triple).get_caller_identity()["Arn"]

    def serve(self, variables):
        """Starts the host serving the admin API; returns (process, base URL). The caller
        stops it with `stop_serving`, which records its output for the leak check."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        args = [str(HOST), "--wasm", str(WASM), "--kv", str(self.kv), "--serve", f"127.0.0.1:{port}"]
        env = {"PATH": os.environ.get("PATH", ""), **variables}
        server = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        first = server.stdout.readline()
        assert first.startswith("listening on"), first
        return server, f"http://127.0.0.1:{port}"

    def stop_serving(self, server):
        server.terminate()
        output, _ = server.communicate(timeout=10)
        self.outputs.append(output)

    def request(self, method, url, token=None, body=None):
        """One HTTP request; returns (status, parsed JSON or None). Answers are kept for
        the leak check too."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        self.outputs.append(text)
        return status, (json.loads(text) if text else None)

    def store(self):
        """The key-value store as the host left it."""
        return json.loads(self.kv.read_text())

    def secret_names(self):
        sm = self.admin_client("secretsmanager")
        return sorted(s["Name"] for page in sm.get_paginator("list_secrets").paginate() for s in page["SecretList"])

    def assert_working(self, expected):
        """Every path's three secrets exist and STS says their credentials are `expected[path]`."""
        for path, arn in expected.items():
            triple = self.triple(path)
            assert all(triple), f"{path} is missing a secret"
            assert self.caller(triple) == arn, path

    def all_secret_values(self):
        return [self.secret(name) for name in self.secret_names()]

    def issued_credentials(self):
        """Every credential value moto handed out: all AssumeRole sessions (written or
        not), every secret's value, and the rotator's own keys."""
        data = json.loads(urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=10).read())
        sessions = data.get("sts", {}).get("AssumedRole", [])
        values = [s[k] for s in sessions for k in ("access_key_id", "secret_access_key", "session_token")]
        values += [v for v in self.all_secret_values() if v]
        return [v for v in values + self.rotator_secrets if v]


def account(name, role_arn, **extra):
    return {"name": name, "roleArn": role_arn, **extra}


def team(name, *accounts):
    return {"name": name, "accounts": list(accounts)}
