"""The nftables backend: a table of logban's own."""
from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterable, Iterator, Mapping

from ..errors import FirewallError
from . import netlink
from .backend import Backend, _run
from .plan import prefix

# Prefix lengths with a hash set of their own, looked up through a mask: every ban a
# policy decides (an address, or its /24 or /64). `nft` reads every element of every
# interval set before it changes one element of any set (nftables 1.0.6): at 100,000
# elements that is seconds per ban, while a hash set's element is added or deleted at
# once. Other lengths (a hand-made /16) share one interval set per family, kept small.
HASHED = {4: (32, 24), 6: (128, 64)}
MASK = {24: "255.255.255.0", 64: "ffff:ffff:ffff:ffff::"}
LEGACY_SETS = ("ban4", "ban6")          # interval sets that held every ban (logban before the hash sets)


def set_of(target: str) -> tuple[str, str]:
    """(set, element) where the target is held: hash sets hold the network's address."""
    v, plen = prefix(target)
    if plen in HASHED[v]:
        return f"ban{v}_{plen}", target.partition("/")[0]
    return f"net{v}", target


def _placed(targets: Iterable[str]) -> Iterator[tuple[str, str, str]]:
    """(target, set, element) of each target (see `set_of`), the set found once per kind of
    text (IP version, what follows "/"): a sync may write 100,000 of them."""
    kinds: dict[tuple[bool, str], tuple[str, bool]] = {}
    for target in targets:
        addr, _, pl = target.partition("/")
        kind = (":" in addr, pl)
        got = kinds.get(kind)
        if got is None:
            s, el = set_of(target)
            got = kinds[kind] = (s, el == target)
        yield target, got[0], target if got[1] else addr


def _sets() -> dict[str, tuple[int, int | None]]:
    """set -> (version, prefix length; None: the interval set of other lengths)."""
    out: dict[str, tuple[int, int | None]] = {}
    for v, lens in HASHED.items():
        for plen in lens:
            out[f"ban{v}_{plen}"] = (v, plen)
        out[f"net{v}"] = (v, None)
    return out


SETS = _sets()


