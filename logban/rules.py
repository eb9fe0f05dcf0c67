"""Rule packs: TOML data in `rules/` that say which message shapes are offences.

A rule is matched *anchored at the start of the message* (the text after the
syslog tag `program[pid]: `), never searched for anywhere in the line: what an
attacker writes (HELO, sender, recipient, user name) comes after the MTA's own
client field, so an anchored pattern cannot be steered to an address inside it.

Every rule also yields a literal *hint* that each line it can match contains;
the parser looks for hints in whole chunks first and runs rules only on the
few lines that have one (most mail log lines are benign).
"""
from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import regex

from .errors import UsageError
from .patterns import HINT_MIN, derive_hint, literal_runs, tail_reason
from .units import parse_duration

KINDS = frozenset({
    "relay_denied", "unknown_user", "dnsbl", "bad_helo", "bad_sender", "auth_failed",
    "pregreet", "protocol_abuse", "client_rejected", "virus",
})

# The client address: IPv4, IPv6 in any spelling (zone id allowed), sendmail's
# "IPv6:" prefix outside the group. Length-bounded so no input makes it slow.
IP_PATTERN = (r"(?:IPv6:)?(?P<ip>[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
              r"|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{1,60}(?:%[0-9A-Za-z._-]{1,32})?)")

PACK_KEYS = {"name", "description", "programs"}
RULE_KEYS = {"id", "kind", "score", "match", "programs", "hint", "untagged", "key", "rate",
             "repeats", "tests", "description", "disabled"}
LINK_KEYS = {"id", "match", "programs", "hint", "untagged", "key", "resolves", "tests",
             "description", "disabled"}
TEST_KEYS = {"line", "ip", "key", "none"}


@dataclass(frozen=True, slots=True)
class RuleTest:
    """A sample line a rule must turn into `ip` (and/or `key`); with neither, must not match."""
    line: str
    ip: str | None
    key: str | None = None


class Pattern:
    """A rule's pattern, compiled when first used.

    `regex` parses patterns in Python: compiling all 96 shipped rules was half of a
    `logban scan`'s start-up, and a Postfix log never needs the sendmail and qmail
    packs'. Shipped packs are compiled lazily (the tests compile every one, and the
    only outside text in them, the host's own names, goes in escaped); a user's
    pattern is compiled as its pack loads, so a bad one is an error at once. Anything
    but `pattern` and `groups` is the compiled pattern's (match, groupindex, ...)."""

    __slots__ = ("pattern", "groups", "_rx")

    def __init__(self, pattern: bytes, groups: frozenset[str], rx: regex.Pattern | None = None) -> None:
        self.pattern = pattern
        self.groups = groups          # the named groups
        self._rx = rx

    def compiled(self) -> regex.Pattern:
        if self._rx is None:
            self._rx = regex.compile(self.pattern)
        return self._rx

    def __getattr__(self, name: str):
        # Only the compiled pattern's public API: copy and pickle look up their protocol
        # (__setstate__, __deepcopy__) on an instance whose slots may not be set yet, and
        # would get the compiled pattern's, or recurse through `_rx`.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.compiled(), name)


# A named group, "(?P<name>" or "(?<name>" (test_rules checks these agree with the compiled groups
# of the shipped patterns).
_GROUP = regex.compile(r"(?<!\\)(?:\\\\)*\(\?P?<(\w+)>")


@dataclass(slots=True)
class Rule:
    id: str
    pack: str
    source: str
    pattern: str
    regex: Pattern
    programs: tuple[str, ...]
    hint: bytes
    lead: bool                    # hint stands right after ": " (fast pre-filter)
    needle: bytes = b""           # longest literal every match has: checked before the regex
    kind: str = ""
    score: float = 0.0
    untagged: bool = False        # may match lines without a syslog tag
    key: str | None = None        # None, "pid" (syslog pid) or "group" (?P<key>)
    link: bool = False            # maps key -> address, is no offence itself
    has_ip: bool = True           # the pattern has the address group
    resolves: str = "later"       # a link resolves keys seen "earlier" or "later"
    has_name: bool = False        # the pattern has a (?P<name>) group: the client name the MTA verified
    rate_over: int = 0            # a rate rule: more than this many matches ...
    rate_per: float = 0.0         # ... within this many seconds from one client is one offence
    tail: bool = False            # the match reads the line end ($, look-ahead): never applied to a line cut at max_line
    # A summary line (smtpd's `disconnect ... auth=0/1`) repeats what these rules counted in the
    # same session (syslog pid of the same host): it counts only when none of them did.
    repeats: tuple[str, ...] = ()
    session: bool = False         # a rule some summary repeats: its offences are noted per session
    tests: tuple[RuleTest, ...] = ()
    order: int = 0

    def applies_to(self, program: str) -> bool:
        if not program:
            return self.untagged
        return any(fnmatch.fnmatchcase(program, p) for p in self.programs)


