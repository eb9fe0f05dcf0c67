"""What every query shares: the tables as the queries see them, column lists and SQL for
the hot writes, numbers read whatever a row holds, the bans' revision, and how a database
error is told.

The tables here are SQLAlchemy Core views of the schema `tables` defines (its sqlmodel
models): the queries need names and types only, and importing sqlmodel and the ORM
costs a `logban ban` or `unban` more than its work at 100,000 bans. A test checks that
every view has its model's columns, in order, of the same SQL types. A view carries no
column defaults: an insert through one names every column it writes."""
from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..allow import TIME_MAX, canonical_num
from ..errors import StoreError
from ..rules import KINDS

PARTNERS_TTL = 60.0            # seconds a partners answer is reused
NOTIFY_CHANNEL = "logban"
TEXT_MAX = 500                 # characters of a log line kept with its offence
BAN_KINDS = tuple(sorted(KINDS)) + ("manual",)
REVISION_KEY = "bans_revision"  # meta row bumped in every transaction that changes a ban
PRUNE_CHUNK = 5_000            # released bans deleted per transaction by `prune`
RETRIES = 5                    # attempts of a write that lost a deadlock or a serialization conflict
# SQLite page cache of a bulk writer (`scan --apply`), against SQLite's 2 MB: a million
# distinct offenders insert at random places in the offences' (target, time, node) index
# and the offenders' key; 16 MiB took 8% off their executemany (32 and 64 MiB no more).
BULK_CACHE_MIB = 16
_KIND_BIT = {k: 1 << i for i, k in enumerate(BAN_KINDS)}
# The version of the schema `tables` defines: checked at every open without importing it.
SCHEMA_VERSION = 8
# The slots of the unique indexes on unreleased bans: one real, one dry-run ban per target.
REAL_SLOT = "released IS NULL AND NOT dry_run"
DRY_SLOT = "released IS NULL AND dry_run"



class _Text(sa.types.TypeDecorator):
    """A text column read as text whatever a row holds: SQLite keeps a BLOB or a number
    written into a VARCHAR column (a row no logban wrote), and bytes then stopped `list
    --json`, `export` and the daemon's joins (dbfile reads invalid UTF-8 leniently)."""
    impl = sa.String
    cache_ok = True

    def process_result_value(self, value, dialect):
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)


_S, _F, _I, _BIG, _B = _Text, sa.Float, sa.Integer, sa.BigInteger, sa.Boolean


def _view(table: str, /, **cols: type[sa.types.TypeEngine]) -> sa.TableClause:
    return sa.table(table, *(sa.column(c, t) for c, t in cols.items()))


META = _view("meta", key=_S, value=_S)
OFFENDERS = _view("offenders", target=_S, score=_F, score_time=_F, first_seen=_F, last_seen=_F, offences=_I,
                  kinds=_I, name=_S, reset_at=_F)
OFFENCES = _view("offences", id=_I, time=_F, target=_S, ip=_S, mta=_S, rule=_S, kind=_S, score=_F, node=_S,
                 file=_S, line=_I, text=_S, name=_S)
BANS = _view("bans", id=_I, target=_S, kind=_S, rule=_S, reason=_S, score=_F, created=_F, expires=_F, duration=_F,
             released=_F, release_reason=_S, count=_I, escalated=_B, dry_run=_B, node=_S, source=_S, members=_S,
             text=_S)
POSITIONS = _view("positions", node=_S, path=_S, dev=_BIG, inode=_BIG, fingerprint=_S, fp_len=_I, offset=_BIG,
                  lines=_BIG, updated=_F)
OFFENCE_HOURS = _view("offence_hours", hour=_BIG, node=_S, mta=_S, rule=_S, kind=_S, count=_BIG)
ALLOWLIST = _view("allowlist", target=_S, kind=_S, reason=_S, created=_F, expires=_F, added_by=_S)


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



def _number(col: sa.ColumnClause) -> sa.Label:
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


BAN_READ = tuple(_number(c) if c.name in ("score", "created", "expires", "duration", "released") else c
                 for c in BANS.c)



def _clean(text: str | None) -> str | None:
    """Log text as the database keeps it: PostgreSQL text holds no NUL byte."""
    return None if text is None else text.replace("\x00", "\\x00")


# A log file name that is no UTF-8 (os.fsdecode's surrogates) is kept as its bytes in hex
# after this prefix: no database takes the surrogates, and `scan --apply` stopped at its
# first save. Any name that begins with the prefix is kept the same way, so both read back.
_PATH_BYTES = "fsbytes:"


def path_text(path: str) -> str:
    """A file name as the positions table keeps it (`path_of` reads it back)."""
    if not path.startswith(_PATH_BYTES):
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    return _PATH_BYTES + os.fsencode(path).hex()


def path_of(text: str) -> str:
    if text.startswith(_PATH_BYTES):
        try:
            return os.fsdecode(bytes.fromhex(text[len(_PATH_BYTES):]))
        except ValueError:
            pass                    # not written by path_text: a name like any other
    return text


def _text(raw: bytes) -> str:
    return _clean(raw[:TEXT_MAX].decode("utf-8", "replace"))


def kind_names(bits: int) -> list[str]:
    return [k for k, b in _KIND_BIT.items() if bits & b]




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
    return int(conn.execute(sa.select(META.c.value).where(META.c.key == REVISION_KEY)).scalar_one())


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
