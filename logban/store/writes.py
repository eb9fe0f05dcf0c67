"""The store's writes: offences, offenders and bans recorded, bans released and expired,
read positions, the live allow-list, and pruning."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from operator import itemgetter

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..parse import Offence
from ..score import Decision
from .base import Base
from .sql import (
    _KIND_BIT,
    ALLOWLIST,
    BANS,
    DRY_SLOT,
    OFFENCE_HOURS,
    OFFENCES,
    OFFENDERS,
    POSITIONS,
    REAL_SLOT,
    _OFFENDER_MERGE,
    BAN_COLS,
    OFFENCE_COLS,
    OFFENDER_COLS,
    PRUNE_CHUNK,
    TEXT_MAX,
    path_text,
    _clean,
    _insert_sql,
    _mark,
    _text,
)


# time, target, kind and name of an offence row (OFFENCE_COLS)
_OFFENDER_FIELDS = itemgetter(0, 1, 5, 11)


class _Index(dict):
    """Each key's number, in the order the keys came."""

    def __missing__(self, key) -> int:
        n = self[key] = len(self)
        return n


def pack(offences: list[tuple[Offence, str]]) -> tuple[list[tuple], list[tuple]]:
    """(offence, target) pairs as plain data, fit for the pipe to a writer process: what
    offences share (pack, rule, kind, score, file) once in a table, and per offence (time,
    target, address, its row of that table, line number, log line, name). A batch of a
    distributed attack pickled with those strings over again cost the scoring process,
    at its busiest, twice as long, and the writer unpickled each one again."""
    shared = _Index()
    rows = [(o.time, t, o.ip, shared[o.mta, o.rule, o.kind, o.score, o.file], o.line, o.raw, o.name)
            for o, t in offences]
    return list(shared), rows


class OffenceRows(list):
    """A batch of offences as rows in OFFENCE_COLS' order, what the database is given: made
    at once of a packed batch (`pack`), with no offence object in between."""

    @classmethod
    def of(cls, offences: list[tuple[Offence, str]], node: str) -> OffenceRows:
        """The rows of (offence, target) pairs, recorded by `node`."""
        return cls.unpack(pack(offences), node)

    @classmethod
    def unpack(cls, packed: tuple[list[tuple], list[tuple]], node: str) -> OffenceRows:
        """The rows of a packed batch. `_text` and `_clean` inlined: two calls a row were a
        third of the building. The NUL of a line (PostgreSQL text holds none) is replaced in
        the bytes: ASCII for ASCII, it decodes as the text's replace would."""
        shared, offences = packed
        cut = TEXT_MAX
        common = [(mta, rule, kind, score, node, file) for mta, rule, kind, score, file in shared]
        return cls([(t, target, ip) + common[i] + (
            line, raw[:cut].replace(b"\x00", b"\\x00").decode("utf-8", "replace"), name and name.replace("\x00", "\\x00"))
            for t, target, ip, i, line, raw, name in offences])


