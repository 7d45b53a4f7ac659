"""What the soak's deployment runs with, and the targets that follow from it."""

PERIOD_S = 5
SCHEDULE = f"*/{PERIOD_S} * * * * *"
# The shortest the rules allow for 900-second credentials (src/timing.rs: the duration
# must leave ten minutes between writes) and the shortest they allow at all.
ROTATE_BEFORE_EXPIRY_S = 300
REQUEST_TIMEOUT_S = 3
# Longer than a freeze, so that a thawed tick may still retry (what the issue saw).
TICK_BUDGET_S = 60
MAX_CONCURRENCY = 4
SETTINGS = {
    "secret_format": "both",
    "rotate_before_expiry": f"{ROTATE_BEFORE_EXPIRY_S}s",
    "failure_backoff_max": "5m",
    "request_timeout": f"{REQUEST_TIMEOUT_S}s",
    "tick_budget": f"{TICK_BUDGET_S}s",
    "max_concurrency": str(MAX_CONCURRENCY),
}
# The component's defaults that the lease's lifetime also depends on (src/settings.rs,
# src/retry.rs): Secrets Manager's write pace, the standard retry mode, and the four
# secrets of secret_format = both.
WRITES_PER_SECOND = 40
ATTEMPTS = 3
BACKOFF_BASE_S = 1
BACKOFF_CAP_S = 20
SECRETS_PER_ACCOUNT = 4

# Issue #16's target: least validity >= rotate_before_expiry - one period - tick_budget.
LEAST_VALIDITY_TARGET_S = ROTATE_BEFORE_EXPIRY_S - PERIOD_S - TICK_BUDGET_S
# An account registered this long before the end must have had a working set by then.
SERVE_WITHIN_S = 90


def lease_ttl_s():
    """RotationRules::lease_ttl for these settings: twice the writing window, which is
    every attempt queued behind the other running accounts' writes and timing out, plus
    the backoff between attempts."""
    queued = MAX_CONCURRENCY * SECRETS_PER_ACCOUNT / WRITES_PER_SECOND
    backoff = sum(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) for attempt in range(1, ATTEMPTS))
    return 2 * ((REQUEST_TIMEOUT_S + queued) * ATTEMPTS + backoff)
