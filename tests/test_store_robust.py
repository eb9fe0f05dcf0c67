"""The shared store under attack: bad bytes in log lines, nodes writing the same rows at once."""
from __future__ import annotations

import time

from daemonproc import NET, Daemon, append, stamp


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
    finally:
        d.stop()
    print("".join(d.lines))


# ---- nodes writing the same rows at once ------------------------------------------------------

def _offences(ips, t):
    from logban.parse import Offence
    return [(Offence(t, ip, "postfix", "postfix-sasl", "auth_failed", 1.0, "mail.log", 1, b"line"), ip) for ip in ips]


def test_two_nodes_writing_the_same_offenders_in_opposite_orders_never_deadlock(pg_url):
    """A shared attack: both nodes see the same clients, in opposite orders, and record at once."""
    import threading
    from logban.store import Store
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
        except BaseException as e:            # noqa: BLE001 - reported by the test
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
    monkeypatch.setattr(store_mod.time, "sleep", lambda _s: None)
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
