"""The allow-list: clients that are never banned, whatever their score.

Addresses and networks (loopback and this host's own addresses always), and
host name patterns (`*.mailout.example.com`, `mailout-*.example.com`) matched
against a name somebody verified: the MTA (Postfix logs `unknown` unless the
name is forward-confirmed; sendmail marks an unverified one `(may be forged)`),
or logban's own forward-confirmed reverse lookup (`Resolver`), which runs only
for a client about to be banned, in threads with a time limit, never per line.
"""
from __future__ import annotations

import bisect
import fnmatch
import functools
import ipaddress
import math
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import regex

_NAME_PATTERN = regex.compile(r"[A-Za-z0-9*?_-]+(?:\.[A-Za-z0-9*?_-]+)*\.?")
_CACHE_MAX = 100_000
_SCREEN_MAX = 1_000_000          # verdicts kept: every active ban's, up to a million

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """ipaddress.ip_address, faster: the C parser first (ipaddress's own costs a tenth of a
    ban), and cached, because the scorer asks about a new address several times in a row."""
    try:
        return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text)) if ":" in text \
            else ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        return ipaddress.ip_address(text)      # its error message, or a form inet_pton does not read


def ip_num(text: str) -> tuple[int, int]:
    """(version, number) of an address, as `ip_address` reads it (an IPv4-mapped address
    stays IPv6), without an ipaddress object: the C parser, then ipaddress for the forms it
    does not read (a zone id) and for its error message. The scorer's hot path: a
    distributed attack brings a new address on every line, and no cache helps there."""
    try:
        if ":" in text:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text))
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):          # ValueError: an embedded NUL
        a = ipaddress.ip_address(text)
        return a.version, int(a)


def network_text(version: int, num: int, prefix: int) -> str:
    """The network (number without host bits, prefix length) as ipaddress writes it."""
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, num.to_bytes(4))}/{prefix}"
    if num >> 48:
        # inet_ntop writes what ipaddress writes (RFC 5952: the first longest zero run of two
        # or more, lower case) except its dotted IPv4 forms, which need words 0 to 4 zero.
        return f"{socket.inet_ntop(socket.AF_INET6, num.to_bytes(16))}/{prefix}"
    return f"{ipaddress.IPv6Address(num)}/{prefix}"


def parse_network(text: str, strict: bool = True) -> Network:
    """An address or CIDR as a network; `strict`: host bits set in a CIDR are refused (they hint at a typo)."""
    t = text.strip()
    if t[:5].lower() == "ipv6:":
        t = t[5:]
    net = ipaddress.ip_network(t, strict=strict)
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        net = ipaddress.ip_network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


# Never a ban target, nor inside one: dropping them cuts the host off from itself or
# from whole protocols (unspecified, loopback, IPv4-compatible and -mapped prefixes
# whose /64 holds ::1, multicast, link-local, broadcast, "this network").
NEVER = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::/96", "::ffff:0:0/96", "fe80::/10", "ff00::/8",
))


_NEVER_NUMS: dict[int, tuple[tuple[int, int], ...]] = {
    v: tuple((int(n.network_address), n.prefixlen) for n in NEVER if n.version == v) for v in (4, 6)}


def special(version: int, num: int, plen: int) -> bool:
    """The fast form of `unbannable`: whether the network (number, prefix length) is or holds a special address."""
    if version == 6 and num >> 125 == 1 and plen >= 3:
        return False                # global unicast 2000::/3 holds none (the common case, first)
    bits = 32 if version == 4 else 128
    for n, p in _NEVER_NUMS[version]:
        shift = bits - (p if p < plen else plen)        # two networks overlap when their shorter prefix agrees
        if num >> shift == n >> shift:
            return True
    return False


