"""`scan --apply` and the process that writes its store."""
import json
import os
import signal
import socket
import sqlite3
import time

import pytest
import sqlalchemy as sa
from conftest import touch_now

from logban.allow import AllowList
from logban.cli import main
from logban.engine import Engine, write_packed
from logban.errors import StoreError
from logban.parse import Offence
from logban.score import Policy
from logban.store import BULK_CACHE_MIB, Store, writes
from logban.store.writer import Writer


def _log(tmp_path, n: int = 3):
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(time.time() - 60))
    log = tmp_path / "mail.log"
    log.write_text("".join(f"{stamp} mx postfix/smtpd[7]: warning: unknown[198.51.100.{i}]: SASL LOGIN "
                           "authentication failed: UGFzc3dvcmQ6\n" for i in range(1, n + 1)))
    touch_now(log)          # the year of the stamps comes from the file's mtime (see conftest)
    cfg = tmp_path / "logban.toml"
    cfg.write_text("")
    return log, cfg


def _scan(tmp_path, db, jobs: int = 2):
    log, cfg = _log(tmp_path)
    return main(["-c", str(cfg), "--db", db, "--backend", "none", "scan", "--apply", "--json", "--no-progress",
                 "--jobs", str(jobs), str(log)])


def dump(db: str) -> dict[str, list]:
    e = sa.create_engine(db)
    try:
        with e.connect() as c:
            return {t: sorted(map(tuple, c.exec_driver_sql(f"SELECT * FROM {t}")), key=repr)
                    for t in ("offences", "offenders", "bans", "positions", "offence_hours", "meta")}
    finally:
        e.dispose()


@pytest.mark.parametrize("jobs", [2, 1])
def test_scan_apply_writes_in_another_process_through_a_bulk_page_cache(tmp_path, monkeypatch, capsys, jobs):
    """The batches of scan --apply are written by a process of their own (--jobs 1: in this
    one), on a connection with the bulk page cache; the store it leaves is opened by others
    with SQLite's default."""
    seen = tmp_path / "seen"
    record = writes.Writes.record

    def spy(self, *a, **kw):
        with self.read() as c:
            with open(seen, "a") as f:
                f.write(f"{os.getpid()} {c.exec_driver_sql('PRAGMA cache_size').scalar()}\n")
        return record(self, *a, **kw)
    monkeypatch.setattr(writes.Writes, "record", spy)
    db = f"sqlite:///{tmp_path}/t.db"
    assert _scan(tmp_path, db, jobs) == 0
    recorded = json.loads(capsys.readouterr().out)["applied"]["offences"]
    pids, caches = zip(*(ln.split() for ln in seen.read_text().splitlines()))
    assert (os.getpid() in map(int, pids)) == (jobs == 1) and set(caches) == {str(-1024 * BULK_CACHE_MIB)}
    s = Store(db)
    with s.write() as c:
        assert c.exec_driver_sql("PRAGMA cache_size").scalar() == -2000
        assert c.exec_driver_sql("SELECT count(*) FROM offences").scalar() == recorded > 0
    s.close()


def _offences(n: int, now: float) -> list[Offence]:
    return [Offence(now - 300 + i, f"203.0.113.{i % 7}", "postfix", "postfix-dnsbl" if i % 3 else "postfix-auth",
                    "dnsbl" if i % 3 else "auth_failed", 5.0 if i % 3 else 1.0, "mail.log", i + 1,
                    b"line \x00\xff " + str(i).encode(), "n\x00me" if i % 5 == 0 else None) for i in range(n)]


def test_a_writer_records_what_the_engine_records_itself(tmp_path, monkeypatch):
    """Every table as the engine leaves it writing its batches itself, on a pinned clock."""
    now = 1_900_000_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    pos = {"path": "/l", "dev": 1, "inode": 2, "fingerprint": "f", "fp_len": 1, "offset": 0}
    dbs = []
    for name, writer in (("alone", False), ("apart", True)):
        db = f"sqlite:///{tmp_path}/{name}.db"
        e = Engine(Store(db), Policy(), AllowList(own=()), node="mx1", dry_run=False)
        e.writer = w = Writer(db, write_packed) if writer else None
        offs = _offences(60, now)
        e.add(offs[:30])
        e.flush([pos | {"lines": 30}])
        e.flush([pos | {"lines": 40}])             # positions alone
        e.add(offs[30:])
        e.close([pos | {"lines": 60}])
        if w is not None:
            w.close()
        assert e.stats.offences == 60 and e.stats.bans > 0
        dbs.append(dump(db))
    assert dbs[0] == dbs[1]


