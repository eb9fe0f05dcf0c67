"""What a scan found, for people (a table) and for scripts (JSON)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from .parse import Offence, ParseStats, iso

TRACK_MAX = 200_000      # addresses counted exactly; beyond, the least active are dropped


@dataclass
class _Client:
    count: int
    first: float
    last: float
    kinds: Counter


@dataclass
class ScanSummary:
    files: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    by_kind: Counter = field(default_factory=Counter)
    clients: dict[str, _Client] = field(default_factory=dict)
    approximate: bool = False        # some low-count addresses were dropped from `clients`
    seconds: float = 0.0

    def add(self, offences: list[Offence]) -> None:
        by_kind, clients = self.by_kind, self.clients
        for o in offences:
            by_kind[o.kind] += 1
            c = clients.get(o.ip)
            if c is None:
                clients[o.ip] = _Client(1, o.time, o.time, Counter({o.kind: 1}))
                if len(clients) > TRACK_MAX:
                    self._shrink()
            else:
                c.count += 1
                c.kinds[o.kind] += 1
                if o.time < c.first:
                    c.first = o.time
                if o.time > c.last:
                    c.last = o.time

    def _shrink(self) -> None:
        """Space-saving: keep memory bounded during a distributed attack."""
        keep = sorted(self.clients.items(), key=lambda kv: kv[1].count, reverse=True)[: TRACK_MAX // 2]
        self.clients = dict(keep)
        self.approximate = True

    def top(self, n: int) -> list[tuple[str, _Client]]:
        return sorted(self.clients.items(), key=lambda kv: (-kv[1].count, kv[0]))[:n]


def as_json(s: ScanSummary, stats: ParseStats, top: int) -> dict:
    total = sum(s.by_kind.values())
    return {
        "files": s.files,
        "failed": s.failed,
        "lines": stats.lines,
        "offences": total,
        "addresses": len(s.clients),
        "approximate": s.approximate,
        "by_kind": dict(s.by_kind.most_common()),
        "by_rule": {k: v for k, v in stats.hits.most_common()},
        "top": [{"ip": ip, "count": c.count, "kinds": dict(c.kinds.most_common()),
                 "first": iso(c.first), "last": iso(c.last)} for ip, c in s.top(top)],
        "skipped": {"no_header": stats.no_header, "bad_address": stats.bad_address,
                    "timeouts": stats.timeouts, "truncated": stats.truncated,
                    "unresolved": stats.unresolved},
        "seconds": round(s.seconds, 3),
    }


def event(o: Offence) -> str:
    return json.dumps({"time": o.iso_time, "ip": o.ip, "mta": o.mta, "rule": o.rule, "kind": o.kind,
                       "score": o.score, "file": o.file, "line": o.line}, separators=(",", ":"))


def _short(t: float) -> str:
    return iso(t)[:19].replace("T", " ")


def human(s: ScanSummary, stats: ParseStats, top: int) -> str:
    total = sum(s.by_kind.values())
    rate = f", {stats.lines / s.seconds:,.0f} lines/s" if s.seconds > 0 else ""
    out = [f"Scanned {len(s.files)} file(s), {stats.lines:,} lines in {s.seconds:.2f} s{rate}.",
           f"Offences: {total:,} from {len(s.clients):,} address(es){' (approximate)' if s.approximate else ''}."]
    if total:
        out += ["", "By kind:"]
        w = max(len(k) for k in s.by_kind)
        for kind, n in s.by_kind.most_common():
            out.append(f"  {kind:<{w}}  {n:>9,}  {100 * n / total:5.1f}%")
    rows = s.top(top)
    if rows:
        out += ["", f"Top {len(rows)} offenders:"]
        wip = max(len(ip) for ip, _ in rows)
        out.append(f"  {'address':<{wip}}  {'count':>7}  {'first seen (UTC)':<19}  {'last seen (UTC)':<19}  kinds")
        for ip, c in rows:
            kinds = ", ".join(f"{k} {n}" for k, n in c.kinds.most_common())
            out.append(f"  {ip:<{wip}}  {c.count:>7,}  {_short(c.first)}  {_short(c.last)}  {kinds}")
    skipped = [(n, what) for n, what in (
        (stats.no_header, "candidate lines without a header logban understands"),
        (stats.bad_address, "matches whose address field held no address"),
        (stats.timeouts, "lines whose rule match ran out of time"),
        (stats.truncated, "lines cut at the length limit"),
        (stats.unresolved, "offences whose session never named a client")) if n]
    if skipped:
        out += ["", "Skipped:"] + [f"  {n:,} {what}" for n, what in skipped]
    if s.failed:
        out += ["", "Could not read completely:"] + [f"  {f}" for f in s.failed]
    return "\n".join(out)
