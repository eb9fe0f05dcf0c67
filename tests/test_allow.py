"""The allow-list: networks, name patterns, this host, forward-confirmed lookups."""
import ipaddress
import json
import socket
import subprocess
import time
from collections import namedtuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logban.allow import (
    NEVER,
    PENDING,
    TIME_MAX,
    AllowList,
    Resolver,
    ban_target,
    canonical_num,
    check_name_pattern,
    forward_confirmed,
    host_addresses,
    ip_num,
    network_text,
    parse_network,
    unbannable,
    valid_target,
)


def test_networks_and_targets():
    a = AllowList(["192.0.2.0/25", "2001:db8:aa::/48", "198.51.100.7"], own=())
    assert a.address_allowed("192.0.2.100") and not a.address_allowed("192.0.2.200")
    assert a.address_allowed("2001:db8:aa:1::5") and not a.address_allowed("2001:db8:ab::5")
    assert a.address_allowed("127.0.0.2") and a.address_allowed("::1")          # always
    assert a.target_allowed("198.51.100.0/24")          # a network holding an allowed address is refused
    assert not a.target_allowed("203.0.113.0/24")


def test_name_patterns():
    a = AllowList(names=["*.mailout.example.com", "mailout-*.example.com"], own=())
    assert a.name_allowed("a1.mailout.example.com") and a.name_allowed("MAILOUT-7.example.com.")
    assert not a.name_allowed("mailout.example.com.attacker.example") and not a.name_allowed(None)
    for bad in ("a b", "*", "x..y", ""):
        with pytest.raises(ValueError):
            check_name_pattern(bad)


def test_bad_networks():
    for bad in ("192.0.2.0/33", "192.0.2.1/24", "example.com", "::g"):
        with pytest.raises(ValueError):
            parse_network(bad)
    assert str(parse_network("::ffff:192.0.2.1")) == "192.0.2.1/32"


def test_host_addresses_include_loopback():
    assert "127.0.0.1" in host_addresses()


def test_forward_confirmed_lookup_of_localhost():
    assert forward_confirmed("127.0.0.1", 2.0) in ("localhost", "localhost.localdomain")


def test_resolver_caches_and_bounds_time():
    calls = []

    def slow(ip, timeout):
        calls.append(ip)
        if ip == "192.0.2.1":
            time.sleep(1.0)
        return "mx.example.com"

    r = Resolver(timeout=0.2, lookup=slow)
    t0 = time.monotonic()
    got = r.names(["192.0.2.1", "192.0.2.2"])
    assert time.monotonic() - t0 < 0.8
    assert got == {"192.0.2.1": None, "192.0.2.2": "mx.example.com"}
    r.names(["192.0.2.2"])
    assert calls.count("192.0.2.2") == 1
    r.close()


# ---- what can ever be a target, and the gate between the store and the kernel -------------


Row = namedtuple("Row", "target name", defaults=(None,))


def test_ban_target_is_strict_and_canonical():
    assert ban_target("192.0.2.1") == "192.0.2.1" and ban_target("2001:DB8::1") == "2001:db8::1"
    assert ban_target("::ffff:192.0.2.1") == "192.0.2.1" and ban_target("2001:db8::/64") == "2001:db8::/64"
    for bad in ("198.51.100.1 }\ndelete table inet hostfw", "192.0.2.1/24", "2001:db8::1%eth0", " 192.0.2.1",
                "192.0.2.1\n", "", "x" * 100, "192.0.2.0/24 timeout 1s", "add 192.0.2.1"):
        with pytest.raises(ValueError):
            ban_target(bad)


@pytest.mark.parametrize("target", ["::/64", "::1", "::", "::192.0.2.1", "::ffff:0:0/96", "ff02::1", "fe80::/64",
                                    "fe80::1", "224.0.0.0/4", "239.1.1.1", "169.254.0.1", "0.0.0.0", "0.0.0.0/0",
                                    "::/0", "127.0.0.1", "255.255.255.255", "192.0.0.0/2"])
def test_special_addresses_are_never_targets(target):
    with pytest.raises(ValueError):
        ban_target(target)


