"""Firewall planning, pure: what the kernel should hold and what to change to get there,
and the [firewall] options. Fast: the mutation tests (bench/mutate.sh plan) run these."""
from __future__ import annotations

import ipaddress
from collections import namedtuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logban.config import firewall_options as options_from
from logban.errors import UsageError
from logban.firewall import (
    KERNEL_TIMEOUT_MAX,
    REFRESH_CAPPED,
    FirewallOptions,
    _src,
    kernel_timeout,
    plan,
    prefix,
    wanted,
)

Ban = namedtuple("Ban", "target expires dry_run")
NOW = 1_800_000_000.0


def test_kernel_timeout_is_the_remaining_time_capped():
    assert kernel_timeout(None, NOW) is None
    assert kernel_timeout(NOW + 3600, NOW) == 3600
    assert kernel_timeout(NOW + 0.2, NOW) == 1
    assert kernel_timeout(NOW + 90 * 86400, NOW) == KERNEL_TIMEOUT_MAX


def test_wanted_skips_dry_run_expired_and_covered_targets():
    bans = [Ban("192.0.2.7", NOW + 60, False), Ban("192.0.2.8", NOW + 60, True), Ban("192.0.2.9", NOW - 1, False),
            Ban("198.51.100.0/24", NOW + 600, False), Ban("198.51.100.5", NOW + 60, False),
            Ban("198.51.0.0/16", None, False), Ban("2001:db8:1::/64", NOW + 60, False),
            Ban("2001:db8:1::5", NOW + 60, False), Ban("2001:db8:2::5", NOW + 60, False)]
    assert wanted(bans, NOW) == {"192.0.2.7": 60, "198.51.0.0/16": None, "2001:db8:1::/64": 60, "2001:db8:2::5": 60}


def test_wanted_two_bans_of_one_target_keep_the_longer():
    assert wanted([Ban("192.0.2.7", NOW + 60, False), Ban("192.0.2.7", NOW + 600, False)], NOW) == {"192.0.2.7": 600}
    assert wanted([Ban("192.0.2.7", None, False), Ban("192.0.2.7", NOW + 600, False)], NOW) == {"192.0.2.7": None}
    # the longer first: a later, shorter ban must not cut the kernel's time short
    assert wanted([Ban("192.0.2.7", NOW + 600, False), Ban("192.0.2.7", NOW + 60, False)], NOW) == {"192.0.2.7": 600}


def test_plan_adds_missing_removes_unknown_refreshes_stale():
    want = {"192.0.2.1": 3600, "192.0.2.2": 3600, "192.0.2.3": None, "192.0.2.4": 3600, "192.0.2.5": 3600}
    have = {"192.0.2.2": 3598, "192.0.2.3": 100, "192.0.2.4": 7200, "192.0.2.5": 60, "203.0.113.9": 50}
    p = plan(want, have)
    assert p.missing == ["192.0.2.1"]
    assert p.unknown == ["203.0.113.9"]
    assert sorted(p.stale) == ["192.0.2.3", "192.0.2.4", "192.0.2.5"]     # 192.0.2.2 is in step
    assert set(p.add) == {"192.0.2.1", "192.0.2.3", "192.0.2.4", "192.0.2.5"} and p.add["192.0.2.3"] is None
    assert sorted(p.remove) == ["192.0.2.3", "192.0.2.4", "192.0.2.5", "203.0.113.9"]
    assert p.drift == 5
    assert plan(want, {**want}).drift == 0


def test_plan_refreshes_a_capped_ban_only_near_the_cap_end():
    cap = KERNEL_TIMEOUT_MAX
    assert plan({"192.0.2.1": cap}, {"192.0.2.1": cap - 3600}).drift == 0
    assert plan({"192.0.2.1": cap}, {"192.0.2.1": cap - REFRESH_CAPPED - 1}).stale == ["192.0.2.1"]


def test_plan_gives_each_added_element_its_own_time():
    want = {"192.0.2.1": 3600, "192.0.2.3": None, "192.0.2.4": 120, "2001:db8::/64": 50}
    p = plan(want, {"192.0.2.4": 7200, "2001:db8::/64": 50})
    assert p.add == {"192.0.2.1": 3600, "192.0.2.3": None, "192.0.2.4": 120}


