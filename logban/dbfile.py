"""Where the database lives: the default SQLite file, how logban creates one (0600 in a
0700 directory of its own, no other directory made), and the engine for a URL, read-only
for the commands that only read."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .errors import StoreError, UsageError


def state_dir() -> Path:
    """logban's own state directory: the one directory it creates on demand (0700)."""
    if os.geteuid() == 0:
        return Path("/var/lib/logban")
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "logban"


def default_url() -> str:
    return f"sqlite:///{state_dir() / 'logban.db'}"


def _create_db_file(p: Path) -> None:
    """A new store, 0600 in a 0700 directory: it holds SASL user names and client addresses.
    SQLite gives its -wal and -shm files the database file's mode. Only logban's own state
    directory is made on demand: a typo in --db must not leave directories behind."""
    if not p.parent.is_dir():
        if p.parent != state_dir():
            raise UsageError(f"{p.parent}: no such directory (logban creates only its own, {state_dir()})")
        try:
            p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{p.parent}: cannot create the database directory: {e.strerror}") from None
    try:
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        pass                        # made meanwhile by another logban: SQLite opens it
    except OSError as e:
        raise StoreError(f"{p}: cannot create the database: {e.strerror}") from None


def new_sqlite_file(url: str) -> bool:
    try:
        u = sa.make_url(url)
    except sa.exc.ArgumentError:
        return False                # make_engine says what is wrong with it
    return (u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:")
            and not Path(u.database).exists())


# A TEXT value that is no valid UTF-8 (a row no logban wrote: SQLite keeps whatever anyone
# wrote) is read with replacement characters: pysqlite's default fails the whole query
# ("Could not decode to UTF-8 column"), so one such row stopped list, show, export, unban
# and the daemon's start. store.py reads BLOBs and numbers in text columns as text.
_lenient_text = functools.partial(str, encoding="utf-8", errors="replace")


def _sqlite_ro_connect(path: str):
    """A read-only connection: `mode=ro` reads a store beside a writing daemon (WAL) where this
    user may only read; on a read-only mount, where SQLite cannot make the WAL index, the file
    is read as `immutable` (nothing can write it there anyway)."""
    import sqlite3
    from urllib.parse import quote
    uri = f"file:{quote(path)}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as e:
        conn.close()
        if "unable to open" not in str(e) and "readonly" not in str(e):
            raise
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, timeout=5, check_same_thread=False)
    conn.text_factory = _lenient_text
    return conn


def _sqlite_engine(url: sa.URL, readonly: bool = False, cache_mib: int | None = None) -> Engine:
    path = url.database
    memory = not path or path == ":memory:"
    if not memory:
        p = Path(path)
        if p.is_dir():
            raise UsageError(f"{p}: is a directory, not a database file")
        if not readonly and not p.exists():
            _create_db_file(p)
    if readonly:
        engine = sa.create_engine(url, creator=lambda: _sqlite_ro_connect(path), poolclass=sa.pool.NullPool)
    else:
        engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        # Transactions are ours to begin (see _begin): pysqlite's own would not
        # cover DDL, and a migration must be all or nothing.
        dbapi_conn.isolation_level = None
        dbapi_conn.text_factory = _lenient_text
        cur = dbapi_conn.cursor()
        # A reader never waits for a writer in WAL mode; it must not queue 30 s either.
        cur.execute(f"PRAGMA busy_timeout = {5000 if readonly else 30000}")
        if not readonly:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            if cache_mib:
                # Negative: KiB, not pages. Only allocated as pages are read, so a small store
                # costs no more memory than before.
                cur.execute(f"PRAGMA cache_size = {-1024 * int(cache_mib)}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer takes the write lock up front: a read lock upgraded later can
        # fail at once with "database is locked" whatever the busy timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def make_engine(url: str, readonly: bool = False, cache_mib: int | None = None) -> Engine:
    """`cache_mib`: SQLite's page cache of a writer (default: SQLite's 2 MB); other databases
    keep their own."""
    try:
        u = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise UsageError(f"{url!r} is not a database URL (like sqlite:////var/lib/logban/logban.db)") from None
    try:
        if u.get_backend_name() == "sqlite":
            return _sqlite_engine(u, readonly, cache_mib)
        # A database that went away must fail fast, not hang: the daemon goes on without it.
        args: dict = {"connect_timeout": 5}
        if readonly and u.get_backend_name() == "postgresql":
            args["options"] = "-c default_transaction_read_only=on"     # a reader's session writes nothing
        return sa.create_engine(u, pool_pre_ping=True, connect_args=args)
    except (ImportError, sa.exc.NoSuchModuleError) as e:
        raise StoreError(f"{u.render_as_string()}: no driver for this database: {e}") from None


def unwritable_hint(url: sa.URL, readonly: bool) -> str:
    """Why a writer cannot open a SQLite store SQLite only calls "unable to open": its
    directory is read-only or not ours (a writer makes -wal and -shm files beside it)."""
    if readonly or url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return ""
    d = Path(url.database).parent
    if os.access(d, os.W_OK) and os.access(url.database, os.W_OK):
        return ""
    ro = os.path.isdir(d) and bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    why = f"{d} is on a read-only file system" if ro else f"{url.database} or {d} is not writable by this user"
    return f" ({why}; list, show, stats and export only read it)"
