"""The real `logban run` process on temporary files: follow, rotate, resume, reload."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from daemonproc import NET, Daemon, append, dnsbl, sasl, stamp

from logban.firewall.nftables import set_of


@pytest.fixture
def log(tmp_path):
    p = tmp_path / "mail.log"
    p.write_text("")
    return p


def start(daemons, tmp, *args, **kw) -> Daemon:
    d = Daemon(tmp, *args, **kw).start()
    daemons.append(d)
    return d


def test_an_offending_line_is_banned_within_a_second(tmp_path, log, daemons):
    d = start(daemons, tmp_path, "--follow", str(log))
    t0 = time.monotonic()
    append(log, dnsbl(f"{NET}.7"))
    d.wait_log(f"ban {NET}.7 dnsbl", timeout=5)
    assert time.monotonic() - t0 < 1.5
    assert d.query("SELECT target, kind FROM bans WHERE released IS NULL") == [(f"{NET}.7", "dnsbl")]
    assert d.stop() == 0
    d.wait_log("stopped")


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_rotation_by_rename_finishes_the_old_file_first(tmp_path, log, daemons, poll):
    d = start(daemons, tmp_path, "--follow", str(log), config=f"poll = {'true' if poll else 'false'}\n")
    assert f"({'polling' if poll else 'inotify'})" in d.wait_log("running:")
    append(log, "".join(sasl(f"{NET}.{i}") for i in range(1, 4)))
    d.wait_offences(3)
    # Written to the old file after the rename, before the MTA reopens: must not be lost.
    log.rename(tmp_path / "mail.log.1")
    append(tmp_path / "mail.log.1", sasl(f"{NET}.4"))
    log.write_text(sasl(f"{NET}.5") + sasl(f"{NET}.6"))
    d.wait_offences(6)
    got = {g[0]: g[1] for g in d.query("SELECT ip, line FROM offences")}
    assert got == {f"{NET}.1": 1, f"{NET}.2": 2, f"{NET}.3": 3, f"{NET}.4": 4,
                   f"{NET}.5": 1, f"{NET}.6": 2}          # the new file's line numbers start again


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_copytruncate_and_delete_and_recreate(tmp_path, log, daemons, poll):
    d = start(daemons, tmp_path, "--follow", str(log), config=f"poll = {'true' if poll else 'false'}\n")
    append(log, sasl(f"{NET}.1") + sasl(f"{NET}.2"))
    d.wait_offences(2)
    (tmp_path / "mail.log.1").write_bytes(log.read_bytes())      # copytruncate
    with open(log, "r+") as f:
        f.truncate(0)
    d.wait_log("truncated")                 # noticed (a condition, not a pause) ...
    append(log, sasl(f"{NET}.3"))
    d.wait_offences(3)                      # ... and read from the start
    # Deleted and made again. The test holds the old file open, so the new one cannot get
    # its inode back: whenever the daemon looks, it sees another file (as "appeared" if it
    # looked in between, else as a rotation), never the old one grown.
    with open(log, "rb"):
        log.unlink()
        log.write_text(sasl(f"{NET}.4"))
        d.wait_offences(4)
    assert d.p.poll() is None
    assert d.query("SELECT ip, line FROM offences ORDER BY id")[-1] == (f"{NET}.4", 1)


def test_a_file_created_after_start_and_a_symlink_retargeted(tmp_path, daemons):
    later = tmp_path / "later.log"
    link = tmp_path / "current.log"
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("")
    link.symlink_to(a)
    d = start(daemons, tmp_path, "--follow", str(later), "--follow", str(link))
    d.wait_log("does not exist yet")
    later.write_text(sasl(f"{NET}.1"))
    d.wait_offences(1)
    append(a, sasl(f"{NET}.2"))
    d.wait_offences(2)
    b.write_text(sasl(f"{NET}.3"))
    link.unlink()
    link.symlink_to(b)
    d.wait_offences(3)
    assert d.query("SELECT file FROM offences ORDER BY id") == [(str(later),), (str(link),), (str(link),)]


def test_a_line_written_in_two_halves_counts_once(tmp_path, log, daemons):
    d = start(daemons, tmp_path, "--follow", str(log))
    line = sasl(f"{NET}.9")
    append(log, line[:30])
    time.sleep(0.8)
    assert d.offences() == 0
    append(log, line[30:])
    d.wait_offences(1)
    assert d.query("SELECT ip, line FROM offences") == [(f"{NET}.9", 1)]


@pytest.mark.parametrize("point, compress", [
    ("between-position-and-offences", False), ("before-commit", True), ("after-commit", False)])
def test_kill_9_and_restart_count_every_line_once(tmp_path, log, daemons, point, compress):
    """kill -9 at an exact point of a store write (tests/launch.py), then lines written and
    the file rotated while the daemon is down: the next daemon counts every line once."""
    def burst(n: int, base: int) -> None:
        append(log, "".join(sasl(f"{NET}.{(base + i) % 250 + 1}") for i in range(n)))

    d = Daemon(tmp_path, "--follow", str(log))
    daemons.append(d)
    d.start(hooks={"LOGBAN_TEST_CRASH_AT": point, "LOGBAN_TEST_CRASH_LINE": "2000"})
    burst(2000, 0)
    d.wait_offences(2000)                       # committed, position and all
    burst(3000, 2000)                           # the write that records line 2001 is killed
    assert d.p.wait(30) == -signal.SIGKILL
    seen = d.offences()
    [(lines, offset)] = d.query("SELECT lines, \"offset\" FROM positions")
    assert lines == seen                        # offences and position: together or not at all
    assert offset == sum(len(ln) for ln in log.read_bytes().splitlines(keepends=True)[:lines])
    if point == "after-commit":
        assert 2000 < seen <= 5000
    else:
        assert seen == 2000                     # nothing of the killed write is visible
    total = 5000
    burst(1000, 99)                             # written while it is down
    total += 1000
    log.rename(tmp_path / "mail.log.1")         # and rotated while it is down
    if compress:                                # logrotate's `compress` without `delaycompress`
        import gzip
        (tmp_path / "mail.log.1.gz").write_bytes(gzip.compress((tmp_path / "mail.log.1").read_bytes()))
        (tmp_path / "mail.log.1").unlink()
    rotated = tmp_path / ("mail.log.1.gz" if compress else "mail.log.1")
    log.write_text("")
    burst(500, 7)
    total += 500
    d2 = start(daemons, tmp_path, "--follow", str(log))
    d2.wait_log("finishing")
    d2.wait_offences(total, timeout=60)
    # Every line of the old file once: what was committed before the kill under its old
    # name, the rest from the rotated copy, from exactly where the kill left it.
    old = d2.query(f"SELECT line FROM offences WHERE file = '{rotated}' ORDER BY line")
    assert [n for (n,) in old] == list(range(seen + 1, 6001))
    first = d2.query(f"SELECT line FROM offences WHERE file = '{log}' ORDER BY id")
    assert [n for (n,) in first] == list(range(1, seen + 1)) + list(range(1, 501))


def test_inotify_wakes_the_daemon(tmp_path, log, daemons):
    """With the follower's wait stretched to a minute (tests/launch.py), only inotify can
    make the daemon read a new line at once."""
    d = Daemon(tmp_path, "--follow", str(log), config="poll = false\n")
    daemons.append(d)
    d.start(hooks={"LOGBAN_TEST_WAIT": "60"})
    assert "(inotify)" in d.wait_log("running:")
    for ip, target in (("198.51.100.1", "198.51.100.1"), ("203.0.113.1", "203.0.113.1"),
                       ("2001:db8:5::1", "2001:db8:5::/64")):    # each line wakes it, not only the first
        t0 = time.monotonic()
        append(log, dnsbl(ip))
        d.wait_log(f"ban {target} dnsbl", timeout=20)
        assert time.monotonic() - t0 < 10, "woken by the minute's end, not by inotify"
    d.p.kill()                                      # SIGTERM would wait out the minute
    d.p.wait(10)


def test_restart_resumes_without_rereading(tmp_path, log, daemons):
    d = start(daemons, tmp_path, "--follow", str(log))
    append(log, "\n" + sasl(f"{NET}.1"))           # a leading blank line: identity is the first bytes, not line 1
    d.wait_offences(1)
    assert d.stop() == 0
    append(log, sasl(f"{NET}.2"))
    d2 = start(daemons, tmp_path, "--follow", str(log))
    d2.wait_offences(2)
    assert d2.query("SELECT line FROM offences ORDER BY id") == [(2,), (3,)]


def test_sighup_with_a_broken_config_keeps_running(tmp_path, log, daemons):
    d = start(daemons, tmp_path, "--follow", str(log))
    good = d.cfg.read_text()
    d.cfg.write_text(good + "\n[score]\nthreshold = 0\n")
    r = subprocess.run([sys.executable, "-m", "logban", "-c", str(d.cfg), "reload"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2 and "score.threshold" in r.stderr     # `logban reload` checks before it asks
    d.p.send_signal(signal.SIGHUP)                                 # a plain `kill -HUP` does not
    d.wait_log("reload refused")
    assert "score.threshold" in d.wait_log("reload refused")
    assert d.p.poll() is None
    append(log, dnsbl(f"{NET}.8"))
    d.wait_log(f"ban {NET}.8")
    # A good config is taken, and the allow-list it brings releases a ban at once.
    d.cfg.write_text(good + f'\n[allow]\naddresses = ["{NET}.8"]\n')
    r = subprocess.run([sys.executable, "-m", "logban", "-c", str(d.cfg), "reload"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and f"pid {d.p.pid}" in r.stdout, r.stderr
    d.wait_log("reloaded")
    d.wait_log(f"release {NET}.8 (allow-listed now)")
    assert d.query("SELECT release_reason FROM bans") == [("allow-list",)]


def test_expiry_releases_on_time(tmp_path, log, daemons):
    d = start(daemons, tmp_path, "--follow", str(log), config='[ban.durations]\ndnsbl = "2s"\n')
    append(log, dnsbl(f"{NET}.5"))
    d.wait_log(f"ban {NET}.5")
    t_ban = d.query("SELECT expires FROM bans")[0][0]
    d.wait_log(f"release {NET}.5", timeout=6)
    released = d.query("SELECT released, release_reason FROM bans")[0]
    assert released[1] == "expiry" and abs(released[0] - t_ban) < 0.01
    # Released in the store within a second of its time.
    assert time.time() - t_ban < 3


def test_run_refuses_bad_input(tmp_path, logban):
    r = logban("--db", f"sqlite:///{tmp_path}/x.db", "run")
    assert r.returncode == 2 and b"nothing to follow" in r.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[follow]]\npath = "relative.log"\n')
    r = logban("-c", str(cfg), "run")
    assert r.returncode == 2 and b"follow[0].path" in r.stderr
    cfg.write_text('[[follow]]\npath = "/var/log/mail.log"\nmta = "exim"\n')
    r = logban("-c", str(cfg), "--db", f"sqlite:///{tmp_path}/x.db", "run")
    assert r.returncode == 2 and b"exim" in r.stderr
    r = logban("-c", str(tmp_path / "none.toml"), "reload")
    assert r.returncode == 2


def test_prometheus_metrics_on_loopback(tmp_path, log, daemons):
    import socket
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = start(daemons, tmp_path, "--follow", str(log), config=f'metrics = "127.0.0.1:{port}"\n')
    append(log, sasl(f"{NET}.1") + f"{stamp()} mx postfix/smtpd[7]: connect from unknown[{NET}.1]\n"
           + dnsbl(f"{NET}.2"))
    d.wait_log(f"ban {NET}.2")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    got = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln.startswith("logban_")}
    assert got[f'logban_lines_total{{file="{log}"}}'] == 3
    assert got['logban_offences_total{kind="auth_failed"}'] == 1
    assert got['logban_offences_total{kind="dnsbl"}'] == 1
    assert got['logban_bans_added_total{kind="dnsbl"}'] == 1
    assert got[f'logban_follow_lag_bytes{{file="{log}"}}'] == 0


def test_daemon_enforces_in_the_kernel_and_keeps_bans_when_stopped(tmp_path, log, daemons):
    from netlab import Lab, need_netns, need_tools
    need_netns()
    need_tools("nft")
    lab = Lab(tmp_path)
    try:
        d = Daemon(tmp_path, "--follow", str(log), backend="nftables")
        daemons.append(d)
        d.start(prefix=["ip", "netns", "exec", lab.srv])
        assert lab.reachable("192.0.2.2", "192.0.2.3") == {"192.0.2.2": True, "192.0.2.3": True}
        held = ["nft", "list", "set", "inet", "logban", set_of("192.0.2.2")[0]]
        t0 = time.monotonic()
        append(log, dnsbl("192.0.2.2"))
        while "192.0.2.2" not in lab.run(lab.srv, *held).stdout:
            assert time.monotonic() - t0 < 5, "the ban did not reach the kernel within 5 s"
            time.sleep(0.02)
        assert time.monotonic() - t0 < 1.5
        assert lab.reachable("192.0.2.2", "192.0.2.3") == {"192.0.2.2": False, "192.0.2.3": True}
        assert d.stop() == 0
        assert not lab.connects("192.0.2.2")            # stopped: the ban stays in force
    finally:
        lab.close()


def test_systemd_notify_ready_status_watchdog_stopping(tmp_path, log, daemons):
    import socket
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    try:
        d = Daemon(tmp_path, "--follow", str(log))
        daemons.append(d)
        d.start(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
        got = [sock.recv(4096).decode()]
        assert got[0].startswith("READY=1\nSTATUS=0 bans active")
        append(log, dnsbl(f"{NET}.3"))
        deadline = time.monotonic() + 10
        while not any("WATCHDOG=1" in m and "1 bans active" in m for m in got):
            assert time.monotonic() < deadline, got
            got.append(sock.recv(4096).decode())
        d.stop()
        while "STOPPING=1" not in got[-1]:
            got.append(sock.recv(4096).decode())
    finally:
        sock.close()


def test_old_offences_are_forgotten_after_the_retention(tmp_path, log, daemons, logban):
    db = tmp_path / "logban.db"
    assert logban("--db", f"sqlite:///{db}", "stats").returncode == 0        # the schema
    con = sqlite3.connect(db)
    con.execute("INSERT INTO offences (time, target, ip, mta, rule, kind, score, node, file, line, text) "
                "VALUES (?, ?, ?, 'postfix', 'r', 'auth_failed', 1, 'n', 'f', 1, '')", (time.time() - 40 * 86400,
                                                                                     f"{NET}.1", f"{NET}.1"))
    con.commit()
    con.close()
    d = start(daemons, tmp_path, "--follow", str(log), config='[store]\nretention = "30d"\n')
    d.wait_log("forgot 1 offences older than")
    assert d.offences() == 0


def test_exports_follow_the_ban_set(tmp_path, log, daemons):
    out = tmp_path / "exports" / "bans.txt"
    out.parent.mkdir()                  # logban creates no directory for an export (issue 13)
    d = start(daemons, tmp_path, "--follow", str(log),
              config=f'[ban.durations]\ndnsbl = "8s"\n[[export]]\nformat = "plain"\npath = "{out}"\n')
    deadline = time.monotonic() + 5
    while not out.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert out.read_text() == ""
    append(log, dnsbl(f"{NET}.4"))
    d.wait_log("export plain: 1 bans written")
    assert out.read_text() == f"{NET}.4\n"
    d.wait_log(f"release {NET}.4", timeout=20)
    deadline = time.monotonic() + 5
    while out.read_text():
        assert time.monotonic() < deadline, "the export still lists an expired ban"
        time.sleep(0.05)
    assert sum("export plain: 0 bans written" in ln for ln in d.lines) == 2


def test_reload_refuses_what_the_daemon_would_refuse(tmp_path, daemons):
    """`logban reload` checks what the config names in the packs ([[follow]] mta, [ban.rules]
    ids) before it signals: a typo is one line and exit 2, not "asked logban to reload"
    followed by a refusal only the daemon's log shows."""
    from conftest import run_logban
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, config=f'[[follow]]\npath = "{log}"\n')
    daemons.append(d.start())
    good = d.cfg.read_text()
    for bad, says in ((f'[[follow]]\npath = "{log}"\nmta = "postfixx"\n', "no rule pack 'postfixx'"),
                      (f'[[follow]]\npath = "{log}"\n[ban.rules]\npostfix-nosuch = "1h"\n',
                       "ban.rules: no active rule with id 'postfix-nosuch'")):
        d.cfg.write_text(good.replace(f'[[follow]]\npath = "{log}"\n', bad))
        r = run_logban("-c", str(d.cfg), "reload")
        assert r.returncode == 2 and r.stdout == b"", r
        err = r.stderr.decode()
        assert err.count("\n") == 1 and says in err and str(d.cfg) in err, err
    d.cfg.write_text(good)
    r = run_logban("-c", str(d.cfg), "reload")
    assert r.returncode == 0, r
    d.wait_log("reloaded")
    assert not any("reload refused" in ln for ln in d.lines), "".join(d.lines)
