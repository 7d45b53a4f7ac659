"""The reader: what Concourse does with the secrets, every second for every account.

Each account has a thread of its own that reads the account's secrets by name with an
independent boto3 client (the test administrator, straight to moto, no fault proxy):
the three `split` secrets one after the other, as a pipeline's three `((...))` lookups
would, then the JSON secret. A set works when moto's `sts:GetCallerIdentity`, signed with
its three values, answers the account's own `assumed-role/<role>/<team>`; moto checks
the signature and the session token, so a key of one session with a token of another is
refused. The answer for one exact set never changes, so each distinct set is verified
once and the verdict reused while it is read again.

How long a working set has left is measured against AWS's own record of its session
(the AssumeRole answer the proxy saw), for `split` sets as for JSON ones; the JSON
document's own `expiration` is checked against that record too. No value read is ever
printed: what is kept is verdicts, times and, for the leak check, the values themselves
in memory.
"""

import json
import threading
import time

import boto3
import botocore.config
import botocore.exceptions

from soak_world import parse_time

CADENCE_S = 1.0
CLIENT_CONFIG = botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})


class ReadFailed(Exception):
    """The read itself failed (moto unreachable, an answer that is no answer): no verdict."""


class AccountWatch:
    """What the reader saw of one account: the split set's mixed episodes (from the first
    read that did not work to the first read after it that did), mixed JSON reads, and
    the least time left on any working set."""

    def __init__(self, account):
        self.account = account
        self.reads = 0
        self.failed_reads = 0
        self.split_mixed_reads = 0
        self.json_mixed_reads = 0
        self.episode_start = None
        # (start, seconds) of each mixed episode.
        self.windows = []
        self.open_at_end = False
        self.first_working = None
        self.least_validity = None
        self.expired_reads = 0
        self.unknown_sessions = 0
        self.json_expiration_wrong = 0
        self.values = set()

    def split_read(self, t, working):
        if working:
            if self.episode_start is not None:
                self.windows.append((self.episode_start, t - self.episode_start))
                self.episode_start = None
        else:
            self.split_mixed_reads += 1
            if self.episode_start is None:
                self.episode_start = t

    def validity(self, left, t):
        """A working set read at `t` with `left` seconds to live (None: no record of it)."""
        if self.first_working is None:
            self.first_working = t
        if left is None:
            self.unknown_sessions += 1
            return
        self.least_validity = left if self.least_validity is None else min(self.least_validity, left)
        self.expired_reads += left <= 0

    def close(self, t):
        """Ends the run: an episode still open lasted until `t` at least."""
        if self.episode_start is not None:
            self.windows.append((self.episode_start, t - self.episode_start))
            self.episode_start = None
            self.open_at_end = True


class Reader:
    def __init__(self, aws, accounts, sessions):
        self.aws = aws
        self.sessions = sessions
        self.watches = [AccountWatch(account) for account in accounts]
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.follow, args=(w,), daemon=True) for w in self.watches]
        self.lag_max = 0.0

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        now = time.time()
        for watch in self.watches:
            watch.close(now)

    def client(self, session, service, keys):
        return self.aws.client(service, *keys, session=session, config=CLIENT_CONFIG)

    def follow(self, watch):
        """Reads the account every CADENCE_S until stopped; a round that starts late is
        counted in `lag_max`, and rounds missed are skipped, not caught up."""
        session = boto3.session.Session()
        secrets = self.client(session, "secretsmanager", self.aws.admin)
        verdicts = {}
        next_at = time.time()
        while not self.stopping.is_set():
            self.lag_max = max(self.lag_max, time.time() - next_at)
            try:
                self.read(watch, secrets, lambda values: self.verify(session, verdicts, values, watch))
            except ReadFailed:
                watch.failed_reads += 1
            next_at = max(next_at + CADENCE_S, time.time())
            self.stopping.wait(max(0.0, next_at - time.time()))

    def read(self, watch, secrets, works):
        account = watch.account
        started = time.time()
        split = [secret_value(secrets, name) for name in account.split_names]
        document = secret_value(secrets, account.path)
        done = time.time()
        watch.reads += 1
        watch.values.update(v for v in split if v)
        if any(split):
            working = all(split) and works(tuple(split))
            watch.split_read(started, working)
            if working:
                watch.validity(self.left(split[0], done), done)
        if document is not None:
            values, expiration = json_credentials(document)
            watch.values.update(v for v in values or () if v)
            working = values is not None and works(values)
            watch.json_mixed_reads += not working
            if working:
                watch.validity(self.left(values[0], done), done)
                recorded = self.sessions(values[0])
                watch.json_expiration_wrong += recorded is not None and abs(recorded.expiration - expiration) > 1

    def left(self, access_key_id, now):
        """Seconds the session of `access_key_id` has left at `now`, by STS's record."""
        session = self.sessions(access_key_id)
        return None if session is None else session.expiration - now

    def verify(self, session, verdicts, values, watch):
        """Whether `values` (access key, secret key, token) are a working set of the
        watched account, asking moto once per distinct set."""
        if values not in verdicts:
            sts = self.client(session, "sts", values)
            try:
                verdicts[values] = sts.get_caller_identity()["Arn"] == watch.account.caller_arn
            except botocore.exceptions.ClientError as error:
                # A refusal is the verdict; moto failing to answer is not.
                if error.response["ResponseMetadata"]["HTTPStatusCode"] >= 500:
                    raise ReadFailed("GetCallerIdentity") from None
                verdicts[values] = False
            except (botocore.exceptions.BotoCoreError, OSError) as error:
                raise ReadFailed(type(error).__name__) from None
        return verdicts[values]


def secret_value(client, name):
    """A secret's current value, None when it does not exist."""
    try:
        return client.get_secret_value(SecretId=name)["SecretString"]
    except client.exceptions.ResourceNotFoundException:
        return None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as error:
        raise ReadFailed(type(error).__name__) from None


def json_credentials(text):
    """(access key, secret key, token) and the expiration of a JSON secret; (None,
    None) when it is not such a document, which counts as a mixed read."""
    try:
        document = json.loads(text)
        values = (document["access_key_id"], document["secret_access_key"], document["session_token"])
        return values, parse_time(document["expiration"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None
