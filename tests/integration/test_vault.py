"""Vault as a sink (`secret_sink` listing `vault`), end to end: the built .wasm under
`spin up` against a real OpenBao dev server (vault.py) and moto_server with signature and
IAM checking on. Secrets are read back exactly as Concourse's vault credential manager
reads them, with a token of deploy/vault/concourse-read.hcl alone, and their credentials
must resolve to the team's session. After each test no Vault token, secret id or
credential may appear in anything Spin printed or the component logged.

Credential values are never put where pytest would print them: they are compared as
digests, and STS is asked through `identity()`, which answers with an ARN."""

import base64
import json
import threading

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from emulator import HOME_ACCOUNT, OTHER_ACCOUNT, account, digest, team, three_accounts
from spin import free_port
from vault import (
    ROLE_ID,
    SECRET_ID,
    SERVER_ID_HEADER,
    AwsLogin,
    OpenBao,
    VaultError,
    VaultFront,
    call,
    concourse_read,
    provision,
    readme_block,
    run_cli,
)

MINUTES = 60
SUFFIXES = ("access-key", "secret-key", "session-token")
FIELDS = ("access_key_id", "secret_access_key", "session_token")
ACCOUNTS = {
    ("alpha", "dev"): f"arn:aws:sts::{HOME_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("alpha", "prod"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/alpha",
    ("beta", "lab"): f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/concourse-ci/beta",
}
ROTATED = set(ACCOUNTS)
APPROLE = {"vault_role_id": ROLE_ID, "vault_secret_id": SECRET_ID}


class VaultWorld:
    """One test's OpenBao, the fronts the component reaches it through, and every secret
    of Vault's that must never be printed."""

    def __init__(self, aws, directory):
        self.aws = aws
        self.bao = OpenBao(directory)
        self.fronts = []
        self.secrets = {self.bao.token, SECRET_ID}
        self.reader = None
        self.namespace = None

    def provision(self, **options):
        self.namespace = options.get("namespace")
        self.reader = provision(self.bao, **options)
        self.secrets.add(self.reader)

    def front(self, upstream=None, **faults):
        """A started VaultFront before `upstream` (OpenBao by default)."""
        front = VaultFront(upstream or self.bao.url, **faults).__enter__()
        self.fronts.append(front)
        return front

    def variables(self, keys, front, **extra):
        """The app pointed at moto and, through `front`, at Vault; AppRole unless `extra`
        says otherwise."""
        settings = {"secret_sink": "vault", "vault_url": front.url, "vault_writes_per_second": "0", **APPROLE}
        if self.namespace:
            settings["vault_namespace"] = self.namespace
        settings.update(extra)
        return self.aws.variables(keys, **settings)

    def read(self, team_name, var):
        """What Concourse makes of `((var))` in a pipeline of `team_name`."""
        return concourse_read(self.bao.url, self.reader, team_name, var, namespace=self.namespace)

    def triple(self, team_name, account_name):
        return tuple(self.read(team_name, f"{account_name}-{suffix}") for suffix in SUFFIXES)

    def fields(self, team_name, account_name):
        return tuple(self.read(team_name, f"{account_name}.{field}") for field in FIELDS)

    def metadata(self, path):
        return self.bao.call("GET", f"concourse/metadata/{path}", namespace=self.namespace)["data"]

    def version(self, path):
        """A KV v2 secret's current version; 0 when there is none."""
        try:
            return self.metadata(path)["current_version"]
        except VaultError as error:
            assert error.status == 404, error
            return 0

    def close(self):
        for front in self.fronts:
            front.__exit__(None, None, None)
            self.secrets |= front.tokens
        self.bao.stop()


@pytest.fixture
def vault(aws, tmp_path):
    world = VaultWorld(aws, tmp_path)
    try:
        yield world
    finally:
        aws.close()
        world.close()
    kept = "\n".join(aws.outputs)
    # A count, not the list: pytest would print the values it found.
    leaked = sum(1 for secret in world.secrets if secret and secret in kept)
    assert leaked == 0, f"{leaked} Vault tokens or secret ids appear in the output"


