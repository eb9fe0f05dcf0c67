"""What a scan found, for people (a table) and for scripts (JSON)."""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter

from .parse import Offence, ParseStats, file_label, iso

_KIND = attrgetter("kind")
_IP = attrgetter("ip")
TRACK_MAX = 100_000      # addresses counted exactly; beyond, the least active are dropped (scan stays < 150 MB)

# What a terminal may act on rather than show: C0 controls, DEL, C1 controls, lone
# surrogates (a file name's undecodable bytes), line and paragraph separators and the
# bidirectional overrides (they reorder what the admin reads).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    if 0xDC80 <= c <= 0xDCFF:                 # surrogateescape: the original byte
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x80 else f"\\u{c:04x}"     # \\xNN past 0x7f: an invalid UTF-8 byte


def safe(text) -> str:
    """Text an attacker may have written (log lines, names, reasons, file names), fit for a
    terminal: control characters escaped (ESC as \\x1b, C1 as \\u0085), invalid UTF-8 as \\xNN, ordinary
    printable text, UTF-8 included, as it is. JSON output needs none of this: json.dumps
    (ensure_ascii) escapes every control and non-ASCII character already."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "backslashreplace")
    elif not isinstance(text, str):
        text = "" if text is None else str(text)
    return _UNSAFE.sub(_escape, text)


class AllowFilter:
    """Leaves out the offences of clients the allow-list covers (loopback, this host's own
    addresses, [allow] addresses and verified host names): never offenders in a report."""

    def __init__(self, allow, lately: Callable[[str], bool | None] | None = None) -> None:
        """`lately(ip)`: whether the same allow-list covers an address, when that is known
        already (`Scorer.allowed_lately`, scan --apply: the scorer has just read every
        address), else None."""
        self.allow = allow
        self.lately = lately
        self.allow_listed = 0

    def __call__(self, offences: list[Offence]) -> list[Offence]:
        """`offences` without those of allowed clients (the same list when there are none)."""
        allow = self.allow
        # Each address once per batch: a batch holds the same few clients again and again.
        ips = set(map(_IP, offences))
        if self.lately is None:
            out = set(filter(allow.address_allowed, ips))
        else:
            # A distributed attack brings a new address on nearly every line: each read once, not twice.
            lately, allowed = self.lately, allow.address_allowed
            out = {ip for ip in ips if (k := lately(ip)) or (k is None and allowed(ip))}
        if allow.names:
            name = allow.name_allowed
            # Most offences come with no name: no call to find that out.
            keep = [o for o in offences if o.ip not in out and not (o.name and name(o.name))]
        elif out:
            keep = [o for o in offences if o.ip not in out]
        else:
            return offences
        self.allow_listed += len(offences) - len(keep)
        return keep


@dataclass(slots=True)
class _Client:
    count: int
    first: float
    last: float
    kind: str                        # the kind of every offence so far, or "" when they differ
    kinds: Counter | None = None     # per kind, once they differ: most clients have one kind

    def kind_counts(self) -> list[tuple[str, int]]:
        """(kind, offences), the most frequent first."""
        return self.kinds.most_common() if self.kinds is not None else [(self.kind, self.count)]


@dataclass
class ScanSummary:
    files: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    by_kind: Counter = field(default_factory=Counter)
    clients: dict[str, _Client] = field(default_factory=dict)
    approximate: bool = False        # some low-count addresses were dropped from `clients`
    seconds: float = 0.0
    allow_listed: int = 0            # offences of allow-listed clients: counted apart, never offenders

    def add(self, offences: list[Offence]) -> None:
        self.by_kind.update(map(_KIND, offences))       # counted in C
        clients = self.clients
        get = clients.get
        for o in offences:
            c = get(o.ip)
            if c is None:
                clients[o.ip] = _Client(1, o.time, o.time, o.kind)
                if len(clients) > TRACK_MAX:
                    self._shrink()
                    clients = self.clients
                    get = clients.get
            else:
                # Counted here, not by a method of _Client: a call per offence cost a tenth of the report.
                c.count += 1
                kinds = c.kinds
                if kinds is not None:
                    kinds[o.kind] += 1
                elif o.kind != c.kind:
                    c.kinds = Counter({c.kind: c.count - 1, o.kind: 1})
                    c.kind = ""
                t = o.time
                if t > c.last:
                    c.last = t
                elif t < c.first:
                    c.first = t

    def _shrink(self) -> None:
        """Space-saving: keep memory bounded during a distributed attack."""
        # The clients by count, the highest first, ties in the order they came (a stable sort),
        # sorted as positions keyed by a C method: a lambda per client cost twice the sort.
        ips, clients = list(self.clients), list(self.clients.values())
        counts = [c.count for c in clients]
        keep = sorted(range(len(ips)), key=counts.__getitem__, reverse=True)[: TRACK_MAX // 2]
        self.clients = {ips[i]: clients[i] for i in keep}
        self.approximate = True

    def top(self, n: int) -> list[tuple[str, _Client]]:
        return sorted(self.clients.items(), key=lambda kv: (-kv[1].count, kv[0]))[:n]


def as_json(s: ScanSummary, stats: ParseStats, top: int) -> dict:
    total = sum(s.by_kind.values())
    return {
        "files": [file_label(f) for f in s.files],         # JSON takes no lone surrogate
        "failed": [file_label(f) for f in s.failed],
        "lines": stats.lines,
        "offences": total,
        "addresses": len(s.clients),
        "approximate": s.approximate,
        "by_kind": dict(s.by_kind.most_common()),
        "by_rule": {k: v for k, v in stats.hits.most_common()},
        "top": [{"ip": ip, "count": c.count, "kinds": dict(c.kind_counts()),
                 "first": iso(c.first), "last": iso(c.last)} for ip, c in s.top(top)],
        "ignored": {"allow_listed": s.allow_listed},
        "skipped": {"no_header": stats.no_header, "bad_address": stats.bad_address,
                    "timeouts": stats.timeouts, "truncated": stats.truncated,
                    "truncated_skipped": stats.truncated_skipped, "not_target": stats.not_target,
                    "unresolved": stats.unresolved},
        "seconds": round(s.seconds, 3),
    }


# One encoder for every event: json.dumps with options builds a new one per call.
_EVENT = json.JSONEncoder(separators=(",", ":")).encode
_ISO: dict[float, str] = {}       # time -> iso(time): a log's lines share their seconds, and iso costs 3 µs


def event(o: Offence) -> str:
    """One offence as a line of `scan --events`."""
    t = _ISO.get(o.time)
    if t is None:
        if len(_ISO) >= 4096:
            _ISO.clear()
        t = _ISO[o.time] = iso(o.time)
    return _EVENT({"time": t, "ip": o.ip, "mta": o.mta, "rule": o.rule, "kind": o.kind,
                   "score": o.score, "file": o.file, "line": o.line})


def _short(t: float) -> str:
    return iso(t)[:19].replace("T", " ")


KINDS_WIDTH = 48          # characters of the kinds column; the rest is summed up as "+N more"


def _kinds_cell(kinds: list[tuple[str, int]]) -> str:
    """The kinds of one offender, most frequent first, within KINDS_WIDTH: a row never wraps."""
    parts = [f"{safe(k)} {n}" for k, n in kinds]
    for keep in range(len(parts), 0, -1):
        cell = ", ".join(parts[:keep]) + (f", +{len(parts) - keep} more" if keep < len(parts) else "")
        if len(cell) <= KINDS_WIDTH or keep == 1:
            return cell
    return ""


def top_table(rows: list[tuple[str, int, float, float, list[tuple[str, int]]]]) -> list[str]:
    """The top offenders with a header row: (address, count, first, last, kinds by count)."""
    wip = max(len("address"), *(len(safe(ip)) for ip, *_ in rows))
    out = [f"  {'address':<{wip}}  {'count':>7}  {'first seen (UTC)':<19}  {'last seen (UTC)':<19}  kinds"]
    for ip, count, first, last, kinds in rows:
        out.append(f"  {safe(ip):<{wip}}  {count:>7,}  {_short(first)}  {_short(last)}  {_kinds_cell(kinds)}")
    return out


def human(s: ScanSummary, stats: ParseStats, top: int) -> str:
    total = sum(s.by_kind.values())
    rate = f", {stats.lines / s.seconds:,.0f} lines/s" if s.seconds > 0 else ""
    out = [f"Scanned {len(s.files)} file(s), {stats.lines:,} lines in {s.seconds:.2f} s{rate}.",
           f"Offences: {total:,} from {len(s.clients):,} address(es){' (approximate)' if s.approximate else ''}."]
    if s.allow_listed:
        out.append(f"Ignored: allow-listed {s.allow_listed:,} (offences of loopback, this host's own "
                   "and [allow] clients: never offenders)")
    if total:
        out += ["", "By kind:"]
        w = max(len(k) for k in s.by_kind)
        for kind, n in s.by_kind.most_common():
            out.append(f"  {kind:<{w}}  {n:>9,}  {100 * n / total:5.1f}%")
    rows = s.top(top)
    if rows:
        out += ["", f"Top {len(rows)} offenders:"]
        out += top_table([(ip, c.count, c.first, c.last, c.kind_counts()) for ip, c in rows])
    skipped = [(n, what) for n, what in (
        (stats.no_header, "candidate lines without a header logban understands"),
        (stats.bad_address, "matches whose address field held no address"),
        (stats.timeouts, "lines whose rule match ran out of time"),
        (stats.truncated, "lines cut at the length limit"),
        (stats.truncated_skipped, "cut lines not given to rules that read the line end"),
        (stats.not_target, "matches naming an address that is never banned (multicast, link-local, ...)"),
        (stats.unresolved, "offences whose session never named a client (their line names a queue id or "
                           "pid, and no line read ties that to an address)")) if n]
    if skipped:
        out += ["", "Skipped:"] + [f"  {n:,} {what}" for n, what in skipped]
    if s.failed:
        out += ["", "Could not read completely:"] + [f"  {safe(f)}" for f in s.failed]
    return "\n".join(out)


# ---- the store, for people and scripts ------------------------------------------------

def _iso(t: float | None) -> str | None:
    return None if t is None else iso(t)


def ban_json(b) -> dict:
    """One ban as `list --json` gives it (the contract's keys first)."""
    return {"target": b.target, "kind": b.kind, "reason": b.reason, "score": b.score,
            "since": _iso(b.created), "until": _iso(b.expires), "count": b.count,
            "id": b.id, "rule": b.rule, "source": b.source, "node": b.node, "dry_run": b.dry_run,
            "escalated": b.escalated, "duration": b.duration,
            "released": _iso(b.released), "release_reason": b.release_reason,
            "members": b.members.split(",") if b.members else []}


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def bans_table(bans: list, now: float, history: bool) -> str:
    from .units import format_duration
    if not bans:
        return "No bans." if history else "No active bans."
    rows = []
    for b in bans:
        if b.released is not None and b.released <= now:
            state = b.release_reason or "released"
        elif b.expires is not None and b.expires <= now:
            state = "expiry"
        else:
            state = "left " + format_duration(b.expires - now) if b.expires is not None else "permanent"
        flags = "".join(f for f, on in ((" dry-run", b.dry_run), (" escalated", b.escalated),
                                         (" manual", b.source == "manual")) if on)
        rows.append((safe(b.target), safe(b.kind), f"{b.score:g}", _short(b.created), format_duration(b.duration),
                     safe(state), str(b.count), safe(b.node or "-"), flags.strip(), _cut(safe(b.reason), 70)))
    head = ("target", "kind", "score", "since (UTC)", "for", "state", "count", "node", "flags", "reason")
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w[i]) if i < len(r) - 1 else c for i, c in enumerate(r)).rstrip()
    active = sum(1 for b in bans if b.released is None and (b.expires is None or b.expires > now))
    return "\n".join([fmt(head), *map(fmt, rows), "", f"{len(bans):,} ban(s), {active:,} active."])


