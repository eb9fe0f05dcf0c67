"""The live allow-list (issue 17): `logban allow add` honoured by running daemons at once,
without a reload: the ban it covers is lifted in the kernel (nftables in a namespace) and
the exports, on every node of a shared PostgreSQL store; `--for` ends; wildcards match
verified names only."""
from __future__ import annotations

import json
import time

from daemonproc import NET, Daemon, append, dnsbl
from test_daemon_modes import ATTACKER, OTHER, cli, lab, nft_elements, wait_for

THIRD = "203.0.113.50"


def live_count(d: Daemon, n: int) -> int:
    return sum(f"allow-list: {n} live entries" in ln for ln in d.lines)


def test_allow_add_lifts_a_running_daemons_ban_in_the_kernel_and_the_exports(tmp_path, lab, daemons):
    log = tmp_path / "mail.log"
    log.write_text("")
    out = tmp_path / "bans.txt"
    d = Daemon(tmp_path, "--follow", str(log), backend="nftables",
               config=f'[[export]]\nformat = "plain"\npath = "{out}"\n')
    daemons.append(d.start(prefix=["ip", "netns", "exec", lab.srv]))
    append(log, dnsbl(ATTACKER) + dnsbl(OTHER))
    wait_for(lambda: nft_elements(lab) == {ATTACKER, OTHER}, what="both bans in the kernel")
    wait_for(lambda: out.exists() and set(out.read_text().split()) == {ATTACKER, OTHER}, what="the export")
    assert not lab.connects(ATTACKER)

    # The command only writes the store (no backend, outside the namespace): the daemon lifts.
    r = cli(d, "allow", "add", ATTACKER, "--reason", "partner relay", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["covers_active_bans"] == [ATTACKER]
    d.wait_log(f"release {ATTACKER} (allow-listed now)", timeout=10)     # within a second; margin for a loaded host
    wait_for(lambda: nft_elements(lab) == {OTHER}, timeout=10, what="the allowed client lifted from the kernel")
    assert lab.connects(ATTACKER) and not lab.connects(OTHER)
    wait_for(lambda: set(out.read_text().split()) == {OTHER}, what="the export without it")
    assert not any("reloaded" in ln for ln in d.lines)
    assert d.query(f"SELECT release_reason FROM bans WHERE target = '{ATTACKER}'") == [("allow-list",)]

    append(log, dnsbl(ATTACKER) + dnsbl(THIRD))         # allowed now: never banned again
    d.wait_log(f"ban {THIRD} dnsbl")
    assert nft_elements(lab) == {OTHER, THIRD}

    r = cli(d, "allow", "add", OTHER, "--for", "8s")
    assert r.returncode == 0, r.stderr
    d.wait_log(f"release {OTHER} (allow-listed now)", timeout=8)
    wait_for(lambda: nft_elements(lab) == {THIRD}, timeout=10, what="the second allowed client lifted")
    wait_for(lambda: live_count(d, 1) == 2, timeout=20, what="the --for entry over")
    append(log, dnsbl(OTHER))                           # its allowance over: banned again
    wait_for(lambda: nft_elements(lab) == {OTHER, THIRD}, what="banned again after --for")

    r = cli(d, "allow", "list", "--json")
    assert [(e["target"], e["origin"], e["reason"]) for e in json.loads(r.stdout)] == [
        (ATTACKER, "store", "partner relay")]
    assert cli(d, "allow", "remove", ATTACKER).returncode == 0
    wait_for(lambda: live_count(d, 0) == 1, timeout=10, what="the removal seen")
    append(log, dnsbl(ATTACKER))
    wait_for(lambda: nft_elements(lab) == {ATTACKER, OTHER, THIRD}, what="banned once no longer allowed")
    assert d.stop() == 0


def named(ip: str, name: str, helo: str) -> str:
    """A dnsbl rejection of a client Postfix names `name` (forward-confirmed) that said `helo`."""
    return dnsbl(ip).replace(f"unknown[{ip}]", f"{name}[{ip}]").replace("helo=<x>", f"helo=<{helo}>")


def test_every_node_of_a_cluster_honours_the_live_allow_list(tmp_path, pg_url, daemons):
    logs, nodes = {}, {}
    for name in ("mx1", "mx2"):
        logs[name] = tmp_path / f"{name}.log"
        logs[name].write_text("")
        nodes[name] = Daemon(tmp_path / name, "--follow", str(logs[name]), "--node", name, db=pg_url)
        daemons.append(nodes[name].start())
    a, b = nodes["mx1"], nodes["mx2"]
    victim = f"{NET}.30"
    assert cli(a, "ban", victim, "--for", "1h").returncode == 0
    for d in (a, b):
        d.wait_log(f"enforce {victim} (banned elsewhere)")

    t0 = time.monotonic()
    r = cli(a, "allow", "add", victim)
    assert r.returncode == 0, r.stderr
    for d in (a, b):
        wait_for(lambda d=d: live_count(d, 1) >= 1 and any(f"release {victim}" in ln for ln in d.lines),
                 timeout=10, what="each node lifts the ban")
    assert time.monotonic() - t0 < 10                  # a second or two; margin for a loaded host
    assert a.query(f"SELECT release_reason FROM bans WHERE target = '{victim}'") == [("allow-list",)]

    # A wildcard added on one node is honoured on the other, for verified names only.
    assert cli(b, "allow", "add", "*.out.partner.example").returncode == 0
    wait_for(lambda: live_count(b, 2) >= 1, timeout=10, what="mx2 sees the wildcard")
    append(logs["mx2"], named(f"{NET}.40", "mx7.out.partner.example", "mx7.out.partner.example")
           + named(f"{NET}.41", "unknown", "mx7.out.partner.example")           # a HELO is no name
           + named(f"{NET}.42", "mx.out.partner.example.evil.example", "x"))   # nor a look-alike
    b.wait_log(f"ban {NET}.42 ")
    b.wait_log(f"ban {NET}.41 ")
    time.sleep(0.5)
    assert not any(f"ban {NET}.40 " in ln for ln in b.lines), "".join(b.lines)
    rows = {t for (t,) in b.query("SELECT target FROM bans WHERE released IS NULL")}
    assert rows == {f"{NET}.41", f"{NET}.42"}


def test_allow_targets_are_checked_and_list_shows_the_configs_entries_too(tmp_path, logban):
    cfg = tmp_path / "logban.toml"
    cfg.write_text('[allow]\naddresses = ["192.0.2.0/28"]\nhostnames = ["*.mailout.example.com"]\n')
    db = ["-c", str(cfg), "--db", f"sqlite:///{tmp_path}/t.db"]
    for bad, why in (("0.0.0.0/0", "switches logban off"), ("::/0", "switches logban off"),
                     ("10.0.0.0/8", "--force"), ("2001:db8::/32", "--force"), ("198.51.100.1/24", "host bits"),
                     ("*.example", "last two labels"), ("*", "not a host name pattern"), ("mail.*.com", "last two"),
                     ("1.2.3", "not an address"), ("x y", "not a host name pattern")):
        r = logban(*db, "allow", "add", bad)
        assert r.returncode == 2 and r.stdout == b"", (bad, r)
        assert len(r.stderr.splitlines()) == 1 and why in r.stderr.decode(), (bad, r.stderr)
    assert logban(*db, "allow", "add", "10.0.0.0/8", "--force").returncode == 0
    assert logban(*db, "allow", "add", "2001:DB8:0:0::7", "--for", "1h", "--reason", "why not").returncode == 0
    assert logban(*db, "allow", "add", "198.51.100.9", "--for", "soon").returncode == 2
    r = logban(*db, "allow", "list", "--json")
    got = [(e["target"], e["kind"], e["origin"]) for e in json.loads(r.stdout)]
    assert got == [("192.0.2.0/28", "network", "config"), ("*.mailout.example.com", "name", "config"),
                   ("10.0.0.0/8", "network", "store"), ("2001:db8::7", "address", "store")]
    r = logban(*db, "ban", "2001:db8::7")               # the live list guards `ban` too
    assert r.returncode == 2 and b"allow-listed" in r.stderr
    r = logban(*db, "allow", "remove", "192.0.2.0/28")
    assert r.returncode == 0 and b"stays allowed by the config" in r.stdout
    assert logban(*db, "allow", "remove", "2001:db8::7").returncode == 0
    r = logban(*db, "allow", "list")
    assert b"2001:db8::7" not in r.stdout and b"10.0.0.0/8" in r.stdout
