"""The nftables backend: a table of logban's own."""
from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Iterable, Iterator, Mapping

from ..errors import FirewallError
from . import netlink
from .backend import Backend, _run
from .plan import prefix

# Prefix lengths with hash sets of their own, looked up through a mask: every ban a
# policy decides (an address, or its /24 or /64). `nft` reads every element of every
# interval set before it changes one element of any set (nftables 1.0.6): at 100,000
# elements that is seconds per ban, while a hash set's element is added or deleted at
# once. Other lengths (a hand-made /16) share one interval set per family, kept small.
HASHED = {4: (32, 24), 6: (128, 64)}
MASK = {24: "255.255.255.0", 64: "ffff:ffff:ffff:ffff::"}
# Each hash set is split into SHARDS sets, `ban4_32_0` ... The kernel dumps a set in
# messages of 32 KiB and walks the set from its first element again for each message
# (nft_rhash_walk), so listing a set costs the square of its size: 0.4 s of kernel time
# for 100,000 elements in one set, a tenth of that in eight. The shard is read from the
# address byte SHARD_BYTE (IPv4: the third octet; IPv6: the low byte of the fourth group),
# inside the /24 or /64: an address and its network share a shard. A packet reaches its
# shard's chain through one verdict map per family (see `_layout`), as many lookups as
# one set per prefix length needs.
SHARDS = 8                              # a power of two: the map's key is a bit mask
SHARD_BYTE = {4: 2, 6: 7}
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
PAYLOAD = {4: "ip", 6: "ip6"}            # nft's name of the packet's header
HOOKS = ("input", "forward")
# The names logban gives its sets and chains, in this version or an older one: a set of
# logban's that this layout has not (`ban4`, `ban4_32`, a shard beyond SHARDS) is an older
# layout's, moved in by `setup`. A set: kind, IP version, prefix length of a hash set's
# elements. A chain: hook, and for a shard's chain IP version and shard.
SET_NAME = re.compile(r"(ban|net)([46])(?:_(\d+))?(?:_\d+)?")
CHAIN_NAME = re.compile(r"(input|forward)(?:[46]_\d+)?")


def _held(name: str) -> tuple[int, int | None]:
    """(IP version, prefix length of its elements; None: an interval set, which holds
    each one's own) of a set named by logban, of any version (see SET_NAME)."""
    m = SET_NAME.fullmatch(name)
    assert m is not None, name
    return int(m[2]), int(m[3]) if m[1] == "ban" and m[3] else None


def _bits(v: int, value: int) -> str:
    """The address of IP version v with `value` in its shard byte and zeros elsewhere."""
    b = bytearray(16 if v == 6 else 4)
    b[SHARD_BYTE[v]] = value
    return str(ipaddress.ip_address(bytes(b)))


def _sets() -> dict[str, tuple[int, int | None]]:
    """set -> (version, prefix length; None: the interval set of other lengths)."""
    out: dict[str, tuple[int, int | None]] = {}
    for v, lens in HASHED.items():
        for plen in lens:
            out.update({f"ban{v}_{plen}_{k}": (v, plen) for k in range(SHARDS)})
        out[f"net{v}"] = (v, None)
    return out


SETS = _sets()


def _placed(targets: Iterable[str]) -> Iterator[tuple[str, str, str]]:
    """(target, set, element) of each target: hash sets hold the network's address, in the
    shard its shard byte names. What depends on the kind of text (IP version, what follows
    "/") is found once per kind: a sync may write 100,000 targets."""
    kinds: dict[tuple[bool, str], tuple[int, int, list[str]] | str] = {}
    pton, last = socket.inet_pton, SHARDS - 1
    for target in targets:
        addr, _, pl = target.partition("/")
        kind = (":" in addr, pl)
        got = kinds.get(kind)
        if got is None:
            v, plen = prefix(target)
            got = kinds[kind] = ((FAMILY[v], SHARD_BYTE[v], [f"ban{v}_{plen}_{k}" for k in range(SHARDS)])
                                 if plen in HASHED[v] else f"net{v}")
        if isinstance(got, str):
            yield target, got, target
        else:
            fam, byte, names = got
            yield target, names[pton(fam, addr)[byte] & last], addr


