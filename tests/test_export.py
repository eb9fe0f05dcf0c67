"""Exports against their real consumers: rbldnsd answers DNS queries for the zone, postmap finds the map's keys."""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import namedtuple

import pytest
from conftest import skip_or_fail

from logban.config import export_options as options_from
from logban.errors import UsageError
from logban.export import ExportOptions, render, write

Ban = namedtuple("Ban", "target kind expires", defaults=(None,))
BANS = [Ban("192.0.2.7", "dnsbl", 1_800_000_000.0), Ban("198.51.100.0/24", "relay_denied"),
        Ban("203.0.112.0/22", "manual"), Ban("2001:db8:1:2::/64", "auth_failed"), Ban("2001:db8::5", "manual"),
        Ban("2001:db8:5::/63", "bad_helo")]


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        skip_or_fail(f"needs {', '.join(missing)} (Debian: rbldnsd dnsutils postfix)")


def test_rbldnsd_zone_has_ipv4_only_with_the_kind_in_the_text():
    z = render(ExportOptions("rbldnsd"), BANS)
    body = [ln for ln in z.splitlines() if not ln.startswith(("#", ":"))]
    assert body == ["192.0.2.7 :127.0.0.2:Blocked by logban (dnsbl)",
                    "198.51.100.0/24 :127.0.0.2:Blocked by logban (relay_denied)",
                    "203.0.112.0/22 :127.0.0.2:Blocked by logban (manual)"]


def test_rbldnsd6_lists_64s_and_says_what_it_leaves_out():
    z = render(ExportOptions("rbldnsd6"), BANS).splitlines()
    assert [ln for ln in z if not ln.startswith(("#", ":"))] == ["2001:db8:1:2", "2001:db8:5:0", "2001:db8:5:1"]
    assert any("2001:db8::5" in ln and ln.startswith("#") for ln in z)


def test_postfix_cidr_postfix_hash_sendmail_plain():
    assert render(ExportOptions("plain"), BANS).split() == [
        "192.0.2.7", "198.51.100.0/24", "203.0.112.0/22", "2001:db8::5", "2001:db8:1:2::/64", "2001:db8:5::/63"]
    cidr = render(ExportOptions("postfix", action="554 5.7.1"), BANS)
    assert "2001:db8:1:2::/64 554 5.7.1 Blocked by logban (auth_failed)\n" in cidr
    h = render(ExportOptions("postfix-hash"), BANS)
    assert "203.0.115 REJECT Blocked by logban (manual)\n" in h and "198.51.100 REJECT" in h
    sm = render(ExportOptions("sendmail"), BANS)
    assert 'Connect:IPv6:2001:db8:1:2 ERROR:"550 Blocked by logban (auth_failed)"' in sm


def test_text_cannot_break_the_map_syntax():
    o = ExportOptions("rbldnsd", text="bad:{kind}\tx")
    line = [ln for ln in render(o, [Ban("192.0.2.7", "dnsbl")]).splitlines() if ln.startswith("192")][0]
    assert line == "192.0.2.7 :127.0.0.2:bad dnsbl x"


def test_write_is_atomic_and_only_on_change(tmp_path):
    o = ExportOptions("plain", tmp_path / "bans.txt")
    assert write(o, "192.0.2.7\n") is True
    ino = (tmp_path / "bans.txt").stat().st_ino
    assert write(o, "192.0.2.7\n") is False
    assert (tmp_path / "bans.txt").stat().st_ino == ino
    assert write(o, "192.0.2.8\n") is True
    assert (tmp_path / "bans.txt").read_text() == "192.0.2.8\n"
    assert [p.name for p in tmp_path.iterdir()] == ["bans.txt"]          # no temporary left behind


@pytest.mark.parametrize("table, key", [
    ({"format": "bind", "path": "/x"}, "export[0].format"), ({"format": "plain", "path": "x"}, "export[0].path"),
    ({"format": "plain", "path": "/x", "text": "{nope}"}, "export[0].text"),
    ({"format": "rbldnsd", "path": "/x", "a_record": "localhost"}, "export[0].a_record"),
    ({"format": "plain", "path": "/x", "mode": 1}, "export[0].mode")])
def test_bad_export_config_names_the_key(table, key):
    with pytest.raises(UsageError, match=key.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        options_from([table], "c.toml")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(port: int, name: str, rtype: str = "A") -> list[str]:
    # dig on the real clock: under libfaketime (the shifted-clock CI run) its threads hang.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    r = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=2", "+tries=2", name, rtype],
                       capture_output=True, text=True, timeout=15, env=env)
    return r.stdout.split("\n")[:-1]


def _rev4(ip: str) -> str:
    return ".".join(reversed(ip.split(".")))


def _rev6(ip: str) -> str:
    return ".".join(reversed(ipaddress.ip_address(ip).exploded.replace(":", "")))


