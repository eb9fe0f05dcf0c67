"""Why a rule did or did not take a log line: `logban test-rules --line`.

Pure: a parser (its rules, clock and program filter) and one line in, a verdict
out. The pre-filter is bypassed on purpose: a line a rule "almost" matches is
one whose program the rule reads and whose literal text the rule needs is there,
but whose pattern stops somewhere; the verdict says where.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import regex

from .parse import Parser, canonical_ip, not_target, parse_header
from .rules import Rule


@dataclass
class Took:
    rule: str
    kind: str             # "" for a link
    score: float
    ip: str | None        # canonical address, None when the rule reads a key instead
    key: str | None
    note: str = ""


@dataclass
class Close:
    rule: str
    why: str


@dataclass
class Verdict:
    line: str
    program: str | None = None            # None: no header understood
    taken: Took | None = None             # the offence logban records for this line
    also: list[Took] = field(default_factory=list)    # links and lower-scored rules that matched too
    close: list[Close] = field(default_factory=list)


def _stop(r: Rule, line: bytes, start: int, timeout: float) -> int:
    """How far into `line` the rule's pattern still fits (a prefix it could go on from)."""
    lo, hi = start, len(line)
    while lo < hi:                     # the longest prefix the pattern can still complete
        mid = (lo + hi + 1) // 2
        try:
            ok = r.regex.match(line[:mid], start, partial=True, timeout=timeout) is not None
        except TimeoutError:
            ok = False
        lo, hi = (mid, hi) if ok else (lo, mid - 1)
    return lo


FUZZ_MAX = 3       # changes to the line a near miss may need


def _fuzzy(r: Rule, line: bytes, start: int, timeout: float) -> tuple[int, str] | None:
    """The fewest changes (up to FUZZ_MAX) that would make the rule match, said in words."""
    for e in range(1, FUZZ_MAX + 1):
        try:
            rx = regex.compile(b"(?e)(?:" + r.regex.pattern + b"){e<=%d}" % e)
            m = rx.match(line, start, timeout=timeout)
        except (regex.error, TimeoutError):
            return None
        if m is None:
            continue
        subs, ins, dels = m.fuzzy_changes
        words = ([f"{_at(line, i)} is not what it wants" for i in subs]
                 + [f"{_at(line, i)} is one character too many" for i in ins]
                 + [f"a character is missing before {_at(line, i)}" for i in dels])
        return e, "it would match but for: " + "; ".join(words)
    return None


def _guard(r: Rule) -> str:
    # A guard reads ahead: the near match runs up to where it refuses the line.
    return " (or a guard (?!...) in the pattern refuses what the line says there)" if b"(?!" in r.regex.pattern else ""


def _at(line: bytes, i: int) -> str:
    return f"column {i + 1} ({line[max(0, i - 12):i + 12].decode('utf-8', 'replace')!r})"


def _took(r: Rule, m, parser: Parser, h) -> Took:
    ip = key = None
    note = ""
    # A group None: a user's optional group, or one in another branch, took no part in the match.
    if r.has_ip:
        raw_ip = m.group("ip")
        raw = None if raw_ip is None else raw_ip.decode("ascii", "replace")
        ip = None if raw is None else canonical_ip(raw)
        if raw is None:
            note = "the address group took no part in the match: nothing is recorded"
        elif ip is None:
            note = f"the address field {raw!r} is no address: nothing is recorded"
        elif not_target(ip):
            note = f"{ip} can never be banned (unspecified, multicast, link-local...): nothing is recorded"
    if r.key is not None:
        raw_key = h.pid if r.key == "pid" else m.group("key")
        key = None if raw_key is None else raw_key.decode("ascii", "replace")
        if raw_key is None and not r.has_ip:
            note = "the key group took no part in the match: no key to find the client by"
        elif not r.has_ip:
            note = (f"the client comes from a link line with the same {'pid' if r.key == 'pid' else 'key'} "
                    f"{key!r} (a {r.pack} link rule), not from this line")
    if r.rate_over:
        note = (note + "; " if note else "") + (f"a rate rule: an offence only after more than {r.rate_over} "
                                                f"such lines within {r.rate_per:g} s")
    return Took(r.id, "" if r.link else r.kind, r.score, ip, key, note)


def explain(parser: Parser, raw: bytes, close_max: int = 3) -> Verdict:
    """What the rules make of one line; when none takes it, the `close_max` rules that came
    closest (the pattern fits the longest part of the line), and rules that would take it
    were the line's program one they read."""
    line = raw.rstrip(b"\r\n")[:parser.max_line]
    v = Verdict(line.decode("utf-8", "replace"))
    h = parse_header(line, parser.clock)
    if h is None:
        return v
    v.program = h.program
    allowed = parser._allowed(h.program)
    matched: list[tuple[Rule, Took]] = []
    near: list[tuple[int, Close]] = []
    for r in parser.rules.rules:
        try:
            m = r.regex.match(line, h.start, timeout=parser.timeout)
        except TimeoutError:
            v.close.append(Close(r.id, f"its match ran out of time ({parser.timeout:g} s)"))
            continue
        reads = r.order in allowed
        if m is not None and reads:
            matched.append((r, _took(r, m, parser, h)))
        elif m is not None:
            progs = ", ".join(r.programs) + (" or untagged lines" if r.untagged else "")
            near.append((len(line), Close(r.id, f"its pattern matches, but it reads only lines of {progs}, "
                                                f"and this line's program is {h.program or '(none)'!r}")))
        elif reads and (fz := _fuzzy(r, line, h.start, parser.timeout)):
            near.append((len(line) * (FUZZ_MAX + 1 - fz[0]), Close(r.id, fz[1] + _guard(r))))
        elif reads and r.hint in line:
            at = _stop(r, line, h.start, parser.timeout)
            text = line[h.start:at].decode("utf-8", "replace")
            rest = line[at:at + 40].decode("utf-8", "replace")
            where = f"after {text[-60:]!r}" if text else "at the start of the message"
            near.append((at, Close(r.id, f"its pattern stops {where}, where the line goes on with {rest!r}" + _guard(r))))
    offences = [(r, t) for r, t in matched if not r.link]
    if offences:
        best = max(offences, key=lambda rt: (rt[0].score, -rt[0].order))[0]
        v.taken = next(t for r, t in offences if r is best)
    v.also = [t for _, t in matched if t is not v.taken]
    if v.taken is None:
        near.sort(key=lambda ac: -ac[0])
        v.close += [c for _, c in near[:close_max]]
    return v