def unbannable(net: Network | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address or network can never be banned (it is or holds a special address), or None."""
    if isinstance(net, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        if not special(net.version, int(net), net.max_prefixlen):
            return None
        for n in NEVER:
            if net in n:
                return f"{net} is a {_special_name(n)} address ({n})"
        return None
    if not special(net.version, int(net.network_address), net.prefixlen):
        return None
    for n in NEVER:
        if n.version == net.version and net.overlaps(n):
            return f"{net} is or holds {_special_name(n)} addresses ({n})"
    return None


def _special_name(n: Network) -> str:
    if n.network_address.is_unspecified and n.prefixlen == n.max_prefixlen:
        return "unspecified"
    if n.is_loopback:
        return "loopback"
    if n.is_multicast:
        return "multicast"
    if n.is_link_local:
        return "link-local"
    if n.version == 6 and n.prefixlen == 96:
        return "IPv4-compatible" if int(n.network_address) == 0 else "IPv4-mapped"
    return "unspecified or broadcast"


def ban_target(text: str) -> str:
    """A ban target as text from anywhere (a rule, the store, a user), re-parsed strictly:
    its canonical spelling, or ValueError saying why it can never be banned.

    Strict: a CIDR with host bits set, a zone id, spaces or any other byte is refused,
    so a crafted store row cannot carry text into `nft -f`, `ipset restore` or a zone.
    """
    if not isinstance(text, str) or not text or len(text) > 64 or not _TARGET_CHARS.fullmatch(text):
        raise ValueError(f"{text!r} is not an address or network")
    net = parse_network(text)
    why = unbannable(net)
    if why:
        raise ValueError(why)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def ip_address_text(version: int, num: int) -> str:
    return str(ipaddress.IPv4Address(num) if version == 4 else ipaddress.IPv6Address(num))


# Prefix lengths as logban writes them (no sign, no leading zero), shorter than an address.
_PLEN = {v: {str(p): p for p in range(bits)} for v, bits in ((4, 32), (6, 128))}


def canonical_num(text) -> tuple[int, int, int] | None:
    """(version, network number, prefix length) of a target written exactly as logban
    writes one (canonical address, or canonical network without host bits), else None.
    The C parser and printer, not ipaddress: a sync reads every active ban."""
    if not isinstance(text, str):
        return None
    addr, slash, plen = text.partition("/")
    v, fam, bits = (6, socket.AF_INET6, 128) if ":" in addr else (4, socket.AF_INET, 32)
    p = _PLEN[v].get(plen) if slash else bits
    if p is None:
        return None
    try:
        packed = socket.inet_pton(fam, addr)
        if socket.inet_ntop(fam, packed) != addr:
            return None
    except (OSError, ValueError):
        return None
    num = int.from_bytes(packed, "big")
    if num & ((1 << (bits - p)) - 1):
        return None
    return v, num, p


TIME_MAX = 253_402_300_799          # 9999-12-31T23:59:59Z: later ends break every date format


def valid_target(text) -> bool:
    """Whether a target read from somewhere (a store row) is one logban could have written."""
    got = canonical_num(text)
    return got is not None and not special(*got)


_TARGET_CHARS = regex.compile(r"[0-9A-Fa-f:.]{2,60}(?:/[0-9]{1,3})?")


def check_name_pattern(p: str) -> str:
    if not _NAME_PATTERN.fullmatch(p) or p.strip("*?.") == "":
        raise ValueError(f"{p!r} is not a host name pattern (like *.mailout.example.com)")
    return p.lower().rstrip(".")


def host_addresses() -> set[str]:
    """This host's own addresses: the kernel's local table, its interfaces' IPv6 addresses, its name."""
    out: set[str] = set()
    try:       # IPv4: "/32 host LOCAL" entries of the local routing table
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for i, line in enumerate(lines):
            if "/32 host LOCAL" in line and i:
                out.add(lines[i - 1].split()[-1])
    except OSError:
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            h = line.split()[0]
            out.add(str(ipaddress.IPv6Address(int(h, 16))))
    except (OSError, ValueError, IndexError):
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            out.add(str(ipaddress.ip_address(info[4][0].split("%")[0])))
    except (OSError, ValueError):
        pass
    return out


class AllowList:
    """Answers "may this client be banned?" fast: one set lookup per prefix length in use."""

    ALWAYS = ("127.0.0.0/8", "::1/128")

    def __init__(self, networks: Iterable[str] = (), names: Iterable[str] = (), *,
                 own: Iterable[str] | None = None, big: Iterable[str] = ()) -> None:
        """`big`: name patterns of big senders' outbound farms (`BigSenders`): their offences
        are counted, but neither they nor a network holding one are banned automatically."""
        nets = [parse_network(n) for n in (*self.ALWAYS, *networks)]
        nets += [ipaddress.ip_network(a) for a in (host_addresses() if own is None else own)]
        self.networks = sorted(set(nets), key=lambda n: (n.version, n.network_address, n.prefixlen))
        # version -> prefix length -> network numbers
        self._by_len: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for n in self.networks:
            self._by_len[n.version].setdefault(n.prefixlen, set()).add(int(n.network_address))
        # version -> (shift, network numbers shifted right by it), one per prefix length:
        # an address is allowed when its number shifted is among them for some pair
        self._addr_tests = {v: tuple((bits - plen, frozenset(x >> (bits - plen) for x in nums))
                                     for plen, nums in sorted(self._by_len[v].items()))
                            for v, bits in ((4, 32), (6, 128))}
        # version -> sorted first addresses: a network holds an allowed one when one starts inside it
        # (CIDR networks nest or are apart)
        self._starts = {v: sorted(int(n.network_address) for n in self.networks if n.version == v) for v in (4, 6)}
        self.names = tuple(check_name_pattern(p) for p in names)
        self.big = tuple(check_name_pattern(p) for p in big)
        self._big_cache: dict[str, str | None] = {}
        self._cache: dict[str, bool] = {}
        self._screened: dict = {}      # target (or (target, name)) -> why refused, or None
        self._partners: frozenset[str] = frozenset()
        self._partner_nums: list[tuple[int, int]] = []
        self._overlaps: dict[tuple[int, int], tuple[tuple[int, set[int]], ...]] = {}   # see `_plain`

    def address_allowed(self, ip: str) -> bool:
        got = self._cache.get(ip)
        if got is None:
            v, num = ip_num(ip)
            got = self.num_allowed(v, num)
            if len(self._cache) > _CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = got
        return got

    def num_allowed(self, version: int, num: int) -> bool:
        """Whether the address (version, number) is allowed: one set look-up per prefix length in use."""
        for shift, nums in self._addr_tests[version]:
            if num >> shift in nums:
                return True
        return False

    def _num_allowed(self, version: int, num: int, prefixlen: int) -> bool:
        bits = 32 if version == 4 else 128
        for plen, nums in self._by_len[version].items():
            if plen <= prefixlen and (num >> (bits - plen) << (bits - plen)) in nums:
                return True
        return False

    def target_allowed(self, target: str) -> bool:
        """An address or a network a ban would cover: refused when it is allowed or holds an allowed address."""
        net = ipaddress.ip_network(target, strict=False)
        return self.covers(net.version, int(net.network_address), net.prefixlen)

    def covers(self, version: int, num: int, plen: int) -> bool:
        """Whether the network (number, prefix length) is allowed or holds an allowed address."""
        if self._num_allowed(version, num, plen):
            return True
        bits = 32 if version == 4 else 128
        if plen >= bits:
            return False
        starts = self._starts[version]
        i = bisect.bisect_left(starts, num)
        return i < len(starts) and starts[i] < num + (1 << (bits - plen))

    def cover_tests(self, version: int, plen: int) -> tuple[tuple[int, frozenset[int]], ...]:
        """`covers` for networks of one prefix length, as set look-ups (the scorer asks it of
        every new client's network): a network's number (host bits zero) is covered when,
        shifted right by one of the shifts, it is in that shift's set. An allowed network as
        long as it or shorter holds it; a longer one starts inside it."""
        bits = 32 if version == 4 else 128
        tests: dict[int, set[int]] = {}
        for q, nums in self._by_len[version].items():
            if q <= plen:
                tests.setdefault(bits - q, set()).update(x >> (bits - q) for x in nums)
        if plen < bits:
            tests.setdefault(bits - plen, set()).update(x >> (bits - plen) for x in self._starts[version])
        return tuple((shift, frozenset(nums)) for shift, nums in sorted(tests.items()))

    def name_allowed(self, name: str | None) -> bool:
        # Not text: a value some writer put in the store (SQLite keeps a BLOB as bytes), no name.
        if not name or not self.names or not isinstance(name, str):
            return False
        n = name.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(n, p) for p in self.names)

    def big_sender(self, name: str | None) -> str | None:
        """The big-sender pattern a verified name matches, else None."""
        if not name or not self.big or not isinstance(name, str):
            return None
        got = self._big_cache.get(name, False)
        if got is False:
            n = name.lower().rstrip(".")
            got = next((p for p in self.big if fnmatch.fnmatchcase(n, p)), None)
            if len(self._big_cache) > _CACHE_MAX:
                self._big_cache.clear()
            self._big_cache[name] = got
        return got

    def screen(self, bans: Iterable, partners: Iterable[str] | None = None) -> tuple[list, list[tuple[str, str]]]:
        """What this node may enforce or publish, of bans read from anywhere (the store,
        another node, a decision): the one gate between the store and the kernel or exports.

        Each `target` is re-parsed strictly and must already be canonical (a row written
        by logban is), must be bannable at all, and must not be allowed here (addresses,
        networks, own addresses; a `name` on the row, the verified name of the client,
        against the name patterns); a network must not hold one of `partners`, addresses
        seen under a name the patterns allow (`Store.partners`). Returns (the bans that
        pass, [(target, why)] refused); None: the partners given last time.
        """
        partners = self._partners if partners is None else frozenset(partners)
        if partners != self._partners:
            self._partners = partners
            self._partner_nums = [(a.version, int(a)) for a in map(ip_address, partners)]
            self._screened.clear()
            self._overlaps.clear()
        ok: list = []
        refused: list[tuple[str, str]] = []
        cache, names = self._screened, bool(self.names)
        keep, refuse = ok.append, refused.append
        bans = bans if isinstance(bans, list) else list(bans)
        if names:
            plain = self._plain({b.target for b in bans if (b.target, getattr(b, "name", None)) not in cache})
        else:
            plain = self._plain({b.target for b in bans if b.target not in cache})
        for b in bans:
            t = b.target
            exp = getattr(b, "expires", None)
            if exp is not None and not (isinstance(exp, (int, float)) and 0 <= exp <= TIME_MAX):
                refuse((t, f"its end {exp!r} is no time"))
                continue
            name = getattr(b, "name", None) if names else None
            key = (t, name) if names else t       # a name matters only where patterns read it
            why = cache.get(key, False)
            if why is False:
                why = None if t in plain and not (name and self.name_allowed(name)) else self._refusal(t, name)
                if len(cache) >= _SCREEN_MAX:
                    cache.clear()
                cache[key] = why
            if why is None:
                keep(b)
            else:
                refuse((t, why))
        return ok, refused

    def _plain(self, targets: Iterable) -> set[str]:
        """Those of `targets` that plainly pass `_refusal`'s checks of the target (the
        name is the caller's), found in bulk: a sync screens every active ban, and one
        `_refusal` each costs twice this. Plain: canonical, and overlapping none of the
        networks the refusals read (NEVER, the allow-list, the partners). A target that
        is not plain goes through `_refusal`, which says why, or finds that it passes
        after all (an address that is itself a partner, say)."""
        out: set[str] = set()
        add, checks = out.add, self._overlaps
        for t in targets:
            got = canonical_num(t)
            if got is None:
                continue
            v, num, plen = got
            tests = checks.get((v, plen))
            if tests is None:
                tests = checks[(v, plen)] = self._overlap_tests(v, plen)
            for shift, nums in tests:
                if num >> shift in nums:
                    break
            else:
                add(t)
        return out

    def _overlap_tests(self, version: int, plen: int) -> tuple[tuple[int, set[int]], ...]:
        """For targets of this version and prefix length: (shift, numbers) pairs such that a
        target overlaps a network `_refusal` reads iff its number shifted right by `shift`
        is among `numbers` for some pair (two networks overlap when they agree on the
        shorter prefix of the two)."""
        bits = 32 if version == 4 else 128
        nets = [(int(n.network_address), n.prefixlen) for n in (*NEVER, *self.networks) if n.version == version]
        nets += [(num, bits) for v, num in self._partner_nums if v == version]
        by_shift: dict[int, set[int]] = {}
        for num, p in nets:
            shift = bits - min(p, plen)
            by_shift.setdefault(shift, set()).add(num >> shift)
        return tuple(sorted(by_shift.items()))

    def _refusal(self, target, name: str | None) -> str | None:
        got = canonical_num(target)
        if got is None or special(*got):           # the slow path says why
            try:
                canon = ban_target(target)
            except ValueError as e:
                return str(e)
            return f"not written as logban writes it ({canon})"
        if self.covers(*got):
            return "allow-listed address"
        if self.name_allowed(name):
            return f"allow-listed name {name}"
        v, num, plen = got
        bits = 32 if v == 4 else 128
        if plen < bits:
            for pv, pnum in self._partner_nums:
                if pv == v and pnum >> (bits - plen) == num >> (bits - plen):
                    return f"holds {ip_address_text(pv, pnum)}, a client allowed by its verified name"
        return None


