"""The store on a real SQLite file and a real PostgreSQL server: schema, migrations, bans, releases, restarts."""
import os
import sqlite3
import time

import pytest
import sqlalchemy as sa

from logban import store as store_mod
from logban.allow import AllowList
from logban.engine import Engine
from logban.errors import StoreError
from logban.parse import Offence
from logban.score import HOUR, Decision, Policy
from logban.store import Store


def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'logban.db'}"


def off(ip, t, kind="auth_failed", score=1.0):
    return Offence(t, ip, "postfix", "rule-" + kind, kind, score, "mail.log", 1, b"a log line \xff", None)


def old_db(db: str) -> sa.engine.Engine:
    """A plain connection to the store's database (SQLite or PostgreSQL), to leave behind
    what an older logban left."""
    return sa.create_engine(db)


def columns(db: str, table: str) -> set[str]:
    e = old_db(db)
    try:
        return {c["name"] for c in sa.inspect(e).get_columns(table)}
    finally:
        e.dispose()


def sql(db: str, *statements, **params) -> list:
    e = old_db(db)
    try:
        with e.begin() as c:
            out = [c.execute(sa.text(st), params) for st in statements]
            return [tuple(r) for r in out[-1]] if out and out[-1].returns_rows else []
    finally:
        e.dispose()


def engine(db: str, **policy) -> Engine:
    return Engine(Store(db), Policy(**policy), AllowList(own=()), node="mx1", dry_run=False)


def test_new_database_is_wal_with_a_schema_version(tmp_path):
    s = Store(url(tmp_path))
    assert s.schema_version() == store_mod.SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "logban.db") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= \
            {"meta", "offenders", "offences", "bans"}