def _left(have: Mapping[str, int | None]) -> dict[str, int | None]:
    """Elements read from the kernel as elements to add with the time they had left (one
    second at least: one about to expire)."""
    return {t: None if left is None else max(1, left) for t, left in have.items()}


def set_of(target: str) -> tuple[str, str]:
    """(set, element) where the target is held (see `_placed`)."""
    return next(_placed([target]))[1:]


class Nftables(Backend):
    """A table of logban's own, `inet logban`: per family hash sets of addresses and of
    /24 or /64 networks, each split into shards, and an interval set for networks of other
    lengths, all with timeouts; and a chain on the input hook that runs before the host's
    filter chains. Other tables (firewalld, ufw, docker) are not touched."""

    name = "nftables"
    TABLE = "inet logban"
    PRIORITY = "filter - 10"
    exclusive = {v: frozenset(range(129 if v == 6 else 33)) - set(lens) for v, lens in HASHED.items()}

    def _nft(self, script: str) -> None:
        _run(["nft", "-f", "-"], script)

    def _verdicts(self, match: str) -> list[str]:
        """The rules that act on the packets `match` finds, as the options say."""
        o = self.opts
        if o.ports:
            return [f"{match} tcp dport {{ {', '.join(map(str, o.ports))} }} counter "
                    f"{'drop' if o.action == 'drop' else 'reject with tcp reset'}"]
        if o.action == "drop":
            return [f"{match} counter drop"]
        return [f"{match} meta l4proto tcp counter reject with tcp reset",
                f"{match} counter reject with icmpx admin-prohibited"]

    def _rules(self, s: str) -> list[str]:
        """The rules that act on the packets from what set `s` holds."""
        v, plen = SETS[s]
        return self._verdicts(f"{PAYLOAD[v]} saddr {'& ' + MASK[plen] + ' ' if plen in MASK else ''}@{s}")

    def _layout(self) -> dict[str, list[str]]:
        """chain -> its rules. Per hook, a chain on the hook that sends each packet through
        one verdict map per family to the chain of its shard (`{hook}{version}_{shard}`),
        which matches the shard's hash sets, and then matches the interval sets. Shard
        chains of their own per hook: `describe` counts each hook's packets."""
        out: dict[str, list[str]] = {}
        for hook in HOOKS[:2 if self.opts.forward else 1]:
            rules = []
            for v, lens in HASHED.items():
                jumps = []
                for k in range(SHARDS):
                    chain = f"{hook}{v}_{k}"
                    out[chain] = [r for plen in lens for r in self._rules(f"ban{v}_{plen}_{k}")]
                    jumps.append(f"{_bits(v, k)} : jump {chain}")
                rules.append(f"{PAYLOAD[v]} saddr & {_bits(v, SHARDS - 1)} vmap {{ {', '.join(jumps)} }}")
            out[hook] = rules + [r for v in HASHED for r in self._rules(f"net{v}")]
        return out

    def _kernel(self) -> list[dict]:
        """logban's table as the kernel holds it, without set elements: its sets, chains and
        rules (nft JSON objects; none without the table). `nft -t list ruleset` reads no
        element (--terse; nftables 1.0.6 reads every element for a terse listing of a
        table, and for any listing of a chain or the sets: seconds at 100,000). An error is
        raised, never taken for an empty table: a setup that missed an older layout's sets
        would stop enforcing their bans."""
        table = self.TABLE.split()[1]
        return [o for o in json.loads(_run(["nft", "-t", "-j", "list", "ruleset", "inet"])).get("nftables", [])
                if any(isinstance(x, dict) and x.get("table") == table for x in o.values())]

    @staticmethod
    def _names(kernel: list[dict], kind: str, pattern: re.Pattern[str]) -> list[str]:
        """The names of the kernel's sets or chains (`kind`) that logban gives."""
        return [o[kind]["name"] for o in kernel if kind in o and pattern.fullmatch(o[kind]["name"])]

    def setup(self) -> None:
        t = self.TABLE
        kernel = self._kernel()
        layout = self._layout()
        lines = [f"add table {t}"]
        for s, (v, plen) in SETS.items():
            lines.append(f"add set {t} {s} {{ type ipv{v}_addr; flags {'timeout' if plen else 'interval, timeout'}; }}")
        for c in layout:
            base = f" {{ type filter hook {c} priority {self.PRIORITY}; policy accept; }}" if c in HOOKS else ""
            lines.append(f"add chain {t} {c}{base}")
        # Flushed and written again in the same transaction: options may have changed.
        lines += [f"flush chain {t} {c}" for c in layout]
        lines += [f"add rule {t} {c} {r}" for c, rules in layout.items() for r in rules]
        # An older layout's chains (a forward hook no longer wanted, shards of another
        # number), the hooks first: they jump to the others.
        chains = set(self._names(kernel, "chain", CHAIN_NAME))
        old = sorted(chains - layout.keys(), key=lambda c: c not in HOOKS)
        lines += [f"{cmd} chain {t} {c}" for c in old for cmd in ("flush", "delete")]
        sets = self._names(kernel, "set", SET_NAME)
        lines += self._moved(s for s in sets if s not in SETS)
        # A layout of another number of shards has sets of this one's names too (fewer: all
        # of its sets), holding elements that this layout's mask sends to another shard.
        shards = {c for c in chains if c.startswith("input") and c not in HOOKS}
        if shards and shards != {c for c in layout if c.startswith("input") and c not in HOOKS}:
            lines += self._resharded(s for s in sets if s in SETS and SETS[s][1])
        self._nft("\n".join(lines) + "\n")

    def _moved(self, old: Iterable[str]) -> list[str]:
        """An older layout's sets (logban before the hash sets: `ban4`, `ban6`; before the
        shards: `ban4_32` ...): their elements moved into this layout with the time they
        had left, and the sets deleted, in the transaction that rewrites the rules (no
        moment without them)."""
        lines = []
        for s in old:
            lines += self._adds(_left(self._read(s)))
            lines.append(f"delete set {self.TABLE} {s}")
        return lines

    def _resharded(self, sets: Iterable[str]) -> list[str]:
        """The elements of these shards (of a layout of another number of shards) that
        belong in another shard: moved there with the time they had left."""
        lines = []
        for s in sets:
            have = self._read(s)
            wrong = [(target, el) for target, to, el in _placed(have) if to != s]
            if wrong:
                lines += self._adds(_left({target: have[target] for target, _ in wrong}))
                lines.append(f"delete element {self.TABLE} {s} {{ {', '.join(el for _, el in wrong)} }}")
        return lines

    def outdated(self) -> bool:
        return any(s not in SETS for s in self._names(self._kernel(), "set", SET_NAME))

    def _adds(self, add: Mapping[str, int | None]) -> list[str]:
        by_set: dict[str, list[str]] = {}
        for target, s, el in _placed(add):
            secs = add[target]
            by_set.setdefault(s, []).append(el if secs is None else f"{el} timeout {secs}s")
        return [f"add element {self.TABLE} {s} {{ {', '.join(els)} }}" for s, els in by_set.items()]

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str], *, fresh: bool = False) -> None:
        hashed: dict[str, list[str]] = {}
        ranged: dict[str, list[str]] = {}
        for _, s, el in _placed(remove):
            (ranged if SETS[s][1] is None else hashed).setdefault(s, []).append(el)
        try:
            self._apply(add, hashed, ranged)
        except FirewallError as e:
            # An interval to delete is gone already (its timeout ran out, an `unban` beside
            # the daemon lifted it): nft refuses the whole batch. Delete what is there; the
            # interval sets are small (see HASHED).
            if not ranged or "element does not exist" not in str(e):
                raise
            for s, els in ranged.items():
                have = self._read(s)
                ranged[s] = [el for el in els if el in have]
            self._apply(add, hashed, ranged)

    def _apply(self, add: Mapping[str, int | None], hashed: dict[str, list[str]], ranged: dict[str, list[str]]) -> None:
        t = self.TABLE
        lines = []
        for s, els in hashed.items():
            # Added first (no error when there), so that the delete never fails: one element
            # is lifted without listing the set.
            lines.append(f"add element {t} {s} {{ {', '.join(el + ' timeout 1s' for el in els)} }}")
            lines.append(f"delete element {t} {s} {{ {', '.join(els)} }}")
        for s, els in ranged.items():
            if els:
                lines.append(f"delete element {t} {s} {{ {', '.join(els)} }}")
        lines += self._adds(add)
        if lines:
            self._nft("\n".join(lines) + "\n")

    def _read(self, s: str) -> dict[str, int | None]:
        """Set `s`'s elements as targets -> kernel seconds left (hash sets of networks hold
        the network's address: the set's prefix length is put back). A hash set is read over
        netlink (see netlink.py), nft where that cannot be done."""
        v, plen = _held(s)
        suffix = f"/{plen}" if plen in MASK else ""
        if plen is not None:
            try:
                got = netlink.set_elements(*self.TABLE.split(), s)
            except netlink.Absent:
                return {}
            except OSError:
                pass
            else:
                fam, ntop = FAMILY[v], socket.inet_ntop
                return {f"{ntop(fam, k)}{suffix}": left for k, left in got.items()}
        try:
            out = _run(["nft", "-j", "list", "set", *self.TABLE.split(), s])
        except FirewallError as e:
            if "No such file or directory" in str(e):
                return {}           # no table (never set up, torn down, or flushed away)
            raise
        have: dict[str, int | None] = {}
        for obj in json.loads(out).get("nftables", []):
            for e in obj.get("set", {}).get("elem", []):
                left = None
                if isinstance(e, dict) and "elem" in e:
                    left = e["elem"].get("expires")
                    e = e["elem"]["val"]
                if isinstance(e, dict) and "prefix" in e:
                    e = f"{e['prefix']['addr']}/{e['prefix']['len']}"
                have[f"{e}{suffix}"] = left
        return have

    def elements(self) -> dict[str, int | None]:
        have: dict[str, int | None] = {}
        for s in SETS:
            have.update(self._read(s))
        return have

    def describe(self) -> dict:
        kernel = self._kernel()
        hooks = [c for c in HOOKS if c in self._names(kernel, "chain", CHAIN_NAME)]
        if not hooks:
            return {"table": f"{self.TABLE} (absent: made with the first ban to enforce)", "sets": [], "chains": {}}
        # A hook's packets: those its own chain and its shards' chains counted.
        packets = dict.fromkeys(hooks, 0)
        for o in kernel:
            m = CHAIN_NAME.fullmatch(o["rule"]["chain"]) if "rule" in o else None
            if m and m[1] in packets:
                packets[m[1]] += sum(x["counter"]["packets"] for x in o["rule"]["expr"]
                                     if isinstance(x, dict) and "counter" in x)
        # The shards of a set as one name in the shell's brace form, ban4_32_{0..7}: 34 names said in 6.
        sets = list(dict.fromkeys(re.sub(r"_\d+$", f"_{{0..{SHARDS - 1}}}", s) if SETS[s][1] else s for s in SETS))
        return {"table": self.TABLE, "sets": sets,
                "chains": {h: {"priority": self.PRIORITY, "packets_blocked": n} for h, n in sorted(packets.items())}}

    def teardown(self) -> None:
        try:
            self._nft(f"delete table {self.TABLE}\n")
        except FirewallError as e:
            if "No such file or directory" not in str(e):
                raise
