"""GET /metrics under `spin up`, read as Prometheus reads it: every series against the
state the store holds, and the shipped alert rules on Debian's real Prometheus firing for
a denied account and resolving once it is repaired."""

import json
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from observe import ADMIN_TOKEN, Deployment, Prometheus, quick_rules

# The labels a series may carry: the names of things, and the counters' fixed vocabulary.
LABELS = {"team", "account", "stage", "service", "outcome"}


def seconds(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def samples(exposition):
    """{(name, frozenset(labels)): value}, parsed by prometheus_client (which refuses an
    exposition Prometheus could not read), and the families' types."""
    found, types = {}, {}
    for family in text_string_to_metric_families(exposition):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"{key} twice"
            found[key] = sample.value
    return found, types


def account_series(found, name):
    return {
        (dict(labels)["team"], dict(labels)["account"]): value
        for (series, labels), value in found.items()
        if series == f"concourse_sts_account_{name}"
    }


def expected_accounts(store):
    """{(team, account): state} of the stored state, with the accounts of the valid
    documents that have none."""
    expected = {}
    for key, text in store.items():
        if key.startswith("team/"):
            try:
                document = json.loads(text)
            except json.JSONDecodeError:
                continue
            for account in document["accounts"]:
                expected[(document["name"], account["name"])] = {}
    for key, text in store.items():
        if key.startswith("state/"):
            for name, state in json.loads(text)["accounts"].items():
                expected[(key[len("state/"):], name)] = state
    return expected


def test_every_series_says_what_the_store_holds(aws):
    deployment = Deployment(aws, broken=True)
    try:
        status, outcome = deployment.rotate()
        assert status == 502, outcome
        assert outcome["rotated"] == 2 and outcome["failed"] == ["gamma/denied (AccessDenied)"]
        for token in (None, "wrong"):
            assert deployment.get("/metrics", token)[0] == 401
        assert deployment.get("/metrics", ADMIN_TOKEN)[0] == 200
        status, headers, exposition = deployment.get("/metrics")
    finally:
        deployment.stop()
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    store = aws.store()
    found, types = samples(exposition)

    for (name, labels), _ in found.items():
        assert name.startswith("concourse_sts_"), name
        assert {label for label, _ in labels} <= LABELS, (name, labels)
    for family, kind in types.items():
        assert kind == ("counter" if family.endswith("_total") or family + "_total" in exposition else "gauge"), family
    assert "arn:aws" not in exposition and "/concourse/" not in exposition

    # Per account: exactly the accounts the store knows, each value the stored one.
    accounts = expected_accounts(store)
    assert set(account_series(found, "failing")) == set(accounts)
    expiry = account_series(found, "credentials_expiry_timestamp_seconds")
    for field, series in [
        ("expiration", expiry),
        ("written_at", account_series(found, "last_rotation_timestamp_seconds")),
        ("rotate_after", account_series(found, "next_rotation_timestamp_seconds")),
        ("next_attempt", account_series(found, "next_attempt_timestamp_seconds")),
    ]:
        stored = {key: seconds(state[field]) for key, state in accounts.items() if state.get(field)}
        assert series.keys() == stored.keys(), field
        for key, value in stored.items():
            assert abs(series[key] - value) < 1e-5, (field, key, series[key], value)
    assert set(expiry) == {("alpha", "dev"), ("alpha", "prod")}
    for key, state in accounts.items():
        failures = state.get("consecutive_failures", 0)
        error = state.get("last_error") or {}
        assert account_series(found, "consecutive_failures")[key] == failures, key
        assert account_series(found, "failing")[key] == (failures > 0), key
        assert account_series(found, "half_written")[key] == state.get("incomplete", False), key
        assert account_series(found, "permanent_failure")[key] == (failures > 0 and error.get("permanent", False)), key
    assert account_series(found, "permanent_failure")[("gamma", "denied")] == 1

    teams = {dict(labels)["team"]: value for (name, labels), value in found.items() if name == "concourse_sts_team_invalid"}
    assert teams == {"alpha": 0, "gamma": 0, "broken": 1}

    # The deployment: the counters and the last tick as stored, the lease given back.
    counters = json.loads(store["metrics/counters"])
    last = json.loads(store["metrics/last_tick"])
    deployment_series = {
        ("concourse_sts_rotations_total", frozenset()): counters["rotations"],
        ("concourse_sts_last_tick_started_timestamp_seconds", frozenset()): seconds(last["started_at"]),
        ("concourse_sts_last_tick_finished_timestamp_seconds", frozenset()): seconds(last["finished_at"]),
        ("concourse_sts_last_tick_duration_seconds", frozenset()): last["duration_ms"] / 1000,
        ("concourse_sts_lease_holder_age_seconds", frozenset()): 0,
    }
    for outcome in ("rotated", "skipped", "deferred", "failed"):
        deployment_series[("concourse_sts_last_tick_accounts", frozenset({("outcome", outcome)}))] = last[outcome]
    for stage, count in counters["failures"].items():
        deployment_series[("concourse_sts_failures_total", frozenset({("stage", stage)}))] = count
    throttled = {"sts": 0, "secretsmanager": 0, "ssm": 0}
    for service, outcomes in counters["requests"].items():
        for outcome, count in outcomes.items():
            labels = frozenset({("service", service), ("outcome", outcome)})
            deployment_series[("concourse_sts_aws_requests_total", labels)] = count
            if outcome == "throttled":
                throttled[service] += count
    for service, count in throttled.items():
        deployment_series[("concourse_sts_aws_throttled_requests_total", frozenset({("service", service)}))] = count
    for key, value in deployment_series.items():
        assert abs(found[key] - value) < 0.001, (key, found[key], value)
    # Everything else exposed is per account or per team (checked above), or a stage's
    # failure counter that starts at zero.
    rest = {key for key in found if key not in deployment_series and not key[0].startswith(("concourse_sts_account_", "concourse_sts_team_"))}
    assert rest == {("concourse_sts_failures_total", frozenset({("stage", "write_secrets")}))}
    assert found[("concourse_sts_failures_total", frozenset({("stage", "write_secrets")}))] == 0
    assert (counters["rotations"], counters["failures"]) == (2, {"assume_role": 1})
    assert counters["requests"]["sts"]["permanent"] == 1 and counters["requests"]["secretsmanager"]["ok"] >= 6
    assert (last["rotated"], last["failed"], last["invalid_teams"]) == (2, 1, 1)


def test_prometheus_fires_the_failing_alerts_for_a_denied_account_and_resolves_them(aws):
    deployment = Deployment(aws)
    prometheus = None
    try:
        deployment.rotate()
        rules = quick_rules(aws.tmp_path, "3s")
        prometheus = Prometheus(aws.tmp_path / "prometheus", deployment.url, rules)
        failing = {
            ("ConcourseStsAccountFailing", "gamma", "denied"),
            ("ConcourseStsPermanentFailure", "gamma", "denied"),
        }
        firing = lambda: {key for key, state in prometheus.alerts().items() if state == "firing"}
        prometheus.wait(lambda: firing() >= failing, "failing alerts firing for gamma/denied", 60)
        assert firing() == failing, "nothing else fires: alpha is fresh, a tick finished"
        up = prometheus.api('/api/v1/query?query=up{job="concourse-sts"}')["result"]
        assert [sample["value"][1] for sample in up] == ["1"], "scraped with the metrics token"

        deployment.repair()
        status, outcome = deployment.rotate("gamma")
        assert status == 200, outcome
        prometheus.wait(lambda: not prometheus.alerts(), "the alerts resolved", 60)
    finally:
        if prometheus:
            aws.outputs.append(json.dumps(prometheus.api("/api/v1/alerts")))
            prometheus.stop()
        deployment.stop()
