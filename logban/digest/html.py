"""The report as one self-contained HTML page: inline CSS, charts as inline SVG drawn here,
no script and no URL, so it opens offline, in a mail client, and on a phone.

Every text that comes from the store (targets, verified names, rule ids, node and pack
names, reasons) may be an attacker's or another writer's: it goes through `_e`."""
from __future__ import annotations

import html
import time

from ..report import safe
from ..units import format_duration
from .collect import Digest, Offender
from .text import BAN_NOTE, LINES_NOTE, bars, fmt_time

# Colour-blind-friendly, one per kind in the order of their totals.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac", "#17becf", "#7f7f7f")
BAN_COLOURS = ("#e15759", "#4e79a7")

CSS = """
*{box-sizing:border-box}body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:#1d232a;background:#f4f6f8}main{max-width:1000px;margin:0 auto;padding:12px}
h1{font-size:1.4em;margin:.3em 0}h2{font-size:1.1em;margin:1.4em 0 .5em;border-bottom:1px solid #d5dbe1}
.muted{color:#5b6670;font-size:.9em}.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));
gap:8px}.card{background:#fff;border-radius:6px;padding:8px 10px;box-shadow:0 1px 2px #0002}
.card b{display:block;font-size:1.35em;overflow-wrap:anywhere}.card span{color:#5b6670;font-size:.85em}
.card small{font-size:.5em;font-weight:normal;color:#5b6670}
section{background:#fff;border-radius:6px;padding:4px 12px 12px;margin:12px 0;box-shadow:0 1px 2px #0002}
svg.chart{width:100%;height:auto;display:block}svg text{font-size:11px;fill:#5b6670}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.85em;margin-top:4px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px;border-radius:2px}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #e5e9ed;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}td.name{white-space:normal;word-break:break-all}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:12px}
@media (max-width:600px){svg.time text{font-size:20px}}
"""


def _e(text) -> str:
    return html.escape(safe(text), quote=True)


def _n(x: int) -> str:
    return f"{x:,}"


def render_html(d: Digest, generated: float | None = None) -> str:
    generated = time.time() if generated is None else generated
    kinds = [k for k, _ in sorted(d.by_kind.items(), key=lambda kv: (-kv[1], kv[0]))]
    colour = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(kinds)}
    where = f" · node {_e(d.node)}" if d.node is not None else " · all nodes"
    out = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>logban report {_e(fmt_time(d.since))} – {_e(fmt_time(d.until))}</title>",
        f"<style>{CSS}</style></head><body><main>",
        (f"<h1>logban report</h1><p class=\"muted\">{_e(fmt_time(d.since))} to {_e(fmt_time(d.until))} UTC "
         f"({_e(format_duration(round((d.until - d.since) / 3600) * 3600))}){where} · made {_e(fmt_time(generated))} UTC</p>"),
        _cards(d),
        _section("Offences by kind", _stacked(d, kinds, colour) + _legend((k, colour[k]) for k in kinds)),
        _section("Bans and releases", _bans_chart(d) + _legend(zip(("bans", "releases"), BAN_COLOURS))
                 + _small_table(["released because", "bans"], sorted(d.released_by.items(), key=lambda kv: -kv[1]))),
        _section(f"Top offenders ({len(d.top)})", _offenders(d.top)),
        "<div class=\"grid2\">",
        _section("Top /24 networks", _networks(d.networks4, "no IPv4 offenders")),
        _section("Top /64 networks", _networks(d.networks6, "no IPv6 offenders")),
        "</div><div class=\"grid2\">",
        _section("Offences by MTA", _hbars(d.by_mta, "offences by MTA")),
        _section("Offences by node", _hbars(d.by_node, "offences by node")),
        "</div>",
        _section("Allow-list hits", _allow(d)),
        _section("What each rule pack caught", _packs(d)),
        f"<p class=\"muted\">{_e(LINES_NOTE)} {_e(BAN_NOTE)}</p>",
        "</main></body></html>\n",
    ]
    return "".join(out)


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _cards(d: Digest) -> str:
    cards = [(f"lines read, {d.positions:,} files", _n(d.lines_read)), ("offences", _n(d.offences)), ("offending clients", _n(d.clients)),
             ("active bans", _n(d.bans_active)),
             ("new bans", _n(d.bans_new) + (f" <small>{_n(d.bans_dry_run)} dry-run</small>" if d.bans_dry_run else "")),
             ("escalations", _n(d.escalations)), ("releases", _n(d.releases)), ("allow-list hits", _n(d.allow_hits))]
    return '<div class="cards">' + "".join(f'<div class="card"><b>{v}</b><span>{_e(k)}</span></div>'
                                           for k, v in cards) + "</div>"


