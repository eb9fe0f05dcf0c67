"""Issue 13, least privilege: read-only commands on stores they may only read, the kernel
touched only to enforce or lift, no firewall without the right to change it, no secret in
the output, a pid file no other user can plant, and export paths the daemon cannot write
named. Real `logban` processes; firewalls only in namespaces made here."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES, as_nobody, run_logban, skip_or_fail
from daemonproc import Daemon
from netlab import need_netns, need_tools

from logban.firewall.nftables import set_of


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stderr
    return r


def read_only_mount(d: Path) -> list[str]:
    """A prefix: what follows sees `d` read-only, in a mount namespace of its own."""
    if os.geteuid() != 0:
        skip_or_fail("needs root for a read-only bind mount")
    return ["unshare", "-m", "sh", "-c", f'set -e; mount --bind "{d}" "{d}"; mount -o remount,bind,ro "{d}"; exec "$@"',
            "sh"]


READERS = (["list"], ["list", "--all", "--json"], ["show", "198.51.100.7"], ["stats"],
           ["export", "--format", "plain"], ["firewall", "status"])


def test_read_only_commands_work_on_a_read_only_mount(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    url = f"sqlite:///{d}/logban.db"
    ok(run_logban("--db", url, "ban", "198.51.100.7", "--for", "1d"))
    ro = read_only_mount(d)
    for cmd in READERS:
        r = ok(run_logban("--db", url, *cmd, prefix=ro))
        assert b"198.51.100.7" in r.stdout or cmd[0] in ("stats", "firewall"), cmd
    r = run_logban("--db", url, "ban", "198.51.100.8", prefix=ro)          # a writer cannot, and says so in one line
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"read-only file system" in r.stderr


def test_read_only_commands_work_for_a_user_who_may_only_read(public_tmp):
    d = public_tmp / "state"
    d.mkdir()
    db = d / "logban.db"
    ok(run_logban("--db", f"sqlite:///{db}", "ban", "198.51.100.7", "--for", "1d"))
    db.chmod(0o644)                                 # root's store, readable by all (a group, in real life)
    before = db.stat().st_mtime_ns, db.stat().st_size
    for cmd in READERS:
        r = ok(run_logban("--db", f"sqlite:///{db}", *cmd, prefix=as_nobody(public_tmp)))
        assert b"198.51.100.7" in r.stdout or cmd[0] in ("stats", "firewall"), cmd
    assert (db.stat().st_mtime_ns, db.stat().st_size) == before
    assert sorted(p.name for p in d.iterdir()) == ["logban.db"]              # no -wal or -shm made by a reader


def test_readers_do_not_queue_behind_a_writer(tmp_path):
    url = f"sqlite:///{tmp_path}/logban.db"
    ok(run_logban("--db", url, "ban", "198.51.100.7", "--for", "1d"))
    con = sqlite3.connect(tmp_path / "logban.db", isolation_level=None)
    con.execute("BEGIN IMMEDIATE")                  # a writer holds the write lock
    try:
        t0 = time.monotonic()
        for cmd in (["list"], ["stats"], ["export", "--format", "plain"]):
            ok(run_logban("--db", url, *cmd, timeout=60))
        assert time.monotonic() - t0 < 15           # not 3 x 30 s of busy timeout
    finally:
        con.execute("ROLLBACK")
        con.close()


# ---- the kernel only to enforce or lift --------------------------------------------------

@pytest.fixture
def netns():
    need_netns()
    need_tools("nft")
    name = f"lb13-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def logban_tables(ns: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True).stdout
    return "\n".join(ln for ln in out.splitlines() if "logban" in ln)


def test_unban_and_dry_run_ban_leave_the_kernel_alone(tmp_path, netns):
    url = f"sqlite:///{tmp_path}/logban.db"
    inside = ["ip", "netns", "exec", netns]
    ok(run_logban("--db", url, "--backend", "nftables", "unban", "198.51.100.7", prefix=inside))
    ok(run_logban("--db", url, "--backend", "nftables", "ban", "--dry-run", "198.51.100.8", prefix=inside))
    ok(run_logban("--db", url, "--backend", "nftables", "unban", "198.51.100.8", prefix=inside))   # a dry-run ban
    # and friends: a dry-run scan that decides bans, a sync and a status with nothing to enforce, a reader
    ok(run_logban("--db", url, "--backend", "nftables", "scan", "--apply", "--dry-run", str(SAMPLES / "logs"),
                  prefix=inside))
    r = ok(run_logban("--db", url, "--backend", "nftables", "firewall", "sync", "--json", prefix=inside))
    assert json.loads(r.stdout) | {"refused": []} == {"backend": "nftables", "dry_run": False, "added": [],
                                                      "removed": [], "refreshed": [], "refused": []}
    ok(run_logban("--db", url, "--backend", "nftables", "list", "--all", prefix=inside))
    r = ok(run_logban("--db", url, "--backend", "nftables", "firewall", "status", prefix=inside))
    assert b"inet logban (absent: made with the first ban to enforce)" in r.stdout and b"\nsets " not in r.stdout
    assert logban_tables(netns) == ""
    ok(run_logban("--db", url, "--backend", "nftables", "ban", "198.51.100.9", prefix=inside))
    assert "inet logban" in logban_tables(netns)    # the check above can fail

    def elements() -> str:
        held = set_of("198.51.100.9")[0]
        return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "set", "inet", "logban", held],
                              capture_output=True, text=True).stdout

    assert "198.51.100.9" in elements()
    r = ok(run_logban("--db", url, "--backend", "nftables", "unban", "198.51.100.9", prefix=inside))
    assert "198.51.100.9" not in elements() and b"1 removed" in r.stdout      # lifting does touch it
    r = ok(run_logban("--db", url, "--backend", "nftables", "firewall", "teardown", "--json", prefix=inside))
    assert json.loads(r.stdout) == {"backend": "nftables", "removed": True} and logban_tables(netns) == ""


def test_a_missing_firewall_tool_names_its_package(tmp_path, netns):
    """Root, but no `nft` on PATH: one line naming the Debian package, and what the store kept."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    url = f"sqlite:///{tmp_path}/logban.db"
    r = run_logban("--db", url, "--backend", "nftables", "ban", "198.51.100.7",
                   prefix=["ip", "netns", "exec", netns, "/usr/bin/env", f"PATH={bin_dir}"])
    assert r.returncode == 1 and r.stderr.decode() == ("logban: nft: command not found; install the package nftables; "
                                                       "the store has the change, `logban firewall sync` enforces it\n")
    assert b"198.51.100.7" in ok(run_logban("--db", url, "list")).stdout


