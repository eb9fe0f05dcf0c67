"""Safe decisions end to end, with the real `logban` process and, where a ban reaches
the kernel, in network namespaces with real packets: nothing a log line, a config or a
store row says can make logban ban what it must not."""
from __future__ import annotations

import json
import sqlite3
import time

import pytest
from conftest import touch_now
from daemonproc import Daemon, append, dnsbl
from netlab import Lab, need_netns, need_tools
from test_firewall import Server, lab

from logban.firewall.nftables import set_of

# Rows another node, a compromised node or a hand-edited database could hold.
CRAFTED = (
    "198.51.100.1 }\ndelete table inet hostfw\nadd element inet logban ban4 { 198.51.100.2",
    "198.51.100.2\ndestroy hostset\nadd logban4 198.51.100.3",
    "198.51.100.3 timeout 1s",
    "192.0.2.3/24",                     # host bits: would ban the client's /24
    "::/64",                            # holds ::1
    "0.0.0.0/0",                        # would make every client look banned already
    "203.0.113.5/16",                   # host bits, not the scoring prefix
    "2001:DB8:2::3",                   # not as logban writes it
)


def insert_ban(db_path, target: str, node: str = "other", dry_run: bool = False) -> None:
    now = time.time()
    con = sqlite3.connect(db_path, timeout=10)
    con.execute(
        "INSERT INTO bans (target, kind, rule, reason, score, created, expires, duration, released, "
        "release_reason, count, escalated, dry_run, node, source, members, text) "
        "VALUES (?, 'dnsbl', '', 'crafted', 5, ?, ?, 3600, NULL, NULL, 1, 0, ?, ?, 'auto', '', '')",
        (target, now, now + 3600, dry_run, node))
    con.commit()
    con.close()


@pytest.mark.parametrize("kind", ["nftables", "ipset"])
def test_store_rows_reach_the_kernel_only_through_the_gate(lab, tmp_path, kind):
    """A crafted row cannot inject into `nft -f` or `ipset restore`, nor ban a special or
    non-canonical network; an address this node allow-lists is not enforced whoever banned
    it; the valid rows are still enforced."""
    server = Server(lab, tmp_path, kind)
    run, srv = lab.run, lab.srv
    if kind == "nftables":
        assert run(srv, "nft", "add table inet hostfw").returncode == 0
        host_fw = ("nft", "list", "table", "inet", "hostfw")
    else:
        assert run(srv, "ipset", "create", "hostset", "hash:ip").returncode == 0
        host_fw = ("ipset", "list", "hostset")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[allow]\naddresses = ["198.51.100.3"]\n')
    try:
        server("-c", str(cfg), "ban", "192.0.2.2")
        for t in CRAFTED:
            insert_ban(server.path, t)
        insert_ban(server.path, "198.51.100.3")         # allow-listed here, banned by another node
        insert_ban(server.path, "2001:db8:2::2")        # a valid ban by another node
        r = server("-c", str(cfg), "firewall", "sync")
        assert run(srv, *host_fw).returncode == 0, "the host's own firewall was changed"
        got = lab.reachable(*("192.0.2.2", "192.0.2.3", "198.51.100.2", "198.51.100.3", "2001:db8:2::2",
                              "2001:db8:2::3", "2001:db8:1::2"))
        assert [c for c, ok in got.items() if not ok] == ["192.0.2.2", "2001:db8:2::2"]
        st = json.loads(server("-c", str(cfg), "firewall", "status", "--json").stdout)
        assert st["elements"] == {"ipv4": 1, "ipv6": 1}
        assert st["drift"] == {"missing": 0, "unknown": 0, "stale": 0}
        assert st["refused"] == len(CRAFTED) + 1 and "allow-listed" in r.stderr and "hostfw" in r.stderr
        # the exports trust the rows no more than the kernel does
        out = server("-c", str(cfg), "export", "--format", "plain")
        assert out.stdout.split() == ["192.0.2.2", "2001:db8:2::2"]
        assert "198.51.100.3" in out.stderr and "allow-listed" in out.stderr
        assert r.returncode == 0
    finally:
        server("firewall", "teardown", check=False)
        run(srv, "nft", "delete", "table", "inet", "hostfw")
        run(srv, "ipset", "destroy", "hostset")


