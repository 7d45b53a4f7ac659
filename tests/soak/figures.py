"""The soak's figures from what the reader saw and what the nodes logged, the notes that
explain the ones that matter, and the invariants they are held to."""

from settings import LEAST_VALIDITY_TARGET_S, PERIOD_S, SERVE_WITHIN_S, stopped_writer_window_s


# An episode that starts this close to an outage is put down to it (one reader round and
# the second the writes in flight take to land).
OUTAGE_SLACK_S = 2


def reader_figures(watches, lag_max, registered, started, ended, outages):
    """From the reader's watches; `registered` maps a team to when it was registered,
    the run's times are `started` and `ended` (the reader's stop), `outages` the (from,
    to) of every node or Redis stop. Returns (figures, notes); the notes' times are
    seconds into the run."""
    windows = [(w.account.path, start - started, seconds) for w in watches for start, seconds in w.windows]

    def disturbed(start, seconds):
        """Whether a node or Redis stopped while the window was open (or just before it
        began): its writer may be the one stopped, and the window then lasts its lease."""
        begin = start + started
        return any(a - OUTAGE_SLACK_S <= begin + seconds and begin <= b + OUTAGE_SLACK_S for a, b in outages)

    undisturbed = [seconds for _, start, seconds in windows if not disturbed(start, seconds)]
    validities = [w.least_validity for w in watches if w.least_validity is not None]
    waited = {w.account.path: ended - registered[w.account.team] for w in watches if w.account.team in registered}
    unserved = [w.account.path for w in watches if w.first_working is None and waited.get(w.account.path, 0) >= SERVE_WITHIN_S]
    figures = {
        "split_mixed_window_max_s": round(max((s for _, _, s in windows), default=0.0), 1),
        "split_mixed_window_undisturbed_max_s": round(max(undisturbed, default=0.0), 1),
        "split_mixed_windows": len(windows),
        "split_mixed_reads": sum(w.split_mixed_reads for w in watches),
        "split_mixed_at_end": sum(w.open_at_end for w in watches),
        "json_mixed_reads": sum(w.json_mixed_reads for w in watches),
        "json_expiration_wrong": sum(w.json_expiration_wrong for w in watches),
        "least_validity_s": round(min(validities), 1) if validities else None,
        "accounts_expired": sum(1 for w in watches if w.expired_reads),
        "accounts_unserved": len(unserved),
        "reads": sum(w.reads for w in watches),
        "failed_reads": sum(w.failed_reads for w in watches),
        "unknown_sessions": sum(w.unknown_sessions for w in watches),
        "reader_lag_max_s": round(lag_max, 1),
    }
    notes = [
        f"{path}: split set not working for {seconds:.1f} s from {start:.0f}{' (a node or Redis stopped meanwhile)' if disturbed(start, seconds) else ''}"
        for path, start, seconds in windows
        if seconds >= PERIOD_S
    ]
    notes += [f"{path}: no working set ever, registered {waited[path]:.0f} s before the end" for path in unserved]
    return figures, notes


def event_figures(events, upgrades, freezes=()):
    """From every node's event lines (each with `node`, `skew` and `seen`), and the
    (node, from, to) of every freeze."""

    def count(kind, **fields):
        return sum(1 for e in events if e["event"] == kind and all(e.get(k) == v for k, v in fields.items()))

    concurrent = concurrent_rotations(events, freezes)
    upgraded_at = min((u["at"] for u in upgrades), default=None)
    newer = [e for e in events if upgraded_at is not None and e["seen"] >= upgraded_at and newer_document_failure(e)]
    figures = {
        "rotated_events": count("account_rotated"),
        "repairs": count("account_rotated", reason="incomplete"),
        "lease_lost": count("lease_lost"),
        "lease_busy": count("lease_busy"),
        "tick_failed": count("tick_failed"),
        "ticks": len({e["tick"] for e in events}),
        "skewed_ticks": len({e["tick"] for e in events if e["skew"]}),
        "newer_document_failures": len(newer),
        "concurrent_rotations": len(concurrent),
    }
    notes = [f"after the upgrade, {len(newer)} failures like: {newer[0].get('error', newer[0]['event'])}"] if newer else []
    notes += [f"{team}/{account}: rotated by tick {a} ({nodes[0]}) and tick {b} ({nodes[1]}) while both ran" for team, account, a, b, nodes in concurrent]
    return figures, notes


