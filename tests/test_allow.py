"""The allow-list: networks, name patterns, this host, forward-confirmed lookups."""
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
