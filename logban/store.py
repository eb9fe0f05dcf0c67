"""Where decisions are kept: offenders, offences and bans in a database, through sqlmodel.

The models define the tables; reads hand back SQLAlchemy rows (attribute access
by column name) because building a model object per row costs more than the
query when `list` shows 100,000 bans.

SQLite by default (WAL, so a CLI read never blocks the daemon's writes, and a
busy timeout, so two writers wait for each other instead of failing); any
SQLAlchemy URL otherwise (PostgreSQL for several mail servers). Times are
seconds since the epoch (UTC). The schema carries a version; a newer logban
migrates an older database in one transaction, and refuses a newer one.
"""
from __future__ import annotations

import fcntl
import math
import os
import random
import socket
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import Field, SQLModel

from .allow import TIME_MAX, canonical_num
from .dbfile import (
    default_url,
    make_engine,
    new_sqlite_file,
    state_dir,
    unwritable_hint,
)
from .errors import StoreError
from .parse import Offence
from .rules import KINDS
from .score import Decision, Past

SCHEMA_VERSION = 8
PARTNERS_TTL = 60.0            # seconds a partners answer is reused
NOTIFY_CHANNEL = "logban"
TEXT_MAX = 500                 # characters of a log line kept with its offence
BAN_KINDS = tuple(sorted(KINDS)) + ("manual",)
REVISION_KEY = "bans_revision"  # meta row bumped in every transaction that changes a ban
PRUNE_CHUNK = 5_000            # released bans deleted per transaction by `prune`
RETRIES = 5                    # attempts of a write that lost a deadlock or a serialization conflict
_KIND_BIT = {k: 1 << i for i, k in enumerate(BAN_KINDS)}


# ---- schema ---------------------------------------------------------------------

class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class OffenderRow(SQLModel, table=True):
    __tablename__ = "offenders"
    target: str = Field(primary_key=True)          # address, or network for IPv6 /64 scoring
    score: float = 0.0                             # score at score_time
    score_time: float = 0.0
    first_seen: float
    last_seen: float = Field(index=True)
    offences: int = 0
    kinds: int = 0                                 # bit set of kinds seen (kind_names)
    name: str | None = None                        # last verified client name
    # Offences before this no longer count (ban, release); indexed: a daemon looks for
    # scores cleared by `logban unban` every second.
    reset_at: float = Field(default=0.0, index=True)


class OffenceRow(SQLModel, table=True):
    __tablename__ = "offences"
    # node too: the report counts a period's offences per target (of one node) from the index alone.
    __table_args__ = (sa.Index("ix_offences_target_time_node", "target", "time", "node"),)
    id: int | None = Field(default=None, primary_key=True)
    time: float = Field(index=True)
    target: str
    ip: str
    mta: str
    rule: str
    kind: str
    score: float
    node: str
    file: str
    line: int
    text: str = ""
    name: str | None = None                        # the client's verified name: other nodes' allow-lists read it


REAL_SLOT = "released IS NULL AND NOT dry_run"
DRY_SLOT = "released IS NULL AND dry_run"


class BanRow(SQLModel, table=True):
    __tablename__ = "bans"
    # One unreleased ban per target, whichever node or process decides it: two mail
    # servers deciding the same ban at once make one ban. Dry-run bans have a slot of their
    # own: a record of what would have happened never stands in the way of a real ban.
    __table_args__ = (sa.Index("ux_bans_unreleased_target", "target", unique=True,
                               sqlite_where=sa.text(REAL_SLOT), postgresql_where=sa.text(REAL_SLOT)),
                      sa.Index("ux_bans_unreleased_dry_target", "target", unique=True,
                               sqlite_where=sa.text(DRY_SLOT), postgresql_where=sa.text(DRY_SLOT)))
    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(index=True)
    kind: str
    rule: str = ""
    reason: str = ""
    score: float = 0.0
    created: float = Field(index=True)
    expires: float | None = None                   # None: permanent
    duration: float | None = None
    released: float | None = Field(default=None, index=True)
    release_reason: str | None = None              # expiry, unban, allow-list, aggregated, replaced
    count: int = 1                                 # bans of this target so far, this one included
    escalated: bool = False
    dry_run: bool = False
    node: str = ""
    source: str = "auto"                           # auto or manual
    members: str = ""                              # a network ban: the address bans it replaced
    text: str = ""                                 # the log line that decided it


