"""The scorer, pure: decay, thresholds, ban times, escalation, networks, allow-list."""
import ipaddress
import math
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from logban.allow import AllowList
from logban.parse import Offence
from logban.score import BUCKETS, DAY, HOUR, Horizon, Policy, Scorer, network_of

T0 = 1_795_000_000.0


def off(ip: str, t: float, kind: str = "auth_failed", score: float = 1.0, rule: str = "r", name=None,
        reply: int = 0) -> Offence:
    return Offence(T0 + t, ip, "postfix", rule, kind, score, "f", 1, b"line", name, reply)


def scorer(**kw) -> Scorer:
    return Scorer(Policy(**kw), AllowList(own=()))


def feed(sc: Scorer, offences) -> list:
    out = []
    for o in offences:
        out += sc.add(o)
    return out


def test_single_dnsbl_hit_bans_at_once():
    [d] = feed(scorer(), [off("192.0.2.1", 0, "dnsbl", 5)])
    assert (d.target, d.kind, d.duration, d.count) == ("192.0.2.1", "dnsbl", 6 * HOUR, 1)


def test_five_ordinary_offences_within_ten_minutes_ban_four_do_not():
    sc = scorer()
    assert feed(sc, [off("192.0.2.1", i * 140) for i in range(4)]) == []       # 4 in 7 minutes
    [d] = sc.add(off("192.0.2.1", 4 * 140 + 30))                                # the 5th, 9m50s after the 1st
    assert d.kind == "auth_failed" and d.duration == HOUR and d.score == 5


def test_window_forgets_old_offences():
    sc = scorer(horizons=())           # the burst horizon alone (the hour one counts these: test_horizons)
    assert feed(sc, [off("192.0.2.1", i * 200) for i in range(10)]) == []      # one every 3m20s: never 5 in 10m
    assert sc.score("192.0.2.1", T0 + 9 * 200) == 3


def test_dictionary_attack_bans_fast():
    [d] = feed(scorer(), [off("192.0.2.9", i, "unknown_user", 2) for i in range(3)])
    assert d.kind == "unknown_user" and d.time == T0 + 2


def test_half_life_decay():
    sc = scorer(window=None, half_life=600.0)
    sc.add(off("192.0.2.1", 0, score=4))
    assert math.isclose(sc.score("192.0.2.1", T0 + 600), 2.0)
    assert math.isclose(sc.score("192.0.2.1", T0 + 1200), 1.0)
    assert sc.add(off("192.0.2.1", 600, score=2.5)) == []                      # 2 + 2.5 < 5
    [d] = sc.add(off("192.0.2.1", 601, score=1))
    assert d.reason.startswith("burst: score 5.4")
    # a temporary reject weighs `transient` in the decaying score too
    sc = scorer(window=None, half_life=600.0, horizons=())
    assert sc.add(off("192.0.2.2", 0, score=4, reply=4)) == []
    assert math.isclose(sc.score("192.0.2.2", T0 + 600), 1.0)


def test_ban_kind_is_the_worst_seen():
    sc = scorer()
    [d] = feed(sc, [off("192.0.2.1", 0, "auth_failed", 1, "sasl"), off("192.0.2.1", 1, "bad_helo", 2, "helo"),
                    off("192.0.2.1", 2, "auth_failed", 2, "sasl")])
    assert (d.kind, d.rule, d.duration) == ("bad_helo", "helo", 72 * HOUR)
    # by ban time, not by name: a virus (24 h) sorts after bad_helo (72 h)
    [d] = feed(scorer(), [off("192.0.2.2", 0, "bad_helo", 2, "helo"), off("192.0.2.2", 1, "virus", 3, "av")])
    assert (d.kind, d.duration) == ("bad_helo", 72 * HOUR)


def test_rule_duration_overrides_kind():
    [d] = feed(scorer(rule_durations={"helo": 600.0}), [off("192.0.2.1", 0, "bad_helo", 5, "helo")])
    assert d.duration == 600
    # ... also when the worst kind is chosen: a rule's 48 h outranks a kind's 6 h
    sc = scorer(rule_durations={"sasl-slow": 48 * HOUR})
    [d] = feed(sc, [off("192.0.2.2", 0, "auth_failed", 2, "sasl-slow"), off("192.0.2.2", 1, "dnsbl", 3, "zen")])
    assert (d.kind, d.rule, d.duration) == ("auth_failed", "sasl-slow", 48 * HOUR)


def test_permanent_ban():
    sc = scorer(durations={"virus": None})
    [d] = sc.add(off("192.0.2.1", 0, "virus", 5))
    assert d.duration is None and d.expires is None
    assert sc.add(off("192.0.2.1", 100 * DAY, "virus", 5)) == []              # still banned


def test_release_resets_the_score():
    sc = scorer()
    feed(sc, [off("192.0.2.1", i) for i in range(4)])
    sc.release("192.0.2.1")
    assert sc.score("192.0.2.1", T0 + 5) == 0
    assert sc.add(off("192.0.2.1", 5)) == []


def test_offences_during_a_ban_do_not_count_after_it():
    sc = scorer()
    [d] = sc.add(off("192.0.2.1", 0, "dnsbl", 5))
    assert feed(sc, [off("192.0.2.1", 100 + i) for i in range(10)]) == []     # banned: not scored
    assert sc.stats.while_banned == 10
    after = d.duration + 1
    assert feed(sc, [off("192.0.2.1", after + i) for i in range(4)]) == []    # must misbehave again, from zero
    [d2] = sc.add(off("192.0.2.1", after + 5))
    assert d2.count == 2


def test_escalation_doubles_and_is_capped():
    sc = scorer(max_duration=10 * HOUR)
    got, t = [], 0.0
    for _ in range(6):
        [d] = sc.add(off("192.0.2.1", t, "auth_failed", 5))
        got.append(d.duration)
        t += d.duration + 60
    assert got == [HOUR, 2 * HOUR, 4 * HOUR, 8 * HOUR, 10 * HOUR, 10 * HOUR]
    assert [d.count for d in [d]] == [6]


def test_escalation_only_within_lookback_and_can_be_off():
    sc = scorer(lookback=DAY)
    [d1] = sc.add(off("192.0.2.1", 0, "auth_failed", 5))
    [d2] = sc.add(off("192.0.2.1", 2 * DAY, "auth_failed", 5))
    assert (d2.duration, d2.escalated, d2.count) == (HOUR, False, 2)
    sc = scorer(escalate=False)
    sc.add(off("192.0.2.1", 0, "auth_failed", 5))
    [d] = sc.add(off("192.0.2.1", HOUR + 1, "auth_failed", 5))
    assert d.duration == HOUR and not d.escalated and d.count == 2


def test_ipv6_scored_per_64():
    sc = scorer()
    ds = feed(sc, [off(f"2001:db8:1:2::{i:x}", i) for i in range(1, 6)])
    assert [d.target for d in ds] == ["2001:db8:1:2::/64"]
    assert sc.add(off("2001:db8:1:2:ffff::1", 10, "dnsbl", 5)) == []          # the whole /64 is banned
    assert sc.add(off("2001:db8:1:3::1", 10, "dnsbl", 5))[0].target == "2001:db8:1:3::/64"