class Nftables(Backend):
    """A table of logban's own, `inet logban`: per family hash sets of addresses and of
    /24 or /64 networks, and an interval set for networks of other lengths, all with
    timeouts; and a chain on the input hook that runs before the host's filter chains.
    Other tables (firewalld, ufw, docker) are not touched."""

    name = "nftables"
    TABLE = "inet logban"
    PRIORITY = "filter - 10"
    exclusive = {v: frozenset(range(129 if v == 6 else 33)) - set(lens) for v, lens in HASHED.items()}

    def _nft(self, script: str) -> None:
        _run(["nft", "-f", "-"], script)

    def _matches(self) -> list[str]:
        out = []
        for s, (v, plen) in SETS.items():
            fam = "ip6" if v == 6 else "ip"
            out.append(f"{fam} saddr {'& ' + MASK[plen] + ' ' if plen in MASK else ''}@{s}")
        return out

    def _rules(self) -> list[str]:
        o = self.opts
        out = []
        for m in self._matches():
            if o.ports:
                m += f" tcp dport {{ {', '.join(map(str, o.ports))} }}"
                out.append(f"{m} counter {'drop' if o.action == 'drop' else 'reject with tcp reset'}")
            elif o.action == "drop":
                out.append(f"{m} counter drop")
            else:
                out += [f"{m} meta l4proto tcp counter reject with tcp reset",
                        f"{m} counter reject with icmpx admin-prohibited"]
        return out

    def _chains(self) -> set[str]:
        """logban's chains. Listing a chain or table makes nft read every set element
        first (seconds at 100,000 bans); listing the family's chains does not."""
        r = subprocess.run(["nft", "-j", "list", "chains", "inet"], capture_output=True, text=True)
        if r.returncode != 0:
            return set()
        return {o["chain"]["name"] for o in json.loads(r.stdout).get("nftables", [])
                if "chain" in o and o["chain"].get("table") == self.TABLE.split()[1]}

    def setup(self) -> None:
        t = self.TABLE
        lines = [f"add table {t}"]
        for s, (v, plen) in SETS.items():
            flags = "timeout" if plen else "interval, timeout"
            lines.append(f"add set {t} {s} {{ type ipv{v}_addr; flags {flags}; }}")
        hooks = ["input"] + (["forward"] if self.opts.forward else [])
        for hook in hooks:
            # Flushed and written again in the same transaction: options may have changed.
            lines.append(f"add chain {t} {hook} {{ type filter hook {hook} priority {self.PRIORITY}; policy accept; }}")
            lines.append(f"flush chain {t} {hook}")
            lines += [f"add rule {t} {hook} {r}" for r in self._rules()]
        present = self._chains()
        if not self.opts.forward and "forward" in present:
            lines.append(f"delete chain {t} forward")
        if present:
            lines += self._from_legacy()
        self._nft("\n".join(lines) + "\n")

    def _from_legacy(self) -> list[str]:
        """An older logban's sets: their elements moved into this layout, and the sets
        deleted, in the transaction that rewrites the rules (no moment without them)."""
        lines = []
        for s in LEGACY_SETS:
            if self._exists(s):
                lines += self._adds({t: None if left is None else max(1, left)
                                     for t, left in self._read(s, None).items()})
                lines.append(f"delete set {self.TABLE} {s}")
        return lines

    def outdated(self) -> bool:
        return any(map(self._exists, LEGACY_SETS))

    def _exists(self, s: str) -> bool:
        try:
            netlink.set_elements(*self.TABLE.split(), s)      # at once when absent, as it is but once
            return True
        except netlink.Absent:
            return False
        except OSError:
            r = subprocess.run(["nft", "-t", "list", "set", *self.TABLE.split(), s], capture_output=True, text=True)
            return r.returncode == 0

    def _adds(self, add: Mapping[str, int | None]) -> list[str]:
        by_set: dict[str, list[str]] = {}
        for target, s, el in _placed(add):
            secs = add[target]
            by_set.setdefault(s, []).append(el if secs is None else f"{el} timeout {secs}s")
        return [f"add element {self.TABLE} {s} {{ {', '.join(els)} }}" for s, els in by_set.items()]

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str]) -> None:
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
                have = self._read(s, None)
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

    def _read(self, s: str, plen: int | None) -> dict[str, int | None]:
        """Set `s`'s elements as targets -> kernel seconds left (hash sets of networks hold
        the network's address: `plen` puts the length back). A hash set is read over
        netlink (see netlink.py), nft where that cannot be done."""
        suffix = f"/{plen}" if plen in MASK else ""
        if plen is not None:
            try:
                got = netlink.set_elements(*self.TABLE.split(), s)
            except netlink.Absent:
                return {}
            except OSError:
                pass
            else:
                fam = socket.AF_INET6 if SETS[s][0] == 6 else socket.AF_INET
                ntop = socket.inet_ntop
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
        for s, (_, plen) in SETS.items():
            have.update(self._read(s, plen))
        return have

    def describe(self) -> dict:
        present = self._chains()
        if not present:
            return {"table": f"{self.TABLE} (absent: made with the first ban to enforce)", "sets": [], "chains": {}}
        chains = {}
        for hook in sorted(present & {"input", "forward"}):
            data = json.loads(_run(["nft", "-j", "list", "chain", *self.TABLE.split(), hook]))
            packets = sum(x["counter"]["packets"] for obj in data.get("nftables", []) if "rule" in obj
                          for x in obj["rule"]["expr"] if isinstance(x, dict) and "counter" in x)
            chains[hook] = {"priority": self.PRIORITY, "packets_blocked": packets}
        return {"table": self.TABLE, "sets": list(SETS), "chains": chains}

    def teardown(self) -> None:
        try:
            self._nft(f"delete table {self.TABLE}\n")
        except FirewallError as e:
            if "No such file or directory" not in str(e):
                raise
