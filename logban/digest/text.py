"""The report as plain text, for a daily cron mail: the same sections as the page."""
from __future__ import annotations

import time

from ..report import safe
from ..units import format_duration
from .collect import Digest, Offender

LINES_NOTE = ("Lines read: the store keeps one read position per followed file (lines read since that file "
              "began), not lines per period, so the figure is the sum of those positions.")
BAN_NOTE = "Active bans: now, dry-run ones included; new bans and escalations: made in the period."
ALLOW_NOTE = ("The store records the offences of allow-listed clients but not that they were allowed: they are "
              "counted here against the allow-list as configured now ([allow] addresses and host names, "
              "loopback and this host's own addresses), by each client's last verified name.")
BAR_WIDTH = 30
BARS_MAX = 12                       # names charted; the rest summed as "other"


def fmt_time(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))
    except (OverflowError, ValueError, OSError, TypeError):
        return repr(t)                  # a row no logban wrote: shown, not a crash


def bars(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Largest first, at most BARS_MAX, the rest as "other"."""
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    if len(rows) > BARS_MAX:
        rows = rows[:BARS_MAX - 1] + [("other", sum(n for _, n in rows[BARS_MAX - 1:]))]
    return [(str(k), n) for k, n in rows]


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> list[str]:
    cells = [head] + [[safe(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in cells]


def _bar_lines(counts: dict[str, int]) -> list[str]:
    rows = bars(counts)
    if not rows:
        return ["  none"]
    top = rows[0][1] or 1
    width = max(len(safe(k)) for k, _ in rows)
    return [f"  {safe(k).ljust(width)}  {n:>12,}  {'#' * max(1, round(BAR_WIDTH * n / top))}" for k, n in rows]


def _kinds(o: Offender) -> str:
    return ", ".join(o.kinds)


def render_text(d: Digest, generated: float | None = None) -> str:
    generated = time.time() if generated is None else generated
    node = f"node {d.node}" if d.node is not None else "all nodes"
    out = [(f"logban report: {fmt_time(d.since)} to {fmt_time(d.until)} UTC ({format_duration(round((d.until - d.since) / 3600) * 3600)}), "
            f"{safe(node)}; made {fmt_time(generated)} UTC"), ""]
    out += _table(["", ""], [
        [f"lines read, {d.positions:,} files", f"{d.lines_read:,}"], ["offences", f"{d.offences:,}"], ["offending clients", f"{d.clients:,}"],
        ["active bans", f"{d.bans_active:,}"],
        ["new bans", f"{d.bans_new:,}" + (f" ({d.bans_dry_run:,} dry-run)" if d.bans_dry_run else "")],
        ["escalations", f"{d.escalations:,}"], ["releases", f"{d.releases:,}"],
        ["allow-list hits", f"{d.allow_hits:,}"]], {1})[1:]
    out += ["", "Offences by kind"] + _bar_lines(d.by_kind)
    out += ["", f"Over time (per {format_duration(d.bucket)})"]
    if d.kinds_over_time or d.bans_over_time:
        stamps = sorted(set(d.kinds_over_time) | set(d.bans_over_time))
        out += ["  " + ln for ln in _table(["from", "offences", "bans", "releases"], [
            [fmt_time(t), f"{sum(d.kinds_over_time.get(t, {}).values()):,}",
             f"{d.bans_over_time.get(t, [0, 0])[0]:,}", f"{d.bans_over_time.get(t, [0, 0])[1]:,}"] for t in stamps],
            {1, 2, 3})]
    else:
        out.append("  none")
    if d.released_by:
        out += ["", "Releases by reason"] + _bar_lines(d.released_by)
    out += ["", "Top offenders"]
    out += ["  " + ln for ln in _table(
        ["address or network", "offences", "bans", "escalations", "first seen", "last seen", "verified name", "kinds seen"],
        [[o.target, f"{o.count:,}", f"{o.bans:,}", f"{o.escalations:,}", fmt_time(o.first), fmt_time(o.last),
          o.name or "-", _kinds(o)] for o in d.top], {1, 2, 3})] if d.top else ["  none"]
    for title, nets in (("Top /24 networks", d.networks4), ("Top /64 networks", d.networks6)):
        out += ["", title]
        out += ["  " + ln for ln in _table(["network", "offences", "clients"],
                                           [[n.network, f"{n.count:,}", f"{n.clients:,}"] for n in nets], {1, 2})] \
            if nets else ["  none"]
    out += ["", "Offences by MTA"] + _bar_lines(d.by_mta)
    out += ["", "Offences by node"] + _bar_lines(d.by_node)
    out += ["", "Allow-list hits",
            (f"  {d.allow_hits:,} offences from {d.allow_clients:,} allow-listed clients recorded and not scored; "
             f"{d.allow_released:,} bans released because the allow-list covers them.")]
    if d.allow_top:
        out += ["  " + ln for ln in _table(["address or network", "offences", "last seen", "verified name"],
                                           [[o.target, f"{o.count:,}", fmt_time(o.last), o.name or "-"]
                                            for o in d.allow_top], {1})]
    out += ["", "What each rule pack caught"]
    rows = sorted(d.by_rule.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1]))
    out += ["  " + ln for ln in _table(["pack", "rule", "kind", "offences"],
                                       [[p, r, k, f"{n:,}"] for (p, r, k), n in rows], {3})] if rows else ["  none"]
    out += ["", "Notes:", "  " + LINES_NOTE, "  " + BAN_NOTE, "  " + ALLOW_NOTE]
    return "\n".join(out) + "\n"
