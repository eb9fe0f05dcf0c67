"""Score logban's rules against a peer's annotated test logs (fail2ban's `# failJSON:` files).

    python3 bench/peer_corpus.py PATH [--rules DIR]

PATH is fail2ban's `fail2ban/tests/files/logs/` directory (its mail logs `postfix`,
`sendmail-reject`, `sendmail-auth` and `qmail` are read) or one such file. Each log
line there follows a `# failJSON: {...}` line saying whether fail2ban's filter must
match it and which `host` it must find. The whole file goes through logban's
parser (so queue-id and pid correlation work as in a real log), and the offences
are compared with the annotations:

- hit: an offence on an annotated `match: true` line, with the annotated address;
- miss: such a line without that offence; false positive: an offence on a line
  annotated `match: false` or with another address;
- moved: logban reports the event on another line of the same session than
  fail2ban does (a sendmail "User unknown" line resolved by its envelope line,
  where fail2ban flags the envelope line): one miss and one false positive with
  the same address pair up and count as a hit;
- disagree: an annotation logban does not follow on purpose, with the reason.
  Disagreements count neither way; they are printed so a reader can judge them.

Recall = hits / (hits + misses), precision = hits / (hits + false positives).
The peer's files are read where they are, never copied.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logban.parse import Clock, Parser, canonical_ip
from logban.rules import load_rules

MAIL_LOGS = ("postfix", "sendmail-reject", "sendmail-auth", "qmail")
# Stamps in these files have no year: any fixed reference reads them.
REFERENCE = 1_800_000_000.0

# Annotations logban does not follow, by the shape of the line: (expected match, pattern, reason).
DISAGREE: list[tuple[bool, re.Pattern, str]] = [
    (True, re.compile(r"warning: hostname \S+ does not resolve to address "),
     "a forward/reverse DNS mismatch warning: Postfix goes on with the session, many legitimate "
     "senders have such DNS; the client did nothing wrong (fail2ban flags it in aggressive mode only)"),
    (True, re.compile(r"lost input channel from .* after \w+"),
     "a connection lost in the middle of a transaction: legitimate senders (callout verifiers, flaky "
     "links) do this too, as fail2ban itself says of Postfix's 'lost connection after DATA'; before MAIL "
     "sendmail logs it only at LogLevel > 19, together with 'did not issue MAIL/EXPN/VRFY/ETRN', which "
     "logban counts"),
]


@dataclass
class FileScore:
    name: str
    annotated: int = 0
    positives: int = 0
    hits: int = 0
    misses: list[str] = field(default_factory=list)
    false_pos: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    disagree: list[str] = field(default_factory=list)
    strict_miss: int = 0          # disagreements where fail2ban wants a match logban does not make
    strict_fp: int = 0            # disagreements where logban matches a line fail2ban leaves alone

    @property
    def recall(self) -> float:
        n = self.hits + len(self.misses)
        return self.hits / n if n else 1.0

    @property
    def precision(self) -> float:
        n = self.hits + len(self.false_pos)
        return self.hits / n if n else 1.0


@dataclass
class Annotation:
    lineno: int
    text: str
    match: bool
    host: str | None
    modes: tuple[str, ...]        # fail2ban filter modes the annotation was written for


def annotations(lines: list[str]) -> list[Annotation]:
    out, pending, modes = [], None, ("",)
    for i, line in enumerate(lines, 1):
        if "# filterOptions:" in line:
            opts = json.loads(line.split("# filterOptions:", 1)[1])
            opts = opts if isinstance(opts, list) else [opts]
            modes = tuple(o.get("mode", "") for o in opts)
        elif line.startswith("# failJSON:"):
            pending = json.loads(line.split(":", 1)[1])
        elif line.startswith("#") or not line.strip():
            continue
        elif pending is not None:
            host = pending.get("host")
            out.append(Annotation(i, line, bool(pending.get("match")),
                                  canonical_ip(host) if host else None, modes))
            pending = None
    return out


def broad_mode(modes: tuple[str, ...]) -> bool:
    """Whether the annotation holds for fail2ban's default or aggressive filter (logban has one mode)."""
    return any(m in ("", "normal", "aggressive") for m in modes)


def disagreement(a: Annotation) -> str | None:
    for want, rx, why in DISAGREE:
        if a.match == want and rx.search(a.text):
            return why
    return None


