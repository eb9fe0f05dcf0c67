"""One large log read on several cores, with the result it gives read on one.

A plain file is cut into parts at line starts, which the workers read themselves;
any other log (compressed, standard input, a journal) is read here, chunk by chunk,
and the chunks are handed to the workers. Worker processes (forked, so they hold
the parser the main process built) run the parser's stateless stage
(`Parser.match`: header, rules, addresses) on their parts; the main process runs
the stateful stage (`Parser.apply`: links, waiting offences, rate windows) on
the parts' results strictly in file order. So sessions that cross a part's
edge, rate windows and every counter come out as in one process.

One thing of the stateless stage does depend on earlier lines: in the hour a
daylight-saving fall-back repeats, which pass an RFC 3164 stamp means depends on
the latest stamp before it. A part that met such a stamp is read again in the
main process, in order.
"""
from __future__ import annotations

import itertools
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from .parse import Offence, Parser, ParseStats
from .sources import READ_ERRORS, Source, chunks, open_source

PART = 1 << 20          # bytes per part: its result is held in memory until applied; a part costs a millisecond
_SCAN = 64 << 10
PIPE = 1 << 20          # bytes a pipe to or from the workers holds: the most Linux grants to anyone (pipe-max-size)
_parser: Parser | None = None           # in a worker: the parser it was forked with


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Pool:
    """Worker processes for one scan, forked with `parser` (any of the scan's parsers: the
    stateless stage is the same for all of them)."""

    def __init__(self, parser: Parser, jobs: int, part: int = PART, *, lines: bool = True) -> None:
        """`lines`: the offences need what their log line holds (`Offence.raw` and the reply
        class: `scan --apply` records and scores them); a report and the events never show
        either, and without the lines a worker sends back a third of the bytes, which the
        main process unpickles while it applies."""
        global _parser
        _parser = parser
        self.jobs, self.part, self.lines = jobs, part, lines
        self._in_flight = 0     # tasks handed out and not yet applied, over every log being read
        self._ex = ProcessPoolExecutor(jobs, mp_context=get_context("fork"), initializer=_worker_start,
                                       initargs=(os.getpid(),))
        _widen(self._ex)

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def takes(self, src: Source) -> bool:
        """A plain file worth cutting into parts, read by the workers themselves (not stdin,
        not a journal, not compressed: those are read here and handed over chunk by chunk)."""
        if src.path is None:
            return False
        try:
            if src.path.stat().st_size < 2 * self.part:
                return False
            with open(src.path, "rb") as f:
                head = f.read(6)
        except OSError:
            return False            # read the ordinary way, which reports the error
        return not head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))

    def read(self, src: Source, parser: Parser, reference: float) -> Iterator[tuple[list[Offence], int]]:
        """(offences, lines read so far) per part of `src`, as `read_source` gives per chunk."""
        assert src.path is not None
        edges = _edges(src.path, self.part)
        yield from self._in_order(
            ((_match_part, (str(src.path), a, b, reference, self.lines), partial(_again, src, a, b, parser))
             for a, b in zip(edges, edges[1:] + [None])), parser)

    def stream(self, pieces: Iterator[bytes], parser: Parser, reference: float) -> Iterator[tuple[list[Offence], int]]:
        """(offences, lines read so far) per chunk of a log read here (`pieces`: its chunks of
        whole lines), the chunks matched by the workers. A log of one chunk is parsed here:
        handing it over costs more than it saves (and the workers are forked only when needed)."""
        first = next(pieces, None)
        if first is None:
            return
        try:
            second = next(pieces, None)
        except READ_ERRORS:
            yield _feed(parser, first, 0)       # what was read before the error, as one process gives it
            raise
        if second is None:
            yield _feed(parser, first, 0)
            return
        yield from self._in_order(
            ((_match_chunk, (chunk, reference, self.lines), partial(_feed, parser, chunk))
             for chunk in itertools.chain((first, second), pieces)), parser)

    def _in_order(self, tasks: Iterator[tuple[Callable, tuple, Callable[[int], tuple[list[Offence], int]]]],
                  parser: Parser) -> Iterator[tuple[list[Offence], int]]:
        """Each task's (offences, lines read so far), applied in order: a task is (what a worker
        runs, its arguments, how the main process reads the same lines again in order, given
        the lines before them). A bounded number of tasks is in flight, over all the logs that
        `scan --apply` reads side by side too (each has one at least): memory stays flat. A
        read error (a truncated .gz) ends the reading, and is raised once what was read before
        it has been applied, as one process would."""
        pending: deque[tuple[Future, Callable]] = deque()
        error: BaseException | None = None

        def fill() -> None:
            nonlocal error
            while error is None and (not pending or self._in_flight < 2 * self.jobs):
                try:
                    task = next(tasks, None)
                except READ_ERRORS as e:
                    error = e
                    return
                if task is None:
                    return
                fn, args, again = task
                pending.append((self._ex.submit(fn, *args), again))
                self._in_flight += 1

        lines = 0
        try:
            fill()
            while pending:
                fut, again = pending.popleft()
                self._in_flight -= 1
                hits, n, stats, last, ambiguous = fut.result()
                fill()
                if ambiguous:
                    offs, n = again(lines)
                else:
                    parser.stats.add(stats)
                    if last is not None and (parser.clock.last is None or last > parser.clock.last):
                        parser.clock.last = last
                    offs = parser.apply(hits, lines)
                lines += n
                yield offs, lines
            if error is not None:
                raise error
        finally:
            self._in_flight -= len(pending)
            for fut, _ in pending:
                fut.cancel()