def test_unbannable_addresses_and_networks():
    assert unbannable(ipaddress.ip_address("2001:db8::1")) is None
    assert "unspecified" in unbannable(ipaddress.ip_network("::/64"))
    assert "IPv4-compatible" in unbannable(ipaddress.ip_address("::c000:201"))
    assert "multicast" in unbannable(ipaddress.ip_address("ff02::1"))
    assert unbannable(ipaddress.ip_network("198.51.100.0/24")) is None


def test_screen_lets_through_only_what_this_node_may_enforce():
    a = AllowList(["192.0.2.0/28"], ["*.partner.example"], own=["198.51.100.53"])
    rows = [Row("203.0.113.9"), Row("2001:db8:5::/64"),
            Row("198.51.100.1 }\ndelete table inet hostfw"), Row("203.0.113.0/24 timeout 1s"),
            Row("192.0.2.5"), Row("192.0.2.0/24"), Row("198.51.100.0/24"), Row("::/64"), Row("2001:DB8::1"),
            Row("203.0.113.10", "mx1.partner.example"), Row("203.0.113.11", "partner.example.evil.example")]
    ok, refused = a.screen(rows)
    assert [r.target for r in ok] == ["203.0.113.9", "2001:db8:5::/64", "203.0.113.11"]
    assert [t for t, _ in refused] == [r.target for r in rows if r not in ok]
    why = dict(refused)
    assert "allow-listed" in why["192.0.2.0/24"] and "allow-listed" in why["198.51.100.0/24"]
    assert "partner.example" in why["203.0.113.10"] and "2001:db8::1" in why["2001:DB8::1"]
    assert a.screen(rows) == (ok, refused)          # the same verdicts from the cache


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), max_size=6),
       st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_covers_agrees_with_ipaddress(allowed, num, plen):
    nets = [str(ipaddress.ip_network((n, p), strict=False)) for n, p in allowed]
    a = AllowList(nets, own=())
    q = ipaddress.ip_network((num, plen), strict=False)
    want = any(q.overlaps(ipaddress.ip_network(n)) for n in [*nets, "127.0.0.0/8"])
    assert a.covers(4, int(q.network_address), plen) == want
    assert any(int(q.network_address) >> shift in s for shift, s in a.cover_tests(4, plen)) == want


def test_this_hosts_own_addresses_are_allowed():
    own = AllowList(own=["203.0.113.25", "2001:db8:ff::25"])
    assert own.address_allowed("203.0.113.25") and own.address_allowed("2001:db8:ff::25")
    assert own.target_allowed("203.0.113.0/24") and own.target_allowed("2001:db8:ff::/64")   # holds one: refused
    assert not own.address_allowed("203.0.113.26")
    # By default, the kernel's: every address of this host, not only loopback.
    default = AllowList()
    mine = [a for a in host_addresses() if not ipaddress.ip_address(a).is_loopback]
    assert all(default.address_allowed(a) for a in mine)
    assert not any(AllowList(own=()).address_allowed(a) for a in mine)


# ---- the gate against a reference built on ipaddress (issue 14: its surviving mutants) -----


GATE_ALLOW = ["198.51.100.128/25", "2001:db8:aa::/48"]
GATE_OWN = ["203.0.113.1"]
GATE_PARTNERS = ["198.51.101.7", "2001:db8:bb::7"]
Ban = namedtuple("Ban", "target expires name", defaults=(None, None))


def _canonical(t: str) -> str:
    n = ipaddress.ip_network(t, strict=True)
    if isinstance(n, ipaddress.IPv6Network) and n.network_address.ipv4_mapped is not None:
        raise ValueError("mapped")
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def _reference(b: Ban) -> bool:
    """Whether the gate must let `b` through, from ipaddress alone."""
    e = b.expires
    if e is not None and not (isinstance(e, (int, float)) and 0 <= e <= TIME_MAX):
        return False
    try:
        if _canonical(b.target) != b.target:
            return False
    except ValueError:
        return False
    n = ipaddress.ip_network(b.target)
    nets = [ipaddress.ip_network(x) for x in [*GATE_ALLOW, *GATE_OWN, *AllowList.ALWAYS]] + list(NEVER)
    if any(n.version == m.version and n.overlaps(m) for m in nets):
        return False
    # a network holding a partner is refused; the partner's own address is judged by the row's name
    if n.prefixlen < n.max_prefixlen and any(
            ipaddress.ip_address(p) in n for p in GATE_PARTNERS if ipaddress.ip_address(p).version == n.version):
        return False
    return not (b.name and b.name.lower().rstrip(".").endswith(".partner.example"))