def test_a_writer_writes_to_postgresql_and_leaves_out_a_row_refused(pg_url, caplog):
    now = time.time()
    e = Engine(Store(pg_url), Policy(), AllowList(own=()), node="mx1", dry_run=False)
    e.writer = w = Writer(pg_url, write_packed)
    bad = Offence(now - 5, "192.0.2.9", "postfix", "postfix-x", "dnsbl", 5.0, "mail.log", 99, b"x", None)
    bad.line = 1 << 40                  # no INTEGER column holds it
    e.add(_offences(10, now) + [bad])
    e.close()
    w.close()
    assert e.stats.dropped == 1
    assert len(dump(pg_url)["offences"]) == 10


@pytest.mark.parametrize("jobs", [2, 1])
def test_an_error_in_the_writer_is_the_same_line_and_status_as_without_it(tmp_path, monkeypatch, capsys, jobs):
    """A database error that comes with a whole batch's rows (megabytes: more than the pipe
    holds while the scoring process sends the next batch) is told as one line, no hang."""
    def refuse(self, *a, **kw):
        raise sa.exc.OperationalError("INSERT", [("x" * 100, i) for i in range(100_000)],
                                      sqlite3.OperationalError("disk I/O error"))
    monkeypatch.setattr(writes.Writes, "record", refuse)
    db = f"sqlite:///{tmp_path}/t.db"
    assert _scan(tmp_path, db, jobs) == 1
    assert capsys.readouterr().err == f"logban: {tmp_path}/t.db: disk I/O error\n"


def test_a_writer_killed_is_a_store_error_not_a_hang(tmp_path):
    db = f"sqlite:///{tmp_path}/t.db"
    Store(db).close()
    w = Writer(db, write_packed)
    os.kill(w._proc.pid, signal.SIGKILL)
    w._proc.join()
    with pytest.raises(StoreError, match="process writing the database ended"):
        w.send([], [], [], {}, [], "mx1", False, time.time())
        w.wait()
    w.close()


def _refuse_with_rows(store, *args):
    raise sa.exc.OperationalError("INSERT", [("x" * 100, i) for i in range(100_000)],
                                  sqlite3.OperationalError("database is locked"))


def test_a_writers_error_crosses_while_batches_are_still_sent(tmp_path):
    """The writer fails on the first batch while this process sends more, each larger than
    the pipe holds: the error comes through at the next send or the wait, no hang."""
    db = f"sqlite:///{tmp_path}/t.db"
    Store(db).close()
    w = Writer(db, _refuse_with_rows)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the writer and this process wait for each other"))
    signal.alarm(30)
    try:
        with pytest.raises(sa.exc.OperationalError, match="database is locked"):
            for _ in range(5):
                w.send(b"y" * (4 << 20))
            w.wait()
    finally:
        signal.alarm(0)
        w.close()


def test_a_batch_cut_off_mid_send_ends_the_writer_at_close_not_a_hang(tmp_path):
    """Ctrl-C while a batch is half through the pipe (the writer busy, the pipe full): the
    "stop" that follows is read as the rest of that batch, so the writer must see the pipe
    end, which it never does while it holds this process's end of it too."""
    db = f"sqlite:///{tmp_path}/t.db"
    Store(db).close()
    w = Writer(db, write_packed)
    os.write(w._conn.fileno(), (1 << 20).to_bytes(4, "big") + b"x" * 1000)     # a header and some of its bytes
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("close waits forever for the writer"))
    signal.alarm(20)
    try:
        w.close()
    finally:
        signal.alarm(0)
    assert w._proc.exitcode is not None