@dataclass
class RuleSet:
    rules: list[Rule]
    inactive: list[str] = field(default_factory=list)   # rule ids needing config

    def by_id(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def compile_all(self) -> RuleSet:
        """Every pattern compiled now: a daemon compiles at start, not on its first lines (a
        compile in the loop, and the collections its allocations set off over a large heap,
        held up the first bans by up to half a second with a million past bans)."""
        for r in self.rules:
            r.regex.compiled()
        return self

    @property
    def packs(self) -> list[str]:
        return sorted({r.pack for r in self.rules})


def shipped_rules_dir() -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here / "rules", here.parent / "rules"):
        if cand.is_dir():
            return cand
    raise UsageError(f"shipped rule packs not found next to {here}")


def _bad(source: str, rule_id: str | None, msg: str) -> UsageError:
    where = f"{source}: rule {rule_id}" if rule_id else source
    return UsageError(f"{where}: {msg}")


def expand(pattern: str, own_names: tuple[str, ...], macros: dict[str, str] | None = None) -> str | None:
    """Expand the pack's macros, then {{IP}} and {{OWN}}; None when {{OWN}} has nothing to name."""
    out = pattern
    for _ in range(8):                      # macros may use macros, a few levels deep
        before = out
        for name, body in (macros or {}).items():
            out = out.replace("{{" + name + "}}", body)
        if out == before:
            break
    out = out.replace("{{IP}}", IP_PATTERN)
    if "{{OWN}}" in out:
        if not own_names:
            return None
        alts = "|".join(regex.escape(n) for n in sorted(own_names, key=len, reverse=True))
        out = out.replace("{{OWN}}", f"(?i:{alts})")
    return out


# ---- loading ---------------------------------------------------------------

def _check_keys(table: dict, allowed: set[str], source: str, rule_id: str | None, what: str) -> None:
    for k in table:
        if k not in allowed:
            raise _bad(source, rule_id, f"unknown key {k!r} in {what} (allowed: {', '.join(sorted(allowed))})")


