"""Decisions per client on real logs: who was banned, who got away, whom a ban may hurt.

    python3 bench/decisions_bench.py LOG...            # the default policy, and the one before issue 19
    python3 bench/decisions_bench.py --list LOG...     # and every client that got away, every doubtful ban
    python3 bench/decisions_bench.py --clients 1000000 # memory: that many distinct clients scored

Replays the logs (oldest first, as `scan --apply --dry-run` would) through the scorer with
the shipped rules and prints, per policy:
- bans made, per horizon (the ban reason names the one that fired);
- clients with >= 5 offences within an hour or >= 10 within a day, and how many of them no
  ban covered (verified big senders apart: they are never banned automatically, by design);
- bans of clients that also sent accepted mail (Postfix "QUEUEID: client=name[addr]"): for a
  human to judge, with the client's verified name;
- lines/s and peak RSS.
"before" is the policy logban had before issue 19: one 10-minute horizon, every reply
weighing alike, no big-senders list.
"""
from __future__ import annotations

import argparse
import bisect
import ipaddress
import re
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logban.allow import AllowList
from logban.config import Config
from logban.parse import Clock, Offence, Parser
from logban.rules import load_rules
from logban.score import DAY, HOUR, Policy, Scorer
from logban.sources import expand, open_source

ACCEPTED = re.compile(rb"postfix[^ \[]*/smtpd\[\d+\]: [0-9A-Za-z]{5,20}: client=([^\s\[\]]{0,255})\[([^\]\s]{1,64})\]")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read(paths: list[str]) -> tuple[list[Offence], dict[str, str], int, float]:
    """Offences of all logs in time order, accepted-mail clients (ip -> name), lines, seconds."""
    rules = load_rules()
    offences: list[Offence] = []
    accepted: dict[str, str] = {}
    lines, t0 = 0, time.perf_counter()
    for src in expand(paths):
        with open_source(src) as f:
            data = f.read()
        parser = Parser(rules, clock=Clock())
        parser.file = src.name
        offences += parser.parse_lines(data)
        lines += parser.stats.lines
        for m in ACCEPTED.finditer(data):
            ip = m.group(2).decode("ascii", "replace")
            try:
                ip = str(ipaddress.ip_address(ip.removeprefix("IPv6:")))
            except ValueError:
                continue
            accepted[ip] = m.group(1).decode("ascii", "replace")
    offences.sort(key=lambda o: o.time)
    return offences, accepted, lines, time.perf_counter() - t0


def persistent(offences: list[Offence]) -> dict[str, tuple[int, int]]:
    """Clients with >= 5 offences within an hour or >= 10 within a day: ip -> (most in an hour, in a day)."""
    times: dict[str, list[float]] = defaultdict(list)
    for o in offences:
        times[o.ip].append(o.time)
    out = {}
    for ip, ts in times.items():
        hour = max(i - bisect.bisect_left(ts, t - HOUR + 1e-6) + 1 for i, t in enumerate(ts))
        day = max(i - bisect.bisect_left(ts, t - DAY + 1e-6) + 1 for i, t in enumerate(ts))
        if hour >= 5 or day >= 10:
            out[ip] = (hour, day)
    return out


def covered(ip: str, targets: set[str], nets: list) -> bool:
    if ip in targets:
        return True
    a = ipaddress.ip_address(ip)
    return any(a.version == n.version and a in n for n in nets)


