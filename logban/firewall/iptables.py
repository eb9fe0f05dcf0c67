"""The iptables backend: one rule per banned target, through python-iptables."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping

from ..errors import FirewallError
from .backend import Backend, iptables_mode
from .hooks import _filter_table, _Hooks, _iptc, _src
from .plan import IPTABLES_LINEAR, FirewallOptions


class Iptables(Backend):
    """One rule per banned target in a chain of logban's own (`logban`), through
    python-iptables, on hosts whose iptables is legacy. Rules have no kernel
    timeout: each carries its end in its comment, and syncs remove it on time."""

    name = "iptables"
    CHAIN = "logban"
    kernel_timeouts = False

    def __init__(self, opts: FirewallOptions, mode: str | None = None) -> None:
        super().__init__(opts)
        self.mode = mode or iptables_mode()
        self.hooks = _Hooks("legacy", ["INPUT"] + (["FORWARD"] if opts.forward else []))

    def _check(self) -> None:
        if self.mode == "nf_tables":
            raise FirewallError("backend iptables: this host's iptables is nf_tables, and rules written "
                                "through libiptc would not show in `iptables -S`; use backend nftables or ipset")

    def setup(self) -> None:
        self._check()
        for v6 in (False, True):
            t = _filter_table(v6)
            if not t.is_chain(self.CHAIN):
                t.create_chain(self.CHAIN)
        self.hooks.install({v6: self.hooks.specs(self.opts, v6, [], self.CHAIN) for v6 in (False, True)})


    def _rule(self, v6: bool, target: str, until: float | None):
        iptc = _iptc()
        r = iptc.Rule6() if v6 else iptc.Rule()
        r.src = target
        m = r.create_match("comment")
        m.comment = f"logban until={'never' if until is None else int(until)}"
        if self.opts.action == "drop":
            r.create_target("DROP")
        else:
            if self.opts.ports:
                # A TCP reset needs a TCP match in the rule itself (the kernel refuses it
                # otherwise); the hook rule already sends only TCP to the mail ports here.
                r.protocol = "tcp"
            tg = r.create_target("REJECT")
            if self.opts.ports:
                tg.reject_with = "tcp-reset"
        return r

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str], *, fresh: bool = False) -> None:
        self._check()
        iptc = _iptc()
        now = time.time()
        gone = set(remove)
        for v6 in (False, True):
            t = _filter_table(v6)
            if not t.is_chain(self.CHAIN):
                if any((":" in target) == v6 for target in add):
                    raise FirewallError(f"{'ip6' if v6 else 'ip'}tables chain {self.CHAIN} is not there (not set up)")
                continue
            t.autocommit = False
            c = iptc.Chain(t, self.CHAIN)
            for r in c.rules if gone else ():
                if _src(r.src) in gone:
                    c.delete_rule(r)
            for target, secs in add.items():
                if (":" in target) == v6:
                    c.append_rule(self._rule(v6, target, None if secs is None else now + secs))
            t.commit()
            t.autocommit = True
            if len(c.rules) > IPTABLES_LINEAR:
                print(f"logban: warning: {len(c.rules):,} rules in {'ip6' if v6 else 'ip'}tables chain "
                      f"{self.CHAIN}: each packet walks them one by one; the nftables or ipset backend "
                      "scales better", file=sys.stderr)

    def elements(self) -> dict[str, int | None]:
        self._check()
        iptc = _iptc()
        now = time.time()
        have: dict[str, int | None] = {}
        for v6 in (False, True):
            t = _filter_table(v6)
            if not t.is_chain(self.CHAIN):
                continue
            for r in iptc.Chain(t, self.CHAIN).rules:
                until = next((m.comment.rpartition("=")[2] for m in r.matches if m.name == "comment"), "never")
                have[_src(r.src)] = None if until == "never" else max(0, int(until) - int(now))
        return have

    def describe(self) -> dict:
        return {"chain": self.CHAIN, "hook_rules": self.hooks.present()}

    def teardown(self) -> None:
        self._check()
        iptc = _iptc()
        self.hooks.remove()
        for v6 in (False, True):
            t = _filter_table(v6)
            if t.is_chain(self.CHAIN):
                iptc.Chain(t, self.CHAIN).flush()
                t.delete_chain(self.CHAIN)
