"""A store opened: its engine, its read and write transactions, the schema checked (and
migrated by a writer), and the bans' revision that tells a reader what changed.

SQLite by default (WAL, so a CLI read never blocks the daemon's writes, and a busy
timeout, so two writers wait for each other instead of failing); any SQLAlchemy URL
otherwise (PostgreSQL for several mail servers). Times are seconds since the epoch (UTC).
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..dbfile import default_url, make_engine, new_sqlite_file, unwritable_hint
from ..errors import StoreError
from .lock import RunLock
from .sql import (
    META,
    NOTIFY_CHANNEL,
    RETRIES,
    REVISION_KEY,
    SCHEMA_VERSION,
    _bump_revision,
    _max_ban_id,
    _transient,
    short_error,
)


class Base:
    last_opened = "database"
    def __init__(self, url: str | None = None, *, readonly: bool = False, cache_mib: int | None = None) -> None:
        """`readonly`: for commands that only read (list, show, stats, export, firewall status):
        no migration, no write transaction, so a store this user may only read, or one on a
        read-only mount, serves them, and they never wait behind a writer. `cache_mib`: a
        writer's SQLite page cache (see `BULK_CACHE_MIB`)."""
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
        self.engine = make_engine(self.url, readonly, None if readonly else cache_mib)
        Base.last_opened = self._where()           # for main()'s one-line errors
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
        # to migrate, must not queue behind its writes. Nor does it import the models: only
        # a create or a migration needs them (see `sql`).
        with self.read() as conn:
            if _version(conn, self._where()) == SCHEMA_VERSION:
                return
        from . import migrate
        with self.write() as conn:
            migrate.upgrade(conn, SCHEMA_VERSION, self._where())

    def _check_version(self) -> None:
        """A reader's open: the schema must be this logban's (a writer migrates it)."""
        with self.read() as conn:
            version = _version(conn, self._where())
        if version is None:
            raise StoreError(f"{self._where()}: not a logban database (no meta table)")
        if version != SCHEMA_VERSION:
            newer = version > SCHEMA_VERSION
            raise StoreError(f"{self._where()}: database schema version {version} is "
                             f"{'newer' if newer else 'older'} than this logban's ({SCHEMA_VERSION}); "
                             + ("upgrade logban" if newer else "a writing command (ban, unban, scan --apply, run) "
                                                              "migrates it"))

    def schema_version(self) -> int:
        with self.read() as conn:
            return int(conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version")).scalar_one())


    def run_lock(self, node: str) -> RunLock:
        """Held by the one `logban run` of this store and node; StoreError naming the holder
        when another has it (two daemons would count every line twice)."""
        return RunLock(self, node)

    def scan_lock(self, node: str, wait) -> RunLock:
        """Held by the one `scan --apply` of this store (and node, on PostgreSQL) that runs:
        two at once would both apply the lines neither had saved as applied. Waited for;
        `wait(holder)` is called first."""
        return RunLock(self, node, command="scan", wait=wait)

    def listen_dsn(self) -> str | None:
        """A libpq connection string for LISTEN (PostgreSQL only)."""
        if not self.shared:
            return None
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def revision(self) -> tuple[int, int]:
        """Changes to the bans by anyone (this process, another node, a `logban ban`/`unban`
        beside the daemon) change this: one row, bumped in the transaction of the change,
        and the highest ban id (a row a writer wrote without the bump: an older logban, by hand)."""
        with self.read() as conn:
            v = conn.execute(sa.select(META.c.value).where(META.c.key == REVISION_KEY)).scalar()
            top = _max_ban_id(conn)
        try:
            return int(v or 0), top
        except ValueError:
            return -1, top         # a value no logban wrote: the next bump makes it a number again


    def watch_revision(self) -> tuple[int, int]:
        """Start following the revision from now: the reader knows the bans as they are."""
        self.revision_known = self.revision()
        return self.revision_known

    def max_ban_id(self) -> int:
        with self.read() as conn:
            return _max_ban_id(conn)


def _version(conn: Connection, where: str) -> int | None:
    """The database's schema version; None: no meta table (a new database, or not logban's);
    0: a meta table without a version (the first schema)."""
    if not sa.inspect(conn).has_table("meta"):
        return None
    row = conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version")).first()
    if row is None:
        return 0
    v = row[0].strip() if isinstance(row[0], str) else row[0]
    if not (isinstance(v, str) and v.isascii() and v.isdigit()):
        raise StoreError(f"{where}: database schema version {row[0]!r} is no number (not a logban database, "
                         "or one changed by hand)")
    return int(v)