def score_file(path: Path, parser: Parser) -> FileScore:
    data = path.read_bytes()
    lines = data.decode("utf-8", "replace").splitlines()
    parser.file = path.name
    got: dict[int, list[tuple[str, str]]] = {}
    for o in parser.parse_lines(data):
        got.setdefault(o.line, []).append((o.ip, o.rule))
    sc = FileScore(path.name)
    extra_fp: list[tuple[int, str, str]] = []       # (line, ip, text) offences no annotation wants
    lone_miss: list[tuple[int, str, str]] = []
    annotated = annotations(lines)
    seen = {a.lineno for a in annotated}
    for a in annotated:
        sc.annotated += 1
        offs = got.get(a.lineno, [])
        why = disagreement(a)
        if a.match and not broad_mode(a.modes) and not offs:
            why = why or f"fail2ban matches it only in its {'/'.join(a.modes)} mode"
        if not a.match and not broad_mode(a.modes) and offs:
            why = why or (f"annotated for fail2ban's {'/'.join(a.modes)} mode only, which leaves it out; "
                          "its broader modes match this shape")
        if why:
            wanted = a.match and not any(ip == a.host for ip, _ in offs)
            sc.strict_miss += wanted
            sc.strict_fp += len(offs) if not a.match else 0
            took = ", ".join(f"{ip} by {rule}" for ip, rule in offs) or "nothing"
            sc.disagree.append(f"line {a.lineno}: {a.text}\n      fail2ban: {'match ' + str(a.host) if a.match else 'no match'};"
                               f" logban: {took}\n      disagree: {why}")
            continue
        if a.match:
            sc.positives += 1
            if any(ip == a.host for ip, _ in offs):
                sc.hits += 1
            else:
                lone_miss.append((a.lineno, a.host or "?", a.text))
        for ip, rule in offs:
            if not (a.match and ip == a.host):
                extra_fp.append((a.lineno, ip, f"{a.text}  [logban: {ip} by {rule}]"))
    for lineno, offs in got.items():               # offences on lines with no annotation at all
        if lineno not in seen:
            for ip, rule in offs:
                extra_fp.append((lineno, ip, f"{lines[lineno - 1]}  [logban: {ip} by {rule}]"))
    # Pair a miss with a false positive of the same address: one event, reported on another line.
    for lineno, ip, text in lone_miss:
        twin = next((f for f in extra_fp if f[1] == ip), None)
        if twin is None:
            sc.misses.append(f"line {lineno}: {text}\n      fail2ban: match {ip}; logban: nothing")
            continue
        extra_fp.remove(twin)
        sc.hits += 1
        sc.moved.append(f"line {lineno} (fail2ban) = line {twin[0]} (logban), {ip}: {twin[2]}")
    sc.false_pos = [f"line {n}: {text}" for n, _, text in extra_fp]
    return sc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path, help="fail2ban's tests/files/logs directory, or one annotated file")
    ap.add_argument("--rules", type=Path, action="append", default=[], metavar="DIR",
                    help="rule pack directory layered over the shipped packs")
    args = ap.parse_args(argv)
    files = [args.path / n for n in MAIL_LOGS] if args.path.is_dir() else [args.path]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"peer_corpus: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    rules = load_rules(args.rules)
    total = FileScore("overall")
    for f in files:
        sc = score_file(f, Parser(rules, clock=Clock(reference=REFERENCE)))
        print(f"== {sc.name}: {sc.annotated} annotated lines, {sc.positives} to match; "
              f"recall {sc.recall:.3f}, precision {sc.precision:.3f} "
              f"({sc.hits} hits, {len(sc.misses)} misses, {len(sc.false_pos)} false positives, "
              f"{len(sc.moved)} moved, {len(sc.disagree)} disagreements)")
        for title, items in (("miss", sc.misses), ("false positive", sc.false_pos),
                             ("moved", sc.moved), ("disagreement", sc.disagree)):
            for it in items:
                print(f"  {title}: {it}")
        total.annotated += sc.annotated
        total.positives += sc.positives
        total.hits += sc.hits
        for attr in ("misses", "false_pos", "moved", "disagree"):
            getattr(total, attr).extend(getattr(sc, attr))
        total.strict_miss += sc.strict_miss
        total.strict_fp += sc.strict_fp
    print(f"== overall: {total.annotated} annotated lines, {total.positives} to match; "
          f"recall {total.recall:.3f}, precision {total.precision:.3f} "
          f"({total.hits} hits, {len(total.misses)} misses, {len(total.false_pos)} false positives, "
          f"{len(total.moved)} moved, {len(total.disagree)} disagreements)")
    # The same figures with every annotation taken as fail2ban wrote it (disagreements counted against logban).
    hits = total.hits
    strict_r = hits / (hits + len(total.misses) + total.strict_miss) if hits else 0.0
    strict_p = hits / (hits + len(total.false_pos) + total.strict_fp) if hits else 0.0
    print(f"== overall, fail2ban's annotations as written: recall {strict_r:.3f}, precision {strict_p:.3f} "
          f"({total.strict_miss} more misses, {total.strict_fp} more false positives)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
