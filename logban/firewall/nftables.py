"""The nftables backend: a table of logban's own."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping

from ..errors import FirewallError
from .backend import Backend, _by_family, _run


class Nftables(Backend):
    """A table of logban's own, `inet logban`: sets ban4 and ban6 (intervals, so networks
    and addresses alike, with timeouts) and a chain on the input hook that runs before
    the host's filter chains. Other tables (firewalld, ufw, docker) are not touched."""

    name = "nftables"
    TABLE = "inet logban"
    PRIORITY = "filter - 10"

    def _nft(self, script: str) -> None:
        _run(["nft", "-f", "-"], script)

    def _rules(self) -> list[str]:
        o = self.opts
        out = []
        for fam, s in (("ip", "@ban4"), ("ip6", "@ban6")):
            m = f"{fam} saddr {s}"
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
        for s, typ in (("ban4", "ipv4_addr"), ("ban6", "ipv6_addr")):
            lines.append(f"add set {t} {s} {{ type {typ}; flags interval, timeout; }}")
        hooks = ["input"] + (["forward"] if self.opts.forward else [])
        for hook in hooks:
            # Flushed and written again in the same transaction: options may have changed.
            lines.append(f"add chain {t} {hook} {{ type filter hook {hook} priority {self.PRIORITY}; policy accept; }}")
            lines.append(f"flush chain {t} {hook}")
            lines += [f"add rule {t} {hook} {r}" for r in self._rules()]
        if not self.opts.forward and "forward" in self._chains():
            lines.append(f"delete chain {t} forward")
        self._nft("\n".join(lines) + "\n")

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str]) -> None:
        remove = list(remove)
        try:
            self._apply(add, remove)
        except FirewallError as e:
            # An element to delete is gone already (its timeout ran out, an `unban` beside
            # the daemon lifted it): nft refuses the whole batch. Delete what is there.
            if not remove or "element does not exist" not in str(e):
                raise
            have = self.elements()
            self._apply(add, [t for t in remove if t in have])

    def _apply(self, add: Mapping[str, int | None], remove: list[str]) -> None:
        lines = []
        for s, ts in zip(("ban4", "ban6"), _by_family(remove)):
            if ts:
                lines.append(f"delete element {self.TABLE} {s} {{ {', '.join(ts)} }}")
        for s, ts in zip(("ban4", "ban6"), _by_family(add)):
            if ts:
                els = ", ".join(t if add[t] is None else f"{t} timeout {add[t]}s" for t in ts)
                lines.append(f"add element {self.TABLE} {s} {{ {els} }}")
        if lines:
            self._nft("\n".join(lines) + "\n")

    def _set(self, s: str) -> dict:
        try:
            out = _run(["nft", "-j", "list", "set", *self.TABLE.split(), s])
        except FirewallError as e:
            if "No such file or directory" in str(e):
                return {}           # no table (never set up, torn down, or flushed away)
            raise
        for obj in json.loads(out).get("nftables", []):
            if "set" in obj:
                return obj["set"]
        return {}

    def elements(self) -> dict[str, int | None]:
        have: dict[str, int | None] = {}
        for s in ("ban4", "ban6"):
            for e in self._set(s).get("elem", []):
                left = None
                if isinstance(e, dict) and "elem" in e:
                    left = e["elem"].get("expires")
                    e = e["elem"]["val"]
                if isinstance(e, dict) and "prefix" in e:
                    e = f"{e['prefix']['addr']}/{e['prefix']['len']}"
                have[str(e)] = left
        return have

    def describe(self) -> dict:
        present = self._chains()
        if not present:
            return {"table": f"{self.TABLE} (absent)", "sets": [], "chains": {}}
        chains = {}
        for hook in sorted(present & {"input", "forward"}):
            data = json.loads(_run(["nft", "-j", "list", "chain", *self.TABLE.split(), hook]))
            packets = sum(x["counter"]["packets"] for obj in data.get("nftables", []) if "rule" in obj
                          for x in obj["rule"]["expr"] if isinstance(x, dict) and "counter" in x)
            chains[hook] = {"priority": self.PRIORITY, "packets_blocked": packets}
        return {"table": self.TABLE, "sets": ["ban4", "ban6"], "chains": chains}

    def teardown(self) -> None:
        try:
            self._nft(f"delete table {self.TABLE}\n")
        except FirewallError as e:
            if "No such file or directory" not in str(e):
                raise