def test_real_rbldnsd_serves_the_exported_zones(tmp_path, logban):
    need("rbldnsd", "dig")
    db = f"sqlite:///{tmp_path}/x.db"
    for t in ("192.0.2.7", "198.51.100.0/24", "2001:db8:1:2::/64"):
        assert logban("--db", db, "ban", t).returncode == 0
    assert logban("--db", db, "ban", "203.0.113.9", "--dry-run").returncode == 0       # never exported
    zones = tmp_path / "zones"
    zones.mkdir()
    for fmt, name in (("rbldnsd", "zone4"), ("rbldnsd6", "zone6")):
        r = logban("--db", db, "export", "--format", fmt, "-o", str(zones / name))
        assert r.returncode == 0, r.stderr
    os.chmod(tmp_path, 0o755)
    os.chmod(zones, 0o755)
    port = _free_port()
    p = subprocess.Popen(["rbldnsd", "-n", "-q", "-b", f"127.0.0.1/{port}", "-w", str(zones),
                          "bl.example:ip4set:zone4", "bl.example:ip6tset:zone6"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _query(port, f"{_rev4('192.0.2.7')}.bl.example"):
            assert time.monotonic() < deadline and p.poll() is None, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.1)
        assert _query(port, f"{_rev4('192.0.2.7')}.bl.example") == ["127.0.0.2"]
        assert _query(port, f"{_rev4('192.0.2.7')}.bl.example", "TXT") == ['"Blocked by logban (manual)"']
        assert _query(port, f"{_rev4('198.51.100.77')}.bl.example") == ["127.0.0.2"]
        assert _query(port, f"{_rev4('192.0.2.8')}.bl.example") == []
        assert _query(port, f"{_rev4('203.0.113.9')}.bl.example") == []          # dry-run ban
        assert _query(port, f"{_rev6('2001:db8:1:2::abcd')}.bl.example") == ["127.0.0.2"]
        assert _query(port, f"{_rev6('2001:db8:1:3::1')}.bl.example") == []
    finally:
        p.terminate()
        p.wait(10)


def test_real_postmap_finds_banned_addresses(tmp_path, logban):
    need("postmap")
    db = f"sqlite:///{tmp_path}/x.db"
    for t in ("192.0.2.7", "198.51.100.0/24", "2001:db8:1:2::/64"):
        assert logban("--db", db, "ban", t).returncode == 0
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text("")
    hashmap, cidr = tmp_path / "access", tmp_path / "access.cidr"
    assert logban("--db", db, "export", "--format", "postfix-hash", "-o", str(hashmap)).returncode == 0
    assert logban("--db", db, "export", "--format", "postfix", "-o", str(cidr), "--action", "554 5.7.1").returncode == 0

    def q(key: str, table: str) -> str:
        return subprocess.run(["postmap", "-c", str(conf), "-q", key, table], capture_output=True, text=True).stdout.strip()

    assert q("192.0.2.7", f"hash:{hashmap}") == "REJECT Blocked by logban (manual)"
    assert q("198.51.100", f"hash:{hashmap}").startswith("REJECT")            # the key smtpd tries for .77
    assert q("192.0.2.8", f"hash:{hashmap}") == ""
    assert q("198.51.100.77", f"cidr:{cidr}") == "554 5.7.1 Blocked by logban (manual)"
    assert q("2001:db8:1:2::abcd", f"cidr:{cidr}").startswith("554")
    assert q("2001:db8:1:3::1", f"cidr:{cidr}") == ""


def test_real_makemap_builds_the_sendmail_access_map(tmp_path, logban):
    """Sendmail's own makemap (Debian's sendmail-bin conflicts with postfix, so .ci/run
    unpacks the package without installing it and names the binary in LOGBAN_MAKEMAP),
    run by `logban export` as on a sendmail host; the map read back with `makemap -u`."""
    real = os.environ.get("LOGBAN_MAKEMAP") or shutil.which("makemap")
    if not real or not os.access(real, os.X_OK):
        skip_or_fail("needs sendmail's makemap (LOGBAN_MAKEMAP=path; .ci/run unpacks Debian's sendmail-bin)")
    # Without a sendmail.cf (no sendmail here) makemap needs -C: a shim in front on PATH.
    (tmp_path / "sendmail.cf").write_text("")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "makemap").write_text(f'#!/bin/sh\nexec "{real}" -C "{tmp_path}/sendmail.cf" "$@"\n')
    (shim / "makemap").chmod(0o755)
    db = f"sqlite:///{tmp_path}/x.db"
    for t in ("192.0.2.7", "198.51.100.0/24", "2001:db8:1:2::/64"):
        assert logban("--db", db, "ban", t).returncode == 0
    access = tmp_path / "access"
    from conftest import ROOT
    r = subprocess.run([sys.executable, "-m", "logban", "--backend", "none", "--db", db, "export", "--format",
                        "sendmail", "-o", str(access)], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{shim}:{os.environ['PATH']}"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "access.db").exists()
    dump = subprocess.run([shim / "makemap", "-u", "hash", str(access)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    got = dict(ln.split("\t", 1) for ln in dump.stdout.splitlines())
    assert got == {"connect:192.0.2.7": 'ERROR:"550 Blocked by logban (manual)"',
                   "connect:198.51.100": 'ERROR:"550 Blocked by logban (manual)"',
                   "connect:ipv6:2001:db8:1:2": 'ERROR:"550 Blocked by logban (manual)"'}
