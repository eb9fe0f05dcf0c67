"""The systemd journal as a log source, on real journal files.

The machine runs no journald: systemd-journal-remote writes real journal files from
export-format input (and appends to an existing one on a second run), and the real
`logban` process reads them through journalctl.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import run_logban, skip_or_fail
from daemonproc import Daemon

from logban.config import load_config
from logban.errors import UsageError
from logban.journal import Converter, JournalSpec, Selection, export_entries, mail_uids
from logban.parse import iso

REMOTE = "/lib/systemd/systemd-journal-remote"
BOOT = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def journal_tools():
    if not (os.access(REMOTE, os.X_OK) and shutil.which("journalctl")):
        skip_or_fail("needs journalctl and systemd-journal-remote (Debian package systemd-journal-remote)")


def export(entries: list[dict]) -> bytes:
    """Journal export format; a value with a line break (or not text) in the binary form."""
    out = []
    for e in entries:
        for k, v in e.items():
            b = v if isinstance(v, bytes) else str(v).encode()
            if b"\n" in b or isinstance(v, bytes):
                out.append(k.encode() + b"\n" + struct.pack("<Q", len(b)) + b + b"\n")
            else:
                out.append(k.encode() + b"=" + b + b"\n")
        out.append(b"\n")
    return b"".join(out)


def write_journal(path: Path, entries: list[dict]) -> None:
    """Appends `entries` to the journal file `path` (created if need be)."""
    p = subprocess.run([REMOTE, "-o", str(path), "-"], input=export(entries), capture_output=True, timeout=60,
                       check=False)
    assert p.returncode == 0, p.stderr


_mono = [1_000_000]


def entry(msg: str, ident: str = "postfix/smtpd", host: str = "mx1", t: float | None = None, **more) -> dict:
    _mono[0] += 1
    usec = int((time.time() if t is None else t) * 1e6)
    return {"__REALTIME_TIMESTAMP": usec, "__MONOTONIC_TIMESTAMP": _mono[0], "_BOOT_ID": BOOT, "_HOSTNAME": host,
            "SYSLOG_IDENTIFIER": ident, "_PID": 4242, "PRIORITY": 6, "MESSAGE": msg, **more}


def sasl(ip: str, **kw) -> dict:
    """One auth_failed offence (score 1: five are needed for a ban)."""
    return entry(f"warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6", **kw)


def benign(i: int, **kw) -> dict:
    return entry(f"connect from unknown[2001:db8:ffff::{i:x}]", **kw)


# ---- the conversion (pure) ---------------------------------------------------------------
def test_converter_makes_one_syslog_line_of_a_selected_entry():
    c = Converter(Selection(("postfix", "sm-mta"), ("qmail*.service",)))
    e = {b"__REALTIME_TIMESTAMP": b"1700000000123456", b"_HOSTNAME": b"mx 1", b"SYSLOG_IDENTIFIER": b"postfix/smtpd",
         b"_PID": b"77", b"MESSAGE": b"f\xff\ng"}
    assert c.line(e) == b"2023-11-14T22:13:20.123456Z mx_1 postfix/smtpd[77]: f\xff g\n"
    # Not selected: another program, even with a mail-like message.
    assert c.line(e | {b"SYSLOG_IDENTIFIER": b"sshd"}) is None
    # Selected by its unit; an identifier the header grammar cannot carry is made safe.
    got = c.line(e | {b"SYSLOG_IDENTIFIER": b"tcp server", b"_SYSTEMD_UNIT": b"qmail-smtpd.service", b"_PID": b"x"})
    assert got.startswith(b"2023-11-14T22:13:20.123456Z mx_1 tcp_server: ")
    assert c.line({k: v for k, v in e.items() if k != b"MESSAGE"}) is None
    assert c.line(e | {b"__REALTIME_TIMESTAMP": b"soon"}) is None


def test_entries_of_other_users_than_the_mail_system_are_left_out():
    """`logger -t postfix/smtpd` by a local user or a web application's account must not make
    logban ban an address of their choosing."""
    e = {b"__REALTIME_TIMESTAMP": b"1700000000123456", b"_HOSTNAME": b"mx1", b"SYSLOG_IDENTIFIER": b"postfix/smtpd",
         b"_PID": b"77", b"MESSAGE": b"m"}
    c = Converter(Selection())
    www = str(pwd.getpwnam("www-data").pw_uid).encode() if _has_user("www-data") else b"33"
    postfix = str(pwd.getpwnam("postfix").pw_uid).encode() if _has_user("postfix") else None
    for uid, read in ((b"0", True), (postfix, True), (www, False), (b"1000", False), (b"65534", False),
                      (b"-1", False), (b"x", False), (b"00", False)):
        if uid is not None:
            assert (c.line(e | {b"_UID": uid}) is not None) is read, uid
    assert c.line(e) is not None                      # no _UID (another host's export): as it is
    assert set(c.refused) == {www, b"1000", b"65534", b"-1", b"x", b"00"}
    assert Converter(Selection(users=("*",))).line(e | {b"_UID": b"65534"}) is not None
    only = Converter(Selection(users=("1000", "no-such-user-here")))
    assert only.line(e | {b"_UID": b"1000"}) is not None and only.line(e | {b"_UID": b"0"}) is None
    assert mail_uids(("root", "no-such-user-here", "0042")) == {b"0", b"42"}


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_export_format_entries_text_binary_and_cut_anywhere():
    entries = [{"__CURSOR": "c1", "MESSAGE": "a=b"}, {"__CURSOR": "c2", "MESSAGE": b"x\n\ny\x00="},
               {"__CURSOR": "c3", "MESSAGE": "last"}]
    data = export(entries)
    want = [{k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in e.items()} for e in entries]
    assert export_entries(data) == (want, len(data))
    # Whatever a read from the pipe cuts it at, the entries come whole, once, in order.
    for cut in range(len(data)):
        first, used = export_entries(data[:cut])
        rest, used2 = export_entries(data[used:])
        assert first + rest == want and used + used2 == len(data), cut


def test_config_journal_entries(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[follow]]\njournal = true\n[[follow]]\njournal = true\ndirectory = "/srv/j"\nmta = "postfix"\n'
                   'identifiers = ["postfix-out/"]\nunits = ["postfix@*.service"]\nusers = ["postfix", "1001"]\n')
    js = load_config(cfg).daemon.journals
    assert js[0] == JournalSpec() and js[0].name == "journal"
    assert js[1] == JournalSpec(Path("/srv/j"), "postfix", Selection(("postfix-out/",), ("postfix@*.service",), ("postfix", "1001")))
    for bad, says in (('journal = true\npath = "/var/log/mail.log"', "path and journal"),
                      ('journal = false\ndirectory = "/srv/j"', "journal = true"),
                      ('journal = true\ndirectory = "j"', "absolute directory"),
                      ('journal = true\nidentifiers = "postfix"', "identifiers must be a list"),
                      ('journal = true\nusers = "postfix"', "users must be a list")):
        cfg.write_text(f"[[follow]]\n{bad}\n")
        with pytest.raises(UsageError, match=says):
            load_config(cfg)


# ---- scan ----------------------------------------------------------------------------------
def test_scan_journal_files_of_several_mtas_and_hosts(tmp_path, journal_tools):
    now = time.time()
    t0 = now - 7200
    a, b = tmp_path / "a" / "remote.journal", tmp_path / "b" / "remote.journal"
    a.parent.mkdir()
    b.parent.mkdir()
    write_journal(a, [
        benign(1, t=t0),
        sasl("198.51.100.10", t=t0 + 1),                                              # line 2 of the selected
        entry("warning: unknown[198.51.100.99]: SASL LOGIN authentication failed: x", ident="sshd", t=t0 + 2),
        entry("4AKA0001234567: ruleset=check_rcpt, arg1=<spam@example.net>, relay=bot.example.biz "
              "[198.51.100.11] (may be forged), reject=550 5.7.1 <spam@example.net>... Relaying denied",
              ident="sm-mta", host="mx2", t=t0 + 3),
        entry("198.51.100.12 pid 4: 451 http://www.spamhaus.org/query/bl?ip=198.51.100.12", ident="rblsmtpd",
              host="mx3", t=t0 + 4),
        sasl("198.51.100.13", t=now - 60),                                            # within --since 30m
        # Not UTF-8, a line break, a NUL: journalctl exports it in the binary form.
        entry(b"warning: unknown[198.51.100.14]: SASL LOGIN authentication failed: \xff\n\x00x", t=now - 30),
    ])
    write_journal(b, [sasl("2001:db8::13", host="mx4", t=t0 + 2.5)])
    r = run_logban("scan", "--events", "--journal-file", str(a), str(b))
    assert r.returncode == 0, r.stderr
    ev = [json.loads(x) for x in r.stdout.splitlines()]
    got = sorted((e["file"], e["line"], e["ip"], e["mta"], e["time"]) for e in ev)
    ja, jb = f"journal:{a}", f"journal:{b}"
    assert got == sorted([
        (ja, 2, "198.51.100.10", "postfix", iso(int((t0 + 1) * 1e6) / 1e6)),   # to the microsecond
        (ja, 3, "198.51.100.11", "sendmail", iso(int((t0 + 3) * 1e6) / 1e6)),
        (ja, 4, "198.51.100.12", "qmail", iso(int((t0 + 4) * 1e6) / 1e6)),
        (ja, 5, "198.51.100.13", "postfix", iso(int((now - 60) * 1e6) / 1e6)),
        (ja, 6, "198.51.100.14", "postfix", iso(int((now - 30) * 1e6) / 1e6)),
        (jb, 1, "2001:db8::13", "postfix", iso(int((t0 + 2.5) * 1e6) / 1e6)),
    ]), r.stdout
    # The same through a directory, in a time range, and as a report.
    r = run_logban("scan", "--json", "--journal-dir", str(a.parent), "--since", "30m")
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["offences"] == 2, r.stdout
    assert {t["ip"] for t in rep["top"]} == {"198.51.100.13", "198.51.100.14"}
    until = iso(t0 + 3.5)
    r = run_logban("scan", "--json", "--journal-dir", str(a.parent), "--until", until)
    assert json.loads(r.stdout)["offences"] == 2, r.stdout
    # One unreadable journal among others: named, the others still read, exit 1.
    r = run_logban("scan", "--json", "--journal-file", str(tmp_path / "none.journal"), "--journal-dir", str(b.parent))
    assert r.returncode == 1 and json.loads(r.stdout)["offences"] == 1
    assert b"none.journal" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_scan_says_what_entries_of_other_users_it_left_out(tmp_path, journal_tools):
    """The follower logs the uids it leaves out; scan dropped their entries in silence, so a
    journal where the MTA logged as an account not in `users` (another host's numbering)
    read as clean."""
    jf = tmp_path / "j" / "remote.journal"
    jf.parent.mkdir()
    user = 4242
    write_journal(jf, [sasl("198.51.100.7", _UID=user) for _ in range(6)] + [sasl("198.51.100.8", _UID=0)])
    r = run_logban("--db", f"sqlite:///{tmp_path / 'db'}", "scan", "--json", "--journal-dir", str(jf.parent))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["offences"] == 1
    assert f"6 entries of uid {user} (not one of the mail system's users)" in r.stderr.decode()


def test_scan_since_until_on_files(tmp_path):
    def line(t: float, ip: str) -> str:
        return (time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))
                + f" mx postfix/smtpd[7]: warning: unknown[{ip}]: SASL LOGIN authentication failed: x\n")
    now = time.time()
    log = tmp_path / "mail.log"
    log.write_text(line(now - 3 * 86400, "198.51.100.1") + line(now - 3600, "198.51.100.2") + line(now - 60, "198.51.100.3"))
    r = run_logban("scan", "--events", "--since", "2h", str(log))
    assert [json.loads(x)["ip"] for x in r.stdout.splitlines()] == ["198.51.100.2", "198.51.100.3"], r.stderr
    r = run_logban("scan", "--events", "--since", "2d", "--until", "30m", str(log))
    assert [json.loads(x)["ip"] for x in r.stdout.splitlines()] == ["198.51.100.2"]
    r = run_logban("scan", "--until", "yesterday", str(log))
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1 and b"--until" in r.stderr
    r = run_logban("scan", "--journal", env={"PATH": "/nonexistent"})
    assert r.returncode == 2 and r.stderr == b"logban: reading the journal needs journalctl (systemd) on PATH\n"


# ---- run: follow, kill -9, resume, vacuum ----------------------------------------------------
def _position(d: Daemon, name: str):
    rows = d.query(f"SELECT fingerprint, \"offset\", lines FROM positions WHERE path = '{name}'")
    return rows[0] if rows else None


def _wait_lines(d: Daemon, name: str, n: int, timeout: float = 60) -> None:
    """Until the daemon has committed `n` selected entries read (and their offences with them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = _position(d, name)
        if p is not None and p[2] >= n:
            break
        time.sleep(0.05)
    assert _position(d, name) is not None and _position(d, name)[2] == n, (_position(d, name), n, "".join(d.lines))


def test_run_follows_a_journal_directory_exactly_once_across_kill_and_vacuum(tmp_path, journal_tools):
    jdir = tmp_path / "journal"
    jdir.mkdir()
    jf, jf2 = jdir / "remote-mx1.journal", jdir / "remote-mx2.journal"      # two hosts' journals
    name = f"journal:{jdir}"
    # History before logban ever ran: not read (no saved cursor: from now on).
    write_journal(jf, [sasl(f"2001:db8:1::{i:x}") for i in range(1, 21)])
    write_journal(jf2, [sasl(f"2001:db8:1:1::{i:x}", host="mx2") for i in range(1, 21)])
    d = Daemon(tmp_path / "d", "--journal-dir", str(jdir)).start()
    try:
        assert name in d.wait_log("running:")
        assert _position(d, name) is None or d.offences() == 0
        # Appended while it follows, in batches to one host's journal and the other's, with
        # entries of other programs between; kill -9 in the middle of the stream, batches go
        # on meanwhile, then a restart.
        total, batches = 0, 16
        killed = threading.Event()

        def writer():
            nonlocal total
            for b in range(batches):
                es, host = [], ("mx1", "mx2")[b % 2]
                for i in range(40):
                    es.append(sasl(f"2001:db8:{0x100 + b:x}:{i:x}::1", host=host))
                    es.append(entry("a message of another program", ident="cron", host=host))
                write_journal((jf, jf2)[b % 2], es)
                total += 40
                if b == batches // 2:
                    killed.wait(30)
        t = threading.Thread(target=writer)
        t.start()
        deadline = time.monotonic() + 30
        while (p := _position(d, name)) is None or p[2] < 100:
            assert time.monotonic() < deadline, "".join(d.lines)
            time.sleep(0.02)
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        seen = _position(d, name)[2]
        killed.set()
        t.join(60)
        assert seen < total == 640
        # The first start saw the history's end, so none of its 40 entries counts.
        d.start()
        _wait_lines(d, name, 640)
        assert d.offences() == 640
        rows = d.query("SELECT file, line FROM offences")
        assert sorted(r[1] for r in rows) == list(range(1, 641)) and {r[0] for r in rows} == {name}
        latency = _latency(d, jf, name)

        # Vacuumed while logban is down: the files holding the saved cursor are gone, and a new
        # one holds entries older than the cursor's time (lost for good) and newer ones.
        assert d.stop() == 0
        cursor_time = _position(d, name)[1] / 1e6
        jf.unlink()
        jf2.unlink()
        write_journal(jdir / "remote2.journal", [sasl("2001:db8:2::1", t=cursor_time - 5)]
                      + [sasl(f"2001:db8:3::{i:x}", t=cursor_time + 1 + i / 1000) for i in range(1, 31)])
        d.start()
        d.wait_log("entries may have been lost")
        _wait_lines(d, name, 671)
        assert d.offences() == 671
        assert d.query("SELECT count(*) FROM offences WHERE ip = '2001:db8:2::1'")[0][0] == 0
    finally:
        d.close()
    assert latency < 2.0, latency       # inotify-grade, with a generous margin for a loaded machine


def _latency(d: Daemon, jf: Path, name: str) -> float:
    """Seconds from an appended entry to its offence committed (one sample)."""
    before = _position(d, name)[2]
    t0 = time.monotonic()
    write_journal(jf, [sasl("2001:db8:5::1")])
    _wait_lines(d, name, before + 1, timeout=20)
    took = time.monotonic() - t0
    return took if d.query("SELECT count(*) FROM offences WHERE ip = '2001:db8:5::1'")[0][0] == 1 else 99.0


def test_run_a_directory_that_appears_later_the_fallback_and_from_start(tmp_path, journal_tools):
    jdir = tmp_path / "later"
    name = f"journal:{jdir}"
    missing = tmp_path / "mail.log"
    d = Daemon(tmp_path / "d", "--journal-dir", str(jdir), config=f"[[follow]]\npath = \"{missing}\"\n"
               "mta = \"postfix\"\njournal_if_missing = true\n").start()
    try:
        d.wait_log(f"no journal files in {jdir} yet")
        # A mail.log that is not there (Debian 12 without rsyslog): the system journal instead.
        assert "following the system journal instead" in d.wait_log(f"{missing} does not exist")
        assert f"following journal, journal:{jdir} (" in d.wait_log("running:")
        # A journal that was not there when logban started is all new, as a log file that appears.
        jdir.mkdir()
        write_journal(jdir / "remote.journal", [sasl(f"198.51.100.{i}") for i in range(1, 6)]
                      + [benign(1), sasl("198.51.100.6", ident="sshd")]
                      + [sasl("198.51.100.7", _UID=4242) for _ in range(6)])
        _wait_lines(d, name, 6)
        assert d.offences() == 5
        d.wait_log("entries of uid 4242 (not one of the mail system's users)")
    finally:
        d.close()
    # Another store meets the same journal for the first time: from its end, or with
    # daemon.from_start from its start.
    for config, want in (("", 0), ("from_start = true\n", 5)):
        d = Daemon(tmp_path / f"d{want}", "--journal-dir", str(jdir), config=config).start()
        try:
            write_journal(jdir / "remote.journal", [benign(2)])
            _wait_lines(d, name, 8 if want else 1)        # 6 + 1 + this one, from the start
            assert d.offences() == want
        finally:
            d.close()


def test_scan_apply_of_a_journal_twice_applies_only_what_is_new(tmp_path, journal_tools):
    jf = tmp_path / "j" / "remote.journal"
    jf.parent.mkdir()
    t0 = time.time() - 600
    write_journal(jf, [sasl(f"198.51.100.{i}", t=t0 + i) for i in range(1, 4)])
    db = f"sqlite:///{tmp_path / 'db'}"

    def apply(*more: str) -> dict:
        r = run_logban("--db", db, "scan", "--json", "--apply", "--dry-run", "--journal-dir", str(jf.parent), *more)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    assert apply()["applied"]["offences"] == 3
    again = apply()
    assert again["applied"]["offences"] == 0 and again["offences"] == 3     # the report still shows them
    write_journal(jf, [sasl("198.51.100.9", t=t0 + 100)])
    assert apply()["applied"]["offences"] == 1
    assert apply("--reapply")["applied"]["offences"] == 4
