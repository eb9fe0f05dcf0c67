"""A store's writes in a process of their own, for `scan --apply`: the process that scores
goes on while the last batch is written (SQLite's work on a batch cost that process as
much as its scoring; a writer thread gains nothing, as sqlite3 hands the GIL back and
forth per row).

Forked before this process opens any database connection (SQLite's state must not cross
a fork); the writer opens its store on its first batch, when this process has made or
migrated it. Batches are written in the order sent, each in the transaction the call
makes. `wait` returns once every batch sent is in the database: call it before anything
reads the store or reports what was recorded. An error in the writer is raised here, as
it was raised there, at the next call; a writer that died is a StoreError. Killed, this
process loses only batches it never reported: each batch is one transaction with the read
positions it comes up to.
"""
from __future__ import annotations

import io
import os
import pickle
import signal
from collections.abc import Callable
from multiprocessing import get_context

import sqlalchemy as sa

from ..errors import StoreError
from ..jobs import end_with_parent
from .base import Base
from .sql import short_error

_ERROR_MAX = 16 << 10         # bytes of a pickled error: far less than a socket's buffer


class Writer:
    def __init__(self, url: str, fn: Callable, *, cache_mib: int | None = None) -> None:
        """`fn(store, *args)` runs in the writer for each `send(*args)`; what it returns comes
        back from `wait`."""
        ctx = get_context("fork")
        self.url = url
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self._conn, url, fn, cache_mib, os.getpid()),
                                 name="logban-writer")
        self._proc.start()
        child.close()
        self._closed = False

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, *args) -> None:
        self._raise_error()
        self._io(self._conn.send_bytes, _dumps(("call", args)))

    def wait(self) -> list:
        """Results of the calls sent since the last wait, once all are in the database."""
        self._io(self._conn.send_bytes, _dumps(("wait", None)))
        while True:
            what, value = self._io(self._conn.recv)
            if what == "error":
                raise value
            if what == "done":
                return value

    def close(self) -> None:
        """Ends the writer after the batches sent (a batch it is writing is finished or rolled
        back whole, never cut)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.send_bytes(_dumps(("stop", None)))
        except OSError:
            pass
        self._conn.close()
        self._proc.join()

    def _raise_error(self) -> None:
        if self._io(self._conn.poll):
            what, value = self._io(self._conn.recv)
            raise value

    def _io(self, op: Callable, *args):
        try:
            return op(*args)
        except (OSError, EOFError):
            self._proc.join(5)
            raise StoreError(f"{Base.where(self.url)}: the process writing the database ended "
                             f"(exit status {self._proc.exitcode})") from None


def _dumps(msg: tuple) -> memoryview:
    """A batch pickled without the memo: its tuples and strings, each recorded in the memo
    and never referred to again, cost the scoring process five times as long (a batch holds
    no cycle, which is what the memo is for)."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
    p.fast = True
    p.dump(msg)
    return buf.getbuffer()


def _portable(e: BaseException) -> BaseException:
    """The error as the scoring process raises it, small enough for the pipe (the scoring
    process may be sending a batch meanwhile, and reads only once that is sent): a database
    error without the rows it was given, which can be a whole batch; its one line is the
    driver's message. Anything that does not cross whole becomes a StoreError of that line."""
    if isinstance(e, sa.exc.StatementError):
        e.params = None
    try:
        if len(pickle.dumps(e)) < _ERROR_MAX:
            return e
    except Exception:       # noqa: BLE001 - whatever cannot be pickled
        pass
    return StoreError(f"{Base.last_opened}: {short_error(e)}")


def _serve(conn, theirs, url: str, fn: Callable, cache_mib: int | None, parent: int) -> None:
    # Ctrl-C is the scoring process's to handle; this one ends when its pipe does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Their end, forked with this process, closed: else the pipe never ends here. A batch Ctrl-C
    # cut off mid-send reads the "stop" after it as its own bytes and would wait for the rest.
    theirs.close()
    end_with_parent(parent)
    from . import Store
    store = None
    results: list = []
    error: BaseException | None = None
    try:
        while True:
            try:
                what, args = pickle.loads(conn.recv_bytes())
            except EOFError:
                break
            if what == "stop":
                break
            if what == "wait":
                conn.send(("done", results) if error is None else ("error", error))
                results = []
                continue
            if error is not None:
                continue            # the error is on its way: what came after it is not written
            try:
                if store is None:
                    store = Store(url, cache_mib=cache_mib)
                results.append(fn(store, *args))
            except BaseException as e:      # noqa: BLE001 - every error is the scoring process's to raise
                error = _portable(e)
                conn.send(("error", error))
    finally:
        if store is not None:
            store.close()
        conn.close()
        os._exit(0)