def rotator(aws):
    keys = aws.rotator()
    aws.enforce()
    return keys


def identity(aws, triple):
    """Whom STS takes these credentials for; never the values themselves."""
    if not all(isinstance(value, str) and value for value in triple):
        return "missing"
    return aws.caller(triple)


def assert_readable(vault, accounts=ROTATED, split=True, json_format=False):
    """Every account's credentials, read as Concourse reads them, are the team's session;
    both layouts, when both are written, hold the same set."""
    for team_name, account_name in accounts:
        expected = ACCOUNTS[(team_name, account_name)]
        if split:
            assert identity(vault.aws, vault.triple(team_name, account_name)) == expected, account_name
        if json_format:
            assert identity(vault.aws, vault.fields(team_name, account_name)) == expected, account_name
        if split and json_format:
            same = digest(vault.triple(team_name, account_name)) == digest(vault.fields(team_name, account_name))
            assert same, f"{team_name}/{account_name}: the layouts differ"


def test_kv2_first_rotation_and_overwrite_beside_secrets_manager(aws, vault):
    teams = three_accounts(aws)
    keys = rotator(aws)
    vault.provision(version=2)
    front = vault.front()
    # moto alone is admitted by the override: Vault is reached through the manifest's
    # {{ vault_url }} entry.
    variables = vault.variables(
        keys,
        front,
        secret_sink="secretsmanager,vault",
        secret_format="both",
        allowed_endpoint_override=aws.url,
    )
    first = aws.run(variables, teams)
    assert first.returncode == 0, first.output
    assert first.rotated() == ROTATED
    assert {e["secrets_created"] for e in first.of("account_rotated")} == {8}
    assert_readable(vault, split=True, json_format=True)
    for team_name, account_name in ROTATED:
        in_vault = digest(vault.triple(team_name, account_name))
        in_sm = digest(aws.triple(f"/concourse/{team_name}/{account_name}"))
        assert in_vault == in_sm, f"{team_name}/{account_name}: Vault and Secrets Manager differ"
    labels = vault.metadata("alpha/dev-session-token")
    assert labels["custom_metadata"] == {"concourse-sts:team": "alpha", "concourse-sts:account": "dev"}
    assert labels["current_version"] == 1
    # Concourse's json read of the whole map, and of the secret's expiration.
    document = vault.read("alpha", "dev")
    assert sorted(document) == ["access_key_id", "expiration", "secret_access_key", "session_token"]
    assert vault.read("alpha", "dev.expiration").endswith("Z")
    assert all(set(s["sinks"]) == {"secretsmanager", "vault"} for s in aws.account_states().values())
    # One login for the tick, its token revoked at the end; writes check-and-set.
    assert len(front.of("POST auth/approle/login")) == 1
    assert len(front.of("POST auth/token/revoke-self")) == 1
    assert len(front.of("GET sys/internal/ui/mounts/concourse")) == 1
    accessors = vault.bao.call("LIST", "auth/token/accessors")["data"]["keys"]
    assert len(accessors) == 2, "the root token and the reader's: the rotator's is revoked"

    before = {key: digest(vault.triple(*key)) for key in ROTATED}
    second = aws.run(variables, later_s=40 * MINUTES)
    assert second.returncode == 0, second.output
    # The hour-long credentials are due; prod's two-hour ones only if their first due
    # time, drawn from ten minutes to 90 on (spreading a registration), has come.
    rotated = second.rotated()
    assert {("alpha", "dev"), ("beta", "lab")} <= rotated
    assert {e["secrets_created"] for e in second.of("account_rotated")} == {0}
    assert_readable(vault, split=True, json_format=True)
    for key in ROTATED:
        changed = digest(vault.triple(*key)) != before[key]
        assert changed == (key in rotated), key
    assert vault.metadata("alpha/dev-access-key")["current_version"] == 2
    assert vault.metadata("alpha/prod-access-key")["current_version"] == 1 + (("alpha", "prod") in rotated)