class Writes(Base):
    # ---- writing --------------------------------------------------------------------------
    def record(self, offences: list[tuple[Offence, str]] | OffenceRows, decisions: list[Decision], *,
               node: str, dry_run: bool, now: float, scores: dict[str, float] | None = None,
               positions: list[dict] = (), partners: list[tuple[str, str, float]] = ()) -> None:
        """One transaction: offences (with their scored target, or as `OffenceRows` of `node`), new bans, the read
        positions they were read up to (so a crash can neither lose nor repeat a line), and
        clients allowed by their verified name (ip, name, time): remembered, without an
        offence, so no node and no restart forgets that their networks are never banned."""
        if offences and not isinstance(offences, OffenceRows):
            offences = OffenceRows.of(offences, node)
        self._retrying(lambda: self._record(offences, decisions, node=node, dry_run=dry_run, now=now,
                                            scores=scores, positions=positions, partners=partners))

    def _record(self, offences, decisions, *, node, dry_run, now, scores, positions, partners) -> None:
        with self.write() as conn:
            if positions:
                self._save_positions(conn, node, positions, now)
            if partners:
                self._partners = {}
                # Rows in one order on every node: two nodes writing the same rows wait, never deadlock.
                conn.exec_driver_sql(_insert_sql(conn, OFFENDER_COLS) + _OFFENDER_MERGE, sorted(
                    (ip, t, t, 0, 0, _clean(name), 0.0, t, 0.0) for ip, name, t in {
                        ip: (ip, name, t) for ip, name, t in partners}.values()))
            if offences:
                conn.exec_driver_sql(_insert_sql(conn, OFFENCE_COLS), offences)
            # A ban resets its target's score: for targets in this batch that rides on the upsert.
            resets = {d.target: (d.expires if d.expires is not None and d.expires <= now else d.time)
                      for d in decisions}
            if offences:
                self._count_hours(conn, offences, node)
            folded = self._upsert_offenders(conn, offences, scores or {}, resets) if offences else set()
            self._insert_bans(conn, decisions, node=node, dry_run=dry_run, now=now, source="auto", reset_done=folded)

    @staticmethod
    def _count_hours(conn: Connection, offences: OffenceRows, node: str) -> None:
        # Counted by Counter's C loop; a time that is no number (a row no logban wrote) has
        # no hour: its key is NaN and is left out.
        counts = Counter([(r[0] // 3600, r[3], r[4], r[5]) for r in offences])
        mark = _mark(conn)
        # In key order: two nodes adding to the same hours lock them in the same order.
        conn.exec_driver_sql(
            f"INSERT INTO offence_hours (hour, node, mta, rule, kind, count) VALUES ({', '.join([mark] * 6)}) "
            "ON CONFLICT (hour, node, mta, rule, kind) DO UPDATE SET count = offence_hours.count + excluded.count",
            sorted((int(h), node, m, r, k, n) for (h, m, r, k), n in counts.items() if math.isfinite(h)))

    def _upsert_offenders(self, conn: Connection, offences: OffenceRows,
                          scores: dict[str, float], resets: dict[str, float]) -> set[str]:
        """Offender rows for this batch; returns the targets whose reset went in with them."""
        # Per target [first seen, last seen, offences, kinds, name]: a list, not a dict, as a
        # distributed attack brings a new target with nearly every offence. score_time always
        # moved with last_seen: it is last_seen.
        agg: dict[str, list] = {}
        bit = _KIND_BIT.get
        for ot, t, kind, name in map(_OFFENDER_FIELDS, offences):
            a = agg.get(t)
            if a is None:
                agg[t] = [ot, ot, 1, bit(kind, 0), name]
            else:
                a[2] += 1
                a[3] |= bit(kind, 0)
                if ot < a[0]:
                    a[0] = ot
                if ot >= a[1]:
                    a[1] = ot
                    a[4] = name or a[4]
        score, reset = scores.get, resets.get
        # In target order: two nodes upserting the same offenders lock them in the same order.
        # Rows in OFFENDER_COLS' order (the names cleaned in the offence rows already).
        conn.exec_driver_sql(_insert_sql(conn, OFFENDER_COLS) + _OFFENDER_MERGE,
                             [(t, a[0], a[1], a[2], a[3], a[4], score(t, 0.0), a[1], reset(t, 0.0))
                              for t, a in sorted(agg.items())])
        return {t for t in resets if t in agg}

    def _insert_bans(self, conn: Connection, decisions: list[Decision], *, node: str, dry_run: bool,
                     now: float, source: str, reset_done: set[str] = frozenset()) -> None:
        """Bans decided, in one statement; a ban already over by `now` goes in as expired."""
        if not decisions:
            return
        rows, resets, ended = [], [], []
        for d in decisions:
            exp = d.expires
            over = exp is not None and exp <= now
            if d.members:
                # A network ban ends its members' bans, which may be in this very batch.
                if rows:
                    self._insert_ban_rows(conn, rows, ended, dry_run)
                    rows, ended = [], []
                self._release_many(conn, [{"b_target": m, "b_at": d.time, "b_why": "aggregated"} for m in d.members],
                                   dry_run=dry_run)
            trig = d.trigger
            rows.append((
                d.target, d.kind, d.rule, d.reason, d.score, d.time, exp, d.duration,
                exp if over else None, "expiry" if over else None, d.escalated, dry_run, node, source,
                ",".join(d.members), _text(trig.raw) if trig else "", d.target))
            ended.append((d.target, d.time))
            # A dry-run ban resets no score: a real decision must not lose the evidence.
            if d.target not in reset_done and not dry_run:
                resets.append({"b_target": d.target, "b_at": exp if over else d.time})
        if rows:
            self._insert_ban_rows(conn, rows, ended, dry_run)
        if resets:
            self._reset_many(conn, sorted(resets, key=lambda r: r["b_target"]))

    @staticmethod
    def _insert_ban_rows(conn: Connection, rows: list[tuple], ended: list[tuple[str, float]], dry_run: bool) -> None:
        """Insert bans; one already in force for a target (another node's) wins and the new one is
        dropped. A target's ban over by the new one's start is first released as expired."""
        conn.info["bans_changed"] = True
        # One lock order on every node (stable: a target's bans keep their time order).
        rows, ended = sorted(rows, key=lambda r: r[0]), sorted(ended, key=lambda r: r[0])
        mark = _mark(conn)
        slot = DRY_SLOT if dry_run else REAL_SLOT
        conn.exec_driver_sql(
            f"UPDATE bans SET released = expires, release_reason = 'expiry' WHERE target = {mark} "
            f"AND {slot} AND expires IS NOT NULL AND expires <= {mark}", ended)
        # The count is the store's, not this process's memory: exact whichever node bans. A
        # real ban counts real bans only (a dry-run week escalates nothing).
        conn.exec_driver_sql(
            _insert_sql(conn, BAN_COLS).replace(") VALUES (", ", count) VALUES (")[:-1]
            + f", (SELECT count(*) + 1 FROM bans WHERE target = {mark}{'' if dry_run else ' AND NOT dry_run'}))"
            + f" ON CONFLICT (target) WHERE {slot} DO NOTHING", rows)

    def _save_positions(self, conn: Connection, node: str, positions: list[dict], now: float) -> None:
        """A position may name its own node (`scan --apply` keeps its own beside the daemon's)."""
        rows = [{"node": node} | p | {"path": path_text(p["path"]), "updated": now} for p in positions]
        keys = [(r["node"], r["path"]) for r in rows]
        conn.execute(sa.delete(POSITIONS).where(sa.tuple_(POSITIONS.c.node, POSITIONS.c.path).in_(keys)))
        conn.execute(sa.insert(POSITIONS), rows)

    def save_positions(self, node: str, positions: list[dict], now: float) -> None:
        with self.write() as conn:
            self._save_positions(conn, node, positions, now)

    _RELEASE = (sa.update(BANS).where(BANS.c.target == sa.bindparam("b_target"), BANS.c.released.is_(None))
                .values(released=sa.bindparam("b_at"), release_reason=sa.bindparam("b_why")))
    # A release by a decision (a network ban over its members, a manual ban replacing one) ends
    # bans of its own kind only: a dry-run decision never ends a real ban.
    _RELEASE_KIND = _RELEASE.where(BANS.c.dry_run == sa.bindparam("b_dry"))
    # Offences before `b_at` no longer count toward the target's score.
    _RESET = (sa.update(OFFENDERS).where(OFFENDERS.c.target == sa.bindparam("b_target"))
              .values(reset_at=sa.case((OFFENDERS.c.reset_at < sa.bindparam("b_at"), sa.bindparam("b_at")),
                                       else_=OFFENDERS.c.reset_at), score=0.0))

    def _release_many(self, conn: Connection, rows: list[dict], dry_run: bool) -> None:
        conn.info["bans_changed"] = True
        rows = sorted(rows, key=lambda r: r["b_target"])
        conn.execute(self._RELEASE_KIND, [r | {"b_dry": dry_run} for r in rows])
        if not dry_run:
            self._reset_many(conn, rows)

    def _reset_many(self, conn: Connection, rows: list[dict]) -> None:
        if not rows:
            return                      # an empty executemany would run the statement once, unbound
        conn.execute(self._RESET, [{"b_target": r["b_target"], "b_at": r["b_at"]} for r in rows])

    def _release(self, conn: Connection, target: str, reason: str, at: float) -> int:
        conn.info["bans_changed"] = True
        n = conn.execute(self._RELEASE, {"b_target": target, "b_at": at, "b_why": reason}).rowcount
        self._reset_many(conn, [{"b_target": target, "b_at": at}])
        return n

    def ban(self, d: Decision, *, node: str, dry_run: bool, now: float) -> None:
        """A manual ban: an active ban of the same target is replaced."""
        def run() -> None:
            with self.write() as conn:
                conn.info["bans_changed"] = True
                conn.execute(self._RELEASE_KIND, {"b_target": d.target, "b_at": now, "b_why": "replaced",
                                                  "b_dry": dry_run})
                self._insert_bans(conn, [d], node=node, dry_run=dry_run, now=now, source="manual")
        self._retrying(run)

    def release(self, targets: Iterable[str], reason: str, now: float) -> dict[str, int]:
        """End the active bans of these exact targets; the score starts from zero. Bans ended, per target."""
        targets = sorted(dict.fromkeys(targets))

        def run() -> dict[str, int]:
            with self.write() as conn:
                return {t: self._release(conn, t, reason, now) for t in targets}
        return self._retrying(run)

    def release_many(self, targets: Iterable[str], reason: str, now: float, chunk: int = 500) -> int:
        """`release` for many targets at once (`unban --all`): a statement per `chunk` targets,
        not per target. Bans ended."""
        targets = sorted(dict.fromkeys(targets))

        def run() -> int:
            n = 0
            with self.write() as conn:
                conn.info["bans_changed"] = True
                for i in range(0, len(targets), chunk):
                    part = targets[i:i + chunk]
                    n += conn.execute(sa.update(BANS).where(BANS.c.target.in_(part), BANS.c.released.is_(None))
                                      .values(released=now, release_reason=reason)).rowcount
                    conn.execute(sa.update(OFFENDERS).where(OFFENDERS.c.target.in_(part)).values(
                        reset_at=sa.case((OFFENDERS.c.reset_at < now, now), else_=OFFENDERS.c.reset_at), score=0.0))
            return n
        return self._retrying(run)

    def expire(self, now: float) -> list[sa.Row]:
        """Mark bans whose time is over as released by expiry; returns them."""
        return self._retrying(lambda: self._expire(now))

    def _expire(self, now: float) -> list[sa.Row]:
        with self.write() as conn:
            over = (BANS.c.released.is_(None), BANS.c.expires.is_not(None), BANS.c.expires <= now)
            rows = conn.execute(sa.select(BANS.c.target, BANS.c.expires, BANS.c.kind, BANS.c.dry_run).where(*over)).all()
            if rows:
                conn.info["bans_changed"] = True
                # Row by row, not by target: a target's real and dry-run bans end apart.
                conn.execute(sa.update(BANS).where(*over).values(released=BANS.c.expires, release_reason="expiry"))
                self._reset_many(conn, [{"b_target": r.target, "b_at": r.expires} for r in rows if not r.dry_run])
            return rows

    def prune(self, now: float, retention: float, lookback: float = 0.0, chunks: int | None = None) -> int:
        """Forget offences older than `retention`, offenders seen only then and never banned,
        and bans released longer ago than both `retention` and the escalation `lookback`
        (nothing escalates from them any more). Bans go in chunks, at most `chunks` of them
        (None: all); `prune_more` says whether some are left for the next call."""
        cut = now - retention
        bans_cut = now - max(retention, lookback)
        self.prune_more, done = True, 0
        while chunks is None or done < chunks:      # no lock held for long, whatever the backlog
            with self.write() as conn:
                ids = sa.select(BANS.c.id).where(BANS.c.released.is_not(None), BANS.c.released < bans_cut) \
                    .limit(PRUNE_CHUNK).scalar_subquery()
                done += 1
                if conn.execute(sa.delete(BANS).where(BANS.c.id.in_(ids))).rowcount < PRUNE_CHUNK:
                    self.prune_more = False
                    break
        with self.write() as conn:
            n = conn.execute(sa.delete(OFFENCES).where(OFFENCES.c.time < cut)).rowcount
            conn.execute(sa.delete(OFFENCE_HOURS).where(OFFENCE_HOURS.c.hour < math.floor(cut / 3600)))
            # Rows without offences are partners (clients allowed by verified name): kept, so
            # no network ban is ever made over one that was last seen long ago.
            conn.execute(sa.delete(OFFENDERS).where(
                OFFENDERS.c.last_seen < cut, OFFENDERS.c.offences > 0,
                # NOT EXISTS, by the index on bans.target: NOT IN read every ban of the history.
                ~sa.exists().where(BANS.c.target == OFFENDERS.c.target)))
            return n

    def allow_add(self, target: str, kind: str, reason: str, now: float, expires: float | None, by: str) -> None:
        """Add an entry, or replace the one of the same target; entries whose time is over go."""
        row = {"target": target, "kind": kind, "reason": _clean(reason), "created": now, "expires": expires,
               "added_by": by}

        def run() -> None:
            with self.write() as conn:
                conn.execute(sa.delete(ALLOWLIST).where(sa.or_(ALLOWLIST.c.target == target,
                                                               ALLOWLIST.c.expires <= now)))
                conn.execute(sa.insert(ALLOWLIST), row)
        self._retrying(run)

    def allow_remove(self, target: str) -> bool:
        """Remove an entry; whether there was one."""
        def run() -> bool:
            with self.write() as conn:
                return conn.execute(sa.delete(ALLOWLIST).where(ALLOWLIST.c.target == target)).rowcount > 0
        return self._retrying(run)

