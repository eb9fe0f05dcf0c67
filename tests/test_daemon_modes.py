"""The daemon means what the config says (issue 12): dry run and reload, one instance per
store and node, a score cleared elsewhere, log lines that say what happened. The real
`logban run`; the kernel ones in namespaces of their own."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from daemonproc import NET, Daemon, append, dnsbl, sasl, stamp
from netlab import Lab, need_netns, need_tools

from logban.firewall.nftables import SETS, set_of

ATTACKER, OTHER = "198.51.100.2", "198.51.100.3"     # client addresses of the namespaces (netlab)


@pytest.fixture
def lab(tmp_path):
    need_netns()
    need_tools("nft")
    lab = Lab(tmp_path)
    yield lab
    lab.close()


def nft_elements(lab: Lab) -> set[str] | None:
    """logban's IPv4 elements in the server namespace (its sets of addresses, of /24
    networks, and net4); None: no logban table at all."""
    r = lab.run(lab.srv, "nft", "-j", "list", "table", "inet", "logban")
    if r.returncode != 0:
        return None
    out = set()
    for obj in json.loads(r.stdout)["nftables"]:
        version, plen = SETS.get(obj.get("set", {}).get("name", ""), (6, None))
        if version != 4:
            continue
        for e in obj["set"].get("elem", []):
            e = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
            e = e if isinstance(e, str) else f"{e['prefix']['addr']}/{e['prefix']['len']}"
            out.add(f"{e}/24" if plen == 24 else e)
    return out


def wait_for(cond, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def cli(d: Daemon, *args: str, ns: str | None = None, backend: str = "none") -> subprocess.CompletedProcess:
    """The logban command beside daemon `d` (its config and store)."""
    cmd = [sys.executable, "-m", "logban", "-c", str(d.cfg), "--db", d.url, "--backend", backend, *args]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def configure(d: Daemon, top: str = "", tables: str = "") -> None:
    """Daemon `d`'s config: `top` keys (dry_run), then tables."""
    d.cfg.write_text('%s\n[parse]\ntimezone = "UTC"\n[daemon]\npid_file = "%s"\n%s' % (top, d.tmp / "logban.pid", tables))


def reload(d: Daemon, top: str = "", tables: str = "") -> None:
    configure(d, top, tables)
    n = sum("reloaded" in ln for ln in d.lines)
    d.p.send_signal(signal.SIGHUP)
    wait_for(lambda: sum("reloaded" in ln for ln in d.lines) > n, what="reload")


def test_dry_run_adds_nothing_then_reload_enforces_and_the_dry_run_ban_holds_nobody(tmp_path, lab, daemons):
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log), backend="nftables")
    metrics = 'metrics = "127.0.0.1:9187"\n'
    configure(d, "dry_run = true", metrics)
    daemons.append(d.start(prefix=["ip", "netns", "exec", lab.srv]))
    append(log, dnsbl(ATTACKER))
    d.wait_log(f"ban {ATTACKER} dnsbl")
    assert "dry run" in d.wait_log(f"ban {ATTACKER} dnsbl")
    time.sleep(2.5)                     # a cluster look and more: nothing lifts our own dry-run ban
    assert not any("lift" in ln or "release" in ln for ln in d.lines), d.lines
    assert nft_elements(lab) is None, "a dry run made logban's table"
    assert lab.connects(ATTACKER)
    r = lab.run(lab.srv, sys.executable, "-c", "import urllib.request as u; "
                "print(u.urlopen('http://127.0.0.1:9187/metrics', timeout=10).read().decode())")
    assert "logban_bans_active 1.0" in r.stdout, r.stdout + r.stderr

    reload(d, "dry_run = false", metrics)
    append(log, dnsbl(ATTACKER))        # the dry-run ban is a record: it holds nobody
    wait_for(lambda: ATTACKER in (nft_elements(lab) or set()), what="the real ban in the kernel")
    assert not lab.connects(ATTACKER)
    assert lab.connects(OTHER)
    rows = d.query(f"SELECT dry_run, released IS NULL, count FROM bans WHERE target = '{ATTACKER}' ORDER BY id")
    assert rows == [(1, 1, 1), (0, 1, 1)], rows     # the real ban is the first real one: not escalated
    time.sleep(2.5)
    assert ATTACKER in nft_elements(lab), "the daemon lifted its own ban"
    assert not any(f"release {ATTACKER}" in ln for ln in d.lines), d.lines

    reload(d, "dry_run = true", metrics)       # back to a dry run: what is enforced stays, nothing new is added
    append(log, dnsbl(OTHER))
    d.wait_log(f"ban {OTHER} dnsbl")
    time.sleep(1.5)
    assert nft_elements(lab) == {ATTACKER}
    assert d.stop() == 0