_v4 = st.builds(lambda n, p: (n, p, 4), st.integers(0, 2**32 - 1) | st.integers(0xC6336400, 0xC63365FF)
                | st.integers(0xCB007100, 0xCB0071FF), st.integers(0, 33))
_v6 = st.builds(lambda n, p: (n, p, 6), st.integers(0, 2**128 - 1) | st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + (1 << 88))
                | st.integers(0, 2**48) | st.integers(0xFFFF << 32, (0xFFFF << 32) + 2**32) | st.just(1)
                | st.integers(0xFE80 << 112, (0xFE80 << 112) + 2**64), st.integers(0, 129))


def _text(v) -> str:
    num, plen, ver = v
    a = str(ipaddress.IPv4Address(num) if ver == 4 else ipaddress.IPv6Address(num))
    return a if plen > (32 if ver == 4 else 128) else f"{a}/{plen}"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.one_of(_v4, _v6).map(_text) | st.sampled_from(
    ["198.51.100.7/32", "2001:DB8::1", "198.51.101.7", "2001:db8:bb::7", "2001:db8:bb::/48", "2001:db8::0001", "IPv6:2001:db8::1", "198.051.100.7", " 198.51.100.7",
     "::ffff:198.51.100.7", "198.51.100.1/24", "2001:db8:5::/64", "203.0.113.0/24", "198.51.101.0/24"]),
    st.one_of(st.none(), st.sampled_from([0, -1, 1.5, TIME_MAX, TIME_MAX + 1, "soon", float("nan")])),
    st.one_of(st.none(), st.sampled_from(["mx1.partner.example", "MX2.Partner.Example.", "partner.example.evil.example"]))),
    max_size=8))
def test_the_gate_agrees_with_ipaddress(rows):
    a = AllowList(GATE_ALLOW, ["*.partner.example"], own=GATE_OWN)
    bans = [Ban(t, e, n) for t, e, n in rows]
    for _ in range(2):                                   # and again from its cache
        ok, refused = a.screen(bans, GATE_PARTNERS)
        assert [b for b in bans if _reference(b)] == ok
        assert [b.target for b in bans if not _reference(b)] == [t for t, _ in refused]


@given(st.one_of(_v4, _v6))
def test_canonical_num_accepts_exactly_the_canonical_spelling(v):
    num, plen, ver = v
    if ver == 6 and num >> 32 in (0, 0xFFFF):
        return          # ::/96 and ::ffff:0:0/96: the C printer writes their end as IPv4; never targets anyway
    t = _text(v)
    bits = 32 if ver == 4 else 128
    got = canonical_num(t)
    if plen > bits:
        assert got == (ver, num, bits)
    elif plen == bits or num & ((1 << (bits - plen)) - 1):
        assert got is None                                # /32, /128 and host bits are not how logban writes them
    else:
        assert got == (ver, num, plen)
    assert canonical_num(t.upper() if ver == 6 and any(c.isalpha() for c in t) else t + " ") is None


def test_parse_network_reads_sendmail_and_mapped_spellings():
    assert parse_network("IPv6:2001:db8::1") == ipaddress.ip_network("2001:db8::1/128")
    assert parse_network("ipv6:2001:db8::/48") == ipaddress.ip_network("2001:db8::/48")
    assert parse_network("::ffff:198.51.100.0/120") == ipaddress.ip_network("198.51.100.0/24")
    assert parse_network("::ffff:0:0/96") == ipaddress.ip_network("0.0.0.0/0")
    assert parse_network("198.51.100.7/24", strict=False) == ipaddress.ip_network("198.51.100.0/24")


