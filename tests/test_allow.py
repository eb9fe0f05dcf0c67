"""The allow-list: networks, name patterns, this host, forward-confirmed lookups."""
import ipaddress
import time

import pytest

from logban.allow import (
    AllowList,
    Resolver,
    check_name_pattern,
    forward_confirmed,
    host_addresses,
    parse_network,
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

from collections import namedtuple

from logban.allow import ban_target, unbannable

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


from hypothesis import given, settings
from hypothesis import strategies as st


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), max_size=6),
       st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_covers_agrees_with_ipaddress(allowed, num, plen):
    nets = [str(ipaddress.ip_network((n, p), strict=False)) for n, p in allowed]
    a = AllowList(nets, own=())
    q = ipaddress.ip_network((num, plen), strict=False)
    want = any(q.overlaps(ipaddress.ip_network(n)) for n in [*nets, "127.0.0.0/8"])
    assert a.covers(4, int(q.network_address), plen) == want


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

from logban.allow import NEVER, TIME_MAX, canonical_num

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
    if any(ipaddress.ip_address(p) in n for p in GATE_PARTNERS if ipaddress.ip_address(p).version == n.version):
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
    ["198.51.100.7/32", "2001:DB8::1", "2001:db8::0001", "IPv6:2001:db8::1", "198.051.100.7", " 198.51.100.7",
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

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from logban.allow import ip_num, network_text  # noqa: E402


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