def test_a_dry_run_lifts_from_the_kernel_unban_sync_and_teardown(tmp_path, lab):
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    db = f"sqlite:///{tmp_path}/x.db"

    def run(*args: str, dry: bool = False) -> subprocess.CompletedProcess:
        cfg.write_text("dry_run = true\n" if dry else "")
        r = lab.run(lab.srv, *lab.logban_cmd(db, "nftables", "-c", str(cfg), *args), env=lab.env())
        assert r.returncode == 0, r.stderr
        return r

    run("ban", ATTACKER, "--for", "1d")
    run("ban", OTHER, "--for", "1d")
    assert nft_elements(lab) == {ATTACKER, OTHER}
    assert not lab.connects(ATTACKER)
    run("unban", ATTACKER, dry=True)
    assert nft_elements(lab) == {OTHER}
    assert lab.connects(ATTACKER)
    # An element the store does not know goes in a dry-run sync; a ban missing is not added.
    assert lab.run(lab.srv, "nft", "add", "element", "inet", "logban", set_of("198.51.100.9")[0],
                   "{ 198.51.100.9 }").returncode == 0
    assert lab.run(lab.srv, "nft", "delete", "element", "inet", "logban", set_of(OTHER)[0],
                   "{ %s }" % OTHER).returncode == 0
    out = run("firewall", "sync", dry=True).stdout
    assert "1 unknown removed" in out and "dry run" in out
    assert nft_elements(lab) == set()
    run("ban", "198.51.100.20", "--for", "1d", "--dry-run")
    assert nft_elements(lab) == set()
    run("firewall", "sync")
    assert nft_elements(lab) == {OTHER}
    run("firewall", "teardown", dry=True)
    assert nft_elements(lab) is None
    assert lab.connects(OTHER)


def test_dry_run_bans_stand_in_the_way_of_no_real_ban(tmp_path, logban):
    db = f"sqlite:///{tmp_path}/x.db"
    now = time.time()
    first, second = tmp_path / "week.log", tmp_path / "today.log"
    first.write_text(dnsbl(ATTACKER).replace(stamp(), time.strftime("%b %e %H:%M:%S", time.gmtime(now - 7200))))
    second.write_text(dnsbl(ATTACKER))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[parse]\ntimezone = "UTC"\n')
    assert logban("-c", str(cfg), "--db", db, "scan", "--apply", "--dry-run", str(first)).returncode == 0
    r = logban("-c", str(cfg), "--db", db, "scan", "--apply", "--json", str(second))
    assert r.returncode == 0, r.stderr
    applied = json.loads(r.stdout)["applied"]
    assert applied["bans"] == 1 and applied["while_banned"] == 0 and applied["escalated"] == 0
    bans = json.loads(logban("--db", db, "list", "--json").stdout)
    real = [b for b in bans if not b["dry_run"]]
    assert [b["target"] for b in real] == [ATTACKER]