def test_a_network_next_to_an_allowed_one_may_be_banned():
    a = AllowList(["198.51.100.128/25", "2001:db8:aa::/48"], own=())
    assert not a.target_allowed("198.51.100.0/25") and a.target_allowed("198.51.100.0/24")
    assert not a.target_allowed("2001:db8:a9::/48") and not a.target_allowed("2001:db8:ab::/48")
    assert not a.covers(4, int(ipaddress.ip_address("198.51.100.0")), 25)


def test_the_gate_reads_a_ban_end_from_1970_to_9999():
    a = AllowList(own=())
    bans = [Ban("198.51.100.1", e) for e in (0, -1, TIME_MAX, TIME_MAX + 1, None, 1.5, "soon")]
    ok, refused = a.screen(bans)
    assert [b.expires for b in ok] == [0, TIME_MAX, None, 1.5]
    assert len(refused) == 3 and all("no time" in why for _, why in refused)


def test_the_gate_remembers_verdicts_per_target_and_name():
    a = AllowList(names=["*.partner.example"], own=())
    rows = [Row("203.0.113.10", "mx1.partner.example"), Row("203.0.113.10"), Row("203.0.113.10", "x.other.example")]
    for _ in range(2):
        ok, refused = a.screen(rows)
        assert ok == rows[1:] and [t for t, _ in refused] == ["203.0.113.10"]
    ok, refused = a.screen(list(reversed(rows)))
    assert ok == [rows[2], rows[1]]


def test_a_name_that_is_no_text_counts_as_no_name():
    """SQLite keeps whatever a writer put in offenders.name: a BLOB (bytes) or a number came
    back as such and stopped the screen, and so every firewall sync and export, with a
    TypeError; `partners` matches a BLOB with LIKE, so it reached the big-sender check too."""
    a = AllowList(names=["*.example.com"], big=["*.bigmail.example"], own=[])
    rows = [Row("198.51.100.7", b"mx.example.com"), Row("198.51.100.8", 42), Row("198.51.100.9", "mx.example.com")]
    ok, refused = a.screen(rows)
    assert [r.target for r in ok] == ["198.51.100.7", "198.51.100.8"]
    assert refused == [("198.51.100.9", "allow-listed name mx.example.com")]
    assert not a.name_allowed(b"mx.example.com") and a.big_sender(b"x.bigmail.example") is None


# ---- the integer membership check against ipaddress (issue 18) -----------------------------


def _spellings(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    """Ways a log, a store row or a user may write the address: ipaddress's own, the exploded
    form, upper case; an IPv4 address also as IPv4-mapped IPv6, dotted and in hex."""
    forms = [str(a), a.exploded, str(a).upper()]
    if a.version == 4:
        mapped = ipaddress.IPv6Address(0xFFFF << 32 | int(a))
        forms += [f"::ffff:{a}", str(mapped), mapped.exploded]
    return st.sampled_from(forms)


@st.composite
def _nets_and_address(draw):
    """Allow-list entries (v4, v6, IPv4-mapped v6 written as such) and an address near one of
    them, so that it falls inside about as often as not."""
    entries, nums = [], []
    for _ in range(draw(st.integers(1, 6))):
        v = draw(st.sampled_from([4, 6, 6]))
        bits = 32 if v == 4 else 128
        num = draw(st.integers(0, 2**bits - 1))
        plen = draw(st.integers(0 if v == 4 else 8, bits))
        num = num >> (bits - plen) << (bits - plen)
        if v == 4 and draw(st.booleans()):
            entries.append(f"::ffff:{ipaddress.IPv4Address(num)}/{96 + plen}")   # read as IPv4
        else:
            entries.append(f"{ipaddress.ip_address(num) if v == 4 else ipaddress.IPv6Address(num)}/{plen}")
        nums.append((v, num, bits - plen))
    v, num, host = draw(st.sampled_from(nums))
    bits = 32 if v == 4 else 128
    num = (num ^ draw(st.integers(0, 2 ** min(host + 2, bits) - 1))) & (2**bits - 1)
    a = ipaddress.IPv4Address(num) if v == 4 else ipaddress.IPv6Address(num)
    return entries, draw(_spellings(a))


@settings(max_examples=400, deadline=None)
@given(_nets_and_address())
def test_address_allowed_agrees_with_ipaddress(case):
    entries, text = case
    allow = AllowList(entries, own=())
    want = ipaddress.ip_address(text)        # an IPv4-mapped address stays IPv6, as it always did
    nets = [parse_network(n) for n in (*AllowList.ALWAYS, *entries)]
    assert allow.address_allowed(text) is any(want in n for n in nets)
    assert ip_num(text) == (want.version, int(want))
    assert allow.address_allowed(text) is allow.address_allowed(text)     # the cached answer too


@settings(max_examples=300, deadline=None)
@given(_nets_and_address(), st.integers(0, 128))
def test_target_allowed_agrees_with_ipaddress(case, plen):
    entries, text = case
    allow = AllowList(entries, own=())
    a = ipaddress.ip_address(text)
    target = ipaddress.ip_network((a, min(plen, a.max_prefixlen)), strict=False)
    nets = [parse_network(n) for n in (*AllowList.ALWAYS, *entries)]
    assert allow.target_allowed(str(target)) is any(n.version == target.version and n.overlaps(target) for n in nets)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 2**48 - 1), st.integers(0, 2**32 - 1).map(lambda n: 0xFFFF << 32 | n),
                 st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x2001]), min_size=8, max_size=8).map(
                     lambda ws: sum(w << (16 * i) for i, w in enumerate(ws)))),
       st.integers(0, 128))
