"""The store's reads: bans in force, history, offences, offenders, partners, the live
allow-list and statistics. Rows come back as SQLAlchemy rows (attribute access by column
name): building a model object per row costs more than the query when `list` shows
100,000 bans."""
from __future__ import annotations

import math
import time
from collections.abc import Collection
from itertools import starmap
from typing import NamedTuple

import sqlalchemy as sa

from ..allow import TIME_MAX, canonical_num
from ..score import Past
from .base import Base
from .sql import (
    ALLOWLIST,
    BAN_READ,
    BANS,
    OFFENCE_READ,
    OFFENCES,
    OFFENDERS,
    PARTNERS_TTL,
    POSITIONS,
    _clean,
    _number,
    _sane,
    path_of,
)


def _in_force(now: float, targets: Collection[str] | None = None) -> list[sa.ColumnElement[bool]]:
    """Bans in force at `now` (of `targets` only, when given). A few targets' bans are read
    through the index on target: `released + 0` keeps `released` out of the index choice
    (the same NULL, on SQLite and PostgreSQL), else SQLite, which has no statistics, reads
    every ban in force (100,000 at a busy site) through the index on `released` to keep
    the few."""
    released = BANS.c.released if targets is None else BANS.c.released + 0
    cond = [released.is_(None), sa.or_(BANS.c.expires.is_(None), sa.cast(BANS.c.expires, sa.Float) > now)]
    if targets is not None:
        cond.append(BANS.c.target.in_(list(targets)))
    return cond


class Enforced(NamedTuple):
    """A ban the firewall must hold (`Store.enforced`): never a dry-run one."""
    target: str
    expires: float | None
    name: str | None
    dry_run = False             # not a column: what `wanted` reads of any ban