def test_reload_keeps_a_sendmail_session_and_replaces_the_backend(tmp_path, lab, daemons):
    need_tools("ipset", "iptables")
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log))
    configure(d, tables='[firewall]\nbackend = "nftables"\n')
    d.args = [a for a in d.args if a not in ("--backend", "none")]
    daemons.append(d.start(prefix=["ip", "netns", "exec", lab.srv]))
    # A sendmail session: the offences under the queue id first, the client's address in the
    # from= line sendmail writes when the session ends, after the reload.
    qid = "4AKA0001234599"
    append(log, "".join(f"{stamp()} mx sm-mta[77]: {qid}: <u{i}@d.example>... User unknown\n" for i in range(6)))
    time.sleep(1.5)
    reload(d, tables='[firewall]\nbackend = "ipset"\n')
    ipset = lambda: lab.run(lab.srv, "ipset", "list", "logban4").stdout
    wait_for(lambda: nft_elements(lab) is None, what="the nftables table lifted after the switch")
    d.wait_log("replaced by ipset")
    append(log, f"{stamp()} mx sm-mta[77]: {qid}: from=<a@b.example>, size=0, class=0, nrcpts=0, "
                f"proto=ESMTP, daemon=MTA, relay=[{ATTACKER}]\n")
    d.wait_log(f"ban {ATTACKER}")
    wait_for(lambda: ATTACKER in ipset(), what="the ban in the new backend")
    assert not lab.connects(ATTACKER)
    assert lab.connects(OTHER)
    assert d.stop() == 0
    lab.run(lab.srv, *lab.logban_cmd(d.url, "ipset", "-c", str(d.cfg), "firewall", "teardown"), env=lab.env())


def test_a_second_daemon_on_the_same_store_and_node_refuses(tmp_path, daemons):
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log))
    daemons.append(d.start())
    r = subprocess.run([sys.executable, "-m", "logban", *d.args], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert f"pid {d.p.pid}" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "logban.pid").read_text().split()[0] == str(d.p.pid)      # its pid file untouched
    append(log, sasl(f"{NET}.9"))
    d.wait_offences(1)                                  # counted once
    assert d.stop() == 0
    # Once it stopped, the next one starts.
    daemons.append(d.start())
    assert d.stop() == 0


def test_a_second_daemon_of_one_node_on_postgresql_refuses(tmp_path, pg_url, daemons):
    log = tmp_path / "mail.log"
    log.write_text("")
    url = pg_url
    d = Daemon(tmp_path / "a", "--follow", str(log), "--node", "mx1", db=url)
    daemons.append(d.start())
    same = Daemon(tmp_path / "b", "--follow", str(log), "--node", "mx1", db=url)
    r = subprocess.run([sys.executable, "-m", "logban", *same.args], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and f"pid {d.p.pid}" in r.stderr, r.stderr
    other = Daemon(tmp_path / "c", "--follow", str(log), "--node", "mx2", db=url)
    daemons.append(other.start())                       # another node of the cluster: fine
    assert other.stop() == 0 and d.stop() == 0


def test_unban_of_a_scored_client_clears_its_score_in_the_running_daemon(tmp_path, daemons):
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log))
    daemons.append(d.start())
    ip = f"{NET}.44"
    append(log, "".join(sasl(ip) for _ in range(4)))   # score 4 of 5
    d.wait_offences(4)
    r = cli(d, "unban", ip)
    assert r.returncode == 0 and "score cleared" in r.stdout, r.stderr
    time.sleep(2.5)                                     # the daemon looks at the store every second
    append(log, "".join(sasl(ip) for _ in range(2)))
    d.wait_offences(6)
    time.sleep(1.5)
    assert not any(f"ban {ip}" in ln for ln in d.lines), "the cleared score still counted"
    append(log, "".join(sasl(ip) for _ in range(3)))    # 5 after the clearing: now it is banned
    d.wait_log(f"ban {ip}")
    assert d.stop() == 0


