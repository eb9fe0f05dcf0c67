"""Issue 13: what a careful admin meets on the command line, with the real `logban` process.
One clear line per mistake with the contract's exit status, no more privilege or
kernel state than asked for, and a store other users can only read."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLES, as_nobody, run_logban, skip_or_fail

GOOD = SAMPLES / "logs" / "postfix" / "mail.log"
DNSBL = ("Nov 20 10:00:01 mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[198.51.100.{i}]: 554 5.7.1 "
         "Service unavailable; Client host [198.51.100.{i}] blocked using zen.spamhaus.org; from=<a@b.example> "
         "to=<c@d.example> proto=ESMTP helo=<x>\n")


def one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        skip_or_fail(f"needs root for {what}")


def store(tmp: Path) -> str:
    return f"sqlite:///{tmp}/logban.db"


# ---- inputs and outputs -------------------------------------------------------------------

def test_scan_with_a_missing_file_reads_the_others_and_exits_1(tmp_path):
    r = run_logban("scan", "--json", str(tmp_path / "nope.log"), str(GOOD))
    assert r.returncode == 1
    assert re.fullmatch(r"logban: \S*nope\.log: no such file or directory\n", one_line(r))
    rep = json.loads(r.stdout)
    assert rep["failed"] == [str(tmp_path / "nope.log")] and rep["offences"] > 0 and str(GOOD) in rep["files"]


def test_closed_stdout_ends_scan_quietly(tmp_path):
    log = tmp_path / "big.log"
    log.write_text("".join(DNSBL.format(i=1 + i % 200) for i in range(60_000)))
    p = subprocess.Popen([sys.executable, "-m", "logban", "--backend", "none", "scan", "--events", str(log)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    first = p.stdout.readline()
    p.stdout.close()                                # `| head -1`
    err = p.stderr.read()
    assert p.wait(60) == 0 and json.loads(first)["ip"] == "198.51.100.1"
    assert err == b"", err


def test_non_ascii_in_an_rfc5424_stamp_is_a_line_without_time(tmp_path):
    line = ("<34>1 2026-11-20T10:00:{s}Z mx postfix/smtpd 123 - - NOQUEUE: reject: RCPT from unknown[198.51.100.9]: "
            "454 4.7.1 <a@example.net>: Relay access denied; from=<b@example.org> to=<a@example.net> proto=SMTP helo=<x>\n")
    log = tmp_path / "5424.log"
    log.write_bytes(line.format(s="\xe9").encode("latin-1") + line.format(s="\u00e901").encode() + line.format(s="01").encode())
    r = run_logban("scan", "--json", str(log))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["lines"] == 3 and rep["offences"] == 1


@pytest.mark.parametrize("kind, why", [("dir", "is a directory"), ("fifo", "not a regular file"),
                                        ("gz", "compressed")])
def test_run_refuses_what_it_cannot_follow(tmp_path, kind, why):
    target = tmp_path / {"dir": "logs", "fifo": "pipe", "gz": "mail.log.1.gz"}[kind]
    if kind == "dir":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    r = run_logban("--db", store(tmp_path), "run", "--follow", str(target), timeout=30)
    assert r.returncode == 2 and why in one_line(r) and str(target) in r.stderr.decode()


def test_run_refuses_a_log_it_may_not_read(public_tmp):
    log = public_tmp / "mail.log"
    log.write_text("x\n")
    log.chmod(0o600)                                # root's; the daemon runs as nobody
    (public_tmp / "db").mkdir()
    (public_tmp / "db").chmod(0o777)
    r = run_logban("--db", f"sqlite:///{public_tmp}/db/x.db", "run", "--follow", str(log),
                   prefix=as_nobody(public_tmp), timeout=30)
    assert r.returncode == 2 and "permission denied" in one_line(r) and str(log) in r.stderr.decode()


def test_huge_count_is_a_usage_error(tmp_path):
    r = run_logban("--db", store(tmp_path), "show", "--offences", "999999999999999999999", "198.51.100.7")
    assert r.returncode == 2 and "--offences" in one_line(r)


def test_export_to_a_directory_or_a_missing_one_creates_nothing(tmp_path):
    db = store(tmp_path)
    assert run_logban("--db", db, "ban", "198.51.100.7").returncode == 0
    r = run_logban("--db", db, "export", "--format", "plain", "-o", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in one_line(r) and "tmp" not in r.stderr.decode().split(":")[-1]
    assert not list(tmp_path.glob(".*"))                    # no temporary file left
    r = run_logban("--db", db, "export", "--format", "plain", "-o", str(tmp_path / "typo" / "dir" / "f"))
    assert r.returncode == 2 and "no such directory" in one_line(r)
    assert not (tmp_path / "typo").exists()


def test_export_where_the_user_may_not_write_is_one_line(public_tmp):
    locked = public_tmp / "postfix"
    locked.mkdir(mode=0o755)                        # root's, like /etc/postfix
    db = public_tmp / "db"
    db.mkdir()
    db.chmod(0o777)
    url = f"sqlite:///{db}/x.db"
    assert run_logban("--db", url, "ban", "198.51.100.7", prefix=as_nobody(public_tmp)).returncode == 0
    r = run_logban("--db", url, "export", "--format", "postfix", "-o", str(locked / "logban.cidr"),
                   prefix=as_nobody(public_tmp))
    assert r.returncode == 1 and "Permission denied" in one_line(r) and "logban.cidr" in r.stderr.decode()


def test_sendmail_export_without_makemap_writes_nothing_and_fails(tmp_path):
    db = store(tmp_path)
    assert run_logban("--db", db, "ban", "198.51.100.7").returncode == 0
    bin_dir = tmp_path / "bin"                      # a PATH without makemap
    bin_dir.mkdir()
    out = tmp_path / "access"
    r = run_logban("--db", db, "export", "--format", "sendmail", "-o", str(out), env={"PATH": str(bin_dir)})
    assert r.returncode == 1 and "makemap" in one_line(r) and "written" not in r.stderr.decode().replace("nothing written", "")
    assert not out.exists()


def test_malformed_database_is_one_line(tmp_path):
    db = tmp_path / "logban.db"
    assert run_logban("--db", f"sqlite:///{db}", "scan", "--apply", "--dry-run", str(SAMPLES / "logs")).returncode == 0
    data = bytearray(db.read_bytes())
    data[4096 * 2:] = b"\xff" * (len(data) - 4096 * 2)      # the schema page stays, the tables are garbage
    db.write_bytes(bytes(data))
    for cmd in (["list", "--all"], ["stats"], ["ban", "203.0.113.5"]):
        r = run_logban("--db", f"sqlite:///{db}", *cmd)
        assert r.returncode == 1 and str(db) in one_line(r) and "SQL" not in r.stderr.decode(), cmd


def test_db_in_a_missing_directory_creates_nothing(tmp_path):
    r = run_logban("--db", f"sqlite:///{tmp_path}/typo/x.db", "ban", "198.51.100.7")
    assert r.returncode == 1 and "no such directory" in one_line(r)
    assert not (tmp_path / "typo").exists()


def test_default_store_is_0600_in_a_0700_directory(public_tmp):
    """logban's own state directory is the one it makes: 0700, the store in it 0600."""
    xdg = public_tmp / "xdg"
    xdg.mkdir()
    xdg.chmod(0o777)
    r = run_logban("ban", "198.51.100.7", env={"XDG_STATE_HOME": str(xdg)}, prefix=as_nobody(public_tmp))
    assert r.returncode == 0, r.stderr
    d = xdg / "logban"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid != 0
    assert stat.S_IMODE((d / "logban.db").stat().st_mode) == 0o600


def test_new_store_files_are_0600(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    db = d / "logban.db"
    assert run_logban("--db", f"sqlite:///{db}", "ban", "198.51.100.7").returncode == 0
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    con = sqlite3.connect(db)                      # SQLite gives -wal and -shm the database's mode
    con.execute("INSERT INTO meta VALUES ('probe', 'x')")
    con.commit()
    try:
        for side in ("-wal", "-shm"):
            assert stat.S_IMODE(Path(f"{db}{side}").stat().st_mode) == 0o600, side
    finally:
        con.close()
