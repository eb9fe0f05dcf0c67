"""allow.resolve: a client's name is looked up off the daemon's loop, and slow or silent
reverse zones cost one bounded wait per address, not one per offence nor a stalled loop."""
from __future__ import annotations

import threading
import time

from logban.allow import PENDING, AllowList, Resolver
from logban.engine import Engine
from logban.parse import Offence
from logban.score import Policy
from logban.store import Store

T = time.time() - 3600       # an hour ago: stamps ahead of the clock are left out


def dnsbl(ip: str, t: float = T, line: int = 1) -> Offence:
    return Offence(t, ip, "postfix", "postfix-dnsbl", "dnsbl", 5.0, "mail.log", line, b"a line")


class SlowDNS:
    """Reverse zones an attacker controls: 203.0.113.x never answer in time, 2001:db8:66::x answer
    "mx.partner.example" (allow-listed) after a moment, everything else says no name at once."""

    def __init__(self, hang: float = 3.0) -> None:
        self.calls: list[str] = []
        self.hang = hang
        self.release = threading.Event()

    def __call__(self, ip: str, timeout: float) -> str | None:
        self.calls.append(ip)
        if ip.startswith("203.0.113."):
            self.release.wait(self.hang)
            return None
        if ip.startswith("2001:db8:66::"):
            time.sleep(0.2)
            return "mx.partner.example"
        return None


def engine(tmp_path, dns: SlowDNS, timeout: float = 1.0) -> Engine:
    allow = AllowList(names=["*.partner.example"], own=())
    return Engine(Store(f"sqlite:///{tmp_path / 'logban.db'}"), Policy(), allow, node="mx1", dry_run=False,
                  resolver=Resolver(timeout=timeout, lookup=dns), wait_names=False)


def wait_fresh(eng: Engine, want: int, limit: float) -> list:
    got, deadline = [], time.monotonic() + limit
    while len(got) < want and time.monotonic() < deadline:
        got += eng.fresh()
        time.sleep(0.01)
    return got


def test_a_silent_reverse_zone_does_not_hold_up_other_clients(tmp_path):
    dns = SlowDNS()
    eng = engine(tmp_path, dns)
    try:
        slow = [f"203.0.113.{i}" for i in range(1, 21)]           # 20 clients whose lookups hang
        t0 = time.monotonic()
        eng.add([dnsbl(ip, line=i) for i, ip in enumerate(slow)])
        eng.add([dnsbl("198.51.100.5", line=99)])                   # an ordinary client after them
        assert time.monotonic() - t0 < 0.5                          # the loop was never made to wait
        got = wait_fresh(eng, 1, 0.5)
        assert [d.target for d in got] == ["198.51.100.5"]          # decided as soon as its name is known
        assert time.monotonic() - t0 < 0.5
        assert eng.holding()
        # The silent ones are decided when their lookup's time (1 s) is up, not 20 x 3 s later.
        later = []
        while eng.holding() and time.monotonic() - t0 < 5:
            later += eng.fresh()
            time.sleep(0.01)
        later += eng.fresh()
        assert time.monotonic() - t0 < 2.5
        assert "203.0.113.0/24" in {d.target for d in later}, later      # no name: banned, as a network
        assert dns.calls.count("203.0.113.1") == 1
        eng.flush()
        with eng.store.read() as conn:
            import sqlalchemy as sa
            assert conn.execute(sa.text("SELECT count(*) FROM offences")).scalar() == 21
    finally:
        dns.release.set()
        eng.close()


def test_a_name_that_arrives_allows_the_client_and_later_lines_wait_behind_it(tmp_path):
    dns = SlowDNS()
    eng = engine(tmp_path, dns)
    try:
        partner = "2001:db8:66::25"
        eng.add([dnsbl(partner, line=1), dnsbl(partner, T + 1, line=2), dnsbl("2001:db8:5::1", line=3)])
        assert [d.target for d in eng.fresh()] == ["2001:db8:5::/64"]
        got = wait_fresh(eng, 1, 1.5)
        assert got == []                                           # the name came: allow-listed, never banned
        assert not eng.holding()
        assert eng.scorer.stats.allowed == 2                       # both of its offences, in order
        assert dns.calls.count(partner) == 1
    finally:
        dns.release.set()
        eng.close()


def test_no_name_and_timeouts_are_cached(tmp_path):
    dns = SlowDNS(hang=0.5)
    r = Resolver(timeout=0.1, lookup=dns, neg_ttl=60)
    try:
        assert r.names(["203.0.113.9", "198.51.100.9"]) == {"203.0.113.9": None, "198.51.100.9": None}
        assert r.names(["203.0.113.9", "198.51.100.9"]) == {"203.0.113.9": None, "198.51.100.9": None}
        assert r.lookup("203.0.113.9") is None
        assert dns.calls == ["203.0.113.9", "198.51.100.9"]       # each asked once
        # A lookup still running is not started twice; its answer, when late, is no name.
        assert r.lookup("203.0.113.10") is PENDING
        assert r.lookup("203.0.113.10") is PENDING
        time.sleep(0.15)
        assert r.lookup("203.0.113.10") is None
        assert dns.calls.count("203.0.113.10") == 1
    finally:
        dns.release.set()
        r.close()


def test_the_negative_cache_ends(tmp_path, monkeypatch):
    dns = SlowDNS()
    r = Resolver(timeout=0.5, lookup=dns, neg_ttl=60)
    now = [1000.0]
    import logban.allow as allow_mod
    monkeypatch.setattr(allow_mod.time, "monotonic", lambda: now[0])
    try:
        assert r.names(["198.51.100.9"]) == {"198.51.100.9": None}
        now[0] += 59
        r.names(["198.51.100.9"])
        assert dns.calls.count("198.51.100.9") == 1
        now[0] += 2
        r.names(["198.51.100.9"])
        assert dns.calls.count("198.51.100.9") == 2
    finally:
        r.close()
