"""What `logban report` shows, aggregated in SQL: a handful of GROUP BY queries whose
answers are small, never the offences themselves. The charts and breakdowns read the
hourly counts (offence_hours), the offenders one covering index by target, so a store
of ten million offences is read in seconds and in little memory."""
from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..allow import AllowList, canonical_num, ip_address_text
from ..store import (
    BANS,
    OFFENCE_HOURS,
    OFFENCES,
    OFFENDERS,
    POSITIONS,
    Store,
    kind_names,
)

# Bucket widths for the charts (whole hours): the smallest giving at most BUCKETS_MAX bars.
BUCKET_SIZES = (3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400, 91 * 86400, 365 * 86400)
BUCKETS_MAX = 60
NET_PREFIX = {4: 24, 6: 64}         # the networks listed: where neighbours attack together


@dataclass
class Offender:
    target: str                     # address, or network (IPv6 /64 scoring)
    count: int
    first: float
    last: float
    name: str | None = None         # last verified name
    kinds: list[str] = field(default_factory=list)      # every kind seen of it (the offender row's)
    bans: int = 0
    escalations: int = 0


@dataclass
class Network:
    network: str
    count: int
    clients: int


@dataclass
class Digest:
    since: float
    until: float
    node: str | None
    bucket: int                                         # seconds per chart bar
    lines_read: int = 0                                 # as the read positions stand (all time)
    positions: int = 0                                  # read positions (followed files) summed
    offences: int = 0
    clients: int = 0                                    # scored targets with offences
    bans_active: int = 0
    bans_new: int = 0
    bans_dry_run: int = 0                               # of bans_new
    escalations: int = 0
    releases: int = 0
    # bucket start -> kind -> offences; bucket start -> (bans, releases)
    kinds_over_time: dict[int, dict[str, int]] = field(default_factory=dict)
    bans_over_time: dict[int, list[int]] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    by_mta: dict[str, int] = field(default_factory=dict)
    by_node: dict[str, int] = field(default_factory=dict)
    by_rule: dict[tuple[str, str, str], int] = field(default_factory=dict)   # (pack, rule, kind)
    released_by: dict[str, int] = field(default_factory=dict)
    top: list[Offender] = field(default_factory=list)
    networks4: list[Network] = field(default_factory=list)
    networks6: list[Network] = field(default_factory=list)
    allow_hits: int = 0                                 # offences of clients the allow-list covers
    allow_clients: int = 0
    allow_top: list[Offender] = field(default_factory=list)
    allow_released: int = 0                             # bans released because the allow-list covers them


def bucket_for(seconds: float) -> int:
    for b in BUCKET_SIZES:
        if seconds / b <= BUCKETS_MAX:
            return b
    return BUCKET_SIZES[-1]


def _bucket(col: sa.Column, size: int) -> sa.ColumnElement:
    # Whole seconds divided as integers in both SQLite and PostgreSQL; one literal, not a
    # parameter, so PostgreSQL sees the GROUP BY expression as the selected one.
    return sa.literal_column(f"CAST({col.table.name}.{col.name} AS BIGINT) / {int(size)}")


def collect(store: Store, allow: AllowList, *, since: float, until: float, node: str | None = None,
            top: int = 20, networks: int = 10) -> Digest:
    # Whole hours, as the hourly counts have them: every figure covers the same period.
    since = since // 3600 * 3600
    d = Digest(since=since, until=until, node=node, bucket=bucket_for(until - since))
    bw = [BANS.c.node == node] if node is not None else []
    with store.read() as conn:
        pw = [POSITIONS.c.node == node] if node is not None else []
        d.lines_read, d.positions = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(POSITIONS.c.lines), 0), sa.func.count()).where(*pw)).one()
        _offences(conn, d)
        _bans(conn, d, bw, since, until)
        _targets(conn, d, allow, top, networks)
        _details(conn, d.top + d.allow_top, bw, since, until)
    return d


