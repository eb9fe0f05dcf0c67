"""The `logban` command: arguments in, one of the stages out, exit status as the contract says."""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .allow import AllowList, Resolver, ban_target, parse_network
from .config import Config, load_config
from .errors import FirewallError, StoreError, UsageError
from .parse import Clock, Offence, Parser, canonical_ip, iso
from .report import (AllowFilter, ScanSummary, as_json, ban_json, bans_table, event, firewall_human, human, safe,
                     show_human, stats_human, stats_json)
from .rules import RuleSet, lint_notes, lint_pattern, load_rules
from .score import Decision, Scorer
from .sources import READ_ERRORS, Source, chunks, expand, open_source
from .units import format_duration, parse_duration

BATCH = 50_000                  # offences per transaction of scan --apply


class _Args(argparse.ArgumentParser):
    def error(self, message: str) -> None:          # one line, exit 2
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    ap = _Args(prog="logban", description="Ban hostile mail clients found in Postfix, sendmail and qmail logs.")
    ap.add_argument("--version", action="version", version=f"logban {__version__}")
    ap.add_argument("-c", "--config", type=Path, help="TOML config file (default: /etc/logban/logban.toml if present)")
    ap.add_argument("--db", help="database URL (SQLAlchemy; default: SQLite)")
    ap.add_argument("--backend", choices=("nftables", "ipset", "iptables", "none"), help="firewall backend")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Args)

    sc = sub.add_parser("scan", help="scan log files once and report offenders")
    sc.add_argument("paths", nargs="+", metavar="PATH", help="file, directory, rotated set member, or - for stdin")
    sc.add_argument("--mta", action="append", metavar="PACK", help="read every line with this rule pack (postfix, sendmail, qmail)")
    out = sc.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON report")
    out.add_argument("--events", action="store_true", help="one JSON object per offence")
    sc.add_argument("--top", type=_count, default=10, metavar="N", help="offenders listed (default 10)")
    sc.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    sc.add_argument("--apply", action="store_true",
                    help="score the offences by their log time and record offences and bans in the store")
    sc.add_argument("--dry-run", action="store_true", help="with --apply: bans are recorded as dry-run, never enforced")
    sc.add_argument("--reapply", action="store_true",
                    help="with --apply: also the lines an earlier scan --apply applied (they are counted again)")
    sc.add_argument("--node", metavar="NAME", help="this server's name in a shared store (default: host name)")

    ls = sub.add_parser("list", help="active bans (--all: history too)")
    ls.add_argument("--all", action="store_true", help="every ban, released ones too")
    ls.add_argument("--json", action="store_true", help="a JSON array")

    bn = sub.add_parser("ban", help="ban an address or network by hand")
    bn.add_argument("target", metavar="TARGET", help="address or CIDR")
    bn.add_argument("--for", dest="duration", metavar="DURATION",
                    help="how long (90s, 10m, 12h, 3d, 2w, or permanent; default: ban.durations.manual)")
    bn.add_argument("--reason", default="", metavar="TEXT", help="why, for the record")
    bn.add_argument("--dry-run", action="store_true", help="record as dry-run, never enforce")

    ub = sub.add_parser("unban", help="lift bans and clear the score of addresses or networks")
    ub.add_argument("targets", nargs="+", metavar="TARGET", help="address or CIDR (a network ban covering it is lifted)")

    sh = sub.add_parser("show", help="what logban knows about an address or network: score, offences, bans, why")
    sh.add_argument("target", metavar="TARGET")
    sh.add_argument("--json", action="store_true")
    sh.add_argument("--offences", type=_count, default=20, metavar="N", help="recent offences shown (default 20)")

    st = sub.add_parser("stats", help="offences and bans by kind, top offenders")
    st.add_argument("--since", metavar="DURATION", help="only the last DURATION (like 24h, 7d)")
    st.add_argument("--json", action="store_true")
    st.add_argument("--top", type=_count, default=10, metavar="N", help="offenders listed (default 10)")

    tr = sub.add_parser("test-rules", help="show what the rules make of a log file")
    tr.add_argument("file", metavar="FILE")
    tr.add_argument("--rule", metavar="ID", help="only this rule")
    tr.add_argument("--mta", action="append", metavar="PACK", help="read every line with this rule pack")
    tr.add_argument("--samples", type=_count, default=3, metavar="N", help="matched lines shown per rule (default 3)")
    tr.add_argument("--unmatched", type=_count, default=20, metavar="N", help="suspicious unmatched lines shown (default 20)")

    rn = sub.add_parser("run", help="the daemon: follow logs, ban, release, for as long as it runs")
    rn.add_argument("--follow", action="append", type=Path, default=[], metavar="PATH",
                    help="a log to follow (repeatable; adds to [[follow]] in the config)")
    rn.add_argument("--dry-run", action="store_true", help="decide and record, never touch the firewall")
    rn.add_argument("--node", metavar="NAME", help="this server's name in a shared store (default: host name)")
    sub.add_parser("reload", help="make the running daemon reload its config and rule packs (SIGHUP)")

    ex = sub.add_parser("export", help="the active bans as a DNSBL zone or an MTA access map")
    ex.add_argument("--format", required=True, choices=("rbldnsd", "rbldnsd6", "postfix", "postfix-hash",
                                                        "sendmail", "plain", "json"))
    ex.add_argument("-o", "--output", type=Path, metavar="FILE",
                    help="replace FILE atomically (and build the map: postmap, makemap) instead of printing")
    ex.add_argument("--action", default="REJECT", help='postfix/sendmail: REJECT (default) or a code like "554 5.7.1"')

    fw = sub.add_parser("firewall", help="the kernel firewall: status, sync with the store, teardown")
    fsub = fw.add_subparsers(dest="firewall_command", required=True, metavar="SUBCOMMAND", parser_class=_Args)
    fs = fsub.add_parser("status", help="backend, table, sets, chains, element counts and drift from the store")
    fs.add_argument("--json", action="store_true")
    fsub.add_parser("sync", help="make the kernel hold exactly the active bans (re-adds, removes, refreshes)")
    fsub.add_parser("teardown", help="remove everything logban created in the firewall (bans stay in the store)")

    rp = sub.add_parser("rules", help="rule pack tools")
    rsub = rp.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND", parser_class=_Args)
    ck = rsub.add_parser("check", help="validate and lint rule packs and run their tests")
    ck.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="a directory of packs layered over the shipped ones")
    return ap