def test_default_path_follows_xdg_when_not_root(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert store_mod.default_url() == f"sqlite:///{tmp_path}/logban/logban.db"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert store_mod.default_url() == "sqlite:////var/lib/logban/logban.db"


def test_garbage_file_is_refused_and_left_alone(tmp_path):
    p = tmp_path / "logban.db"
    junk = b"this is not a database\x00" * 100
    p.write_bytes(junk)
    with pytest.raises(StoreError, match="cannot open the database"):
        Store(url(tmp_path))
    assert p.read_bytes() == junk


def test_newer_schema_is_refused(db_url):
    Store(db_url).close()
    sql(db_url, "UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="newer than this logban"):
        Store(db_url)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_schema_version_that_is_no_number_is_one_line(db_url, readonly):
    """A version no logban wrote was a ValueError out of int(), not a StoreError naming the store."""
    Store(db_url).close()
    sql(db_url, "UPDATE meta SET value='x' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="schema version 'x' is no number"):
        Store(db_url, readonly=readonly)


def test_the_query_views_are_the_models_tables():
    """The queries go through Core views of the tables (no sqlmodel import); the models
    define the schema: every view has its model's columns, in order, of the same SQL types."""
    from sqlalchemy.dialects import postgresql, sqlite

    from logban.store import sql as views
    from logban.store import tables
    pairs = {"meta": views.META, "offenders": views.OFFENDERS, "offences": views.OFFENCES, "bans": views.BANS,
             "positions": views.POSITIONS, "offence_hours": views.OFFENCE_HOURS, "allowlist": views.ALLOWLIST}
    assert set(pairs) == set(tables.SQLModel.metadata.tables)
    for name, view in pairs.items():
        model = tables.SQLModel.metadata.tables[name]
        for dialect in (sqlite.dialect(), postgresql.dialect()):
            assert [(c.name, c.type.compile(dialect=dialect)) for c in view.c] == \
                [(c.name, c.type.compile(dialect=dialect)) for c in model.c], name


def test_ban_and_unban_on_a_current_store_import_neither_sqlmodel_nor_the_orm(tmp_path):
    """They start in a fraction of a second: the models are imported to create or migrate only."""
    import subprocess
    import sys

    from conftest import ROOT
    db = url(tmp_path)
    Store(db).close()
    probe = ("import sys; from logban.cli import main; rc = main(sys.argv[1:]); "
             "print([m for m in ('sqlmodel', 'sqlalchemy.orm', 'pydantic') if m in sys.modules]); sys.exit(rc)")
    for args in (["ban", "192.0.2.9"], ["unban", "192.0.2.9"], ["unban", "2001:db8::/64"]):
        r = subprocess.run([sys.executable, "-c", probe, "--backend", "none", "--db", db, *args], capture_output=True,
                           text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == "[]", (args, r.stdout)
    assert [t for t, in sql(db, "SELECT target FROM bans WHERE release_reason = 'unban'")] == ["192.0.2.9"]


def test_migration_runs_once_and_a_failed_one_changes_nothing(db_url, monkeypatch):
    s = Store(db_url)
    s.ban(Decision("192.0.2.1", "manual", "", 0, time.time(), HOUR, 1, False, "old"), node="a", dry_run=False,
          now=time.time())
    s.close()
    v = store_mod.SCHEMA_VERSION

    def broken(conn):
        conn.exec_driver_sql("ALTER TABLE bans ADD COLUMN extra TEXT")
        raise sa.exc.OperationalError("step", {}, Exception("disk on fire"))

    monkeypatch.setattr(store_mod.base, "SCHEMA_VERSION", v + 1)
    monkeypatch.setattr(store_mod.migrate, "MIGRATIONS", {v: broken})
    with pytest.raises(StoreError, match="disk on fire"):
        Store(db_url)
    # All or nothing: no column, the old version.
    assert "extra" not in columns(db_url, "bans")
    assert sql(db_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(v),)]

    ran = []

    def step(conn):
        ran.append(v)
        conn.exec_driver_sql("ALTER TABLE bans ADD COLUMN extra TEXT DEFAULT 'x'")
    monkeypatch.setattr(store_mod.migrate, "MIGRATIONS", {v: step})
    s = Store(db_url)
    assert s.schema_version() == v + 1
    s.close()
    assert sql(db_url, "SELECT target, extra FROM bans") == [("192.0.2.1", "x")]
    Store(db_url).close()                                   # once: not again at the next start
    assert ran == [v]


def test_scores_survive_a_restart(db_url):
    t = time.time() - 60
    e = engine(db_url)
    e.add([off("192.0.2.7", t + i) for i in range(4)])
    e.close()
    assert e.store.active_bans(time.time()) == []
    e = engine(db_url)                                    # a new process: state from the store
    assert e.scorer.score("192.0.2.7", t + 5) == 4
    e.add([off("192.0.2.7", t + 5)])
    e.close()
    [b] = e.store.active_bans(time.time())
    assert (b.target, b.kind, b.count, b.node) == ("192.0.2.7", "auth_failed", 1, "mx1")
    assert b.text == "a log line \ufffd"


def test_release_clears_the_score_for_the_next_run(db_url):
    t = time.time() - 60
    e = engine(db_url)
    e.add([off("192.0.2.7", t + i) for i in range(4)])
    e.close()
    e.store.release(["192.0.2.7"], "unban", time.time())
    e = engine(db_url)
    assert e.scorer.score("192.0.2.7", t + 5) == 0
    e.add([off("192.0.2.7", t + 5)])
    e.close()
    assert e.store.active_bans(time.time()) == []


def test_escalation_is_persisted(db_url):
    base = time.time() - 10 * HOUR
    for i, want in enumerate([HOUR, 2 * HOUR, 4 * HOUR]):
        e = engine(db_url)
        e.add([off("192.0.2.8", base + i * 3 * HOUR, "auth_failed", 5)])
        e.close()
        b = e.store.bans(target="192.0.2.8")[-1]
        assert (b.duration, b.count, b.escalated) == (want, i + 1, i > 0)


def test_old_bans_are_recorded_as_expired(db_url):
    e = engine(db_url)
    e.add([off("192.0.2.9", time.time() - 3 * 86400, "dnsbl", 5)])
    e.close()
    [b] = e.store.bans()
    assert b.released == b.expires and b.release_reason == "expiry"
    assert e.stats.expired_on_arrival == 1


def test_expiry_and_allow_list_release_on_start(db_url):
    s = Store(db_url)
    now = time.time()
    for ip, dur in (("192.0.2.10", 1.0), ("192.0.2.11", HOUR), ("198.51.100.12", HOUR)):
        s.ban(Decision(ip, "manual", "", 0, now - 2, dur, 1, False, "t"), node="a", dry_run=False, now=now - 2)
    e = Engine(s, Policy(), AllowList(["198.51.100.0/24"], own=()), node="a", dry_run=False)
    e.close()
    by = {b.target: b.release_reason for b in s.bans()}
    assert by == {"192.0.2.10": "expiry", "192.0.2.11": None, "198.51.100.12": "allow-list"}


def test_network_ban_releases_its_members(db_url):
    e = engine(db_url)
    t = time.time() - 30
    e.add([off(f"203.0.113.{i}", t + i, "dnsbl", 5) for i in (1, 2, 3)])
    e.close()
    bans = {b.target: b for b in e.store.bans()}
    assert bans["203.0.113.0/24"].members == "203.0.113.1,203.0.113.2,203.0.113.3"
    assert bans["203.0.113.1"].release_reason == bans["203.0.113.2"].release_reason == "aggregated"
    assert [b.target for b in e.store.active_bans(time.time())] == ["203.0.113.0/24"]


def test_retention_prunes_old_offences(db_url):
    e = engine(db_url)
    now = time.time()
    e.add([off("192.0.2.20", now - 40 * 86400), off("192.0.2.21", now - 60)])
    e.close()
    assert e.store.prune(now, 30 * 86400) == 1
    assert e.store.offender("192.0.2.20") is None and e.store.offender("192.0.2.21") is not None


def test_stats(db_url):
    e = engine(db_url)
    t = time.time() - 100
    e.add([off("192.0.2.30", t, "dnsbl", 5), off("192.0.2.31", t + 1), off("192.0.2.31", t + 2, "unknown_user")])
    e.close()
    s = e.store.stats(None, time.time())
    assert s["offences"] == 3 and s["by_kind"] == {"auth_failed": 1, "dnsbl": 1, "unknown_user": 1}
    assert s["bans_active"] == s["bans_total"] == 1 and s["bans_by_kind"] == {"dnsbl": 1}
    assert s["top"][0]["ip"] == "192.0.2.31" and s["top"][0]["kinds"] == {"auth_failed": 1, "unknown_user": 1}
    assert e.store.stats(time.time() + 10, time.time())["offences"] == 0


def test_a_version_1_database_gains_read_positions(db_url):
    s = Store(db_url)
    s.ban(Decision("192.0.2.1", "manual", "", 0, time.time(), HOUR, 1, False, "old"), node="a", dry_run=False,
          now=time.time())
    s.close()
    # What logban 0.1 left behind.
    sql(db_url, "DROP TABLE positions", "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    s = Store(db_url)
    assert s.schema_version() == store_mod.SCHEMA_VERSION
    assert [b.target for b in s.active_bans(time.time())] == ["192.0.2.1"]
    s.save_positions("mx", [{"path": "/var/log/mail.log", "dev": 1, "inode": 2, "fingerprint": "ab", "fp_len": 2,
                             "offset": 10, "lines": 1}], time.time())
    s.save_positions("mx", [{"path": "/var/log/mail.log", "dev": 1, "inode": 2, "fingerprint": "ab", "fp_len": 2,
                             "offset": 20, "lines": 2}], time.time())
    got = s.positions("mx")
    assert list(got) == ["/var/log/mail.log"] and got["/var/log/mail.log"].offset == 20
    assert s.positions("other") == {}


def test_a_version_2_database_keeps_one_unreleased_ban_per_target(db_url):
    Store(db_url).close()
    now = time.time()
    # What logban 0.2 could leave behind: two unreleased bans of one target.
    sql(db_url, "DROP INDEX ux_bans_unreleased_target", "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    for i, created in enumerate((now - 50, now - 10)):
        sql(db_url, "INSERT INTO bans (target, kind, rule, reason, score, created, expires, count, escalated, "
                    "dry_run, node, source, members, text) VALUES ('192.0.2.1', 'manual', '', :reason, 0, :created, "
                    ":expires, :count, false, false, 'a', 'manual', '', '')",
            reason=f"ban {i}", created=created, expires=now + 3600, count=i + 1)
    s = Store(db_url)
    assert [(b.reason, b.release_reason) for b in s.bans()] == [("ban 0", "replaced"), ("ban 1", None)]
    with pytest.raises(sa.exc.IntegrityError):
        with s.write() as conn:
            conn.exec_driver_sql("INSERT INTO bans (target, kind, rule, reason, score, created, count, escalated, "
                                 "dry_run, node, source, members, text) VALUES ('192.0.2.1', 'manual', '', '', 0, 0, "
                                 "1, false, false, 'a', 'manual', '', '')")


def test_two_writers_deciding_the_same_ban_make_one_with_an_exact_count(db_url):
    a, b = Store(db_url), Store(db_url)
    now = time.time()
    d = Decision("192.0.2.50", "dnsbl", "r", 5, now, HOUR, 1, False, "x")
    a.record([], [d], node="a", dry_run=False, now=now)
    b.record([], [d], node="b", dry_run=False, now=now)            # b did not know: it stays one ban
    assert [(x.node, x.count) for x in a.active_bans(now)] == [("a", 1)]
    a.release(["192.0.2.50"], "unban", now + 1)
    later = Decision("192.0.2.50", "dnsbl", "r", 5, now + 2, HOUR, 1, False, "y")   # b's memory says count 1
    b.record([], [later], node="b", dry_run=False, now=now + 2)
    assert [(x.node, x.count) for x in a.active_bans(now + 2)] == [("b", 2)]


def test_a_partner_allowed_by_name_is_never_an_offender_and_its_ban_elsewhere_is_refused(db_url):
    """Node a allows a partner by its verified name: its offences are not recorded (never
    offenders, nothing for other nodes to add up). Node c, without that allow-list, records
    its own offences of the partner with the name and bans it; a's gate refuses that ban."""
    names = ["*.outbound.example.com"]
    t = time.time() - 60
    partner = [Offence(t + i, "192.0.2.44", "postfix", "r", "bad_helo", 5, "f", i, b"x", "mx7.outbound.example.com")
               for i in range(3)]
    a = Engine(Store(db_url), Policy(), AllowList(names=names, own=()), node="a", dry_run=False)
    a.add(partner)
    a.close()
    assert a.scorer.stats.decisions == 0 and a.scorer.stats.allowed == 3
    assert a.store.offences_after(0, "b") == [] and a.store.stats(None, time.time())["offences"] == 0
    c = Engine(Store(db_url), Policy(), AllowList(own=()), node="c", dry_run=False)
    c.add(partner)
    c.close()
    assert [r.name for r in c.store.offences_after(0, "a")] == ["mx7.outbound.example.com"] * 3
    enforced = a.store.enforced(time.time())
    assert [(r.target, r.name) for r in enforced] == [("192.0.2.44", "mx7.outbound.example.com")]
    ok, refused = AllowList(names=names, own=()).screen(enforced)
    assert ok == [] and "outbound.example.com" in refused[0][1]
    assert AllowList(own=()).screen(enforced)[0] == enforced


def test_a_version_3_database_gains_offence_names(db_url):
    e = engine(db_url)
    e.add([off("192.0.2.1", time.time() - 10)])
    e.close()
    # What logban 0.3 left behind.
    sql(db_url, "ALTER TABLE offences DROP COLUMN name", "UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    s = Store(db_url)
    assert s.schema_version() == store_mod.SCHEMA_VERSION
    assert [(r.ip, r.name) for r in s.offences_after(0, "other")] == [("192.0.2.1", None)]


def test_nul_bytes_and_odd_text_in_log_lines_are_stored_on_every_backend(db_url):
    """PostgreSQL text holds no NUL: a HELO with one must not stop recording (or the daemon)."""
    e = engine(db_url)
    t = time.time() - 30
    e.add([Offence(t + i, "203.0.113.60", "postfix", "r", "relay_denied", 2, "f", i,
                   b"helo=<x\x00y> \xff\x1b[2J", "n\x00me.example") for i in range(3)])
    e.close()
    [b] = e.store.active_bans(time.time())
    assert b.target == "203.0.113.60" and "\x00" not in b.text and "x\\x00y" in b.text
    assert all("\x00" not in r.text and "\x00" not in r.name for r in e.store.offences_after(0, "other"))


def test_rows_whose_times_are_no_numbers_are_read_as_numbers_or_refused(tmp_path):
    s = Store(url(tmp_path))
    now = time.time()
    s.ban(Decision("203.0.113.9", "manual", "", 0, now, HOUR, 1, False, "t"), node="a", dry_run=False, now=now)
    with sqlite3.connect(tmp_path / "logban.db") as c:
        for target, exp in (("203.0.113.13", float("inf")), ("203.0.113.15", "abc"), ("203.0.113.16", 1e300)):
            c.execute("INSERT INTO bans (target, kind, rule, reason, score, created, expires, duration, count, "
                      "escalated, dry_run, node, source, members, text) VALUES (?, 'virus', '', '', 5, ?, ?, 'x', 1, "
                      "0, 0, 'b', 'auto', '', '')", (target, now, exp))
    rows = s.active_bans(now)
    assert all(isinstance(r.expires, float) for r in rows)
    assert "203.0.113.15" not in {r.target for r in rows}          # 'abc' reads as 0: over long ago
    ok, refused = AllowList(own=()).screen(s.enforced(now))
    assert [r.target for r in ok] == ["203.0.113.9"] and {t for t, _ in refused} == {"203.0.113.13", "203.0.113.16"}
    e = Engine(s, Policy(), AllowList(own=()), node="a", dry_run=False)      # the daemon's start reads them
    e.close()


def test_rows_no_logban_wrote_cannot_stop_a_node_that_reads_them(tmp_path):
    """Offence and ban rows with garbage addresses, times or scores (another node, anyone with
    write access) are left out of what a scorer reads; partners survive the retention."""
    db = url(tmp_path)
    e = engine(db)
    now = time.time()
    e.add([off("198.51.100.77", now - 100)])
    e.scorer.partner("198.51.100.10", "out1.mailout.example.com", now - 90 * 86400)
    e.close()
    e.store.ban(Decision("198.51.100.76", "manual", "", 0, now - 50, 10.0, 1, False, "t"), node="a", dry_run=False,
                now=now - 50)
    with sqlite3.connect(tmp_path / "logban.db") as c:
        cols = "time, target, ip, mta, rule, kind, score, node, file, line, text"
        for t, ip, score in ((now - 5, "garbage", 1), ("abc", "198.51.100.78", 1), (now - 5, "198.51.100.79", "x"),
                             (now - 5, "198.51.100.80", -9e999), (now - 5, "198.51.100.81", 1e300)):
            c.execute(f"INSERT INTO offences ({cols}) VALUES (?, ?, ?, 'p', 'r', 'dnsbl', ?, 'mx2', 'f', 1, '')",
                      (t, ip, ip, score))
            c.execute("INSERT OR IGNORE INTO offenders (target, score, score_time, first_seen, last_seen, offences, "
                      "kinds, reset_at) VALUES (?, 0, 0, 0, ?, 1, 0, 0)", (ip, now))
        c.execute("UPDATE bans SET created = 'abc', duration = 'NaN', count = 'lots'")
        c.execute("UPDATE offenders SET kinds = 'k' WHERE target = '198.51.100.77'")
    s = Store(db)
    assert [r.ip for r in s.offences_after(0, "mx1")] == []
    assert {r.ip for r in s.recent_offences(3600)} == {"198.51.100.77"}
    assert all(isinstance(p.created, float) and isinstance(p.count, int) for p in s.history().values())
    assert s.offender("198.51.100.77").kinds == 0
    e = Engine(s, Policy(), AllowList(names=["*.mailout.example.com"], own=()), node="mx1", dry_run=False)
    e.add([off("198.51.100.76", now, "dnsbl", 5)])       # escalation reads the odd history row
    e.close()
    assert "198.51.100.76" in {b.target for b in s.active_bans(time.time())}
    s.prune(now, 30 * 86400)
    assert s.partners(AllowList(names=["*.mailout.example.com"], own=()), max_age=0) == ["198.51.100.10"]


def _as_schema_4(s: Store) -> None:
    """Turn a new store into what logban 0.4 wrote: one unreleased ban per target, dry run or not."""
    with s.engine.begin() as c:
        for ix in ("ux_bans_unreleased_target", "ux_bans_unreleased_dry_target", "ix_offenders_reset_at"):
            c.exec_driver_sql(f"DROP INDEX {ix}")
        c.exec_driver_sql("CREATE UNIQUE INDEX ux_bans_unreleased_target ON bans (target) WHERE released IS NULL")
        c.exec_driver_sql("UPDATE meta SET value = '4' WHERE key = 'schema_version'")


def test_dry_run_bans_take_no_slot_of_a_real_one_after_migration(db_url):
    """Issue 12: a dry-run ban took the one unreleased slot, so the real ban of the same
    client was never recorded (nothing enforced for up to 30 days)."""
    now = time.time()
    s = Store(db_url)
    d = Decision("192.0.2.5", "dnsbl", "r", 5, now - 60, 6 * HOUR, 1, False, "why")
    s.record([], [d], node="mx1", dry_run=True, now=now)
    _as_schema_4(s)
    s.close()
    s = Store(db_url)                                   # migrates 4 -> 5
    assert s.schema_version() == store_mod.SCHEMA_VERSION
    s.record([], [Decision("192.0.2.5", "dnsbl", "r", 5, now, 6 * HOUR, 2, False, "why")],
             node="mx1", dry_run=False, now=now)
    rows = [(b.dry_run, b.released is None, b.count) for b in s.bans(target="192.0.2.5")]
    assert rows == [(True, True, 1), (False, True, 1)]     # both stand; the real one is the first real one
    assert [b.target for b in s.enforced(now)] == ["192.0.2.5"]
    # A second dry-run decision of the same target is one record, not two; a real one likewise.
    s.record([], [d], node="mx2", dry_run=True, now=now)
    s.record([], [Decision("192.0.2.5", "dnsbl", "r", 5, now, 6 * HOUR, 2, False, "why")],
             node="mx2", dry_run=False, now=now)
    assert len(s.unreleased()) == 2 and len(s.unreleased(real_only=True)) == 1
    # The dry-run ban ends on its own; the real one stays.
    s.record([], [Decision("192.0.2.6", "dnsbl", "r", 5, now - 10, 5, 1, False, "why")], node="mx1",
             dry_run=True, now=now - 10)
    assert [r.target for r in s.expire(now)] == ["192.0.2.6"]
    assert {b.target for b in s.unreleased()} == {"192.0.2.5"}


def test_an_enforcing_engine_is_held_by_real_bans_only(db_url):
    now = time.time()
    e = Engine(Store(db_url), Policy(), AllowList(own=()), node="mx1", dry_run=True)
    e.add([off("192.0.2.8", now - 5, "dnsbl", 5)])
    e.flush()
    assert "192.0.2.8" in e.scorer.active
    e.set_dry_run(False)                                # reload: dry_run = false
    assert "192.0.2.8" not in e.scorer.active
    e.add([off("192.0.2.8", now - 1, "dnsbl", 5)])
    e.flush()
    real = [b for b in e.store.bans(target="192.0.2.8") if not b.dry_run]
    assert len(real) == 1 and real[0].released is None and not real[0].escalated


def test_a_ban_ends_exactly_at_its_expiry(db_url):
    s = Store(db_url)
    t = float(int(time.time()))
    s.ban(Decision("192.0.2.10", "manual", "", 0, t, 60.0, 1, False, "t"), node="a", dry_run=False, now=t)
    assert [b.target for b in s.active_bans(t + 59.5)] == ["192.0.2.10"]
    assert s.expire(t + 59.5) == []
    assert s.active_bans(t + 60) == []
    assert [r.target for r in s.expire(t + 60)] == ["192.0.2.10"]
    [b] = s.bans()
    assert b.released == t + 60 and b.release_reason == "expiry"
    s.close()


def test_hourly_counts_are_migrated_kept_with_every_write_and_pruned(db_url):
    """Schema 7: offence_hours, filled from the offences of an older store, then added to in
    the transaction that records offences, and pruned with them."""
    now = time.time()
    h = int(now // 3600)
    s = Store(db_url)
    s.record([(off("192.0.2.7", (h - 30) * 3600 + 5), "192.0.2.7"), (off("192.0.2.7", (h - 30) * 3600 + 9), "192.0.2.7"),
              (off("192.0.2.8", (h - 1) * 3600 + 1, "dnsbl", 5), "192.0.2.8")], [], node="mx1", dry_run=False, now=now)
    s.close()
    sql(db_url, "DROP TABLE offence_hours", "DROP INDEX ix_offences_target_time_node",
        "CREATE INDEX ix_offences_target_time ON offences (target, time)",
        "UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    s = Store(db_url)                                   # migrates 6 -> 7
    assert s.schema_version() == store_mod.SCHEMA_VERSION
    hours = "SELECT hour, node, kind, count FROM offence_hours ORDER BY hour"
    assert sql(db_url, hours) == [(h - 30, "mx1", "auth_failed", 2), (h - 1, "mx1", "dnsbl", 1)]
    index = sa.inspect(s.engine).get_indexes("offences")
    assert {i["name"]: i["column_names"] for i in index}["ix_offences_target_time_node"] == \
        ["target", "time", "node"] and "ix_offences_target_time" not in {i["name"] for i in index}
    s.record([(off("192.0.2.9", (h - 1) * 3600 + 2, "dnsbl", 5), "192.0.2.9"),
              (off("192.0.2.9", (h - 1) * 3600 + 3), "192.0.2.9")], [], node="mx1", dry_run=False, now=now)
    assert sql(db_url, hours) == [(h - 30, "mx1", "auth_failed", 2), (h - 1, "mx1", "auth_failed", 1),
                                  (h - 1, "mx1", "dnsbl", 2)]
    s.prune(now, 24 * HOUR)
    assert sql(db_url, hours) == [(h - 1, "mx1", "auth_failed", 1), (h - 1, "mx1", "dnsbl", 2)]
def test_a_version_7_database_gains_the_live_allow_list(db_url):
    s = Store(db_url)
    s.ban(Decision("192.0.2.1", "manual", "", 0, time.time(), HOUR, 1, False, "old"), node="a", dry_run=False,
          now=time.time())
    s.close()
    sql(db_url, "DROP TABLE allowlist", "UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    s = Store(db_url)
    assert s.schema_version() == store_mod.SCHEMA_VERSION == 8
    assert [b.target for b in s.active_bans(time.time())] == ["192.0.2.1"]
    now = time.time()
    s.allow_add("192.0.2.1", "address", "partner", now, None, "mx1")
    s.allow_add("*.partner.example", "name", "", now + 1, now + 60, "mx2")
    s.allow_add("198.51.100.0/24", "network", "", now + 2, now + 1, "mx2")
    assert [(r.target, r.kind, r.added_by) for r in s.allow_entries(now + 5)] == [
        ("192.0.2.1", "address", "mx1"), ("*.partner.example", "name", "mx2")]
    assert len(s.allow_entries()) == 3                  # an entry whose time is over stays until the next add
    s.allow_add("192.0.2.1", "address", "again", now + 10, None, "mx1")        # replaced, the old one gone
    assert [(r.target, r.reason) for r in s.allow_entries()] == [("*.partner.example", ""), ("192.0.2.1", "again")]
    assert s.allow_remove("192.0.2.1") and not s.allow_remove("192.0.2.1")
    assert [r.target for r in s.allow_entries()] == ["*.partner.example"]


def test_an_offender_row_sums_a_batch_and_merges_with_the_one_stored(tmp_path):
    """Per target: first and last seen whatever the order, offences counted, kinds as bits, the
    name of the newest offence that has one, the score given for it as of its last offence."""
    from logban.store import kind_names
    s = Store(url(tmp_path))
    t = 1_900_000_000.0

    def o(at, kind, name=None):
        return Offence(t + at, "192.0.2.7", "postfix", "r", kind, 1.0, "f", 1, b"line", name)
    s.record([(o(5, "dnsbl", "a.example"), "192.0.2.7"), (o(1, "auth_failed"), "192.0.2.7"),
              (o(7, "dnsbl", "c.example"), "192.0.2.7"), (o(9, "auth_failed"), "192.0.2.7"),
              (o(3, "bad_helo", "old.example"), "192.0.2.7")], [],
             node="n", dry_run=False, now=t + 10, scores={"192.0.2.7": 2.5})
    r = s.offender("192.0.2.7")
    assert (r.first_seen, r.last_seen, r.score_time, r.offences, r.name, r.score) == (t + 1, t + 9, t + 9, 5, "c.example", 2.5)
    assert sorted(kind_names(r.kinds)) == ["auth_failed", "bad_helo", "dnsbl"]
    s.record([(o(0, "virus", "b.example"), "192.0.2.7")], [], node="n", dry_run=False, now=t + 10,
             scores={"192.0.2.7": 1.0})
    r = s.offender("192.0.2.7")
    # An older offence: counted, its kind and first seen too; the newer score stays, a name it has is taken.
    assert (r.first_seen, r.last_seen, r.offences, r.name, r.score) == (t, t + 9, 6, "b.example", 2.5)
    assert "virus" in kind_names(r.kinds)


def _cache_size(conn) -> int:
    return conn.exec_driver_sql("PRAGMA cache_size").scalar()


def test_a_bulk_writers_page_cache_is_its_own_and_no_readers(tmp_path):
    """`cache_mib` (scan --apply's) sizes the writer's SQLite page cache; a plain writer (the
    daemon, ban, unban) and a read-only open keep SQLite's default."""
    bulk = Store(url(tmp_path), cache_mib=store_mod.BULK_CACHE_MIB)
    with bulk.write() as c:
        assert _cache_size(c) == -1024 * store_mod.BULK_CACHE_MIB
    with bulk.read() as c:
        assert _cache_size(c) == -1024 * store_mod.BULK_CACHE_MIB
    for other in (Store(url(tmp_path)), Store(url(tmp_path), readonly=True, cache_mib=64)):
        with other.read() as c:
            assert _cache_size(c) == -2000
        other.close()
    bulk.close()


def test_offence_rows_are_those_of_the_line_cut_decoded_and_cleaned():
    """The rows `record` builds at once: as `_text` and `_clean` make them one by one, NUL
    bytes around broken UTF-8 and at the cut included."""
    from logban.store.sql import TEXT_MAX, _clean, _text
    from logban.store.writes import OffenceRows
    raws = [b"", b"plain", b"\x00", b"\xe2\x82\x00x", b"\xf0\x9f\x00\x98", b"a\x00" * 400,
            b"\xc3" + b"\x00" * (TEXT_MAX + 5), b"x" * (TEXT_MAX - 1) + b"\xe2\x82\xac\x00", b"\xff\xfe\x00\xff"]
    names = [None, "", "n\x00me", "mx.example"]
    offs = [(Offence(float(i), "192.0.2.1", "postfix", "r", "k", 1.0, "f", i, raw, names[i % len(names)]), "t")
            for i, raw in enumerate(raws)]
    assert OffenceRows.of(offs, "mx1") == [
        (o.time, t, o.ip, o.mta, o.rule, o.kind, o.score, "mx1", o.file, o.line, _text(o.raw), _clean(o.name))
        for o, t in offs]


def test_offences_stamped_at_infinity_count_in_no_hour(tmp_path):
    now = time.time()
    h = int(now // 3600)
    s = Store(url(tmp_path))
    s.record([(off("192.0.2.7", t), "192.0.2.7") for t in (h * 3600 + 1, float("inf"), -float("inf"),
                                                           h * 3600 + 2, (h - 1) * 3600)], [],
             node="mx1", dry_run=False, now=now)
    assert sql(url(tmp_path), "SELECT hour, node, mta, rule, kind, count FROM offence_hours ORDER BY hour") == [
        (h - 1, "mx1", "postfix", "rule-auth_failed", "auth_failed", 1),
        (h, "mx1", "postfix", "rule-auth_failed", "auth_failed", 2)]
    s.close()


@pytest.mark.parametrize("name", ["/var/log/mail.log", "/var/log/ma\u00efl.log", "/var/log/mail\udcff.log",
                                  "fsbytes:", "fsbytes:zz", "fsbytes:2f", "relative/m\udc80\udcfe"])
def test_a_positions_path_is_kept_as_text_any_database_takes_and_read_back_the_same(name):
    from logban.store.sql import path_of, path_text
    kept = path_text(name)
    kept.encode("utf-8")
    assert path_of(kept) == name
    assert (kept == name) == (not name.startswith("fsbytes:") and not any("\udc80" <= c <= "\udcff" for c in name))
