"""Fake metadata services for the rotator's own credentials: the EC2 instance metadata
service (IMDSv2 only) and a container credentials endpoint (ECS task roles, EKS Pod
Identity), each a local_http.LocalServer.

What they hand out is real to moto: `instance_role` creates a rotator role in moto with
the documented rotator policy and assumes it (as test-admin, while moto's checks are still
off), so every request the component signs with these credentials is still
signature-checked by moto and authorized against the role's policy, and the CI roles'
trust policies name that role session.

IMDSv2 as on EC2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
answers a session token; every `GET` under `/latest/` without that token (IMDSv1) gets
401; `GET /latest/meta-data/iam/security-credentials/` lists the role's name and
`.../<role>` answers `{"Code": "Success", "LastUpdated", "Type": "AWS-HMAC",
"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}`. The container endpoint
answers the same credential fields (ECS's shape, with `RoleArn`) on one path; with an authorization token configured, a request
without it gets 401 and one with another value 403.

Each credentials answer is one "fetch": the n-th fetch serves the n-th credential set
and reports the n-th expiration (seconds from now; the last of either list repeats), so
a test can hand out credentials that expire within a tick. Nothing here prints a
credential: what is recorded per request is the method, the path and booleans.
"""

import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from emulator import HOME_ACCOUNT, rotator_policy
from local_http import WORLD, LocalServer

IMDS_TOKEN_PATH = "/latest/api/token"
IMDS_CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
CONTAINER_PATH = "/v1/credentials"
# As on EC2, the instance profile's role session is named after the instance.
INSTANCE_ID = "i-0a1b2c3d4e5f60718"
SIX_HOURS = 6 * 3600


def instance_role(aws, name="concourse-sts-instance", session=INSTANCE_ID, count=1, policy_document=None):
    """A rotator role in moto (trusting test-admin, with the documented rotator policy
    unless `policy_document` says otherwise) and `count` sessions of it, assumed by
    test-admin before `aws.enforce()`: moto issued them, so moto checks every signature
    made with them. The CI roles created afterwards trust this role session, and the
    sessions' values join the leak check. Returns the (key, secret, token) sets."""
    iam = aws.admin_client("iam")
    admin = f"arn:aws:iam::{HOME_ACCOUNT}:user/test-admin"
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": admin}, "Action": "sts:AssumeRole"}],
    }
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName=name, PolicyName="rotator", PolicyDocument=policy_document or rotator_policy())
    sts = aws.admin_client("sts")
    sets = []
    for _ in range(count):
        creds = sts.assume_role(RoleArn=f"arn:aws:iam::{HOME_ACCOUNT}:role/{name}", RoleSessionName=session)["Credentials"]
        sets.append((creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]))
    # moto compares a trust policy's principal with the caller's session ARN.
    aws.rotator_principal = f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/{name}/{session}"
    aws.rotator_secrets.extend(value for credentials in sets for value in credentials)
    return sets


def iso(instant):
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Asked:
    """One request the service saw: never a header's value, only whether it was right."""

    at: float  # time.monotonic()
    method: str
    path: str
    # IMDS: the request carried a session token this service issued. Container: the
    # request carried the configured Authorization (True when none is configured).
    authorized: bool
    status: int


@dataclass
class Fetch:
    """One credentials answer."""

    at: float  # time.monotonic()
    index: int  # which credential set was served
    expiration: datetime


class MetadataService(LocalServer):
    """`mode` "imds" or "container". `credentials`: (key, secret, token) sets served one
    per fetch (the last repeats); `expires_in`: seconds from the moment of each fetch
    (the last repeats); `authorization`: the container endpoint's expected token."""

    def __init__(self, mode, credentials, expires_in=(SIX_HOURS,), role="concourse-sts-instance", authorization=None, path=CONTAINER_PATH):
        assert mode in ("imds", "container")
        self.mode = mode
        self.credentials = list(credentials)
        self.expires_in = list(expires_in)
        self.role = role
        self.authorization = authorization
        self.path = path
        self.lock = threading.Lock()
        self.asked = []
        self.fetches = []
        # IMDS session tokens issued: token -> monotonic expiry.
        self.tokens = {}
        super().__init__()

    @property
    def full_uri(self):
        """The container endpoint's URL (aws_container_credentials_full_uri)."""
        return self.url + self.path

    def secrets(self):
        """Values of this service's own that must never be printed: the IMDS session
        tokens it issued and the container authorization token."""
        with self.lock:
            return list(self.tokens) + ([self.authorization] if self.authorization else [])

    def handle(self, handler, _request_body):
        method, path = handler.command, handler.path
        if self.mode == "imds":
            authorized, status, body = self.imds(handler, method, path)
        else:
            authorized, status, body = self.container(handler, method, path)
        with self.lock:
            self.asked.append(Asked(time.monotonic(), method, path, authorized, status))
        payload = body.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json" if body.startswith("{") else "text/plain")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def imds(self, handler, method, path):
        if path == IMDS_TOKEN_PATH:
            if method != "PUT":
                return False, 405, ""
            ttl = handler.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return False, 400, ""
            token = secrets.token_urlsafe(32)
            with self.lock:
                self.tokens[token] = time.monotonic() + int(ttl)
            return True, 200, token
        if not path.startswith("/latest/"):
            return False, 404, ""
        token = handler.headers.get("X-aws-ec2-metadata-token")
        with self.lock:
            valid = token in self.tokens and self.tokens[token] > time.monotonic()
        if not valid:
            # IMDSv1 (no token) or a token this instance never issued: EC2 with
            # HttpTokens=required answers 401.
            return False, 401, ""
        if method != "GET":
            return True, 405, ""
        if path == IMDS_CREDENTIALS_PATH:
            return True, 200, self.role
        if path == IMDS_CREDENTIALS_PATH + self.role:
            return True, 200, self.document()
        return True, 404, ""

    def container(self, handler, method, path):
        if path != self.path:
            return False, 404, ""
        if self.authorization is not None:
            given = handler.headers.get("Authorization")
            if given is None:
                return False, 401, '{"message":"missing authorization"}'
            if given != self.authorization:
                return False, 403, '{"message":"invalid authorization"}'
        if method != "GET":
            return True, 405, ""
        return True, 200, self.document(container=True)

    def document(self, container=False):
        now = WORLD.now().replace(microsecond=0)
        with self.lock:
            index = len(self.fetches)
            expiration = now + timedelta(seconds=self.expires_in[min(index, len(self.expires_in) - 1)])
            served = min(index, len(self.credentials) - 1)
            self.fetches.append(Fetch(time.monotonic(), served, expiration))
        key, secret, token = self.credentials[served]
        credentials = {"AccessKeyId": key, "SecretAccessKey": secret, "Token": token, "Expiration": iso(expiration)}
        if container:
            # The ECS shape (EKS Pod Identity's has AccountId instead of RoleArn).
            return json.dumps({"RoleArn": f"arn:aws:iam::{HOME_ACCOUNT}:role/{self.role}", **credentials})
        return json.dumps({"Code": "Success", "LastUpdated": iso(now), "Type": "AWS-HMAC", **credentials})