@pytest.mark.component_logic
def test_kv1_with_the_operators_token_in_a_namespace(aws, vault):
    teams = three_accounts(aws)
    keys = rotator(aws)
    vault.provision(version=1, namespace="platform")
    # A periodic token of the rotator's policy, as the README suggests: renewed by each
    # tick, never revoked.
    token = vault.bao.call(
        "POST", "auth/token/create", {"policies": ["concourse-sts"], "period": "1h", "no_parent": True}, namespace="platform"
    )["auth"]["client_token"]
    vault.secrets.add(token)
    vault.bao.call("POST", "auth/token/lookup", {"token": token}, namespace="platform")
    front = vault.front()
    variables = vault.variables(
        keys, front, vault_role_id="", vault_secret_id="", vault_token=token, secret_format="both"
    )
    first = aws.run(variables, teams)
    assert first.returncode == 0, first.output
    assert first.rotated() == ROTATED
    assert_readable(vault, split=True, json_format=True)
    assert front.of("POST auth/approle") == [] and front.of("POST auth/token/revoke-self") == []
    assert len(front.of("POST auth/token/renew-self")) == 1
    # KV v1: plain writes at concourse/<team>/..., no data/ nor metadata.
    assert front.of("POST concourse/data") == [] and front.of("GET concourse/metadata") == []
    assert len(front.of("POST concourse/alpha/")) == 8
    before = digest(vault.triple("beta", "lab"))
    second = aws.run(variables, later_s=40 * MINUTES)
    assert second.returncode == 0, second.output
    assert ("beta", "lab") in second.rotated()
    assert digest(vault.triple("beta", "lab")) != before
    assert_readable(vault, split=True, json_format=True)
    still = vault.bao.call("POST", "auth/token/lookup", {"token": token}, namespace="platform")
    assert still["data"]["ttl"] > 0, "the operator's token lives on"


@pytest.mark.component_logic
def test_the_readmes_approle_commands_set_up_what_a_rotation_needs(aws, vault):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = rotator(aws)
    lines = readme_block("approle-setup")
    outputs = [run_cli(vault.bao, line) for line in lines]
    role_id, secret_id = outputs[-2], outputs[-1]
    vault.secrets.add(secret_id)
    reader = vault.bao.call("POST", "auth/token/create", {"policies": ["concourse-read"], "no_default_policy": True})
    vault.reader = reader["auth"]["client_token"]
    vault.secrets.add(vault.reader)
    front = vault.front()
    variables = vault.variables(keys, front, vault_role_id=role_id, vault_secret_id=secret_id)
    run = aws.run(variables, [team("alpha", account("dev", role))])
    assert run.returncode == 0, run.output
    assert_readable(vault, [("alpha", "dev")])


@pytest.mark.component_logic
def test_a_path_the_policy_denies_fails_that_account_clearly(aws, vault):
    teams = three_accounts(aws)
    keys = rotator(aws)
    vault.provision(version=2, deny=["concourse/data/beta/*"])
    variables = vault.variables(keys, vault.front())
    run = aws.run(variables, teams)
    assert run.returncode == 1, run.output
    assert run.rotated() == {("alpha", "dev"), ("alpha", "prod")}
    [failed] = run.of("account_failed")
    assert (failed["team"], failed["account"], failed["stage"]) == ("beta", "lab", "write_secrets")
    assert failed["code"] == "VaultPermissionDenied" and failed["permanent"] is True, failed
    assert "permission denied (POST concourse/data/beta/lab-access-key)" in failed["error"], failed
    assert "[not written: concourse/beta/lab-access-key (vault)" in failed["error"], failed
    assert "beta/lab (VaultPermissionDenied)" in run.error
    assert_readable(vault, {("alpha", "dev"), ("alpha", "prod")})
    assert vault.read("beta", "lab-access-key") is None


