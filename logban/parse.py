"""Where a log line becomes an offence.

Pure: bytes in, `Offence` records out, no I/O. The parser works on chunks of
whole lines: it first looks for the rules' literal hints in the whole chunk
(one C-level scan), then parses the header and runs the anchored rule patterns
only on the lines that have a hint. Everything runs on bytes, so invalid UTF-8
and NUL bytes are just bytes; every line is cut at `max_line` and every rule
match has a time limit, so no line can stall the parser.
"""
from __future__ import annotations

import calendar
import ipaddress
import re
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from . import fast as _fast_extra
from .allow import special
from .rules import Rule, RuleSet
from .timelimit import GUARD

_MONTHS = {m.encode(): i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}

# Syslog header, RFC 3164 or ISO 8601 stamp (rsyslog high precision, journald
# short-iso), host, then the tag. The header is written by syslog, before any
# text the client chose, so the standard `re` is safe (and fast) here.
_SYSLOG = re.compile(
    rb"(?:<\d{1,3}>)?"
    rb"(?:(?P<bsd>(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?:[ 0-3]\d|[1-9]) [0-2]\d:[0-5]\d):(?P<sec>[0-6]\d)(?:\.\d{1,9})?"
    rb"|(?P<iso>\d{4}-\d\d-\d\d[T ][0-2]\d:[0-5]\d:[0-6]\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?))"
    # rsyslog templates that print the priority as text ("<mail.info>") put it before the host;
    # Solaris syslogd puts "[ID 123456 mail.notice]" after the tag.
    rb"(?: <[a-z0-9]{1,16}\.[a-z]{1,16}>)?"
    rb" (?P<host>[^ ]{1,255}) (?:(?P<prog>[\w./@-]{1,64})(?:\[(?P<pid>\d{1,10})\])?: (?:\[ID \d{1,12} [a-z0-9]{1,16}\.[a-z]{1,16}\] )?)?")
_RFC5424 = re.compile(
    rb"<\d{1,3}>1 (?P<iso>\S{1,64}) (?P<host>\S{1,255}) (?P<app>\S{1,48}) (?P<pid>\S{1,128}) \S{1,32} "
    rb"(?:-|(?:\[(?:[^\]\\]|\\.){0,4096}\])+) ?(?:\xef\xbb\xbf)?")
_TAI64N = re.compile(rb"@(4[0-9a-f]{15})([0-9a-f]{8}) ")
_TAG = re.compile(rb"(?P<prog>[\w./@-]{1,64})(?:\[(?P<pid>\d{1,10})\])?: ")
_SPLOGGER = re.compile(rb"\d{9,11}\.\d{6} ")

# A chunk holding one of these may have messages without ": " before them (see `_hits`).
ANYWHERE = (b"\n<", b": [ID ")

SUSPICIOUS = re.compile(rb"(?i)reject|denied|fail|warning|blocked|listed|attack|illegal|refused")

# Where an MTA writes the reply it gave, before any text the client chose: right after the
# client field of a Postfix reject (matched at the message start), or sendmail's "reject=".
_REPLY_POSTFIX = re.compile(
    rb"(?:NOQUEUE|[0-9A-Za-z]{5,20}): (?:milter-)?reject: [A-Z-]{3,16} from [^\s\[\]]{0,255}\[[^\]\s]{1,64}\](?::\d{1,5})?: "
    rb"([245])\d\d[ -]")
_REPLY_SENDMAIL = re.compile(rb", reject=([245])\d\d[ -]")
# sendmail's own check line: only there is ", reject=" the MTA's (elsewhere it is client text)
_SENDMAIL_CHECK = re.compile(rb"(?:[0-9A-Za-z]{6,20}: |NOQUEUE: )?ruleset=\w{1,32}, ")

_LIMIT = 200_000          # entries kept in each correlation or cache table
_IP_CACHE = 20_000        # raw address -> canonical: a miss costs a microsecond, an entry 150 bytes
_TIME_MAX = 253_402_300_799   # 9999-12-31T23:59:59Z


@dataclass(slots=True)
class Offence:
    time: float           # seconds since the epoch, UTC
    ip: str               # canonical address
    mta: str              # the rule pack
    rule: str
    kind: str
    score: float
    file: str
    line: int             # 1-based line number in `file`
    raw: bytes = b""      # the log line (cut at max_line)
    name: str | None = None   # client name the MTA verified (forward-confirmed), else None
    reply: int = 0        # class of the MTA's SMTP reply: 4 (try later), 5 (refused), 0 (none in the line)

    @property
    def iso_time(self) -> str:
        return iso(self.time)


def iso(t: float) -> str:
    try:
        d = datetime.fromtimestamp(t, timezone.utc)
    except (OverflowError, ValueError, OSError, TypeError):
        return repr(t)                  # a store row no logban wrote: shown, not a crash
    return d.strftime("%Y-%m-%dT%H:%M:%S") + (f".{d.microsecond:06d}" if d.microsecond else "") + "Z"


