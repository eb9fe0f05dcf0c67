"""Where offences become decisions.

Pure: offences in (in time order, with their log time stamps), decisions out,
no I/O. Each client (an IPv4 address, an IPv6 /64 by default) is scored over
several horizons. The burst horizon sums its recent offences' scores (within
`window`, or decayed with a `half_life`); the long ones (an hour, a day, a week
for clients banned before) count its offences, so a patient attacker is caught
too. A temporary (4xx) reject weighs less than a refusal: an MTA that retries it
on its schedule never reaches a threshold, a bot that retries all day does. When
any horizon reaches its threshold the client is banned, for the time its worst
kind of offence deserves, longer each time it comes back within the look-back
period, and every score starts again from zero. K address bans at once in one
IPv4 /24 become one ban of the /24. Allow-listed clients are never scored; big
senders (by a name the MTA verified) are scored, and never banned automatically.

Memory: the burst horizon keeps its few recent offences; older offences are
folded into per-client bucket counters (a fixed number of buckets per horizon),
so a client retrying for a week costs as much as one retrying for an hour.

A network is a target only when it covers no allow-listed, own or special address
and no partner seen by verified name: such an IPv6 /64 is scored per address
instead, and such an IPv4 /24 is never made of its members' bans.
"""
from __future__ import annotations

import bisect
import ipaddress
import math
import socket
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter

from .allow import AllowList, ip_num, network_text, special
from .parse import Offence
from .units import format_duration

HOUR, DAY = 3600.0, 86400.0

# Ban time by kind: what mail admins give each misdeed. None = permanent.
DEFAULT_DURATIONS: dict[str, float | None] = {
    "virus": 24 * HOUR,
    "bad_helo": 72 * HOUR,          # a client that claims to be us
    "relay_denied": 12 * HOUR,
    "unknown_user": 12 * HOUR,      # dictionary attacks
    "dnsbl": 6 * HOUR,
    "pregreet": 24 * HOUR,          # bots that talk before the greeting
    "protocol_abuse": 6 * HOUR,
    "bad_sender": 2 * HOUR,
    "client_rejected": 2 * HOUR,
    "auth_failed": 1 * HOUR,
    "manual": 24 * HOUR,            # `logban ban` without --for
}
_EVENTS_MAX = 64          # offences remembered one by one per client; older ones are only counted
BUCKETS = 24              # counters per long horizon: a day counts 24 to 25 hours back
_ZEROS = array("d", bytes(8 * BUCKETS))
_WHEN = itemgetter(0)     # of an event of a Track


@dataclass(frozen=True)
class Horizon:
    """A long horizon: `threshold` offences within `span` ban."""
    name: str
    span: float
    threshold: float
    repeat: bool = False       # only for clients banned before (within `lookback`)
    # What a temporary reject of a client without a verified name counts for here: one that
    # comes back after "try later" all day is a bot, or a server nobody can tell from one.
    transient: float = 1.0

    @property
    def bucket(self) -> float:
        return self.span / BUCKETS


# Chosen on traces of real attack patterns (README, "Horizons"): fail2ban's 5 in 10 minutes
# misses the SASL guesser that tries 4 every 20 minutes and the bot that retries a
# rejected HELO every 5 to 20 minutes all day.
DEFAULT_HORIZONS = (
    Horizon("hour", HOUR, 5.0),
    Horizon("day", DAY, 10.0),
    Horizon("week", 7 * DAY, 10.0, repeat=True),
)


