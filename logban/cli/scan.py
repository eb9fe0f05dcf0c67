"""`logban scan`: read logs once, report, and with --apply record what they show."""
from __future__ import annotations

import contextlib
import gc
import glob
import hashlib
import heapq
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..config import Config
from ..errors import UsageError
from ..jobs import Pool, available_cores
from ..parse import Offence, file_label
from ..report import (
    AllowFilter,
    ScanSummary,
    as_json,
    event,
    human,
)
from ..rules import check_rule_durations
from ..score import Scorer
from ..sources import READ_ERRORS, Source, expand, open_source, rotation_key
from ..units import format_duration, parse_duration
from .common import (
    _allow,
    _check_backend,
    _enforce,
    _engine,
    _node,
    _parser,
    _Progress,
    _ruleset,
    _store,
    feed_sources,
    read_failed,
    read_source,
)

BATCH = 10_000                  # offences per transaction of scan --apply (50k held 20 MB more at the peak)


def _collect_less() -> None:
    """A scan keeps a great many container objects alive (the scorer's tracks, the caches,
    the report's clients) and makes few cycles: with the default thresholds the cyclic
    collector walks them all again and again, a fifth of `scan --apply`'s CPU at 100k
    distinct offenders. What is alive at start goes to the permanent generation (workers
    forked later share its pages too), and collections run rarely: every offence brings
    several new objects, most of them gone with their batch (a threshold of 100,000 still
    cost `scan --apply` 13% of its CPU at a million distinct offenders; a whole such run
    leaves a few thousand objects in cycles)."""
    gc.freeze()
    gc.set_threshold(1_000_000, 20, 100)


def cmd_scan(args, cfg: Config) -> int:
    with contextlib.ExitStack() as closing:
        return _scan(args, cfg, closing)


