"""The shared store under attack: bad bytes in log lines, nodes writing the same rows at once."""
from __future__ import annotations

import time

from daemonproc import NET, Daemon, append, sasl, stamp


def helo_nul(ip: str) -> str:
    return (f"{stamp()} mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from bad\x00name[{ip}]: 554 5.7.1 Service "
            f"unavailable; Client host [{ip}] blocked using zen.spamhaus.org; from=<a\x00@b.example> "
            f"to=<c@d.example> proto=ESMTP helo=<x\x00\x01\x7f>\n")


def test_a_line_with_nul_bytes_is_recorded_and_the_daemon_goes_on(tmp_path, pg_url):
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path / "d", "--follow", str(log), db=pg_url).start()
    try:
        append(log, helo_nul(f"{NET}.61"))
        d.wait_offences(1, timeout=15)
        append(log, helo_nul(f"{NET}.62"))
        d.wait_offences(2, timeout=15)
        assert d.p.poll() is None
        texts = [t for (t,) in d.query("SELECT text FROM offences")]
        assert all("\x00" not in t and "\\x00" in t for t in texts), texts
    finally:
        assert d.stop() == 0, "".join(d.lines)
    restart_and_read_on(d, log, f"{NET}.65", 3)


def restart_and_read_on(d, log, ip: str, offences: int) -> None:
    """The node started again reads on from where it was, and lives."""
    d.start()
    try:
        append(log, helo_nul(ip))
        d.wait_offences(offences, timeout=15)
        assert d.p.poll() is None
    finally:
        assert d.stop() == 0, "".join(d.lines)


# ---- nodes writing the same rows at once ------------------------------------------------------

def _offences(ips, t):
    from logban.parse import Offence
    return [(Offence(t, ip, "postfix", "postfix-sasl", "auth_failed", 1.0, "mail.log", 1, b"line"), ip) for ip in ips]