def _ruleset(cfg: Config, mta: list[str] | None = None, extra: list[Path] = ()) -> RuleSet:
    return load_rules(cfg.rule_dirs + list(extra), disable=cfg.disable,
                      own_names=cfg.parse.own_names, only_packs=tuple(mta or ()))


def _parser(cfg: Config, rules: RuleSet, mta: list[str] | None, scorer: Scorer, **kw) -> Parser:
    """Rate rules count per the scorer's target, never for an allow-listed client."""
    return Parser(rules, clock=Clock(cfg.parse.timezone), max_line=cfg.parse.max_line,
                  match_timeout=cfg.parse.match_timeout, any_program=bool(mta),
                  rate_key=scorer.rate_key, **kw)


class _Progress:
    """A status line on stderr while a long scan runs, only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def show(self, name: str, lines: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last > 0.5:
            self.last = now
            rate = lines / max(now - self.start, 1e-9)
            sys.stderr.write(f"\r\x1b[Kscanning {safe(name)}: {lines:,} lines ({rate:,.0f}/s)")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last != self.start:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _skip_lines(chunk: bytes, n: int) -> tuple[bytes, int]:
    """`chunk` without its first `n` lines, and how many it had of them."""
    pos = 0
    for i in range(n):
        nl = chunk.find(b"\n", pos)
        if nl < 0:
            return b"", i + (1 if pos < len(chunk) else 0)
        pos = nl + 1
    return chunk[pos:], n


def feed_sources(sources: list[Source], parser: Parser, sink: Callable[[list[Offence]], None],
                 progress: _Progress | None = None, *, skip: Callable[[Source], int] | None = None,
                 read_to: Callable[[Source, int], None] | None = None) -> list[str]:
    """Run every source through the parser in order; names of sources not read to the end.
    `skip(src)`: lines of it applied before, not read again; `read_to(src, lines)`: after each chunk."""
    failed = []
    for src in sources:
        parser.file = src.name
        parser.clock.set_reference(src.mtime() or time.time())
        lines = 0
        left = skip(src) if skip else 0
        try:
            stream = open_source(src)
            try:
                for chunk in chunks(stream, parser.max_line):
                    if left:
                        chunk, dropped = _skip_lines(chunk, left)
                        left -= dropped
                        lines += dropped
                        if not chunk:
                            continue
                    before = parser.stats.lines
                    offs = parser.feed(chunk, lines)
                    lines += parser.stats.lines - before
                    if offs:
                        sink(offs)
                    if read_to:
                        read_to(src, lines)
                    if progress:
                        progress.show(src.name, parser.stats.lines)
            finally:
                if src.path is not None:
                    stream.close()
        except READ_ERRORS as e:
            print(safe(f"logban: {src.name}: {e} (read {lines:,} lines)"), file=sys.stderr)
            failed.append(src.name)
    parser.finish()
    return failed


def _store(args, cfg: Config):
    from .store import Store        # SQLAlchemy takes a third of a second to import: only when needed
    return Store(args.db or cfg.database)


def _firewall(args, cfg: Config, store, *, dry_run: bool = False):
    from .firewall import Firewall, choose
    return Firewall(choose(cfg.firewall, backend=args.backend, dry_run=cfg.dry_run or dry_run), store, _allow(cfg))


def _enforce(args, cfg: Config, store, *, dry_run: bool = False) -> str:
    """After the store changed: the kernel follows. Returns a note for the user."""
    fw = _firewall(args, cfg, store, dry_run=dry_run)
    if not fw.enforcing:
        return "not enforced: firewall backend none" + (" (dry run)" if cfg.dry_run or dry_run else
                                                         " (not root)" if os.geteuid() else "")
    try:
        p = fw.sync()
    except FirewallError as e:
        raise FirewallError(f"{e} (the store has the change; `logban firewall sync` enforces it)") from None
    return f"{fw.backend.name}: {len(p.add)} added, {len(p.remove)} removed"


def _node(args, cfg: Config) -> str:
    return getattr(args, "node", None) or cfg.node or socket.gethostname()


def _check_rule_durations(cfg: Config, rules: RuleSet) -> None:
    for rid in cfg.policy.rule_durations:
        if rules.by_id(rid) is None:
            raise UsageError(f"{cfg.path}: ban.rules: no active rule with id {rid!r}")


def _allow(cfg: Config) -> AllowList:
    """The config's allow-list, with loopback and this host's own addresses."""
    return AllowList(cfg.allow.addresses, cfg.allow.hostnames)


def _engine(args, cfg: Config, store, allow: AllowList | None = None):
    from .engine import Engine
    allow = allow or _allow(cfg)
    resolver = Resolver(cfg.allow.resolve_timeout) if cfg.allow.resolve else None
    return Engine(store, cfg.policy, allow, node=_node(args, cfg), dry_run=cfg.dry_run or args.dry_run,
                  resolver=resolver)


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
        engine.store.prune(time.time(), cfg.retention)
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
        from .follow import fingerprint, head_matches
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


def parse_target(text: str, what: str = "target") -> str:
    """An address or network as the store spells it; a malformed one is the user's mistake."""
    bad = f"{what} {text!r}: not an address or network (like 192.0.2.7, 198.51.100.0/24, 2001:db8::/64)"
    if "/" not in text:
        ip = canonical_ip(text.strip())
        if ip is None:
            raise UsageError(bad)
        return ip
    try:
        net = parse_network(text, strict=False)
    except ValueError:
        raise UsageError(bad) from None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _related(target: str, candidates) -> list[str]:
    """Of `candidates`, those that cover `target` or lie inside it."""
    net = ipaddress.ip_network(target)
    out = []
    for c in candidates:
        try:        # a bad row in the store (written by anything) must not stop unban or show
            n = ipaddress.ip_network(c, strict=False)
        except (ValueError, TypeError):
            if c == target:
                out.append(c)
            continue
        if n.version == net.version and (net.subnet_of(n) or n.subnet_of(net)):
            out.append(c)
    return out