def test_ipv6_per_address_when_configured():
    [d] = feed(scorer(ipv6_prefix=128), [off("2001:db8::5", 0, "dnsbl", 5)])
    assert d.target == "2001:db8::5"


def test_three_address_bans_in_one_24_ban_the_24():
    sc = scorer()
    a = sc.add(off("198.51.100.1", 0, "dnsbl", 5))
    b = sc.add(off("198.51.100.2", 1, "auth_failed", 5))
    [n] = sc.add(off("198.51.100.3", 2, "relay_denied", 5))
    assert [d.target for d in a + b] == ["198.51.100.1", "198.51.100.2"]
    assert n.target == "198.51.100.0/24" and n.members == ("198.51.100.1", "198.51.100.2", "198.51.100.3")
    assert n.kind == "relay_denied" and n.duration == 12 * HOUR                 # the worst member's
    # What is recorded of it: the last member's score and offence, and who the members are.
    assert (n.score, n.trigger.ip, sc.stats.network_bans) == (5, "198.51.100.3", 1)
    assert n.reason == ("3 addresses banned at once in 198.51.100.0/24: "
                        "198.51.100.1, 198.51.100.2, 198.51.100.3")
    dnsbl_hits(sc, ["203.0.113.1", "203.0.113.2", "203.0.113.3"], 10)
    assert (sc.stats.network_bans, sc.stats.decisions) == (2, 8)      # 6 address bans, 2 network bans
    assert sc.add(off("198.51.100.77", 3, "dnsbl", 5)) == []                    # covered
    assert "198.51.100.1" not in sc.active


def test_expired_members_do_not_aggregate():
    sc = scorer()
    sc.add(off("198.51.100.1", 0, "auth_failed", 5))                 # 1h
    sc.add(off("198.51.100.2", 2 * HOUR, "auth_failed", 5))
    [d] = sc.add(off("198.51.100.3", 2 * HOUR + 1, "auth_failed", 5))
    assert d.target == "198.51.100.3"                                # .1 has been released by then
    assert scorer(subnet_bans=0).add(off("198.51.100.1", 0, "dnsbl", 5))[0].target == "198.51.100.1"


def test_allow_list_addresses_and_names():
    allow = AllowList(["192.0.2.0/28"], ["*.mailout.example.com", "mx-*.example.org"], own=())
    sc = Scorer(Policy(), allow)
    assert feed(sc, [off("192.0.2.5", i, "dnsbl", 5) for i in range(3)]) == []
    assert feed(sc, [off("198.51.100.5", 0, "dnsbl", 5, name="a.mailout.example.com")]) == []
    assert feed(sc, [off("198.51.100.6", 0, "dnsbl", 5, name="mx-7.example.org")]) == []
    assert feed(sc, [off("198.51.100.7", 0, "dnsbl", 5, name="mailout.example.com.evil.example")])
    assert feed(sc, [off("127.0.0.1", 0, "dnsbl", 5), off("::1", 0, "dnsbl", 5)]) == []
    assert sc.stats.allowed == 7