@dataclass
class ParseStats:
    lines: int = 0                 # lines in the input
    candidates: int = 0            # lines with a hint, on which rules ran
    offences: int = 0
    no_header: int = 0             # candidate lines whose header was not understood
    bad_address: int = 0           # a rule matched, but its address field was no address
    timeouts: int = 0              # rule matches stopped by the time limit
    truncated: int = 0             # lines longer than max_line
    truncated_skipped: int = 0     # cut lines on which rules that read the line end were not applied
    not_target: int = 0            # a rule's address can never be banned (unspecified, multicast, link-local, ...)
    unresolved: int = 0            # keyed offences whose key never met an address
    repeated: int = 0              # summary lines whose session's offences were counted already
    hits: Counter = field(default_factory=Counter)   # rule id -> matches (links too)

    def add(self, other: ParseStats) -> None:
        """Another parser's counts added to these (several logs read apart, reported as one)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def reply_class(line: bytes, start: int = 0) -> int:
    """4 or 5: the class of the SMTP reply the MTA logged on `line` (its message at `start`);
    0 when it logged none. sendmail writes the reply after text the client chose (arg1): a
    permanent reply anywhere wins, so that text can make an offence weigh more, never less."""
    m = _REPLY_POSTFIX.match(line, start)
    if m is not None:
        return int(m.group(1)) if m.group(1) != b"2" else 0
    got = 0
    if _SENDMAIL_CHECK.match(line, start):
        for m in _REPLY_SENDMAIL.finditer(line, start):
            c = m.group(1)
            if c == b"5":
                return 5
            if c == b"4":
                got = 4
    return got


def not_target(ip: str) -> bool:
    """A canonical address that is never a ban target: unspecified or "this network" (0/8),
    IPv4-compatible (::/96), multicast, link-local, broadcast. Loopback is a target here:
    reports count it as allow-listed, further down."""
    got = _address(ip)
    return got is not None and _not_target(got[1], got[2])


def _not_target(version: int, num: int) -> bool:
    loopback = num >> 24 == 127 if version == 4 else num == 1
    return not loopback and special(version, num, 32 if version == 4 else 128)


def canonical_ip(raw: str) -> str | None:
    """The contract's spelling: IPv6 compressed lower case, IPv4-mapped as IPv4, no zone."""
    got = _address(raw)
    return got[0] if got is not None else None


_MAPPED = bytes(10) + b"\xff\xff"
_COMPAT = bytes(12)


def _address(raw: str) -> tuple[str, int, int] | None:
    """(canonical text, version, number) of an address, or None for no address.

    The C parser (inet_pton, inet_ntop) first: a distributed attack brings a new address
    on every line, and ipaddress costs ten times more. inet_ntop writes what ipaddress
    writes (RFC 5952) except for IPv4-compatible addresses, left to ipaddress, as is any
    form the C parser does not read."""
    s = raw if "%" not in raw else raw[:raw.index("%")]
    if s[:5].lower() == "ipv6:":
        s = s[5:]
    try:
        if ":" not in s:
            return s, 4, int.from_bytes(socket.inet_pton(socket.AF_INET, s))
        packed = socket.inet_pton(socket.AF_INET6, s)
    except (OSError, ValueError):       # ValueError: an embedded NUL
        return _address_slow(s)
    if packed[:12] == _MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:]), 4, int.from_bytes(packed[12:])
    if packed[:12] == _COMPAT:
        return _address_slow(s)
    return socket.inet_ntop(socket.AF_INET6, packed), 6, int.from_bytes(packed)


def _address_slow(s: str) -> tuple[str, int, int] | None:
    try:
        a = ipaddress.ip_address(s)
    except ValueError:
        return None
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return str(a), a.version, int(a)