def cmd_list(args, cfg: Config) -> int:
    store = _store(args, cfg)
    now = time.time()
    bans = store.bans() if args.all else store.active_bans(now)
    if args.json:
        print(json.dumps([ban_json(b) for b in bans], indent=2))
    else:
        print(bans_table(bans, now, args.all))
    return 0


def cmd_ban(args, cfg: Config) -> int:
    try:        # never a target that cuts the host off (loopback, multicast, ...), nor a sloppy spelling
        target = ban_target(args.target)
    except ValueError as e:
        raise UsageError(f"ban {args.target!r}: not a ban target: {e}") from None
    if args.duration is None:
        duration = cfg.policy.base_duration("manual")
    elif args.duration.strip() == "permanent":
        duration = None
    else:
        duration = parse_duration(args.duration, "--for")
        if duration <= 0:
            raise UsageError(f"--for: {args.duration!r} must be above zero")
    allow = _allow(cfg)
    if allow.target_allowed(target):
        raise UsageError(f"{target} is allow-listed (allow.addresses, loopback or this host's own address): not banned")
    store = _store(args, cfg)
    _, refused = allow.screen([Decision(target, "manual", "", 0.0, 0.0, None, 1, False, "")], store.partners(allow))
    if refused:
        raise UsageError(f"{target}: not banned: {refused[0][1]}")
    now = time.time()
    scorer = Scorer(cfg.policy, allow)
    scorer.history = store.history()
    _, count, _ = scorer.duration(target, "manual", "", now)
    reason = args.reason or "banned by hand"
    d = Decision(target, "manual", "", 0.0, now, duration, count, False, reason)
    store.ban(d, node=_node(args, cfg), dry_run=cfg.dry_run or args.dry_run, now=now)
    print(f"banned {target} for {format_duration(duration)}" + (" (dry run)" if cfg.dry_run or args.dry_run else ""))
    print(_enforce(args, cfg, store, dry_run=args.dry_run))
    return 0


