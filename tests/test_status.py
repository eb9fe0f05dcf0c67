"""`logban status` (issue 17): what a real running `logban run` publishes, read by the real
`logban status`; exit 0 running, 3 not running (stopped, killed, another node)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import ROOT, run_logban
from daemonproc import NET, Daemon, append, dnsbl, sasl

from logban.status import proc_start, read_status, status_path
from logban.store import Store


def status(d: Daemon, *args: str) -> tuple[int, dict | str]:
    """`logban status` beside daemon `d`; options after the command, the global ones too."""
    r = subprocess.run([sys.executable, "-m", "logban", "status", *args, "-c", str(d.cfg), "--db", d.url],
                       capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.stderr == "", r.stderr
    return r.returncode, json.loads(r.stdout) if "--json" in args else r.stdout


def wait_status(d: Daemon, cond, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, s = status(d, "--json")
        if cond(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"status not as expected within {timeout} s: {json.dumps(s, indent=1)}")
        time.sleep(0.3)


def test_status_of_a_running_stopped_and_killed_daemon(tmp_path, daemons):
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log), "--node", "mx1")
    rc, s = status(d, "--json")
    assert rc == 3 and s["running"] is False and "no status file" in s["why"]
    daemons.append(d.start())
    append(log, dnsbl(f"{NET}.2") + sasl(f"{NET}.3") + dnsbl(f"{NET}.4"))
    s = wait_status(d, lambda s: (s.get("offences") or {}).get("last_hour") == 3
                    and s["sources"][0]["lines_read"] == 3 and s["active_bans"]["total"] == 2)
    assert s["running"] is True and s["pid"] == d.p.pid and s["node"] == "mx1"
    assert s["backend"] == "none" and s["dry_run"] is False and s["uptime"] >= 0
    src = s["sources"][0]
    assert src["source"] == str(log) and src["kind"] == "file"
    assert src["position"] == log.stat().st_size and src["lag_bytes"] == 0 and src["lag_seconds"] == 0
    assert s["offences"] == {"last_hour": 3, "last_day": 3} and s["bans"] == {"last_hour": 2, "last_day": 2}
    assert s["active_bans"] == {"total": 2, "address_count": 2, "network_count": 0, "truncated": False,
                                "addresses": [f"{NET}.2", f"{NET}.4"], "networks": []}
    assert s["clients_scored"] == 1                   # NET.3: one auth failure, below the threshold
    assert s["last_ban"]["target"] == f"{NET}.4" and s["last_ban"]["kind"] == "dnsbl"
    assert s["store"] == {"url": str(d.db), "shared": False, "reachable": True, "outage_since": None}
    assert s["last_error"] is None and s["stalled"] is False

    rc, text = status(d)
    assert rc == 0 and text.startswith(f"logban: running, pid {d.p.pid}"), text
    assert f"file {log}: position" in text and "active bans: 2 (2 addresses, 0 networks)" in text

    rc, s = status(d, "--json", "--node", "mx2")        # the daemon of this pid file runs another node
    assert rc == 3 and s["running"] is False and "node 'mx1'" in s["why"]

    assert d.stop() == 0
    rc, s = status(d, "--json")
    assert rc == 3 and s["running"] is False and s["why"] == "stopped" and s["stopped"]
    rc, text = status(d)
    assert rc == 3 and text.startswith("logban: not running (stopped)")

    daemons.append(d.start())
    wait_status(d, lambda s: s["running"] and s["pid"] == d.p.pid)
    d.stop(signal.SIGKILL)                              # no last word: the file names a dead process
    rc, s = status(d, "--json")
    assert rc == 3 and s["running"] is False and "is gone" in s["why"], s


def test_a_stale_state_file_is_not_a_running_daemon(tmp_path):
    """A pid reused by another process, or a file no daemon wrote, never reads as running."""
    pid_file = tmp_path / "logban.pid"
    path = status_path(pid_file)
    assert path == tmp_path / "logban.status.json"
    me = {"running": True, "pid": 1, "proc_start": proc_start(1), "updated_at": time.time()}
    path.write_text(json.dumps(me))
    assert read_status(path)["running"] is False                # pid 1: never a daemon of ours
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        path.write_text(json.dumps({**me, "pid": sleeper.pid, "proc_start": proc_start(sleeper.pid) + 1}))
        assert read_status(path)["running"] is False            # same pid, another start time
        path.write_text(json.dumps({**me, "pid": sleeper.pid, "proc_start": proc_start(sleeper.pid),
                                    "updated_at": time.time() - 120, "node": "a", "store": {"url": "x"}}))
        s = read_status(path)
        assert s["running"] is True and s["stalled"] is True and "stuck" in s["why"]
        assert read_status(path, node="b")["running"] is False
        assert read_status(path, store="y")["running"] is False
    finally:
        sleeper.kill()
        sleeper.wait()
    for bad in ("", "[]", "{", "\x00\xff"):
        path.write_text(bad)
        assert read_status(path)["running"] is False
    path.unlink()
    (tmp_path / "other").write_text("{}")
    path.symlink_to(tmp_path / "other")
    assert "unreadable" in read_status(path)["why"]


def test_a_status_file_of_another_shape_is_said_not_a_traceback(tmp_path):
    """A live pid with a file lacking fields or holding other types (another logban version's,
    or damaged) gives one line and status 3, never a traceback."""
    pid_file = tmp_path / "logban.pid"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\npid_file = "{pid_file}"\n')
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        url = f"sqlite:///{tmp_path / 's.db'}"
        me = {"running": True, "pid": sleeper.pid, "proc_start": proc_start(sleeper.pid),
              "store": {"url": Store.where(url)}}
        for extra in ({}, {"updated_at": "abc"}, {"updated_at": 1e400}, {"store": "x"}):
            status_path(pid_file).write_text(json.dumps({**me, **extra}))
            r = run_logban("status", "-c", str(cfg), "--db", url)
            assert r.returncode == 3, (extra, r.stderr)
            assert b"Traceback" not in r.stderr and b"error" not in r.stderr, r.stderr
            assert b"wrong type" in r.stdout or b"another store" in r.stdout, r.stdout
    finally:
        sleeper.kill()
        sleeper.wait()


def test_last_ban_is_the_newest_decision_not_the_newest_row(tmp_path):
    """`scan --apply` of history records a ban decided days ago after today's (an escalated
    or aggregated row is written last): status names the one decided last, and says when it
    is a dry run."""
    from logban.cli.status import human
    from logban.status import store_counts
    from logban.store import Store
    from logban.store.tables import BANS        # the schema's table: its column defaults fill the rest

    now = time.time()
    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    with store.write() as conn:
        conn.execute(BANS.insert(), [
            {"target": f"{NET}.9", "kind": "dnsbl", "created": now - 60, "node": "mx1", "dry_run": True},
            {"target": f"{NET}.8", "kind": "bad_helo", "created": now - 4 * 86400, "node": "mx1", "dry_run": True},
        ])
    counts = store_counts(store, "mx1", now)
    store.close()
    assert counts["last_ban"]["target"] == f"{NET}.9" and counts["last_ban"]["dry_run"] is True
    s = {"running": True, "pid": 1, "uptime": 1.0, "started": "x", "node": "mx1", "backend": "none",
         "dry_run": False, "store": {"url": "t.db", "reachable": True}, "sources": [], "clients_scored": 0,
         "active_bans": {"total": 0, "address_count": 0, "network_count": 0}, **counts}
    assert f"  last ban: {NET}.9 dnsbl at " in "\n".join(human(s)) and "(dry run)" in human(s)[-2]


def test_status_shows_a_followed_journal(tmp_path, daemons):
    """Debian 12 without rsyslog: the journal is the only source, and status must show it
    (its lines read and how far behind it is), as it shows a followed file."""
    from conftest import skip_or_fail
    from test_journal import REMOTE, entry, write_journal
    if not (shutil.which("journalctl") and os.access(REMOTE, os.X_OK)):
        skip_or_fail("needs journalctl and systemd-journal-remote (Debian package systemd-journal-remote)")
    jdir = tmp_path / "journal"
    jdir.mkdir()
    write_journal(jdir / "remote.journal", [entry("connect from unknown[2001:db8::1]")])
    d = Daemon(tmp_path, "--journal-dir", str(jdir))
    daemons.append(d.start())
    write_journal(jdir / "remote.journal", [entry(f"connect from unknown[{NET}.{i}]") for i in (5, 6)])
    s = wait_status(d, lambda s: s["sources"] and s["sources"][0].get("lines_read") == 2)
    src = s["sources"][0]
    assert src["kind"] == "journal" and src["source"] == f"journal:{jdir}" and src["lag_seconds"] == 0
    assert src["cursor"] and src["open"] is True
    rc, text = status(d)
    assert rc == 0 and f"  journal journal:{jdir}: 2 lines read, lag 0.0 s" in text, text
