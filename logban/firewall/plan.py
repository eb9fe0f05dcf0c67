"""What the kernel should hold, and what to change to get there (pure)."""
from __future__ import annotations

import math
import socket
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

KERNEL_TIMEOUT_MAX = 2_147_483      # seconds: ipset's maximum, used by every backend alike
# A kernel timeout off from the ban's remaining time by more than this is refreshed ...
SLACK = 10
# ... except a capped one (a ban longer than the kernel takes), refreshed once less
# than a day of the cap is left, so that periodic syncs do not rewrite it every time.
REFRESH_CAPPED = 86_400
IPTABLES_LINEAR = 5_000            # iptables rules are matched one by one: warn beyond this
ACTIONS = ("drop", "reject")
BACKENDS = ("auto", "nftables", "ipset", "iptables", "none")


@dataclass(frozen=True)
class FirewallOptions:
    backend: str = "auto"
    action: str = "drop"
    ports: tuple[int, ...] = ()     # TCP ports to close to banned clients; empty: all traffic
    forward: bool = False           # the forward hook too (a mail server in a container)


def kernel_timeout(expires: float | None, now: float) -> int | None:
    """Seconds an element lives in the kernel; None: no timeout (a permanent ban)."""
    if expires is None:
        return None
    return max(1, min(KERNEL_TIMEOUT_MAX, math.ceil(expires - now)))


def _key(target: str) -> tuple[int, int, int]:
    """(version, network number, prefix length) of a canonical address or CIDR."""
    addr, _, plen = target.partition("/")
    fam, bits = (socket.AF_INET6, 128) if ":" in addr else (socket.AF_INET, 32)
    num = int.from_bytes(socket.inet_pton(fam, addr), "big")
    return (6 if bits == 128 else 4), num, int(plen) if plen else bits


def prefix(target: str) -> tuple[int, int]:
    """(IP version, prefix length) of a canonical target, from its text."""
    addr, slash, pl = target.partition("/")
    v = 6 if ":" in addr else 4
    return v, int(pl) if slash else (128 if v == 6 else 32)


def wanted(bans: Iterable, now: float, exclusive: Mapping[int, Container[int]] | None = None) -> dict[str, int | None]:
    """Kernel elements for the enforced active bans: target -> kernel timeout.

    Of the targets whose prefix length `exclusive` names for their IP version (None:
    all), one inside another of them is left out: they share a kernel set that refuses
    overlapping intervals (nftables), and the network drops the packets already. Others
    are all kept, nested or not: the kernel then holds exactly the store's bans, and
    lifting a network leaves its members' own bans in force with nothing to put back.
    """
    want: dict[str, int | None] = {}
    get, ceil = want.get, math.ceil
    for b in bans:
        exp = b.expires
        if b.dry_run or (exp is not None and exp <= now):
            continue
        t = None if exp is None else min(KERNEL_TIMEOUT_MAX, ceil(exp - now))     # kernel_timeout: exp > now
        target = b.target
        old = get(target, 0)
        want[target] = None if t is None or old is None else t if t > old else old
    if exclusive is not None and not any(exclusive.values()):
        return want
    # Cheap first, from the few kinds of text there are (IP version, what follows "/"):
    # a family can have covered targets only when one of its networks among the exclusive
    # lengths is shorter than its longest target of those lengths.
    pooled: set[tuple[bool, str]] = set()
    shortest = {4: 33, 6: 129}
    longest = {4: 0, 6: 0}
    for is6, pl in {(":" in t, t.partition("/")[2]) for t in want}:
        v = 6 if is6 else 4
        plen = int(pl) if pl else (128 if is6 else 32)
        if exclusive is not None and plen not in exclusive[v]:
            continue
        pooled.add((is6, pl))
        if pl and plen < shortest[v]:
            shortest[v] = plen
        longest[v] = max(longest[v], plen)
    check = {v for v in (4, 6) if shortest[v] < longest[v]}
    if not check:
        return want
    pool = [t for t in want if (6 if ":" in t else 4) in check and (":" in t, t.partition("/")[2]) in pooled]
    nets: dict[int, set[tuple[int, int]]] = {4: set(), 6: set()}       # version -> {(plen, number)}
    keys = {t: _key(t) for t in pool}
    for target, (v, num, plen) in keys.items():
        if "/" in target:
            nets[v].add((plen, num))
    lens = {v: sorted({p for p, _ in s}) for v, s in nets.items()}
    for target, (v, num, plen) in keys.items():
        bits = 128 if v == 6 else 32
        for p in lens[v]:
            if p >= plen:
                break
            if (p, num >> (bits - p) << (bits - p)) in nets[v]:
                del want[target]
                break
    return want


@dataclass
class Plan:
    add: dict[str, int | None] = field(default_factory=dict)      # target -> kernel timeout
    remove: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)    # banned, not in the kernel
    unknown: list[str] = field(default_factory=list)    # in the kernel, not banned
    stale: list[str] = field(default_factory=list)      # in both, with the wrong time left

    @property
    def drift(self) -> int:
        return len(self.missing) + len(self.unknown) + len(self.stale)


def _stale(want: int | None, have: int | None) -> bool:
    if want is None or have is None:
        return want != have
    if have > want + SLACK:
        return True                 # the kernel would hold it after the ban ends
    if want >= KERNEL_TIMEOUT_MAX:
        return have < KERNEL_TIMEOUT_MAX - REFRESH_CAPPED
    return have < want - SLACK


_ABSENT = object()


def plan(want: Mapping[str, int | None], have: Mapping[str, int | None]) -> Plan:
    """What makes the kernel (`have`) equal the store (`want`)."""
    p = Plan()
    get = have.get
    for t, secs in want.items():
        left = get(t, _ABSENT)
        if left is _ABSENT:
            p.missing.append(t)
            p.add[t] = secs
        elif secs is not None and left is not None and secs - SLACK <= left <= secs + SLACK and secs < KERNEL_TIMEOUT_MAX:
            continue                        # the usual case, in line: close enough (see _stale)
        elif _stale(secs, left):
            p.stale.append(t)
            p.remove.append(t)
            p.add[t] = secs
    # All of `have` is wanted when it holds as many as the wanted it holds (the usual case: no pass over it).
    p.unknown = [] if len(have) == len(want) - len(p.missing) else [t for t in have if t not in want]
    p.remove.extend(p.unknown)
    return p
