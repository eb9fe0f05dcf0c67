"""The per-match time limit kept by an interval timer (logban/timelimit.py)."""
from __future__ import annotations

import signal
import threading
import time

import pytest
from conftest import evil_rules, skip_or_fail

from logban.parse import Clock, Parser
from logban.timelimit import GUARD

REF = 1_795_000_000


@pytest.fixture
def evil(tmp_path):
    return evil_rules(tmp_path)


LINES = (b"Nov 20 01:00:00 mx evild[1]: evil: " + b"a" * 5_000 + b"\n") * 2 \
    + b"Nov 20 01:00:01 mx evild[1]: plain from 192.0.2.7\n"


def _feed(rules) -> tuple[Parser, list, float]:
    p = Parser(rules, clock=Clock("UTC", reference=REF), match_timeout=0.05)
    start = time.process_time()
    out = p.feed(LINES, 0)
    return p, out, time.process_time() - start


def test_the_timer_stops_a_runaway_match_and_the_next_line_still_counts(evil):
    p, out, cpu = _feed(evil)
    assert p.stats.timeouts == 2
    assert [o.ip for o in out] == ["192.0.2.7"]
    assert cpu < 2          # two matches of ~0.06 s each, not minutes of backtracking
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)      # the timer is off again
    assert not GUARD.armed and not GUARD.busy


def test_off_the_main_thread_the_regex_timeout_still_bounds_each_match(evil):
    got = {}
    th = threading.Thread(target=lambda: got.update(r=_feed(evil)))
    th.start()
    th.join(30)
    p, out, _ = got["r"]
    assert p.stats.timeouts == 2 and [o.ip for o in out] == ["192.0.2.7"]


def test_a_timer_someone_else_installed_is_left_alone(evil):
    fired = []
    old = signal.signal(signal.SIGVTALRM, lambda *a: fired.append(1))
    try:
        assert GUARD.arm(0.05) is False and not GUARD.armed
        assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGVTALRM, old)


def test_ticks_outside_a_match_never_raise():
    guard = GUARD
    if not guard.arm(0.004):
        skip_or_fail("no CPU interval timer here")
    try:
        end = time.process_time() + 0.2
        n = 0
        while time.process_time() < end:      # 50 timeouts' worth of CPU outside any match
            n += 1
    finally:
        guard.disarm()
    assert n > 0 and signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)


def test_a_parse_off_the_main_thread_keeps_its_own_limit_while_the_main_thread_is_guarded(evil):
    """The guard is the process's: a parse in another thread while the main thread's matches
    are guarded must neither run unbounded (no signal reaches it) nor set the guard busy (a
    tick would then raise in the main thread, outside any match)."""
    if not GUARD.arm(0.05):
        skip_or_fail("no CPU interval timer here")
    got = {}
    th = threading.Thread(target=lambda: got.update(r=_feed(evil)), daemon=True)
    try:
        th.start()
        end = time.monotonic() + 30
        while th.is_alive() and time.monotonic() < end:
            th.join(0.01)           # Python runs on the main thread, armed: ticks come here
    finally:
        GUARD.disarm()
    th.join(30)
    p, out, _ = got["r"]
    assert p.stats.timeouts == 2 and [o.ip for o in out] == ["192.0.2.7"]
    assert not GUARD.busy