def test_network_text_is_what_ipaddress_writes(num, plen):
    """inet_ntop where it writes what ipaddress writes; ipaddress where it would write a dotted form."""
    num = num >> (128 - plen) << (128 - plen)
    assert network_text(6, num, plen) == str(ipaddress.IPv6Network((num, plen)))
    v4 = num >> 96
    assert network_text(4, v4 >> (32 - min(plen, 32)) << (32 - min(plen, 32)), min(plen, 32)) == \
        str(ipaddress.IPv4Network((v4, min(plen, 32)), strict=False))


def test_address_allowed_builds_no_address_object(monkeypatch):
    """The hot path of a distributed attack: a new address every line, checked as a number."""
    allow = AllowList(["192.0.2.0/25", "2001:db8:aa::/48", "::ffff:198.51.100.0/120"], own=())

    def boom(*a, **k):
        raise AssertionError("an ipaddress object per address")
    monkeypatch.setattr(ipaddress.IPv4Address, "__init__", boom)
    monkeypatch.setattr(ipaddress.IPv6Address, "__init__", boom)
    got = [allow.address_allowed(a) for a in ("192.0.2.1", "192.0.2.200", "2001:db8:aa:1::5", "2001:db8:ab::5",
                                                "198.51.100.9", "::ffff:198.51.100.9", "::1")]
    assert got == [True, False, True, False, True, False, True]


# ---- issue 14: mutants of allow.py that survived the tests above ---------------------------


def _valid_reference(t: str) -> bool:
    try:
        if _canonical(t) != t:
            return False
    except ValueError:
        return False
    n = ipaddress.ip_network(t)
    return not any(n.version == m.version and n.overlaps(m) for m in NEVER)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_v4, _v6).map(_text) | st.sampled_from(
    ["255.255.255.254", "1.2.3.4", "2.0.0.0/8", "126.255.255.255", "128.0.0.0", "223.255.255.255", "240.0.0.0/4",
     "169.255.0.1", "169.253.255.255", "fd00::1", "fc00::/7", "fe00::/9", "fec0::1", "2000::/3", "4000::/2", "::2:0:0",
     "1::", "255.255.255.255", "0.0.0.0/8", "::ffff:0:0/96", "::/96", "fe80::/10"]))
def test_valid_target_agrees_with_ipaddress(t):
    """A store row's target is read by valid_target (engine, export, live allow-list): a
    neighbour of a special network (255.255.255.254, fd00::/8) is a target, the network itself is not."""
    assert valid_target(t) == _valid_reference(t)


