"""Where the stages meet: offences from the parser are scored, and offences and
decisions go to the store in batches, one transaction each.

The scorer's state is rebuilt from the store when the engine starts (active
bans, ban history, the offences that still count), so a restart forgets nothing.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .allow import AllowList, Resolver, valid_target
from .parse import Offence
from .score import Decision, Policy, Scorer
from .store import Store

BATCH = 50_000


@dataclass
class EngineStats:
    offences: int = 0
    bans: int = 0
    expired_on_arrival: int = 0      # decided from old log lines: recorded as already over
    released_allow: int = 0          # bans released because the allow-list now covers them
    network_bans: int = 0
    escalated: int = 0
    future: int = 0                  # offences stamped ahead of this host's clock by more than the skew


def _end(b) -> float:
    """When a ban row ends (-inf: no row)."""
    if b is None:
        return -math.inf
    return math.inf if b.expires is None else b.expires


class Engine:
    def __init__(self, store: Store, policy: Policy, allow: AllowList, *, node: str, dry_run: bool,
                 resolver: Resolver | None = None, batch: int = BATCH, clock_skew: float = 300.0,
                 future: str = "skip") -> None:
        """`future`: what becomes of an offence stamped more than `clock_skew` ahead of this
        host's clock: "skip" (left out, counted in stats.future) or "now" (counted as read
        now: a daemon reads lines as they are written). A ban must never be stretched into
        the future by a sender's wrong clock."""
        self.store, self.node, self.dry_run = store, node, dry_run
        self.clock_skew, self.future_now = clock_skew, future == "now"
        self.allow = allow
        self.resolver = resolver if allow.names else None
        self.batch = batch
        self.stats = EngineStats()
        self.scorer = Scorer(policy, allow)
        self._offences: list[tuple[Offence, str]] = []
        self._pending: list[Decision] = []
        self._fresh: list[Decision] = []
        self._restore()

    def _restore(self) -> None:
        self.store.expire(time.time())
        self.release_allowed()
        sc = self.scorer
        self.refresh_bans()
        for ip in self.store.partners(self.allow):
            sc.partner(ip)
        for r in self.store.recent_offences(sc.policy.horizon):
            sc.seed(Offence(r.time, r.ip, r.mta, r.rule, r.kind, r.score, r.file, r.line, name=r.name))

    def release_allowed(self) -> list[str]:
        """Bans of targets the allow-list covers now are released."""
        gone = [b.target for b in self.store.unreleased()
                if valid_target(b.target) and self.allow.target_allowed(b.target)]
        if gone:
            done = self.store.release(gone, "allow-list", time.time())
            self.stats.released_allow += sum(done.values())
            for t in gone:
                self.scorer.release(t)
        return gone

    def refresh_bans(self) -> None:
        """The scorer's view of the bans made equal to the store's (changed by `logban ban`/`unban`, or at start)."""
        sc = self.scorer
        # Enforcing, dry-run bans are records of what would have happened: they neither hold
        # a client as banned nor escalate its next ban. A dry run builds on both.
        real = not self.dry_run
        sc.history = self.store.history(real_only=real)
        # A row no logban wrote (0.0.0.0/0 would make every client look banned already) is ignored.
        longest: dict[str, object] = {}         # a dry run may see a real and a dry-run ban of one target
        for b in self.store.unreleased(real_only=real):
            if valid_target(b.target) and _end(b) >= _end(longest.get(b.target)):
                longest[b.target] = b
        pending = {d.target for d in self._pending}     # decided here, not recorded yet
        for t in [t for t in sc.active if t not in longest and t not in pending]:
            sc.release(t)
        for t, b in longest.items():
            if sc.active.get(t) != _end(b):
                sc.mark_banned(Decision(b.target, b.kind, b.rule, b.score, b.created, b.duration, b.count,
                                        b.escalated, b.reason))

    def set_dry_run(self, dry_run: bool) -> None:
        """Switched by a reload: from now on bans are recorded as this says, and the scorer
        holds as banned what this mode counts (see `refresh_bans`)."""
        if dry_run != self.dry_run:
            self.flush()
            self.dry_run = dry_run
            self.refresh_bans()

    def reconfigure(self, policy: Policy, allow: AllowList) -> list[str]:
        """A reloaded config: new policy and allow-list, the same state."""
        self.flush()
        self.allow = allow
        self.scorer.configure(policy, allow)
        return self.release_allowed()

    def add(self, offences: list[Offence], *, record: bool = True) -> None:
        """Score offences; `record=False`: another node's, already in the store, counted here too."""
        sc, buf = self.scorer, self._offences
        st = sc.stats
        target_of, resolver = sc.target_of, self.resolver
        now = time.time()
        if offences and max(o.time for o in offences) > now + self.clock_skew:
            offences = self._future(offences, now)
        for o in offences:
            if resolver is not None and o.name is None and sc.would_ban(o):
                # Only a client about to be banned costs a DNS lookup, never every line.
                o.name = resolver.names([o.ip]).get(o.ip)
            before = st.allowed + st.not_target
            ds = sc.add(o)
            if record and st.allowed + st.not_target == before:
                # Allow-listed and special clients are never offenders: not recorded, not in stats.
                buf.append((o, target_of(o.ip)[0]))
            if ds:
                self._pending.extend(ds)
                self._fresh.extend(ds)
        if len(buf) >= self.batch:
            self.flush()

    def _future(self, offences: list[Offence], now: float) -> list[Offence]:
        out = []
        for o in offences:
            if o.time > now + self.clock_skew:
                self.stats.future += 1
                if not self.future_now:
                    continue
                o.time = now
            out.append(o)
        return out

    def has_unsaved(self) -> bool:
        return bool(self._offences or self._pending or self.scorer.new_partners)

    def unsaved(self) -> int:
        """Offences not in the store yet."""
        return len(self._offences)

    def fresh(self) -> list[Decision]:
        """Decisions made since the last call: to enforce at once, whether or not the store is reachable."""
        out, self._fresh = self._fresh, []
        return out

    def flush(self, positions: list[dict] = ()) -> None:
        """Offences and decisions to the store in one transaction, with the read positions
        they come up to."""
        now = time.time()
        if not self._offences and not self._pending and not self.scorer.new_partners:
            if positions:
                self.store.save_positions(self.node, positions, now)
            return
        sc = self.scorer
        scores = {}
        for o, t in self._offences:
            scores[t] = o.time
        scores = {t: sc.score(t, at) for t, at in scores.items()}
        self.store.record(self._offences, self._pending, node=self.node, dry_run=self.dry_run, now=now,
                          scores=scores, positions=positions, partners=sc.new_partners)
        sc.new_partners = []
        self.stats.offences += len(self._offences)
        self.stats.bans += len(self._pending)
        self.stats.expired_on_arrival += sum(1 for d in self._pending if d.expires is not None and d.expires <= now)
        self.stats.network_bans += sum(1 for d in self._pending if d.members)
        self.stats.escalated += sum(1 for d in self._pending if d.escalated)
        self._offences.clear()
        self._pending.clear()

    def release(self, targets: list[str], reason: str) -> None:
        self.flush()
        self.store.release(targets, reason, time.time())
        for t in targets:
            self.scorer.release(t)

    def close(self) -> None:
        self.flush()
        if self.resolver is not None:
            self.resolver.close()
