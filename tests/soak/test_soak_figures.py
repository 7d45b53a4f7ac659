"""The soak's own arithmetic, without Spin or AWS: its figures are only worth what these
rules are, so each is pinned here on small cases."""

import json

from figures import broken, concurrent_rotations, reader_figures
from nodes import LogFollower
from reader import AccountWatch, json_credentials
from records import Landing, claim, early_landings, landings, leaked_bytes, most_in_ten_minutes
from settings import LEAST_VALIDITY_TARGET_S, PERIOD_S, lease_ttl_s, stopped_writer_window_s
from soak_world import Account, Session, parse_assume_role, parse_time

# A run that kept every invariant.
QUIET = {
    "accounts_expired": 0, "accounts_unserved": 0, "rotated_twice": 0, "concurrent_rotations": 0,
    "json_mixed_reads": 0, "least_validity_s": LEAST_VALIDITY_TARGET_S, "leaked_bytes": 0,
    "newer_document_failures": 0, "unknown_fields_dropped": 0, "disturbances_missing": [], "rotations": 1,
    "split_mixed_window_undisturbed_max_s": 0.0, "split_mixed_window_max_s": 0.0,
}

ACCOUNT = Account("alpha", "dev", "arn:aws:iam::123456789012:role/concourse-ci-alpha-dev", "arn:aws:sts::x")


def test_a_mixed_split_episode_lasts_from_the_first_bad_read_to_the_next_good_one():
    watch = AccountWatch(ACCOUNT)
    for t, working in [(0, True), (1, False), (2, False), (3.5, True), (4, True), (9, False)]:
        watch.split_read(t, working)
    watch.close(12)
    assert watch.windows == [(1, 2.5), (9, 3)]
    assert watch.split_mixed_reads == 3
    assert watch.open_at_end


def test_validity_keeps_the_least_and_counts_expired_reads_and_unknown_sessions():
    watch = AccountWatch(ACCOUNT)
    for left in (800, 300, None, -2):
        watch.validity(left, 5)
    assert (watch.least_validity, watch.expired_reads, watch.unknown_sessions, watch.first_working) == (-2, 1, 1, 5)


def test_rotated_twice_is_a_claimed_landing_before_the_last_ones_due_time_other_than_a_repair():
    found = [
        Landing(0, "A", "never_written", rotate_after=600),
        Landing(30, "B", "incomplete", rotate_after=630),
        Landing(40, "C", "never_written", rotate_after=640),
        Landing(700, "D", "expires_soon", rotate_after=1300),
        Landing(800, "E", None),
        Landing(900, "F", "expires_soon", rotate_after=1500),
    ]
    early = [(previous.access_key_id, landing.access_key_id) for previous, landing in early_landings(found)]
    # B is a repair; C came before B's due time; E claimed by no tick; F came before the
    # ten minutes after E (no tick gave E a due time).
    assert early == [("B", "C"), ("D", "E"), ("E", "F")]


def test_landings_are_each_sessions_first_version_and_are_claimed_by_expiration():
    document = lambda key: json.dumps({"access_key_id": key, "secret_access_key": "s", "session_token": "t", "expiration": "2030-01-01T00:15:00Z"})
    history = [(10, document("A")), (20, document("A")), (30, document("B")), (40, "not json")]
    key_of = lambda text: (json_credentials(text)[0] or [None])[0]
    found = landings(history, key_of)
    assert [(f.landed, f.access_key_id) for f in found] == [(10, "A"), (30, "B")]
    sessions = {"A": Session("A", "s", "t", parse_time("2030-01-01T00:15:00.123456Z"), "arn")}
    events = [{"expiration": "2030-01-01T00:15:00.123456Z", "reason": "never_written", "rotate_after": "2030-01-01T00:10:00Z"}]
    claim(found, events, sessions.get)
    assert (found[0].reason, found[0].rotate_after) == ("never_written", parse_time("2030-01-01T00:10:00Z"))
    assert (found[1].reason, found[1].rotate_after) == (None, None)


def test_versions_in_ten_minutes_and_leaked_bytes():
    assert most_in_ten_minutes([0, 599, 600, 1300, 1301, 1302]) == 3
    assert most_in_ten_minutes([]) == 0
    assert leaked_bytes({"SECRETVALUE", ""}, ["a SECRETVALUE b SECRETVALUE", "none"]) == 22


def test_the_log_follower_keeps_whole_lines_and_counts_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "log.txt"
    path.write_bytes(b'{"event": "tick_started", "tick": "a"}\n{"event": "tick_fin')
    follower = LogFollower(path)
    assert [e["event"] for e in follower.new_events()] == ["tick_started"]
    with open(path, "ab") as log:
        log.write(b'{"event": "lease_busy", "tick": "b"}\n')
    assert follower.new_events() == [] and follower.unparsed == 1