def test_what_is_no_text_is_no_target():
    for bad in (None, 42, b"192.0.2.1", 1.5):
        with pytest.raises(ValueError):
            ban_target(bad)
    ok, refused = AllowList(own=()).screen([Row(b"192.0.2.1"), Row("192.0.2.1")])
    assert ok == [Row("192.0.2.1")] and [t for t, _ in refused] == [b"192.0.2.1"]


def test_a_partners_own_address_passes_a_network_holding_it_does_not():
    a = AllowList(["198.51.100.128/25"], ["*.partner.example"], own=())
    partners = ["198.51.101.7", "2001:db8:bb::7"]
    rows = [Row("198.51.101.7"), Row("2001:db8:bb::7"), Row("198.51.101.0/24"), Row("2001:db8:bb::/48"),
            Row("198.51.101.6"), Row("2001:db8:bb::6"), Row("198.51.0.0/16"), Row("2001:db8::/32"),
            Row("198.51.102.0/24"), Row("2001:db8:bc::/48")]
    ok, refused = a.screen(rows, partners)
    assert [r.target for r in ok] == ["198.51.101.7", "2001:db8:bb::7", "198.51.101.6", "2001:db8:bb::6",
                                      "198.51.102.0/24", "2001:db8:bc::/48"]
    why = dict(refused)
    assert "198.51.101.7" in why["198.51.101.0/24"] and "2001:db8:bb::7" in why["2001:db8:bb::/48"]
    assert "2001:db8:bb::7" in why["2001:db8::/32"] and "allow-listed" in why["198.51.0.0/16"]


def test_name_patterns_and_names_read_with_or_without_the_final_dot():
    assert check_name_pattern("*.Mailout.Example.COM.") == "*.mailout.example.com"
    assert check_name_pattern("X") == "x" and check_name_pattern("*.X") == "*.x"
    a = AllowList(names=["*.mailout.example.com."], big=["*.bigmail.example."], own=())
    assert a.name_allowed("mx1.mailout.example.com") and a.name_allowed("mx1.mailout.example.com.")
    for name in ("out1.bigmail.example", "OUT1.BigMail.example."):
        assert a.big_sender(name) == "*.bigmail.example"
    assert a.big_sender("bigmail.example.evil.example") is None


def test_the_gate_reads_any_iterable_and_rows_without_a_name():
    a = AllowList(["192.0.2.0/28"], ["*.partner.example"], own=())
    Bare = namedtuple("Bare", "target")
    rows = [Bare("203.0.113.9"), Bare("192.0.2.5"), Bare("2001:db8:5::/64")]
    ok, refused = a.screen(r for r in rows)
    assert ok == [rows[0], rows[2]] and [t for t, _ in refused] == ["192.0.2.5"]
    assert a.screen(iter(rows)) == (ok, refused)


def test_forward_confirmed_needs_the_name_to_resolve_back(monkeypatch):
    """The name is trusted only when it resolves back to the client (FCrDNS): else anyone
    with a PTR record saying mx1.partner.example would be allow-listed by name."""
    ptr = {"198.51.100.7": "mx1.partner.example", "198.51.100.8": "mx2.partner.example"}
    fwd = {"mx1.partner.example": ["198.51.100.7", "2001:db8::7"], "mx2.partner.example": ["203.0.113.8"]}
    monkeypatch.setattr(socket, "gethostbyaddr", lambda ip: (ptr[ip], [], [ip]))
    monkeypatch.setattr(socket, "getaddrinfo", lambda name, port: [
        (socket.AF_INET6 if ":" in a else socket.AF_INET, 1, 6, "", (a, 0)) for a in fwd[name]])
    assert forward_confirmed("198.51.100.7", 1.0) == "mx1.partner.example"
    assert forward_confirmed("198.51.100.8", 1.0) is None


def test_host_addresses_hold_every_address_the_kernel_and_the_host_name_give():
    """Checked against `ip addr` and the resolver, not against itself: an address left out
    is one this host could ban."""
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
    kernel = {str(ipaddress.ip_address(i["local"])) for link in json.loads(out) for i in link.get("addr_info", [])}
    named = {str(ipaddress.ip_address(i[4][0].split("%")[0])) for i in socket.getaddrinfo(socket.gethostname(), None)}
    mine = host_addresses()
    assert "127.0.0.1" in kernel and kernel <= mine and named <= mine
    assert all(ipaddress.ip_address(a) for a in mine)