@pytest.mark.component_logic
def test_a_check_and_set_conflict_keeps_a_newer_set_and_overwrites_an_older_one(aws, vault):
    role = aws.ci_role(HOME_ACCOUNT)
    keys = rotator(aws)
    vault.provision(version=2)
    front = vault.front()
    raced = threading.Event()
    written = {}

    def second_writer(operation):
        """Right before the component's first write of a key, another writer stores a
        set there on the version the component has just read."""
        key = operation.removeprefix("POST concourse/data/")
        if operation.startswith("POST concourse/data/") and key in written and not raced.is_set():
            raced.set()
            current = vault.version(key)
            data = {"value": "from-another-node", "expiration": written[key]}
            vault.bao.call("POST", f"concourse/data/{key}", {"data": data, "options": {"cas": current}})

    front.before = second_writer
    variables = vault.variables(keys, front)
    teams = [team("alpha", account("dev", role))]
    # A set far in the future: newer than the component's, so it is kept.
    written["alpha/dev-access-key"] = "2999-01-01T00:00:00Z"
    first = aws.run(variables, teams)
    assert raced.is_set()
    assert first.returncode == 0, first.output
    assert vault.read("alpha", "dev-access-key") == "from-another-node"
    [kept] = [e for e in first.of("attempt_failed") if e["operation"] == "vault_check_and_set"]
    assert kept["code"] == "VaultNewerSetKept" and "was kept" in kept["error"], kept
    assert len(front.of("GET concourse/data/alpha/dev-access-key")) == 1
    # An older set (a node that lost its lease) is overwritten on its version.
    raced.clear()
    written.clear()
    written["alpha/dev-secret-key"] = "2000-01-01T00:00:00Z"
    second = aws.run(variables, later_s=40 * MINUTES)
    assert raced.is_set()
    assert second.returncode == 0, second.output
    assert second.of("attempt_failed") == []
    assert_readable(vault, [("alpha", "dev")])
    # Version 1 by the first tick, 2 by the other writer, 3 on top of it.
    assert vault.version("alpha/dev-secret-key") == 3


@pytest.mark.component_logic
def test_vault_restarted_mid_tick_loses_nothing(aws, vault):
    teams = three_accounts(aws)
    keys = rotator(aws)
    vault.provision(version=2)
    front = vault.front()
    restarted = threading.Event()

    def restart(operation):
        """At the tick's first write, Vault stops and an empty one (a dev server keeps
        nothing) starts on the same address, provisioned the same way."""
        if operation.startswith("POST concourse/data/") and not restarted.is_set():
            restarted.set()
            vault.bao.restart()
            vault.provision(version=2)

    front.before = restart
    run = aws.run(vault.variables(keys, front), teams)
    assert restarted.is_set()
    assert run.returncode == 0, run.output
    assert run.rotated() == ROTATED
    assert_readable(vault)
    # The old token was refused, its own lookup confirmed Vault no longer knew it, and one
    # new login replaced it.
    assert len(front.of("POST auth/approle/login")) == 2
    assert len(front.of("GET auth/token/lookup-self")) >= 1


@pytest.mark.component_logic
def test_a_sealed_vault_fails_its_accounts_not_the_tick_and_the_next_tick_repairs(aws, vault):
    teams = three_accounts(aws)
    keys = rotator(aws)
    vault.provision(version=2)
    front = vault.front()
    variables = vault.variables(keys, front, secret_sink="secretsmanager,vault")
    vault.bao.seal()
    sealed = aws.run(variables, teams)
    assert sealed.returncode == 1, sealed.output
    assert not sealed.trapped and not sealed.of("tick_failed"), sealed.output
    [finished] = sealed.of("tick_finished")
    assert finished["failed"] == 3
    for event in sealed.of("account_failed"):
        assert event["code"] == "VaultSealed" and event["retryable"] is True, event
    # Secrets Manager holds every set; three logins were tried, then no more.
    aws.assert_working({f"/concourse/{t}/{a}": arn for (t, a), arn in ACCOUNTS.items()})
    assert len(front.of("POST auth/approle/login")) == 3
    assert all(s["incomplete"] and set(s["sinks"]) == {"secretsmanager"} for s in aws.account_states().values())
    vault.bao.unseal()
    repaired = aws.run(variables, later_s=MINUTES)
    assert repaired.returncode == 0, repaired.output
    assert {(e["team"], e["account"], e["reason"]) for e in repaired.of("account_rotated")} == {
        (t, a, "incomplete") for t, a in ROTATED
    }
    assert_readable(vault)
    for team_name, account_name in ROTATED:
        same = digest(vault.triple(team_name, account_name)) == digest(aws.triple(f"/concourse/{team_name}/{account_name}"))
        assert same, f"{team_name}/{account_name}: the repair left the sinks apart"