def _widen(ex: ProcessPoolExecutor) -> None:
    """The executor's pipes made to hold a whole chunk or result (Linux, F_SETPIPE_SZ). In the
    64 KiB of a pipe's default, a worker's result, or a chunk to a worker, goes across in
    pieces, and each piece waits for a thread of the main process to get the GIL back from
    the main thread, busy applying: the workers sat idle a tenth of the time. The executor
    keeps its pipes to itself; on another platform or Python they stay as they are."""
    try:
        import fcntl
        for queue in (ex._call_queue, ex._result_queue):
            fcntl.fcntl(queue._writer.fileno(), fcntl.F_SETPIPE_SZ, PIPE)
    except (ImportError, AttributeError, OSError):
        pass


def _worker_start(parent: int) -> None:
    # Ctrl-C is the main process's to handle: it stops handing out parts and ends the scan.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_parent(parent)


def end_with_parent(parent: int) -> None:
    """Killed with the process that forked this one, `parent` (Linux): the processes it
    forked hold its ends of their pipes too, so after a `kill -9` of it no read here would
    ever end, and a worker or writer would wait forever. A batch a writer had begun is
    rolled back whole; the next `scan --apply` goes on from the positions saved with the
    last one written."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))        # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(0)                 # it died before the line above


def _edges(path: Path, part: int) -> list[int]:
    """Starts of the parts: every `part` bytes, moved on to the next line start (a part whose
    end finds no newline before the next one is merged into it)."""
    size = path.stat().st_size
    out = [0]
    with open(path, "rb") as f:
        at = part
        while at < size:
            f.seek(at)
            pos = at
            while True:
                block = f.read(_SCAN)
                if not block:
                    return out
                nl = block.find(b"\n")
                if nl >= 0:
                    out.append(pos + nl + 1)
                    break
                pos += len(block)
            at = max(at + part, out[-1] + 1)
    return out


class _Range:
    """A file read from `start` up to `end` (None: to its end, as it is then)."""

    def __init__(self, f, start: int, end: int | None) -> None:
        f.seek(start)
        self.f, self.left = f, (None if end is None else end - start)

    def read(self, n: int) -> bytes:
        if self.left is None:
            return self.f.read(n)
        data = self.f.read(min(n, self.left))
        self.left -= len(data)
        return data


def _match_part(path: str, start: int, end: int | None, reference: float, lines: bool) -> tuple:
    """In a worker: the stateless stage over one part of a file."""
    with open(path, "rb") as f:
        return _match(chunks(_Range(f, start, end), _parser.max_line), reference, lines)


def _match_chunk(chunk: bytes, reference: float, lines: bool) -> tuple:
    """In a worker: the stateless stage over one chunk the main process read."""
    return _match((chunk,), reference, lines)


def _match(pieces: Iterable[bytes], reference: float, lines: bool) -> tuple:
    """The stateless stage over consecutive chunks, numbered from their first line: (hits,
    lines, statistics, latest RFC 3164 stamp, whether one was in a repeated hour). Without
    `lines`, each hit's line is left out (b"")."""
    p = _parser
    p.stats = ParseStats()
    p.clock.set_reference(reference)
    p.clock.last = None
    p.clock.ambiguous = False
    p.replies = lines
    hits: list[tuple] = []
    n = 0
    for chunk in pieces:
        got, _ = p.match(chunk, n)
        hits += got if lines else [(i, t, b"", found) for i, t, _, found in got]
        n = p.stats.lines
    return hits, n, p.stats, p.clock.last, p.clock.ambiguous


def _feed(parser: Parser, chunk: bytes, before: int) -> tuple[list[Offence], int]:
    """Both stages here, in order: the offences of `chunk`, `before` lines before it, and its lines."""
    n0 = parser.stats.lines
    offs = parser.feed(chunk, before)
    return offs, parser.stats.lines - n0


def _again(src: Source, start: int, end: int | None, parser: Parser, before: int) -> tuple[list[Offence], int]:
    """A part read in the main process, in order (see the module's note on the repeated hour)."""
    offs: list[Offence] = []
    lines = before
    with open_source(src) as f:
        for chunk in chunks(_Range(f, start, end), parser.max_line):
            got, n = _feed(parser, chunk, lines)
            offs += got
            lines += n
    return offs, lines - before