def _str_list(v, source: str, rule_id: str | None, key: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise _bad(source, rule_id, f"{key} must be a list of non-empty strings")
    return tuple(v)


def _parse_tests(v, source: str, rule_id: str) -> tuple[RuleTest, ...]:
    if not isinstance(v, list):
        raise _bad(source, rule_id, "tests must be a list of tables {line = ..., ip = ...}")
    out = []
    for t in v:
        if not isinstance(t, dict) or not isinstance(t.get("line"), str):
            raise _bad(source, rule_id, "each test needs line = \"...\"")
        _check_keys(t, TEST_KEYS, source, rule_id, "test")
        ip, key = t.get("ip"), t.get("key")
        if t.get("none") is True and ip is None and key is None:
            out.append(RuleTest(t["line"], None))
        elif isinstance(ip, str) or isinstance(key, str):
            out.append(RuleTest(t["line"], ip, key))
        else:
            raise _bad(source, rule_id, "each test needs ip = \"...\", key = \"...\" or none = true")
    return tuple(out)


def _rate(v, source: str, rid: str) -> tuple[int, float]:
    """`rate = { over = 30, per = "1m" }`: (over, seconds), or (0, 0) for an ordinary rule."""
    if v is None:
        return 0, 0.0
    if not isinstance(v, dict) or set(v) != {"over", "per"}:
        raise _bad(source, rid, 'rate must be a table { over = N, per = "DURATION" }')
    over, per = v["over"], v["per"]
    if isinstance(over, bool) or not isinstance(over, int) or over < 1:
        raise _bad(source, rid, "rate.over must be a whole number of 1 or more")
    secs = parse_duration(per, f"{source}: rule {rid}: rate.per") if isinstance(per, str) else None
    if not secs:
        raise _bad(source, rid, 'rate.per must be a duration above zero, like "1m"')
    return over, secs


def _build(entry: dict, *, link: bool, pack: str, pack_programs: tuple[str, ...],
           source: str, own_names: tuple[str, ...], macros: dict[str, str], lazy: bool = False) -> Rule | None:
    rid = entry.get("id")
    if not isinstance(rid, str) or not regex.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", rid):
        raise _bad(source, None, f"{'link' if link else 'rule'} without a valid id (letters, digits, . _ -): {rid!r}")
    _check_keys(entry, LINK_KEYS if link else RULE_KEYS, source, rid, "link" if link else "rule")
    src = entry.get("match")
    if not isinstance(src, str) or not src:
        raise _bad(source, rid, "match must be a non-empty regular expression")
    kind, score = "", 0.0
    if not link:
        kind = entry.get("kind")
        if kind not in KINDS:
            raise _bad(source, rid, f"unknown kind {kind!r} (one of: {', '.join(sorted(KINDS))})")
        score = entry.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not score > 0:
            raise _bad(source, rid, "score must be a number above 0")
    rate_over, rate_per = _rate(entry.get("rate"), source, rid)
    repeats = _str_list(entry.get("repeats", []), source, rid, "repeats")
    programs = _str_list(entry.get("programs", list(pack_programs)), source, rid, "programs")
    untagged = entry.get("untagged", False)
    if not isinstance(untagged, bool):
        raise _bad(source, rid, "untagged must be true or false")
    expanded = expand(src, own_names, macros)
    if expanded is None:
        return None
    if lazy:
        rx = Pattern(expanded.encode(), frozenset(_GROUP.findall(expanded)))
    else:
        try:
            compiled = regex.compile(expanded.encode())
        except regex.error as e:
            raise _bad(source, rid, f"bad regular expression: {e}") from None
        rx = Pattern(compiled.pattern, frozenset(compiled.groupindex), compiled)
    if _GROUP.findall(expanded).count("ip") > 1:
        raise _bad(source, rid, "more than one address group (?P<ip>...)")
    has_ip = "ip" in rx.groups
    key = entry.get("key")
    if key not in (None, "pid"):
        raise _bad(source, rid, "key must be \"pid\" (the syslog pid) or left out (a (?P<key>...) group)")
    if key is None and "key" in rx.groups:
        key = "group"
    if link and not (has_ip and key):
        raise _bad(source, rid, "a link needs an address group (?P<ip>...) and a key (key = \"pid\" or (?P<key>...))")
    if repeats and (key or not has_ip or rate_over):
        raise _bad(source, rid, "repeats goes with a rule that reads the client address and has no key or rate")
    if not link and not has_ip and not key:
        raise _bad(source, rid, "no address group: use {{IP}} or (?P<ip>...) for the client address, or a key to correlate")
    resolves = entry.get("resolves", "later")
    if resolves not in ("earlier", "later"):
        raise _bad(source, rid, "resolves must be \"earlier\" or \"later\"")
    hint = entry.get("hint")
    if hint is not None:
        if not isinstance(hint, str) or len(hint) < HINT_MIN:
            raise _bad(source, rid, f"hint must be a literal of at least {HINT_MIN} characters")
        lead = False
    else:
        derived = derive_hint(expanded, tagged=not untagged)
        if derived is None:
            raise _bad(source, rid, "no literal text in the pattern for the pre-filter; give hint = \"text every matching line contains\"")
        hint, lead = derived
    runs = literal_runs(expanded, tagged=False) or []
    needle = max((t for t, _ in runs), key=len, default="")
    return Rule(id=rid, pack=pack, source=source, pattern=src, regex=rx, programs=programs,
                hint=hint.encode(), lead=lead, needle=needle.encode() if len(needle) > len(hint) else b"", kind=kind, score=float(score), untagged=untagged,
                key=key, link=link, has_ip=has_ip, resolves=resolves, has_name="name" in rx.groups,
                rate_over=rate_over, rate_per=rate_per, repeats=repeats, tail=tail_reason(expanded) is not None, tests=_parse_tests(entry.get("tests", []), source, rid))


def load_pack(path: Path, own_names: tuple[str, ...] = (), lazy: bool = False) -> tuple[list[Rule], list[str], set[str]]:
    """Rules of one pack file, ids inactive for lack of config, ids disabled in it; `lazy`:
    a shipped pack, its patterns compiled when first used."""
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise _bad(source, None, f"not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(source, None, f"cannot read: {e}") from None
    _check_keys(data, {"pack", "macros", "rule", "link"}, source, None, "pack file")
    macros = data.get("macros", {})
    if not isinstance(macros, dict) or not all(
            isinstance(v, str) and regex.fullmatch(r"[A-Z][A-Z0-9_]*", k) for k, v in macros.items()):
        raise _bad(source, None, "[macros] maps UPPER_CASE names to pattern text")
    head = data.get("pack", {})
    if not isinstance(head, dict):
        raise _bad(source, None, "[pack] must be a table")
    _check_keys(head, PACK_KEYS, source, None, "[pack]")
    name = head.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise _bad(source, None, "[pack] name must be a non-empty string")
    programs = _str_list(head.get("programs", []), source, None, "[pack] programs")
    rules, inactive, disabled = [], [], set()
    for link, entries in ((False, data.get("rule", [])), (True, data.get("link", []))):
        if not isinstance(entries, list):
            raise _bad(source, None, "[[rule]] and [[link]] must be arrays of tables")
        for entry in entries:
            if not isinstance(entry, dict):
                raise _bad(source, None, "[[rule]] and [[link]] entries must be tables")
            if entry.get("disabled") is True:
                disabled.add(entry.get("id", ""))
                if set(entry) <= {"id", "disabled"}:
                    continue          # a bare {id, disabled} just switches a shipped rule off
            r = _build(entry, link=link, pack=name, pack_programs=programs,
                       source=source, own_names=own_names, macros=macros, lazy=lazy)
            if r is None:
                inactive.append(entry["id"])
            elif r.id not in disabled:
                rules.append(r)
    return rules, inactive, disabled


def _pack_files(d: Path) -> list[Path]:
    if d.is_file():
        raise UsageError(f"{d}: is a file, not a rule pack directory (give the directory that holds the *.toml packs)")
    if not d.is_dir():
        raise UsageError(f"{d}: rule pack directory does not exist")
    return sorted(d.glob("*.toml"))


def check_rule_durations(cfg, rules: RuleSet) -> None:
    """Each `[ban.rules]` id names an active rule of `rules`."""
    for rid in cfg.policy.rule_durations:
        if rules.by_id(rid) is None:
            raise UsageError(f"{cfg.path}: ban.rules: no active rule with id {rid!r}")


def check_config_references(cfg, rules: RuleSet) -> None:
    """What a config names in the packs: `[ban.rules]` ids and each `[[follow]]`'s `mta`.
    The daemon checks them at start and at SIGHUP, and `logban reload` before it signals,
    so a config the daemon would refuse is never reported as reloaded."""
    check_rule_durations(cfg, rules)
    packs = {r.pack for r in rules.rules}
    named = [(str(p), mta) for p, mta in cfg.daemon.follow] + [(j.name, j.mta) for j in cfg.daemon.journals]
    for where, mta in named:
        if mta is not None and mta not in packs:
            raise UsageError(f"{cfg.path}: follow {where}: no rule pack {mta!r} (have: {', '.join(sorted(packs))})")


def load_rules(extra_dirs: list[Path] = (), *, disable: tuple[str, ...] = (),
               own_names: tuple[str, ...] = (), shipped: bool = True,
               only_packs: tuple[str, ...] = (), disable_key: str = "disable") -> RuleSet:
    """Shipped packs, then users' packs: a user rule with a shipped id replaces it.

    Two rules with one id within the shipped packs, or within the user's, is an error.
    `disable_key`: where `disable` came from, for its errors ("/etc/logban/logban.toml: rules.disable").
    """
    layers = ([_pack_files(shipped_rules_dir())] if shipped else []) + [_pack_files(Path(d)) for d in extra_dirs]
    merged: dict[str, Rule] = {}
    inactive: list[str] = []
    user_disabled: set[str] = set()
    for depth, files in enumerate(layers):
        seen: dict[str, str] = {}
        for f in files:
            rules, inact, dis = load_pack(f, own_names, lazy=depth == 0 and shipped)
            inactive += inact
            user_disabled |= dis
            for r in rules:
                if r.id in seen:
                    raise _bad(str(f), r.id, f"duplicate id (also in {seen[r.id]})")
                seen[r.id] = str(f)
                merged[r.id] = r
            for rid in inact:
                seen.setdefault(rid, str(f))
        if depth == 0 and not files and shipped:
            raise UsageError(f"{shipped_rules_dir()}: no rule packs (*.toml)")
    known = set(merged) | set(inactive) | user_disabled
    for rid in disable:
        if rid not in known:
            raise UsageError(f"{disable_key}: no rule with id {rid!r}")
    out = [r for rid, r in merged.items() if rid not in disable and rid not in user_disabled
           and (not only_packs or r.pack in only_packs)]
    for r in out:
        for rid in r.repeats:
            other = merged.get(rid)
            if other is None and rid not in known:
                raise _bad(r.source, r.id, f"repeats names no rule with id {rid!r}")
            if other is not None and (other.pack != r.pack or other.link or other.key or other.rate_over):
                raise _bad(r.source, r.id, f"repeats {rid!r}: not an offence rule of the same pack without key or rate")
            if other is not None:
                other.session = True
    if only_packs and not out:
        raise UsageError(f"--mta: no rule pack named {', '.join(only_packs)} (have: {', '.join(sorted({r.pack for r in merged.values()}))})")
    for i, r in enumerate(out):
        r.order = i
    return RuleSet(out, inactive)
