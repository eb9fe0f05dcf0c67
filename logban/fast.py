"""The `logban[fast]` extra: Hyperscan runs the parser's pre-filter.

The pre-filter says which lines can match which rules: a line is a candidate for a
hint when it contains the hint's literal text (": " + the hint for a lead hint).
Hyperscan finds every occurrence of all hints in a whole chunk in one pass of
vectorised C, where the pure-Python pre-filter runs one regex over the chunk plus
one `bytes.find` pass per non-lead hint and a Python step per occurrence. Only
literals go to Hyperscan: for them its semantics are exactly "the chunk contains
this text here", so the candidates it gives are the ones `Parser._hits` gives,
line for line and hint for hint. The rules themselves (captures, look-arounds,
time limits) still run in `regex`, on the candidate lines only.

Hyperscan is optional (PyPI `hyperscan`, a manylinux wheel): without it, or with
LOGBAN_FAST=0 in the environment (the tests and the bench compare both ways),
the parser uses its pure-Python pre-filter, with the same results.
"""
from __future__ import annotations

import os
import threading

try:
    import hyperscan
except ImportError:             # the extra is not installed, or no wheel for this platform
    hyperscan = None

ENV = "LOGBAN_FAST"


def available() -> bool:
    """Hyperscan can be imported here."""
    return hyperscan is not None


def wanted() -> bool:
    """The fast pre-filter is available and not switched off (LOGBAN_FAST=0, off, no or false)."""
    return available() and os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "no", "false")


class HintScanner:
    """Every hint's occurrences in a chunk, by line, with Hyperscan.

    Two literal databases: leads after ": " (the message start of a tagged line) plus the
    other hints, and leads anywhere plus the other hints, for chunks where a message can
    start without ": " before it (RFC 5424, Solaris "[ID n fac.lvl]")."""

    def __init__(self, leads: dict[bytes, int], finds: list[tuple[bytes, int]]) -> None:
        """`leads`: ": " + hint -> hint id; `finds`: (hint, hint id) looked for anywhere."""
        tagged = list(leads.items()) + finds
        anywhere = [(h[2:], i) for h, i in leads.items()] + finds
        self._tagged = _database(tagged)
        self._anywhere = _database(anywhere)
        self._local = threading.local()     # a scratch space per thread: Hyperscan's is not shared
        self._any: dict[tuple[bytes, ...], object] = {}

    def holds(self, chunk: bytes, literals: tuple[bytes, ...]) -> bool:
        """Whether `chunk` contains any of `literals`: one vectorised pass that stops at the first,
        where `in` runs one pass per literal, restarting its memchr at every first byte."""
        db = self._any.get(literals)
        if db is None:
            db = self._any[literals] = _database([(h, i) for i, h in enumerate(literals)], stop=True)
        found: list[int] = []
        try:
            db.scan(chunk, match_event_handler=lambda *_: found.append(1) or True, scratch=self._scratch(db))
        except hyperscan.ScanTerminated:
            pass
        return bool(found)

    def hits(self, chunk: bytes, anywhere: bool) -> dict[int, list[int]]:
        """Line start -> ids of the hints found on that line (each once)."""
        db = self._anywhere if anywhere else self._tagged
        found: list[tuple[int, int]] = []
        add = found.append
        db.scan(chunk, match_event_handler=lambda hid, start, end, flags, ctx: add((end, hid)),
                scratch=self._scratch(db))
        cand: dict[int, list[int]] = {}
        rfind, find = chunk.rfind, chunk.find
        ls = le = -1            # the line of the last match: [ls, le)
        got: list[int] = []
        for end, hid in found:
            # No hint holds a newline (see `usable`): the line of its end is its line. Found
            # once per line, not once per match: a long line full of a hint made rfind's
            # scans quadratic (a second per MiB).
            if not ls <= end - 1 < le:
                ls = rfind(b"\n", 0, end) + 1
                le = find(b"\n", end)
                if le < 0:
                    le = len(chunk)
                got = cand.setdefault(ls, [])
            if hid not in got:
                got.append(hid)
        return cand

    def _scratch(self, db):
        local = self._local
        got = getattr(local, "by_db", None)
        if got is None:
            got = local.by_db = {}
        sc = got.get(id(db))
        if sc is None:
            sc = got[id(db)] = hyperscan.Scratch(db)
        return sc


def usable(hints: list[bytes]) -> bool:
    """Hints Hyperscan can stand in for exactly: some, none empty, none holding a newline
    (a hint across lines would make its line ambiguous) or a NUL (the binding passes
    patterns as C strings: "a\\0b" would be looked for as "a")."""
    return bool(hints) and all(h and b"\n" not in h and b"\0" not in h for h in hints)


def _database(patterns: list[tuple[bytes, int]], stop: bool = False):
    """A literal database; `stop`: each literal reported once at most (the caller stops at the first)."""
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[h for h, _ in patterns], ids=[i for _, i in patterns],
               elements=len(patterns), flags=hyperscan.HS_FLAG_SINGLEMATCH if stop else 0, literal=True)
    return db


def scanner(leads: dict[bytes, int], finds: list[tuple[bytes, int]], fast: bool | None = None) -> HintScanner | None:
    """A Hyperscan pre-filter for these hints, or None for the pure-Python one: Hyperscan is
    missing, switched off (`fast` False, or None and LOGBAN_FAST=0), or a hint does not suit it."""
    if not (wanted() if fast is None else fast and available()):
        return None
    if not usable(list(leads) + [h for h, _ in finds]):
        return None
    try:
        return HintScanner(leads, finds)
    except hyperscan.error:         # a CPU without SSSE3 (ArchitectureError), or a pattern it refuses
        return None
