"""`logban test-rules` and `rules check`: rule packs against logs, and linted."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from ..config import Config
from ..errors import UsageError
from ..explain import explain
from ..parse import Clock, Offence, Parser
from ..patterns import lint_notes, lint_pattern
from ..report import (
    safe,
)
from ..rules import RuleSet
from ..score import Scorer
from ..sources import expand
from .common import _allow, _parser, _ruleset, _text, feed_sources


def cmd_test_rules(args, cfg: Config) -> int:
    if (args.file is None) == (not args.line):
        raise UsageError("test-rules: give a FILE or --line TEXT (not both)")
    rules = _ruleset(cfg, args.mta)
    if args.rule:
        r = rules.by_id(args.rule)
        if r is None:
            raise UsageError(f"--rule: no active rule with id {args.rule!r}")
        rules = RuleSet([r])
    parser = _parser(cfg, rules, args.mta, Scorer(cfg.policy, _allow(cfg)), collect_suspicious=args.unmatched)
    if args.line:
        return _test_lines(args, parser)
    samples: dict[str, list[Offence]] = {}

    def sink(offs: list[Offence]) -> None:
        for o in offs:
            got = samples.setdefault(o.rule, [])
            if len(got) < args.samples:
                got.append(o)

    failed = feed_sources(expand([args.file]), parser, sink)
    st = parser.stats
    if args.json:
        print(json.dumps({
            "lines": st.lines, "candidates": st.candidates, "offences": st.offences, "failed": failed,
            "rules": [{"id": r.id, "kind": None if r.link else r.kind, "link": bool(r.link),
                       "hits": st.hits.get(r.id, 0),
                       "samples": [{"line": o.line, "ip": o.ip, "text": _text(o.raw, 200)}
                                   for o in samples.get(r.id, [])]} for r in rules.rules],
            "inactive": list(rules.inactive),
            "suspicious": [{"line": n, "text": _text(raw, 300)} for _, n, raw in parser.suspicious]}, indent=2))
        return 1 if failed else 0
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


def _given_lines(texts: list[str]) -> list[bytes]:
    out: list[bytes] = []
    for t in texts:
        if t == "-":
            out += sys.stdin.buffer.read().splitlines()
        else:
            out += t.encode("utf-8", "surrogateescape").splitlines() or [b""]
    return out


def _who(t) -> str:
    if t.ip:
        return f"client {t.ip}"
    return "no client address" if t.key is None else f"client from key {safe(repr(t.key))}"


def _test_lines(args, parser: Parser) -> int:
    verdicts = [explain(parser, line) for line in _given_lines(args.line)]
    if args.json:
        print(json.dumps([asdict(v) for v in verdicts], indent=2))
        return 0
    for n, v in enumerate(verdicts, 1):
        print(f"line {n}: {safe(_text(v.line.encode(), 200))}")
        if v.program is None:
            print("  no rule: the header (syslog stamp, host, program, or a multilog stamp) is not understood")
        elif v.taken:
            t = v.taken
            who = _who(t)
            print(f"  taken by {t.rule}: {who}, kind {t.kind}, score {t.score:g}")
            if t.note:
                print(f"    note: {t.note}")
        else:
            print(f"  no rule took it (program {v.program or '(none)'!r})")
        for t in v.also:
            what = "link" if not t.kind else f"kind {t.kind}, score {t.score:g} (lower or later: not counted)"
            print(f"  also matched {t.rule}: {_who(t)}, {what}")
        for c in v.close:
            print(f"  close: {c.rule}: {safe(c.why)}")
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
    tail = [r.id for r in rules.rules if lint_notes(r)]
    if args.json:
        print(json.dumps({"packs": list(rules.packs), "rules": len(rules.rules), "tests": n_tests,
                          "problems": problems, "ok": not problems, "inactive": list(rules.inactive),
                          "reads_line_end": tail}, indent=2))
        return 2 if problems else 0
    for p in problems:
        print(safe(p), file=sys.stderr)
    packs = rules.packs
    print(f"{len(packs)} pack(s) ({', '.join(packs)}), {len(rules.rules)} rules, {n_tests} tests: "
          + (f"{len(problems)} problem(s)" if problems else "OK"))
    if rules.inactive:
        print("inactive until configured: " + ", ".join(rules.inactive))
    if tail:
        print(safe(f"note: {len(tail)} rule(s) read the line end, so lines cut at max_line are not given "
                   f"to them: {', '.join(tail)}"))
    return 2 if problems else 0