def stats_json(s: dict) -> dict:
    total = s["offences"]
    out = dict(s)
    out["by_kind_percent"] = {k: round(100 * n / total, 1) for k, n in s["by_kind"].items()} if total else {}
    out["top"] = [dict(t, first=iso(t["first"]), last=iso(t["last"])) for t in s["top"]]
    return out


def stats_human(s: dict, since: str | None) -> str:
    total = s["offences"]
    out = [f"Offences{' in the last ' + since if since else ''}: {total:,} from {s['addresses']:,} address(es)."]
    if total:
        w = max(len(k) for k in s["by_kind"])
        out += [f"  {safe(k):<{w}}  {n:>9,}  {100 * n / total:5.1f}%" for k, n in s["by_kind"].items()]
    if since:       # the period's bans, and apart from them what is in force now, whatever its age
        out += ["", f"Bans made in the last {since}: {s['bans_total']:,} ({s['bans_released']:,} since released, "
                    f"{s['bans_escalated']:,} escalated, {s['bans_network']:,} networks, {s['bans_dry_run']:,} dry-run); "
                    f"active now: {s['bans_active']:,}."]
    else:
        out += ["", f"Bans: {s['bans_total']:,} ({s['bans_active']:,} active, {s['bans_released']:,} released, "
                    f"{s['bans_escalated']:,} escalated, {s['bans_network']:,} networks, {s['bans_dry_run']:,} dry-run)."]
    nb = sum(s["bans_by_kind"].values())
    if nb:
        w = max(len(k) for k in s["bans_by_kind"])
        out += [f"  {safe(k):<{w}}  {n:>9,}  {100 * n / nb:5.1f}%" for k, n in s["bans_by_kind"].items()]
    if s["released_by"]:
        out.append("  released by: " + ", ".join(f"{safe(k)} {n:,}" for k, n in sorted(s["released_by"].items())))
    if s["top"]:
        out += ["", f"Top {len(s['top'])} offenders:"]
        out += top_table([(t["ip"], t["count"], t["first"], t["last"],
                           sorted(t["kinds"].items(), key=lambda kv: -kv[1])) for t in s["top"]])
    ignored = s.get("ignored", {}).get("allow_listed_top")
    if ignored:
        out += ["", "Ignored: allow-listed, never offenders (their offences are in the counts above): "
                + ", ".join(f"{safe(t['ip'])} {t['count']:,}" for t in ignored)]
    return "\n".join(out)