def test_promotion_never_covers_the_hosts_own_or_an_allowed_address(lab, tmp_path):
    """Three bans in the server's own /24, an attacker in its own IPv6 /64, three in a /24
    holding an allow-listed address: address bans only; elsewhere the /24 is made."""
    server = Server(lab, tmp_path, "nftables")
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(time.time() - 60))
    clients = ["203.0.113.7", "203.0.113.8", "203.0.113.9", "2001:db8:ff::66",
               "198.51.100.20", "198.51.100.21", "198.51.100.22", "192.0.2.20", "192.0.2.21", "192.0.2.22"]
    log = tmp_path / "mail.log"
    log.write_text("".join(f"{stamp} mx postfix/postscreen[9]: DNSBL rank 5 for [{c}]:4000\n" for c in clients))
    touch_now(log)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[allow]\naddresses = ["198.51.100.250"]\n')
    try:
        server("-c", str(cfg), "scan", "--apply", "--no-progress", str(log))
        bans = {b["target"] for b in json.loads(server("-c", str(cfg), "list", "--json").stdout)}
        assert bans == {"203.0.113.7", "203.0.113.8", "203.0.113.9", "2001:db8:ff::66",
                        "198.51.100.20", "198.51.100.21", "198.51.100.22", "192.0.2.0/24"}
        assert lab.connects("198.51.100.2") and not lab.connects("192.0.2.2")
        nets = {s: lab.run(lab.srv, "nft", "list", "set", "inet", "logban", set_of(s)[0]).stdout    # the address
                for s in ("192.0.2.0/24", "203.0.113.0/24", "198.51.100.0/24")}
        assert [s for s, out in nets.items() if s.split("/")[0] in out] == ["192.0.2.0/24"]
    finally:
        server("firewall", "teardown", check=False)


def test_daemon_enforces_other_nodes_bans_but_not_what_it_allows(tmp_path):
    """A running daemon learns bans written by others at once: valid ones reach its kernel,
    crafted rows and bans of addresses it allow-lists do not, and it says why once."""
    need_netns()
    need_tools("nft")
    lab = Lab(tmp_path)
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log), backend="nftables", config='[allow]\naddresses = ["192.0.2.3"]\n')
    try:
        d.start(prefix=["ip", "netns", "exec", lab.srv])
        assert lab.run(lab.srv, "nft", "add table inet hostfw").returncode == 0
        for t in (*CRAFTED, "192.0.2.3", "198.51.100.2"):
            insert_ban(d.db, t)
        d.wait_log("enforce 198.51.100.2 (banned elsewhere)", timeout=15)
        d.wait_log("not enforced here: ban of '192.0.2.3'")
        d.wait_log("not enforced here: ban of '198.51.100.1 }")
        assert lab.run(lab.srv, "nft", "list", "table", "inet", "hostfw").returncode == 0
        got = lab.reachable("192.0.2.2", "192.0.2.3", "198.51.100.2", "198.51.100.3", "2001:db8:2::3")
        assert [c for c, ok in got.items() if not ok] == ["198.51.100.2"]
        # its own decisions still go in at once (192.0.2.2 may be the CI host's own name's address)
        append(log, dnsbl("198.51.100.3"))
        d.wait_log("ban 198.51.100.3 dnsbl")
        deadline = time.monotonic() + 5
        while lab.connects("198.51.100.3") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not lab.connects("198.51.100.3") and lab.connects("192.0.2.3")
        assert sum("not enforced here: ban of '192.0.2.3'" in ln for ln in d.lines) == 1
    finally:
        if d.p is not None and d.p.poll() is None:
            d.stop()
        lab.run(lab.srv, "nft", "delete", "table", "inet", "logban")
        lab.close()