def forward_confirmed(ip: str, timeout: float) -> str | None:
    """The reverse name of `ip` when that name resolves back to `ip` (FCrDNS), else None."""
    try:
        name = socket.gethostbyaddr(ip)[0]
        addrs = {i[4][0].split("%")[0] for i in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return None
    want = ipaddress.ip_address(ip)
    return name if any(ipaddress.ip_address(a) == want for a in addrs) else None


PENDING = object()          # `Resolver.lookup`: the answer is not in yet
QUEUE_WAITS = 4             # a lookup waits at most this many lookup times in all (queued, then running)


class Resolver:
    """Forward-confirmed reverse lookups for many clients at once, cached, each bounded in time.

    A lookup runs in a small pool of threads; `lookup` never waits for it (the daemon's
    loop goes on with other clients' lines). No name and no answer in time are cached
    too, for `neg_ttl`: an attacker whose reverse zone never answers costs one wait per
    address and `neg_ttl`, not one per offence."""

    def __init__(self, timeout: float = 2.0, ttl: float = 3600.0, workers: int = 32,
                 lookup: Callable[[str, float], str | None] = forward_confirmed, neg_ttl: float = 600.0) -> None:
        self.timeout, self.ttl, self.neg_ttl, self._lookup = timeout, ttl, neg_ttl, lookup
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logban-dns")
        self._cache: dict[str, tuple[float, str | None]] = {}      # ip -> (until, name)
        self._running: dict[str, tuple] = {}     # ip -> (submitted, [started], future)

    def _cached(self, ip: str, now: float):
        hit = self._cache.get(ip)
        if hit is not None and now < hit[0]:
            return hit[1]
        return PENDING

    def _keep(self, ip: str, name: str | None, now: float) -> None:
        if len(self._cache) > _CACHE_MAX:
            self._cache.clear()
        self._cache[ip] = (now + (self.ttl if name else self.neg_ttl), name)

    def _submit(self, ip: str, now: float):
        got = self._running.get(ip)
        if got is None:
            started: list[float] = []
            got = self._running[ip] = (now, started, self._pool.submit(self._safe, ip, started))
        return got

    def _deadline(self, got) -> float:
        """`timeout` from when the lookup started; one queued behind lookups that hang (an
        attacker's zones) waits its turn, up to QUEUE_WAITS times `timeout` in all."""
        submitted, started, _ = got
        return min(started[0] + self.timeout if started else math.inf, submitted + QUEUE_WAITS * self.timeout)

    def _safe(self, ip: str, started: list[float]) -> str | None:
        started.append(time.monotonic())
        try:
            return self._lookup(ip, self.timeout)
        except Exception:
            return None

    def lookup(self, ip: str):
        """The verified name of `ip` (None: none), or PENDING while its lookup runs (within `timeout`)."""
        now = time.monotonic()
        got = self._cached(ip, now)
        if got is not PENDING:
            return got
        got = self._submit(ip, now)
        fut = got[2]
        if fut.done() or now >= self._deadline(got):
            del self._running[ip]
            name = fut.result() if fut.done() else None       # out of time: no name, for neg_ttl
            self._keep(ip, name, now)
            return name
        return PENDING

    def pending(self) -> bool:
        return bool(self._running)

    def names(self, ips: Iterable[str]) -> dict[str, str | None]:
        """Verified names of `ips`, waiting for them (at most `timeout`); no answer in time counts as no name."""
        now = time.monotonic()
        out: dict[str, str | None] = {}
        todo = {}
        for ip in dict.fromkeys(ips):
            got = self._cached(ip, now)
            if got is not PENDING:
                out[ip] = got
            else:
                todo[ip] = self._submit(ip, now)
        for ip, got in todo.items():
            fut = got[2]
            while not fut.done() and time.monotonic() < self._deadline(got):
                try:
                    fut.result(timeout=0.05)
                except FutureTimeout:
                    pass
            name = fut.result() if fut.done() else None
            self._running.pop(ip, None)
            out[ip] = name
            self._keep(ip, name, now)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