def show_human(d: dict, bans: list, now: float) -> str:
    out = [f"{safe(d['target'])}" + (f" (scored as {safe(d['scored_as'])})" if d["scored_as"] != d["target"] else "")
           + (": BANNED" if d["banned"] else ": not banned")]
    o = d["offender"]
    if o:
        out.append(f"  score {o['score']:g} at {o['score_time']} (ban at {d['threshold']:g}); "
                   f"{o['offences']:,} offence(s) from {o['first_seen']} to {o['last_seen']}")
        out.append(f"  kinds: {safe(', '.join(o['kinds'])) or '-'}" + (f"; verified name {safe(o['name'])}" if o["name"] else "")
                   + (f"; score counts from {o['reset_at']}" if o["reset_at"] else ""))
    else:
        out.append("  no offences recorded")
    if d.get("horizons"):
        out.append("  horizons: " + ", ".join(f"{h['horizon']} {h['total']:g}/{h['threshold']:g} in {h['span']}"
                                              for h in d["horizons"]))
    if d.get("big_sender"):
        out.append(f"  big sender ({safe(d['big_sender'])}): counted and shown, never banned automatically")
    if bans:
        out += ["", "Bans:", bans_table(bans, now, True)]
        out += ["", "Why:"] + [f"  {_short(b.created)} {safe(b.target)}: {safe(b.reason)}"
                               + (f"\n      {_cut(safe(b.text), 200)}" if b.text else "")
                               for b in bans]
    rec = d["offences"]["recent"]
    if rec:
        out += ["", f"Recent offences ({len(rec)} of {d['offences']['total']:,}):"]
        out += [f"  {r['time']}  {safe(r['node']):<10} {safe(r['kind']):<15} {safe(r['rule']):<28} "
                f"{_cut(safe(r['text']), 160)}" for r in rec]
    return "\n".join(out)