def test_stale_boundaries():
    from logban.firewall.plan import SLACK
    w = 3600
    assert plan({"192.0.2.1": w}, {"192.0.2.1": w + SLACK}).stale == []
    assert plan({"192.0.2.1": w}, {"192.0.2.1": w + SLACK + 1}).stale == ["192.0.2.1"]
    assert plan({"192.0.2.1": w}, {"192.0.2.1": w - SLACK}).stale == []
    assert plan({"192.0.2.1": w}, {"192.0.2.1": w - SLACK - 1}).stale == ["192.0.2.1"]
    cap = KERNEL_TIMEOUT_MAX
    assert plan({"192.0.2.1": cap}, {"192.0.2.1": cap - REFRESH_CAPPED}).stale == []
    assert plan({"192.0.2.1": None}, {"192.0.2.1": 5}).stale == ["192.0.2.1"]
    assert plan({"192.0.2.1": 5}, {"192.0.2.1": None}).stale == ["192.0.2.1"]


def test_wanted_a_ban_ending_now_is_over():
    assert wanted([Ban("192.0.2.7", NOW, False)], NOW) == {}
    assert wanted([Ban("192.0.2.7", NOW + 0.5, False)], NOW) == {"192.0.2.7": 1}


_net_st = st.one_of(
    st.builds(lambda n, p: f"{ipaddress.IPv4Network((n, p), strict=False)}".removesuffix("/32"),
              st.integers(0xC6336400, 0xC63364FF), st.integers(22, 32)),
    st.builds(lambda n, p: f"{ipaddress.IPv6Network((n, p), strict=False)}".removesuffix("/128"),
              # few distinct bits, in the prefix and near the end: networks and members nest often
              st.builds(lambda a, b, c: (0x20010DB8 << 96) | (a << 80) | (b << 64) | c,
                        st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
              st.sampled_from([40, 48, 63, 64, 72, 100, 127, 128])))


@given(st.lists(_net_st, max_size=12))
def test_wanted_leaves_out_exactly_the_targets_inside_another(targets):
    got = wanted([Ban(t, NOW + 60, False) for t in targets], NOW)
    nets = {t: ipaddress.ip_network(t) for t in targets}
    inside = {t for t, n in nets.items() for o, m in nets.items()
              if o != t and n.version == m.version and n != m and n.subnet_of(m)}
    assert set(got) == set(targets) - inside


def test_prefix_of_a_bare_address_is_its_full_length():
    # the backends' `exclusive` lengths are matched against it: 32 and 128, nothing longer
    assert prefix("192.0.2.7") == (4, 32) and prefix("2001:db8::7") == (6, 128)
    assert prefix("192.0.2.0/24") == (4, 24) and prefix("2001:db8::/64") == (6, 64)


def test_src_reads_libiptc_netmasks():
    assert _src("192.0.2.0/255.255.255.0") == "192.0.2.0/24"
    assert _src("192.0.2.7/255.255.255.255") == "192.0.2.7"
    assert _src("2001:db8::/ffff:ffff:ffff:ffff::") == "2001:db8::/64"
    assert _src("2001:db8::/64") == "2001:db8::/64"


@pytest.mark.parametrize("table, key", [
    ({"backend": "pf"}, "firewall.backend"), ({"action": "tarpit"}, "firewall.action"),
    ({"ports": [25, 0]}, "firewall.ports"), ({"ports": "25"}, "firewall.ports"),
    ({"forward": "yes"}, "firewall.forward"), ({"hook": "input"}, "firewall.hook")])
def test_bad_firewall_options_name_the_key(table, key):
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        options_from(table, "x.toml")


def test_options_defaults_and_ports_sorted():
    assert options_from({}, "x") == FirewallOptions()
    assert options_from({"ports": [587, 25, 25]}, "x").ports == (25, 587)




@given(st.lists(_net_st, max_size=12))
def test_wanted_leaves_out_nested_targets_only_among_the_exclusive_lengths(targets):
    # nftables' layout: addresses, /24s and /64s in hash sets (nesting is fine), the rest in interval sets.
    excl = {4: frozenset(range(33)) - {32, 24}, 6: frozenset(range(129)) - {128, 64}}
    got = wanted([Ban(t, NOW + 60, False) for t in targets], NOW, excl)
    nets = {t: ipaddress.ip_network(t) for t in targets}
    pool = {t: n for t, n in nets.items() if n.prefixlen in excl[n.version]}
    inside = {t for t, n in pool.items() for o, m in pool.items()
              if o != t and n.version == m.version and n != m and n.subnet_of(m)}
    assert set(got) == set(targets) - inside
    assert wanted([Ban(t, NOW + 60, False) for t in targets], NOW, {4: (), 6: ()}).keys() == set(targets)
