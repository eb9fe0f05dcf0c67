"""The live allow-list's pure parts: which targets `logban allow` takes, rows read back."""
from __future__ import annotations

import time
from types import SimpleNamespace as Row

import pytest

from logban.config import Config
from logban.liveallow import Live, entries_in_force, merged, newly_allowed, parse_entry


@pytest.mark.parametrize("text, want", [
    ("192.0.2.7", ("192.0.2.7", "address")), (" 198.51.100.0/24 ", ("198.51.100.0/24", "network")),
    ("2001:DB8::7", ("2001:db8::7", "address")), ("::ffff:198.51.100.1", ("198.51.100.1", "address")),
    ("2001:db8::/48", ("2001:db8::/48", "network")), ("*.Partner.Example.", ("*.partner.example", "name")),
    ("mailout-*.example.com", ("mailout-*.example.com", "name")), ("partner.example", ("partner.example", "name")),
    ("cafe.face", ("cafe.face", "name")),
])
def test_targets_taken(text, want):
    assert parse_entry(text) == want


@pytest.mark.parametrize("text", ["0.0.0.0/0", "::/0", "10.0.0.0/8", "::/1", "2001:db8::/32", "198.51.100.1/24",
                                  "*", "*.example", "mail.*.com", "ex?mple.*", "1.2.3", "dead:beef", "x y", "",
                                  "a\x00b.example", "*.partner.example\nx"])
def test_targets_refused(text):
    with pytest.raises(ValueError):
        parse_entry(text)


def test_force_allows_wide_networks_never_everything():
    assert parse_entry("10.0.0.0/8", force=True) == ("10.0.0.0/8", "network")
    with pytest.raises(ValueError):
        parse_entry("0.0.0.0/0", force=True)


def test_rows_read_back_and_what_they_cover():
    now = time.time()
    rows = [Row(target="198.51.100.0/24", reason="", created=1.0, expires=None, added_by="a"),
            Row(target="*.partner.example", reason=None, created=2.0, expires=now + 60, added_by=None),
            Row(target="203.0.113.9", reason="", created=3.0, expires=now - 1, added_by=""),     # over
            Row(target="0.0.0.0/0", reason="", created=4.0, expires=None, added_by=""),          # by hand: never
            Row(target="not a target", reason="", created=5.0, expires=None, added_by="")]
    got = entries_in_force(rows, now)
    assert [(e.target, e.kind) for e in got] == [("198.51.100.0/24", "network"), ("*.partner.example", "name")]
    allow = merged(Config(), got)
    bans = [Row(target="198.51.100.7", name=None), Row(target="203.0.113.5", name="mx1.partner.example"),
            Row(target="203.0.113.0/24", name="mx1.partner.example"), Row(target="203.0.113.6", name="evil.example"),
            Row(target="2001:db8:9::/48", name=None), Row(target="198.51.100.0/23", name=None),
            Row(target="bogus", name="mx1.partner.example")]
    # a network that holds an allowed one is covered; a network is never allowed by a name
    assert newly_allowed(allow, bans) == ["198.51.100.0/23", "198.51.100.7", "203.0.113.5"]


class FakeStore:
    def __init__(self, rows):
        self.rows = rows

    def allow_entries(self, now):
        return self.rows


def test_live_notices_additions_removals_and_ends():
    now = time.time()
    store = FakeStore([Row(target="192.0.2.9", reason="", created=1.0, expires=now + 5, added_by="")])
    live = Live()
    assert live.refresh(store, now) and live.refresh(store, now + 1)    # not honoured yet: said again
    live.done()
    assert not live.refresh(store, now + 1)
    assert live.refresh(store, now + 6) and live.entries == ()          # its time is over
    live.done()
    store.rows = []
    assert not live.refresh(store, now + 7)