def test_an_assume_role_answer_gives_the_session_and_its_expiration():
    answer = b"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
      <Credentials><AccessKeyId>ASIAX</AccessKeyId><SecretAccessKey>S</SecretAccessKey><SessionToken>T</SessionToken>
      <Expiration>2030-01-01T00:15:00.5Z</Expiration></Credentials>
      <AssumedRoleUser><AssumedRoleId>AROA:alpha</AssumedRoleId><Arn>arn:aws:sts::1:assumed-role/r/alpha</Arn></AssumedRoleUser>
    </AssumeRoleResult></AssumeRoleResponse>"""
    session = parse_assume_role(answer)
    assert session.values() == ("ASIAX", "S", "T")
    assert session.expiration == parse_time("2030-01-01T00:15:00Z") + 0.5
    assert session.caller_arn == "arn:aws:sts::1:assumed-role/r/alpha"


def test_the_lease_lifetime_follows_the_engines_policy_for_the_soaks_settings():
    # Three times (3 s of request timeout + 5 s of margin) is 24 s, under the 30 s floor.
    assert lease_ttl_s() == 30


def test_two_ticks_rotating_one_account_while_both_run_are_concurrent_rotations():
    def line(tick, seen, event="tick_started", account="dev"):
        return {"tick": tick, "seen": seen, "event": event, "node": f"node-{tick}", "team": "alpha", "account": account}

    events = [
        line("a", 0), line("a", 3, "account_rotated"), line("a", 4, "tick_finished"),
        line("b", 5), line("b", 7, "account_rotated"), line("b", 8, "tick_finished"),
        # c is frozen from 10 to 50; d takes over at 40 and rotates what c had started.
        line("c", 10), line("d", 40), line("d", 42, "account_rotated", "prod"),
        line("c", 51, "account_rotated", "prod"), line("c", 52, "tick_finished"),
    ]
    assert concurrent_rotations(events) == [("alpha", "prod", "d", "c", ("node-d", "node-c"))]


def test_a_repair_of_what_a_frozen_tick_landed_but_never_stored_is_not_concurrent():
    def line(tick, seen, event="tick_started", reason=None):
        return {"tick": tick, "seen": seen, "event": event, "node": f"node-{tick}", "team": "alpha", "account": "dev", "reason": reason}

    # a rotates dev at 2 and is frozen at 3, before storing it; b takes over at 40 and
    # repairs dev at 42 (its mark still says incomplete); a thaws at 45 and writes no more.
    events = [
        line("a", 0), line("a", 2, "account_rotated", "expires_soon"),
        line("b", 40), line("b", 42, "account_rotated", "incomplete"), line("b", 43, "tick_finished"),
        line("a", 46, "lease_lost"), line("a", 46, "tick_finished"),
    ]
    assert concurrent_rotations(events, freezes=[("node-a", 3, 45)]) == []
    # Without the freeze (a second holder while a ran), or had b rotated it for another
    # reason, it is a concurrent rotation.
    assert concurrent_rotations(events) == [("alpha", "dev", "a", "b", ("node-a", "node-b"))]
    events[3]["reason"] = "expires_soon"
    assert len(concurrent_rotations(events, freezes=[("node-a", 3, 45)])) == 1


def test_mixed_windows_that_begin_at_an_outage_are_told_apart():
    watch = AccountWatch(ACCOUNT)
    # Began at a kill; open when a node restarted; before and after any stop.
    watch.windows = [(1010, 30.0), (1050, 25.0), (1100, 12.0), (1201, 3.0)]
    outages = [(1009, 1009), (1060, 1062), (1195, 1200)]
    figures, notes = reader_figures([watch], 0.0, {}, started=1000, ended=1300, outages=outages)
    assert figures["split_mixed_window_max_s"] == 30.0
    assert figures["split_mixed_window_undisturbed_max_s"] == 12.0
    assert notes == [
        "/concourse/alpha/dev: split set not working for 30.0 s from 10 (a node or Redis stopped meanwhile)",
        "/concourse/alpha/dev: split set not working for 25.0 s from 50 (a node or Redis stopped meanwhile)",
        "/concourse/alpha/dev: split set not working for 12.0 s from 100",
    ]


def test_a_window_no_stop_began_must_close_within_a_period_one_a_stop_began_within_the_lease():
    """Faults alone must not leave a `split` set mixed past the next tick; a writer stopped
    mid-write leaves it mixed until its lease expires and the next tick repairs it."""
    held = {"split_mixed_window_undisturbed_max_s": PERIOD_S - 1, "split_mixed_window_max_s": stopped_writer_window_s() - 1}
    windows = lambda figures: [name for name, _, _ in broken(figures) if "window" in name]
    assert windows(dict(QUIET, **held)) == []
    slow_repair = dict(held, split_mixed_window_undisturbed_max_s=PERIOD_S)
    assert windows(dict(QUIET, **slow_repair)) == ["split_mixed_window_undisturbed_max_s"]
    too_long = dict(held, split_mixed_window_max_s=stopped_writer_window_s())
    assert windows(dict(QUIET, **too_long)) == ["split_mixed_window_max_s"]