@pytest.mark.component_logic
def test_thirty_percent_faults_on_vault_end_consistent_within_a_few_ticks(aws, vault):
    teams = three_accounts(aws)
    keys = rotator(aws)
    vault.provision(version=2)
    front = vault.front(rate=0.3, seed=20261206, latency=0.05)
    variables = vault.variables(keys, front, failure_backoff_max="5m", request_timeout="5s")
    runs = aws.run_until_settled(variables, teams, accounts=3)
    assert front.injected, "no fault was injected"
    attempts = [e for run in runs for e in run.of("attempt_failed")]
    assert attempts, "no failed attempt was logged"
    assert aws.settled(3), "still half written or failing after eight ticks"
    assert_readable(vault)


def aws_login_world(aws, vault, server_id="vault.example.com"):
    """The rotator user, the harness's AWS login before OpenBao, bound to that user."""
    keys = rotator(aws)
    vault.provision(version=2)
    login = AwsLogin(
        vault.bao.url,
        aws.url,
        roles={
            "concourse-sts": {
                "bound_iam_principal_arn": f"arn:aws:iam::{HOME_ACCOUNT}:user/concourse-sts",
                "policies": ["concourse-sts"],
            }
        },
        server_id=server_id,
    ).__enter__()
    vault.fronts.append(login)
    login.tokens = set()
    return keys, login


@pytest.mark.component_logic
def test_the_aws_login_proves_the_rotators_aws_identity(aws, vault):
    role = aws.ci_role(HOME_ACCOUNT)
    keys, login = aws_login_world(aws, vault)
    front = vault.front(login.url)
    variables = vault.variables(
        keys,
        front,
        vault_role_id="",
        vault_secret_id="",
        vault_auth="aws",
        vault_aws_role="concourse-sts",
        vault_aws_server_id="vault.example.com",
    )
    run = aws.run(variables, [team("alpha", account("dev", role))])
    assert run.returncode == 0, run.output
    assert login.logins == [f"arn:aws:iam::{HOME_ACCOUNT}:user/concourse-sts"]
    assert login.refused == []
    assert_readable(vault, [("alpha", "dev")])

    # Without the server id the Vault wants, or bound to another principal: refused,
    # the accounts fail for good, and the login is not tried again this tick.
    unsigned = {**variables, "SPIN_VARIABLE_VAULT_AWS_SERVER_ID": ""}
    refused = aws.run(unsigned, later_s=40 * MINUTES)
    assert refused.returncode == 1, refused.output
    [failed] = refused.of("account_failed")
    assert failed["permanent"] is True and "X-Vault-AWS-IAM-Server-ID" in failed["error"], failed
    assert "logging in to Vault" in failed["error"], failed
    assert login.refused == ["error validating X-Vault-AWS-IAM-Server-ID header: missing header"]
    login.roles["concourse-sts"]["bound_iam_principal_arn"] = f"arn:aws:iam::{HOME_ACCOUNT}:role/someone-else"
    other = aws.run(variables, later_s=80 * MINUTES)
    assert other.returncode == 1, other.output
    assert "does not belong to the role" in other.of("account_failed")[0]["error"]