def _scan(args, cfg: Config, closing: contextlib.ExitStack) -> int:
    """`closing`: what must end with the scan however it ends (the store's writer)."""
    if (args.dry_run or args.node or args.reapply) and not args.apply:
        raise UsageError("--dry-run, --node and --reapply go with --apply")
    _collect_less()
    rules = _ruleset(cfg, args.mta)
    since, until = (_time(v, f"--{k}", cfg) if v else None for k, v in (("since", args.since), ("until", args.until)))
    sources = expand(args.paths) + journal_sources(args, since, until)
    if not sources:
        raise UsageError("nothing to scan: give PATH..., --journal, --journal-file FILE or --journal-dir DIR")
    summary = ScanSummary(files=[s.name for s in sources])
    allow = _allow(cfg)
    # Allow-listed clients are never offenders: counted apart, neither in the report nor
    # among the events (the engine of --apply still sees them: its scorer counts them).
    keep = AllowFilter(allow)
    sinks: list[Callable[[list[Offence]], None]] = []
    if args.events:
        write = sys.stdout.write
        sinks.append(lambda offs: write("".join(event(o) + "\n" for o in keep(offs))))
    else:
        sinks.append(lambda offs: summary.add(keep(offs)))
    engine = applied = None
    jobs = args.jobs or available_cores()
    if args.apply:
        check_rule_durations(cfg, rules)
        _check_backend(args, cfg, dry_run=args.dry_run)     # before anything is recorded
        from ..store import BULK_CACHE_MIB
        # Entered before the writer: the scan's lock is let go once the writer has ended.
        locks = closing.enter_context(contextlib.ExitStack())
        writer = None
        if jobs > 1:
            # Forked first: no database connection may cross a fork. The batches are
            # written there while this process scores on.
            writer = closing.enter_context(_writer(args, cfg))
        store = _store(args, cfg, cache_mib=None if writer else BULK_CACHE_MIB)
        node = f"scan:{_node(args, cfg)}"
        # Before the engine reads its scorer's state (recent offences, bans) and the positions
        # are read: what another scan records meanwhile is then counted, and its lines saved.
        lock = store.scan_lock(node, lambda holder: print(f"logban: waiting for {holder} to end", file=sys.stderr,
                                                          flush=True))
        locks.callback(lock.release)
        engine = _engine(args, cfg, store, _allow(cfg, store))
        engine.writer = writer
        if engine.allow.networks == allow.networks:
            # The report's allow-list by address is the scorer's (no live entry by address):
            # the scorer, first to see each offence, tells it whether an address is covered.
            keep.lately = engine.scorer.allowed_lately
        applied = Applied(engine, node, again=args.reapply)
        for src in sources:
            applied.skip(src)
        # First: with [allow] resolve, the engine fills in the verified name of a client about
        # to be banned, and the report then leaves that client out too if the name is allowed.
        # Lines an earlier scan --apply applied are read (the report shows them) but not applied.
        sinks.insert(0, lambda offs: engine.add(applied.new(offs)))
    scorer = engine.scorer if engine is not None else Scorer(cfg.policy, allow)
    parser = _parser(cfg, rules, args.mta, scorer)
    sink = sinks[0] if len(sinks) == 1 else (lambda offs: [f(offs) for f in sinks])
    if since is not None or until is not None:
        lo, hi, inner = -math.inf if since is None else since, math.inf if until is None else until, sink
        sink = lambda offs: inner([o for o in offs if lo <= o.time < hi])
    t0 = time.perf_counter()
    progress = _Progress(not args.no_progress and not args.events)
    streams = _streams(sources)
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(Pool(parser, jobs, lines=engine is not None)) if jobs > 1 else None
        if applied is not None and len(streams) > 1:
            # Decisions depend on what came before in time: the logs are applied as one, by time.
            parsers = [parser] + [_parser(cfg, rules, args.mta, scorer) for _ in streams[1:]]
            summary.failed = _apply_merged(streams, parsers, sink, applied, progress, pool)
            for other in parsers[1:]:
                parser.stats.add(other.stats)
        else:
            summary.failed = feed_sources(sources, parser, sink, progress, read_to=applied and applied.read_to,
                                          pool=pool)
    note = None
    if engine is not None:
        applied.flush()
        if applied.skipped:
            print(f"logban: {applied.skipped:,} lines applied by an earlier scan --apply were not applied again "
                  "(--reapply counts them again); the report still shows what they contain", file=sys.stderr)
        if applied.skipped_entries:
            print(f"logban: {applied.skipped_entries:,} offences of journal entries applied by an earlier scan --apply "
                  "were not applied again (--reapply counts them again); the report still shows them", file=sys.stderr)
        engine.close()
        engine.store.prune(time.time(), cfg.retention, cfg.policy.lookback)
        note = _enforce(args, cfg, engine.store, dry_run=args.dry_run)
    progress.done()
    summary.seconds = time.perf_counter() - t0
    summary.allow_listed = keep.allow_listed
    if args.json:
        rep = as_json(summary, parser.stats, args.top)
        if engine is not None:
            rep["applied"] = applied_json(engine) | {"firewall": note}
        print(json.dumps(rep, indent=2))
    elif not args.events:
        print(human(summary, parser.stats, args.top))
        if engine is not None:
            print("\n" + applied_human(engine) + f"\n  firewall: {note}")
    return 1 if summary.failed else 0


def _writer(args, cfg: Config):
    from ..dbfile import default_url
    from ..engine import write_packed
    from ..store import BULK_CACHE_MIB
    from ..store.writer import Writer
    return Writer(args.db or cfg.database or default_url(), write_packed, cache_mib=BULK_CACHE_MIB)


def _streams(sources: list[Source]) -> list[list[Source]]:
    """The sources as logs: a rotated set is one (its members follow each other in time,
    and a session may run from one into the next), every other file one of its own."""
    groups: dict[tuple, list[Source]] = {}
    for s in sources:
        groups.setdefault(rotation_key(s.path)[:2] if s.path is not None else (s.name,), []).append(s)
    return list(groups.values())