@dataclass(frozen=True)
class Policy:
    threshold: float = 5.0                # the burst horizon:
    window: float | None = 600.0          # score = offences of the last `window` seconds ...
    half_life: float | None = None        # ... or every offence, halved each `half_life`
    horizons: tuple[Horizon, ...] = DEFAULT_HORIZONS
    transient: float = 0.5                # a temporary (4xx) reject's weight in the burst horizon (a refusal: 1)
    verified_transient: float = 0.1       # ... on every horizon, of a client whose name the MTA verified
    max_tracked: int = 100_000            # clients scored at once; the lowest scores are evicted
    durations: Mapping[str, float | None] = field(default_factory=lambda: dict(DEFAULT_DURATIONS))
    rule_durations: Mapping[str, float | None] = field(default_factory=dict)
    default_duration: float = HOUR
    escalate: bool = True
    factor: float = 2.0
    max_duration: float = 30 * DAY
    lookback: float = 30 * DAY
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    subnet_bans: int = 3                  # K address bans in one IPv4 network ban the network; 0: never

    def base_duration(self, kind: str, rule: str = "") -> float | None:
        if rule in self.rule_durations:
            return self.rule_durations[rule]
        return self.durations.get(kind, self.default_duration)

    @property
    def burst(self) -> float:
        """How far back an offence counts in the burst horizon."""
        return self.window if self.window is not None else 10 * (self.half_life or 0.0)

    @property
    def horizon(self) -> float:
        """How far back an offence can still count."""
        return max([self.burst, *(h.span + h.bucket for h in self.horizons)])

    def weights(self, h: Horizon | None) -> tuple[float, float, float]:
        """What an offence of each evidence class (`evidence`) counts for on a horizon (None: the burst one)."""
        return 1.0, self.transient if h is None else h.transient, self.verified_transient


def evidence(o: Offence) -> int:
    """0: a refusal (or no reply logged); 1: a temporary reject; 2: a temporary reject of a
    client whose name the MTA verified, and not a name made of its address (a dial-up or
    cloud pool's generic name proves no mail server): an MTA retrying on its schedule."""
    if o.reply != 4:
        return 0
    return 2 if o.name and not generic_name(o.name, o.ip) else 1


def generic_name(name: str, ip: str) -> bool:
    """Whether `name` spells the IPv4 address `ip` (218-42-154-114.cust.example.jp,
    static-ip-209-126-100-0.pool.example, 114.154.42.218.dyn.example), forward or reversed."""
    octets = ip.split(".")
    if len(octets) != 4:
        return False
    n = name.lower()
    return any(sep.join(o) in n for o in (octets, octets[::-1]) for sep in "-._")


@dataclass(frozen=True, slots=True)
class Past:
    """The latest ban of a target: what escalation looks at."""
    created: float
    duration: float | None
    count: int


@dataclass(slots=True)
class Decision:
    target: str                   # address or network (CIDR)
    kind: str
    rule: str
    score: float
    time: float                   # when it was decided (log time)
    duration: float | None        # None: permanent
    count: int                    # bans of this target so far, this one included
    escalated: bool
    reason: str
    members: tuple[str, ...] = ()     # a network ban: the address bans it replaces
    trigger: Offence | None = None

    @property
    def expires(self) -> float | None:
        return None if self.duration is None else self.time + self.duration


@dataclass
class ScoreStats:
    offences: int = 0
    allowed: int = 0              # offences of allow-listed clients
    not_target: int = 0           # offences of addresses that can never be banned (multicast, ...)
    while_banned: int = 0         # offences of clients already banned
    decisions: int = 0
    network_bans: int = 0
    evicted: int = 0              # low scores dropped to bound memory
    big_senders: int = 0          # offences of verified big senders: counted, never banned automatically


class Track:
    """A client's evidence: its offences within the longest horizon one by one, (time, score,
    evidence, kind, rule) in time order, up to _EVENTS_MAX; older ones beyond that as counters:
    per long horizon [newest bucket number, BUCKETS weighted counts], and per kind [offences,
    temporary rejects, rule]."""
    __slots__ = ("agg", "ev", "folded", "kinds", "until")

    def __init__(self) -> None:
        self.ev: list[tuple[float, float, int, str, str]] = []
        self.agg: array | None = None
        self.kinds: dict[str, list] | None = None
        self.folded = 0           # offences counted: no long horizon can hold more
        self.until = 0.0          # the newest of them


