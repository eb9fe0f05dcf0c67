"""The `logban` command: arguments in, one of the stages out, exit status as the contract says."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .config import Config, load_config
from .errors import UsageError
from .parse import Clock, Offence, Parser
from .report import ScanSummary, as_json, event, human
from .rules import RuleSet, lint_pattern, load_rules
from .sources import READ_ERRORS, Source, chunks, expand, open_source


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

    tr = sub.add_parser("test-rules", help="show what the rules make of a log file")
    tr.add_argument("file", metavar="FILE")
    tr.add_argument("--rule", metavar="ID", help="only this rule")
    tr.add_argument("--mta", action="append", metavar="PACK", help="read every line with this rule pack")
    tr.add_argument("--samples", type=_count, default=3, metavar="N", help="matched lines shown per rule (default 3)")
    tr.add_argument("--unmatched", type=_count, default=20, metavar="N", help="suspicious unmatched lines shown (default 20)")

    rp = sub.add_parser("rules", help="rule pack tools")
    rsub = rp.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND", parser_class=_Args)
    ck = rsub.add_parser("check", help="validate and lint rule packs and run their tests")
    ck.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="a directory of packs layered over the shipped ones")
    return ap


def _ruleset(cfg: Config, mta: list[str] | None = None, extra: list[Path] = ()) -> RuleSet:
    return load_rules(cfg.rule_dirs + list(extra), disable=cfg.disable,
                      own_names=cfg.parse.own_names, only_packs=tuple(mta or ()))


def _parser(cfg: Config, rules: RuleSet, mta: list[str] | None, **kw) -> Parser:
    return Parser(rules, clock=Clock(cfg.parse.timezone), max_line=cfg.parse.max_line,
                  match_timeout=cfg.parse.match_timeout, any_program=bool(mta), **kw)


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
            sys.stderr.write(f"\r\x1b[Kscanning {name}: {lines:,} lines ({rate:,.0f}/s)")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last != self.start:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def feed_sources(sources: list[Source], parser: Parser, sink: Callable[[list[Offence]], None],
                 progress: _Progress | None = None) -> list[str]:
    """Run every source through the parser in order; names of sources not read to the end."""
    failed = []
    for src in sources:
        parser.file = src.name
        parser.clock.set_reference(src.mtime() or time.time())
        lines = 0
        try:
            stream = open_source(src)
            try:
                for chunk in chunks(stream, parser.max_line):
                    before = parser.stats.lines
                    offs = parser.feed(chunk, lines)
                    lines += parser.stats.lines - before
                    if offs:
                        sink(offs)
                    if progress:
                        progress.show(src.name, parser.stats.lines)
            finally:
                if src.path is not None:
                    stream.close()
        except READ_ERRORS as e:
            print(f"logban: {src.name}: {e} (read {lines:,} lines)", file=sys.stderr)
            failed.append(src.name)
    parser.finish()
    return failed


def cmd_scan(args, cfg: Config) -> int:
    rules = _ruleset(cfg, args.mta)
    parser = _parser(cfg, rules, args.mta)
    sources = expand(args.paths)
    summary = ScanSummary(files=[s.name for s in sources])
    if args.events:
        write = sys.stdout.write

        def sink(offs: list[Offence]) -> None:
            write("".join(event(o) + "\n" for o in offs))
    else:
        sink = summary.add
    t0 = time.perf_counter()
    progress = _Progress(not args.no_progress and not args.events)
    summary.failed = feed_sources(sources, parser, sink, progress)
    progress.done()
    summary.seconds = time.perf_counter() - t0
    if args.json:
        import json
        print(json.dumps(as_json(summary, parser.stats, args.top), indent=2))
    elif not args.events:
        print(human(summary, parser.stats, args.top))
    return 1 if summary.failed else 0


def cmd_test_rules(args, cfg: Config) -> int:
    rules = _ruleset(cfg, args.mta)
    if args.rule:
        r = rules.by_id(args.rule)
        if r is None:
            raise UsageError(f"--rule: no active rule with id {args.rule!r}")
        rules = RuleSet([r])
    parser = _parser(cfg, rules, args.mta, collect_suspicious=args.unmatched)
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
            print(f"      {o.line:>7}: {o.ip:<15} {o.raw.decode('utf-8', 'replace')[:200]}")
    if rules.inactive:
        print("\nInactive (need config): " + ", ".join(rules.inactive))
    if parser.suspicious:
        print(f"\nSuspicious lines no rule took (first {len(parser.suspicious)}):")
        for _, lineno, raw in parser.suspicious:
            print(f"  {lineno:>7}: {raw.decode('utf-8', 'replace')[:300]}")
    return 1 if failed else 0


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
        print(p, file=sys.stderr)
    packs = rules.packs
    print(f"{len(packs)} pack(s) ({', '.join(packs)}), {len(rules.rules)} rules, {n_tests} tests: "
          + (f"{len(problems)} problem(s)" if problems else "OK"))
    if rules.inactive:
        print("inactive until configured: " + ", ".join(rules.inactive))
    return 2 if problems else 0


COMMANDS = {"scan": cmd_scan, "test-rules": cmd_test_rules, "rules": cmd_rules_check}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        cfg = load_config(args.config)
        return COMMANDS[args.command](args, cfg)
    except UsageError as e:
        print(f"logban: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout went away (`logban scan --events ... | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:                      # noqa: BLE001 - one line, no traceback
        if os.environ.get("LOGBAN_DEBUG"):
            raise
        print(f"logban: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
