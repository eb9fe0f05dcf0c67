"""What every query shares: column lists and SQL for the hot writes, numbers read whatever a
row holds, the bans' revision, and how a database error is told."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..allow import TIME_MAX, canonical_num
from ..errors import StoreError
from ..rules import KINDS
from .tables import BANS, OFFENCES, Meta

PARTNERS_TTL = 60.0            # seconds a partners answer is reused
NOTIFY_CHANNEL = "logban"
TEXT_MAX = 500                 # characters of a log line kept with its offence
BAN_KINDS = tuple(sorted(KINDS)) + ("manual",)
REVISION_KEY = "bans_revision"  # meta row bumped in every transaction that changes a ban
PRUNE_CHUNK = 5_000            # released bans deleted per transaction by `prune`
RETRIES = 5                    # attempts of a write that lost a deadlock or a serialization conflict
_KIND_BIT = {k: 1 << i for i, k in enumerate(BAN_KINDS)}


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


BAN_READ = tuple(_number(c) if c.name in ("score", "created", "expires", "duration", "released") else c
                 for c in BANS.c)



def _clean(text: str | None) -> str | None:
    """Log text as the database keeps it: PostgreSQL text holds no NUL byte."""
    return None if text is None else text.replace("\x00", "\\x00")


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
