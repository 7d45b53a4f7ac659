"""The AWS world of the integration tests and the demo: moto_server on 127.0.0.1, an
independent boto3 client, and runs of the built .wasm in the real Spin (spin.py).

Each world is built with moto's authorization off, then `enforce()` turns SigV4 and IAM
checking on (moto's /moto-api/reset-auth) before the component runs, so every request
the component makes is signature-checked and authorized against the rotator's policy.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3

from local_http import WORLD
from spin import ROOT, SpinNode, free_port

IAM_DIR = ROOT / "deploy" / "iam"
REGION = "us-east-1"
HOME_ACCOUNT = "123456789012"
OTHER_ACCOUNT = "222222222222"
ROTATOR_USER = "concourse-sts"


def start_moto_server(log):
    """Starts moto_server on a free loopback port; returns (process, url)."""
    port = free_port()
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


def rotator_policy_ssm():
    """deploy/iam/rotator-policy-ssm.json as moto can evaluate it. moto authorizes
    Parameter Store calls against the resource "*" (it names no parameter ARN), so the
    statement's resource is widened here, as rotator_policy() does for Secrets Manager;
    the actions are used exactly as documented."""
    document = json.loads(policy("rotator-policy-ssm.json"))
    [statement] = document["Statement"]
    assert statement["Sid"] == "WriteConcourseParameters"
    assert statement["Resource"] == "arn:aws:ssm:*:*:parameter/concourse/*"
    statement["Resource"] = "*"
    return json.dumps(document)


class Emulator:
    """The AWS world of one test, and the Spin nodes that run the component in it."""

    def __init__(self, url, tmp_path, generation):
        self.url = url
        self.tmp_path = tmp_path
        # A fresh world starts now.
        WORLD.shift_s = 0
        # Where the tests' own clients read and write (Secrets Manager and Parameter Store
        # are regional); a test running the app in another region sets it to that region.
        self.region = REGION
        # The Spin generation (spin.Generation) every node of this world runs.
        self.generation = generation
        # Everything spin printed, the components logged and the API answered.
        self.outputs = []
        self.nodes = []
        # The node of `run` and `serve`: one machine running `spin up` again and again.
        self.main = self.node("spin")
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

    def client(self, service, access_key, secret_key, token=None, session=boto3, config=None):
        """A client of the emulator; `session` a boto3.Session for a thread of its own."""
        return session.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=token,
            config=config,
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

    def allow_parameter_store(self):
        """Attaches the documented Parameter Store policy to the rotator user (beside the
        policy rotator() gave it), as an operator enabling secret_sink ssm would."""
        self.admin_client("iam").put_user_policy(
            UserName=ROTATOR_USER, PolicyName="rotator-ssm", PolicyDocument=rotator_policy_ssm()
        )

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
            # The documented override that admits a local emulator (and the tests' fault
            # proxies and metadata fakes) on loopback; spin.toml admits only AWS.
            "SPIN_VARIABLE_ALLOWED_ENDPOINT_OVERRIDE": "http://127.0.0.1:*",
        }
        if token:
            env["SPIN_VARIABLE_AWS_SESSION_TOKEN"] = token
        env.update({f"SPIN_VARIABLE_{k.upper()}": v for k, v in extra.items()})
        return env

    def node(self, name, runtime_config=None):
        """A Spin host of its own (state directory, logs), on the default SQLite store or
        the store `runtime_config` names."""
        node = SpinNode(self.generation, self.tmp_path / name, self.outputs, runtime_config)
        self.nodes.append(node)
        return node

    def run(self, variables, teams=(), raw=(), later_s=0, skew_s=0):
        """One tick in a fresh `spin up` of the main node: `teams` are documents registered
        under team/<name>, `raw` are (key, text) pairs stored as they are; `later_s` runs
        the tick that many seconds in the world's future, `skew_s` with the host's clock
        that far off the world's."""
        return self.main.run(variables, teams, raw, later_s, skew_s)

    def run_until_settled(self, variables, teams, accounts, ticks=8, gap_s=11 * 60):
        """Ticks `gap_s` apart, the first registering `teams`, until `settled(accounts)` or
        `ticks` have run; each tick must end (0 or 1) without a trap. The default gap is
        past the ten-minute rule a repair that fails again obeys, and past the backoff of
        an account that keeps failing when `failure_backoff_max` is five minutes. The runs."""
        runs = []
        for tick in range(ticks):
            run = self.run(variables, teams if tick == 0 else (), later_s=tick * gap_s)
            runs.append(run)
            assert run.returncode in (0, 1), run.output
            assert not run.trapped, run.output
            if self.settled(accounts):
                break
        return runs

    def settled(self, accounts):
        """Whether `accounts` accounts have a state and each one's last attempt wrote its
        whole set: nothing half written, nothing failing."""
        found = self.account_states()
        return len(found) == accounts and all(
            not s["incomplete"] and s["consecutive_failures"] == 0 for s in found.values()
        )

    def account_states(self):
        """{(team, account): state} from every state/<team> document."""
        found = {}
        for key, text in self.store().items():
            if key.startswith("state/"):
                for name, state in json.loads(text)["accounts"].items():
                    found[(key[len("state/"):], name)] = state
        return found

    def close(self):
        """Stops every `spin up` still running."""
        for node in self.nodes:
            node.stop_all()

    def secret(self, name):
        sm = self.admin_client("secretsmanager")
        try:
            return sm.get_secret_value(SecretId=name)["SecretString"]
        except sm.exceptions.ResourceNotFoundException:
            return None

    def written(self, path):
        """Which of the path's three secrets exist (their suffixes, no value)."""
        return [suffix for suffix, value in zip(("access-key", "secret-key", "session-token"), self.triple(path)) if value]

    def triple(self, path):
        return tuple(self.secret(f"{path}-{suffix}") for suffix in ("access-key", "secret-key", "session-token"))

    def caller(self, triple):
        """Who the credentials in a triple are, according to STS."""
        return self.client("sts", *triple).get_caller_identity()["Arn"]

    def serve(self, variables, **options):
        """Starts `spin up` on the main node and waits until the admin API answers;
        returns (process, base URL). The caller stops it with `stop_serving`."""
        process = self.main.serve(variables, **options)
        return process, process.url

    def stop_serving(self, process):
        process.stop()

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
        """The main node's key-value store, {key: text}."""
        return self.main.store()

    def secret_names(self):
        sm = self.admin_client("secretsmanager")
        return sorted(s["Name"] for page in sm.get_paginator("list_secrets").paginate() for s in page["SecretList"])

    def assert_working(self, expected):
        """Every path's three secrets exist and STS says their credentials are `expected[path]`.
        The assertions name the secrets but hold no value (pytest would print them)."""
        for path, arn in expected.items():
            triple = self.triple(path)
            missing = [i for i, value in enumerate(triple) if not value]
            assert missing == [], f"{path} is missing secrets {missing}"
            caller = self.caller(triple)
            assert caller == arn, path

    def all_secret_values(self):
        return [self.secret(name) for name in self.secret_names()]

    def parameter(self, name):
        """A parameter's value, decrypted, or None when there is none."""
        ssm = self.admin_client("ssm")
        try:
            return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            return None

    def parameter_triple(self, path):
        return tuple(self.parameter(f"{path}-{suffix}") for suffix in ("access-key", "secret-key", "session-token"))

    def parameter_names(self):
        ssm = self.admin_client("ssm")
        pages = ssm.get_paginator("describe_parameters").paginate()
        return sorted(p["Name"] for page in pages for p in page["Parameters"])

    def all_parameter_values(self):
        return [self.parameter(name) for name in self.parameter_names()]

    def issued_credentials(self):
        """Every credential value moto handed out: all AssumeRole sessions (written or
        not), every secret's and every parameter's value, and the rotator's own keys."""
        data = json.loads(urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=10).read())
        sessions = data.get("sts", {}).get("AssumedRole", [])
        values = [s[k] for s in sessions for k in ("access_key_id", "secret_access_key", "session_token")]
        values += [v for v in self.all_secret_values() if v]
        values += [v for v in self.all_parameter_values() if v]
        return [v for v in values + self.rotator_secrets if v]