def horizon_totals(policy: Policy, offences: list[Offence], now: float, banned_before: bool) -> dict[str, float]:
    """Where a client stands on each horizon at `now`, from its offences (`show`): the burst
    score, and each long horizon's weighted count (exact, not bucketed)."""
    out = {}
    w = policy.weights(None)
    if policy.window is not None:
        out["burst"] = sum(o.score * w[evidence(o)] for o in offences if now - policy.window < o.time <= now)
    else:
        out["burst"] = sum(o.score * w[evidence(o)] * 0.5 ** ((now - o.time) / policy.half_life)
                           for o in offences if o.time <= now)
    for h in policy.horizons:
        if banned_before or not h.repeat:
            w = policy.weights(h)
            out[h.name] = sum(w[evidence(o)] for o in offences if now - h.span < o.time <= now)
    return out


def network_of(ip: str, prefix: int) -> str:
    v, num = ip_num(ip)
    drop = (32 if v == 4 else 128) - prefix
    return network_text(v, num >> drop << drop, prefix)


class Scorer:
    def __init__(self, policy: Policy, allow: AllowList | None = None) -> None:
        self.stats = ScoreStats()
        self.tracks: dict[str, Track] = {}
        self.active: dict[str, float] = {}          # target -> expires (inf: permanent)
        self.history: dict[str, Past] = {}
        self._wide: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}   # other active networks
        self._members: dict[str, dict[str, tuple[float, str, str]]] = {}   # /24 -> ip -> (expires, kind, rule)
        # ip -> (target, its IPv4 network, bannable, allow-listed): one parse of a new address
        self._target: dict[str, tuple[str, str | None, bool, bool]] = {}
        self._partners: set[str] = set()            # networks holding a client allowed by verified name
        self._partner_ips: set[str] = set()
        self.new_partners: list[tuple[str, str, float]] = []   # (ip, name, time) first seen: for the store
        self.configure(policy, allow or AllowList(own=()))

    def configure(self, policy: Policy, allow: AllowList) -> None:
        """A policy and allow-list (at start, or reloaded): the scores and bans stay (the
        counters of offences past the burst horizon only while the long horizons stay)."""
        old = getattr(self, "policy", None)
        if old is not None and old.horizons != policy.horizons:
            for tr in self.tracks.values():
                tr.agg = tr.kinds = None
                tr.folded = 0
        self.policy, self.allow = policy, allow
        self._bw = policy.weights(None)
        self._hw = [policy.weights(h) for h in policy.horizons]
        self._least = min((h.threshold for h in policy.horizons), default=math.inf)
        self._keep = policy.horizon          # how long an offence may count anywhere
        self._burst_span = policy.burst
        self._window = policy.window is not None
        self._burst = self._burster()
        self._target.clear()                 # prefix lengths and the allow-list may have changed
        self._cover: dict[tuple[int, int], tuple] = {}      # (version, prefix) -> `AllowList.cover_tests`
        self._evict_at = max(policy.max_tracked, len(self.tracks) + policy.max_tracked // 2)
        self._span = (f"in {format_duration(policy.window)}" if policy.window is not None
                      else f"decaying, half-life {format_duration(policy.half_life)}")

    # ---- where a client stands -------------------------------------------------
    def target_of(self, ip: str) -> tuple[str, str | None]:
        """The scored target of an address, and the IPv4 network it may be aggregated into."""
        got = self._where(ip)
        return got[0], got[1]

    def allowed_lately(self, ip: str) -> bool | None:
        """Whether the allow-list covers an address scored lately (None: not known here)."""
        got = self._target.get(ip)
        return None if got is None else got[3]

    def _where(self, ip: str) -> tuple[str, str | None, bool, bool]:
        got = self._target.get(ip)
        if got is None:
            p = self.policy
            v, num = ip_num(ip)
            if v == 6:
                net = self._network(v, num, p.ipv6_prefix) if p.ipv6_prefix < 128 else None
            else:
                net = self._network(v, num, p.ipv4_prefix) if p.subnet_bans and p.ipv4_prefix < 32 else None
            # A network that holds no special address proves its member is none either; one
            # the allow-list does not cover, that its member is not allowed.
            ok = net is not None or not special(v, num, 32 if v == 4 else 128)
            allowed = net is None and self.allow.num_allowed(v, num)
            got = (net or ip, None, ok, allowed) if v == 6 else (ip, net, ok, allowed)
            if len(self._target) > 50_000:
                # A cache of the clients seen lately (the engine asks again right after `add`):
                # during a distributed attack every address is new, and 200k entries cost 38 MB.
                self._target.clear()
            self._target[ip] = got
        return got

    def _network(self, version: int, num: int, prefix: int) -> str | None:
        """The network of `prefix` around an address, when it may be banned as a whole: it holds
        no allow-listed, own or special address, and no client allowed by its verified name."""
        drop = (32 if version == 4 else 128) - prefix
        num = num >> drop << drop
        net = network_text(version, num, prefix)
        if net in self._partners:
            return None
        # Numbers, not a cache: as cheap as a lookup, and nothing to bound.
        if special(version, num, prefix):
            return None
        tests = self._cover.get((version, prefix))
        if tests is None:
            tests = self._cover[(version, prefix)] = self.allow.cover_tests(version, prefix)
        for shift, nums in tests:
            if num >> shift in nums:
                return None
        return net

    def rate_key(self, ip: str, name: str | None, t: float = 0.0) -> str | None:
        """What a rate rule counts `ip`'s matches for: its scoring target (an address where
        its network may not be banned); None for a client that is never an offender. Rate
        rules read every connection: a partner is learned from its first one, not only from
        its first offence."""
        got = self._target.get(ip) or self._where(ip)       # a line of every connection: a hit, mostly
        if got[3]:
            return None
        if name is not None:                  # most connections bring no verified name
            if self.allow.name_allowed(name):
                self.partner(ip, name, t)
                return None
            if self.allow.big_sender(name):
                self.partner(ip, name, t)
                got = self._where(ip)             # its network is no target any more
        return got[0] if got[2] else None

    def partner(self, ip: str, name: str | None = None, t: float = 0.0) -> None:
        """A client allowed by verified name: its neighbours are banned one by one, never its network."""
        if name is not None and ip not in self._partner_ips:
            if len(self._partner_ips) >= 100_000:
                self._partner_ips.clear()
            self._partner_ips.add(ip)
            self.new_partners.append((ip, name, t))
        p = self.policy
        net = network_of(ip, p.ipv6_prefix if ":" in ip else p.ipv4_prefix)
        if net not in self._partners:
            if len(self._partners) >= 100_000:
                self._partners.clear()
            self._partners.add(net)
            self._target.clear()

    def banned(self, target: str, net: str | None, t: float) -> bool:
        for k in (target, net):
            if k is not None:
                exp = self.active.get(k)
                if exp is not None:
                    if exp > t:
                        return True
                    self.release(k)
        if self._wide:
            addr = ipaddress.ip_network(target, strict=False)
            for k, n in list(self._wide.items()):
                if n.version == addr.version and addr.subnet_of(n):
                    if self.active.get(k, 0) > t:
                        return True
                    self.release(k)
        return False

    def score(self, target: str, now: float) -> float:
        """The burst score."""
        return self.scores({target: now})[target]

    def scores(self, at: dict[str, float]) -> dict[str, float]:
        """`score` of many targets, each at its own time."""
        tracks, burst = self.tracks, self._burst
        return {t: burst(tr, now) if (tr := tracks.get(t)) else 0.0 for t, now in at.items()}

    def _prune(self, tr: Track, now: float) -> float:
        """Offences past every horizon go; past the number kept one by one, to the counters
        (a client with few offences never needs them). Returns `now`, or the newest offence
        when one is newer: offences arrive out of time order (other nodes after an outage, an
        older rotated file applied later, two followed files), and none may weigh more than
        its own score."""
        ev = tr.ev
        if ev and ev[-1][0] > now:
            now = ev[-1][0]
        cut = now - self._keep
        n, size = 0, len(ev)
        while n < size and (ev[n][0] <= cut or size - n > _EVENTS_MAX):
            n += 1
        if n:
            if self.policy.horizons:
                self._fold(tr, [e for e in ev[:n] if e[0] > cut])
            del ev[:n]
        if tr.agg is not None and tr.until <= cut:
            tr.agg = tr.kinds = None         # every counted offence is past every horizon
            tr.folded = 0
        return now

    def _fold(self, tr: Track, events: list) -> None:
        if not events:
            return
        hs = self.policy.horizons
        agg = tr.agg
        if agg is None:
            agg = tr.agg = array("d", bytes(8 * (BUCKETS + 1) * len(hs)))
        tr.folded += len(events)
        tr.until = max(tr.until, events[-1][0])
        kinds = tr.kinds
        if kinds is None:
            kinds = tr.kinds = {}
        for t, _, cls, kind, rule in events:
            c = kinds.get(kind)
            if c is None:
                c = kinds[kind] = [0, 0, rule]
            c[0] += 1
            c[1] += cls != 0
            c[2] = rule
            for i, h in enumerate(hs):
                w = self._hw[i][cls]
                base, k = i * (BUCKETS + 1), int(t // h.bucket)
                last = int(agg[base])
                if k > last:
                    if k - last >= BUCKETS:
                        if last:
                            agg[base + 1:base + 1 + BUCKETS] = _ZEROS
                    else:
                        for j in range(last + 1, k + 1):
                            agg[base + 1 + j % BUCKETS] = 0.0
                    agg[base] = k
                elif k <= last - BUCKETS:
                    continue                 # older than the horizon
                agg[base + 1 + k % BUCKETS] += w

    def _burster(self) -> Callable[[Track, float], float]:
        """`_burst`: a track's burst score at `now`. Asked of every client at each eviction
        (100k of them, 18 times over at a million distinct offenders) and of each offence's
        client by `count` and `scores`: it reads the policy from its closure's cells, not from
        the scorer's attributes, on every call."""
        keep, span, bw, window, half, prune = (self._keep, self._burst_span, self._bw, self._window,
                                               self.policy.half_life, self._prune)

        def burst(tr: Track, now: float) -> float:
            ev = tr.ev
            if len(ev) == 1 and tr.agg is None and window:
                # A one-offence client (nearly every one of a distributed attack, asked by
                # `count`, `scores` and each eviction): what `_prune` and the sum below come to
                # when nothing is pruned, without their calls.
                e = ev[0]
                t = e[0]
                if t > now:
                    now = t
                if t > now - keep:
                    return 0 + e[1] * bw[e[2]] if t > now - span else 0
            now = prune(tr, now)          # in place: `ev` is still the track's
            cut = now - span
            if len(ev) == 1 and window:
                # Most clients of a distributed attack: one offence, summed without a generator
                # (`0 +`, as sum() starts, so the result is the same to the bit).
                t, score, cls = ev[0][:3]
                return 0 + score * bw[cls] if t > cut else 0
            if window:
                return sum(e[1] * bw[e[2]] for e in ev if e[0] > cut)
            return sum(e[1] * bw[e[2]] * 0.5 ** ((now - e[0]) / half) for e in ev if e[0] > cut)
        return burst

    def _long(self, tr: Track, i: int, h: Horizon, now: float) -> float:
        """Offences (weighted) within the horizon: the whole buckets that reach into it."""
        cut, w = now - h.span, self._hw[i]
        total = sum(w[e[2]] for e in tr.ev if e[0] > cut)
        agg = tr.agg
        if agg is not None:
            base = i * (BUCKETS + 1)
            last, top = int(agg[base]), int(now // h.bucket)
            if top - last < BUCKETS:
                if top >= last:
                    # Every slot, less those of buckets the horizon has left behind.
                    total += sum(agg[base + 1:base + 1 + BUCKETS])
                    for k in range(last - BUCKETS + 1, top - BUCKETS + 1):
                        total -= agg[base + 1 + k % BUCKETS]
                else:
                    for k in range(last - BUCKETS + 1, top + 1):
                        total += agg[base + 1 + k % BUCKETS]
        return total

    def _reach(self, tr: Track, target: str, now: float,
               more: Offence | None = None) -> tuple[Horizon | None, float] | None:
        """The first horizon whose threshold the track reaches (None: the burst one) and its
        total, with `more` counted too when given; else None."""
        cls = evidence(more) if more is not None else -1
        b = self._burst(tr, now) + (more.score * self._bw[cls] if more is not None else 0.0)
        return self._reach_from(tr, target, now, b, more, cls)

    def _reach_from(self, tr: Track, target: str, now: float, b: float, more: Offence | None = None,
                    cls: int = -1) -> tuple[Horizon | None, float] | None:
        """`_reach` once the burst score `b` (`more` in it) is known."""
        p = self.policy
        if b >= p.threshold:
            return None, b
        now = max(now, tr.ev[-1][0]) if tr.ev else now
        if len(tr.ev) + tr.folded + 1 < self._least:
            return None              # too few offences ever for any long horizon
        again = target in self.history
        for i, h in enumerate(p.horizons):
            if h.repeat and not again:
                continue
            n = self._long(tr, i, h, now) + (self._hw[i][cls] if more is not None else 0.0)
            if n + 1e-9 >= h.threshold:
                return h, n
        return None

    def _ranked(self, now: float, floor: float) -> list[tuple[float, str, Track]]:
        """The clients ranked above `floor` by how near their nearest threshold they are at
        `now`, about: what eviction keeps. The long horizons by the offences kept at all
        (within the longest one): cheap, and a client that came back often this week stays
        ahead of a flood of one-offence ones. Eviction ranks every client each time (100k of
        them, 18 times over at a million distinct offenders): one call a client (`_burst`,
        whose one-offence shortcut serves most of them), what is the same for all read once."""
        burst, threshold, least = self._burst, self.policy.threshold, self._least
        return [(s, k, tr) for k, tr in self.tracks.items()
                if (s := max(burst(tr, now) / threshold, (len(tr.ev) + tr.folded) / least)) > floor]

    # ---- offences ------------------------------------------------------------------
    def would_ban(self, o: Offence) -> bool:
        """Whether `o` would cross a threshold: where a slow check (DNS) is worth doing."""
        target, net = self.target_of(o.ip)
        if self.banned(target, net, o.time):
            return False
        tr = self.tracks.get(target) or Track()
        return self._reach(tr, target, o.time, o) is not None

    def add(self, o: Offence) -> list[Decision]:
        return self.count(o)[1]

    def count(self, o: Offence) -> tuple[str | None, list[Decision]]:
        """`add`, with the target `o` counts for: None for a client that is no offender at
        all (allow-listed, or an address that can never be banned), so not recorded."""
        st = self.stats
        st.offences += 1
        ip, t = o.ip, o.time
        got = self._target.get(ip) or self._where(ip)
        if got[3]:
            st.allowed += 1
            return None, []
        name = o.name
        big = None
        if name is not None:
            if self.allow.name_allowed(name):
                st.allowed += 1
                self.partner(ip, name, t)
                return None, []
            big = self.allow.big_sender(name)
            if big:
                # Counted (recorded, shown) but never banned automatically, nor its network.
                self.partner(ip, name, t)
                got = self._where(ip)           # its network is no target any more
        target, net, ok, _ = got
        if not ok:
            st.not_target += 1
            return None, []
        # Nearly every offence is of a client not banned: `banned` only when a ban may hold it.
        active = self.active
        if (target in active or net in active or self._wide) and self.banned(target, net, t):
            st.while_banned += 1
            return target, []
        if big:
            st.big_senders += 1
            return target, []
        tr = self._track(target, o)
        # `_reach` without `more`, its usual answer (below every threshold, too few offences
        # ever for a long horizon) found without its call.
        b = self._burst(tr, t) + 0.0
        if b < self.policy.threshold and len(tr.ev) + tr.folded + 1 < self._least:
            return target, []
        got = self._reach_from(tr, target, t, b)
        if got is None:
            return target, []
        del self.tracks[target]            # the ban uses the scores up: after it, start from zero
        horizon, total = got
        kind, rule, reason = self._explain(tr, horizon, total)
        # Decided when the evidence was complete: at the newest offence that counted.
        d = self._decide(target, kind, rule, total, max(o.time, tr.ev[-1][0]), reason, o)
        return target, (self._aggregate(net, d) if net is not None else [d])

    def seed(self, o: Offence) -> None:
        """Put back an offence recorded before a restart: it counts, but decides nothing by itself."""
        target, net, ok, allowed = self._where(o.ip)
        if not ok or allowed or self.banned(target, net, o.time):
            return
        if self.allow.name_allowed(o.name) or self.allow.big_sender(o.name):
            self.partner(o.ip)
            return
        self._prune(self._track(target, o), o.time)

    def _track(self, target: str, o: Offence) -> Track:
        """The target's track with `o` in it, a new one made (and the lowest evicted) if needed."""
        tr = self.tracks.get(target)
        if tr is None:
            if len(self.tracks) >= self._evict_at:
                self._evict(o.time)
            tr = self.tracks[target] = Track()
        e = (o.time, o.score, 0 if o.reply != 4 else evidence(o), o.kind, o.rule)
        ev = tr.ev
        if ev and ev[-1][0] > e[0]:
            bisect.insort(ev, e, key=_WHEN)      # events are kept in time order
        else:
            ev.append(e)            # nearly always
        return tr

    def _explain(self, tr: Track, horizon: Horizon | None, total: float) -> tuple[str, str, str]:
        """The kind the ban is for (the one that earns the longest ban), its rule, and a reason
        naming the horizon that fired and its evidence: offences by kind, temporary rejects apart."""
        p = self.policy
        by_kind: dict[str, list] = {}          # kind -> [offences, temporary, rule, points]
        if horizon is not None and tr.kinds:
            for k, (n, tmp, rule) in tr.kinds.items():
                by_kind[k] = [n, tmp, rule, 0.0]
        cut = (tr.ev[-1][0] if tr.ev else 0.0) - (p.burst if horizon is None else horizon.span)
        for _, score, cls, kind, rule in (e for e in tr.ev if e[0] > cut):
            c = by_kind.setdefault(kind, [0, 0, rule, 0.0])
            c[0] += 1
            c[1] += cls != 0
            c[2] = rule
            c[3] += score * self._bw[cls]
        worst = max(by_kind, key=lambda k: (p.base_duration(k, by_kind[k][2]) or math.inf, by_kind[k][3], by_kind[k][0]))
        parts = ", ".join(f"{k} x{c[0]}" + (f" ({c[1]} temporary)" if c[1] else "")
                          for k, c in sorted(by_kind.items(), key=lambda kv: -kv[1][0]))
        if horizon is None:
            head = f"burst: score {total:g} {self._span} >= {p.threshold:g}"
        else:
            head = (f"{horizon.name}: {total:g} offences in {format_duration(horizon.span)} >= {horizon.threshold:g}"
                    + (" (banned before)" if horizon.repeat else ""))
        return worst, by_kind[worst][2], f"{head}: {parts}"

    def _decide(self, target: str, kind: str, rule: str, score: float, t: float, reason: str,
                trigger: Offence | None, members: tuple[str, ...] = (), until: float = 0.0) -> Decision:
        """`until`: the ban lasts at least until then (a network ban outlives the bans it replaces)."""
        duration, count, escalated = self.duration(target, kind, rule, t)
        if duration is not None and t + duration < until:
            duration = None if until == math.inf else until - t
        d = Decision(target, kind, rule, score, t, duration, count, escalated, reason, members, trigger)
        self.mark_banned(d)
        self.stats.decisions += 1
        return d

    def duration(self, target: str, kind: str, rule: str, t: float) -> tuple[float | None, int, bool]:
        """(ban time, count, escalated) for a new ban of `target` at `t`."""
        p = self.policy
        base = p.base_duration(kind, rule)
        past = self.history.get(target)
        count = past.count + 1 if past else 1
        if base is None:
            return None, count, False
        d = base
        if p.escalate and past and past.duration is not None and t - past.created <= p.lookback:
            d = max(base, min(past.duration * p.factor, p.max_duration))
        return d, count, d > base

    def mark_banned(self, d: Decision) -> None:
        """Record a ban (decided here or elsewhere) so its target is left alone until it ends."""
        exp = d.expires
        self.active[d.target] = math.inf if exp is None else exp
        self.history[d.target] = Past(d.time, d.duration, d.count)
        self.tracks.pop(d.target, None)
        addr, slash, plen = d.target.partition("/")
        if slash:
            p = self.policy
            # Networks of the scoring prefix are found by target_of; only others need the slow scan.
            if int(plen) != (p.ipv6_prefix if ":" in addr else p.ipv4_prefix):
                self._wide[d.target] = ipaddress.ip_network(d.target)

    def clear(self, target: str, at: float) -> None:
        """The target's offences before `at` no longer count (its score was cleared elsewhere).
        The counted ones go too: they are older than those kept one by one."""
        tr = self.tracks.get(target)
        if tr:
            tr.ev[:] = [e for e in tr.ev if e[0] >= at]
            tr.agg = tr.kinds = None
            if not tr.ev:
                del self.tracks[target]

    def release(self, target: str) -> None:
        """The ban ended (expiry, unban, allow-list): the score starts from zero."""
        self._drop_active(target)
        self.tracks.pop(target, None)
        if self._members and "/" not in target and ":" not in target:
            # An address ban over is no member of a network ban to come: its network's entry goes.
            net = network_of(target, self.policy.ipv4_prefix)
            m = self._members.get(net)
            if m is not None:
                m.pop(target, None)
                if not m:
                    del self._members[net]

    def forget(self, now: float) -> int:
        """Drop what is kept of bans made before the look-back (they escalate nothing any
        more) and of member bans over by `now`. How many history entries went."""
        before = now - self.policy.lookback
        old = [t for t, p in self.history.items() if p.created < before and t not in self.active]
        for t in old:
            del self.history[t]
        for net in [n for n, m in self._members.items() if all(e <= now for e, _, _ in m.values())]:
            del self._members[net]
        return len(old)

    def _drop_active(self, target: str) -> None:
        self.active.pop(target, None)
        self._wide.pop(target, None)

    # ---- networks --------------------------------------------------------------------
    def _aggregate(self, net: str, d: Decision) -> list[Decision]:
        """K address bans alive at once in one IPv4 network: ban the network instead."""
        m = self._members.setdefault(net, {})
        for ip in [ip for ip, (exp, _, _) in m.items() if exp <= d.time or self.active.get(ip) is None]:
            del m[ip]
        exp = d.expires
        m[d.target] = (math.inf if exp is None else exp, d.kind, d.rule)
        if len(m) < self.policy.subnet_bans or self.banned(net, None, d.time):
            return [d]
        p = self.policy
        _, kind, rule = max(m.values(), key=lambda v: p.base_duration(v[1], v[2]) or math.inf)
        until = max(exp for exp, _, _ in m.values())
        members = tuple(sorted(m, key=ipaddress.ip_address))
        for ip in members:
            self._drop_active(ip)
        del self._members[net]
        # The newest member's own ban is not recorded: the network ban covers it.
        self.history[d.target] = Past(d.time, d.duration, d.count)
        nd = self._decide(net, kind, rule, d.score, d.time,
                          f"{len(members)} addresses banned at once in {net}: {', '.join(members)}",
                          d.trigger, members, until)
        self.stats.network_bans += 1
        return [nd]

    # ---- memory -----------------------------------------------------------------------
    def _evict(self, now: float) -> None:
        """Keep the higher half of the clients, by how near a threshold they are (and nothing
        that has decayed away): a patient attacker's day outweighs a flood of one-offence clients."""
        tracks = self.tracks
        scored = self._ranked(now, 0.002)
        scored.sort(reverse=True)
        # Ranked (s, k) pairs are all different: which tracks stay never depends on their order
        # here, and no two tracks are ever compared.
        self.tracks = {k: tr for _, k, tr in scored[:self.policy.max_tracked // 2]}
        self.stats.evicted += len(tracks) - len(self.tracks)
        self._evict_at = max(self.policy.max_tracked, len(self.tracks) + self.policy.max_tracked // 2)
        for net in [n for n, m in self._members.items() if all(e <= now for e, _, _ in m.values())]:
            del self._members[net]
        for k in [k for k, exp in self.active.items() if exp <= now]:
            self._drop_active(k)