def journal_sources(args, since: float | None, until: float | None) -> list[Source]:
    """--journal, --journal-dir DIR, --journal-file FILE...: each a source of its own, read
    by journalctl with the time range given (the offences are also held to it)."""
    import shutil

    from ..journal import JOURNALCTL, JournalQuery

    def src(name: str, where: tuple[str, ...]) -> Source:
        return Source(name, None, JournalQuery(where, since=since, until=until))
    out = [src("journal", ())] if args.journal else []
    out += [src(f"journal:{os.path.abspath(d)}", ("-D", os.path.abspath(d))) for d in args.journal_dir]
    out += [src(f"journal:{os.path.abspath(f)}", (f"--file={glob.escape(os.path.abspath(f))}",))
            for group in args.journal_file for f in group]
    if out and shutil.which(JOURNALCTL) is None:
        raise UsageError(f"reading the journal needs {JOURNALCTL} (systemd) on PATH")
    return out


def _time(text: str, what: str, cfg: Config) -> float:
    """ISO 8601 (without a zone: in parse.timezone, else this host's) or a duration back from now."""
    from datetime import datetime
    from zoneinfo import ZoneInfo
    try:
        d = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            return time.time() - parse_duration(text, what)
        except UsageError:
            raise UsageError(f"{what}: {text!r} is neither an ISO 8601 time (2026-11-20T08:00) "
                             "nor a duration back from now (24h)") from None
    if d.tzinfo is None and cfg.parse.timezone:
        d = d.replace(tzinfo=ZoneInfo(cfg.parse.timezone))
    return d.timestamp()


@dataclass(frozen=True, slots=True)
class _ReadTo:
    """In the merged stream after a chunk's offences: `src` is applied up to `lines`."""
    time: float
    src: Source
    lines: int


def _apply_merged(streams: list[list[Source]], parsers: list, sink: Callable[[list[Offence]], None],
                  applied: Applied, progress: _Progress, pool: Pool | None = None) -> list[str]:
    """Several logs to the engine in time order (a k-way merge of their offences, each log
    read chunk by chunk); each file's position advances only once its chunk's offences
    are all with the engine."""
    failed: list[str] = []

    def offences(stream: list[Source], parser) -> Iterator:
        last = -math.inf
        for src in stream:
            lines = 0
            try:
                for offs, lines in read_source(src, parser, pool=pool):     # applied before: see Applied.new
                    yield from offs
                    if offs:
                        last = max(last, offs[-1].time)
                    yield _ReadTo(last, src, lines)
                    progress.show(src.name, parser.stats.lines)
            except READ_ERRORS as e:
                read_failed(src, e, lines, failed)
        parser.finish()

    buf: list[Offence] = []
    for item in heapq.merge(*(offences(s, p) for s, p in zip(streams, parsers)), key=lambda x: x.time):
        if type(item) is _ReadTo:
            if buf:
                sink(buf)
                buf = []
            applied.read_to(item.src, item.lines)
        else:
            buf.append(item)
            if len(buf) >= 4096:
                sink(buf)
                buf = []
    if buf:
        sink(buf)
    return failed


