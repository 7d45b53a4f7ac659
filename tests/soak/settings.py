"""What the soak's deployment runs with, and the targets that follow from it."""

# Ten seconds: longer than one tick's retries of a write (three attempts of
# REQUEST_TIMEOUT_S behind the proxy's delay), so that faults alone never leave a split
# set mixed past the next tick, and ticks still overlap often enough to contend.
PERIOD_S = 10
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


def stopped_writer_window_s():
    """The longest a `split` set can stay mixed after its writer stopped mid-write (a
    kill, a freeze, a store that went away): no one may write the account until that
    writer's lease has expired (its lifetime, if it had just been renewed), then the next
    tick comes within one period and repairs it within its budget."""
    return lease_ttl_s() + PERIOD_S + TICK_BUDGET_S


def lease_ttl_s():
    """LeasePolicy::for_requests for these settings: three times the request timeout and
    the lease's margin, at least LEASE_MIN_TTL_S."""
    return max(LEASE_MIN_TTL_S, 3 * (REQUEST_TIMEOUT_S + LEASE_MARGIN_S))
