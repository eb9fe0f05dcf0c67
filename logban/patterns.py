"""What a rule's pattern says, read as text, before it is ever compiled.

The literal *hint* every match contains (the parser's pre-filter, see `rules`),
whether a match reads the end of the line (such a rule is never applied to a cut
line), and the lints `logban rules check` runs: a pattern that lets text the
client wrote choose the address is a problem it reports.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import regex

if TYPE_CHECKING:
    from .rules import Rule

HINT_MAX = 16          # longer hints only make the chunk pre-filter slower
HINT_MIN = 3


# ---- literal hints -------------------------------------------------------

def literal_runs(src: str, tagged: bool) -> list[tuple[str, bool]] | None:
    """Literal text every match must contain, as (run, preceded_by_colon_space).

    Only text at nesting depth 0 counts. None when the pattern has a top-level
    alternation or a global flag that changes what literal text means.
    """
    runs: list[tuple[str, bool]] = []
    cur: list[str] = []
    cur_led = led = tagged
    i, n = 0, len(src)

    def close() -> None:
        nonlocal cur, led
        if cur:
            text = "".join(cur)
            runs.append((text, cur_led))
            led = text.endswith(": ")
        cur = []

    def add(ch: str) -> None:
        nonlocal cur_led
        if not cur:
            cur_led = led
        cur.append(ch)

    def skip_quant(j: int) -> tuple[int, bool]:
        """Skip a quantifier at j; return (next index, whether it allows zero)."""
        if j < n and src[j] in "*?":
            optional = True
            j += 1
        elif j < n and src[j] == "+":
            optional = False
            j += 1
        elif j < n and src[j] == "{":
            m = regex.match(r"\{(\d*)(?:,(\d*))?\}", src[j:])
            if not m:
                return j, False
            optional = (m.group(1) or "0") == "0"
            j += m.end()
        else:
            return j, False
        if j < n and src[j] in "?+":
            j += 1
        return j, optional

    while i < n:
        c = src[i]
        if c == "(":
            j = _group_end(src, i)
            content = src[i + 1:j - 1]
            if regex.fullmatch(r"\?[a-zA-Z]+", content):
                if set(content) & set("ixX"):
                    return None
                i = j
                continue
            if content[:2] in ("?=", "?!") or content[:3] in ("?<=", "?<!"):
                i = j                     # zero width: the run goes on
                continue
            close()
            i, optional = skip_quant(j)
            ends_colon = content.endswith(": ") or content.endswith(":\\ ")
            led = ends_colon and (led or not optional)
            continue
        if c == "|":
            return None
        if c == "[":
            close()
            i, _ = skip_quant(_class_end(src, i))
            led = False
            continue
        if c == "\\" and i + 1 < n:
            nxt = src[i + 1]
            if nxt.isalnum():
                close()
                i, _ = skip_quant(i + 2)
                led = False
                continue
            lit, j = nxt, i + 2
        elif c in ".^$":
            close()
            i, _ = skip_quant(i + 1)
            led = False
            continue
        else:
            lit, j = c, i + 1
        j2, optional = skip_quant(j)
        if j2 == j:
            add(lit)
        else:
            if not optional:
                add(lit)
            close()
            led = False
        i = j2
    close()
    return runs


def _class_end(src: str, i: int) -> int:
    j = i + 1
    if j < len(src) and src[j] == "^":
        j += 1
    if j < len(src) and src[j] == "]":
        j += 1
    while j < len(src) and src[j] != "]":
        j += 2 if src[j] == "\\" else 1
    return j + 1


def derive_hint(src: str, tagged: bool) -> tuple[str, bool] | None:
    """The hint for a pattern: (text, is_lead) or None when there is none."""
    runs = literal_runs(src, tagged)
    if not runs:
        return None
    for text, led in runs:
        if not led and ": " in text:
            text, led = text.split(": ", 1)[1], True
        if led and len(text[:HINT_MAX]) >= HINT_MIN:
            return text[:HINT_MAX], True
    best = max((t for t, _ in runs), key=len)
    return (best, False) if len(best) >= HINT_MIN + 1 else None


# ---- pattern structure -----------------------------------------------------
#
# A small reader of the pattern text: top-level atoms (literal, escape, class,
# group) with their quantifiers, enough to say what a field can end with and
# what the address group can start with. It only has to be right about the
# patterns rule packs use; where it cannot tell, the lint errs on "unsafe".

_PROBES = ":.0123456789abcdefABCDEF"          # what addresses are made of
_HEX = frozenset("0123456789abcdefABCDEF")
_QUANT = regex.compile(r"(?:[*+?]|\{\d*(?:,\d*)?\})[?+]?")
_WIDE_REPEAT = regex.compile(
    r"(?<!\\)(?:\\\\)*(?:\.|\\[SWD]|\[\^(?:[^\]\\]|\\.)*\]|\[\\s\\S\]|\[\\S\\s\])"
    r"(?P<q>[*+]|\{\d*,(?P<max>\d*)\})")


def _tokens(src: str, i: int = 0) -> Iterator[tuple[int, int]]:
    """The pattern text from `i` on as (start, end) of each token: an escape ("\\d", "\\(") and a
    character class ("[^]x]") are one token each, so that nothing in them is read as syntax;
    any other character is one. The last `end` can pass the end of the text (a lone
    backslash, a class left open), as far as the token would reach."""
    n = len(src)
    while i < n:
        j = _token_end(src, i)
        yield i, j
        i = j


def _token_end(src: str, i: int) -> int:
    """Index just after the token that starts at src[i] (see `_tokens`)."""
    c = src[i]
    return i + 2 if c == "\\" else _class_end(src, i) if c == "[" else i + 1


def _group_end(src: str, i: int) -> int:
    """Index just after the group that opens at src[i] == "("."""
    depth, end = 0, i + 1
    for start, end in _tokens(src, i):
        c = src[start]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if not depth:
                break
    return end


def _atoms(src: str) -> list[tuple[str, str]] | None:
    """Top-level atoms of a pattern as (atom, quantifier); None if it has a top-level "|"."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "|":
            return None
        j = _group_end(src, i) if c == "(" else _token_end(src, i)
        q = _QUANT.match(src, j)
        qe = q.end() if q else j
        out.append((src[i:j], src[j:qe]))
        i = qe
    return out