class Applied:
    """What `scan --apply` has applied of each file, kept with the offences (one transaction),
    so that applying a file again adds only what is new in it: no offence counted twice."""

    def __init__(self, engine, node: str, *, again: bool) -> None:
        self.engine, self.node, self.again = engine, node, again
        self.saved = engine.store.positions(node)
        self.now: dict[str, dict] = {}          # path -> position read up to in this run
        self.done: dict[str, int] = {}          # file label -> its first lines, applied before
        self.skipped = 0
        self.applied_to: dict[str, int] = {}   # journal source -> time (µs) of the newest entry applied before
        self.skipped_entries = 0
        engine.batch = 1 << 62                  # flushed here, with positions

    def skip(self, src: Source) -> int:
        """Lines of `src` applied before: the same content (by its first bytes, decompressed),
        maybe grown since, under this name or another (logrotate renamed mail.log to
        mail.log.1, then compressed it)."""
        from ..follow import FP_LEN, head_matches
        if src.journal is not None:
            # A journal has no first bytes that stay: what was applied is known by time.
            name = file_label(src.name)                 # as its offences name it
            old = None if self.again else self.saved.get(name)
            self.applied_to[name] = int(old.offset) if old is not None else -1
            self.now[name] = {"node": self.node, "path": name, "dev": 0, "inode": 0, "fingerprint": "",
                              "fp_len": 0, "offset": max(0, self.applied_to[name]), "lines": 0}
            return 0
        if src.path is None:
            return 0
        path = str(src.path.resolve())
        try:
            st = os.stat(src.path)
            with open_source(src) as f:
                head = f.read(FP_LEN)
        except READ_ERRORS:
            return 0
        old = None
        if not self.again:
            same = self.saved.get(path)
            cands = ([same] if same is not None else []) + [p for k, p in self.saved.items() if k != path]
            old = next((c for c in cands if c.lines and head_matches(head, c)), None)
        lines = old.lines if old is not None else 0
        self.now[path] = {"node": self.node, "path": path, "dev": st.st_dev, "inode": st.st_ino,
                          "fingerprint": hashlib.sha256(head).hexdigest(), "fp_len": len(head), "offset": 0,
                          "lines": lines}
        self.skipped += lines
        self.done[file_label(src.name)] = lines       # as its offences name it
        return lines

    def new(self, offs: list[Offence]) -> list[Offence]:
        """The offences of lines (journal entries) not applied before; a journal's position
        moves on to the newest of them, to be saved with them."""
        if self.done:
            offs = [o for o in offs if o.line > self.done.get(o.file, 0)]
        if self.applied_to:
            out = []
            for o in offs:
                before = self.applied_to.get(o.file)
                if before is not None:
                    usec = round(o.time * 1e6)
                    if usec <= before:
                        self.skipped_entries += 1
                        continue
                    pos = self.now[o.file]
                    pos["offset"] = max(pos["offset"], usec)
                out.append(o)
            offs = out
        return offs

    def read_to(self, src: Source, lines: int) -> None:
        pos = self.now.get(str(src.path.resolve())) if src.path is not None else None
        if pos is not None:
            pos["lines"] = max(pos["lines"], lines)
        if self.engine.unsaved() >= BATCH:
            self.flush()

    def flush(self) -> None:
        self.engine.flush(list(self.now.values()))


def applied_json(engine) -> dict:
    es, ss = engine.stats, engine.scorer.stats
    return {"database": engine.store.where(engine.store.url), "dry_run": engine.dry_run, "offences": es.offences,
            "bans": es.bans, "network_bans": es.network_bans, "escalated": es.escalated,
            "already_expired": es.expired_on_arrival, "allowed": ss.allowed, "while_banned": ss.while_banned,
            "evicted": ss.evicted, "released_by_allow_list": es.released_allow, "future": es.future}


def applied_human(engine) -> str:
    a = applied_json(engine)
    out = [f"Recorded in {a['database']}: {a['offences']:,} offences, {a['bans']:,} ban(s)"
           + (" (dry run: never enforced)" if a["dry_run"] else "") + "."]
    extra = [f"{a[k]:,} {what}" for k, what in (
        ("network_bans", "network bans"), ("escalated", "escalated"),
        ("already_expired", "already over by now (recorded as expired)"),
        ("allowed", "offences from allow-listed clients"), ("while_banned", "offences while banned"),
        ("released_by_allow_list", "bans released: allow-listed now"),
        ("future", f"offences stamped more than {format_duration(engine.clock_skew)} ahead of this host's "
                   "clock, left out (parse.clock_skew)")) if a[k]]
    if extra:
        out.append("  " + "; ".join(extra))
    return "\n".join(out)
