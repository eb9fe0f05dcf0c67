"""`python -m logban`, with test-only hooks patched in from the environment (issue 14).

The hooks live here, not in logban: production code carries no fault injection. Used by
daemonproc.Daemon.start(hooks=...):

LOGBAN_TEST_CRASH_AT=POINT, LOGBAN_TEST_CRASH_LINE=N: the process kills itself (SIGKILL,
as `kill -9`) in the first store write that records an offence from a line numbered above
N, at POINT:
  between-position-and-offences  the read positions are written, the offences not yet
                                 (one transaction: neither may become visible);
  before-commit                  everything of the batch written, the commit not made;
  after-commit                   the batch committed, before the daemon goes on.
LOGBAN_TEST_WAIT=SECONDS: Follower.wait always waits this long unless inotify wakes it
(a polling follower just sleeps): the daemon reads a new line early only if inotify works.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
import time


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_hooks(point: str, line: int) -> None:
    from logban.store import OFFENCE_COLS, Store
    from logban.store.writes import OffenceRows

    record = Store.record
    at = OFFENCE_COLS.index("line")

    def hooked(self, offences, decisions, **kw):
        # The engine records its offences as rows (OffenceRows); a caller may give (offence, target) pairs.
        rows = offences if isinstance(offences, OffenceRows) else OffenceRows.of(offences, "")
        if not any(r[at] > line for r in rows):
            return record(self, offences, decisions, **kw)
        if point == "after-commit":
            record(self, offences, decisions, **kw)
            _die()
        name = {"between-position-and-offences": "_save_positions", "before-commit": "_insert_bans"}[point]
        inner = getattr(self, name)

        def then_die(*a, **k):
            inner(*a, **k)
            _die()
        setattr(self, name, then_die)          # this instance, inside record's transaction
        return record(self, offences, decisions, **kw)

    Store.record = hooked


def _wait_hook(seconds: float) -> None:
    from logban.follow import Follower

    wait = Follower.wait

    def hooked(self, timeout, wake_fd=None):
        if self._notifier is None:
            time.sleep(seconds)            # polling: nothing wakes it early
            return None
        return wait(self, seconds, wake_fd)

    Follower.wait = hooked


if __name__ == "__main__":
    if os.environ.get("LOGBAN_TEST_CRASH_AT"):
        _crash_hooks(os.environ["LOGBAN_TEST_CRASH_AT"], int(os.environ.get("LOGBAN_TEST_CRASH_LINE", "0")))
    if os.environ.get("LOGBAN_TEST_WAIT"):
        _wait_hook(float(os.environ["LOGBAN_TEST_WAIT"]))
    sys.argv[0] = "logban"
    runpy.run_module("logban", run_name="__main__", alter_sys=True)