def test_a_named_backend_without_root_is_refused_before_anything_is_recorded(public_tmp):
    d = public_tmp / "state"
    d.mkdir()
    d.chmod(0o777)
    url = f"sqlite:///{d}/logban.db"
    for cmd in (["ban", "198.51.100.7"], ["unban", "198.51.100.7"],
                ["scan", "--apply", str(SAMPLES / "logs" / "postfix")]):
        r = run_logban("--db", url, "--backend", "nftables", *cmd, prefix=as_nobody(public_tmp))
        assert r.returncode == 2 and b"root or CAP_NET_ADMIN" in r.stderr and r.stderr.count(b"\n") == 1, cmd
    assert not (d / "logban.db").exists() or json.loads(ok(run_logban("--db", url, "list", "--all", "--json")).stdout) == []


def test_scan_apply_json_masks_the_database_password(pg_url):
    url = pg_url.replace("postgresql+psycopg://postgres@", "postgresql+psycopg://postgres:s3cret-pw@")
    r = ok(run_logban("--db", url, "scan", "--apply", "--dry-run", "--json", str(SAMPLES / "logs" / "postfix")))
    assert b"s3cret-pw" not in r.stdout + r.stderr
    assert "***" in json.loads(r.stdout)["applied"]["database"]


# ---- the pid file ------------------------------------------------------------------------

def test_pid_directory_of_another_user_is_refused(public_tmp):
    log = public_tmp / "mail.log"
    log.write_text("")
    planted = public_tmp / "run"
    planted.mkdir()                                 # root's, 0755: not nobody's
    cfg = public_tmp / "logban.toml"
    cfg.write_text(f'[daemon]\npid_file = "{planted}/logban.pid"\n')
    (public_tmp / "db").mkdir()
    (public_tmp / "db").chmod(0o777)
    r = run_logban("-c", str(cfg), "--db", f"sqlite:///{public_tmp}/db/x.db", "run", "--follow", str(log),
                   prefix=as_nobody(public_tmp), timeout=30)
    assert r.returncode == 2 and b"refused" in r.stderr and str(planted).encode() in r.stderr
    r = run_logban("-c", str(cfg), "reload", prefix=as_nobody(public_tmp))
    assert r.returncode == 2 and b"refused" in r.stderr


@pytest.mark.parametrize("planted, why", [("mkdir -m 0755 {d}", "owned by uid 0"),
                                           ("mkdir -m 0750 {d} && chown 65534 {d}", "mode 0750"),
                                           ("mkdir -m 0700 /tmp/x && chown 65534 /tmp/x && ln -s /tmp/x {d}", "a symlink")])