class Reads(Base):
    def next_expiry(self) -> float | None:
        with self.read() as conn:
            return conn.execute(sa.select(sa.func.min(BANS.c.expires)).where(
                BANS.c.released.is_(None), BANS.c.expires.is_not(None))).scalar()

    def max_offence_id(self) -> int:
        with self.read() as conn:
            return conn.execute(sa.select(sa.func.coalesce(sa.func.max(OFFENCES.c.id), 0))).scalar_one()

    def offences_after(self, after_id: int, not_node: str, limit: int = 50_000) -> list[sa.Row]:
        """Offences other nodes recorded, by id: what a node adds to its own scores."""
        with self.read() as conn:
            return _sane(conn.execute(sa.select(*OFFENCE_READ).where(
                OFFENCES.c.id > after_id, OFFENCES.c.node != not_node).order_by(OFFENCES.c.id).limit(limit)))

    def positions(self, node: str) -> dict[str, sa.Row]:
        with self.read() as conn:
            return {path_of(r.path): r for r in conn.execute(sa.select(POSITIONS).where(POSITIONS.c.node == node))}

    def release_reasons(self, targets: list[str]) -> dict[str, str]:
        """Why each target's latest ban ended (unban, expiry, allow-list, ...)."""
        with self.read() as conn:
            last = sa.select(sa.func.max(BANS.c.id)).where(BANS.c.target.in_(targets)).group_by(BANS.c.target)
            q = sa.select(BANS.c.target, BANS.c.release_reason).where(
                BANS.c.id.in_(last), BANS.c.released.is_not(None))
            return {r.target: f"{_clean(r.release_reason) or 'released'}" for r in conn.execute(q)}

    def cleared_since(self, mark: float, now: float) -> list[tuple[str, float]]:
        """(target, reset_at) of the scores reset after `mark` (a ban, an unban), oldest first;
        resets stamped in the future are left for later."""
        with self.read() as conn:
            at = sa.cast(OFFENDERS.c.reset_at, sa.Float)
            q = (sa.select(OFFENDERS.c.target, at.label("at"))
                 .where(OFFENDERS.c.reset_at > mark, OFFENDERS.c.reset_at <= now + 60).order_by(at).limit(10_000))
            return [(t, a) for t, a in conn.execute(q) if math.isfinite(a)]
    def history_after(self, after_id: int, real_only: bool = False) -> tuple[dict[str, Past], int]:
        """Bans recorded after id `after_id` (in id order, the latest of a target last), and
        the highest id read: what keeps a scorer's history current without reading it all.
        `real_only`: dry-run bans are read past, not taken (see `history`)."""
        with self.read() as conn:
            q = (sa.select(BANS.c.id, BANS.c.target, _number(BANS.c.created), _number(BANS.c.duration),
                           sa.cast(BANS.c.count, sa.Integer).label("count"), BANS.c.dry_run)
                 .where(BANS.c.id > after_id).order_by(BANS.c.id))
            out: dict[str, Past] = {}
            top = after_id
            for i, t, c, d, n, dry in conn.execute(q):
                top = i
                if real_only and dry:
                    continue
                if c is not None and 0 <= c <= TIME_MAX and (d is None or d >= 0) and n is not None and n >= 0:
                    out[t] = Past(c, d, n)
            return out, top

    # ---- reading -------------------------------------------------------------------------
    def active_bans(self, now: float, targets: Collection[str] | None = None) -> list[sa.Row]:
        """Bans in force (of `targets` only, when given), with the client's last verified
        `name` (for the allow-list)."""
        with self.read() as conn:
            q = sa.select(*BAN_READ, OFFENDERS.c.name).join(
                OFFENDERS, OFFENDERS.c.target == BANS.c.target, isouter=True).where(
                *_in_force(now, targets)).order_by(BANS.c.created)
            return list(conn.execute(q))

    def active_targets(self, now: float) -> list[str]:
        """The targets of the bans in force, and nothing else of them."""
        with self.read() as conn:
            return list(conn.execute(sa.select(BANS.c.target).where(*_in_force(now))).scalars())

    def enforced(self, now: float, names: bool = True, targets: Collection[str] | None = None) -> list[Enforced]:
        """What the firewall must hold: (target, expires, name) of the active bans that are
        not dry-run (of `targets` only, when given); `name`: the client's last verified name,
        for an allow-list with name patterns (`names`; without them the join is work for
        nothing, and `name` is None). Read from the driver's cursor, no more columns than
        that: a sync reads every active ban, and SQLAlchemy's rows cost more than the query."""
        with self.read() as conn:
            cols = [BANS.c.target, _number(BANS.c.expires)]
            q = (sa.select(*cols, OFFENDERS.c.name).join(OFFENDERS, OFFENDERS.c.target == BANS.c.target, isouter=True)
                 if names else sa.select(*cols, sa.null().label("name")))
            q = q.where(BANS.c.dry_run.is_(False), *_in_force(now, targets))
            # starmap: the named tuple's own __new__, twice as fast as _make (100,000 rows: 25 ms).
            return list(starmap(Enforced, conn.execute(q).cursor.fetchall()))

    def bans(self, *, target: str | None = None) -> list[sa.Row]:
        with self.read() as conn:
            q = sa.select(*BAN_READ).order_by(BANS.c.created, BANS.c.id)
            if target is not None:
                q = q.where(BANS.c.target == target)
            return list(conn.execute(q))

    def unreleased(self, real_only: bool = False) -> list[sa.Row]:
        """Bans not released; `real_only`: not the dry-run ones."""
        with self.read() as conn:
            q = sa.select(*BAN_READ).where(BANS.c.released.is_(None))
            return list(conn.execute(q.where(BANS.c.dry_run.is_(False)) if real_only else q))

    def history(self, real_only: bool = False, targets: Collection[str] | None = None) -> dict[str, Past]:
        """The latest ban of every target (of `targets` only, when given): what escalation and
        ban counts build on. A node that enforces builds on real bans only (`real_only`); a
        dry run on both."""
        with self.read() as conn:
            last = sa.select(sa.func.max(BANS.c.id)).group_by(BANS.c.target)
            if targets is not None:
                last = last.where(BANS.c.target.in_(list(targets)))
            if real_only:
                last = last.where(BANS.c.dry_run.is_(False))
            q = sa.select(BANS.c.target, _number(BANS.c.created), _number(BANS.c.duration),
                          sa.cast(BANS.c.count, sa.Integer).label("count")).where(BANS.c.id.in_(last))
            return {t: Past(c, d, n) for t, c, d, n in conn.execute(q)
                    if 0 <= c <= TIME_MAX and (d is None or d >= 0) and n >= 0}

    def recent_offences(self, horizon: float) -> list[sa.Row]:
        """Offences that may still count toward a score: within `horizon` of the newest, after each reset."""
        with self.read() as conn:
            newest = conn.execute(sa.select(sa.func.max(sa.cast(OFFENCES.c.time, sa.Float)))).scalar()
            if newest is None:
                return []
            q = (sa.select(*OFFENCE_READ).join(OFFENDERS, OFFENDERS.c.target == OFFENCES.c.target)
                 .where(OFFENCES.c.time >= newest - horizon, OFFENCES.c.time > OFFENDERS.c.reset_at)
                 .order_by(OFFENCES.c.time))
            return _sane(conn.execute(q))

    def partners(self, allow, max_age: float = PARTNERS_TTL) -> list[str]:
        """Addresses whose last verified name `allow`'s name patterns cover. The query reads
        every offender (no index serves `%.example.com`): its answer is reused for `max_age`
        seconds, since a sync or an export may ask for it every second."""
        pats = allow.names + allow.big         # big senders' networks are never banned automatically either
        if not pats:
            return []
        now = time.monotonic()
        hit = self._partners.get(pats)
        if hit is not None and now - hit[0] < max_age:
            return hit[1]
        like = [OFFENDERS.c.name.like(p.replace("*", "%").replace("?", "_")) for p in pats]
        with self.read() as conn:
            rows = conn.execute(sa.select(OFFENDERS.c.target, OFFENDERS.c.name).where(sa.or_(*like)))
            got = [t for t, n in rows if canonical_num(t) is not None and "/" not in t
                   and (allow.name_allowed(n) or allow.big_sender(n))]
        self._partners = {pats: (now, got)}
        return got

    # ---- the live allow-list ------------------------------------------------------------------
    def allow_entries(self, now: float | None = None) -> list[sa.Row]:
        """The live allow-list, oldest first; `now`: only the entries still in force then."""
        with self.read() as conn:
            q = sa.select(ALLOWLIST.c.target, ALLOWLIST.c.kind, ALLOWLIST.c.reason, _number(ALLOWLIST.c.created),
                          _number(ALLOWLIST.c.expires), ALLOWLIST.c.added_by).order_by(ALLOWLIST.c.created)
            if now is not None:
                q = q.where(sa.or_(ALLOWLIST.c.expires.is_(None), sa.cast(ALLOWLIST.c.expires, sa.Float) > now))
            return list(conn.execute(q))

    def offender(self, target: str) -> sa.Row | None:
        with self.read() as conn:
            r = conn.execute(sa.select(*(sa.cast(c, sa.Integer).label(c.name) if c.name in ("offences", "kinds")
                                         else _number(c) if c.type.python_type is float else c for c in OFFENDERS.c))
                             .where(OFFENDERS.c.target == target)).first()
            return r

    def offences_of(self, targets: list[str], ips: list[str], limit: int) -> tuple[int, list[sa.Row]]:
        with self.read() as conn:
            cond = OFFENCES.c.target.in_(targets)
            if ips:
                cond = sa.and_(cond, OFFENCES.c.ip.in_(ips))
            total = conn.execute(sa.select(sa.func.count()).select_from(OFFENCES).where(cond)).scalar_one()
            rows = conn.execute(sa.select(OFFENCES).where(cond).order_by(OFFENCES.c.time.desc()).limit(limit))
            return total, list(rows)

    def stats(self, since: float | None, now: float, top: int = 10) -> dict:
        with self.read() as conn:
            oc, bc = OFFENCES.c, BANS.c
            ow = [oc.time >= since] if since is not None else []
            bw = [bc.created >= since] if since is not None else []
            by_kind = dict(conn.execute(sa.select(oc.kind, sa.func.count()).where(*ow).group_by(oc.kind)
                                        .order_by(sa.func.count().desc())).all())
            n_ip = sa.func.count(sa.distinct(oc.ip))
            tops = conn.execute(sa.select(oc.ip, sa.func.count().label("n"), sa.func.min(oc.time), sa.func.max(oc.time))
                                .where(*ow).group_by(oc.ip).order_by(sa.desc("n"), oc.ip).limit(top)).all()
            top_kinds: dict[str, dict[str, int]] = {}
            if tops:
                for ip, kind, n in conn.execute(sa.select(oc.ip, oc.kind, sa.func.count()).where(
                        oc.ip.in_([t[0] for t in tops]), *ow).group_by(oc.ip, oc.kind)):
                    top_kinds.setdefault(ip, {})[kind] = n
            bans_by_kind = dict(conn.execute(sa.select(bc.kind, sa.func.count()).where(*bw).group_by(bc.kind)
                                             .order_by(sa.func.count().desc())).all())
            active = sa.and_(bc.released.is_(None), sa.or_(bc.expires.is_(None), bc.expires > now))
            ended = sa.or_(bc.released.is_not(None), bc.expires <= now)
            # One literal, not two parameters: PostgreSQL must see the GROUP BY expression as the selected one.
            why = sa.func.coalesce(bc.release_reason, sa.literal_column("'expiry'"))
            released = dict(conn.execute(sa.select(why, sa.func.count()).where(ended, *bw).group_by(why))
                            .all())
            count = lambda *w: conn.execute(sa.select(sa.func.count()).select_from(BANS).where(*w)).scalar_one()
            return {
                "offences": sum(by_kind.values()),
                "addresses": conn.execute(sa.select(n_ip).where(*ow)).scalar_one(),
                "by_kind": by_kind,
                "bans_active": count(active),
                "bans_total": count(*bw),
                "bans_by_kind": bans_by_kind,
                "bans_released": sum(released.values()),
                "released_by": released,
                "bans_escalated": count(bc.escalated.is_(True), *bw),
                "bans_network": count(bc.target.contains("/"), *bw),
                "bans_dry_run": count(bc.dry_run.is_(True), *bw),
                "top": [{"ip": ip, "count": n, "first": f, "last": la, "kinds": top_kinds.get(ip, {})}
                        for ip, n, f, la in tops],
            }