class Clock:
    """Turns header stamps into epoch seconds; infers the year RFC 3164 leaves out."""

    def __init__(self, tz: str | None = None, reference: float | None = None) -> None:
        self.zone = ZoneInfo(tz) if tz else None
        self.reference = reference if reference is not None else time.time()
        self._cache: dict[bytes, float | None] = {}
        self.last: float | None = None      # the latest RFC 3164 stamp read: which pass of a repeated hour
        self.ambiguous = False              # a stamp in a repeated hour was read: it depended on `last`

    def adopt(self, old: Clock) -> None:
        self.last = old.last

    def set_reference(self, reference: float) -> None:
        self.reference = reference
        self._cache.clear()

    def _local(self, y: int, mo: int, d: int, h: int, mi: int, s: float, fold: int = 0) -> float:
        # A naive datetime is local time, and unlike mktime says which pass of a repeated hour.
        return datetime(y, mo, d, h, mi, int(s), int((s - int(s)) * 1e6), tzinfo=self.zone, fold=fold).timestamp()

    def bsd(self, minute: bytes, sec: bytes) -> float | None:
        """`minute` is "Mmm dd hh:mm" (time zone changes fall on whole minutes)."""
        t = self._cache.get(minute)
        if t is None:
            if minute in self._cache:
                return None
            t, ambiguous = self._bsd(minute)
            if ambiguous:               # a repeated hour's minutes depend on the lines before
                self.ambiguous = True
            else:
                if len(self._cache) > _LIMIT:
                    self._cache.clear()
                self._cache[minute] = t
            if t is None:
                return None
        t += min(int(sec), 59)
        if self.last is None or t > self.last:
            self.last = t
        return t

    def _bsd(self, stamp: bytes) -> tuple[float | None, bool]:
        """Epoch seconds of the minute, and whether it is in a repeated (DST fall-back) hour."""
        mo = _MONTHS[stamp[:3]]
        d, h, mi, s = int(stamp[4:6]), int(stamp[7:9]), int(stamp[10:12]), 0
        # The reference's year where the stamps were written (in Sydney the new year starts
        # while it is still the old one in UTC). A line stamped more than two days after the
        # reference is from the year before: December lines read in January, or a log read
        # long after; a line just after a New Year the reference has not reached is not.
        ref_year = datetime.fromtimestamp(self.reference, self.zone).year
        for y in range(ref_year + 1, ref_year - 5, -1):
            try:
                t = self._local(y, mo, d, h, mi, s)
            except (ValueError, OverflowError):
                continue                     # 29 February of a common year
            if t <= self.reference + 2 * 86400:
                later = self._local(y, mo, d, h, mi, s, fold=1)
                if later == t:
                    return t, False
                # The hour after a fall-back is written twice. Its second pass is the later
                # instant: once the log has gone past the first pass by more than a minute,
                # and the later instant is not ahead of the reference.
                second = self.last is not None and self.last > t + 60 and later <= self.reference + 60
                return (later if second else t), True
        return None, False

    def iso(self, stamp: bytes) -> float | None:
        if not stamp.isascii():
            return None             # an RFC 5424 stamp is any non-space bytes: not a time
        text = stamp.decode("ascii").replace(",", ".").replace(" ", "T")
        head, sep, frac = text[:19], text[19:20], ""
        rest = text[19:]
        if sep == ".":
            digits = rest[1:]
            end = next((i for i, c in enumerate(digits) if not c.isdigit()), len(digits))
            frac, rest = digits[:end], digits[end:]
        try:
            d = datetime.fromisoformat(head + (f".{frac[:6].ljust(6, '0')}" if frac else ""))
        except ValueError:
            return None
        if rest in ("", "-"):
            if self.zone is None:
                return time.mktime(d.timetuple()) + d.microsecond / 1e6
            return d.replace(tzinfo=self.zone).timestamp()
        if rest == "Z":
            return calendar.timegm(d.timetuple()) + d.microsecond / 1e6
        m = re.fullmatch(r"([+-])(\d\d):?(\d\d)", rest)
        if not m:
            return None
        off = (int(m.group(2)) * 3600 + int(m.group(3)) * 60) * (1 if m.group(1) == "+" else -1)
        return calendar.timegm(d.timetuple()) + d.microsecond / 1e6 - off

    @staticmethod
    def tai64n(secs_hex: bytes, nanos_hex: bytes) -> float:
        # daemontools writes 2^62 + 10 + Unix time (it ignores leap seconds).
        return int(secs_hex, 16) - (1 << 62) - 10 + int(nanos_hex, 16) / 1e9


@dataclass(slots=True)
class Header:
    time: float
    host: bytes
    program: str
    pid: bytes
    start: int            # where the message begins in the line


_PROGRAMS: dict[bytes, str] = {}


def _program(raw: bytes) -> str:
    got = _PROGRAMS.get(raw)
    if got is None:
        got = raw.decode("ascii")
        if len(_PROGRAMS) < 10_000:
            _PROGRAMS[raw] = got
    return got


def parse_header(line: bytes, clock: Clock) -> Header | None:
    """The stamp, host, program and pid of a log line, and where its message begins."""
    got = _header(line, clock)
    return None if got is None else Header(*got)


def _header(line: bytes, clock: Clock) -> tuple[float, bytes, str, bytes, int] | None:
    """`parse_header` as a plain tuple (time, host, program, pid, start): the parser's hot path."""
    # The syslog header first: nearly every line has one, and it never takes a line of the
    # other shapes (after its optional "<pri>" it needs a month or a year-month-day).
    m = _SYSLOG.match(line)
    if m is not None:
        minute, sec, stamp, host, prog, pid = m.groups()
        if minute and len(minute) == 11:
            minute = minute[:4] + b" " + minute[4:]     # "Aug 3": a template that does not pad the day
        t = clock.bsd(minute, sec) if minute else clock.iso(stamp)
        if t is None:
            return None
        pos = m.end()
        program = _program(prog) if prog else ""
        pid = pid or b""
    elif line[:1] == b"@":
        m = _TAI64N.match(line)
        if not m:
            return None
        t, host, pos = Clock.tai64n(m.group(1), m.group(2)), b"", m.end()
        program, pid = "", b""
        tag = _TAG.match(line, pos)
        if tag:
            program, pid, pos = tag.group("prog").decode("ascii"), tag.group("pid") or b"", tag.end()
    elif line[:1] == b"<" and (m5 := _RFC5424.match(line)):
        t = clock.iso(m5.group("iso"))
        if t is None:
            return None
        app, pid = m5.group("app"), m5.group("pid")
        return (t, m5.group("host"), "" if app == b"-" else app.decode("ascii", "replace"),
                b"" if pid == b"-" else pid, m5.end())
    else:
        return None
    if line[pos:pos + 1].isdigit() and (sp := _SPLOGGER.match(line, pos)):
        # splogger: "qmail: 1668902400.123456 tcpserver: pid 5 ..."
        pos = sp.end()
        inner = _TAG.match(line, pos)
        if inner:
            program, pid, pos = inner.group("prog").decode("ascii"), inner.group("pid") or pid, inner.end()
        else:
            program = ""
    return t, host, program, pid, pos