def signed_login(aws, keys, body="Action=GetCallerIdentity&Version=2011-06-15", server_id=None, sign_server_id=True):
    """The fields of an AWS login, signed with botocore as Vault's own CLI signs them."""
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if server_id and sign_server_id:
        headers[SERVER_ID_HEADER] = server_id
    request = AWSRequest(method="POST", url=aws.url + "/", data=body, headers=headers)
    SigV4Auth(Credentials(*keys), "sts", "us-east-1").add_auth(request)
    if server_id and not sign_server_id:
        request.headers[SERVER_ID_HEADER] = server_id
    encode = lambda text: base64.b64encode(text.encode()).decode()
    header_map = {name: [value] for name, value in request.headers.items()}
    return {
        "role": "concourse-sts",
        "iam_http_request_method": "POST",
        "iam_request_url": encode(request.url),
        "iam_request_body": encode(body),
        "iam_request_headers": encode(json.dumps(header_map)),
    }


@pytest.mark.component_logic
def test_the_harness_aws_login_refuses_what_vault_refuses(aws, vault):
    """The stand-in for Vault's AWS auth method is only as good as its refusals: a body
    that is not GetCallerIdentity, a server-id header missing or outside the signature, a
    signature STS (moto) does not accept."""
    keys, login = aws_login_world(aws, vault)

    def attempt(fields):
        try:
            return call(login.url, "POST", "auth/aws/login", fields)["auth"]["client_token"]
        except VaultError as error:
            return error.status

    token = attempt(signed_login(aws, keys, server_id="vault.example.com"))
    assert isinstance(token, str)
    vault.secrets.add(token)
    cases = [
        signed_login(aws, keys, body="Action=AssumeRole&Version=2011-06-15", server_id="vault.example.com"),
        signed_login(aws, keys),
        signed_login(aws, keys, server_id="vault.example.com", sign_server_id=False),
        signed_login(aws, keys, server_id="another.vault"),
        signed_login(aws, (keys[0], "wrong-secret", None), server_id="vault.example.com"),
    ]
    assert [attempt(fields) for fields in cases] == [400] * 5
    assert login.refused == [
        "iam_request_body is not an sts:GetCallerIdentity request",
        "error validating X-Vault-AWS-IAM-Server-ID header: missing header",
        "error validating X-Vault-AWS-IAM-Server-ID header: vault header wasn't signed",
        "error validating X-Vault-AWS-IAM-Server-ID header: expected 'vault.example.com'",
        "error making upstream request: STS refused the signed request",
    ]


@pytest.mark.component_logic
def test_a_token_that_ends_mid_tick_is_renewed_then_replaced(aws, vault):
    """Logins good for 4 s, renewable up to 8 s, and a tick paced to last longer (18
    writes at one a second): the
    token is renewed once two thirds of it are spent and replaced by a new login when its
    maximum is near, and no write meets an expired token."""
    teams = three_accounts(aws)
    keys = rotator(aws)
    vault.provision(version=2, ttl="4s", max_ttl="8s")
    front = vault.front()
    run = aws.run(vault.variables(keys, front, vault_writes_per_second="1"), teams)
    assert run.returncode == 0, run.output
    assert run.rotated() == ROTATED
    assert run.of("attempt_failed") == [], "no write met an expired token"
    [finished] = run.of("tick_finished")
    assert finished["elapsed_ms"] > 9000, finished
    assert len(front.of("POST auth/token/renew-self")) >= 1
    assert len(front.of("POST auth/approle/login")) >= 2
    assert_readable(vault)


@pytest.mark.component_logic
def test_an_unreachable_vault_fails_its_accounts_not_the_tick(aws, vault):
    teams = three_accounts(aws)
    keys = rotator(aws)
    vault.provision(version=2)
    nowhere = f"http://127.0.0.1:{free_port()}"
    variables = vault.variables(keys, vault.front(), secret_sink="secretsmanager,vault", vault_url=nowhere)
    run = aws.run(variables, teams)
    assert run.returncode == 1, run.output
    assert not run.trapped and not run.of("tick_failed"), run.output
    failed = run.of("account_failed")
    assert {(e["team"], e["account"]) for e in failed} == ROTATED
    assert all(e["retryable"] and "transport error" in e["error"] for e in failed), failed
    aws.assert_working({f"/concourse/{t}/{a}": arn for (t, a), arn in ACCOUNTS.items()})