def _offences(conn, d: Digest) -> None:
    """The hourly counts per (bar, kind, pack, node, rule); every breakdown is a sum of them."""
    hc = OFFENCE_HOURS.c
    b = sa.literal_column(f"offence_hours.hour / {d.bucket // 3600}")
    hw = [hc.hour >= int(d.since) // 3600, hc.hour <= int(d.until) // 3600]
    q = sa.select(b, hc.kind, hc.mta, hc.node, hc.rule, sa.func.sum(hc.count)) \
        .where(*hw, *([hc.node == d.node] if d.node is not None else [])) \
        .group_by(b, hc.kind, hc.mta, hc.node, hc.rule)
    for bar, kind, mta, node, rule, n in conn.execute(q):
        n = int(n)
        at = int(bar) * d.bucket
        per = d.kinds_over_time.setdefault(at, {})
        per[kind] = per.get(kind, 0) + n
        for agg, key in ((d.by_kind, kind), (d.by_mta, mta), (d.by_node, node), (d.by_rule, (mta, rule, kind))):
            agg[key] = agg.get(key, 0) + n
        d.offences += n


def _bans(conn, d: Digest, bw: list, since: float, until: float) -> None:
    bc = BANS.c
    made = [bc.created >= since, bc.created <= until, *bw]
    ended = [bc.released.is_not(None), bc.released >= since, bc.released <= until, *bw]
    for bar, n in conn.execute(sa.select(_bucket(bc.created, d.bucket), sa.func.count()).where(*made)
                               .group_by(_bucket(bc.created, d.bucket))):
        d.bans_over_time.setdefault(int(bar) * d.bucket, [0, 0])[0] += n
    for bar, n in conn.execute(sa.select(_bucket(bc.released, d.bucket), sa.func.count()).where(*ended)
                               .group_by(_bucket(bc.released, d.bucket))):
        d.bans_over_time.setdefault(int(bar) * d.bucket, [0, 0])[1] += n
    why = sa.func.coalesce(bc.release_reason, sa.literal_column("'expiry'"))
    d.released_by = dict(conn.execute(sa.select(why, sa.func.count()).where(*ended).group_by(why)).all())
    d.releases = sum(d.released_by.values())
    d.allow_released = d.released_by.get("allow-list", 0)
    d.bans_new, d.bans_dry_run, d.escalations = conn.execute(sa.select(
        sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((bc.dry_run.is_(True), 1), else_=0)), 0),
        sa.func.coalesce(sa.func.sum(sa.case((bc.escalated.is_(True), 1), else_=0)), 0)).where(*made)).one()
    d.bans_active = conn.execute(sa.select(sa.func.count()).select_from(BANS).where(
        bc.released.is_(None), sa.or_(bc.expires.is_(None), bc.expires > d.until), *bw)).scalar_one()


def _allowed(allow: AllowList, parsed: tuple[int, int, int] | None, name: str | None) -> bool:
    """A network target (IPv6 /64 scoring) counts when it holds an allowed address; a row no
    logban wrote (`parsed` None) is shown, never taken for a partner."""
    return (parsed is not None and allow.covers(*parsed)) or allow.name_allowed(name)


def _network(parsed: tuple[int, int, int] | None) -> tuple[int, int] | None:
    """(version, number) of the /24 or /64 a target lies in, shifted: a key, made text only
    for the networks listed."""
    if parsed is None:
        return None
    version, num, plen = parsed
    keep = NET_PREFIX[version]
    return (version, num >> ((32 if version == 4 else 128) - keep)) if plen >= keep else None


def _network_text(version: int, key: int) -> str:
    keep = NET_PREFIX[version]
    return f"{ip_address_text(version, key << ((32 if version == 4 else 128) - keep))}/{keep}"