def test_eviction_bounds_memory_and_keeps_high_scores():
    sc = scorer(max_tracked=1000)
    sc.add(off("192.0.2.200", 0, score=4))
    for i in range(20_000):
        sc.add(off(f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::1", 1, score=0.5))
    assert len(sc.tracks) <= 1500 and sc.stats.evicted > 0
    assert sc.score("192.0.2.200", T0 + 2) == 4


ips = st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.3", "203.0.113.4", "2001:db8::1", "2001:db8::2:1", "127.0.0.1"])
kinds = st.sampled_from(["auth_failed", "dnsbl", "unknown_user", "virus", "bad_helo"])
events = st.lists(st.tuples(ips, st.floats(0, 3 * DAY), kinds, st.sampled_from([0.5, 1.0, 2.0, 5.0])), max_size=80)


@settings(max_examples=150, deadline=None)
@given(events, st.sampled_from([2, 3, 0]), st.floats(1.5, 4), st.sampled_from([HOUR, 6 * HOUR]))
def test_properties(evs, k, factor, cap):
    sc = Scorer(Policy(subnet_bans=k, factor=factor, max_duration=cap), AllowList(["203.0.113.0/24"], own=()))
    ds = feed(sc, [off(ip, t, kind, s) for ip, t, kind, s in sorted(evs, key=lambda e: e[1])])
    for d in ds:
        # allow-list always wins
        assert not d.target.startswith(("127.", "203.0.113.")) and not any(m.startswith("203.") for m in d.members)
        assert d.score >= 5
        base = Policy().base_duration(d.kind)
        # escalation never goes past the cap (unless the kind's own time is longer) nor below the base
        assert base <= d.duration <= max(base, cap)
        assert d.escalated == (d.duration > base)
    # a target is never banned twice while its ban runs
    for a, b in zip(ds, ds[1:]):
        if a.target == b.target:
            assert b.time >= a.expires
    counts: dict[str, int] = {}
    for d in ds:
        counts[d.target] = counts.get(d.target, 0) + 1
        assert d.count == counts[d.target]
        if d.members:        # the newest member's own ban is the network's: it counts for that member too
            counts[d.trigger.ip] = counts.get(d.trigger.ip, 0) + 1


@given(st.integers(0, 2**128 - 1), st.one_of(st.sampled_from([16, 32, 48, 64, 56, 96, 128]), st.integers(0, 128)))
def test_network_of_is_the_canonical_network(n, prefix):
    ip = str(ipaddress.IPv6Address(n))
    assert network_of(ip, prefix) == str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_network_of_ipv4(n, prefix):
    ip = str(ipaddress.IPv4Address(n))
    assert network_of(ip, prefix) == str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


# ---- safe targets: promotion never covers what must not be banned ----------------------

def dnsbl_hits(sc: Scorer, ips, t0: float = 0) -> list:
    return feed(sc, [off(ip, t0 + i, "dnsbl", 5) for i, ip in enumerate(ips)])


def test_no_ipv4_network_ban_over_an_own_or_allowed_address():
    for allow in (AllowList(own=["192.0.2.1"]), AllowList(["192.0.2.0/28"], own=())):
        sc = Scorer(Policy(subnet_bans=3), allow)
        ds = dnsbl_hits(sc, ["192.0.2.100", "192.0.2.101", "192.0.2.102", "192.0.2.103"])
        assert [d.target for d in ds] == ["192.0.2.100", "192.0.2.101", "192.0.2.102", "192.0.2.103"]
        assert not any(d.members for d in ds)
    # the same neighbours elsewhere do make the /24
    ds = dnsbl_hits(Scorer(Policy(subnet_bans=3), AllowList(own=["192.0.2.1"])),
                    ["198.51.100.100", "198.51.100.101", "198.51.100.102"])
    assert ds[-1].target == "198.51.100.0/24"


def test_ipv6_network_over_an_allowed_own_or_special_address_becomes_address_bans():
    sc = Scorer(Policy(), AllowList(["2001:db8:1::25"], own=["2001:db8:2::1"]))
    [a] = dnsbl_hits(sc, ["2001:db8:1::66"])
    [b] = dnsbl_hits(sc, ["2001:db8:2::66"])
    [c] = dnsbl_hits(sc, ["2001:db8:3::66"])
    assert (a.target, b.target, c.target) == ("2001:db8:1::66", "2001:db8:2::66", "2001:db8:3::/64")


def test_special_addresses_are_never_targets():
    sc = scorer()
    for ip in ("::c000:201", "::", "0.0.0.0", "224.0.0.1", "ff02::1", "fe80::1", "169.254.1.1", "255.255.255.255"):
        assert dnsbl_hits(sc, [ip] * 3) == [], ip
    assert sc.stats.not_target == 24 and sc.stats.decisions == 0


def test_a_partner_seen_by_verified_name_protects_its_network():
    sc = Scorer(Policy(), AllowList(names=["*.outbound.example.com"], own=()))
    assert feed(sc, [off("2001:db8:7::10", 0, "bad_helo", 5, name="a.outbound.example.com"),
                     off("192.0.2.10", 0, "bad_helo", 5, name="b.outbound.example.com")]) == []
    [d] = dnsbl_hits(sc, ["2001:db8:7::66"], 10)
    assert d.target == "2001:db8:7::66"
    ds = dnsbl_hits(sc, ["192.0.2.66", "192.0.2.67", "192.0.2.68"], 20)
    assert [d.target for d in ds] == ["192.0.2.66", "192.0.2.67", "192.0.2.68"]


def test_network_ban_lasts_as_long_as_the_longest_member():
    sc = scorer(subnet_bans=3)
    # 198.51.100.1 comes back four times: its ban escalates 6 h -> 12 h -> 24 h -> 48 h.
    t = 0.0
    for _ in range(4):
        [d] = dnsbl_hits(sc, ["198.51.100.1"], t)
        t = d.expires - T0 + 1
    long_end = d.expires
    assert d.duration == 48 * HOUR
    ds = dnsbl_hits(sc, ["198.51.100.2", "198.51.100.3"], t - 10 * HOUR)
    net = ds[-1]
    assert net.target == "198.51.100.0/24" and "198.51.100.1" in net.members
    assert net.expires == long_end                   # its own 6 h would end sooner


def test_out_of_order_offences_never_weigh_more_than_their_score():
    """Issue 12: with a half-life, an older offence applied after a newer one was weighed by
    2^(positive): two failures three hours apart scored 244,590 and banned."""
    sc = scorer(window=None, half_life=600.0)
    assert sc.add(off("192.0.2.1", 3 * 3600)) == []
    assert sc.add(off("192.0.2.1", 0)) == []                    # three hours older, applied after
    assert sc.score("192.0.2.1", T0 + 3 * 3600) < 1.01
    # With a window too: an older offence counts within the window of the newest one only
    # (the burst horizon alone: five in 50 minutes is the hour horizon's ban).
    sc = scorer(horizons=())
    assert feed(sc, [off("192.0.2.2", 3000 + i) for i in range(3)] + [off("192.0.2.2", 0), off("192.0.2.2", 1)]) == []
    assert sc.add(off("192.0.2.2", 2990)) == []                 # four within ten minutes of the newest
    [d] = sc.add(off("192.0.2.2", 2995))                        # five
    assert d.time == T0 + 3002                                  # decided when the evidence was complete


def test_shuffled_offences_decide_as_sorted_ones_do():
    import random
    evs = [off("192.0.2.3", t) for t in (0, 100, 250, 400, 520)]
    rnd = random.Random(7)
    for _ in range(20):
        shuffled = evs[:]
        rnd.shuffle(shuffled)
        [d] = feed(scorer(), shuffled)
        assert (d.time, d.score) == (T0 + 520, 5)


def test_a_score_cleared_elsewhere_forgets_the_offences_before_it():
    sc = scorer()
    feed(sc, [off("192.0.2.4", i) for i in range(4)])
    sc.clear("192.0.2.4", T0 + 10)
    assert sc.score("192.0.2.4", T0 + 11) == 0
    assert feed(sc, [off("192.0.2.4", 11 + i) for i in range(4)]) == []
    assert len(feed(sc, [off("192.0.2.4", 20)])) == 1


def test_escalation_multiplies_by_the_configured_factor():
    sc = scorer(factor=3.0, max_duration=100 * HOUR)
    got, t = [], 0.0
    for _ in range(3):
        [d] = sc.add(off("192.0.2.1", t, "auth_failed", 5))
        got.append((d.duration, d.escalated))
        t += d.duration + 60
    assert got == [(HOUR, False), (3 * HOUR, True), (9 * HOUR, True)]


def test_a_ban_of_a_network_of_another_size_covers_its_members_until_it_ends():
    from logban.score import Decision
    for wide in ("198.51.0.0/16", "2001:db8::/32"):
        member, outside = ("198.51.100.7", "203.0.113.7") if "." in wide else ("2001:db8:5::7", "2001:db9::7")
        sc = scorer()
        sc.mark_banned(Decision(wide, "manual", "", 0, T0, HOUR, 1, False, "by hand"))
        assert feed(sc, [off(member, 10 + i, "dnsbl", 5) for i in range(3)]) == [], wide
        [d] = sc.add(off(outside, 20, "dnsbl", 5))
        assert d.target == (outside if "." in wide else "2001:db9::/64")
        [d] = sc.add(off(member, HOUR + 1, "dnsbl", 5))           # the network's ban is over
        assert d.target == (member if "." in wide else "2001:db8:5::/64")


def test_a_ban_is_over_at_its_end_exactly():
    sc = scorer()
    [d] = sc.add(off("198.51.100.1", 0, "dnsbl", 5))
    [d2] = sc.add(off("198.51.100.1", d.duration, "dnsbl", 5))         # at the very second it ends
    assert (d2.count, d2.duration, d2.escalated) == (2, 2 * d.duration, True)
    from logban.score import Decision
    sc = scorer()
    sc.mark_banned(Decision("198.51.0.0/16", "manual", "", 0, T0, HOUR, 1, False, "by hand"))
    assert sc.add(off("198.51.7.1", HOUR - 1, "dnsbl", 5)) == []
    assert [d.target for d in sc.add(off("198.51.7.2", HOUR, "dnsbl", 5))] == ["198.51.7.2"]


def test_escalation_looks_back_exactly_lookback():
    sc = scorer(lookback=DAY)
    [d1] = sc.add(off("192.0.2.1", 0, "auth_failed", 5))
    [d2] = sc.add(off("192.0.2.1", DAY, "auth_failed", 5))               # exactly a lookback later
    assert (d2.duration, d2.escalated) == (2 * HOUR, True)


def test_kinds_without_a_duration_get_the_default():
    assert Policy(durations={}, default_duration=7 * HOUR).base_duration("bad_helo") == 7 * HOUR
    sc = scorer(durations={"dnsbl": HOUR}, default_duration=3 * HOUR)
    [d] = sc.add(off("192.0.2.1", 0, "auth_failed", 5))
    assert d.duration == 3 * HOUR


def test_a_network_takes_the_kind_with_the_longest_ban_time_and_lists_members_in_address_order():
    sc = scorer()
    sc.add(off("198.51.100.100", 0, "relay_denied", 5))             # 12 h: ends first of the long ones
    sc.add(off("198.51.100.9", 6.5 * HOUR, "auth_failed", 5))       # 1 h
    [n] = sc.add(off("198.51.100.10", 7 * HOUR, "dnsbl", 5))        # 6 h, ends last (13 h)
    assert n.target == "198.51.100.0/24" and n.kind == "relay_denied" and n.duration == 12 * HOUR
    assert n.members == ("198.51.100.9", "198.51.100.10", "198.51.100.100")


def test_a_member_whose_ban_ends_as_the_third_comes_does_not_aggregate():
    sc = scorer()
    sc.add(off("198.51.100.1", 0, "auth_failed", 5))                 # ends at 1 h
    sc.add(off("198.51.100.2", HOUR / 2, "auth_failed", 5))
    [d] = sc.add(off("198.51.100.3", HOUR, "auth_failed", 5))
    assert d.target == "198.51.100.3"


def test_what_is_counted_and_what_decided():
    allow = AllowList(names=["*.mailout.example.com"], own=())
    sc = Scorer(Policy(), allow)
    o = off("192.0.2.1", 0, "dnsbl", 5)
    [d] = sc.add(o)
    assert d.trigger is o
    sc.add(off("198.51.100.5", 1, "dnsbl", 5, name="a.mailout.example.com"))
    feed(sc, [off("192.0.2.2", 2 + i) for i in range(3)])
    assert (sc.stats.offences, sc.stats.decisions, sc.stats.allowed) == (5, 1, 1)
    assert sc.new_partners == [("198.51.100.5", "a.mailout.example.com", T0 + 1)]


def test_a_network_banned_again_escalates_and_a_rule_duration_counts_for_its_kind():
    sc = scorer()
    ds = feed(sc, [off(f"198.51.100.{i}", i, "dnsbl", 5) for i in (1, 2, 3)])
    first = ds[-1]
    assert (first.target, first.duration, first.count) == ("198.51.100.0/24", 6 * HOUR, 1)
    t = 6 * HOUR + 10                                             # after it ended
    ds = feed(sc, [off(f"198.51.100.{i}", t + i, "dnsbl", 5) for i in (4, 5, 6)])
    again = ds[-1]
    assert (again.target, again.duration, again.count, again.escalated) == ("198.51.100.0/24", 12 * HOUR, 2, True)
    # A member's rule with a ban time of its own: the network's kind is chosen by it.
    sc = scorer(rule_durations={"long-rule": 48 * HOUR})
    sc.add(off("203.0.113.1", 0, "auth_failed", 5, rule="long-rule"))
    sc.add(off("203.0.113.2", 1, "dnsbl", 5))
    [n] = sc.add(off("203.0.113.3", 2, "relay_denied", 5))
    assert (n.target, n.kind, n.rule, n.duration) == ("203.0.113.0/24", "auth_failed", "long-rule", 48 * HOUR)
    assert sc.stats.network_bans == 1


def test_the_member_that_made_a_network_ban_escalates_on_its_own_later():
    sc = scorer()
    feed(sc, [off(f"198.51.100.{i}", i, "dnsbl", 5) for i in (1, 2, 3)])        # .3 makes the /24
    [d] = sc.add(off("198.51.100.3", 6 * HOUR + 10, "dnsbl", 5))
    assert (d.target, d.duration, d.count, d.escalated) == ("198.51.100.3", 12 * HOUR, 2, True)


# ---- horizons ------------------------------------------------------------------------------

def test_hour_horizon_catches_the_patient_guesser_the_burst_one_misses():
    """SASL guessing in bursts of 4 every 20 minutes: never 5 in 10 minutes, 5 within the hour."""
    guesses = [off("192.0.2.1", 1200 * b + i * 20) for b in range(9) for i in range(4)]
    sc = scorer(horizons=())                              # the burst horizon alone: all evening, no ban
    assert feed(sc, guesses) == [] and sc.score("192.0.2.1", T0 + 1300) == 4
    sc = scorer()
    d = feed(sc, guesses)[0]
    assert d.reason.startswith("hour: 5 offences in 1h >= 5: auth_failed x5"), d.reason
    assert d.time == T0 + 1200 and d.score == 5


def test_hour_horizon_forgets_after_an_hour():
    sc = scorer(horizons=(Horizon("hour", HOUR, 5.0),))
    assert feed(sc, [off("192.0.2.1", i * 1000) for i in range(40)]) == []     # one every 16m40s: 4 an hour
    [d] = feed(sc, [off("192.0.2.1", 40 * 1000 + 1), off("192.0.2.1", 40 * 1000 + 2)])   # 5 within the hour
    assert d.reason.startswith("hour: 5")


def test_day_horizon_catches_the_bot_retrying_a_temporary_reject_all_day():
    """450 Helo command rejected every 20 minutes: 3 an hour, never 5; the 10th within a day bans."""
    sc = scorer()
    [d] = feed(sc, [off("198.51.100.9", i * 1200, "bad_helo", 2, "helo", reply=4) for i in range(30)])
    assert d.time == T0 + 9 * 1200 and d.kind == "bad_helo"
    assert d.reason.startswith("day: 10 offences in 1d >= 10: bad_helo x10 (10 temporary)"), d.reason


def test_day_horizon_counts_offences_folded_into_buckets_and_forgets_them_after_a_day():
    sc = scorer()
    # 9 refusals over 20 hours, then quiet for a day: the 10th starts again from one.
    assert feed(sc, [off("192.0.2.7", i * 8000, "bad_sender", 1) for i in range(9)]) == []
    assert feed(sc, [off("192.0.2.7", 8 * 8000 + 2 * DAY)]) == []
    # 9 more within the day: the 10th bans, on the day horizon.
    [d] = feed(sc, [off("192.0.2.7", 8 * 8000 + 2 * DAY + i * 8000) for i in range(1, 10)])
    assert d.reason.startswith("day: 10 offences in 1d"), d.reason


def test_week_horizon_only_for_clients_banned_before():
    trickle = [off("203.0.113.8", i * 15 * HOUR, "unknown_user", 2) for i in range(11)]   # 10 within a week
    assert feed(scorer(), trickle) == []
    sc = scorer()
    assert len(feed(sc, [off("203.0.113.8", -20 * DAY, "dnsbl", 5)])) == 1         # banned 20 days ago
    [d] = feed(sc, trickle)
    assert d.reason.startswith("week: 10 offences in 1w >= 10 (banned before)"), d.reason
    assert d.count == 2


def test_a_horizon_of_ones_own():
    sc = scorer(horizons=(Horizon("fortnight", 14 * DAY, 3.0),))
    [d] = feed(sc, [off("192.0.2.3", i * 4 * DAY, "bad_sender", 1) for i in range(3)])
    assert d.reason.startswith("fortnight: 3 offences in 2w >= 3")


# ---- weights -------------------------------------------------------------------------------

def test_a_temporary_reject_weighs_less_than_a_refusal():
    assert feed(scorer(), [off("192.0.2.1", i, "bad_helo", 2, reply=5) for i in range(3)])       # 6 points
    assert not feed(scorer(), [off("192.0.2.1", i, "bad_helo", 2, reply=4) for i in range(4)])   # 4 points
    assert feed(scorer(), [off("192.0.2.1", i, "bad_helo", 2, reply=0) for i in range(3)])       # no reply logged: a refusal
    [d] = feed(scorer(horizons=()), [off("192.0.2.1", i, "bad_helo", 2, reply=4) for i in range(5)])
    assert d.reason.startswith("burst: score 5 in 10m") and "bad_helo x5 (5 temporary)" in d.reason
    [d] = feed(scorer(transient=0.25, horizons=()), [off("192.0.2.1", i, "bad_helo", 2, reply=4) for i in range(10)])
    assert d.reason.startswith("burst: score 5 in 10m")
    # On a long horizon a temporary reject counts whole unless the horizon says otherwise.
    slow = [off("192.0.2.2", i * 1200, "bad_sender", 1, reply=4) for i in range(30)]
    assert feed(scorer(), slow)[0].reason.startswith("day: 10")
    assert not feed(scorer(horizons=(Horizon("day", DAY, 10.0, transient=0.2),)), slow)


def test_a_verified_client_s_temporary_reject_weighs_less_again():
    sc = scorer()
    name = "mx1.example.org"
    assert feed(sc, [off("192.0.2.1", i * 600, "bad_helo", 2, name=name, reply=4) for i in range(99)]) == []
    [d] = sc.add(off("192.0.2.1", 99 * 600, "bad_helo", 2, name=name, reply=4))      # the 100th: 10 on the day
    assert d.reason.startswith("day: 10 offences in 1d"), d.reason
    # A name that only spells the address proves no mail server: it counts as unknown.
    [d] = feed(scorer(), [off("198.51.100.9", i * 600, "bad_helo", 2, name="198-51-100-9.dyn.example.net", reply=4)
                          for i in range(5)])
    assert d.reason.startswith("hour: 5")
    # The weights are the policy's.
    sc = scorer(transient=1.0, verified_transient=1.0)
    [d] = feed(sc, [off("192.0.2.1", i * 600, "bad_helo", 2, name=name, reply=4) for i in range(5)])
    assert d.reason.startswith("hour: 5")


# ---- big senders ---------------------------------------------------------------------------

def big_scorer(**kw) -> Scorer:
    return Scorer(Policy(**kw), AllowList(own=(), big=["*.outbound.protection.outlook.com"]))


def test_a_verified_big_sender_is_counted_never_banned_and_protects_its_network():
    sc = big_scorer()
    m365 = "mail-db8eur05on2101.outbound.protection.outlook.com"
    assert feed(sc, [off("192.0.2.10", i, "dnsbl", 5, name=m365, reply=5) for i in range(20)]) == []
    assert sc.stats.big_senders == 20 and sc.stats.allowed == 0      # counted: the engine records them
    assert sc.new_partners == [("192.0.2.10", m365, T0)]             # recorded: it protects after a restart too
    # Its neighbours are banned one by one, never as the /24 that holds it.
    ds = feed(sc, [off(ip, 30, "dnsbl", 5) for ip in ("192.0.2.66", "192.0.2.67", "192.0.2.68")])
    assert [d.target for d in ds] == ["192.0.2.66", "192.0.2.67", "192.0.2.68"]
    [d] = feed(sc, [off("2001:db8:9::66", 30, "dnsbl", 5)])
    assert d.target == "2001:db8:9::/64"
    assert feed(sc, [off("2001:db8:9::10", 40, "dnsbl", 5, name=m365)]) == []
    [d] = feed(sc, [off("2001:db8:9::67", 50, "dnsbl", 5)])
    assert d.target == "2001:db8:9::67"                             # the /64 holds the big sender now


def test_a_forged_big_sender_is_banned():
    sc = big_scorer()
    # unknown[...] (the parser gives no name) whatever it said in HELO; a name not under the farm's zone.
    assert feed(sc, [off("192.0.2.11", 0, "dnsbl", 5)])
    assert feed(sc, [off("192.0.2.12", 0, "dnsbl", 5, name="outbound.protection.outlook.com.evil.example")])


# ---- retry schedules: a verified MTA is never banned for retrying ----------------------------

def postfix_schedule(start: float, jitter: list[float], end: float) -> list[float]:
    """Postfix: first retry after minimal_backoff_time (300 s), doubling to maximal_backoff_time
    (4000 s), each late by up to queue_run_delay (300 s); given up after maximal_queue_lifetime (5 d)."""
    out, t, backoff, i = [start], start, 300.0, 0
    while True:
        t += backoff + jitter[i % len(jitter)]
        if t > start + end:
            return out
        out.append(t)
        backoff, i = min(backoff * 2, 4000.0), i + 1


def rfc_schedule(start: float, gaps: list[float], end: float) -> list[float]:
    """RFC 5321 4.5.4.1: retries at least 30 minutes apart, given up after 4 to 5 days."""
    out, t, i = [start], start, 0
    while True:
        t += gaps[i % len(gaps)]
        if t > start + end:
            return out
        out.append(t)
        i += 1


temporary = st.sampled_from([("bad_helo", 2.0), ("client_rejected", 1.0), ("bad_sender", 1.0),
                             ("unknown_user", 2.0), ("relay_denied", 2.0), ("dnsbl", 5.0)])


@settings(max_examples=60, deadline=None)
@given(st.one_of(
    st.tuples(st.just("postfix"), st.lists(st.floats(0, 300), min_size=1, max_size=8),
              st.lists(st.floats(0, 5 * DAY), min_size=1, max_size=3)),
    st.tuples(st.just("rfc"), st.lists(st.floats(1800, 4 * HOUR), min_size=1, max_size=8),
              st.lists(st.floats(0, 5 * DAY), min_size=1, max_size=1))),
    temporary, st.floats(4 * DAY, 5 * DAY), st.booleans())
def test_no_retry_schedule_of_temporary_rejects_bans_a_verified_sender(sched, kind, lifetime, v6):
    """Up to three queued messages on Postfix's schedule, or one on RFC 5321's, each rejected
    with 4xx at every attempt, from a client whose name the MTA verified: no horizon fires."""
    how, params, starts = sched
    times = sorted(t for s in starts for t in (postfix_schedule(s, params, lifetime) if how == "postfix"
                                               else rfc_schedule(s, params, lifetime)))
    ip = "2001:db8:25::25" if v6 else "198.51.100.25"
    sc = scorer()
    assert feed(sc, [off(ip, t, kind[0], kind[1], name="mx.example.org", reply=4) for t in times]) == []


def test_the_bot_retrying_every_5_to_20_minutes_is_banned_within_the_day():
    import random
    rnd = random.Random(7)
    t, ds, sc = 0.0, [], scorer()
    while t < DAY and not ds:
        ds = sc.add(off("198.51.100.26", t, "bad_helo", 2, reply=4))
        t += rnd.uniform(300, 1200)
    assert ds and ds[0].reason.startswith(("hour:", "day:")) and ds[0].time < T0 + 3 * HOUR


# ---- memory --------------------------------------------------------------------------------

def test_eviction_keeps_the_patient_attacker_over_a_flood():
    sc = scorer(max_tracked=1000)
    for i in range(8):                                  # 8 refusals over 7 hours: near the day's 10
        sc.add(off("192.0.2.200", i * 3600, "bad_sender", 1))
    for i in range(20_000):
        sc.add(off(f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::1", 8 * 3600, score=0.5))
    assert sc.stats.evicted > 0
    ds = feed(sc, [off("192.0.2.200", 9 * 3600 + i, "bad_sender", 1) for i in range(2)])
    assert ds and ds[0].reason.startswith("day: 10")


def test_generic_names():
    from logban.score import generic_name
    assert generic_name("218-42-154-114.cust.bit-drive.ne.jp", "218.42.154.114")
    assert generic_name("static-ip-209-126-100-0.inaddr.ip-pool.com", "209.126.100.0")
    assert generic_name("114.154.42.218.dyn.example.net", "218.42.154.114")
    assert not generic_name("mail.example.org", "218.42.154.114")
    assert not generic_name("mx2.example.org", "2001:db8::2")


def test_a_reload_that_changes_the_horizons_keeps_the_recent_offences():
    sc = scorer(horizons=(Horizon("day", DAY, 1000.0),))
    assert feed(sc, [off("192.0.2.5", i * 300, "bad_sender", 1) for i in range(80)]) == []   # counters in use
    sc.configure(Policy(horizons=(Horizon("hour", HOUR, 1000.0), Horizon("day", DAY, 1000.0))), sc.allow)
    assert feed(sc, [off("192.0.2.5", 80 * 300 + i * 1000, "bad_sender", 1) for i in range(3)]) == []
    [d] = feed(sc, [off("192.0.2.5", 80 * 300 + 3000 + i, "bad_sender", 1) for i in range(5)])
    assert d.reason.startswith("burst:")


# ---- counters of folded offences (more than the scorer keeps one by one) ------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(65, 400), st.sampled_from([2.0, 20.0, 300.0]))
def test_long_horizons_count_folded_offences_within_a_bucket_of_the_exact_count(seed, n, pace):
    """Past the offences kept one by one, the long horizons count whole buckets: after every
    offence, never fewer than those of the last span less a bucket, never more than those of
    the last span. More offences within a bucket than are kept one by one, or within a horizon
    (`pace` apart on average), now and then a pause of up to 30 hours, or an offence up to
    26 hours late (another node, an older file): buckets filled, skipped, reused."""
    import bisect
    import random
    from logban.score import evidence
    r = random.Random(seed)
    hs = (Horizon("hour", HOUR, 1e9), Horizon("day", DAY, 1e9, transient=0.5))
    sc = scorer(threshold=1e9, horizons=hs)
    t, times, ws = r.uniform(0, DAY), [], [[] for _ in hs]          # offences in time order, their weights
    for _ in range(n):
        late = r.random() < 0.05
        if not late:
            t += r.uniform(0, 30 * HOUR) if r.random() < 0.03 else r.uniform(0, 2 * pace)
        o = off("192.0.2.9", t - r.uniform(0, 26 * HOUR) if late else t, reply=r.choice([0, 4, 5]),
                name=r.choice([None, "mx.example.org"]))
        assert sc.add(o) == []
        at = bisect.bisect_right(times, o.time)
        times.insert(at, o.time)
        now, tr = T0 + t, sc.tracks["192.0.2.9"]
        for i, h in enumerate(hs):
            ws[i].insert(at, sc._hw[i][evidence(o)])

            def since(start: float) -> float:      # weights of the offences in (start, now]
                return sum(ws[i][bisect.bisect_right(times, start):])
            got = sc._long(tr, i, h, now)
            assert since(now - h.span + h.bucket) - 1e-9 <= got <= since(now - h.span) + 1e-9, (h.name, len(times))


def test_a_ban_after_many_offences_names_the_folded_ones_and_takes_their_worst_kind():
    """A day horizon of 100: by the 100th offence the first ones are only counted, yet they
    still count, and the worst kind among them (a HELO claiming to be us: 72 h) is the ban's."""
    sc = scorer(horizons=(Horizon("day", DAY, 100.0),))
    offs = [off("192.0.2.5", 0, "bad_helo", 1, rule="helo", reply=4)]
    offs += [off("192.0.2.5", 150 * i, reply=4 if i < 10 else 5) for i in range(1, 100)]   # 4 per 10 minutes
    assert feed(sc, offs[:-1]) == []
    [d] = sc.add(offs[-1])
    assert (d.kind, d.rule, d.duration) == ("bad_helo", "helo", 72 * HOUR)
    assert d.reason == "day: 100 offences in 1d >= 100: auth_failed x99 (9 temporary), bad_helo x1 (1 temporary)"


def test_a_cleared_score_keeps_the_offences_from_its_time_on():
    sc = scorer()
    assert feed(sc, [off("192.0.2.4", i) for i in (0, 1, 2, 12)]) == []
    sc.clear("192.0.2.4", T0 + 12)                          # from 12 on they still count
    assert sc.score("192.0.2.4", T0 + 12) == 1
    assert feed(sc, [off("192.0.2.4", i) for i in (13, 14, 15)]) == []
    assert len(feed(sc, [off("192.0.2.4", 16)])) == 1     # the 5th since 12
    # A track with counters (more offences than kept one by one) cleared: it goes on counting.
    sc = scorer(threshold=1e9, horizons=(Horizon("day", DAY, 1e9),))
    feed(sc, [off("192.0.2.6", 10 * i) for i in range(100)])
    sc.clear("192.0.2.6", T0 + 950)
    feed(sc, [off("192.0.2.6", 1000 + 10 * i) for i in range(100)])
    sc.score("192.0.2.6", T0 + 2000)                       # prunes and folds
    day = sc.policy.horizons[0]
    assert sc._long(sc.tracks["192.0.2.6"], 0, day, T0 + 2000) == 105     # 950..990 and the 100 new


def test_a_partner_is_recorded_once_and_only_with_its_name():
    sc = Scorer(Policy(), AllowList(names=["*.mailout.example.com"], own=()))
    for t in (1, 2):
        sc.add(off("198.51.100.5", t, "dnsbl", 5, name="a.mailout.example.com"))
    sc.seed(off("203.0.113.5", 3, "dnsbl", 5, name="b.mailout.example.com"))    # put back: no name to record
    assert sc.new_partners == [("198.51.100.5", "a.mailout.example.com", T0 + 1)]
    assert sc.target_of("203.0.113.7") == ("203.0.113.7", None)                 # yet its network is protected


def test_a_permanent_member_makes_the_network_ban_permanent():
    sc = scorer(durations={"virus": None, "dnsbl": 6 * HOUR})
    [a] = sc.add(off("198.51.100.1", 0, "virus", 5))
    assert a.duration is None
    [n] = dnsbl_hits(sc, ["198.51.100.2", "198.51.100.3"], 10)[-1:]
    assert n.target == "198.51.100.0/24" and n.duration is None and n.kind == "virus"


def test_a_burst_ban_takes_its_kind_from_the_burst_alone():
    """Older offences (kept one by one, or only counted) name no burst ban's kind: a HELO
    claiming to be us an hour ago does not make a SASL failure worth 5 a 72 h ban."""
    for n_old, gap in ((1, HOUR), (80, HOUR), (1, 600)):   # 80: the HELO is folded into counters;
        sc = scorer(horizons=(Horizon("day", DAY, 1e9),))   # 600: the HELO just out of the window
        old = [off("192.0.2.8", 0, "bad_helo", 1, rule="helo")]
        old += [off("192.0.2.8", 150 * i) for i in range(1, n_old)]          # 4 per 10 minutes
        assert feed(sc, old) == []
        [d] = sc.add(off("192.0.2.8", 150 * (n_old - 1) + gap, score=5))
        assert (d.kind, d.duration) == ("auth_failed", HOUR), (n_old, gap)
        assert d.reason.endswith(": auth_failed x1"), d.reason


# ---- what the engine asks of the scorer besides add() ---------------------------------------

def test_seeded_offences_count_but_decide_nothing_by_themselves():
    sc = scorer()
    for i in range(7):                                       # more than a threshold, put back after a restart
        sc.seed(off("192.0.2.1", i))
    assert sc.stats.decisions == 0 and sc.score("192.0.2.1", T0 + 10) == 7
    [d] = sc.add(off("192.0.2.1", 10))
    assert d.target == "192.0.2.1" and d.score == 8
    # Not seeded: an allow-listed address, a name-allowed client, and a client banned at that time.
    sc = Scorer(Policy(), AllowList(["192.0.2.2"], names=["*.mailout.example.com"], own=()))
    sc.seed(off("192.0.2.2", 0))
    sc.seed(off("198.51.100.5", 0, name="a.mailout.example.com"))
    [b] = sc.add(off("203.0.113.3", 0, "dnsbl", 5))
    sc.seed(off("203.0.113.3", 1))
    assert sc.tracks == {}
    assert sc.target_of("198.51.100.6") == ("198.51.100.6", None)       # its network is protected
    assert len(feed(sc, [off("203.0.113.3", b.expires - T0 + i) for i in range(5)])) == 1


def test_forget_drops_only_history_past_the_lookback():
    sc = scorer(lookback=10 * DAY)
    [a] = sc.add(off("192.0.2.1", 0, "auth_failed", 5))              # 1 h, long over
    [b] = sc.add(off("192.0.2.2", 5 * DAY, "auth_failed", 5))
    [c] = sc.add(off("192.0.2.3", 0, "auth_failed", 5))
    sc.release(a.target)                                              # over: released, as the engine does
    sc.release(b.target)
    assert sc.forget(T0 + 10 * DAY + 1) == 1
    assert set(sc.history) == {"192.0.2.2", "192.0.2.3"}
    assert sc.forget(T0 + 10 * DAY + 2) == 0
    [d] = sc.add(off("192.0.2.1", 11 * DAY, "auth_failed", 5))
    assert (d.duration, d.count) == (HOUR, 1)                         # forgotten: a first ban again
    [e] = sc.add(off("192.0.2.2", 11 * DAY, "auth_failed", 5))
    assert (e.duration, e.count) == (2 * HOUR, 2)


def test_forget_drops_member_bans_over_and_keeps_the_others():
    sc = scorer()
    dnsbl_hits(sc, ["198.51.100.1", "198.51.100.2"], 0)                # 6 h each, not yet a /24
    assert sc.forget(T0 + 6 * HOUR - 10) == 0 and "198.51.100.0/24" in sc._members
    sc.forget(T0 + 6 * HOUR + 10)
    assert "198.51.100.0/24" not in sc._members


def test_would_ban_is_what_add_does_and_changes_nothing():
    sc = scorer()
    feed(sc, [off("192.0.2.1", i) for i in range(4)])
    assert not sc.would_ban(off("192.0.2.9", 4))
    assert sc.would_ban(off("192.0.2.1", 4)) and sc.score("192.0.2.1", T0 + 4) == 4
    [d] = sc.add(off("192.0.2.1", 4))
    assert not sc.would_ban(off("192.0.2.1", 5, "dnsbl", 5))          # banned already
    assert sc.would_ban(off("192.0.2.1", d.expires - T0, "dnsbl", 5))   # over at its end exactly


def test_rate_key_is_the_target_or_none_for_who_is_never_an_offender():
    sc = Scorer(Policy(), AllowList(["192.0.2.2"], names=["*.mailout.example.com"], own=(),
                                    big=["*.big.example.net"]))
    assert sc.rate_key("192.0.2.1", None) == "192.0.2.1"
    assert sc.rate_key("2001:db8:1::5", None) == "2001:db8:1::/64"
    assert sc.rate_key("192.0.2.2", None) is None                                  # allow-listed
    assert sc.rate_key("198.51.100.5", "a.mailout.example.com", T0) is None       # allowed by name ...
    assert sc.new_partners == [("198.51.100.5", "a.mailout.example.com", T0)]     # ... and learned
    assert sc.rate_key("203.0.113.5", "mx.big.example.net", T0) == "203.0.113.5"  # counted, a partner
    assert sc.target_of("203.0.113.6") == ("203.0.113.6", None)
    assert sc.rate_key("224.0.0.5", None) is None                                 # never a target


def test_count_gives_the_target_an_offence_is_recorded_for_or_none_for_who_is_never_an_offender():
    sc = Scorer(Policy(), AllowList(["192.0.2.2"], names=["*.mailout.example.com"], own=(),
                                    big=["*.big.example.net"]))
    assert sc.count(off("2001:db8:1::5", 0)) == ("2001:db8:1::/64", [])
    assert sc.count(off("192.0.2.2", 0)) == (None, [])                                         # allow-listed
    assert sc.count(off("198.51.100.5", 0, name="a.mailout.example.com")) == (None, [])        # allowed by name
    assert sc.count(off("224.0.0.5", 0)) == (None, [])                                         # never a target
    assert sc.count(off("203.0.113.5", 0, "dnsbl", 5, name="mx.big.example.net")) == ("203.0.113.5", [])
    target, [d] = sc.count(off("192.0.2.9", 1, "dnsbl", 5))
    assert target == d.target == "192.0.2.9"
    assert sc.count(off("192.0.2.9", 2, "dnsbl", 5)) == ("192.0.2.9", [])                      # while banned
    assert (sc.stats.allowed, sc.stats.not_target, sc.stats.big_senders, sc.stats.while_banned) == (2, 1, 1, 1)


def test_scores_are_each_target_s_burst_score_at_its_own_time():
    sc = scorer()
    feed(sc, [off("192.0.2.1", 0, score=2), off("192.0.2.1", 700), off("192.0.2.3", 0, score=3)])
    assert sc.scores({"192.0.2.1": T0 + 700, "192.0.2.3": T0 + 1, "192.0.2.4": T0}) == {
        "192.0.2.1": 1, "192.0.2.3": 3, "192.0.2.4": 0.0}      # the first offence of .1 is past the window


def test_horizon_totals_are_exact_per_horizon():
    from logban.score import horizon_totals
    p = Policy()
    offs = [off("192.0.2.1", -2 * DAY), off("192.0.2.1", -2 * HOUR), off("192.0.2.1", -100, reply=4),
            off("192.0.2.1", -50, "dnsbl", 3), off("192.0.2.1", 60)]                  # the last one: later
    assert horizon_totals(p, offs, T0, False) == {"burst": 0.5 + 3, "hour": 2, "day": 3}
    assert horizon_totals(p, offs, T0, True) == {"burst": 3.5, "hour": 2, "day": 3, "week": 4}
    decayed = horizon_totals(Policy(window=None, half_life=100), offs[2:4], T0, False)["burst"]
    assert math.isclose(decayed, 0.5 * 0.5 + 3 * 0.5 ** 0.5)
    assert horizon_totals(p, offs, T0 - 600, False)["burst"] == 0                  # the window ends at now - 600


def test_a_long_horizon_leaves_out_an_offence_exactly_its_span_old():
    sc = scorer(horizons=(Horizon("hour", HOUR, 5.0),))
    assert feed(sc, [off("192.0.2.1", 900 * i) for i in range(5)]) == []    # 0 .. 3600: the first is out
    assert len(feed(sc, [off("192.0.2.1", 3601)])) == 1


def test_a_ban_decided_elsewhere_uses_the_score_up_too():
    from logban.score import Decision
    sc = scorer()
    feed(sc, [off("192.0.2.1", i) for i in range(4)])
    sc.mark_banned(Decision("192.0.2.1", "manual", "", 0, T0 + 5, 60.0, 1, False, "elsewhere"))
    sc.release("192.0.2.1")                                  # over (or lifted)
    assert sc.score("192.0.2.1", T0 + 70) == 0
    assert feed(sc, [off("192.0.2.1", 70)]) == []


def test_the_burst_counts_the_recent_offences_of_a_client_with_many():
    """The 65th offence: the oldest goes to the counters, the newest five still make a burst."""
    sc = scorer(horizons=(Horizon("day", DAY, 1e9),))
    assert feed(sc, [off("192.0.2.1", 150 * i) for i in range(64)]) == []       # 4 per 10 minutes
    [d] = sc.add(off("192.0.2.1", 150 * 63 + 10))
    assert d.reason.startswith("burst: score 5"), d.reason
    assert sc.score("192.0.2.2", T0 + 400 * DAY) == 0


def test_a_late_offence_counts_at_the_newest_time():
    sc = scorer(horizons=(Horizon("day", DAY, 1e9),))     # the burst decides; the day keeps the one at 0
    assert feed(sc, [off("192.0.2.1", t) for t in (0, 500, 700, 800, 900)]) == []
    [d] = sc.add(off("192.0.2.1", 650))                    # from another node, after the others
    # the window ends at the newest offence (900): the one at 0 is out of it
    assert (d.time, d.score) == (T0 + 900, 5) and d.reason.startswith("burst: score 5"), d.reason
    sc = scorer()
    feed(sc, [off("192.0.2.3", i) for i in range(3)])
    assert sc.score("192.0.2.3", T0 + 400 * DAY) == 0      # all past every horizon: pruned away


def test_a_horizon_for_clients_banned_before_listed_first_skips_only_itself():
    hs = (Horizon("week", 7 * DAY, 3.0, repeat=True), Horizon("day", DAY, 4.0))
    sc = scorer(horizons=hs)
    [d] = feed(sc, [off("192.0.2.1", i * HOUR) for i in range(4)])      # never banned: the day decides
    assert d.reason.startswith("day: 4 offences"), d.reason


# ---- addresses as numbers, eviction's fast rank (issue 18, scan --apply at 1M offenders) -----

from logban.allow import parse_network  # noqa: E402
from logban.score import Track  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([4, 6]), st.integers(0, 2**128 - 1), st.integers(0, 128)), min_size=1, max_size=5),
       st.integers(0, 4), st.integers(0, 2**40), st.sampled_from(["plain", "mapped", "exploded"]))
def test_scorer_allows_exactly_what_ipaddress_says(nets, pick, flip, spelling):
    """Allowed (not scored, not recorded) exactly when ipaddress puts the address in an entry,
    whatever its spelling; an IPv4-mapped address stays IPv6, as it always did."""
    entries = []
    for v, num, plen in nets:
        bits = 32 if v == 4 else 128
        plen = min(plen, bits)
        num = (num >> (128 - bits)) >> (bits - plen) << (bits - plen)
        entries.append(ipaddress.ip_network((num, plen)) if v == 4 else ipaddress.IPv6Network((num, plen)))
    n = entries[pick % len(entries)]
    a = ipaddress.ip_address(int(n.network_address) ^ (flip & (2 ** (n.max_prefixlen - n.prefixlen + 1) - 1))) \
        if n.version == 4 else ipaddress.IPv6Address(int(n.network_address) ^ (flip & (2 ** (128 - n.prefixlen + 1) - 1)))
    text = {"plain": str(a), "exploded": a.exploded,
            "mapped": f"::ffff:{a}" if a.version == 4 else str(a)}[spelling]
    want = ipaddress.ip_address(text)
    allow = AllowList([str(e) for e in entries], own=())
    sc = Scorer(Policy(), allow)
    sc.add(off(text, 0))
    # An entry in ::ffff:0:0/96 is read as the IPv4 network it spells (parse_network).
    inside = any(want in parse_network(e) for e in [*map(str, entries), *AllowList.ALWAYS])
    assert sc.stats.allowed == int(inside)
    assert sc.rate_key(text, None) is None or not inside


def test_a_new_address_is_scored_without_an_address_object(monkeypatch):
    """A distributed attack brings a new address every line: no ipaddress object for it."""
    sc = Scorer(Policy(), AllowList(["192.0.2.0/25", "2001:db8:aa::/48"], own=()))

    def boom(*a, **k):
        raise AssertionError("an ipaddress object per address")
    monkeypatch.setattr(ipaddress.IPv4Address, "__init__", boom)
    monkeypatch.setattr(ipaddress.IPv6Address, "__init__", boom)
    for i, ip in enumerate(["192.0.2.1", "198.51.100.7", "2001:db8:aa:1::5", "2001:db8:ab:cd::5", "2001:db8:ab:cd::6"]):
        sc.add(off(ip, i))
    assert sc.stats.allowed == 2
    assert set(sc.tracks) == {"198.51.100.7", "2001:db8:ab:cd::/64"}
    assert sc.target_of("198.51.100.7") == ("198.51.100.7", "198.51.100.0/24")


@settings(max_examples=300, deadline=None)
@given(st.floats(-3 * DAY, 10 * DAY), st.floats(0, 10 * DAY), st.sampled_from([0.5, 1.0, 2.0, 5.0]), st.integers(0, 2),
       st.integers(0, 3), st.sampled_from([600.0, None]))
def test_the_burst_score_of_a_one_offence_client_is_the_general_path_s(t, now, score, cls, folded, window):
    """`_burst`'s shortcut for a lone offence (what eviction ranks most clients by) gives what
    pruning and summing give: a track with counters takes the general path."""
    sc = scorer(window=window, half_life=None if window else 300.0)
    fast, slow = Track(), Track()
    for tr in (fast, slow):
        tr.ev.append((T0 + t, score, cls, "auth_failed", "r"))
        tr.folded = folded
    slow.agg = array("d", bytes(8 * (BUCKETS + 1) * len(sc.policy.horizons)))
    got, want = sc._burst(fast, T0 + now), sc._burst(slow, T0 + now)
    assert got == want and type(got) is type(want)
    assert fast.ev == slow.ev
