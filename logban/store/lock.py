"""RunLock: one `logban run` per store and node, and one `scan --apply` at a time."""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StoreError
from .sql import short_error

if TYPE_CHECKING:
    from .base import Base as Store



class RunLock:
    """SQLite: an flock on a file beside the database (`<db>.run.lock`, holding the pid and
    node); PostgreSQL: a session advisory lock keyed by the node, on a connection kept open
    for the daemon's life, named after the pid so a second one can say who holds it."""

    KEY = 0x6C6F6762            # "logb": logban's advisory locks, apart from other applications'

    def __init__(self, store: Store, node: str, *, command: str = "run", wait=None) -> None:
        """`wait`: None refuses when another holds the lock; else it is called with the
        holder's name, and the lock waited for (`scan --apply`, whose node is its own)."""
        self.fd: int | None = None
        self.conn = None
        me = f"logban {command} pid {os.getpid()} on {socket.gethostname()}, node {node}"
        if store.shared:
            self._pg(store, node, me, wait)
        else:
            path = store.engine.url.database
            if path and path != ":memory:":
                self._file(Path(f"{path}.{command}.lock"), me, store, wait)

    def _file(self, path: Path, me: str, store: Store, wait) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                if wait is None:
                    raise StoreError(f"{store._where()}: already in use by {holder}; stop it first") from None
                wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode() + b"\n", 0)
        self.fd = fd

    def _pg(self, store: Store, node: str, me: str, wait) -> None:
        import psycopg
        conn = None
        try:
            conn = psycopg.connect(store.listen_dsn(), autocommit=True, connect_timeout=5, application_name=me[:63])
            got = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (self.KEY, node)).fetchone()[0]
            holder = None if got else conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s "
                "AND l.objid::bigint = (hashtext(%s)::bigint & 4294967295) AND l.objsubid = 2",
                (self.KEY, node)).fetchone()
            if not got and wait is not None:
                wait(holder[0] if holder else "another logban")
                conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (self.KEY, node))
                got = True
        except psycopg.Error as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"{store._where()}: cannot take the node's lock: {short_error(e)}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
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