def _legend(items) -> str:
    return '<div class="legend">' + "".join(f'<span><i style="background:{c}"></i>{_e(k)}</span>'
                                            for k, c in items) + "</div>"


def _nice(top: float) -> int:
    """A round axis maximum at or above `top`, in four whole steps of 1, 2 or 5 times a power of ten."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if 4 * m * step >= top:
                return 4 * m * step
        step *= 10


class _Axes:
    """A bar chart's frame: time buckets across, counts up."""
    W, H, L, R, T, B = 720, 240, 46, 8, 8, 34

    def __init__(self, d: Digest, top: int) -> None:
        self.d = d
        self.first = int(d.since) // d.bucket * d.bucket
        self.n = int(d.until) // d.bucket - int(d.since) // d.bucket + 1
        self.ymax = _nice(max(top, 1))
        self.step = (self.W - self.L - self.R) / self.n

    def x(self, i: int) -> float:
        return self.L + i * self.step

    def y(self, v: float) -> float:
        return self.T + (self.H - self.T - self.B) * (1 - v / self.ymax)

    def frame(self) -> list[str]:
        out = []
        for k in range(5):
            v = self.ymax * k / 4
            y = self.y(v)
            out.append(f'<line x1="{self.L}" x2="{self.W - self.R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e9ed"/>'
                       f'<text x="{self.L - 4}" y="{y + 4:.1f}" text-anchor="end">{_short(v)}</text>')
        stride = self.stride()
        fmt = "%d %b" if stride % 86400 == 0 else "%d %b %H:%M"
        at = -(-self.first // stride) * stride            # the first round time in the chart
        while at < self.first + self.n * self.d.bucket:
            x = self.x((at - self.first) / self.d.bucket)
            if x < self.W - self.R - 50:                  # a label that fits
                out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.y(0):.1f}" y2="{self.y(0) + 4:.1f}" '
                           f'stroke="#5b6670"/><text x="{x:.1f}" y="{self.H - self.B + 16}" text-anchor="middle">'
                           f'{_e(time.strftime(fmt, time.gmtime(at)))}</text>')
            at += stride
        return out

    def stride(self) -> int:
        """Seconds between time labels: a round step (hours, days, weeks) giving at most 6 labels."""
        b = self.d.bucket
        steps = sorted({b * k for k in (1, 2, 3, 4, 6, 8, 12)} | {86400 * k for k in (1, 2, 7, 14) if 86400 * k % b == 0})
        span = self.n * b
        return next((s for s in steps if span / s <= 6), b * -(-self.n // 6))

    def svg(self, label: str, body: list[str]) -> str:
        return (f'<svg class="chart time" viewBox="0 0 {self.W} {self.H}" role="img" aria-label="{_e(label)}">'
                + "".join(self.frame() + body) + "</svg>")


def _short(v: float) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suf}"
    return f"{v:g}"


def _stacked(d: Digest, kinds: list[str], colour: dict[str, str]) -> str:
    if not d.offences:
        return '<p class="muted">No offences in this period.</p>'
    ax = _Axes(d, max(sum(v.values()) for v in d.kinds_over_time.values()))
    body = []
    for at, per in sorted(d.kinds_over_time.items()):
        i = (at - ax.first) // d.bucket
        base = 0
        for k in kinds:
            n = per.get(k, 0)
            if not n:
                continue
            y0, y1 = ax.y(base), ax.y(base + n)
            body.append(f'<rect class="bar" x="{ax.x(i) + 0.5:.1f}" y="{y1:.1f}" width="{max(ax.step - 1, 0.5):.1f}" '
                        f'height="{max(y0 - y1, 0.5):.1f}" fill="{colour[k]}"><title>'
                        f'{_e(fmt_time(at))}: {_e(k)} {n:,}</title></rect>')
            base += n
    return ax.svg("offences by kind over time", body)


def _bans_chart(d: Digest) -> str:
    if not d.bans_over_time:
        return '<p class="muted">No bans made or released in this period.</p>'
    ax = _Axes(d, max(max(v) for v in d.bans_over_time.values()))
    body = []
    w = max(ax.step / 2 - 0.5, 0.5)
    for at, pair in sorted(d.bans_over_time.items()):
        i = (at - ax.first) // d.bucket
        for j, (n, what) in enumerate(zip(pair, ("bans", "releases"))):
            if n:
                y = ax.y(n)
                body.append(f'<rect class="bar" x="{ax.x(i) + j * ax.step / 2:.1f}" y="{y:.1f}" width="{w:.1f}" '
                            f'height="{max(ax.y(0) - y, 0.5):.1f}" fill="{BAN_COLOURS[j]}"><title>'
                            f'{_e(fmt_time(at))}: {what} {n:,}</title></rect>')
    return ax.svg("bans and releases over time", body)


def _hbars(counts: dict[str, int], label: str) -> str:
    """A horizontal bar per name, as SVG: readable at any width."""
    if not counts:
        return '<p class="muted">None in this period.</p>'
    rows = bars(counts)
    top = rows[0][1]
    h, W, L = 22, 360, 120
    body = []
    for i, (name, n) in enumerate(rows):
        y = i * h
        w = max((W - L - 60) * n / top, 1)
        body.append(f'<text x="{L - 6}" y="{y + 15}" text-anchor="end">{_e(name[:18])}</text>'
                    f'<rect class="bar" x="{L}" y="{y + 4}" width="{w:.1f}" height="{h - 8}" fill="{PALETTE[0]}">'
                    f'<title>{_e(name)}: {n:,}</title></rect>'
                    f'<text x="{L + w + 4:.1f}" y="{y + 15}">{n:,}</text>')
    return (f'<svg class="chart" viewBox="0 0 {W} {h * len(rows)}" role="img" aria-label="{_e(label)}">'
            + "".join(body) + "</svg>")


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Cells are HTML already (escaped by the caller)."""
    th = "".join(f'<th{" class=n" if i in numeric else ""}>{_e(h)}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(
        f'<td{" class=n" if i in numeric else (" class=name" if c.startswith("<!--name-->") else "")}>{c}</td>'
        for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _small_table(head: list[str], rows) -> str:
    rows = list(rows)
    return _table(head, [[_e(k), _n(v)] for k, v in rows], {1}) if rows else ""


def _kinds(o: Offender) -> str:
    return _e(", ".join(o.kinds))


def _offenders(top: list[Offender]) -> str:
    if not top:
        return '<p class="muted">No offenders in this period.</p>'
    rows = [[_e(o.target), _n(o.count), _kinds(o), _n(o.bans), _n(o.escalations), _e(fmt_time(o.first)),
             _e(fmt_time(o.last)), "<!--name-->" + _e(o.name or "")] for o in top]
    return _table(["address or network", "offences", "kinds seen", "bans", "escalations", "first seen", "last seen",
                   "verified name"], rows, {1, 3, 4})


def _networks(nets, empty: str) -> str:
    if not nets:
        return f'<p class="muted">{_e(empty)} in this period.</p>'
    return _table(["network", "offences", "clients"], [[_e(n.network), _n(n.count), _n(n.clients)] for n in nets], {1, 2})


def _allow(d: Digest) -> str:
    from .text import ALLOW_NOTE
    head = (f"<p>{_n(d.allow_hits)} offences from {_n(d.allow_clients)} allow-listed clients were recorded and "
            f"not scored; {_n(d.allow_released)} bans were released because the allow-list covers them.</p>"
            f'<p class="muted">{_e(ALLOW_NOTE)}</p>')
    if not d.allow_top:
        return head
    rows = [[_e(o.target), _n(o.count), _kinds(o), _e(fmt_time(o.last)), "<!--name-->" + _e(o.name or "")]
            for o in d.allow_top]
    return head + _table(["address or network", "offences", "kinds seen", "last seen", "verified name"], rows, {1})


def _packs(d: Digest) -> str:
    if not d.by_rule:
        return '<p class="muted">Nothing caught in this period.</p>'
    rows = sorted(d.by_rule.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1]))
    totals = {p: sum(n for (q, _, _), n in rows if q == p) for p, _, _ in (k for k, _ in rows)}
    return _table(["pack", "rule", "kind", "offences", "share of pack"],
                  [[_e(p), _e(r), _e(k), _n(n), f"{100 * n / totals[p]:.1f} %"] for (p, r, k), n in rows], {3, 4})