def _per_target(d: Digest) -> list[sa.Select]:
    """(target, offences, first, last, name, kinds) of every target with offences in the period.
    A client first seen in the period has all its offences in it: its offender row holds
    them already. Only the others' offences are counted, read from the covering index by
    target, from the start of the period on; the offenders table is walked in target order
    (`+ 0` keeps SQLite off the last_seen index), so the counts come grouped without a sort."""
    f, o = OFFENDERS.c, OFFENCES.c
    on = [o.target == f.target, o.time >= d.since, o.time <= d.until]
    recent = [(f.last_seen + 0) >= d.since]
    if d.node is not None:
        on.append(o.node == d.node)             # offender rows are not per node: all counted
    else:
        recent.append(f.first_seen < d.since)
    counted = (sa.select(f.target, sa.func.count(), sa.func.min(o.time), sa.func.max(o.time), f.name, f.kinds)
               .select_from(OFFENDERS.join(OFFENCES, sa.and_(*on))).where(*recent).group_by(f.target))
    if d.node is not None:
        return [counted]
    new = sa.select(f.target, f.offences, f.first_seen, f.last_seen, f.name, f.kinds).where(
        f.first_seen >= d.since, f.offences > 0)
    return [new, counted]


def _targets(conn, d: Digest, allow: AllowList, top: int, networks: int) -> None:
    """One row per target, streamed: the top offenders, the allow-list's hits, and the /24
    and /64 networks."""
    kept: list[tuple[int, str, Offender]] = []          # heaps
    allowed: list[tuple[int, str, Offender]] = []
    nets: dict[tuple[int, int], list[int]] = {}
    for q in _per_target(d):
        for target, n, first, last, name, kinds in _rows(conn, q):
            d.clients += 1
            parsed = canonical_num(target)          # the C parser: ipaddress would take seconds here
            if _allowed(allow, parsed, name):
                d.allow_hits += n
                d.allow_clients += 1
                _keep(allowed, top, n, target, first, last, name, kinds)
                continue
            _keep(kept, top, n, target, first, last, name, kinds)
            net = _network(parsed)
            if net is not None:
                agg = nets.get(net)
                if agg is None:
                    nets[net] = [n, 1]
                else:
                    agg[0] += n
                    agg[1] += 1
    d.top = [o for _, _, o in sorted(kept, key=lambda k: (-k[0], k[1]))]
    d.allow_top = [o for _, _, o in sorted(allowed, key=lambda k: (-k[0], k[1]))]
    for version, out in ((4, d.networks4), (6, d.networks6)):
        best = heapq.nsmallest(networks, ((-c, net, k) for (v, net), (c, k) in nets.items() if v == version))
        out.extend(Network(_network_text(version, net), -c, k) for c, net, k in best)


def _keep(heap: list, top: int, n: int, target: str, first: float, last: float, name: str | None,
          kinds: int) -> None:
    """The `top` largest counts seen so far (among equal counts, the larger targets): most
    rows are dropped at the first comparison, before anything is built for them."""
    if len(heap) < top:
        heapq.heappush(heap, (n, target, Offender(target, n, first, last, name, _kind_names(kinds))))
    elif n > heap[0][0] or (n == heap[0][0] and target > heap[0][1]):
        heapq.heapreplace(heap, (n, target, Offender(target, n, first, last, name, _kind_names(kinds))))


def _kind_names(bits) -> list[str]:
    return kind_names(bits) if isinstance(bits, int) else []       # a row no logban wrote: none


def _details(conn, offenders: list[Offender], bw: list, since: float, until: float) -> None:
    """Bans and escalations in the period of the offenders listed."""
    if not offenders:
        return
    by = {o.target: o for o in offenders}
    bc = BANS.c
    for target, n, esc in conn.execute(sa.select(
            bc.target, sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((bc.escalated.is_(True), 1), else_=0)), 0))
            .where(bc.target.in_(list(by)), bc.created >= since, bc.created <= until, *bw).group_by(bc.target)):
        by[target].bans, by[target].escalations = n, esc


def _rows(conn, q: sa.Select) -> Iterator[tuple]:
    """The rows of `q` as plain tuples from the driver's cursor, a batch at a time: for
    300,000 targets SQLAlchemy's rows would cost more than the query."""
    c = q.compile(dialect=conn.dialect)
    params = [c.params[k] for k in c.positiontup] if c.positional else c.params
    cur = conn.connection.cursor()
    try:
        cur.execute(str(c), params)
        while batch := cur.fetchmany(10_000):
            yield from batch
    finally:
        cur.close()