def test_log_lines_say_who_decided_and_every_release_has_one(tmp_path, lab, daemons):
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log), backend="nftables")
    daemons.append(d.start(prefix=["ip", "netns", "exec", lab.srv]))
    assert cli(d, "ban", ATTACKER, "--for", "1h", ns=lab.srv, backend="nftables").returncode == 0
    d.wait_log(f"enforce {ATTACKER} (banned elsewhere)")
    assert cli(d, "unban", ATTACKER, ns=lab.srv, backend="nftables").returncode == 0
    assert "unban, elsewhere" in d.wait_log(f"release {ATTACKER}")
    # Three bans in one /24 make a network ban; its members' releases are logged, no reconcile.
    for i in (21, 22):
        append(log, dnsbl(f"{NET}.{i}"))
        d.wait_log(f"ban {NET}.{i} ")
    append(log, dnsbl(f"{NET}.23"))
    d.wait_log(f"ban {NET}.0/24")
    for i in (21, 22):
        assert f"aggregated into {NET}.0/24" in d.wait_log(f"release {NET}.{i}")
    assert not any(f"release {NET}.23" in ln for ln in d.lines), "a release of a ban never made"
    assert cli(d, "ban", OTHER, "--for", "2s", ns=lab.srv, backend="nftables").returncode == 0
    assert "ban over" in d.wait_log(f"release {OTHER}", timeout=20)
    assert not any("reconcil" in ln or "does not exist" in ln for ln in d.lines), "".join(d.lines)
    # OTHER's own element (held beside the /24 that covers it) ends by its kernel timeout,
    # rounded up to the second.
    wait_for(lambda: nft_elements(lab) == {f"{NET}.0/24"}, timeout=5, what="OTHER's element timed out")
    assert d.stop() == 0


def test_a_cli_sync_never_lifts_a_ban_the_daemon_has_not_recorded_yet(tmp_path, lab, daemons):
    """Issue 12: the daemon put a ban in the kernel before committing it; a `logban firewall
    sync` run in between took it for an unknown element and lifted it, until the next
    periodic sync. Now a ban is recorded first, then enforced."""
    import sqlite3
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log), backend="nftables")
    configure(d, tables="sync_interval = \"1h\"\n")
    daemons.append(d.start(prefix=["ip", "netns", "exec", lab.srv]))
    holder = sqlite3.connect(d.db, timeout=10, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")          # the store is slow to take a write
    try:
        append(log, dnsbl(ATTACKER))
        time.sleep(1.5)                         # decided by now, waiting to be recorded
        r = cli(d, "firewall", "sync", ns=lab.srv, backend="nftables")
        assert r.returncode == 0, r.stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    d.wait_log(f"ban {ATTACKER}")
    wait_for(lambda: ATTACKER in (nft_elements(lab) or set()), what="the ban in the kernel")
    time.sleep(1.5)
    assert ATTACKER in nft_elements(lab) and not lab.connects(ATTACKER)
    assert d.stop() == 0


def test_the_daemon_counts_a_line_stamped_years_ahead_as_read_now(tmp_path, daemons):
    """Issue 12, point 7: an ISO stamp five years ahead (a sender's wrong clock, a forwarded
    RFC 5424 stamp) gave a 6 h ban that lasted five years. The daemon reads lines as they are
    written, so such an offence counts at the moment it was read: a ban of 6 h from now."""
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log))
    daemons.append(d.start())
    ip = f"{NET}.47"
    ahead = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 5 * 365 * 86400))
    before = time.time()
    append(log, ahead + " mx " + dnsbl(ip).split(" mx ", 1)[1])
    d.wait_log(f"ban {ip}")
    after = time.time()
    (created, expires), = d.query(f"SELECT created, expires FROM bans WHERE target = '{ip}'")
    assert before - 1 <= created <= after + 1, (before, created, after)
    assert expires - created == 6 * 3600
    (t,), = d.query(f"SELECT time FROM offences WHERE ip = '{ip}'")
    assert before - 1 <= t <= after + 1
    assert d.stop() == 0
