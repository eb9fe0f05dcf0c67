import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logban import report
from logban.parse import Offence
from logban.report import ScanSummary


def test_distributed_attack_keeps_the_summary_bounded_and_linear(monkeypatch):
    monkeypatch.setattr(report, "TRACK_MAX", 100)
    s = ScanSummary()
    shrinks = []
    real = s._shrink
    monkeypatch.setattr(s, "_shrink", lambda: (shrinks.append(1), real()))
    heavy = [Offence(1.0, "192.0.2.7", "postfix", "r", "dnsbl", 5.0, "f", 1, b"")] * 50
    s.add(heavy)
    s.add([Offence(2.0, f"2001:db8::{i:x}", "postfix", "r", "auth_failed", 1.0, "f", i, b"") for i in range(10_000)])
    assert len(s.clients) <= 101
    # One shrink per TRACK_MAX/2 new addresses, not one per address once the limit is reached.
    assert len(shrinks) <= 10_000 // 50 + 1
    assert s.approximate
    assert s.top(1)[0][0] == "192.0.2.7" and s.top(1)[0][1].count == 50
    assert sum(s.by_kind.values()) == 10_050


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=11, max_size=40))
def test_a_shrink_keeps_the_most_active_half_in_the_order_a_stable_sort_gives(counts):
    """Ties keep their order: it decides which clients the next shrink keeps."""
    s = ScanSummary()
    s.clients = {f"192.0.2.{i}": report._Client(n, 1.0, 1.0, "dnsbl") for i, n in enumerate(counts)}
    expected = sorted(s.clients.items(), key=lambda kv: kv[1].count, reverse=True)[:5]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "TRACK_MAX", 10)
        s._shrink()
    assert list(s.clients.items()) == expected


def test_safe_escapes_what_a_terminal_acts_on_and_keeps_printable_text():
    from logban.report import safe
    assert safe(b"\x1b[2J\x1b]0;owned\x07") == "\\x1b[2J\\x1b]0;owned\\x07"
    assert safe("tab\there\nnl\r\x00\x7f") == "tab\\x09here\\x0anl\\x0d\\x00\\x7f"
    assert safe("\u0085\u009b") == "\\u0085\\u009b"                     # C1 controls
    assert safe(b"\xc2\x9b") == "\\u009b" and safe(b"\x9b\xff") == "\\x9b\\xff"   # C1 vs invalid UTF-8
    assert safe("\u202eevil\u2028") == "\\u202eevil\\u2028"              # bidi override, line separator
    assert safe("caf\u00e9 \u65e5\u672c \u2603 [192.0.2.7] <a@b>") == "caf\u00e9 \u65e5\u672c \u2603 [192.0.2.7] <a@b>"
    assert safe(b"caf\xc3\xa9") == "caf\u00e9"
    assert safe("mail\udcff.log") == "mail\\xff.log"                    # a file name's undecodable byte
    assert safe(None) == "" and safe(3) == "3"


def test_allow_filter_leaves_allow_listed_clients_out_of_the_summary():
    from logban.allow import AllowList
    from logban.parse import ParseStats
    from logban.report import AllowFilter, as_json, human
    keep = AllowFilter(AllowList(["198.51.100.0/24"], ["*.mailout.example.com"], own=["192.0.2.2"]))
    offs = [Offence(1.0, ip, "sendmail", "r", "unknown_user", 2.0, "f", i, b"", name)
            for i, (ip, name) in enumerate([("127.0.0.1", "localhost"), ("::1", None), ("192.0.2.2", None),
                                             ("198.51.100.9", None), ("203.0.113.9", "out-1.mailout.example.com"),
                                             ("192.0.2.66", None), ("192.0.2.66", "bot.example.biz")])]
    s = ScanSummary(files=["f"])
    s.add(keep(offs))
    s.allow_listed = keep.allow_listed
    assert keep.allow_listed == 5 and list(s.clients) == ["192.0.2.66"] and s.by_kind == {"unknown_user": 2}
    rep = as_json(s, ParseStats(lines=7), 10)
    assert rep["ignored"] == {"allow_listed": 5} and [t["ip"] for t in rep["top"]] == ["192.0.2.66"]
    out = human(s, ParseStats(lines=7), 10)
    assert "Ignored: allow-listed 5 " in out and "127.0.0.1" not in out
    assert "Ignored" not in human(ScanSummary(files=["f"]), ParseStats(), 10)