def _groups(r: Rule) -> tuple[int, int, int, int]:
    """The numbers of the groups `_found` reads: address, verified name, forged mark and key
    (0: not read; the key 0 is the syslog pid). By number, as `regex` looks a name up by
    first trying it as a number and formatting the error it catches: 0.5 µs a call."""
    gi = r.regex.groupindex
    return (gi["ip"] if r.has_ip else 0, gi.get("name", 0) if r.has_name else 0,
            gi.get("forged", 0), gi["key"] if r.key == "group" else 0)


# What `Parser.apply` does with a match of a rule (`_how`).
_LINK, _KEYED = 0, 1            # a link; an offence whose line names a queue id or pid, not the client
_OWN, _RATE, _SESSION = 2, 3, 4     # an offence of the address on its line: as it is; counted per
                                    # window; noted for the session a summary may repeat


def _how(r: Rule) -> int:
    if r.link:
        return _LINK
    if r.key is not None and not r.has_ip:
        return _KEYED
    if r.session or r.repeats:
        return _SESSION
    return _RATE if r.rate_over else _OWN


def file_label(name: str) -> str:
    """A file's name as its offences carry it: a name that is no UTF-8 (os.fsdecode's
    surrogates) written with \\x escapes, which any database and JSON take."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Parser:
    """Turns chunks of log lines into offences, keeping the state correlation needs."""

    def __init__(self, rules: RuleSet, *, clock: Clock | None = None, max_line: int = 8192,
                 match_timeout: float = 0.05, any_program: bool = False,
                 collect_suspicious: int = 0, rate_prefix6: int = 64,
                 rate_key: Callable[[str, str | None, float], str | None] | None = None,
                 fast: bool | None = None) -> None:
        """`rate_key(ip, name, time)`: what a rate rule counts a client's matches for (the
        scorer's target), None for a client never counted (allow-listed); without it an
        IPv4 address, or an IPv6 address's /rate_prefix6 network. `fast`: the pre-filter
        runs in Hyperscan (the `logban[fast]` extra) when True, in Python when False; None:
        Hyperscan when it is installed and LOGBAN_FAST is not 0 (see logban/fast.py)."""
        self.rules = rules
        self.clock = clock or Clock()
        self.max_line = max_line
        self.timeout = match_timeout
        self._guarded = False       # this parser's matches are bounded by the timer (GUARD) now
        # The stateless stage reads the reply class of the offences it finds (see `_line`); off
        # in a report's workers, whose matches go without their lines and so without a reply.
        self.replies = True
        self.any_program = any_program          # --mta: the user named the pack
        self.stats = ParseStats()
        self._file = "-"
        self.suspicious: list[tuple[str, int, bytes]] = []
        self._suspicious_max = collect_suspicious
        # Bounded tables, oldest first. OrderedDict, not dict: popping a dict's first entry
        # leaves a hole that the next `next(iter(d))` walks over, so evicting one entry per
        # new one costs time quadratic in the entries evicted (a minute at a million
        # distinct offenders); popitem(last=False) costs the same each time.
        self._links: OrderedDict[tuple, tuple[str, str | None]] = OrderedDict()
        self._said: OrderedDict[tuple, str] = OrderedDict()     # session -> the client of an offence its summary would repeat
        self._pending: OrderedDict[tuple, list[Offence]] = OrderedDict()
        self._pending_n = 0
        self._earlier = {r.pack for r in rules.rules if r.link and r.resolves == "earlier"}
        self._ip_cache: dict[bytes, str] = {}       # raw -> canonical address, "" for no ban target
        self._applies: dict[str, frozenset[int]] = {}
        self._plans: dict[tuple, list[tuple]] = {}     # (hint id or ids, program) -> what `_line` tries
        self._how = {r.order: (r, _how(r)) for r in rules.rules}     # rule order -> (rule, what `apply` does)
        if not 0 <= rate_prefix6 <= 128:
            raise ValueError(f"rate_prefix6 must be 0..128, not {rate_prefix6}")
        self.rate_prefix6 = rate_prefix6
        self._rate_key = rate_key
        # (rule, scoring target) -> [window start, count], oldest first: a flood of new
        # keys evicts the oldest windows, never the whole table.
        self._rates: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._rate_nets: dict[str, str] = {}        # IPv6 address -> its /rate_prefix6 network
        self._build_prefilter(rules.rules, fast)

    # ---- pre-filter -------------------------------------------------------
    def _build_prefilter(self, rules: list[Rule], fast: bool | None = None) -> None:
        def merge(hints: dict[bytes, list[Rule]], covers) -> dict[bytes, list[Rule]]:
            out: dict[bytes, list[Rule]] = {}
            for h in sorted(hints, key=len):
                home = next((k for k in out if covers(k, h)), h)
                out.setdefault(home, []).extend(hints[h])
            return out

        leads: dict[bytes, list[Rule]] = {}
        finds: dict[bytes, list[Rule]] = {}
        for r in rules:
            (leads if r.lead else finds).setdefault(r.hint, []).append(r)
        leads = merge(leads, lambda short, long: long.startswith(short))
        finds = merge(finds, lambda short, long: short in long)
        self._hint_rules: list[list[Rule]] = []
        # ": lead" -> hint id. No capturing groups: they make `re` three times slower here.
        # No lead is a prefix of another, so at most one matches at any position.
        self._lead_ids: dict[bytes, int] = {}
        for h, rs in leads.items():
            self._lead_ids[b": " + h] = len(self._hint_rules)
            self._hint_rules.append(rs)
        self._fast = (re.compile(b"|".join(re.escape(h) for h in self._lead_ids))
                      if self._lead_ids else None)
        self._finds: list[tuple[bytes, int]] = []
        for h, rs in finds.items():
            self._finds.append((h, len(self._hint_rules)))
            self._hint_rules.append(rs)
        self._lead_finds = [(h[2:], i) for h, i in self._lead_ids.items()]
        # Where another lead can begin inside a lead (": warning: " holds ": " at 9): the
        # regex finds leads without overlap, and a line's second lead must not be lost there.
        self._inner: dict[bytes, tuple[int, ...]] = {}
        for h in self._lead_ids:
            inner = tuple(k for k in range(1, len(h)) if h[k:k + 2] in (b": ", b":"))     # b":": the last byte
            if inner:
                self._inner[h] = inner
        self._combo: dict[tuple[int, ...], list[Rule]] = {}
        self.hyperscan = _fast_extra.scanner(self._lead_ids, self._finds, fast)

    def _hits(self, chunk: bytes) -> dict[int, list[int]]:
        """Line start -> ids of the hints found on that line."""
        # RFC 5424 puts no ": " before the message, Solaris puts its "[ID n fac.lvl] "
        # there: then leads are looked for anywhere.
        if self.hyperscan is not None:
            hs = self.hyperscan
            return hs.hits(chunk, chunk[:1] == b"<" or hs.holds(chunk, ANYWHERE))
        anywhere = chunk[:1] == b"<" or any(s in chunk for s in ANYWHERE)
        cand: dict[int, list[int]] = {}
        if self._fast is not None:
            if anywhere:
                self._find_into(chunk, self._lead_finds, cand)
            else:
                ids, inner = self._lead_ids, self._inner
                rfind, find = chunk.rfind, chunk.find
                le = -1             # the end of the last lead's line: its start is found once per line
                got: list[int] = []
                for m in self._fast.finditer(chunk):
                    if m.start() >= le:
                        ls = rfind(b"\n", 0, m.start()) + 1
                        le = find(b"\n", m.start())
                        if le < 0:
                            le = len(chunk)
                        got = cand.setdefault(ls, [])
                    lead = m.group()
                    hid = ids[lead]
                    if hid not in got:
                        got.append(hid)
                    if lead in inner:
                        self._overlapping(chunk, m.start(), lead, got)
        self._find_into(chunk, self._finds, cand)
        return cand

    def _overlapping(self, chunk: bytes, start: int, lead: bytes, got: list[int]) -> None:
        """Hint ids of the leads that begin inside the lead at `start` (and inside those)."""
        todo = [(start, lead)]
        while todo:
            at, lead = todo.pop()
            for k in self._inner[lead]:
                m = self._fast.match(chunk, at + k)
                if m is not None:
                    hid = self._lead_ids[m.group()]
                    if hid not in got:
                        got.append(hid)
                    if m.group() in self._inner:
                        todo.append((at + k, m.group()))

    @staticmethod
    def _find_into(chunk: bytes, finds: list[tuple[bytes, int]], cand: dict[int, list[int]]) -> None:
        find, rfind = chunk.find, chunk.rfind
        for h, hid in finds:
            i = find(h)
            while i >= 0:
                ls = rfind(b"\n", 0, i) + 1
                got = cand.setdefault(ls, [])
                if hid not in got:
                    got.append(hid)
                nl = find(b"\n", i)
                if nl < 0:
                    break
                i = find(h, nl + 1)

    def _rules_for(self, ids: list[int]) -> list[Rule]:
        if len(ids) == 1:
            return self._hint_rules[ids[0]]
        key = tuple(sorted(ids))
        rs = self._combo.get(key)
        if rs is None:
            rs = sorted({r.order: r for i in key for r in self._hint_rules[i]}.values(), key=lambda r: r.order)
            self._combo[key] = rs
        return rs

    def _allowed(self, program: str) -> frozenset[int]:
        got = self._applies.get(program)
        if got is None:
            got = frozenset(r.order for r in self.rules.rules if self.any_program or r.applies_to(program))
            if len(self._applies) > 10_000:
                self._applies.clear()
            self._applies[program] = got
        return got

    # ---- lines ------------------------------------------------------------
    # A chunk goes through two stages. `match` is pure per line (header, rules, addresses):
    # it may run in another process on another part of the file. `apply` keeps the state
    # that spans lines (links, waiting offences, rate windows) and runs in line order, in
    # one process, so a file read in parts gives what it gives read whole.
    @property
    def file(self) -> str:
        """The name of the file being read, as offences carry it."""
        return self._file

    @file.setter
    def file(self, name: str) -> None:
        self._file = file_label(name)

    def feed(self, chunk: bytes, lines_before: int) -> list[Offence]:
        """Offences in `chunk` (whole lines); `lines_before` lines of the file precede it."""
        hits, matched = self.match(chunk, lines_before)
        if self._suspicious_max:
            self._collect_suspicious(chunk, lines_before, matched)
        return self.apply(hits)

    def match(self, chunk: bytes, lines_before: int) -> tuple[list[tuple], set[int]]:
        """The stateless stage: (line number, time, line, matches) for each line a rule took,
        `matches` being (rule order, address, key, name, message start, reply class or None) of
        its links in rule order, then of its best offence rule; and the starts of those lines."""
        stats = self.stats
        cand = self._hits(chunk)
        stats.candidates += len(cand)
        out: list[tuple] = []
        matched: set[int] = set()
        # Whether this call armed the timer, not whether it is armed: the guard is the
        # process's, and a parse in another thread while the main thread's is guarded must
        # keep regex's own limit and leave the guard alone.
        self._guarded = GUARD.arm(self.timeout)
        try:
            counted, pos = self._lines(chunk, cand, lines_before, out, matched)
        finally:
            if self._guarded:
                self._guarded = False
                GUARD.disarm()
        # The newlines up to the last candidate were counted on the way (one pass, not two:
        # bytes.count is a plain byte loop, 0.4 ms a MiB).
        stats.lines += counted + chunk.count(b"\n", pos) + (1 if chunk and not chunk.endswith(b"\n") else 0)
        return out, matched

    def _lines(self, chunk: bytes, cand: dict[int, list[int]], lines_before: int,
               out: list[tuple], matched: set[int]) -> tuple[int, int]:
        """Match the candidate lines into `out`; the newlines counted, and where counting stopped."""
        stats = self.stats
        pos, lineno = 0, lines_before
        count, find = chunk.count, chunk.find
        handle, max_line = self._line, self.max_line
        for ls, ids in sorted(cand.items()):
            lineno += count(b"\n", pos, ls)
            pos = ls
            le = find(b"\n", ls)
            if le < 0:
                le = len(chunk)
            # A line of exactly max_line bytes may be one the reader (sources.chunks,
            # the follower) already cut there: it counts as cut too.
            cut = le - ls >= max_line
            if cut:
                le = ls + max_line
                stats.truncated += 1
            line = chunk[ls:le]
            if line.endswith(b"\r"):
                line = line[:-1]
            got = handle(line, ids[0] if len(ids) == 1 else tuple(sorted(ids)), cut)
            if got is not None:
                matched.add(ls)
                out.append((lineno + 1, got[0], line, got[1]))
        return lineno - lines_before, pos

    def apply(self, hits: list[tuple], lines_before: int = 0) -> list[Offence]:
        """The stage with state, in line order: links, waiting offences, rate windows.
        `lines_before`: lines before the part `hits` were numbered in."""
        out: list[Offence] = []
        emit = out.append
        how, stats, file = self._how, self.stats, self._file
        over_rate, repeated = self._over_rate, self._repeated
        # The main process runs this for every match the workers found (a third of them
        # `connect from` lines for a rate rule): the offences of the address on their own
        # line, nearly all of them, are made here, without a call per match.
        for lineno, t, line, found in hits:
            for order, ip, key, name, start, reply in found:
                r, mode = how[order]
                if mode >= _OWN:
                    if not ip:
                        if ip == "":
                            stats.not_target += 1
                        continue
                    if mode != _OWN:
                        # Only rules a summary repeats are noted: any other keyed rule filled the table
                        # to its bound for nothing (75 MB at a million distinct offenders).
                        if mode == _SESSION and key is not None and repeated(r, key, ip):
                            stats.repeated += 1
                            continue
                        if r.rate_over and not over_rate(r, ip, name, t):
                            continue
                    # Without its line (a report's matches come without them) there is no reply to read.
                    emit(Offence(t, ip, r.pack, r.id, r.kind, r.score, file, lineno + lines_before, line, name,
                                 (reply_class(line, start) if reply is None else reply) if line else 0))
                elif mode == _LINK:
                    self._link(r, ip, key, name, out)
                else:
                    self._keyed(r, key, start, reply, t, line, lineno + lines_before, out)
        stats.offences += len(out)
        return out

    def _line(self, line: bytes, hints: int | tuple[int, ...], cut: bool = False) -> tuple[float, list[tuple]] | None:
        """Apply the rules of the hints found on one line (a hint id, or their sorted ids): its
        time and what matched, None when nothing did; `cut`: the line was cut at max_line.

        A rule whose match reads the line end (`Rule.tail`: a `$`, a look-ahead
        guard) is never applied to a cut line: what the cut removed (the MTA's own
        field, a second copy the guard looks for) could change what it takes.
        Rules that read the client field first need no end and still apply.
        """
        h = _header(line, self.clock)
        if h is None or not 0 <= h[0] <= _TIME_MAX:       # year 9999 or a tai64n of another era
            self.stats.no_header += 1
            return None
        t, host, program, pid, start = h
        plan = self._plans.get((hints, program))
        if plan is None:
            plan = self._plan(hints, program)
        guard = GUARD if self._guarded else None
        find = line.find
        best: Rule | None = None
        best_m = best_gi = None
        found: list[tuple] = []
        skipped = False
        for match, needle, link, score, tail, r, gi in plan:
            if needle and find(needle) < 0:
                continue
            if best is not None and not link and score <= best.score:
                continue            # it could not win: the first rule with the highest score takes the line
            if cut and tail:
                skipped = True
                continue
            try:
                if guard is not None:       # the interval timer bounds the match (logban/timelimit.py)
                    guard.serial += 1
                    guard.busy = True
                    m = match(line, start)
                    guard.busy = False
                else:
                    # timeout by keyword: regex's documented signature leaves out `partial`, and a
                    # positional timeout read as `partial` would switch the limit off unseen
                    m = match(line, start, timeout=self.timeout)
            except TimeoutError:
                if guard is not None:
                    guard.busy = False
                self.stats.timeouts += 1
                continue
            if m is None:
                continue
            self.stats.hits[r.id] += 1
            if link:
                found.append(self._found(r, m, gi, host, pid, start, None))
            elif best is None or score > best.score:
                best, best_m, best_gi = r, m, gi
        if skipped:
            self.stats.truncated_skipped += 1
        if best is not None:
            # The reply is read here, where the lines are matched (in the workers of scan --apply,
            # not the main process, which applies every match in turn): for a rule whose
            # matches nearly all become offences. A rate rule's is read by `apply`, for the
            # few matches it emits.
            reply = reply_class(line, start) if self.replies and not best.rate_over else None
            found.append(self._found(best, best_m, best_gi, host, pid, start, reply))
        return (t, found) if found else None

    def _plan(self, hints: int | tuple[int, ...], program: str) -> list[tuple]:
        """The rules of these hints that apply to lines of `program`, in rule order, as
        (match, needle, link, score, tail, rule, group numbers): what `_line` reads of each, unpacked once."""
        allowed = self._allowed(program)
        rules = self._hint_rules[hints] if isinstance(hints, int) else self._rules_for(list(hints))
        plan = [(r.regex.match, r.needle, r.link, r.score, r.tail, r, _groups(r)) for r in rules if r.order in allowed]
        if len(self._plans) > 10_000:
            self._plans.clear()          # a flood of program names: a cache, clearing it loses nothing
        self._plans[hints, program] = plan
        return plan

    def _found(self, r: Rule, m, gi: tuple[int, int, int, int], host: bytes, pid: bytes, start: int,
               reply: int | None) -> tuple:
        """(rule order, address, key, name, message start, reply class) of a match: plain
        data, for the stateful stage. `reply` None: not read yet (the stateful stage reads it
        at the message start for an offence it emits: most rate-rule lines never become
        one). `gi`: `_groups(r)`."""
        ip_i, name_i, forged_i, key_i = gi
        ip = name = None
        if ip_i:
            raw = m.group(ip_i)
            ip = self._ip_cache.get(raw)        # most lines: a client seen before
            if ip is None:
                ip = self._ip(raw)
            if name_i and ip is not None:
                raw = m.group(name_i)
                # Postfix's "unknown" and sendmail's "(may be forged)" are no verified name.
                if raw and raw != b"unknown" and not (forged_i and m.group(forged_i)):
                    name = raw.decode("ascii", "replace").lower()
        if r.key is not None:
            k = pid if key_i == 0 else m.group(key_i)
            # None: a user's key group that took no part in the match: no key, so the line
            # is tied to no other (keyless lines of different sessions are not one session).
            key = None if k is None else (host, r.pack, k)
        elif r.session or r.repeats:
            key = (host, r.pack, pid)       # the session a summary line repeats
        else:
            key = None
        return (r.order, ip, key, name, start, reply)

    def _ip(self, raw: bytes | None) -> str | None:
        """The canonical address, "" when it can never be a ban target, None when it is no address
        (`raw` None: a user's address group that took no part in the match, optional or in
        another branch: a crash there would stop the scan or the daemon at that log line).

        The verdict is cached per raw bytes, so the check costs one dict look-up."""
        got = None if raw is None else _address(raw.decode("ascii", "replace"))
        if got is None:
            self.stats.bad_address += 1
            return None
        ip = "" if _not_target(got[1], got[2]) else got[0]
        if len(self._ip_cache) > _IP_CACHE:
            self._ip_cache.clear()
        self._ip_cache[raw] = ip
        return ip

    def _rate_target(self, ip: str) -> str:
        """What a rate counter is kept for: an IPv4 address, or an IPv6 address's /rate_prefix6
        network (the scorer's target), so rotating addresses inside one /64 count together."""
        if ":" not in ip:
            return ip
        net = self._rate_nets.get(ip)
        if net is None:
            net = ipaddress.IPv6Network((ip, self.rate_prefix6), strict=False).with_prefixlen
            if len(self._rate_nets) > _LIMIT:
                self._rate_nets.clear()          # a cache: clearing it loses no count
            self._rate_nets[ip] = net
        return net

    def _over_rate(self, r: Rule, ip: str, name: str | None, t: float) -> bool:
        """Count one match of a rate rule; True once per window when the count passes `rate_over`."""
        target = self._rate_target(ip) if self._rate_key is None else self._rate_key(ip, name, t)
        if target is None:
            return False
        k = (r.id, target)
        rates = self._rates
        w = rates.get(k)
        if w is None:
            while len(rates) >= _LIMIT:
                rates.popitem(last=False)        # the oldest window goes, never all of them
            rates[k] = [t, 1]
            return r.rate_over < 1
        rates.move_to_end(k)                     # the newest go last
        if t - w[0] > r.rate_per:
            w[0], w[1] = t, 1
            return r.rate_over < 1
        w[1] += 1
        if w[1] > r.rate_over:
            w[0], w[1] = t, 0      # the next offence needs a whole new period's worth
            return True
        return False

    def _keyed(self, r: Rule, key: tuple | None, start: int, reply: int | None, t: float, line: bytes,
               lineno: int, out: list[Offence]) -> None:
        """An offence of a rule whose line names a queue id or pid, not the client: the
        client its key was linked to, or it waits for a link to come (or is given up)."""
        if key is None:
            self.stats.unresolved += 1      # no key (see `_found`): no link can name the client
            return
        ip, name = self._links.get(key, (None, None))
        o = Offence(t, ip or "", r.pack, r.id, r.kind, r.score, self._file, lineno, line, name,
                    (reply_class(line, start) if reply is None else reply) if line else 0)
        if ip == "":
            self.stats.not_target += 1
        elif ip is not None:
            out.append(o)
        elif r.pack in self._earlier:
            self._pending.setdefault(key, []).append(o)
            self._pending_n += 1
            while self._pending_n > _LIMIT:
                _, old = self._pending.popitem(last=False)
                self._pending_n -= len(old)
                self.stats.unresolved += len(old)
        else:
            self.stats.unresolved += 1

    def _repeated(self, r: Rule, key: tuple, ip: str) -> bool:
        """Note an offence of a rule a summary repeats; whether a summary repeats one noted.
        One entry per session (an smtpd pid serves one client at a time): a new client on
        the same pid is a new session, and its note replaces one whose summary never came
        (the table stays as small as the pids in use, not the clients seen)."""
        said = self._said
        if r.repeats:
            return said.pop(key, None) == ip
        said[key] = ip
        said.move_to_end(key)
        if len(said) > _LIMIT:
            said.popitem(last=False)
        return False

    def _link(self, r: Rule, ip: str | None, key: tuple | None, name: str | None, out: list[Offence]) -> None:
        if key is None:
            return                      # no key (see `_found`): nothing to tie
        self._links.pop(key, None)      # a key seen again (a pid reused) no longer means the old client
        if ip is None:
            return
        # "": no ban target; offences keyed to it are counted, not emitted. The name the MTA
        # verified on the link line goes with them (an allow-listed partner stays one).
        self._links[key] = (ip, name)
        if len(self._links) > _LIMIT:
            self._links.popitem(last=False)
        if r.resolves == "earlier":
            for o in self._pending.pop(key, ()):
                self._pending_n -= 1
                if ip == "":
                    self.stats.not_target += 1
                    continue
                o.ip, o.name = ip, name
                out.append(o)

    def adopt(self, old: Parser) -> None:
        """Carry what `old` is in the middle of (queue-id and pid links, offences waiting for
        their client, rate windows, statistics) over to this parser: a reload must not forget
        a session that began before it."""
        self._links, self._pending, self._pending_n = old._links, old._pending, old._pending_n
        self._rates, self._said = old._rates, old._said
        self.stats = old.stats
        self.clock.adopt(old.clock)

    def finish(self) -> None:
        """End of input: keyed offences still waiting for an address are given up."""
        self.stats.unresolved += self._pending_n
        self._pending.clear()
        self._pending_n = 0

    def _collect_suspicious(self, chunk: bytes, lines_before: int, matched: set[int]) -> None:
        pos, lineno, seen = 0, lines_before, set()
        for m in SUSPICIOUS.finditer(chunk):
            ls = chunk.rfind(b"\n", 0, m.start()) + 1
            if ls in matched or ls in seen:
                continue
            seen.add(ls)
            if len(self.suspicious) >= self._suspicious_max:
                return
            lineno += chunk.count(b"\n", pos, ls)
            pos = ls
            le = chunk.find(b"\n", ls)
            self.suspicious.append((self._file, lineno + 1, chunk[ls:le if le >= 0 else len(chunk)][:self.max_line]))

    def try_line(self, line: bytes) -> list[tuple[Rule, str | None, str | None]]:
        """Every rule that takes `line`, pre-filter included, with the address and key it read."""
        cand = self._hits(line)
        h = parse_header(line, self.clock) if cand else None
        if h is None:
            return []
        allowed = self._allowed(h.program)
        out = []
        for r in self._rules_for(next(iter(cand.values()))):
            if r.order in allowed and not (r.needle and r.needle not in line):
                m = r.regex.match(line, h.start, timeout=self.timeout)
                if m is not None:
                    raw_ip = m.group("ip") if r.has_ip else None
                    raw_key = None if r.key is None else h.pid if r.key == "pid" else m.group("key")
                    # None: a group that took no part in the match (see `_ip`)
                    ip = None if raw_ip is None else canonical_ip(raw_ip.decode("ascii", "replace"))
                    key = None if raw_key is None else raw_key.decode("ascii", "replace")
                    out.append((r, ip, key))
        return out

    def parse_lines(self, data: bytes) -> list[Offence]:
        """Convenience for whole inputs held in memory (tests, rule tests)."""
        out = self.feed(data, 0)
        self.finish()
        return out
