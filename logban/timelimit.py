"""The time limit on each rule match, kept by one interval timer instead of a clock read per match.

Log lines are partly written by attackers, so no rule match may run long. The `regex`
module bounds a match itself (`timeout=`), but reads the process CPU clock (`clock()`, a
system call, not a vDSO read) as each match starts and as it runs: measured here, two of
the three microseconds of a typical rule match, the largest single cost of a scan.

Here a CPU-time interval timer (ITIMER_VIRTUAL, SIGVTALRM) runs while the parser
works through a chunk. Each match takes a serial number and says it is running; a tick
that finds the same match still running as `ticks` ticks before raises TimeoutError in
it. `regex` looks for signals as it runs (every 65,536 steps, as it does for Ctrl-C),
so the error stops the match from inside, and the parser counts a timeout, as with
`timeout=`. CPU time, not wall time: a loaded machine does not make matches time out.

Signals reach only the main thread: elsewhere (and where the timer cannot be set) the
guard stays off and the parser passes `timeout=` to each match as before.
"""
from __future__ import annotations

import math
import signal
import threading


class MatchGuard:
    """Arms the timer for a stretch of matches; `serial`/`busy` are set around each match."""

    def __init__(self) -> None:
        self.armed = False
        self.busy = False           # a match is running: only then may a tick raise
        self.serial = 0             # bumped by each match
        self._seen = -1             # the serial the last tick saw running
        self._left = 0              # ticks that match may still run
        self._ticks = 0

    def arm(self, seconds: float) -> bool:
        """Start the timer for matches of at most `seconds` of CPU time each; False (and the
        guard off) where it cannot run here."""
        if threading.current_thread() is not threading.main_thread():
            return False
        tick = max(seconds / 4, 0.001)
        self._ticks = math.ceil(seconds / tick)
        try:
            handler = signal.getsignal(signal.SIGVTALRM)
            if handler != self._tick:
                if handler not in (signal.SIG_DFL, None):
                    return False            # someone else's timer: leave it alone
                signal.signal(signal.SIGVTALRM, self._tick)
            signal.setitimer(signal.ITIMER_VIRTUAL, tick, tick)
        except (ValueError, OSError, AttributeError):      # no such timer on this platform
            return False
        self._seen = -1
        self.busy = False
        self.armed = True
        return True

    def disarm(self) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            self.armed = self.busy = False

    def _tick(self, signum, frame) -> None:
        if not self.busy:
            self._seen = -1
            return
        if self.serial != self._seen:
            self._seen, self._left = self.serial, self._ticks
            return
        self._left -= 1
        if self._left <= 0:
            self._seen = -1
            raise TimeoutError("rule match ran out of time")


GUARD = MatchGuard()       # one per process: the timer and the signal are the process's
