"""Months of bans: history is pruned, kept current without being read again, and a store
that already holds many past bans decides as fast as a young one."""
from __future__ import annotations

import sqlite3
import time

import pytest
from conftest import run_logban
from daemonproc import NET, Daemon, append, dnsbl

from logban.allow import AllowList
from logban.engine import Engine
from logban.parse import Offence
from logban.score import DAY, HOUR, Decision, Policy, Scorer
from logban.store import Store

NOW = 1_900_000_000.0          # a fixed instant: no test depends on today's date


def past_bans(db: str, n: int, released: float, *, prefix: str = "2001:db8:ff", start: int = 0) -> None:
    """`n` bans of distinct /64s, each released at `released`, written straight into the SQLite file."""
    Store(f"sqlite:///{db}").close()
    rows = [(f"{prefix}:{(start + i) >> 16:x}:{(start + i) & 0xffff:x}::/64", "dnsbl", "postfix-dnsbl", "", 5.0,
             released - 6 * HOUR, released, 6 * HOUR, released, "expiry", 1, 0, 0, "old", "auto", "", "")
            for i in range(n)]
    with sqlite3.connect(db) as c:
        c.executemany("INSERT INTO bans (target, kind, rule, reason, score, created, expires, duration, released, "
                      "release_reason, count, escalated, dry_run, node, source, members, text) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def ban(target: str, t: float, duration: float = HOUR, count: int = 1) -> Decision:
    return Decision(target, "dnsbl", "postfix-dnsbl", 5.0, t, duration, count, False, "test")


# ---- pruning ------------------------------------------------------------------------------

@pytest.mark.parametrize("retention, lookback, kept", [
    (30 * DAY, 30 * DAY, 100),           # released 40 days ago: both are over
    (30 * DAY, 60 * DAY, 200),           # escalation still looks 60 days back: kept
    (60 * DAY, 10 * DAY, 200),           # the retention keeps them
])
def test_released_bans_past_retention_and_lookback_are_pruned(tmp_path, retention, lookback, kept):
    db = tmp_path / "logban.db"
    past_bans(str(db), 100, NOW - 40 * DAY)
    past_bans(str(db), 100, NOW - 5 * DAY, start=1000)
    s = Store(f"sqlite:///{db}")
    s.record([], [ban("203.0.113.9", NOW - 90 * DAY, duration=None)], node="n", dry_run=False, now=NOW)
    s.prune(NOW, retention, lookback)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM bans WHERE released IS NOT NULL").fetchone()[0] == kept
        # a ban still in force is never pruned, however old
        assert c.execute("SELECT count(*) FROM bans WHERE target = '203.0.113.9'").fetchone()[0] == 1


def test_pruning_a_big_history_goes_in_chunks(tmp_path, monkeypatch):
    from logban import store as store_mod
    monkeypatch.setattr(store_mod.writes, "PRUNE_CHUNK", 7)
    db = tmp_path / "logban.db"
    past_bans(str(db), 50, NOW - 100 * DAY)
    s = Store(f"sqlite:///{db}")
    s.prune(NOW, 30 * DAY, 30 * DAY, chunks=2)             # the daemon: a little at a time
    assert s.prune_more
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM bans").fetchone()[0] == 50 - 14
    s.prune(NOW, 30 * DAY, 30 * DAY)
    assert not s.prune_more
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM bans").fetchone()[0] == 0


# ---- the change check ---------------------------------------------------------------------

def test_revision_tells_own_changes_from_everyone_elses(tmp_path):
    url = f"sqlite:///{tmp_path / 'logban.db'}"
    daemon, cli = Store(url), Store(url)
    start = daemon.watch_revision()
    daemon.record([], [ban("203.0.113.1", NOW)], node="mx1", dry_run=False, now=NOW)
    assert daemon.revision() != start and daemon.revision() == daemon.revision_known   # own: known
    daemon.release(["203.0.113.1"], "unban", NOW + 1)
    assert daemon.revision() == daemon.revision_known
    cli.ban(ban("203.0.113.2", NOW), node="cli", dry_run=False, now=NOW)               # `logban ban`
    assert daemon.revision() != daemon.revision_known
    daemon.revision_known = daemon.revision()
    cli.release(["203.0.113.2"], "unban", NOW + 2)                                      # `logban unban`
    assert daemon.revision() != daemon.revision_known
    daemon.revision_known = daemon.revision()
    cli.expire(NOW + 10 * DAY)                                                          # nothing to expire
    assert daemon.revision() == daemon.revision_known
    # Another's change between two of our own is not taken for ours.
    daemon.record([], [ban("203.0.113.3", NOW)], node="mx1", dry_run=False, now=NOW)
    cli.ban(ban("203.0.113.4", NOW), node="cli", dry_run=False, now=NOW)
    daemon.record([], [ban("203.0.113.5", NOW)], node="mx1", dry_run=False, now=NOW)
    assert daemon.revision() != daemon.revision_known


def test_the_change_check_reads_no_released_ban(tmp_path):
    """The daemon asks every second: the answer must not cost a scan of the history."""
    db = tmp_path / "logban.db"
    past_bans(str(db), 2000, NOW - DAY)
    s = Store(f"sqlite:///{db}")
    plans = []
    import sqlalchemy as sa

    @sa.event.listens_for(s.engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, *a):
        if statement.lstrip().upper().startswith("SELECT"):
            plans.append(statement)
    s.revision()
    assert plans
    with sqlite3.connect(db) as c:              # the highest id only: one step down the primary key
        for p in plans:
            plan = " ".join(str(r) for r in c.execute("EXPLAIN QUERY PLAN " + p.replace("?", "'x'")))
            assert "SCAN" not in plan.upper(), (p, plan)


def test_a_few_targets_bans_are_read_by_target_not_through_every_active_ban(tmp_path):
    """`logban ban` and `unban` at 100,000 bans: the reads of their own targets' bans take the
    index on target; SQLite, with no statistics, took the one on `released` and stepped
    through every ban in force to keep the few."""
    import sqlalchemy as sa
    db = tmp_path / "logban.db"
    past_bans(str(db), 2000, NOW)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE bans SET released = NULL, release_reason = NULL, expires = NULL")
    s = Store(f"sqlite:///{db}")
    seen = []

    @sa.event.listens_for(s.engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, params, *a):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, params))
    one = "2001:db8:ff:0:7::/64"
    assert [b.target for b in s.active_bans(NOW, targets=[one, "2001:db8:ff:0:7::1", "::/0"])] == [one]
    assert [b.target for b in s.enforced(NOW, targets=[one])] == [one]
    assert [b.target for b in s.enforced(NOW, names=False, targets=[one])] == [one]
    assert len(seen) == 3
    with sqlite3.connect(db) as c:
        for statement, params in seen:
            plan = " ".join(str(r) for r in c.execute("EXPLAIN QUERY PLAN " + statement, params))
            assert "SEARCH bans USING INDEX ix_bans_target" in plan, (statement, plan)


