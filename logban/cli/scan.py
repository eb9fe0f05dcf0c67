"""`logban scan`: read logs once, report, and with --apply record what they show."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from ..config import Config
from ..errors import UsageError
from ..parse import Offence
from ..report import (
    AllowFilter,
    ScanSummary,
    as_json,
    event,
    human,
)
from ..score import Scorer
from ..sources import Source, expand
from .common import (
    _allow,
    _check_rule_durations,
    _enforce,
    _engine,
    _node,
    _parser,
    _Progress,
    _ruleset,
    _store,
    feed_sources,
)

BATCH = 50_000                  # offences per transaction of scan --apply


def cmd_scan(args, cfg: Config) -> int:
    if (args.dry_run or args.node or args.reapply) and not args.apply:
        raise UsageError("--dry-run, --node and --reapply go with --apply")
    rules = _ruleset(cfg, args.mta)
    sources = expand(args.paths)
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
    if args.apply:
        _check_rule_durations(cfg, rules)
        engine = _engine(args, cfg, _store(args, cfg), allow)
        applied = Applied(engine, f"scan:{_node(args, cfg)}", again=args.reapply)
        # First: with [allow] resolve, the engine fills in the verified name of a client about
        # to be banned, and the report then leaves that client out too if the name is allowed.
        sinks.insert(0, engine.add)
    parser = _parser(cfg, rules, args.mta, engine.scorer if engine is not None else Scorer(cfg.policy, allow))
    sink = sinks[0] if len(sinks) == 1 else (lambda offs: [f(offs) for f in sinks])
    t0 = time.perf_counter()
    progress = _Progress(not args.no_progress and not args.events)
    summary.failed = feed_sources(sources, parser, sink, progress, skip=applied and applied.skip,
                                  read_to=applied and applied.read_to)
    note = None
    if engine is not None:
        applied.flush()
        if applied.skipped:
            print(f"logban: {applied.skipped:,} lines applied by an earlier scan --apply were skipped "
                  "(--reapply counts them again)", file=sys.stderr)
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


class Applied:
    """What `scan --apply` has applied of each file, kept with the offences (one transaction),
    so that applying a file again adds only what is new in it: no offence counted twice."""

    def __init__(self, engine, node: str, *, again: bool) -> None:
        self.engine, self.node, self.again = engine, node, again
        self.saved = engine.store.positions(node)
        self.now: dict[str, dict] = {}          # path -> position read up to in this run
        self.skipped = 0
        engine.batch = 1 << 62                  # flushed here, with positions

    def skip(self, src: Source) -> int:
        """Lines of `src` applied before: the same file (by its first bytes), maybe grown since."""
        from ..follow import fingerprint, head_matches
        if src.path is None:
            return 0
        path = str(src.path.resolve())
        old = None if self.again else self.saved.get(path)
        try:
            with open(src.path, "rb") as f:
                st = os.fstat(f.fileno())
                fp, n = fingerprint(f)
                done = old is not None and head_matches(os.pread(f.fileno(), old.fp_len, 0), old)
        except OSError:
            return 0
        lines = old.lines if done else 0
        self.now[path] = {"node": self.node, "path": path, "dev": st.st_dev, "inode": st.st_ino,
                          "fingerprint": fp, "fp_len": n, "offset": 0, "lines": lines}
        self.skipped += lines
        return lines

    def read_to(self, src: Source, lines: int) -> None:
        if src.path is None:
            return
        pos = self.now.get(str(src.path.resolve()))
        if pos is not None:
            pos["lines"] = max(pos["lines"], lines)
        if self.engine.unsaved() >= BATCH:
            self.flush()

    def flush(self) -> None:
        self.engine.flush(list(self.now.values()))


def applied_json(engine) -> dict:
    es, ss = engine.stats, engine.scorer.stats
    return {"database": engine.store.url, "dry_run": engine.dry_run, "offences": es.offences,
            "bans": es.bans, "network_bans": es.network_bans, "escalated": es.escalated,
            "already_expired": es.expired_on_arrival, "allowed": ss.allowed, "while_banned": ss.while_banned,
            "evicted": ss.evicted, "released_by_allow_list": es.released_allow}


def applied_human(engine) -> str:
    a = applied_json(engine)
    out = [f"Recorded in {engine.store.where(a['database'])}: {a['offences']:,} offences, {a['bans']:,} ban(s)"
           + (" (dry run: never enforced)" if a["dry_run"] else "") + "."]
    extra = [f"{a[k]:,} {what}" for k, what in (
        ("network_bans", "network bans"), ("escalated", "escalated"),
        ("already_expired", "already over by now (recorded as expired)"),
        ("allowed", "offences from allow-listed clients"), ("while_banned", "offences while banned"),
        ("released_by_allow_list", "bans released: allow-listed now")) if a[k]]
    if extra:
        out.append("  " + "; ".join(extra))
    return "\n".join(out)