def digest(values):
    """A short digest of credential values, to compare them in an assertion that pytest
    would otherwise print in full."""
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


def account(name, role_arn, **extra):
    return {"name": name, "roleArn": role_arn, **extra}


def team(name, *accounts):
    return {"name": name, "accounts": list(accounts)}


# An account's first credentials come due anywhere from ten minutes after they were
# written to the usual time, drawn at random (so that accounts registered together spread
# out): by this long after the first rotation, every one of `three_accounts` is due (two
# hours less the 30-minute margin), and from the rotation then on they follow the usual
# times (30 minutes before expiry, less up to 5 minutes of jitter).
ALL_FIRST_DUE_S = 91 * 60


def three_accounts(aws):
    """Two teams, three accounts in two AWS accounts; prod lives twice as long."""
    home, other = aws.ci_role(HOME_ACCOUNT), aws.ci_role(OTHER_ACCOUNT)
    return [
        team("alpha", account("dev", home), account("prod", other, duration=7200)),
        team("beta", account("lab", other)),
    ]


def hostile_teams(role):
    """{key: document} of teams whose names are built to write outside their own path
    (`..`, `/`, a trailing space, a newline, a non-ASCII letter) or that repeat an account,
    all assuming `role`: every one must be refused."""
    return {
        "team/evil": team("evil", account("../alpha/dev", role)),
        "team/evil2": team("evil2", account("x/../../alpha/dev", role)),
        "team/../alpha": team("../alpha", account("dev", role)),
        "team/alpha/dev": team("alpha/dev", account("x", role)),
        "team/alpha ": team("alpha ", account("dev", role)),
        "team/evil3": team("evil3", account("dev\n", role)),
        "team/\u00e9quipe": team("\u00e9quipe", account("dev", role)),
        "team/evil4": team("evil4", account("dev", role), account("dev", role)),
    }