@pytest.mark.parametrize("jobs", [2, 1])
def test_a_log_whose_name_is_no_utf8_is_applied_once_and_named_with_escapes(tmp_path, capsys, jobs):
    """A file name that is no UTF-8 stopped `scan --apply` at its first save (no database takes
    os.fsdecode's surrogates): its position is kept as its bytes and read back, so a second
    scan applies nothing again; its offences name it with \\x escapes."""
    log, cfg = _log(tmp_path)
    odd = os.path.join(os.fsencode(tmp_path), b"mail\xff.log")
    os.rename(log, odd)
    db = f"sqlite:///{tmp_path}/t.db"
    args = ["-c", str(cfg), "--db", db, "--backend", "none", "scan", "--apply", "--json", "--no-progress",
            "--jobs", str(jobs), os.fsdecode(odd)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["applied"]["offences"] == 3
    assert json.loads(out)["files"] == [f"{tmp_path}/mail\\xff.log"] and out.isascii()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["applied"]["offences"] == 0
    with sqlite3.connect(tmp_path / "t.db") as c:
        assert c.execute("SELECT DISTINCT file FROM offences").fetchall() == [(f"{tmp_path}/mail\\xff.log",)]
        assert c.execute("SELECT lines FROM positions").fetchall() == [(3,)]


@pytest.mark.parametrize("url", ["sqlite", "postgresql"])
def test_a_second_scan_apply_waits_for_the_first_and_applies_nothing_twice(tmp_path, request, url):
    """Two `scan --apply` at once both applied every line neither had saved yet. The second
    now waits for the first's lock (named on stderr), then finds the lines applied."""
    import subprocess
    import sys

    from conftest import ROOT
    db = f"sqlite:///{tmp_path}/t.db" if url == "sqlite" else request.getfixturevalue("pg_url")
    log, cfg = _log(tmp_path)
    args = ["-c", str(cfg), "--db", db, "--backend", "none", "scan", "--apply", "--json", "--no-progress", str(log)]
    store = Store(db)
    held = store.scan_lock(f"scan:{socket.gethostname()}", wait=None)
    try:
        p = subprocess.Popen([sys.executable, "-m", "logban", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, text=True)
        deadline = time.monotonic() + 60
        line = ""
        while "waiting for" not in line and time.monotonic() < deadline:
            line = p.stderr.readline()
        assert f"waiting for logban scan pid {os.getpid()}" in line
        time.sleep(0.5)
        assert p.poll() is None
        with store.read() as c:
            assert c.exec_driver_sql("SELECT count(*) FROM offences").scalar() == 0
    finally:
        held.release()
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and json.loads(out)["applied"]["offences"] == 3
    again = subprocess.run([sys.executable, "-m", "logban", *args], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert again.returncode == 0 and json.loads(again.stdout)["applied"]["offences"] == 0
    with store.read() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM offences").scalar() == 3
    store.close()


@pytest.mark.parametrize("jobs", [2, 1])
@pytest.mark.parametrize("live", [[], ["198.51.100.2"]])
def test_scan_apply_reports_by_the_configs_allow_list_and_records_by_the_live_one_too(tmp_path, capsys, jobs, live):
    # The report leaves out the clients the config allows; one the live allow-list allows
    # too is not recorded, yet the report still shows it, as a plain scan would.
    log, cfg = _log(tmp_path, 4)
    cfg.write_text('[allow]\naddresses = ["198.51.100.1"]\n')
    db = f"sqlite:///{tmp_path / 'x.db'}"
    for target in live:
        assert main(["-c", str(cfg), "--db", db, "allow", "add", target]) == 0
    capsys.readouterr()
    assert main(["-c", str(cfg), "--db", db, "--backend", "none", "scan", "--apply", "--json", "--no-progress",
                 "--jobs", str(jobs), str(log)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert sorted(t["ip"] for t in rep["top"]) == ["198.51.100.2", "198.51.100.3", "198.51.100.4"]
    assert rep["ignored"] == {"allow_listed": 1} and rep["applied"]["allowed"] == 1 + len(live)
    with sqlite3.connect(tmp_path / "x.db") as c:
        got = sorted({r[0] for r in c.execute("SELECT ip FROM offences")})
    assert got == [ip for ip in ("198.51.100.2", "198.51.100.3", "198.51.100.4") if ip not in live]


def test_a_scan_that_waited_scores_on_what_the_first_one_recorded(tmp_path):
    """The second `scan --apply` builds its scorer (the recent offences, the bans) from the
    store: read before it waits, it knew nothing of what the first one recorded meanwhile,
    and three offences there and three here of one client (threshold 5) banned nobody."""
    import subprocess
    import sys

    from conftest import ROOT
    db = f"sqlite:///{tmp_path}/t.db"
    now = time.time()
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now - 60))
    log = tmp_path / "mail.log"
    log.write_text("".join(f"{stamp} mx postfix/smtpd[7]: warning: unknown[198.51.100.7]: SASL LOGIN "
                           "authentication failed: UGFzc3dvcmQ6\n" for _ in range(3)))
    touch_now(log)
    cfg = tmp_path / "logban.toml"
    cfg.write_text("")
    store = Store(db)
    held = store.scan_lock(f"scan:{socket.gethostname()}", wait=None)
    try:
        p = subprocess.Popen([sys.executable, "-m", "logban", "-c", str(cfg), "--db", db, "--backend", "none", "scan",
                              "--apply", "--json", "--no-progress", str(log)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, text=True)
        deadline = time.monotonic() + 60
        line = ""
        while "waiting for" not in line and time.monotonic() < deadline:
            line = p.stderr.readline()
        assert "waiting for" in line
        # What the first scan records of another log while the second one waits.
        first = [(Offence(now - 120 + i, "198.51.100.7", "postfix", "postfix-auth", "auth_failed", 1.0,
                          "/var/log/other.log", i + 1, b"x"), "198.51.100.7") for i in range(3)]
        store.record(first, [], node="scan:other", dry_run=False, now=now)
    finally:
        held.release()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert json.loads(out)["applied"]["bans"] == 1
    store.close()
