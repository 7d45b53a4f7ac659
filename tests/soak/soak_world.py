"""The soak's AWS world: moto_server with signature and IAM checking on (the integration
tests' Emulator), one CI role per account so that every account has an identity of its
own, and the fault proxy in front of moto that also keeps AWS's own record of every
session STS issued.

That record is what the figures measure expirations against: moto does not reject
expired credentials and its data dump has no expiration, but every `AssumeRole` answer
passes through the proxy on its way to the component (whether or not a fault then eats
it), and it carries the session's `Expiration` in STS's own words.
"""

import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime

from emulator import HOME_ACCOUNT, OTHER_ACCOUNT, account, team
from faults import FaultProxy

# Each team deploys to two AWS accounts, as the README's example teams do.
ACCOUNTS = (("dev", HOME_ACCOUNT), ("prod", OTHER_ACCOUNT))
TEAM_NAMES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
# The AWS minimum for AssumeRole.
DURATION_S = 900
SUFFIXES = ("access-key", "secret-key", "session-token")


@dataclass(frozen=True)
class Account:
    """One account of one team, and who its credentials must say they are."""

    team: str
    name: str
    role_arn: str
    # GetCallerIdentity's answer for a working set: arn:aws:sts::<id>:assumed-role/<role>/<team>.
    caller_arn: str

    @property
    def path(self):
        return f"/concourse/{self.team}/{self.name}"

    @property
    def split_names(self):
        return [f"{self.path}-{suffix}" for suffix in SUFFIXES]

    @property
    def secret_names(self):
        """Every secret `secret_format = both` writes: the three split ones and the JSON one."""
        return self.split_names + [self.path]


@dataclass(frozen=True)
class Session:
    """One session STS issued, as its AssumeRole answer said (values never printed)."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: float
    caller_arn: str

    def values(self):
        return (self.access_key_id, self.secret_access_key, self.session_token)


def team_names(count):
    return [TEAM_NAMES[i] if i < len(TEAM_NAMES) else f"team{i}" for i in range(count)]


def build_world(aws, teams):
    """CI roles for `teams` team names (one role per account, each trusting the rotator),
    the rotator user with the documented policy, then moto's checks switched on. Returns
    (rotator keys, {team: team document}, [Account])."""
    documents, accounts = {}, []
    for name in teams:
        members = []
        for account_name, account_id in ACCOUNTS:
            role_arn = aws.ci_role(account_id, name=f"concourse-ci-{name}-{account_name}")
            role_name = role_arn.rsplit("/", 1)[1]
            caller = f"arn:aws:sts::{account_id}:assumed-role/{role_name}/{name}"
            accounts.append(Account(name, account_name, role_arn, caller))
            members.append(account(account_name, role_arn, duration=DURATION_S))
        documents[name] = team(name, *members)
    keys = aws.rotator()
    aws.enforce()
    return keys, documents, accounts


class SessionRecordingProxy(FaultProxy):
    """FaultProxy with every answer delayed by `delay` seconds (so that a tick spans
    seconds and a disturbance can land inside one), which records each session moto's
    STS issued: `sessions` maps an access key id to its Session."""

    def __init__(self, upstream, rate, seed, delay):
        super().__init__(upstream, rate=rate, seed=seed)
        self.delay = delay
        self.sessions = {}
        # A client that gave up (its request timeout) closes the connection under an
        # answer: that is the component's business, not a traceback on the soak's stderr.
        self.server.handle_error = lambda request, address: None

    def handle(self, handler, body):
        self.stopping.wait(self.delay)
        super().handle(handler, body)

    def forward(self, handler, body):
        status, headers, payload = super().forward(handler, body)
        if status == 200 and b"AssumeRoleResult" in payload:
            session = parse_assume_role(payload)
            with self.lock:
                self.sessions[session.access_key_id] = session
        return status, headers, payload

    def session(self, access_key_id):
        with self.lock:
            return self.sessions.get(access_key_id)

    def all_sessions(self):
        with self.lock:
            return list(self.sessions.values())


def parse_assume_role(payload):
    """The Session in an AssumeRole answer (XML, namespaced)."""
    fields = {}
    for element in ElementTree.fromstring(payload).iter():
        fields.setdefault(element.tag.rsplit("}", 1)[-1], element.text)
    return Session(
        access_key_id=fields["AccessKeyId"],
        secret_access_key=fields["SecretAccessKey"],
        session_token=fields["SessionToken"],
        expiration=parse_time(fields["Expiration"]),
        caller_arn=fields["Arn"],
    )


def parse_time(text):
    """Seconds since the epoch of an RFC 3339 / ISO 8601 time ("Z" or an offset)."""
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()


class Registrar(threading.Thread):
    """Registers the teams one by one, `spread` seconds apart, by writing their documents
    into the shared store as `spin up --key-value` would: the initial rotations are then
    spread over the run, so that there is work in flight for the disturbances to hit."""

    def __init__(self, store, documents, spread, log):
        super().__init__(daemon=True)
        self.store = store
        self.documents = list(documents.values())
        self.spread = spread
        self.log = log
        self.registered = {}
        self.stop = threading.Event()

    def run(self):
        for i, document in enumerate(self.documents):
            if i and self.stop.wait(self.spread):
                return
            self.store.put(f"team/{document['name']}", document)
            self.registered[document["name"]] = time.time()
            self.log(f"registered team {document['name']} ({i + 1} of {len(self.documents)})")
