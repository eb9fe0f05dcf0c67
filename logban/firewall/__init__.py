"""Where a decision becomes a firewall element: the kernel made to hold exactly the
active bans of the store.

The store is the truth; the kernel follows it. `Firewall.sync` lists what the
kernel holds, computes the difference to the active bans (`plan`, pure) and
applies it in one batch: one `nft -f -` transaction, one `ipset restore`, or one
libiptc commit, never one process per ban. `Firewall.update` is the delta of a
`ban` or `unban`: its own targets written or lifted, nothing listed, so it costs
the same at 100,000 bans as at ten. Every element carries its remaining
ban time as a kernel timeout, so bans end on time even while logban is down;
bans longer than the kernel accepts are refreshed by later syncs. A crash between
a database commit and the kernel update is repaired by the next sync.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor

from ..allow import AllowList
from ..errors import FirewallError, UsageError
from .backend import Backend, NoBackend, iptables_mode
from .hooks import _src
from .ipset import Ipset
from .iptables import Iptables
from .nftables import Nftables
from .plan import (
    ACTIONS,
    BACKENDS,
    KERNEL_TIMEOUT_MAX,
    REFRESH_CAPPED,
    SLACK,
    FirewallOptions,
    Plan,
    kernel_timeout,
    plan,
    prefix,
    wanted,
)

__all__ = ["ACTIONS", "BACKENDS", "KERNEL_TIMEOUT_MAX", "REFRESH_CAPPED", "SLACK", "Backend", "Firewall",
           "FirewallOptions", "Ipset", "Iptables", "Nftables", "NoBackend", "Plan", "choose", "iptables_mode",
           "kernel_timeout", "plan", "wanted", "_src"]


CAP_NET_ADMIN = 12


def may_admin_network() -> bool:
    """Root, or a process given CAP_NET_ADMIN (a systemd unit's AmbientCapabilities)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            eff = next((ln.split()[1] for ln in f if ln.startswith("CapEff:")), "0")
        return bool(int(eff, 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        return False


def choose(opts: FirewallOptions, *, backend: str | None = None) -> Backend:
    """The backend the options name (`backend`, from --backend, over them); `auto` is what
    this host uses (none when not root). A dry run has its backend too: it adds nothing,
    yet lifts what must go (see `Firewall`). A named backend without the right to change
    the firewall is refused here, before a command records anything."""
    name = backend or opts.backend
    if name not in ("auto", "none") and not may_admin_network():
        raise UsageError(f"firewall backend {name}: reading or changing the firewall needs root or CAP_NET_ADMIN "
                         f"(running as uid {os.geteuid()}); use --backend none to record only")
    if name == "auto":
        if os.geteuid() != 0:
            return NoBackend(opts)          # a firewall needs root: decisions are recorded only
        mode = iptables_mode()
        if shutil.which("nft") or mode == "nf_tables":
            name = "nftables"
        elif mode == "legacy":
            name = "ipset" if shutil.which("ipset") else "iptables"
        else:
            return NoBackend(opts)
    return {"nftables": Nftables, "ipset": Ipset, "iptables": Iptables, "none": NoBackend}[name](opts)


class Firewall:
    """The enforcing edge: a backend kept equal to the store's active bans that this
    node's allow-list lets through (`AllowList.screen`: nothing read from the store
    reaches the kernel unchecked).

    `dry_run`: nothing is added to the kernel, and logban's table, sets and chains are not
    made; what is there and must go (released, unbanned, allow-listed, unknown) is still
    lifted, so switching to a dry run, or an unban during one, never leaves a client blocked."""

    ATTEMPTS = 3
    RECHECK = 500               # unknown elements looked up again per query (see `want_and_have`)

    def __init__(self, backend: Backend, store, allow: AllowList | None = None, *, dry_run: bool = False) -> None:
        self.backend, self.store, self.dry_run = backend, store, dry_run
        self.allow = allow if allow is not None else AllowList()
        self.wanted: dict[str, int | None] = {}      # what the last sync left in the kernel of the bans
        self.refused: list[tuple[str, str]] = []     # store bans the last look left out: (target, why)
        self.ready = False                           # set up in the kernel by this process

    @property
    def has_backend(self) -> bool:
        """A kernel firewall is there (to lift from, at least)."""
        return not isinstance(self.backend, NoBackend)

    @property
    def enforcing(self) -> bool:
        """Bans are put in the kernel."""
        return self.has_backend and not self.dry_run

    def want(self, now: float | None = None, targets: Collection[str] | None = None) -> dict[str, int | None]:
        """What the kernel should hold now: the store's enforced bans, screened (of
        `targets` only, when given)."""
        at = time.time() if now is None else now
        want, self.refused = self._want(at, targets)
        return want

    def _want(self, at: float, targets: Collection[str] | None) -> tuple[dict[str, int | None], list[tuple[str, str]]]:
        ok, refused = self.allow.screen(self.store.enforced(at, names=bool(self.allow.names), targets=targets),
                                        self.store.partners(self.allow))
        return wanted(ok, at, self.backend.exclusive), refused

    def apply(self, add: Mapping[str, int | None], remove: list[str]) -> dict[str, int | None]:
        """One batch to the kernel; in a dry run the removals only. Returns what was added."""
        if not self.has_backend:
            return {}
        if self.dry_run:
            add = {}
        fresh = bool(add) and not self.ready
        if fresh:
            self._setup()
        if add or remove:
            self.backend.apply(add, remove, fresh=fresh)
        return dict(add)

    def update(self, targets: Collection[str], now: float | None = None) -> Plan:
        """The kernel made to follow the store for these targets only, after a change to
        them (`logban ban`, `unban`): each one the store enforces is written with its time
        left, each other one lifted; the kernel is not listed, the other bans not read.
        Nothing is set up first: a batch the kernel refuses (no table or set yet, an older
        layout) takes a full `sync`, which sets up, and so does a target that goes where
        the kernel refuses nested elements (see `wanted`); drift left by anyone else
        (a flushed hook rule) is the periodic sync's to repair. Dry run: lifts only."""
        if not self.has_backend:
            return Plan()
        if any(plen in self.backend.exclusive[v] for v, plen in map(prefix, targets)):
            return self.sync(now)
        want = self.want(now, targets)
        p = Plan(add={} if self.dry_run else want, remove=[t for t in targets if t not in want])
        try:
            # An added target is also removed first: written afresh, whatever time it had.
            if p.add or p.remove:
                self.backend.apply(p.add, [*p.remove, *p.add])
        except FirewallError:
            self.ready = False
            # A full sync, which moves an older layout in before it lists the kernel: the
            # lifted ones among its elements go too.
            return self.sync(now)
        return p

    def want_and_have(self, now: float | None) -> tuple[dict[str, int | None], dict[str, int | None]]:
        """`want` and the kernel's elements, read side by side: listing 100,000 elements is
        mostly the kernel's work (a netlink dump, an `ipset save` process), which goes on
        on another core, the GIL released, while this thread reads and screens the store."""
        at = time.time() if now is None else now
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="logban-list") as pool:
            listing = pool.submit(self.backend.elements)
            want = self.want(at)
            have = listing.result()
        # A ban is recorded before it is enforced (the daemon, `logban ban`): every element
        # listed was in the store by the time the listing ended, though perhaps not yet when
        # the store was read. Those the kernel holds unwanted are looked up once more, so
        # that a ban made meanwhile is not lifted; when one is found, all is read again
        # (a network among them may hold others: see `wanted`).
        unknown = list(have.keys() - want.keys())
        if any(self._want(at, unknown[i:i + self.RECHECK])[0] for i in range(0, len(unknown), self.RECHECK)):
            want = self.want(at)
        return want, have

    def _setup(self) -> None:
        self.backend.setup()
        self.ready = True

    def sync(self, now: float | None = None) -> Plan:
        """Make the kernel equal the store in one batch (a dry run: lift what must go, add
        nothing); returns what was done."""
        if not self.has_backend:
            self.wanted = {}
            self.want(now)              # the refusals, for the caller to report
            return Plan()
        for attempt in range(self.ATTEMPTS):
            try:
                if not self.ready and self.backend.outdated():
                    # An older layout's sets drop clients too, and only a set-up moves them where
                    # the kernel is listed and an unban lifts them: moved first (dry run or not:
                    # moving adds no ban), so that this sync lifts those the store does not ban.
                    self._setup()
                want, have = self.want_and_have(now)
                p = plan(want, have)
                if self.dry_run:
                    # Lift what must go; what is there and still banned stays, nothing is added.
                    p = Plan(remove=list(p.unknown), unknown=p.unknown)
                    want = {t: have[t] for t in want if t in have}
                fresh = bool(p.add or (have and not self.dry_run))
                if fresh:
                    self._setup()               # made only when there is something to hold
                if p.add or p.remove:
                    self.backend.apply(p.add, p.remove, fresh=fresh)
                self.wanted = want
                return p
            except FirewallError:
                # A kernel timeout ran out between listing and applying (nft refuses to
                # delete what is gone), or another logban moved the older layout first (its
                # sets are gone when this one deletes them): list again and retry.
                if attempt == self.ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")
