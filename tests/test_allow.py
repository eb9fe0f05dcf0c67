"""The allow-list: networks, name patterns, this host, forward-confirmed lookups."""
import ipaddress
import time

import pytest

from logban.allow import AllowList, Resolver, check_name_pattern, forward_confirmed, host_addresses, parse_network


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

from collections import namedtuple  # noqa: E402

from logban.allow import ban_target, unbannable  # noqa: E402

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


from hypothesis import given, strategies as st  # noqa: E402


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