class PositionRow(SQLModel, table=True):
    """How far the daemon has read a followed file, written with the offences read up to it."""
    __tablename__ = "positions"
    node: str = Field(primary_key=True)
    path: str = Field(primary_key=True)            # the followed path as configured
    # 64 bits: a busy server's log passes 2 GiB before rotation, XFS inode numbers pass 2**32.
    dev: int = Field(sa_type=sa.BigInteger)
    inode: int = Field(sa_type=sa.BigInteger)
    fingerprint: str                               # sha256 of the file's first `fp_len` bytes
    fp_len: int
    offset: int = Field(sa_type=sa.BigInteger)     # end of the last whole line read
    lines: int = Field(sa_type=sa.BigInteger)      # lines read so far (line numbers of offences)
    updated: float


class OffenceHourRow(SQLModel, table=True):
    """Offences counted per hour, node, pack, rule and kind, written with the offences: the
    report's charts read thousands of these rows, not millions of offences."""
    __tablename__ = "offence_hours"
    hour: int = Field(primary_key=True, sa_type=sa.BigInteger)    # epoch seconds // 3600
    node: str = Field(primary_key=True)
    mta: str = Field(primary_key=True)
    rule: str = Field(primary_key=True)
    kind: str = Field(primary_key=True)
    count: int = Field(sa_type=sa.BigInteger)


class AllowRow(SQLModel, table=True):
    """The live allow-list (`logban allow add`): every node reads it each second."""
    __tablename__ = "allowlist"
    target: str = Field(primary_key=True)          # canonical address or network, or a name pattern
    kind: str                                      # address, network or name
    reason: str = ""
    created: float
    expires: float | None = None                   # None: until removed
    added_by: str = ""                             # the node (host) that added it


OFFENCES, OFFENDERS, BANS = OffenceRow.__table__, OffenderRow.__table__, BanRow.__table__
POSITIONS, OFFENCE_HOURS, ALLOWLIST = PositionRow.__table__, OffenceHourRow.__table__, AllowRow.__table__

OFFENCE_COLS = ("time", "target", "ip", "mta", "rule", "kind", "score", "node", "file", "line", "text", "name")
OFFENDER_COLS = ("target", "first_seen", "last_seen", "offences", "kinds", "name", "score", "score_time", "reset_at")
BAN_COLS = ("target", "kind", "rule", "reason", "score", "created", "expires", "duration", "released",
            "release_reason", "escalated", "dry_run", "node", "source", "members", "text")     # count: in SQL
# An offender already known adds this batch's counts; its score is the newer one. Plain
# SQL that SQLite (>= 3.24) and PostgreSQL both read.
_OFFENDER_MERGE = """ ON CONFLICT (target) DO UPDATE SET
 offences = offenders.offences + excluded.offences,
 kinds = offenders.kinds | excluded.kinds,
 first_seen = CASE WHEN excluded.first_seen < offenders.first_seen THEN excluded.first_seen ELSE offenders.first_seen END,
 last_seen = CASE WHEN excluded.last_seen >= offenders.last_seen THEN excluded.last_seen ELSE offenders.last_seen END,
 score = CASE WHEN excluded.last_seen >= offenders.last_seen THEN excluded.score ELSE offenders.score END,
 score_time = CASE WHEN excluded.last_seen >= offenders.last_seen THEN excluded.score_time ELSE offenders.score_time END,
 name = COALESCE(excluded.name, offenders.name),
 reset_at = CASE WHEN excluded.reset_at > offenders.reset_at THEN excluded.reset_at ELSE offenders.reset_at END"""



def _number(col: sa.Column) -> sa.Label:
    """A time or score as a number whatever a row holds: SQLite keeps text written into a
    REAL column as text (a row no logban wrote); CAST makes it a number there, and is a
    no-op on PostgreSQL. Read this way, no such row can stop a command or the daemon."""
    return sa.cast(col, sa.Float).label(col.name)


OFFENCE_READ = tuple(_number(c) if c.name in ("time", "score") else c for c in OFFENCES.c)
SCORE_MAX = 1_000.0


def _sane(rows) -> list[sa.Row]:
    """Offence rows a scorer may count: no row another node (or anyone who can write to the
    store) made can stop a daemon that reads it, nor count for more than a rule could."""
    return [r for r in rows if canonical_num(r.ip) is not None and 0 < r.time <= TIME_MAX
            and 0 < r.score <= SCORE_MAX]