def firewall_human(st: dict) -> str:
    out = [f"backend      {st['backend']}" + ("" if st["enforcing"] else "  (records only: nothing is enforced)"),
           f"bans         {st['bans_active']:,} active" + (f", {st['bans_dry_run']:,} of them dry-run" if st["bans_dry_run"] else "")]
    if not st["enforcing"]:
        return "\n".join(out)
    for k in ("table", "chain"):
        if k in st:
            out.append(f"{k:<13}{safe(st[k])}")
    if st.get("sets"):             # none before the table is made
        out.append(f"sets         {safe(', '.join(st['sets']))}")
    for hook, c in st.get("chains", {}).items():
        out.append(f"chain        {safe(hook)} (priority {c['priority']}): {c['packets_blocked']:,} packets blocked")
    for r in st.get("hook_rules", []):
        out.append(f"hook rule    {safe(r)}")
    e, d = st["elements"], st["drift"]
    out.append(f"elements     {e['ipv4']:,} IPv4, {e['ipv6']:,} IPv6"
               + ("" if st["kernel_timeouts"] else "  (no kernel timeouts: syncs remove them on time)"))
    if any(d.values()):
        out.append(f"drift        {d['missing']:,} missing, {d['unknown']:,} unknown, {d['stale']:,} stale timeouts"
                   " -- `logban firewall sync` repairs it")
        for k, v in st["drift_sample"].items():
            if v:
                out.append(f"  {k}: {safe(', '.join(v))}")
    else:
        out.append("drift        none: the kernel holds exactly the active bans")
    if st.get("refused"):
        out.append(f"refused      {st['refused']:,} store bans not enforced here (allow-listed here, or no valid target):")
        out += [f"  {safe(r['target'])}: {safe(r['why'])}" for r in st["refused_sample"]]
    return "\n".join(out)