def _alternatives(body: str) -> list[str]:
    """`body` split at its top-level "|"."""
    alts, depth, start = [], 0, 0
    for i, _ in _tokens(body):
        c = body[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            alts.append(body[start:i])
            start = i + 1
    alts.append(body[start:])
    return alts


def _group_body(atom: str) -> tuple[str, str]:
    """(kind, body) of a group atom: kind is "ahead", "behind" or "group"."""
    inner = atom[1:-1]
    if inner[:2] in ("?=", "?!"):
        return "ahead", inner[2:]
    if inner[:3] in ("?<=", "?<!"):
        return "behind", inner[3:]
    m = regex.match(r"\?(?:P<\w+>|<\w+>|[:>|]|[a-zA-Z]*-?[a-zA-Z]*:)", inner)
    return "group", inner[m.end():] if m else inner


def _optional(q: str) -> bool:
    return q[:1] in ("*", "?") or bool(regex.match(r"\{0*(?:,|\})|\{,", q))


_ZERO_WIDTH = {"^", "$", "\\b", "\\B", "\\A", "\\Z", "\\z", "\\G"}


def _atom_ends(atom: str) -> tuple[set[str] | None, bool]:
    """(probe characters the atom can end with, whether it can match nothing); None: zero width."""
    if atom in _ZERO_WIDTH:
        return None, True
    if atom.startswith("("):
        kind, body = _group_body(atom)
        if kind != "group":
            return None, True
        chars: set[str] = set()
        empty = False
        for alt in _alternatives(body):
            c, e = _ends(_atoms(alt) or [])
            chars |= c
            empty = empty or e
        return chars, empty
    try:
        return {c for c in _PROBES if regex.fullmatch(atom, c)}, False
    except regex.error:
        return set(_PROBES), False


def _ends(atoms: list[tuple[str, str]]) -> tuple[set[str], bool]:
    """Probe characters a sequence of atoms can end with, and whether it can match nothing."""
    out: set[str] = set()
    for atom, q in reversed(atoms):
        chars, empty = _atom_ends(atom)
        if chars is None:
            continue
        out |= chars
        if not (empty or _optional(q)):
            return out, False
    return out, True


def _starts(alt: str) -> set[str]:
    try:
        rx = regex.compile(f"(?:{alt})")
    except regex.error:
        return set(_PROBES)
    return {c for c in _PROBES if rx.match(c, partial=True)}


def _separator_problem(sep: list[tuple[str, str]], starts: set[str], colon: bool) -> str | None:
    """Why the text matched by `sep`, right before an address branch, does not pin its start."""
    last, _ = _ends(sep)
    shared = last & starts
    if shared:
        return (f"the field before the address group can end with {''.join(sorted(shared))!r}, which the "
                "address can start with: the address can swallow client-written text to its left")
    if not (colon and ":" in last):
        return None
    # The address (an IPv6 branch holds ':') stands after a ':' separator. That is only
    # unambiguous when the run before the ':' cannot hold ':' and is fenced off by a
    # character no address has: "N hex* :" (as chkuser's "host:address" is read).
    k = len(sep)
    while k and (sep[k - 1][0] == ":" or _atom_ends(sep[k - 1][0])[0] is None):
        k -= 1
    if k == len(sep):
        return "the field before the address group can end with ':', which the address's IPv6 branch also holds"
    before, _ = _ends(sep[:k])
    if ":" in before:
        return ("a field that can hold ':' stands before the ':' that separates the address: "
                "the address's IPv6 branch can run left over client-written text")
    if before & _HEX and starts & _HEX:
        j = k
        while j and ((c := _atom_ends(sep[j - 1][0])[0]) is None or c <= _HEX):
            j -= 1
        fence, _ = _ends(sep[:j])
        if j == k or fence & (_HEX | {":"}):
            return ("the field before the address's ':' separator can end with hex digits that an "
                    "IPv6 address can start with: the address can swallow client-written text to its left")
    return None


def _may_hold_colon(alt: str) -> bool:
    """Whether an address branch can match ':' (group syntax like "(?:" aside)."""
    return ":" in regex.sub(r"\(\?(?:P<\w+>|<\w+>|[:>|]|[a-zA-Z]*-?[a-zA-Z]*:)", "(", alt)


# Where the address group opens, in either spelling regex reads ("(?P<ip>", "(?<ip>"): a
# lint that looked for one only let a pattern written the other way pass unseen.
_IP_GROUP = regex.compile(r"(?<!\\)(?:\\\\)*\K\(\?P?<ip>")


def _ip_group(src: str) -> tuple[int, int]:
    """Where the address group opens in `src` and where its body begins; (-1, -1) without one."""
    m = _IP_GROUP.search(src)
    return (m.start(), m.end()) if m else (-1, -1)


def _boundary_problem(src: str) -> str | None:
    """(lint i) an address group whose IPv6 branch can take in text to its left."""
    at, body_at = _ip_group(src)
    if at < 0:
        return None
    body = src[body_at:_group_end(src, at) - 1]
    pre = src[:at]
    if pre.endswith("(?:IPv6:)?"):        # sendmail's literal prefix: 'I' is no address character
        pre = pre[:-len("(?:IPv6:)?")]
    pre_atoms = _atoms(pre)
    if pre_atoms is None:
        return "a top-level '|' before the address group: the start of the address cannot be checked"
    for alt in _alternatives(body):
        seps = [pre_atoms]
        rest = alt
        if alt.startswith("(?<="):
            end = _group_end(alt, 0)
            seps = [_atoms(a) or [] for a in _alternatives(alt[4:end - 1])]
            rest = alt[end:]
        for sep in seps:
            why = _separator_problem(sep, _starts(rest), _may_hold_colon(rest))
            if why:
                return why
    return None


def _bounded_guard(src: str) -> str | None:
    """(lint ii) a negative look-ahead that looks only so far: a longer line evades it."""
    for m in regex.finditer(r"(?<!\\)(?:\\\\)*\(\?!", src):
        start = m.end() - 3
        inner = src[start + 3:_group_end(src, start) - 1]
        for w in _WIDE_REPEAT.finditer(inner):
            if w.group("max"):
                return (f"bounded look-ahead guard ({w.group(0)} in (?!...)): a line longer than the bound "
                        "evades it; use .*? (lines are cut at max_line, and rules that read the line end "
                        "are not applied to cut lines) or a pattern that needs no guard")
    return None


def tail_reason(src: str) -> str | None:
    """Why a pattern's match depends on the end of the line ($, \\Z, \\b, a look-ahead), or None.

    Such a rule can match a line cut at max_line where the whole line would not
    (a guard that no longer sees the cut-off text, a `$` that meets the cut), so
    the parser never applies it to a cut line.
    """
    for i, _ in _tokens(src):
        c = src[i]
        if c == "\\" and src[i + 1:i + 2] in ("Z", "z", "b", "B"):
            return f"\\{src[i + 1]}"
        if c == "$":
            return "$"
        if c == "(" and (src.startswith("(?=", i) or src.startswith("(?!", i)):
            return "a look-ahead"
    return None


def _client_fields_before_ip(src: str) -> bool:
    """The address group comes after a wide field (a HELO, sender, recipient: longer than a host name)."""
    at = _ip_group(src)[0]
    if at < 0:
        return False
    pre = regex.sub(r"\(\?<?[=!](?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*\)", "", src[:at])
    return any(not w.group("max") or int(w.group("max")) > 255 for w in _WIDE_REPEAT.finditer(pre))


def lint_notes(rule: "Rule") -> list[str]:
    """What `rules check` should tell about a rule besides problems, each naming its id."""
    why = tail_reason(rule.regex.pattern.decode())
    if why is None:
        return []
    note = f"{rule.source}: rule {rule.id}: reads the line end ({why}): not applied to lines cut at max_line"
    if rule.has_ip and _client_fields_before_ip(rule.regex.pattern.decode()):
        note += " (its address comes after client-written fields: a cut line could show it another client)"
    return [note]


# ---- lint ------------------------------------------------------------------

_CATCH_ALL = regex.compile(r"(?<!\\)(?:\\\\)*(?:\.|\[\\s\\S\]|\[\\S\\s\]|\[\\w\\W\]|\[\\d\\D\])"
                           r"(?:[*+]|\{\d*,\d*\})")
_LOOKAROUND = regex.compile(r"\(\?<?[=!](?P<b>(?:[^()\\]|\\.|\((?&b)\))*)\)")


def lint_pattern(src: str) -> str | None:
    """Why a pattern is unsafe, or None.

    A `.*`-like catch-all before the address group lets a match run over text
    the client wrote and take an address from it, unless the pattern is
    anchored at the end of the line with no catch-all after the address
    (then the address is taken from the MTA's own trailing field; the parser
    never applies such a rule to a line cut at max_line).

    An address group right after a separator its IPv6 branch also matches
    (":" or a field that can end with ":" or a hex digit) can start further
    left, in text the client wrote ("h:x:2001:db8:dead:beef" as a HELO).

    A negative look-ahead guard that looks only N characters far is evaded
    by a line longer than N.
    """
    problems = [p for p in (_catch_all_problem(src), _boundary_problem(src), _bounded_guard(src)) if p]
    return "; ".join(problems) or None


def _catch_all_problem(src: str) -> str | None:
    src = _LOOKAROUND.sub("", src)        # zero width: consumes nothing before the address
    at = _ip_group(src)[0]
    if at < 0:
        return None
    if not _CATCH_ALL.search(src[:at]):
        return None
    tail = src[at:]
    if src.endswith("$") and not src.endswith("\\$") and not _CATCH_ALL.search(tail):
        return None
    return "greedy catch-all (.* or .+) before the address group; match the fields before the address exactly, or anchor the pattern at the line end with $"