class Enforced(NamedTuple):
    """A ban the firewall must hold (`Store.enforced`)."""
    target: str
    expires: float | None
    dry_run: bool
    node: str
    name: str | None


BAN_READ = tuple(_number(c) if c.name in ("score", "created", "expires", "duration", "released") else c
                 for c in BANS.c)

# version -> what turns a database of that version into the next one
def _one_unreleased_ban(conn: Connection) -> None:
    """0.3: older duplicates of an unreleased ban are released as replaced, then the unique index."""
    keep = sa.select(sa.func.max(BANS.c.id)).where(BANS.c.released.is_(None)).group_by(BANS.c.target)
    conn.execute(sa.update(BANS).where(BANS.c.released.is_(None), BANS.c.id.not_in(keep))
                 .values(released=BANS.c.created, release_reason="replaced"))
    # The index of this version; migration 4 gives it its present shape.
    conn.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS ux_bans_unreleased_target ON bans (target) "
                         "WHERE released IS NULL")


def _offence_names(conn: Connection) -> None:
    """0.4: offences keep the client's verified name, so every node's allow-list can read it."""
    if "name" not in {c["name"] for c in sa.inspect(conn).get_columns("offences")}:
        conn.exec_driver_sql("ALTER TABLE offences ADD COLUMN name VARCHAR")


def _dry_run_slot(conn: Connection) -> None:
    """0.5: dry-run bans no longer take the one unreleased slot of real bans. Of a target's
    unreleased bans, the newest of each kind (real, dry-run) stays."""
    keep = sa.select(sa.func.max(BANS.c.id)).where(BANS.c.released.is_(None)).group_by(BANS.c.target, BANS.c.dry_run)
    conn.execute(sa.update(BANS).where(BANS.c.released.is_(None), BANS.c.id.not_in(keep))
                 .values(released=BANS.c.created, release_reason="replaced"))
    conn.exec_driver_sql("DROP INDEX IF EXISTS ux_bans_unreleased_target")
    for ix in [*BANS.indexes, *OFFENDERS.indexes]:
        if ix.name.startswith("ux_bans_unreleased_") or ix.name == "ix_offenders_reset_at":
            ix.create(conn, checkfirst=True)


def _big_positions(conn: Connection) -> None:
    """Read positions in 64 bits: on PostgreSQL an offset past 2 GiB stopped the daemon (SQLite's
    INTEGER always was 64 bits)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql('ALTER TABLE positions ALTER COLUMN dev TYPE BIGINT, ALTER COLUMN inode TYPE BIGINT, '
                             'ALTER COLUMN "offset" TYPE BIGINT, ALTER COLUMN lines TYPE BIGINT')


def _hour_sql(conn: Connection) -> str:
    """The hour of an offence's time, in SQL: SQLite's CAST truncates, PostgreSQL's rounds."""
    return ("CAST(FLOOR(time / 3600) AS BIGINT)" if conn.dialect.name == "postgresql"
            else "CAST(time / 3600 AS INTEGER)")


def fill_offence_hours(conn: Connection) -> None:
    """Count the offences already stored into offence_hours (once; the writes keep it since)."""
    conn.exec_driver_sql("DELETE FROM offence_hours")
    conn.exec_driver_sql(f"INSERT INTO offence_hours (hour, node, mta, rule, kind, count) SELECT {_hour_sql(conn)}, "
                         "node, mta, rule, kind, count(*) FROM offences GROUP BY 1, 2, 3, 4, 5")


def _report_tables(conn: Connection) -> None:
    """0.7: `logban report` reads hourly counts and a covering index by target."""
    OFFENCE_HOURS.create(conn, checkfirst=True)
    fill_offence_hours(conn)
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_offences_target_time")
    for ix in OFFENCES.indexes:
        ix.create(conn, checkfirst=True)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: lambda conn: POSITIONS.create(conn),          # 0.2: the daemon's read positions
    2: _one_unreleased_ban,
    3: _offence_names,
    4: _dry_run_slot,
    5: _big_positions,
    6: _report_tables,
    7: lambda conn: ALLOWLIST.create(conn, checkfirst=True),     # the live allow-list (`logban allow`)
}


def _clean(text: str | None) -> str | None:
    """Log text as the database keeps it: PostgreSQL text holds no NUL byte."""
    return None if text is None else text.replace("\x00", "\\x00")


def _text(raw: bytes) -> str:
    return _clean(raw[:TEXT_MAX].decode("utf-8", "replace"))


