"""Figures from the records: Secrets Manager's version history (AWS's record of what
landed, and when), STS's record of the sessions it issued (the proxy's), and the nodes'
event lines, matched to each other; and the leak check over everything the run printed.

A rotation is a session landing in an account's JSON secret: the secret's versions, in
the order Secrets Manager created them, name each session once it first appears (a
write repeated with its request token adds no version). A landing is claimed by the
`account_rotated` line of the tick that wrote it, found by the session's expiration,
which the line carries as STS answered it; that line gives the reason and the due time
the tick recorded (`rotate_after`).

`rotated_twice` counts the claimed landings, other than repairs (reason `incomplete`),
that came before the due time of the landing before them; the due time of a landing no
tick claimed (its tick was killed or lost its lease before the line) is the ten-minute
rule's, its landing plus ten minutes. An unclaimed landing that came early is counted
apart, as `unclaimed_early_writes`: no line says whether it was a repair.
"""

from dataclasses import dataclass

from soak_world import parse_time

# AWS advises writing a secret at most once in ten minutes (src/timing.rs).
MIN_REWRITE_INTERVAL_S = 600
REPAIR = "incomplete"


@dataclass
class Landing:
    landed: float
    access_key_id: str
    # From the claiming account_rotated line; None when no tick claimed it.
    reason: str = None
    rotate_after: float = None


def secret_names(client):
    pages = client.get_paginator("list_secrets").paginate()
    return {secret["Name"] for page in pages for secret in page["SecretList"]}


def secret_history(client, name):
    """[(created, value)] for every version of an existing secret, oldest first. Each
    version's time comes from GetSecretValue: moto's ListSecretVersionIds reports its own
    clock at the listing as every version's CreatedDate (and fails with HTTP 500 for a
    secret that does not exist)."""
    versions = client.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)["Versions"]
    history = []
    for version in versions:
        answer = client.get_secret_value(SecretId=name, VersionId=version["VersionId"])
        history.append((answer["CreatedDate"].timestamp(), answer.get("SecretString")))
    return history


def landings(json_history, access_key_of):
    """The sessions that landed in a JSON secret, each at its first version."""
    seen, found = set(), []
    for created, value in json_history:
        key = access_key_of(value)
        if key and key not in seen:
            seen.add(key)
            found.append(Landing(created, key))
    return found


def claim(found, rotated_events, session_of):
    """Fills each landing's reason and due time from the account_rotated line whose
    expiration is its session's."""
    for landing in found:
        session = session_of(landing.access_key_id)
        for event in rotated_events:
            if session is not None and abs(parse_time(event["expiration"]) - session.expiration) < 0.001:
                landing.reason = event["reason"]
                landing.rotate_after = parse_time(event["rotate_after"])
    return found


def early_landings(found):
    """The (previous, landing) pairs of one account where the landing came before the
    previous one's due time and is no repair."""
    early = []
    for previous, landing in zip(found, found[1:]):
        due = previous.rotate_after if previous.rotate_after is not None else previous.landed + MIN_REWRITE_INTERVAL_S
        if landing.landed < due and landing.reason != REPAIR:
            early.append((previous, landing))
    return early


def most_in_ten_minutes(times):
    """The most versions created within any ten minutes."""
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < MIN_REWRITE_INTERVAL_S) for i, start in enumerate(times)), default=0)


def leaked_bytes(values, texts):
    """Bytes of credential values found in the texts (every occurrence counts)."""
    return sum(text.count(value) * len(value) for value in values if value for text in texts)


def read_texts(paths):
    return [path.read_text(errors="replace") for path in paths if path.is_file()]