# ---- the scorer's history, kept current ---------------------------------------------------

def test_history_is_kept_current_without_reading_it_all_again(tmp_path, monkeypatch):
    db = tmp_path / "logban.db"
    past_bans(str(db), 500, NOW - DAY)
    url = f"sqlite:///{db}"
    eng = Engine(Store(url), Policy(), AllowList(own=()), node="mx1", dry_run=False)
    assert len(eng.scorer.history) == 500
    monkeypatch.setattr(Store, "history", lambda self: pytest.fail("the whole history read again"))
    # Another node bans 198.51.100.7 for 2 h; this node's next ban of it escalates from that.
    Store(url).record([], [ban(f"{NET}.7", NOW - HOUR, duration=2 * HOUR)], node="mx2", dry_run=False, now=NOW)
    eng.refresh_bans()
    assert eng.scorer.history[f"{NET}.7"].duration == 2 * HOUR
    assert f"{NET}.7" in eng.scorer.active
    # An older row read again (ids handed out before a late commit) never replaces a newer ban.
    eng.scorer.history[f"{NET}.7"] = type(eng.scorer.history[f"{NET}.7"])(NOW + 5, HOUR, 9)
    eng.refresh_bans()
    assert eng.scorer.history[f"{NET}.7"].count == 9


def test_release_frees_the_network_bookkeeping_and_old_history_is_forgotten():
    sc = Scorer(Policy(threshold=5, subnet_bans=3, lookback=30 * DAY), AllowList(own=()))
    t = NOW
    for i in range(500):
        ip = f"203.0.{i // 2}.{i % 2 + 1}"           # two members in each of 250 /24s: never three
        o = Offence(t, ip, "postfix", "postfix-dnsbl", "dnsbl", 5.0, "f", 1)
        assert sc.add(o)
        sc.release(ip)                                   # unban, expiry, allow-list
    assert sc._members == {}
    assert len(sc.history) == 500
    assert sc.forget(t + 31 * DAY) == 500 and sc.history == {}


# ---- the real daemon ----------------------------------------------------------------------

def test_the_daemon_prunes_old_released_bans_and_still_sees_the_cli(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path / "d", "--follow", str(log))
    past_bans(str(d.db), 300, time.time() - 90 * DAY)
    past_bans(str(d.db), 50, time.time() - 2 * DAY, start=5000)
    d.start()
    try:
        deadline = time.monotonic() + 15
        while d.query("SELECT count(*) FROM bans")[0][0] != 50:
            assert time.monotonic() < deadline, "released bans older than retention and lookback not pruned"
            time.sleep(0.1)
        # `logban ban`/`unban` beside the daemon are still seen at once
        assert run_logban("--db", d.url, "ban", "203.0.113.77", "--for", "1h").returncode == 0
        d.wait_log("203.0.113.77", timeout=10)
        n = len(d.lines)
        assert run_logban("--db", d.url, "unban", "203.0.113.77").returncode == 0
        deadline = time.monotonic() + 10
        while not any("203.0.113.77" in ln for ln in d.lines[n:]):
            assert time.monotonic() < deadline, "the unban beside the daemon was not seen"
            time.sleep(0.05)
    finally:
        d.stop()


def test_a_store_with_many_past_bans_decides_as_fast_as_a_young_one(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path / "d", "--follow", str(log))
    past_bans(str(d.db), 200_000, time.time() - DAY)
    d.start()
    try:
        times = []
        for i in range(1, 16):
            target = f"2001:db8:77:{i:x}::/64"
            t0 = time.perf_counter()
            append(log, dnsbl(f"2001:db8:77:{i:x}::1"))
            while not d.query(f"SELECT 1 FROM bans WHERE target = '{target}'"):
                assert time.perf_counter() - t0 < 10
                time.sleep(0.002)
            times.append(time.perf_counter() - t0)
            time.sleep(1.2)             # past the daemon's next look at the store
        # Line -> ban was about 1 s here when each ban read the whole history again.
        assert sorted(times)[len(times) * 2 // 3] < 0.3, times
    finally:
        d.stop()


def test_a_revision_row_no_logban_wrote_stops_nothing(db_url):
    s = Store(db_url)
    s.record([], [ban("203.0.113.1", NOW)], node="mx1", dry_run=False, now=NOW)
    with s.write() as conn:
        conn.exec_driver_sql("UPDATE meta SET value = 'junk' WHERE key = 'bans_revision'")
    before = s.revision()
    s.release(["203.0.113.1"], "unban", NOW + 1)
    assert s.revision() != before
    s.close()