def test_two_nodes_writing_the_same_offenders_in_opposite_orders_never_deadlock(pg_url, monkeypatch):
    """A shared attack: both nodes see the same clients, in opposite orders, and record at once.
    Rows are written in one order on every node, so PostgreSQL never has a deadlock to break:
    the retry (next test) is for what stable order cannot prevent, and must not hide a lost order."""
    import threading

    import logban.store.base as base
    from logban.store import Store
    transient: list[str] = []

    def spy(e) -> bool:
        got = real(e)
        if got:
            transient.append(str(e).splitlines()[0])
        return got
    real = base._transient
    monkeypatch.setattr(base, "_transient", spy)
    ips = [f"{NET}.{i}" for i in range(1, 201)] + [f"203.0.113.{i}" for i in range(1, 201)]
    errors: list[BaseException] = []
    go = threading.Barrier(2)
    Store(pg_url).close()                     # the schema, made once

    def node(name: str, order: list[str]) -> None:
        s = Store(pg_url)
        try:
            for round_ in range(15):
                go.wait(timeout=60)
                s.record(_offences(order, 1_900_000_000.0 + round_), [], node=name, dry_run=False,
                         now=1_900_000_000.0 + round_)
        except BaseException as e:
            errors.append(e)
            go.abort()
        finally:
            s.close()

    threads = [threading.Thread(target=node, args=("mx1", ips)), threading.Thread(target=node, args=("mx2", ips[::-1]))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert transient == [], transient          # not one deadlock retried
    from logban.store import Store as S
    s = S(pg_url)
    try:
        with s.read() as conn:
            import sqlalchemy as sa
            assert conn.execute(sa.text("SELECT count(*), min(offences), max(offences) FROM offenders")).one() == \
                (400, 30, 30)
    finally:
        s.close()


def test_a_deadlock_or_serialization_failure_is_retried_not_an_outage(tmp_path, monkeypatch):
    """The database ends one transaction to break a deadlock: the write runs again, nothing is lost."""
    import sqlalchemy as sa

    from logban import store as store_mod
    from logban.store import Store

    class Deadlock(Exception):
        sqlstate = "40P01"

    class Conflict(Exception):
        sqlstate = "40001"

    s = Store(f"sqlite:///{tmp_path / 'logban.db'}")
    real = Store._upsert_offenders
    fails = [Deadlock("deadlock detected"), Conflict("could not serialize access")]

    def flaky(self, *a, **kw):
        if fails:
            raise sa.exc.OperationalError("INSERT", {}, fails.pop(0))
        return real(self, *a, **kw)

    monkeypatch.setattr(Store, "_upsert_offenders", flaky)
    monkeypatch.setattr(store_mod.base.time, "sleep", lambda _s: None)
    s.record(_offences([f"{NET}.9"], 1_900_000_000.0), [], node="mx1", dry_run=False, now=1_900_000_000.0)
    assert not fails
    with s.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM offences")).scalar() == 1
        assert conn.execute(sa.text("SELECT offences FROM offenders")).scalar() == 1
    # Other errors are not retried: an outage is still an outage.
    fails[:] = [OSError("server closed the connection")] * 10
    import pytest
    with pytest.raises(sa.exc.OperationalError):
        s.record(_offences([f"{NET}.9"], 1_900_000_001.0), [], node="mx1", dry_run=False, now=1_900_000_001.0)
    assert len(fails) == 9


def test_a_log_past_2_gib_on_postgresql_is_followed_and_survives_a_restart(tmp_path, pg_url):
    """Read positions past 2**31 (a busy server's mail.log before rotation): no row the daemon
    writes may stop it, and the position it saves lets the next start go on."""
    log = tmp_path / "mail.log"
    with open(log, "wb") as f:
        f.truncate((1 << 31) + 4095)           # sparse: 2 GiB of history, already there at start
        f.seek(0, 2)
        f.write(b"\n")
    d = Daemon(tmp_path / "d", "--follow", str(log), db=pg_url).start()
    try:
        append(log, helo_nul(f"{NET}.63"))
        d.wait_offences(1, timeout=15)
        assert d.p.poll() is None
        assert d.query("SELECT \"offset\" FROM positions")[0][0] > 1 << 31
    finally:
        assert d.stop() == 0, "".join(d.lines)
    restart_and_read_on(d, log, f"{NET}.64", 2)


def test_a_row_the_database_refuses_is_left_out_and_the_rest_recorded(pg_url, caplog):
    """Whatever row a log line makes that the database cannot hold, the batch goes in without
    it: the other offences, the bans and the read position are recorded; nothing raises."""
    from logban.allow import AllowList
    from logban.engine import Engine
    from logban.parse import Offence
    from logban.score import Policy
    from logban.store import Store
    eng = Engine(Store(pg_url), Policy(), AllowList(own=()), node="mx1", dry_run=False)
    t = time.time()
    mk = lambda ip, line, kind="auth_failed", score=1.0: Offence(
        t, ip, "postfix", "postfix-x", kind, score, "mail.log", line, b"a line \x00 with NUL")
    eng.add([mk(f"{NET}.71", 1), mk(f"{NET}.72", 1 << 40), mk(f"{NET}.73", 3),
             mk(f"{NET}.74", 4, "dnsbl", 5.0)])       # line past what the column holds; a ban
    pos = {"path": "/var/log/mail.log", "dev": 1, "inode": 2, "fingerprint": "ab", "fp_len": 2,
           "offset": 400, "lines": 4}
    eng.flush([pos])
    assert eng.stats.dropped == 1
    assert any("not recorded" in r.getMessage() and "1099511627776" in r.getMessage() for r in caplog.records)
    with eng.store.read() as conn:
        import sqlalchemy as sa
        assert sorted(conn.execute(sa.text("SELECT ip FROM offences")).scalars()) == \
            [f"{NET}.71", f"{NET}.73", f"{NET}.74"]
        assert list(conn.execute(sa.text("SELECT target FROM bans")).scalars()) == [f"{NET}.74"]
        assert list(conn.execute(sa.text('SELECT "offset" FROM positions')).scalars()) == [400]
    eng.close()


def test_positions_of_a_version_4_store_become_64_bits(pg_url):
    from logban.store import SCHEMA_VERSION, Store
    s = Store(pg_url)
    with s.write() as conn:
        conn.exec_driver_sql('ALTER TABLE positions ALTER COLUMN "offset" TYPE INTEGER, ALTER COLUMN inode TYPE INTEGER')
        conn.exec_driver_sql("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    s.close()
    s = Store(pg_url)
    assert s.schema_version() == SCHEMA_VERSION
    s.save_positions("mx1", [{"path": "/var/log/mail.log", "dev": 1, "inode": 5 << 32, "fingerprint": "ab",
                              "fp_len": 2, "offset": 3 << 30, "lines": 4}], time.time())
    assert s.positions("mx1")["/var/log/mail.log"].offset == 3 << 30
    s.close()


def test_two_real_nodes_under_one_attack_in_opposite_orders_never_take_it_for_an_outage(tmp_path, pg_url):
    """Both mail servers see the same 150 clients at once, in opposite orders, round after round."""
    logs, nodes = [], []
    try:
        for name in ("mx1", "mx2"):
            log = tmp_path / f"{name}.log"
            log.write_text("")
            logs.append(log)
            nodes.append(Daemon(tmp_path / name, "--follow", str(log), "--node", name, db=pg_url).start())
        ips = [f"2001:db8:5:{i:x}::1" for i in range(1, 151)]      # a /64 each: 150 targets, no aggregation
        for _ in range(10):
            block = "".join(sasl(ip) for ip in ips)
            back = "".join(sasl(ip) for ip in reversed(ips))
            append(logs[0], block)
            append(logs[1], back)
            time.sleep(0.2)
        nodes[0].wait_offences(2 * 10 * 150, timeout=60)
        for d in nodes:
            assert d.p.poll() is None
            assert not [ln for ln in d.lines if "unreachable" in ln or "resynchronising" in ln], "".join(d.lines)
    finally:
        for d in nodes:
            d.stop()