def cmd_unban(args, cfg: Config) -> int:
    targets = [parse_target(t) for t in args.targets]      # all checked before anything changes
    store = _store(args, cfg)
    now = time.time()
    active = {b.target for b in store.active_bans(now)}
    policy = cfg.policy
    for t in targets:
        hit = _related(t, active)
        scored = Scorer(policy).target_of(t)[0] if "/" not in t else t
        done = store.release(dict.fromkeys([*hit, t, scored]), "unban", now)
        lifted = [x for x in hit if done.get(x)]
        if lifted:
            print(f"unbanned {t}: lifted {', '.join(lifted)}; score cleared")
        else:
            print(f"{t}: not banned; score cleared")
    print(_enforce(args, cfg, store))
    return 0


def cmd_show(args, cfg: Config) -> int:
    target = parse_target(args.target)
    store = _store(args, cfg)
    now = time.time()
    scored = Scorer(cfg.policy).target_of(target)[0] if "/" not in target else target
    every = store.bans()
    related = set(_related(target, {b.target for b in every}))
    bans = [b for b in every if b.target in related]
    from .store import kind_names
    off = store.offender(scored)
    ips = [target] if "/" not in target else []
    total, recent = store.offences_of([scored, target], ips, args.offences)
    active = [b for b in bans if b.released is None and (b.expires is None or b.expires > now)]
    data = {
        "target": target, "scored_as": scored, "banned": bool(active),
        "offender": None if off is None else {
            "score": off.score, "score_time": iso(off.score_time) if off.score_time else None,
            "first_seen": iso(off.first_seen), "last_seen": iso(off.last_seen), "offences": off.offences,
            "kinds": kind_names(off.kinds), "name": off.name,
            "reset_at": iso(off.reset_at) if off.reset_at else None},
        "bans": [ban_json(b) for b in bans],
        "offences": {"total": total, "recent": [
            {"time": iso(r.time), "ip": r.ip, "mta": r.mta, "rule": r.rule, "kind": r.kind, "score": r.score,
             "node": r.node, "file": r.file, "line": r.line, "text": r.text} for r in recent]},
        "threshold": cfg.policy.threshold,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(show_human(data, bans, now))
    return 0


def cmd_test_rules(args, cfg: Config) -> int:
    rules = _ruleset(cfg, args.mta)
    if args.rule:
        r = rules.by_id(args.rule)
        if r is None:
            raise UsageError(f"--rule: no active rule with id {args.rule!r}")
        rules = RuleSet([r])
    parser = _parser(cfg, rules, args.mta, Scorer(cfg.policy, _allow(cfg)), collect_suspicious=args.unmatched)
    samples: dict[str, list[Offence]] = {}

    def sink(offs: list[Offence]) -> None:
        for o in offs:
            got = samples.setdefault(o.rule, [])
            if len(got) < args.samples:
                got.append(o)

    failed = feed_sources(expand([args.file]), parser, sink)
    st = parser.stats
    print(f"{st.lines:,} lines, {st.candidates:,} with a rule hint, {st.offences:,} offences.")
    print("\nHits per rule:")
    w = max(len(r.id) for r in rules.rules)
    for r in rules.rules:
        what = "link" if r.link else r.kind
        print(f"  {r.id:<{w}}  {st.hits.get(r.id, 0):>8,}  {what}")
        for o in samples.get(r.id, []):
            print(f"      {o.line:>7}: {o.ip:<15} {safe(_text(o.raw, 200))}")
    if rules.inactive:
        print("\nInactive (need config): " + safe(", ".join(rules.inactive)))
    if parser.suspicious:
        print(f"\nSuspicious lines no rule took (first {len(parser.suspicious)}):")
        for _, lineno, raw in parser.suspicious:
            print(f"  {lineno:>7}: {safe(_text(raw, 300))}")
    return 1 if failed else 0


def _text(raw: bytes, n: int) -> str:
    """The first `n` characters of a log line (invalid UTF-8 as \\xNN escapes)."""
    return raw.decode("utf-8", "backslashreplace")[:n]


def _top_offenders(store, allow: AllowList, policy, since: float | None, now: float, top: int) -> dict:
    """The store's statistics with `top` holding only real offenders: the store records the
    offences of allow-listed clients too (the scorer ignores them), so they are taken out here,
    asking the store for more rows until `top` are left. The allow-listed ones that would have
    ranked are listed under `ignored`."""
    scorer = Scorer(policy)

    def allowed(ip: str) -> bool:
        try:
            if allow.address_allowed(ip):
                return True
        except ValueError:
            return False
        if not allow.names:
            return False
        off = store.offender(scorer.target_of(ip)[0])
        return off is not None and allow.name_allowed(off.name)

    limit = top
    while True:
        s = store.stats(since, now, limit)
        rows = s["top"]
        left_out = [t for t in rows if allowed(t["ip"])]
        if len(rows) - len(left_out) >= top or len(rows) < limit:
            break
        limit = max(2 * limit, top + len(left_out) + 10)
    kept = [t for t in rows if t not in left_out][:top]
    last = kept[-1]["count"] if len(kept) == top and kept else -1
    s["top"] = kept
    s["ignored"] = {"allow_listed_top": [{"ip": t["ip"], "count": t["count"]} for t in left_out
                                         if t["count"] >= last]}
    return s


def cmd_stats(args, cfg: Config) -> int:
    since = parse_duration(args.since, "--since") if args.since else None
    now = time.time()
    s = _top_offenders(_store(args, cfg), _allow(cfg), cfg.policy, now - since if since is not None else None,
                       now, args.top)
    if args.json:
        print(json.dumps(stats_json(s), indent=2))
    else:
        print(stats_human(s, args.since))
    return 0


def check_rules(rules: RuleSet) -> tuple[list[str], int]:
    """Lint every rule and run its tests: (problems, tests run)."""
    problems, n_tests = [], 0
    ref = Clock(reference=time.mktime((2026, 12, 31, 0, 0, 0, 0, 0, -1)))
    for r in rules.rules:
        why = lint_pattern(r.regex.pattern.decode())
        if why:
            problems.append(f"{r.source}: rule {r.id}: {why}")
        parser = Parser(RuleSet([r]), clock=ref)
        for t in r.tests:
            n_tests += 1
            got = [(ip, key) for _, ip, key in parser.try_line(t.line.encode())]
            want = (t.ip, t.key)
            if t.ip is None and t.key is None:
                if got:
                    problems.append(f"{r.source}: rule {r.id}: matches a test line it must not match: {t.line[:120]}")
            elif not any((t.ip is None or ip == t.ip) and (t.key is None or key == t.key) for ip, key in got):
                seen = f"took {got}" if got else "no match"
                problems.append(f"{r.source}: rule {r.id}: test wants {want}, {seen}: {t.line[:120]}")
    return problems, n_tests


def cmd_rules_check(args, cfg: Config) -> int:
    rules = _ruleset(cfg, extra=[args.dir] if args.dir else [])
    problems, n_tests = check_rules(rules)
    for p in problems:
        print(safe(p), file=sys.stderr)
    packs = rules.packs
    print(f"{len(packs)} pack(s) ({', '.join(packs)}), {len(rules.rules)} rules, {n_tests} tests: "
          + (f"{len(problems)} problem(s)" if problems else "OK"))
    if rules.inactive:
        print("inactive until configured: " + ", ".join(rules.inactive))
    tail = [r.id for r in rules.rules if lint_notes(r)]
    if tail:
        print(safe(f"note: {len(tail)} rule(s) read the line end, so lines cut at max_line are not given "
                   f"to them: {', '.join(tail)}"))
    return 2 if problems else 0


def cmd_run(args, cfg: Config) -> int:
    import logging
    from .daemon import Daemon, Options
    from .daemon import SafeFormatter
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s logban: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    follow = [p.resolve() if not p.is_absolute() else p for p in args.follow]
    d = Daemon(cfg, Options(args.config, args.db, args.backend, _node(args, cfg), args.dry_run, follow))
    return d.run()


def cmd_reload(args, cfg: Config) -> int:
    from .daemon import default_pid_file, send_reload
    pid = send_reload(cfg.daemon.pid_file or default_pid_file())
    print(f"asked logban (pid {pid}) to reload")
    return 0


def cmd_export(args, cfg: Config) -> int:
    from .export import ExportOptions, render, write
    store = _store(args, cfg)
    o = ExportOptions(args.format, args.output, action=args.action)
    allow = _allow(cfg)
    bans, refused = allow.screen((b for b in store.active_bans(time.time()) if not b.dry_run),
                                 store.partners(allow))
    for target, why in refused:
        print(safe(f"logban: left out {target!r}: {why}"), file=sys.stderr)
    content = render(o, bans)
    if o.path is None:
        sys.stdout.write(content)
    elif write(o, content):
        print(safe(f"{o.path}: {len(bans):,} bans written"), file=sys.stderr)
    else:
        print(safe(f"{o.path}: unchanged"), file=sys.stderr)
    return 0


def cmd_firewall(args, cfg: Config) -> int:
    store = _store(args, cfg)
    fw = _firewall(args, cfg, store)
    b = fw.backend
    if args.firewall_command == "teardown":
        b.teardown()
        print(f"{b.name}: removed what logban created" + ("" if fw.enforcing else " (nothing: no firewall backend)"))
        return 0
    if args.firewall_command == "sync":
        if not fw.enforcing:
            raise UsageError("firewall sync: no firewall backend (not root, dry_run, or backend none)")
        p = fw.sync()
        print(f"{b.name}: {len(p.missing)} missing added, {len(p.unknown)} unknown removed, "
              f"{len(p.stale)} timeouts refreshed")
        for target, why in fw.refused:
            print(safe(f"logban: not enforced here: ban of {target!r}: {why}"), file=sys.stderr)
        return 0
    now = time.time()
    active = store.active_bans(now)
    status = {"backend": b.name, "enforcing": fw.enforcing, "kernel_timeouts": b.kernel_timeouts,
              "bans_active": len(active), "bans_dry_run": sum(1 for x in active if x.dry_run)}
    if fw.enforcing:
        have = b.elements()
        p = fw.diff(now, have)
        status |= b.describe() | {
            "elements": {"ipv4": sum(1 for t in have if ":" not in t), "ipv6": sum(1 for t in have if ":" in t)},
            "drift": {"missing": len(p.missing), "unknown": len(p.unknown), "stale": len(p.stale)},
            "drift_sample": {"missing": p.missing[:10], "unknown": p.unknown[:10], "stale": p.stale[:10]},
            # store bans this node will not enforce (allow-listed here, or no valid target)
            "refused": len(fw.refused), "refused_sample": [{"target": t, "why": w} for t, w in fw.refused[:10]]}
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(firewall_human(status))
    return 0


COMMANDS = {"scan": cmd_scan, "firewall": cmd_firewall, "export": cmd_export, "run": cmd_run, "reload": cmd_reload, "test-rules": cmd_test_rules, "rules": cmd_rules_check, "list": cmd_list,
            "ban": cmd_ban, "unban": cmd_unban, "show": cmd_show, "stats": cmd_stats}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        cfg = load_config(args.config)
        return COMMANDS[args.command](args, cfg)
    except UsageError as e:
        print(safe(f"logban: {e}"), file=sys.stderr)
        return e.exit_status
    except (StoreError, FirewallError) as e:
        print(safe(f"logban: {e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout went away (`logban scan --events ... | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:                      # noqa: BLE001 - one line, no traceback
        if os.environ.get("LOGBAN_DEBUG"):
            raise
        print(safe(f"logban: error: {type(e).__name__}: {e}"), file=sys.stderr)
        return 1
