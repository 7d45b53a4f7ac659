"""What the soak's deployment runs with, and the targets that follow from it."""

PERIOD_S = 5
SCHEDULE = f"*/{PERIOD_S} * * * * *"
# The shortest the rules allow for 900-second credentials (src/timing.rs: the duration
# must leave ten minutes between writes) and the shortest they allow at all.
ROTATE_BEFORE_EXPIRY_S = 300
REQUEST_TIMEOUT_S = 3
# Longer than a freeze, so that a thawed tick may still retry (what the issue saw).
TICK_BUDGET_S = 60
# Accounts take turns, so that a tick with several due accounts spans more seconds.
MAX_CONCURRENCY = 4
SETTINGS = {
    "secret_format": "both",
    "rotate_before_expiry": f"{ROTATE_BEFORE_EXPIRY_S}s",
    "failure_backoff_max": "5m",
    "request_timeout": f"{REQUEST_TIMEOUT_S}s",
    "tick_budget": f"{TICK_BUDGET_S}s",
    "max_concurrency": str(MAX_CONCURRENCY),
}
# LeasePolicy (src/lease.rs): a lease lives three times a request and its margin, at
# least this long.
LEASE_MARGIN_S = 5
LEASE_MIN_TTL_S = 30

# Issue #16's target: least validity >= rotate_before_expiry - one period - tick_budget.
LEAST_VALIDITY_TARGET_S = ROTATE_BEFORE_EXPIRY_S - PERIOD_S - TICK_BUDGET_S
# An account registered this long before the end must have had a working set by then.
SERVE_WITHIN_S = 90


def lease_ttl_s():
    """LeasePolicy::for_requests for these settings: three times the request timeout and
    the lease's margin, at least LEASE_MIN_TTL_S."""
    return max(LEASE_MIN_TTL_S, 3 * (REQUEST_TIMEOUT_S + LEASE_MARGIN_S))
