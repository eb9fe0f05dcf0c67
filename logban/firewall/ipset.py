"""The ipset backend: hash:net sets matched by one iptables rule per family."""
from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping

from ..errors import FirewallError
from .backend import Backend, _run, iptables_mode
from .hooks import _Hooks
from .plan import FirewallOptions


class Ipset(Backend):
    """hash:net sets logban4 and logban6 with kernel timeouts, filled by one `ipset restore`
    per batch, and one rule per family in INPUT (and FORWARD) that matches them."""

    name = "ipset"
    SETS = {False: "logban4", True: "logban6"}
    MAXELEM = 1 << 20

    def __init__(self, opts: FirewallOptions, mode: str | None = None) -> None:
        super().__init__(opts)
        self.hooks = _Hooks(mode or iptables_mode(), ["INPUT"] + (["FORWARD"] if opts.forward else []))

    def _restore(self, lines: list[str]) -> None:
        if lines:
            _run(["ipset", "restore", "-exist"], "\n".join(lines) + "\n")

    def _creates(self) -> list[str]:
        return [f"create {s} hash:net family {'inet6' if v6 else 'inet'} timeout 0 maxelem {self.MAXELEM}"
                for v6, s in self.SETS.items()]

    def setup(self) -> None:
        self._restore(self._creates())
        jump = "DROP" if self.opts.action == "drop" else "REJECT"
        self.hooks.install({v6: self.hooks.specs(self.opts, v6, ["-m", "set", "--match-set", s, "src"], jump)
                            for v6, s in self.SETS.items()})

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str], *, fresh: bool = False) -> None:
        # -exist: deleting what a kernel timeout already took is not an error, and an add updates the timeout.
        lines = [f"del {self.SETS[':' in t]} {t}" for t in remove]
        lines += [f"add {self.SETS[':' in t]} {t} timeout {add[t] or 0}" for t in add]
        if lines and fresh:
            # The sets' creation said again, a no-op under -exist for sets just made so: `ipset
            # restore` then knows their type, where otherwise it asks the kernel for it before
            # each line and sends each element in a message of its own (100,000: 1.1 s, not 0.5).
            # Only after `setup`: a batch with no set to go to is refused, and not answered
            # with sets that no hook rule matches.
            lines[:0] = self._creates()
        self._restore(lines)

    def elements(self) -> dict[str, int | None]:
        have: dict[str, int | None] = {}
        for s in self.SETS.values():
            try:
                out = _run(["ipset", "save", s])
            except FirewallError as e:
                if "does not exist" in str(e):
                    continue
                raise
            for line in out.splitlines():
                w = line.split()
                if len(w) >= 3 and w[0] == "add":
                    left = int(w[w.index("timeout") + 1]) if "timeout" in w else None
                    have[w[2]] = left or None
        return have

    def describe(self) -> dict:
        return {"sets": list(self.SETS.values()), "hook_rules": self.hooks.present()}

    def teardown(self) -> None:
        self.hooks.remove()            # a set in use by a rule cannot be destroyed
        for s in self.SETS.values():
            subprocess.run(["ipset", "destroy", s], capture_output=True)