def concurrent_rotations(events, freezes=()):
    """(team, account, tick, other tick, their nodes) for each account that two ticks
    both rotated while both ran: each tick runs from its first line to its last, as the
    soak read them (a frozen tick runs on through its freeze; a killed one ends at its
    last line). The lease exists to make this impossible.

    One pair is the design, not a second holder: a tick that rotated the account, was
    then frozen (`freezes`: node, from, to) before it stored that, and lost its lease; the
    next holder finds the account still marked and repairs it (reason `incomplete`)."""
    spans, rotated = {}, {}
    for e in events:
        first, last, node = spans.get(e["tick"], (e["seen"], e["seen"], e["node"]))
        spans[e["tick"]] = (min(first, e["seen"]), max(last, e["seen"]), node)
        if e["event"] == "account_rotated":
            rotated.setdefault((e["team"], e["account"]), []).append(e)
    found = []
    for (team, account), lines in sorted(rotated.items()):
        for i, a in enumerate(lines):
            for b in lines[i + 1 :]:
                (a_first, a_last, a_node), (b_first, b_last, b_node) = spans[a["tick"]], spans[b["tick"]]
                overlap = a["tick"] != b["tick"] and a_first <= b_last and b_first <= a_last
                if overlap and not repaired_after_freeze(a, b, a_node, freezes):
                    found.append((team, account, a["tick"], b["tick"], (a_node, b_node)))
    return found


def repaired_after_freeze(earlier, later, node, freezes):
    """Whether `later` repairs what `earlier` (a rotation on `node`) landed just before its
    node was frozen: a freeze of that node began between the two, and `later` is a repair."""
    frozen = any(name == node and earlier["seen"] - 1 <= begun <= later["seen"] for name, begun, _ in freezes)
    return frozen and later.get("reason") == "incomplete"


def newer_document_failure(event):
    """A tick or an account failed on a lease or state document it could not read."""
    if event["event"] == "tick_failed":
        return "lease/rotation" in event.get("error", "")
    return event["event"] == "account_failed" and event.get("stage") == "state"


def broken(figures):
    """(figure, value, target) for every invariant the run broke: issue #16's targets,
    no account rotated by two ticks at once (which `rotated_twice` does not count when
    the second tick's reason is `incomplete`), every registered account served, newer
    documents tolerated and kept, and the soak's own: it disturbed everything it is meant
    to and measured rotations."""
    f = figures
    checks = [
        ("accounts_expired", f["accounts_expired"] == 0, "0"),
        ("accounts_unserved", f["accounts_unserved"] == 0, f"0 (a working set within {SERVE_WITHIN_S} s of registering)"),
        ("rotated_twice", f["rotated_twice"] == 0, "0"),
        ("concurrent_rotations", f["concurrent_rotations"] == 0, "0"),
        ("json_mixed_reads", f["json_mixed_reads"] == 0, "0"),
        (
            "split_mixed_window_undisturbed_max_s",
            f["split_mixed_window_undisturbed_max_s"] < PERIOD_S,
            f"< {PERIOD_S} (one schedule period, for windows no node or Redis stop began)",
        ),
        (
            "split_mixed_window_max_s",
            f["split_mixed_window_max_s"] < stopped_writer_window_s(),
            f"< {stopped_writer_window_s()} (a stopped writer's lease, then one period and one tick budget)",
        ),
        (
            "least_validity_s",
            f["least_validity_s"] is not None and f["least_validity_s"] >= LEAST_VALIDITY_TARGET_S,
            f">= {LEAST_VALIDITY_TARGET_S} (rotate_before_expiry - one period - tick_budget)",
        ),
        ("leaked_bytes", f["leaked_bytes"] == 0, "0"),
        ("newer_document_failures", f["newer_document_failures"] == 0, "0"),
        ("unknown_fields_dropped", f["unknown_fields_dropped"] == 0, "0"),
        ("disturbances_missing", not f["disturbances_missing"], "none"),
        ("rotations", f["rotations"] > 0, "> 0"),
    ]
    return [(name, f[name], target) for name, held, target in checks if not held]