def kind_names(bits: int) -> list[str]:
    return [k for k, b in _KIND_BIT.items() if bits & b]


# ---- the store ----------------------------------------------------------------------------

class Store:
    last_opened = "database"
    def __init__(self, url: str | None = None, *, readonly: bool = False) -> None:
        """`readonly`: for commands that only read (list, show, stats, export, firewall status):
        no migration, no write transaction, so a store this user may only read, or one on a
        read-only mount, serves them, and they never wait behind a writer."""
        self.url = url or default_url()
        if readonly and new_sqlite_file(self.url):
            readonly = False        # nothing to read yet: made as a writer would make it
        self.readonly = readonly
        # The bans' revision as its reader (the daemon) knows it: a change this Store made
        # right after that revision moves it on (the caller knows what it did itself);
        # anyone else's change leaves it behind `revision()`.
        self.revision_known: tuple[int, int] | None = None
        self.prune_more = False                 # released bans left to prune after the last `prune`
        self._partners: dict[tuple[str, ...], tuple[float, list[str]]] = {}
        self.engine = make_engine(self.url, readonly)
        Store.last_opened = self._where()           # for main()'s one-line errors
        self.shared = self.engine.dialect.name == "postgresql"        # several nodes: LISTEN/NOTIFY
        try:
            self._check_version() if readonly else self._migrate()
        except sa.exc.SQLAlchemyError as e:
            self.engine.dispose()
            raise StoreError(f"{self._where()}: cannot open the database: {short_error(e)}"
                             + unwritable_hint(self.engine.url, readonly)) from None

    def _where(self) -> str:
        return self.where(self.url)

    @staticmethod
    def where(url: str) -> str:
        """The URL fit to print: no password, a SQLite file as its path."""
        u = sa.make_url(url)
        if u.get_backend_name() == "sqlite" and u.database:
            return u.database
        return u.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        rev = None
        with self.engine.connect().execution_options(write=True) as conn:
            conn.info.pop("bans_changed", None)
            with conn.begin():
                # A watcher's own change is no news; rows others wrote before it still are.
                top = _max_ban_id(conn) if self.revision_known is not None else None
                yield conn
                if conn.info.pop("bans_changed", False):
                    rev = (_bump_revision(conn), _max_ban_id(conn))
                if self.shared:
                    # Delivered at commit to every node listening: a ban, an unban, offences.
                    conn.exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}")
        known = self.revision_known
        if rev is not None and known is not None and rev[0] == known[0] + 1:
            self.revision_known = (rev[0], rev[1] if top == known[1] else known[1])

    def _retrying(self, fn: Callable[[], object]) -> object:
        """Run a write transaction again when the database ended it to break a deadlock or a
        serialization conflict with another node: a moment of contention, not an outage."""
        for attempt in range(RETRIES):
            try:
                return fn()
            except sa.exc.DBAPIError as e:
                if attempt == RETRIES - 1 or not _transient(e):
                    raise
            time.sleep(random.uniform(0.005, 0.05) * 2 ** attempt)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _migrate(self) -> None:
        # Looked at first without a write lock: a command beside a busy daemon, with nothing
        # to migrate, must not queue behind its writes.
        with self.read() as conn:
            if sa.inspect(conn).has_table("meta"):
                row = conn.execute(sa.select(Meta.value).where(Meta.key == "schema_version")).first()
                if row and row[0] == str(SCHEMA_VERSION):
                    return
        with self.write() as conn:
            if not sa.inspect(conn).has_table("meta"):
                SQLModel.metadata.create_all(conn)
                conn.execute(sa.insert(Meta.__table__), {"key": "schema_version", "value": str(SCHEMA_VERSION)})
                return
            row = conn.execute(sa.select(Meta.value).where(Meta.key == "schema_version")).first()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self._where()}: database schema version {version} is newer than this "
                                 f"logban understands ({SCHEMA_VERSION}); upgrade logban")
            while version < SCHEMA_VERSION:
                step = MIGRATIONS.get(version)
                if step is None:
                    raise StoreError(f"{self._where()}: no migration from schema version {version}")
                step(conn)                          # an exception rolls all steps back
                version += 1
            conn.execute(sa.update(Meta.__table__).where(Meta.key == "schema_version").values(value=str(version)))

    def _check_version(self) -> None:
        """A reader's open: the schema must be this logban's (a writer migrates it)."""
        with self.read() as conn:
            if not sa.inspect(conn).has_table("meta"):
                raise StoreError(f"{self._where()}: not a logban database (no meta table)")
            row = conn.execute(sa.select(Meta.value).where(Meta.key == "schema_version")).first()
        version = int(row[0]) if row else 0
        if version != SCHEMA_VERSION:
            newer = version > SCHEMA_VERSION
            raise StoreError(f"{self._where()}: database schema version {version} is "
                             f"{'newer' if newer else 'older'} than this logban's ({SCHEMA_VERSION}); "
                             + ("upgrade logban" if newer else "a writing command (ban, unban, scan --apply, run) "
                                                              "migrates it"))

    def schema_version(self) -> int:
        with self.read() as conn:
            return int(conn.execute(sa.select(Meta.value).where(Meta.key == "schema_version")).scalar_one())

    # ---- writing --------------------------------------------------------------------------
    def record(self, offences: list[tuple[Offence, str]], decisions: list[Decision], *,
               node: str, dry_run: bool, now: float, scores: dict[str, float] | None = None,
               positions: list[dict] = (), partners: list[tuple[str, str, float]] = ()) -> None:
        """One transaction: offences (with their scored target), new bans, the read
        positions they were read up to (so a crash can neither lose nor repeat a line), and
        clients allowed by their verified name (ip, name, time): remembered, without an
        offence, so no node and no restart forgets that their networks are never banned."""
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
                conn.exec_driver_sql(_insert_sql(conn, OFFENCE_COLS), [
                    (o.time, t, o.ip, o.mta, o.rule, o.kind, o.score, node, o.file, o.line,
                     _text(o.raw), _clean(o.name)) for o, t in offences])
            # A ban resets its target's score: for targets in this batch that rides on the upsert.
            resets = {d.target: (d.expires if d.expires is not None and d.expires <= now else d.time)
                      for d in decisions}
            if offences:
                self._count_hours(conn, offences, node)
            folded = self._upsert_offenders(conn, offences, scores or {}, resets) if offences else set()
            self._insert_bans(conn, decisions, node=node, dry_run=dry_run, now=now, source="auto", reset_done=folded)

    @staticmethod
    def _count_hours(conn: Connection, offences: list[tuple[Offence, str]], node: str) -> None:
        counts: dict[tuple, int] = {}
        for o, _ in offences:
            if math.isfinite(o.time):
                key = (int(o.time // 3600), node, o.mta, o.rule, o.kind)
                counts[key] = counts.get(key, 0) + 1
        mark = _mark(conn)
        # In key order: two nodes adding to the same hours lock them in the same order.
        conn.exec_driver_sql(
            f"INSERT INTO offence_hours (hour, node, mta, rule, kind, count) VALUES ({', '.join([mark] * 6)}) "
            "ON CONFLICT (hour, node, mta, rule, kind) DO UPDATE SET count = offence_hours.count + excluded.count",
            [(*k, n) for k, n in sorted(counts.items())])

    def _upsert_offenders(self, conn: Connection, offences: list[tuple[Offence, str]],
                          scores: dict[str, float], resets: dict[str, float]) -> set[str]:
        """Offender rows for this batch; returns the targets whose reset went in with them."""
        agg: dict[str, dict] = {}
        for o, t in offences:
            a = agg.get(t)
            if a is None:
                agg[t] = {"target": t, "first_seen": o.time, "last_seen": o.time, "offences": 1,
                          "kinds": _KIND_BIT.get(o.kind, 0), "name": _clean(o.name),
                          "score": scores.get(t, 0.0), "score_time": o.time, "reset_at": resets.get(t, 0.0)}
            else:
                a["offences"] += 1
                a["kinds"] |= _KIND_BIT.get(o.kind, 0)
                a["first_seen"] = min(a["first_seen"], o.time)
                if o.time >= a["last_seen"]:
                    a["last_seen"] = a["score_time"] = o.time
                    a["name"] = _clean(o.name) or a["name"]
        # In target order: two nodes upserting the same offenders lock them in the same order.
        conn.exec_driver_sql(_insert_sql(conn, OFFENDER_COLS) + _OFFENDER_MERGE,
                             [tuple(agg[t][c] for c in OFFENDER_COLS) for t in sorted(agg)])
        return set(agg) & set(resets)

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
        rows = [{"node": node} | p | {"updated": now} for p in positions]
        keys = [(r["node"], r["path"]) for r in rows]
        conn.execute(sa.delete(POSITIONS).where(sa.tuple_(POSITIONS.c.node, POSITIONS.c.path).in_(keys)))
        conn.execute(sa.insert(POSITIONS), rows)

    def positions(self, node: str) -> dict[str, sa.Row]:
        with self.read() as conn:
            return {r.path: r for r in conn.execute(sa.select(POSITIONS).where(POSITIONS.c.node == node))}

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

    def max_offence_id(self) -> int:
        with self.read() as conn:
            return conn.execute(sa.select(sa.func.coalesce(sa.func.max(OFFENCES.c.id), 0))).scalar_one()

    def offences_after(self, after_id: int, not_node: str, limit: int = 50_000) -> list[sa.Row]:
        """Offences other nodes recorded, by id: what a node adds to its own scores."""
        with self.read() as conn:
            return _sane(conn.execute(sa.select(*OFFENCE_READ).where(
                OFFENCES.c.id > after_id, OFFENCES.c.node != not_node).order_by(OFFENCES.c.id).limit(limit)))

    def run_lock(self, node: str) -> RunLock:
        """Held by the one `logban run` of this store and node; StoreError naming the holder
        when another has it (two daemons would count every line twice)."""
        return RunLock(self, node)

    def listen_dsn(self) -> str | None:
        """A libpq connection string for LISTEN (PostgreSQL only)."""
        if not self.shared:
            return None
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def next_expiry(self) -> float | None:
        with self.read() as conn:
            return conn.execute(sa.select(sa.func.min(BANS.c.expires)).where(
                BANS.c.released.is_(None), BANS.c.expires.is_not(None))).scalar()

    def revision(self) -> tuple[int, int]:
        """Changes to the bans by anyone (this process, another node, a `logban ban`/`unban`
        beside the daemon) change this: one row, bumped in the transaction of the change,
        and the highest ban id (a row a writer wrote without the bump: an older logban, by hand)."""
        with self.read() as conn:
            v = conn.execute(sa.select(Meta.value).where(Meta.key == REVISION_KEY)).scalar()
            top = _max_ban_id(conn)
        try:
            return int(v or 0), top
        except ValueError:
            return -1, top         # a value no logban wrote: the next bump makes it a number again

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

    def watch_revision(self) -> tuple[int, int]:
        """Start following the revision from now: the reader knows the bans as they are."""
        self.revision_known = self.revision()
        return self.revision_known

    def max_ban_id(self) -> int:
        with self.read() as conn:
            return _max_ban_id(conn)

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

    # ---- reading -------------------------------------------------------------------------
    def active_bans(self, now: float, targets: Collection[str] | None = None) -> list[sa.Row]:
        """Bans in force (of `targets` only, when given), with the client's last verified
        `name` (for the allow-list)."""
        with self.read() as conn:
            q = sa.select(*BAN_READ, OFFENDERS.c.name).join(
                OFFENDERS, OFFENDERS.c.target == BANS.c.target, isouter=True).where(BANS.c.released.is_(None),
                                      sa.or_(BANS.c.expires.is_(None), sa.cast(BANS.c.expires, sa.Float) > now)).order_by(BANS.c.created)
            if targets is not None:
                q = q.where(BANS.c.target.in_(list(targets)))
            return list(conn.execute(q))

    def active_targets(self, now: float) -> list[str]:
        """The targets of the bans in force, and nothing else of them."""
        with self.read() as conn:
            return list(conn.execute(sa.select(BANS.c.target).where(
                BANS.c.released.is_(None),
                sa.or_(BANS.c.expires.is_(None), sa.cast(BANS.c.expires, sa.Float) > now))).scalars())

    def enforced(self, now: float, names: bool = True, targets: Collection[str] | None = None) -> list[Enforced]:
        """What the firewall must hold: (target, expires, dry_run, node, name) of the active
        bans that are not dry-run (of `targets` only, when given); `name`: the client's last
        verified name, for an allow-list with name patterns (`names`; without them the join
        is work for nothing, and `name` is None). Read from the driver's cursor as plain
        tuples: a sync reads every active ban, and SQLAlchemy's rows cost more than the
        query."""
        with self.read() as conn:
            cols = [BANS.c.target, _number(BANS.c.expires), BANS.c.node]
            q = (sa.select(*cols, OFFENDERS.c.name).join(OFFENDERS, OFFENDERS.c.target == BANS.c.target, isouter=True)
                 if names else sa.select(*cols, sa.null().label("name")))
            q = q.where(
                BANS.c.released.is_(None), BANS.c.dry_run.is_(False),
                sa.or_(BANS.c.expires.is_(None), sa.cast(BANS.c.expires, sa.Float) > now))
            if targets is not None:
                q = q.where(BANS.c.target.in_(list(targets)))
            return [Enforced(t, e, False, n, name) for t, e, n, name in conn.execute(q).cursor.fetchall()]

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


class RunLock:
    """SQLite: an flock on a file beside the database (`<db>.run.lock`, holding the pid and
    node); PostgreSQL: a session advisory lock keyed by the node, on a connection kept open
    for the daemon's life, named after the pid so a second one can say who holds it."""

    KEY = 0x6C6F6762            # "logb": logban's advisory locks, apart from other applications'

    def __init__(self, store: Store, node: str) -> None:
        self.fd: int | None = None
        self.conn = None
        me = f"logban run pid {os.getpid()} on {socket.gethostname()}, node {node}"
        if store.shared:
            self._pg(store, node, me)
        else:
            path = store.engine.url.database
            if path and path != ":memory:":
                self._file(Path(path + ".run.lock"), me, store)

    def _file(self, path: Path, me: str, store: Store) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise StoreError(f"{store._where()}: already in use by {holder}; stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, me.encode() + b"\n")
        self.fd = fd

    def _pg(self, store: Store, node: str, me: str) -> None:
        import psycopg
        try:
            conn = psycopg.connect(store.listen_dsn(), autocommit=True, connect_timeout=5, application_name=me[:63])
            got = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (self.KEY, node)).fetchone()[0]
            holder = None if got else conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s "
                "AND l.objid::bigint = (hashtext(%s)::bigint & 4294967295) AND l.objsubid = 2",
                (self.KEY, node)).fetchone()
        except psycopg.Error as e:
            raise StoreError(f"{store._where()}: cannot take the node's lock: {short_error(e)}") from None
        if not got:
            conn.close()
            raise StoreError(f"{store._where()}: node {node!r} is already run by "
                             f"{holder[0] if holder else 'another logban'}; stop it first, or give this one "
                             "another --node")
        self.conn = conn

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _mark(conn: Connection) -> str:
    """The driver's placeholder: SQLite's "?", psycopg's "%s"."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _insert_sql(conn: Connection, cols: tuple[str, ...]) -> str:
    """An INSERT for the driver itself, rows as tuples: on the hot writes SQLAlchemy's
    per-row parameter handling costs more than the insert."""
    table = {OFFENCE_COLS: "offences", OFFENDER_COLS: "offenders", BAN_COLS: "bans"}[cols]
    mark = _mark(conn)
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})"


def _max_ban_id(conn: Connection) -> int:
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(BANS.c.id), 0))).scalar_one()


def _bump_revision(conn: Connection) -> int:
    """One more change to the bans: the meta row's number, bumped last in the transaction
    (so no node waits for this row while holding it), and read back."""
    # Whatever the row holds (a value no logban wrote), the bump works: SQLite's CAST never
    # fails, PostgreSQL's is guarded.
    old = ("CASE WHEN meta.value ~ '^[0-9]{1,17}$' THEN CAST(meta.value AS BIGINT) ELSE 0 END"
           if conn.dialect.name == "postgresql" else "CAST(meta.value AS INTEGER)")
    conn.exec_driver_sql(
        f"INSERT INTO meta (key, value) VALUES ('{REVISION_KEY}', '1') ON CONFLICT (key) DO UPDATE "
        f"SET value = CAST({old} + 1 AS VARCHAR)")
    return int(conn.execute(sa.select(Meta.value).where(Meta.key == REVISION_KEY)).scalar_one())


def _transient(e: sa.exc.DBAPIError) -> bool:
    """A deadlock or serialization failure (SQLSTATE 40P01, 40001): the transaction may simply run again."""
    code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
    return code in ("40001", "40P01")


def short_error(e: Exception) -> str:
    """A database error in one line: the driver's message, not SQLAlchemy's wrapping."""
    orig = getattr(e, "orig", None)
    return (str(orig if orig is not None else e).strip().splitlines() or [type(e).__name__])[0]


# What a store that went away (or never came) raises: the daemon goes on without it.
UNREACHABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError, StoreError)