def test_resolver_lookup_is_pending_then_answers():
    r = Resolver(timeout=30.0, lookup=lambda ip, timeout: "mx.example.com" if ip == "192.0.2.1" else None)
    try:
        got = {}
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            for ip in ("192.0.2.1", "192.0.2.2"):
                v = r.lookup(ip)
                if v is not PENDING:
                    got[ip] = v
            time.sleep(0.01)
        assert got == {"192.0.2.1": "mx.example.com", "192.0.2.2": None} and not r.pending()
        assert r.lookup("192.0.2.1") == "mx.example.com"        # cached
    finally:
        r.close()


def test_resolver_names_answers_from_cache_waits_for_slow_lookups_and_retries_no_name():
    """A name is kept for ttl, no name for neg_ttl (then asked again); a lookup slower than
    a poll but within the timeout still gives its name."""
    answers = {"192.0.2.1": None}

    def lookup(ip, timeout):
        time.sleep(1.2 if ip == "192.0.2.3" else 0)
        return answers.get(ip, "mx.example.com")

    r = Resolver(timeout=4.0, ttl=60.0, neg_ttl=0.5, lookup=lookup)
    try:
        mx = "mx.example.com"
        assert r.names(["192.0.2.1", "192.0.2.2"]) == {"192.0.2.1": None, "192.0.2.2": mx}
        answers.update({"192.0.2.1": "mx1.example.com", "192.0.2.2": None})
        assert r.names(["192.0.2.1", "192.0.2.2"]) == {"192.0.2.1": None, "192.0.2.2": mx}     # cached
        time.sleep(0.6)
        assert r.names(["192.0.2.1", "192.0.2.2"]) == {"192.0.2.1": "mx1.example.com", "192.0.2.2": mx}
        assert r.names(["192.0.2.3"]) == {"192.0.2.3": mx}
    finally:
        r.close()


def test_resolver_lookup_never_waits_for_a_hung_lookup():
    import threading
    hung = threading.Event()
    r = Resolver(timeout=0.2, lookup=lambda ip, timeout: hung.wait(5) and "late.example.com")
    try:
        t0 = time.monotonic()
        got = PENDING
        while got is PENDING and time.monotonic() - t0 < 3:
            got = r.lookup("192.0.2.9")
            time.sleep(0.01)
        assert got is None and time.monotonic() - t0 < 2      # no name, in about the timeout
        assert r.lookup("192.0.2.9") is None                   # and that is kept (neg_ttl)
    finally:
        hung.set()
        r.close()


def test_cover_tests_answer_as_covers_does_for_every_network_of_their_prefix_length():
    import random
    rnd = random.Random(7)
    for version, bits in ((4, 32), (6, 128)):
        # Allowed networks of every length, some nested, some apart; asked about networks
        # around them (inside, holding them, next to them) and anywhere.
        base = rnd.getrandbits(bits)
        nets = []
        for _ in range(40):
            plen = rnd.choice([8, 16, 23, 24, 25, 48, 63, 64, 65, 96, 127, 128] if version == 6 else [8, 16, 23, 24, 25, 31, 32])
            num = (base ^ rnd.getrandbits(bits - rnd.randrange(1, 24))) >> (bits - plen) << (bits - plen)
            nets.append(str(ipaddress.ip_network((num, plen))))
        allow = AllowList(nets, own=())
        for plen in ((24, 32) if version == 4 else (48, 64, 128)):
            tests = allow.cover_tests(version, plen)
            seen = set()
            for _ in range(3000):
                num = (base ^ rnd.getrandbits(bits - rnd.randrange(1, 28))) >> (bits - plen) << (bits - plen)
                got = any(num >> shift in s for shift, s in tests)
                assert got == allow.covers(version, num, plen), (ipaddress.ip_network((num, plen)), nets)
                seen.add(got)
            assert seen == {True, False}