def replay(name: str, policy: Policy, big: tuple[str, ...], offences: list[Offence], accepted: dict[str, str],
           wanted: dict[str, tuple[int, int]], listing: bool) -> None:
    allow = AllowList(own=(), big=big)
    sc = Scorer(policy, allow)
    t0 = time.perf_counter()
    by_horizon: dict[str, int] = defaultdict(int)
    reasons: dict[str, str] = {}
    for o in offences:
        for d in sc.add(o):
            h = d.reason.split(":", 1)[0] if not d.members else "network"
            by_horizon[h if h in ("burst", "network", *(x.name for x in policy.horizons)) else "burst"] += 1
            reasons.setdefault(d.target, d.reason)
    secs = time.perf_counter() - t0
    targets = set(reasons)
    nets = [ipaddress.ip_network(t) for t in targets if "/" in t]
    names = {o.ip: o.name for o in offences if o.name}
    missed = [ip for ip in wanted if not covered(ip, targets, nets)]
    big_missed = [ip for ip in missed if allow.big_sender(names.get(ip))]
    hit = len(wanted) - len(missed)
    print(f"\n== {name}: {sum(by_horizon.values()):,} bans ({secs:.2f} s scoring)")
    for h, n in sorted(by_horizon.items(), key=lambda kv: -kv[1]):
        print(f"   {h:<8} {n:6,}")
    legit = [ip for ip in missed if ip in accepted and ip not in big_missed]
    others = len(wanted) - len(big_missed) - len(legit)
    print(f"   clients with >= 5 offences/hour or >= 10/day: {len(wanted):,}; banned {hit:,}"
          f" ({100 * hit / max(1, len(wanted)):.0f}%); not banned {len(missed):,}: verified big senders"
          f" (by design) {len(big_missed):,}, clients that also sent accepted mail {len(legit):,},"
          f" others {others - hit:,} ({100 * hit / max(1, others):.0f}% of the others banned)")
    bigs = {ip for ip, n in names.items() if Config().big_senders and AllowList(own=(), big=Config().big_senders).big_sender(n)}
    print(f"   verified big senders with offences: {len(bigs):,}; banned: "
          f"{sum(covered(ip, targets, nets) for ip in bigs):,}")
    own = sorted(t for t in targets if t in accepted)
    inside = sorted({ip for n in nets for ip in accepted if ipaddress.ip_address(ip) in n} - set(own))
    by_kind: dict[str, int] = defaultdict(int)
    for t in own:
        by_kind[reasons[t].split(": ", 2)[-1].split(" x")[0]] += 1
    print(f"   bans of clients that also sent accepted mail: {len(own):,} by address"
          f" ({', '.join(f'{k} {n}' for k, n in sorted(by_kind.items(), key=lambda kv: -kv[1]))}),"
          f" {len(inside):,} more inside network bans")
    if listing:
        for t in own:
            print(f"     {t:<18} {accepted[t] or '-':<44} {reasons[t][:100]}")
        for ip in sorted(missed, key=lambda i: -wanted[i][1]):
            print(f"     missed {ip:<18} {wanted[ip][0]:4}/h {wanted[ip][1]:5}/d  {names.get(ip) or 'unknown'}")


def memory(n: int) -> None:
    """`n` distinct clients, each with a temporary reject now and then over a day (a distributed
    bot net retrying): peak RSS with the default bound on clients scored, and without one."""
    for max_tracked in (Policy().max_tracked, n):
        sc = Scorer(Policy(max_tracked=max_tracked), AllowList(own=()))
        base, t0 = rss_mb(), time.perf_counter()
        for i in range(n):
            ip = f"{100 + (i >> 24)}.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            for k in range(1 + i % 3):
                sc.add(Offence(1_795_000_000.0 + (i * 86400.0 / n) + k * 1800, ip, "postfix", "r", "bad_helo",
                               2.0, "f", 1, b"", None, 4))
        print(f"max_tracked {max_tracked:>9,}: {n:,} clients, {len(sc.tracks):,} tracked, "
              f"{time.perf_counter() - t0:.1f} s, peak RSS {rss_mb():.0f} MB (was {base:.0f} MB before)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="*")
    ap.add_argument("--list", action="store_true", help="every client that got away")
    ap.add_argument("--clients", type=int, help="memory bench: this many distinct clients")
    a = ap.parse_args()
    if a.clients:
        memory(a.clients)
        return 0
    if not a.logs:
        ap.error("give LOG files, or --clients N")
    offences, accepted, lines, secs = read(a.logs)
    wanted = persistent(offences)
    print(f"{lines:,} lines, {len(offences):,} offences from {len({o.ip for o in offences}):,} clients, "
          f"{len(accepted):,} clients sent accepted mail ({lines / max(secs, 1e-9):,.0f} lines/s parsing)")
    before = Policy(horizons=(), transient=1.0, verified_transient=1.0)
    replay("before (burst only, replies alike, no big-senders list)", before, (), offences, accepted, wanted, a.list)
    replay("default policy", Policy(), Config().big_senders, offences, accepted, wanted, a.list)
    print(f"\npeak RSS {rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