def test_allow_filter_asks_once_per_address_and_hands_back_a_batch_with_nobody_allowed():
    from logban.allow import AllowList
    from logban.report import AllowFilter
    allow = AllowList(["198.51.100.0/24"], own=())
    asked = []
    real = allow.address_allowed
    allow.address_allowed = lambda ip: (asked.append(ip), real(ip))[1]
    keep = AllowFilter(allow)
    offs = [Offence(1.0, ip, "postfix", "r", "dnsbl", 5.0, "f", i, b"", "x.mailout.example.com")
            for i, ip in enumerate(["192.0.2.1", "198.51.100.9", "192.0.2.1", "198.51.100.9", "192.0.2.3"])]
    assert [o.line for o in keep(offs)] == [0, 2, 4] and keep.allow_listed == 2
    assert sorted(asked) == ["192.0.2.1", "192.0.2.3", "198.51.100.9"]
    # No name patterns: a name never leaves an offence out; nobody allowed: the batch as it came.
    clean = offs[::2]
    assert keep(clean) is clean and keep.allow_listed == 2
    named = AllowFilter(AllowList([], ["*.mailout.example.com"], own=()))
    assert named(clean) == [] and named.allow_listed == 3


def test_allow_filter_takes_the_scorers_word_for_an_address_it_scored_and_asks_only_for_the_others():
    from logban.allow import AllowList
    from logban.report import AllowFilter
    from logban.score import Policy, Scorer
    allow = AllowList(["198.51.100.0/24"], own=())
    asked = []
    real = allow.address_allowed
    allow.address_allowed = lambda ip: (asked.append(ip), real(ip))[1]
    scorer = Scorer(Policy(), allow)
    offs = [Offence(1.0, ip, "postfix", "r", "dnsbl", 1.0, "f", i, b"")
            for i, ip in enumerate(["192.0.2.1", "198.51.100.9", "192.0.2.3", "198.51.100.7"])]
    for o in offs[:2]:
        scorer.count(o)
    assert [scorer.allowed_lately(o.ip) for o in offs] == [False, True, None, None]
    keep = AllowFilter(allow, scorer.allowed_lately)
    assert [o.line for o in keep(offs)] == [0, 2] and keep.allow_listed == 2
    assert sorted(asked) == ["192.0.2.3", "198.51.100.7"]


def test_a_client_counts_each_kind_and_its_first_and_last_offence_in_any_order():
    s = ScanSummary()
    s.add([Offence(t, "192.0.2.7", "postfix", "r", kind, 5.0, "f", 1, b"")
           for t, kind in [(5.0, "dnsbl"), (3.0, "dnsbl"), (9.0, "bad_helo"), (1.0, "dnsbl"), (7.0, "bad_helo")]])
    s.add([Offence(0.5, "192.0.2.7", "postfix", "r", "pregreet", 5.0, "f", 1, b""),
           Offence(2.0, "192.0.2.8", "postfix", "r", "dnsbl", 5.0, "f", 1, b""),
           Offence(4.0, "192.0.2.8", "postfix", "r", "dnsbl", 5.0, "f", 1, b"")])
    c = s.clients["192.0.2.7"]
    assert (c.count, c.first, c.last) == (6, 0.5, 9.0)
    assert c.kind_counts() == [("dnsbl", 3), ("bad_helo", 2), ("pregreet", 1)]
    one = s.clients["192.0.2.8"]
    assert (one.count, one.first, one.last, one.kind_counts()) == (2, 2.0, 4.0, [("dnsbl", 2)])