def test_a_partner_allowed_by_name_keeps_its_networks_across_runs_and_nodes(tmp_path, logban):
    """The partner is seen first (one run), the bots in its /24 and /64 later (another run,
    as after a restart or on another node): only address bans; a network ban covering the
    partner made elsewhere is refused by the gate, in the exports too."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[parse]\ntimezone = "UTC"\n[allow]\nhostnames = ["*.mailout.example.com"]\n')
    db = ("-c", str(cfg), "--db", f"sqlite:///{tmp_path / 'logban.db'}", "--backend", "none")
    stamp = time.strftime("%b %e %H:%M:%S", time.gmtime(time.time() - 120))
    partner = tmp_path / "partner.log"
    partner.write_text("".join(
        f"{stamp} mx sm-mta[2006]: 4AKA00012345{i}: mx1.mailout.example.com [{ip}] did not issue "
        f"MAIL/EXPN/VRFY/ETRN during connection to MTA\n" for i, ip in enumerate(("198.51.100.50", "2001:db8:5::50"))))
    bots = tmp_path / "bots.log"
    bots.write_text("".join(
        f"{stamp} mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 <v@example.net>: "
        f"Relay access denied; from=<a@example.org> to=<v@example.net> proto=ESMTP helo=<x>\n"
        for ip in ("198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8:5::66") for _ in range(3)))
    touch_now(partner, bots)
    assert logban(*db, "scan", "--apply", str(partner)).returncode == 0
    assert logban(*db, "scan", "--apply", str(bots)).returncode == 0
    bans = {b["target"] for b in json.loads(logban(*db, "list", "--json").stdout)}
    assert bans == {"198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8:5::66"}
    r = logban(*db, "ban", "198.51.100.0/24")                         # not by hand ...
    assert r.returncode == 2 and b"198.51.100.50" in r.stderr
    insert_ban(tmp_path / "logban.db", "198.51.100.0/24")               # ... and not from another node
    out = logban(*db, "export", "--format", "plain")
    assert "198.51.100.0/24" not in out.stdout.decode()
    assert b"198.51.100.50" in out.stderr and b"verified name" in out.stderr


def test_durations_past_a_century_and_non_numbers_are_refused(tmp_path, logban):
    db = ("--db", f"sqlite:///{tmp_path / 'logban.db'}", "--backend", "none")
    for d in ("9999999999999999999w", "5300w"):
        r = logban(*db, "ban", "203.0.113.51", "--for", d)
        assert r.returncode == 2 and b"100 years" in r.stderr and b"Traceback" not in r.stderr
    for v in ("inf", "nan", "1e300"):
        cfg = tmp_path / f"{v}.toml"
        cfg.write_text(f"[ban.durations]\nrelay_denied = {v}\n")
        r = logban("-c", str(cfg), *db, "list")
        assert r.returncode == 2 and b"relay_denied" in r.stderr
    assert json.loads(logban(*db, "list", "--json").stdout) == []


def test_store_text_reaches_exports_and_the_daemons_log_escaped(tmp_path, logban):
    """A crafted kind cannot break a map's quoting or put control bytes in a zone; a HELO with
    terminal escapes reaches the daemon's log escaped, one line per record."""
    db_path = tmp_path / "logban.db"
    db = ("--db", f"sqlite:///{db_path}", "--backend", "none")
    assert logban(*db, "ban", "203.0.113.9").returncode == 0
    con = sqlite3.connect(db_path)
    con.execute("UPDATE bans SET kind = ?", ('x"\x00\x1b[31m$\\ OK\n250',))
    con.commit()
    con.close()
    for fmt in ("postfix", "sendmail", "rbldnsd"):
        out = logban(*db, "export", "--format", fmt).stdout
        line = next(ln for ln in out.split(b"\n") if ln.startswith((b"203.", b"Connect:")))
        assert all(32 <= c < 127 for c in line) and line.count(b'"') == (2 if fmt == "sendmail" else 0), line
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path / "d", "--follow", str(log))
    try:
        d.start()
        append(log, dnsbl("198.51.100.77").replace("from=<a@b.example>", "from=<\x1b]0;PW\x07\x1b[31m@x>"))
        ln = d.wait_log("ban 198.51.100.77 dnsbl")
        assert "\x1b" not in "".join(d.lines) and "\x07" not in "".join(d.lines) and "\\x1b]0;PW" in ln
    finally:
        d.stop()


def test_a_partner_is_learned_from_its_connections_not_only_from_offences(tmp_path, logban):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[parse]\ntimezone = "UTC"\n[allow]\nhostnames = ["*.mailout.example.com"]\n')
    db = ("-c", str(cfg), "--db", f"sqlite:///{tmp_path / 'logban.db'}", "--backend", "none")
    stamp = time.strftime("%b %e %H:%M:%S", time.gmtime(time.time() - 120))
    log = tmp_path / "mail.log"
    log.write_text(f"{stamp} mx postfix/smtpd[1]: connect from out1.mailout.example.com[198.51.100.10]\n" + "".join(
        f"{stamp} mx postfix/postscreen[9]: DNSBL rank 5 for [{ip}]:4000\n"
        for ip in ("198.51.100.20", "198.51.100.21", "198.51.100.22")))
    touch_now(log)
    assert logban(*db, "scan", "--apply", str(log)).returncode == 0
    bans = {b["target"] for b in json.loads(logban(*db, "list", "--json").stdout)}
    assert bans == {"198.51.100.20", "198.51.100.21", "198.51.100.22"}