def test_default_pid_directory_in_tmp_planted_by_another_is_refused(public_tmp, planted, why):
    """Without root and XDG_RUNTIME_DIR the pid file goes to /tmp/logban-<uid>, a name anyone can
    take first: only our own 0700 directory is used. A /tmp of its own here (tmpfs, in the
    process's mount namespace), with what the run needs from the real one bound back into it:
    the test directory, and the checkout and coverage's data directory where they are under
    /tmp (CI may clone there)."""
    d = "/tmp/logban-65534"
    keep = {public_tmp, ROOT, Path(os.environ.get("COVERAGE_FILE", "/")).parent}
    back = "".join(f"mkdir -p {p}\nmount --bind /mnt/{p.relative_to('/tmp')} {p}\n"
                   for p in sorted(keep) if p.is_relative_to("/tmp") and p != Path("/tmp"))
    private_tmp = (f"mount --bind /tmp /mnt\nmount -t tmpfs -o mode=1777 tmpfs /tmp\n{back}{planted.format(d=d)}")
    log = public_tmp / "mail.log"
    log.write_text("")
    (public_tmp / "db").mkdir()
    (public_tmp / "db").chmod(0o777)
    r = run_logban("--db", f"sqlite:///{public_tmp}/db/x.db", "run", "--follow", str(log), timeout=30,
                   env={"XDG_RUNTIME_DIR": ""}, prefix=as_nobody(public_tmp, private_tmp))
    assert r.returncode == 2 and r.stderr.startswith(f"logban: {d}: pid directory ".encode()), r.stderr
    assert why.encode() in r.stderr and b"refused" in r.stderr and r.stderr.count(b"\n") == 1


def test_pid_file_symlink_is_replaced_not_followed_and_reload_signals_only_logban(public_tmp):
    run = public_tmp / "run"
    run.mkdir(mode=0o700)
    os.chown(run, 65534, 65534)                     # nobody's own pid directory
    victim = public_tmp / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o666)
    (run / "logban.pid").symlink_to(victim)
    d = Daemon(public_tmp / "d")
    os.chown(d.tmp, 65534, 65534)
    d.cfg.write_text(f'[daemon]\npid_file = "{run}/logban.pid"\n')
    log = public_tmp / "mail.log"
    log.write_text("")
    d.args += ["--follow", str(log)]
    d.start(prefix=as_nobody(public_tmp))
    try:
        assert victim.read_text() == "precious\n"
        assert not (run / "logban.pid").is_symlink()
        ok(run_logban("-c", str(d.cfg), "reload", prefix=as_nobody(public_tmp)))
        d.wait_log("reloaded")
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            (run / "logban.pid").unlink()
            (run / "logban.pid").write_text(f"{sleeper.pid}\n")
            r = run_logban("-c", str(d.cfg), "reload", prefix=as_nobody(public_tmp))
            assert r.returncode == 2 and b"not logban" in r.stderr and sleeper.poll() is None
        finally:
            sleeper.kill()
    finally:
        d.stop()


# ---- exports the daemon cannot write ------------------------------------------------------

def test_daemon_and_reload_name_an_export_path_the_daemon_cannot_write(tmp_path):
    out = tmp_path / "postfix"
    out.mkdir()
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path / "d", "--follow", str(log),
               config=f'[[export]]\nformat = "postfix"\npath = "{out}/logban.cidr"\n')
    d.start(prefix=read_only_mount(out))            # the unit's ProtectSystem=strict, in small
    try:
        line = d.wait_log("cannot write it")
        assert f"{out}/logban.cidr" in line and "read-only file system" in line and "ReadWritePaths" in line
        r = ok(run_logban("-c", str(d.cfg), "reload"))
        assert f"{out}/logban.cidr".encode() in r.stderr and b"read-only file system" in r.stderr
        assert os.access(out, os.W_OK)              # this shell could write it: the daemon's view counts
    finally:
        d.stop()


def test_failed_export_backs_off_with_one_line_per_change(tmp_path):
    gone = tmp_path / "gone"
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path / "d", "--follow", str(log),
               config=f'[[export]]\nformat = "plain"\npath = "{gone}/bans.txt"\n')
    d.start()
    try:
        d.wait_log("bans.txt failed:")
        time.sleep(7)                               # 2 s steps would have failed 3 more times
        assert sum("bans.txt failed:" in ln for ln in d.lines) == 1, "".join(d.lines)
        gone.mkdir()
        d.wait_log("works again", timeout=40)
        assert (gone / "bans.txt").exists()
    finally:
        d.stop()


def test_failed_export_is_retried_less_and_less_often(tmp_path):
    """Backoff, counted where it happens: each retry of a sendmail export runs makemap again
    (here one that always fails and notes each call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "makemap").write_text(f"#!/bin/sh\necho x >> {calls}\necho 'makemap: no database' >&2\nexit 1\n")
    (bin_dir / "makemap").chmod(0o755)
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path / "d", "--follow", str(log),
               config=f'[[export]]\nformat = "sendmail"\npath = "{tmp_path}/access"\n')
    d.start(env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    try:
        d.wait_log("makemap failed")
        time.sleep(12)                              # every 2 s: 6 more calls; 2, 4, 8 s: 2 more
        n = len(calls.read_text().splitlines())
        assert 2 <= n <= 4, f"makemap ran {n} times in 12 s"
    finally:
        d.stop()
